"""/generate of the CPU engine against SGLang's semantics, checked with transformers on the same weights."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import torch
import transformers

from engine_helpers import SESSION, generate, hf_greedy, post, tempered_logprobs

PROMPTS = [[9707, 11, 1879, 0, 284], [510, 3011, 4], [17, 28, 5000, 7, 6, 42, 1000, 3, 99, 2024, 8]]


def test_greedy_is_deterministic_and_equals_transformers_generate(engine_a, model_a):
    expected = [hf_greedy(model_a, p, 12) for p in PROMPTS]
    # Sent together, the prompts share one left-padded batch; sent again one by one, they run alone.
    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        together = list(pool.map(lambda p: generate(engine_a.url, p, temperature=0, max_new_tokens=12), PROMPTS))
    alone = [generate(engine_a.url, p, temperature=0, max_new_tokens=12) for p in PROMPTS]
    for want, a, b in zip(expected, together, alone):
        assert a["output_ids"] == want
        assert b["output_ids"] == want
        assert [entry[1] for entry in a["meta_info"]["output_token_logprobs"]] == want
        assert a["meta_info"]["completion_tokens"] == len(want)


def test_logprobs_are_tempered_log_softmax_before_truncation(engine_a, model_a):
    prompt = PROMPTS[2]
    for sampling in ({"temperature": 0.7, "top_p": 0.9, "top_k": 50, "sampling_seed": 3},
                     {"temperature": 1.3, "min_p": 0.05, "sampling_seed": 4}):
        reply = generate(engine_a.url, prompt, max_new_tokens=10, ignore_eos=True, **sampling)
        got = torch.tensor([e[0] for e in reply["meta_info"]["output_token_logprobs"]])
        ids = [e[1] for e in reply["meta_info"]["output_token_logprobs"]]
        assert ids == reply["output_ids"] and all(e[2] is None for e in reply["meta_info"]["output_token_logprobs"])
        want = tempered_logprobs(model_a, prompt, ids, sampling["temperature"])
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    # Greedy reports the untempered distribution; top_k=1 at T=1 is greedy, yet its logprob is not 0: the
    # logprob is taken before the top-k truncation renormalises the distribution.
    greedy = generate(engine_a.url, prompt, temperature=0, max_new_tokens=6, ignore_eos=True)
    top1 = generate(engine_a.url, prompt, temperature=1.0, top_k=1, max_new_tokens=6, ignore_eos=True)
    tiny_p = generate(engine_a.url, prompt, temperature=1.0, top_p=1e-9, max_new_tokens=6, ignore_eos=True)
    assert top1["output_ids"] == greedy["output_ids"] == tiny_p["output_ids"]
    want = tempered_logprobs(model_a, prompt, greedy["output_ids"], 1.0)
    for reply in (greedy, top1):
        got = torch.tensor([e[0] for e in reply["meta_info"]["output_token_logprobs"]])
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
        assert got.max() < -0.01


def test_prompt_logprobs_for_scoring(engine_a, model_a):
    """The on-policy-distillation call: max_new_tokens 0, logprob_start_len 0, raw (untempered) log-probs."""
    prompt = PROMPTS[0]
    reply = post(engine_a.url, "/generate", {"input_ids": prompt, "return_logprob": True, "logprob_start_len": 0,
                                             "sampling_params": {"temperature": 0.5, "max_new_tokens": 0}}).json()
    entries = reply["meta_info"]["input_token_logprobs"]
    assert reply["output_ids"] == [] and reply["meta_info"]["finish_reason"] == {"type": "length", "length": 0}
    assert entries[0] == [None, prompt[0], None] and [e[1] for e in entries] == prompt
    want = tempered_logprobs(model_a, prompt[:1], prompt[1:], 1.0)
    torch.testing.assert_close(torch.tensor([e[0] for e in entries[1:]]), want, atol=1e-5, rtol=0)


def test_temperature_changes_entropy_and_seeds_reproduce(engine_a):
    def mean_surprise(temperature: float) -> float:
        replies = [generate(engine_a.url, p, temperature=temperature, max_new_tokens=16, ignore_eos=True,
                            sampling_seed=seed) for seed, p in enumerate(PROMPTS)]
        values = [-e[0] for r in replies for e in r["meta_info"]["output_token_logprobs"]]
        return sum(values) / len(values)

    # -logprob of sampled tokens estimates the entropy of the distribution they were drawn from.
    cold, hot = mean_surprise(0.3), mean_surprise(1.5)
    assert hot > cold + 1.0, (cold, hot)
    same = [generate(engine_a.url, PROMPTS[0], temperature=1.0, max_new_tokens=12, sampling_seed=7,
                     ignore_eos=True)["output_ids"] for _ in range(2)]
    other = generate(engine_a.url, PROMPTS[0], temperature=1.0, max_new_tokens=12, sampling_seed=8,
                     ignore_eos=True)["output_ids"]
    assert same[0] == same[1] and other != same[0]


def test_stop_token_ids_stop_strings_and_trimming(engine_a, model_dir_a):
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir_a)
    prompt = PROMPTS[1]
    base = generate(engine_a.url, prompt, temperature=0, max_new_tokens=20, ignore_eos=True)["output_ids"]
    k = next(i for i in range(2, len(base)) if base[i] not in base[:i])
    reply = generate(engine_a.url, prompt, temperature=0, max_new_tokens=20, stop_token_ids=[base[k]])
    assert reply["output_ids"] == base[:k + 1]  # the stop token is part of the output ids
    assert reply["meta_info"]["finish_reason"] == {"type": "stop", "matched": base[k]}
    assert reply["text"] == tokenizer.decode(base[:k])  # ... but trimmed from the text
    kept = generate(engine_a.url, prompt, temperature=0, max_new_tokens=20, stop_token_ids=[base[k]],
                    no_stop_trim=True, skip_special_tokens=False)
    assert kept["text"] == tokenizer.decode(base[:k + 1])
    ignored = generate(engine_a.url, prompt, temperature=0, max_new_tokens=20, stop_token_ids=[base[k]],
                       ignore_eos=True)
    assert ignored["output_ids"] == base and ignored["meta_info"]["finish_reason"]["type"] == "length"

    # A stop string: a piece of the greedy text; generation ends at the first token completing it.
    text = tokenizer.decode(base)
    stop = next(w for w in text.split() if len(w) >= 3 and w.isalpha() and text.count(w) == 1)
    end = next(j for j in range(len(base)) if stop in tokenizer.decode(base[:j + 1]))
    reply = generate(engine_a.url, prompt, temperature=0, max_new_tokens=20, stop=[stop], ignore_eos=True)
    assert reply["meta_info"]["finish_reason"] == {"type": "stop", "matched": stop}
    assert reply["output_ids"] == base[:end + 1]
    assert reply["text"] == text[:text.index(stop)]
    untrimmed = generate(engine_a.url, prompt, temperature=0, max_new_tokens=20, stop=stop, ignore_eos=True,
                         no_stop_trim=True)
    assert untrimmed["text"].endswith(stop) or stop in untrimmed["text"]


def test_max_new_tokens_truncates_with_finish_reason_length(engine_a):
    reply = generate(engine_a.url, PROMPTS[0], temperature=0.8, max_new_tokens=5, ignore_eos=True)
    assert reply["meta_info"]["finish_reason"] == {"type": "length", "length": 5}
    assert len(reply["output_ids"]) == 5 == reply["meta_info"]["completion_tokens"]
    assert len(reply["meta_info"]["output_token_logprobs"]) == 5
    meta = reply["meta_info"]
    assert meta["prompt_tokens"] == len(PROMPTS[0]) and meta["weight_version"] == "default"
    assert meta["cached_tokens"] == 0 and meta["e2e_latency"] > 0 and "queue_time" in meta


def test_batch_input_and_router_injected_keys(engine_a):
    body = {"input_ids": PROMPTS[:2], "rid": "batch", "sampling_params": [{"temperature": 0, "max_new_tokens": 4},
                                                                       {"temperature": 0, "max_new_tokens": 6}],
            "return_logprob": [True, False],
            # keys the PyPI router adds when it re-serialises a body
            "model": None, "stream": False, "log_metrics": True, "return_hidden_states": False, "background": False,
            "no_logs": False, "return_bytes": False, "return_entropy": False, "return_text_in_logprobs": False}
    replies = post(engine_a.url, "/generate", body).json()
    assert [r["meta_info"]["id"] for r in replies] == ["batch_0", "batch_1"]
    assert [len(r["output_ids"]) for r in replies] == [4, 6]
    assert "output_token_logprobs" in replies[0]["meta_info"] and "output_token_logprobs" not in replies[1]["meta_info"]
    for prompt, reply in zip(PROMPTS[:2], replies):
        single = generate(engine_a.url, prompt, temperature=0, max_new_tokens=len(reply["output_ids"]))
        assert single["output_ids"] == reply["output_ids"]
    text = post(engine_a.url, "/generate", {"text": "Hello world", "sampling_params": {"max_new_tokens": 3}}).json()
    assert text["meta_info"]["prompt_tokens"] == 2 and len(text["output_ids"]) == 3


def test_bad_requests_get_sglang_errors(engine_a):
    cases = [
        ({"input_ids": [1, 2], "sampling_params": {"top_p": 0.0}}, "top_p must be in (0, 1], got 0.0."),
        ({"input_ids": [1, 2], "sampling_params": {"top_k": 0}}, "top_k must be -1 (disable) or at least 1"),
        ({"input_ids": [1, 2], "sampling_params": {"temprature": 1.0}}, "unknown sampling parameter(s): temprature"),
        ({"input_ids": [1] * 1000, "sampling_params": {"max_new_tokens": 100}},
         "Requested token count exceeds the model's maximum context length of 1024 tokens"),
        ({"input_ids": [10 ** 6]}, "outside the vocabulary"),
        ({"sampling_params": {}}, "Either text or input_ids should be provided."),
        ({"input_ids": [1, 2], "sampling_params": {"regex": "a+"}}, "not supported yet by the CPU engine"),
    ]
    for body, message in cases:
        reply = post(engine_a.url, "/generate", body)
        assert reply.status_code == 400, body
        assert message in reply.json()["error"]["message"], reply.text
    missing = post(engine_a.url, "/update_weights_from_disk", {})
    assert missing.status_code == 400
    assert missing.json() == {"object": "error", "message": "Field required: model_path", "type": "Bad Request",
                              "param": None, "code": 400}


def test_streaming_sends_cumulative_chunks(engine_a):
    body = {"input_ids": PROMPTS[0], "stream": True, "return_logprob": True,
            "sampling_params": {"temperature": 0, "max_new_tokens": 5, "ignore_eos": True}}
    with SESSION.post(f"{engine_a.url}/generate", json=body, stream=True, timeout=60) as reply:
        events = [line[len(b"data: "):] for line in reply.iter_lines() if line.startswith(b"data: ")]
    assert events[-1] == b"[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert [len(c["output_ids"]) for c in chunks] == [1, 2, 3, 4, 5]
    assert all(c["meta_info"]["finish_reason"] is None for c in chunks[:-1])
    assert chunks[-1]["meta_info"]["finish_reason"] == {"type": "length", "length": 5}
    assert chunks[-1]["output_ids"] == generate(engine_a.url, PROMPTS[0], temperature=0, max_new_tokens=5,
                                                ignore_eos=True)["output_ids"]
