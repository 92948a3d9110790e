"""Answer extraction and equivalence for the rule-based math rewards.

Equivalence is decided by `math-verify` (LaTeX/sympy-aware: 1/2 = 0.5 = \\frac{1}{2}, sets, intervals), the
field library for this job, instead of a hand-written normaliser. Extraction follows slime's rules: the last
`\\boxed{...}` (or `\\fbox{...}`) of a text, with nested braces.
"""

from __future__ import annotations

import re
import threading
from typing import Any

_BOX_OPENERS = ("\\boxed", "\\fbox")


def last_boxed_only_string(text: str) -> str | None:
    """The last `\\boxed{...}` (braces balanced) or `\\boxed x` of `text`, or None."""
    start = max(text.rfind(opener) for opener in _BOX_OPENERS)
    if start < 0:
        return None
    rest = text[start:]
    if rest.startswith("\\boxed ") and "{" not in rest.split(" ", 1)[1][:1]:
        return "\\boxed " + rest.split(" ", 1)[1].split("$")[0].strip()
    depth = 0
    for i, char in enumerate(rest):
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return rest[: i + 1]
    return None  # unbalanced: the model stopped inside the box


def remove_boxed(boxed: str) -> str:
    for opener in _BOX_OPENERS:
        if boxed.startswith(opener + " "):
            return boxed[len(opener) + 1:]
        if boxed.startswith(opener + "{") and boxed.endswith("}"):
            return boxed[len(opener) + 1: -1]
    return boxed


def extract_boxed_answer(text: str) -> str | None:
    boxed = last_boxed_only_string(text)
    return remove_boxed(boxed) if boxed is not None else None


def _as_latex(answer: str) -> str:
    answer = answer.strip()
    return answer if answer.startswith("$") or "\\boxed" in answer else f"${answer}$"


def is_equivalent(answer: str | None, reference: Any) -> bool:
    """True when `answer` and `reference` denote the same mathematical object (math-verify), or are equal strings."""
    if answer is None or reference is None:
        return False
    reference = str(reference).strip()
    answer = answer.strip()
    if not answer or not reference:
        return False
    if _normalise_text(answer) == _normalise_text(reference):
        return True
    from math_verify import parse, verify

    # math-verify's timeouts use signal.alarm, which only the main thread may set; rollouts score in worker threads.
    seconds = 5 if threading.current_thread() is threading.main_thread() else None
    gold = parse(_as_latex(reference), parsing_timeout=seconds)
    guess = parse(_as_latex(answer), parsing_timeout=seconds)
    if not gold or not guess:
        return False
    try:
        return bool(verify(gold, guess, timeout_seconds=seconds))
    except Exception:  # noqa: BLE001 - sympy can fail on exotic input; that is a wrong answer, not a crash
        return False


def _normalise_text(text: str) -> str:
    text = text.replace("\\!", "").replace("\\,", "").replace("$", "").replace(" ", "")
    text = re.sub(r"\\text\{(.*?)\}", r"\1", text)
    return text.rstrip(".").lower()


def reference_answers(label: Any) -> list[str]:
    """A label may be one answer or a list of acceptable ones; boxed labels are unboxed."""
    labels = label if isinstance(label, (list, tuple)) else [label]
    out = []
    for item in labels:
        if item is None:
            continue
        text = str(item)
        out.append(extract_boxed_answer(text) or text if "\\boxed" in text else text)
    return out


def grade_boxed_math(response: str, label: Any) -> int:
    """slime's `math` reward: 1 if the last boxed answer of the response equals the label, else 0."""
    answer = extract_boxed_answer(response)
    return int(any(is_equivalent(answer, reference) for reference in reference_answers(label)))


def deepscaler_reward(response: str, label: Any) -> int:
    """slime's `deepscaler` reward: the answer is boxed in the text after the reasoning (`</think>` or
    `###Response`); a response with neither marker, no box, or an empty label scores 0."""
    for marker in ("</think>", "###Response"):
        if marker in response:
            solution = response.split(marker, 1)[1]
            break
    else:
        return 0
    if label in ("", None):
        return 0
    return grade_boxed_math(solution, label)


_ANSWER_LINE = re.compile(r"(?i)Answer\s*:\s*([^\n]+)")


def dapo_reward(response: str, label: Any, strict_box: bool = False) -> dict[str, Any]:
    """DAPO's reward (slime's `dapo`): looks only at the last 300 characters; the prediction is the last
    `Answer: ...` line (or, with `strict_box`, the last boxed answer). +1 if right, -1 otherwise, with `acc` and
    `pred`. Train on it with `--reward-key score`."""
    tail = response[-300:]
    if strict_box:
        pred = extract_boxed_answer(tail)
    else:
        matches = _ANSWER_LINE.findall(tail)
        pred = matches[-1].strip() if matches else None
    correct = pred is not None and any(is_equivalent(pred, reference) for reference in reference_answers(label))
    return {"score": 1.0 if correct else -1.0, "acc": correct, "pred": pred if pred is not None else "[INVALID]"}
