"""The calculator tool of the multi-turn example: find a tool call in a model turn and evaluate it safely.

A call is a `<tool_call>...</tool_call>` span holding JSON, in either form:

  <tool_call>{"name": "calculator", "arguments": {"expression": "17 * 3"}}</tool_call>   (Qwen3 / Hermes)
  <tool_call>{"expression": "17 * 3"}</tool_call>                                         (short)

The expression is parsed with `ast` and only numbers, + - * / // % **, unary signs and parentheses are evaluated;
names, calls, attributes and anything else are refused, and so are exponents or results too large to be an answer.
Nothing is ever passed to `eval`.
"""

from __future__ import annotations

import ast
import json
import math
import operator
import re
from typing import Any

TOOL_SCHEMA: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "calculator",
        "description": "Evaluate an arithmetic expression (+, -, *, /, //, %, **, parentheses).",
        "parameters": {
            "type": "object",
            "properties": {"expression": {"type": "string", "description": "e.g. (17 + 4) * 3"}},
            "required": ["expression"],
        },
    },
}

_TOOL_CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)
_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
MAX_EXPRESSION_CHARS = 200
MAX_EXPONENT = 64
MAX_MAGNITUDE = 10**30


class CalculatorError(ValueError):
    """The expression is not plain arithmetic, or its value is out of range; the message goes back to the model."""


def parse_tool_call(text: str) -> str | None:
    """The expression of the first tool call in `text`, or None when there is no well-formed call."""
    match = _TOOL_CALL.search(text)
    if not match:
        return None
    try:
        call = json.loads(match.group(1))
    except json.JSONDecodeError:
        return None
    if not isinstance(call, dict):
        return None
    arguments = call.get("arguments", call)
    if isinstance(arguments, str):  # some templates serialise the arguments a second time
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return None
    expression = arguments.get("expression") if isinstance(arguments, dict) else None
    return expression if isinstance(expression, str) else None


def _value(node: ast.AST) -> int | float:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_value(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _value(node.left), _value(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
            raise CalculatorError(f"exponent {right} is too large")
        try:
            result = _BINARY[type(node.op)](left, right)
        except ZeroDivisionError:
            raise CalculatorError("division by zero") from None
        if isinstance(result, complex) or abs(result) > MAX_MAGNITUDE:
            raise CalculatorError("result out of range")
        return result
    raise CalculatorError(f"not allowed: {ast.dump(node)[:60]}")


def calculate(expression: str) -> str:
    """The value of an arithmetic expression as text (integers without a decimal point)."""
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise CalculatorError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError:
        raise CalculatorError(f"cannot parse {expression!r}") from None
    value = _value(tree.body)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise CalculatorError("result out of range")
        if value.is_integer():
            return str(int(value))
        return repr(round(value, 10))
    return str(value)


def run_tool(expression: str) -> str:
    """What the model reads back: the value, or `error: <why>`."""
    try:
        return calculate(expression)
    except CalculatorError as exc:
        return f"error: {exc}"
