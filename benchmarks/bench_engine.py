"""CPU engine throughput: the SGLang stand-in against transformers' own batched `generate`, on the same prompts.

A ~4M-parameter Qwen3 (SmolLM2 tokenizer, random weights, built by examples/quickstart/make_model.py) generates
`--new-tokens` tokens (greedy, EOS ignored so every request runs to the end) for `--requests` prompts of 16-64
random tokens:
  * transformers: one `model.generate` call over all prompts, left-padded (its fastest batched path);
  * the CPU engine: all requests sent at once over HTTP, batched by the engine itself (also measured with
    return_logprob, as slime's rollouts ask);
  * the engine as concurrency grows (at most C requests in flight, closed loop).
Both run in turn on the same machine with the same number of torch threads (--threads). The main comparison runs
--repeats times per side and reports the fastest run, since a shared machine is noisy. Writes
benchmarks/results/bench_engine.json.

  python benchmarks/bench_engine.py                       # the full run (a few minutes on 2 cores)
  python benchmarks/bench_engine.py --requests 8 --new-tokens 4 --concurrency 1 8 --layers 1   # smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time

import aiohttp
import httpx
import psutil
import torch
import transformers

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)
from slime.backends.sglang_utils.cpu_engine.launcher import launch_cpu_engine  # noqa: E402


def build_model(out_dir: str, hidden: int, layers: int) -> str:
    subprocess.run([sys.executable, os.path.join(REPO_ROOT, "examples", "quickstart", "make_model.py"),
                    "--output-dir", out_dir, "--hidden-size", str(hidden), "--layers", str(layers)],
                   check=True, stdout=subprocess.DEVNULL)
    return out_dir


def make_prompts(count: int, vocab: int, seed: int = 0) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(16, 65, (count,), generator=generator).tolist()
    return [torch.randint(0, vocab, (n,), generator=generator).tolist() for n in lengths]


class TransformersGenerate:
    """Batched greedy `generate` over every prompt at once (left padding, EOS off): transformers' fastest path."""

    def __init__(self, model_dir: str, prompts: list[list[int]], new_tokens: int) -> None:
        self.model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        self.config = copy.deepcopy(self.model.generation_config)
        self.config.eos_token_id, self.config.max_new_tokens = None, new_tokens
        self.config.min_new_tokens, self.config.do_sample = None, False
        self.config.pad_token_id = self.config.pad_token_id if self.config.pad_token_id is not None else 0
        self.width = max(map(len, prompts))
        self.ids = torch.full((len(prompts), self.width), self.config.pad_token_id, dtype=torch.long)
        self.mask = torch.zeros_like(self.ids)
        for row, prompt in enumerate(prompts):
            self.ids[row, self.width - len(prompt):] = torch.tensor(prompt)
            self.mask[row, self.width - len(prompt):] = 1
        with torch.inference_mode():  # warm-up
            self.model.generate(self.ids[:2, -4:], attention_mask=self.mask[:2, -4:], generation_config=self.config)

    def run(self) -> tuple[float, float, list[list[int]]]:
        """(wall seconds, CPU seconds, outputs)."""
        with torch.inference_mode():
            started, cpu = time.perf_counter(), time.process_time()
            out = self.model.generate(self.ids, attention_mask=self.mask, generation_config=self.config)
            seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        return seconds, cpu, out[:, self.width:].tolist()


async def run_requests(url: str, prompts: list[list[int]], new_tokens: int, concurrency: int,
                       return_logprob: bool) -> tuple[float, list[list[int]], int]:
    """Send every prompt with at most `concurrency` in flight; returns (seconds, outputs, generated tokens)."""
    limit = asyncio.Semaphore(concurrency)
    sampling = {"temperature": 0, "max_new_tokens": new_tokens, "ignore_eos": True}
    # aiohttp rather than httpx: the client shares the machine with the engine, and httpx's connection pool costs
    # seconds of CPU at hundreds of concurrent requests, CPU the engine would then not have.
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None)) as client:
        async def one(prompt: list[int]) -> list[int]:
            async with limit:
                async with client.post(f"{url}/generate", json={
                        "input_ids": prompt, "sampling_params": sampling, "return_logprob": return_logprob}) as reply:
                    reply.raise_for_status()
                    return (await reply.json())["output_ids"]

        await one(prompts[0][:4])  # warm-up (session, code paths)
        started = time.perf_counter()
        outputs = await asyncio.gather(*(one(p) for p in prompts))
        seconds = time.perf_counter() - started
    return seconds, list(outputs), sum(map(len, outputs))


def cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64, 256])
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs of the main comparison per side; the best is reported (shared machines are noisy)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads, the same for transformers and the engine (default 1: one engine "
                             "per core is how CPU engines are run, and OpenMP threads of a tiny model mostly wait)")
    parser.add_argument("--output", default=os.path.join(REPO_ROOT, "benchmarks", "results", "bench_engine.json"))
    options = parser.parse_args()
    torch.set_num_threads(options.threads)
    # A SIGTERM unwinds like Ctrl-C, so the engine subprocess and the temporary model are cleaned up.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    with tempfile.TemporaryDirectory(prefix="bench_engine_") as workdir:
        model_dir = build_model(os.path.join(workdir, "model"), options.hidden_size, options.layers)
        config = transformers.AutoConfig.from_pretrained(model_dir)
        params = sum(p.numel() for p in transformers.AutoModelForCausalLM.from_config(config).parameters())
        prompts = make_prompts(options.requests, config.vocab_size)
        total = options.requests * options.new_tokens

        baseline = TransformersGenerate(model_dir, prompts, options.new_tokens)
        report = {
            "date": time.strftime("%Y-%m-%d"),
            "device": f"CPU ({os.cpu_count()} cores, {options.threads} torch threads per process)",
            "machine": f"{platform.machine()}, Python {platform.python_version()}, torch {torch.__version__}, "
                       f"transformers {transformers.__version__}",
            "model": {"architecture": "Qwen3", "parameters_millions": round(params / 1e6, 2),
                      "hidden_size": options.hidden_size, "layers": options.layers, "vocab": config.vocab_size},
            "requests": options.requests, "new_tokens_per_request": options.new_tokens,
            "prompt_tokens": "16-64 random ids",
        }
        # The engine idles while transformers runs and the other way round; runs alternate so that load from
        # elsewhere on the machine hits both sides alike.
        engine = launch_cpu_engine(model_dir, free_port(), extra_args=["--random-seed", "0",
                                                                      "--max-running-requests", "256"],
                                   env={"OMP_NUM_THREADS": str(options.threads)},
                                   log_path=os.path.join(workdir, "engine.log"))
        try:
            hf_runs, engine_runs = [], []
            for _ in range(options.repeats):
                hf_runs.append(baseline.run())
                before = cpu_seconds(engine.process.pid)
                seconds, outputs, tokens = asyncio.run(
                    run_requests(engine.url, prompts, options.new_tokens, options.requests, False))
                engine_runs.append((seconds, cpu_seconds(engine.process.pid) - before, outputs, tokens))
            hf_seconds, _, hf_outputs = min(hf_runs, key=lambda run: run[0])
            seconds, _, outputs, tokens = min(engine_runs, key=lambda run: run[0])
            # CPU seconds are the contention-proof measure of work done: wall time on a shared machine also
            # counts the time other processes held the cores.
            report["transformers_generate"] = {
                "seconds": round(hf_seconds, 2), "tokens_per_s": round(total / hf_seconds, 1),
                "all_runs_s": [round(run[0], 2) for run in hf_runs],
                "cpu_seconds": round(min(run[1] for run in hf_runs), 2)}
            report["cpu_engine"] = {
                "seconds": round(seconds, 2), "tokens_per_s": round(tokens / seconds, 1),
                "all_runs_s": [round(run[0], 2) for run in engine_runs],
                "cpu_seconds": round(min(run[1] for run in engine_runs), 2),
                "speedup_vs_transformers": round(hf_seconds / seconds, 2),
                "cpu_time_ratio_vs_transformers": round(min(run[1] for run in engine_runs)
                                                        / min(run[1] for run in hf_runs), 2),
                "outputs_identical_to_transformers": sum(a == b for a, b in zip(outputs, hf_outputs))}
            print("transformers generate", report["transformers_generate"], flush=True)
            print("cpu engine", report["cpu_engine"], flush=True)
            seconds, _, tokens = asyncio.run(
                run_requests(engine.url, prompts, options.new_tokens, options.requests, True))
            report["cpu_engine_with_logprobs"] = {"seconds": round(seconds, 2),
                                                  "tokens_per_s": round(tokens / seconds, 1)}
            print("cpu engine + logprobs", report["cpu_engine_with_logprobs"], flush=True)
            report["concurrency_sweep"] = []
            for concurrency in options.concurrency:
                batch = prompts[:max(concurrency, min(8, options.requests))]
                seconds, _, tokens = asyncio.run(
                    run_requests(engine.url, batch, options.new_tokens, concurrency, False))
                row = {"concurrency": concurrency, "requests": len(batch), "seconds": round(seconds, 2),
                       "tokens_per_s": round(tokens / seconds, 1)}
                report["concurrency_sweep"].append(row)
                print("sweep", row, flush=True)
            state = httpx.get(f"{engine.url}/get_server_info", trust_env=False).json()["internal_states"][0]
            report["engine_max_batch_size"] = state["max_batch_size"]
        finally:
            engine.stop()

    os.makedirs(os.path.dirname(options.output), exist_ok=True)
    with open(options.output, "w") as f:
        json.dump(report, f, indent=2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
