"""examples/multi_turn_tool: the calculator is safe, and a two-turn rollout through a real CPU engine over HTTP masks
the tool turn out of the loss while the model's own tokens keep their engine log-probs.

A randomly initialised model never writes a tool call, so the engine serves a tiny Qwen3 that the test first trains
(transformers, a few seconds) to answer one prompt with a calculator call and, after the tool's result, with the
answer, and another prompt directly. Greedy decoding then reproduces those turns, which makes the masking checks
deterministic while everything between the rollout function and the model is the real thing: slime's
`generate_and_rm` loading the function by path, HTTP to the engine, its sampler and log-probs, the reward.
"""

from __future__ import annotations

import asyncio
import sys

import pytest
import torch
import transformers

from conftest import REPO_ROOT
from slime.backends.sglang_utils.cpu_engine.launcher import launch_cpu_engine
from slime.rollout.sglang_rollout import GenerateState, generate_and_rm, sampling_params_from_args
from slime.utils.arguments import parse_args
from slime.utils.misc import free_port
from slime.utils.types import Sample

from examples.multi_turn_tool.calculator import CalculatorError, calculate, parse_tool_call, run_tool
from examples.multi_turn_tool.generate import tool_turn_text

sys.path.insert(0, str(REPO_ROOT / "tests" / "backends" / "sglang_utils"))
from engine_helpers import build_tiny_qwen3  # noqa: E402

TOOL_PROMPT = [{"role": "user", "content": "What is 17 * 3? Use the calculator."}]
DIRECT_PROMPT = [{"role": "user", "content": "What is 2 + 2?"}]
CALL = '<tool_call>{"name": "calculator", "arguments": {"expression": "17 * 3"}}</tool_call>'
END = "<|im_end|>"


def test_calculator_evaluates_arithmetic_and_refuses_everything_else():
    assert calculate("17 * 3") == "51" and calculate("(2 + 3) ** 2 - -1") == "26"
    assert calculate("7 / 2") == "3.5" and calculate("8 / 2") == "4" and calculate("7 // 2") == "3"
    for bad in ("__import__('os').system('true')", "x + 1", "abs(-1)", "(1).real", "[1, 2]", "True + 1",
                "2 ** 1000", "1 / 0", "10 ** 40", "1 +", "9" * 300):
        with pytest.raises(CalculatorError):
            calculate(bad)
    assert run_tool("1 / 0") == "error: division by zero"
    assert parse_tool_call(f"sure {CALL} done") == "17 * 3"
    assert parse_tool_call('<tool_call>{"expression": "1+1"}</tool_call>') == "1+1"
    assert parse_tool_call('<tool_call>{"name": "calculator", "arguments": "{\\"expression\\": \\"2*2\\"}"}'
                           '</tool_call>') == "2*2"
    for text in ("no call", "<tool_call>not json</tool_call>", '<tool_call>{"expression": 3}</tool_call>',
                 '<tool_call>{"expression": "1+1"}'):
        assert parse_tool_call(text) is None


def _train_to_follow_script(model_dir: str, tokenizer) -> dict[str, list[int]]:
    """Overfit the tiny model on two scripted conversations; returns each one's token ids (prompt + response)."""
    def ids(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False)

    def prompt_ids(messages) -> list[int]:
        return ids(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))

    tool_text = tool_turn_text(tokenizer, "51")
    scripts = {
        "tool": (prompt_ids(TOOL_PROMPT),
                 [(ids(CALL + END), 1), (ids(tool_text), 0), (ids("<answer>51</answer>" + END), 1)]),
        "direct": (prompt_ids(DIRECT_PROMPT), [(ids("<answer>4</answer>" + END), 1)]),
    }
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    batches = []
    for prompt, pieces in scripts.values():
        tokens = prompt + [t for piece, _ in pieces for t in piece]
        trained = [0] * len(prompt) + [m for piece, m in pieces for _ in piece]
        labels = torch.tensor([t if m else -100 for t, m in zip(tokens, trained)])
        batches.append((torch.tensor([tokens]), labels[None]))
    for _ in range(300):
        loss = sum(model(input_ids=x, labels=y).loss for x, y in batches)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if loss.item() < 1e-3:
            break
    model.save_pretrained(model_dir)
    return {name: prompt + [t for piece, _ in pieces for t in piece] for name, (prompt, pieces) in scripts.items()}


@pytest.fixture(scope="module")
def scripted_engine(tmp_path_factory):
    torch.manual_seed(0)
    model_dir = build_tiny_qwen3(str(tmp_path_factory.mktemp("tool_model")), seed=0)
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the cores are shared; see engine_fixtures.one_torch_thread
    try:
        expected = _train_to_follow_script(model_dir, tokenizer)
    finally:
        torch.set_num_threads(threads)
    engine = launch_cpu_engine(model_dir, free_port(), extra_args=["--random-seed", "0"], timeout=120,
                               env={"OMP_NUM_THREADS": "1"},
                               log_path=str(tmp_path_factory.mktemp("tool_engine") / "engine.log"))
    try:
        yield model_dir, tokenizer, expected, engine
    finally:
        engine.stop()


def _args(model_dir: str, engine, *extra: str):
    host, port = engine.url.removeprefix("http://").split(":")
    return parse_args(["--rollout-batch-size", "1", "--num-rollout", "1", "--actor-num-gpus-per-node", "1",
                       "--debug-rollout-only", "--rollout-num-gpus", "1", "--hf-checkpoint", model_dir,
                       "--sglang-router-ip", host, "--sglang-router-port", port, "--rollout-max-response-len", "64",
                       "--custom-generate-function-path", "examples.multi_turn_tool.generate.generate",
                       "--custom-rm-path", "examples.reasoning_gym.reward.reward_func", *extra])


def _rollout(args, tokenizer, messages, answer: str) -> Sample:
    GenerateState._instance = None  # a fresh state (tokenizer, semaphore) for these args
    params = {**sampling_params_from_args(args), "temperature": 0.0}
    sample = Sample(index=0, group_index=0, prompt=tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True),
        metadata={"reasoning_gym": {"task": "chain_sum", "entry": {"question": "q", "answer": answer, "metadata": {}}}})
    return asyncio.run(generate_and_rm(args, sample, params))


def _reference_log_probs(model_dir: str, tokens: list[int], start: int) -> torch.Tensor:
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(torch.tensor([tokens])).logits[0]
    log_probs = torch.log_softmax(logits[start - 1:-1], dim=-1)
    return log_probs.gather(1, torch.tensor(tokens[start:])[:, None])[:, 0]


def test_tool_turn_is_masked_and_model_turns_keep_their_log_probs(scripted_engine):
    model_dir, tokenizer, expected, engine = scripted_engine
    sample = _rollout(_args(model_dir, engine), tokenizer, TOOL_PROMPT, "51")
    prompt_len = len(sample.tokens) - sample.response_length
    assert sample.tokens == expected["tool"]
    assert sample.status == Sample.Status.COMPLETED and sample.metadata["tool_calls"] == 1
    assert len(sample.loss_mask) == len(sample.rollout_log_probs) == sample.response_length
    response = sample.tokens[prompt_len:]
    tool_ids = tokenizer.encode(tool_turn_text(tokenizer, "51"), add_special_tokens=False)
    call_len = len(tokenizer.encode(CALL + END, add_special_tokens=False))
    assert sample.loss_mask == [1] * call_len + [0] * len(tool_ids) + [1] * (len(response) - call_len - len(tool_ids))
    masked = [t for t, m in zip(response, sample.loss_mask) if m == 0]
    assert masked == tool_ids and "51" in tokenizer.decode(masked)
    trained = tokenizer.decode([t for t, m in zip(response, sample.loss_mask) if m])
    assert trained == CALL + END + "<answer>51</answer>" + END
    # The model's tokens carry the engine's log-probs (checked against transformers), the tool's carry 0.0.
    got = torch.tensor(sample.rollout_log_probs)
    want = _reference_log_probs(model_dir, sample.tokens, prompt_len)
    model_positions = torch.tensor(sample.loss_mask, dtype=torch.bool)
    torch.testing.assert_close(got[model_positions], want[model_positions], atol=1e-4, rtol=0)
    assert torch.all(got[~model_positions] == 0.0)
    assert sample.response.endswith("<answer>51</answer>" + END)
    assert sample.reward == 1.0  # reasoning-gym's score of the final answer
    assert len(sample.weight_versions) == 2  # two model turns, two requests


def test_a_direct_answer_is_one_fully_trained_turn(scripted_engine):
    model_dir, tokenizer, expected, engine = scripted_engine
    sample = _rollout(_args(model_dir, engine), tokenizer, DIRECT_PROMPT, "4")
    assert sample.tokens == expected["direct"] and sample.metadata["tool_calls"] == 0
    assert sample.loss_mask == [1] * sample.response_length and sample.status == Sample.Status.COMPLETED
    assert sample.reward == 1.0


def test_the_response_budget_counts_tool_tokens(scripted_engine):
    model_dir, tokenizer, expected, engine = scripted_engine
    call_len = len(tokenizer.encode(CALL + END, add_special_tokens=False))
    tool_len = len(tokenizer.encode(tool_turn_text(tokenizer, "51"), add_special_tokens=False))
    budget = call_len + tool_len + 2  # room for two tokens of the answer turn
    sample = _rollout(_args(model_dir, engine, "--rollout-max-response-len", str(budget)), tokenizer, TOOL_PROMPT, "51")
    assert sample.status == Sample.Status.TRUNCATED and sample.response_length == budget
    assert sample.loss_mask == [1] * call_len + [0] * tool_len + [1, 1]
    assert sample.reward == 0.0
