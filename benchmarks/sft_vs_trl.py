"""Our SFT path (train_async.py) and TRL's SFTTrainer side by side, on the same work, in one command.

Same initial weights (one HF checkpoint of a small Qwen3, saved once), the same conversations (the first
--steps x --batch-size of the generated set) in the same order, the same epochs (--epochs), the same Qwen3 tokenizer
and chat template, the same loss (assistant tokens only, mean over the trained tokens of each step), optimizer
(Adam, no weight decay, grad-norm clip 1.0), constant learning rate. Each trainer runs in its own process (peak
memory is per process). Reported side by side: loss per step, tokens/s, training time, the whole process's time
(launch to exit, measured by this script for every run alike), time to the first step, peak memory, and the
fraction of computed tokens that are padding.

Start-up: the whole process's time splits into the time to the first step and the training after it. Ours is split
further by the run's own start-up report (`startup/*` in its metrics file: imports, Ray, rollout manager, trainers,
first rollout) and by a probe process that builds the same trainer in-process with the same flags and times the
parts of its start: importing the trainer, the process group, the model and optimizer, the checkpoint load.

TRL runs in three configurations, each in its own process:
- `padded`: SFTTrainer's defaults (each batch padded to its longest conversation);
- `padding_free`: `padding_free=True`, the same batches flattened into one sequence without padding (TRL documents
  it for FlashAttention; on CPU transformers' SDPA path separates the sequences by their position ids, and this
  run's losses equal `padded`'s, which shows it);
- `packed`: `packing=True` (best-fit-decreasing packs of up to --max-train-length tokens, padding-free) of the same
  conversations, --pack-batch-size packs per step, as many steps as the packs make. Its batches hold other
  conversations, so its losses are not comparable step by step; its time on the same tokens is.

TRL's `assistant_only_loss` needs `{% generation %}` markers and refuses to patch this Qwen3 template, so TRL gets the
conversations pre-tokenised with `input_ids` + `assistant_masks` (our single-render masks, which equal the
template's tokens); its own label building, collator and loss reduction then do the rest.

  python benchmarks/sft_vs_trl.py                          # CPU: a small Qwen3 (4 layers, hidden 256)
  python benchmarks/sft_vs_trl.py --shape qwen3-4b --steps 8  # one GPU: Qwen3-4B-shaped (benchmarks/gpu_sft.sh)

Needs `pip install -e ".[benchmark]"` (trl).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


# name: (layers, hidden, ffn, heads, kv heads, head dim)
SHAPES = {
    "tiny": (1, 32, 64, 2, 1, 16),
    "small": (4, 256, 768, 4, 2, 64),
    "qwen3-4b": (36, 2560, 9728, 32, 8, 128),
}


def build_inputs(work: str, conversations: int, shape: str, max_train_length: int, train_conversations: int) -> None:
    """The shared inputs: messages parquet and the same conversations pre-tokenised for TRL (the first
    `train_conversations` of those up to `max_train_length` tokens, in order), every conversation's length for the
    packing study, one HF checkpoint."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch
    import transformers

    from benchmarks.bench_loss_mask import make_conversations
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools"))
    from fetch_assets import fetch_qwen3_tokenizer
    from slime.utils.mask_utils import MultiTurnLossMaskGenerator

    tokenizer_dir = fetch_qwen3_tokenizer()
    tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
    generator = MultiTurnLossMaskGenerator(tokenizer, "qwen3")
    kept = []
    with open(f"{work}/tokenized.jsonl", "w") as f, open(f"{work}/lengths.json", "w") as lengths:
        all_lengths = []
        for messages in make_conversations(conversations, seed=1):
            ids, mask = generator.get_loss_mask(messages)
            all_lengths.append(len(ids))
            if len(ids) <= max_train_length and len(kept) < train_conversations:
                kept.append(messages)
                f.write(json.dumps({"input_ids": ids, "assistant_masks": mask}) + "\n")
        json.dump(all_lengths, lengths)
    pq.write_table(pa.table({"messages": kept}), f"{work}/data.parquet")
    torch.manual_seed(0)
    layers, hidden, ffn, heads, kv_heads, head_dim = SHAPES[shape]
    config = transformers.Qwen3Config(
        vocab_size=151936, hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim,
        max_position_embeddings=4096, rms_norm_eps=1e-6, rope_theta=1e6, tie_word_embeddings=True,
    )
    transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(f"{work}/model")
    for name in os.listdir(tokenizer_dir):
        shutil.copy(os.path.join(tokenizer_dir, name), f"{work}/model")


def our_flags(work: str, options: argparse.Namespace) -> list[str]:
    """train_async.py's flags: one trainer; rollout batch = global batch = one packed micro-batch per step."""
    return [
        "--actor-num-gpus-per-node", "1", "--hf-checkpoint", f"{work}/model", "--load", f"{work}/model",
        "--rollout-function-path", "slime.rollout.sft_rollout.generate_rollout", "--prompt-data",
        f"{work}/data.parquet", "--input-key", "messages", "--loss-mask-type", "qwen3",
        "--num-epoch", str(options.epochs), "--rollout-batch-size", str(options.batch_size),
        "--global-batch-size", str(options.batch_size), "--loss-type", "sft_loss", "--calculate-per-token-loss",
        "--disable-compute-advantages-and-returns", "--debug-train-only", "--use-dynamic-batch-size",
        "--max-tokens-per-gpu", "1000000", "--optimizer", "adam", "--lr", str(options.lr),
        "--lr-decay-style", "constant", "--weight-decay", "0", "--adam-beta1", "0.9", "--adam-beta2", "0.999",
        "--adam-eps", "1e-8", "--clip-grad", "1.0", "--attention-dropout", "0", "--hidden-dropout", "0",
        "--metrics-file", f"{work}/ours.jsonl",
    ]


def run_process(command: list[str], env: dict, first_step: Callable[[], bool]
                ) -> tuple[subprocess.CompletedProcess, float, float | None]:
    """Run `command` to its end: (result, seconds from launch to exit, seconds from launch until `first_step()`
    first held, polled every 50 ms)."""
    started = time.monotonic()
    first = None
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=err, text=True)
        while process.poll() is None:
            if first is None and first_step():
                first = time.monotonic() - started
            time.sleep(0.05)
        seconds = time.monotonic() - started
        out.seek(0), err.seek(0)
        result = subprocess.CompletedProcess(command, process.returncode, out.read(), err.read())
    return result, seconds, first


def step_times_summary(seconds: list[float]) -> dict:
    """The first step against the others: a slow first step (allocations, kernel selection) is part of the
    training time of a short run."""
    later = sorted(seconds[1:])
    return {"first_step_s": seconds[0], "later_steps_median_s": later[len(later) // 2] if later else None}


def run_ours(work: str, options: argparse.Namespace) -> dict:
    """train_async.py, timed from launch to exit; its first step is when its metrics file first holds a loss."""
    metrics = f"{work}/ours.jsonl"
    if os.path.exists(metrics):  # a previous repeat's (the run appends)
        os.remove(metrics)
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": ROOT}

    def first_step() -> bool:
        return os.path.exists(metrics) and '"train/loss"' in open(metrics).read()

    result, seconds, first = run_process([sys.executable, f"{ROOT}/train_async.py", *our_flags(work, options)], env,
                                         first_step)
    if result.returncode:
        sys.exit(f"train_async.py failed:\n{result.stdout[-2000:]}{result.stderr[-4000:]}")
    lines = [json.loads(line) for line in open(metrics)]
    steps = [line for line in lines if "train/loss" in line]
    step_seconds = [s["train/step_time"] for s in steps]
    tokens = sum(s["train/tokens_per_s"] * s["train/step_time"] for s in steps)
    return {
        "losses": [s["train/loss"] for s in steps],
        # As for TRL: all real tokens of all steps (the first included) over the training time.
        "tokens": round(tokens),
        "tokens_per_s": tokens / sum(step_seconds),
        "train_seconds": sum(step_seconds),
        "process_seconds": seconds,
        "first_step_after_s": first,
        **step_times_summary(step_seconds),
        "peak_memory_gb": max(s["train/peak_rss_gb"] for s in steps),
        "padding_fraction": sum(s["train/padding_fraction"] * s["train/step_time"] for s in steps)
        / sum(step_seconds),
        # The run's own start-up report (the driver's phases), when it makes one.
        "startup": {k: v for line in lines for k, v in line.items() if k.startswith("startup/")},
    }


def startup_probe(work: str, options: argparse.Namespace) -> dict:
    """Runs in its own process (see main): the trainer's start with the run's flags, in-process, its parts timed
    by wrapping the functions `MegatronTrainRayActor.init` calls (so the split follows the real start, whatever
    else it does)."""
    started = time.perf_counter()
    from slime.backends.megatron_utils import actor as actor_module

    imported = time.perf_counter()
    from slime.utils.arguments import compute_num_rollout, parse_args

    args = parse_args(our_flags(work, options))
    compute_num_rollout(args, options.steps * options.batch_size)
    parts: dict[str, float] = {}

    def timed(name: str, fn):
        def wrapper(*a, **k):
            begun = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                parts[name] = parts.get(name, 0.0) + time.perf_counter() - begun
        return wrapper

    for name, attribute in (("process_group_s", "init_distributed"), ("model_build_s", "setup_model_and_optimizer"),
                            ("checkpoint_load_s", "load_checkpoint")):
        setattr(actor_module, attribute, timed(name, getattr(actor_module, attribute)))
    initialising = time.perf_counter()
    actor_module.MegatronTrainRayActor().init(args)
    init_s = time.perf_counter() - initialising
    return {"trainer_imports_s": imported - started, **parts, "other_init_s": init_s - sum(parts.values())}


TRL_MODES = ("padded", "padding_free", "packed")


def trl_worker(work: str, options: argparse.Namespace) -> dict:
    """Runs inside its own process (see main), in configuration `options.trl_mode`. Start-up phases are counted
    from the launch (`options.launched_at`, the parent's clock)."""
    import datasets
    import torch
    import transformers
    from trl import SFTConfig, SFTTrainer

    marks = {"imports": time.time()}
    dataset = datasets.load_dataset("json", data_files=f"{work}/tokenized.jsonl", split="train")
    model = transformers.AutoModelForCausalLM.from_pretrained(f"{work}/model", dtype=torch.float32)
    marks["data and model"] = time.time()
    packed = options.trl_mode == "packed"
    config = SFTConfig(
        output_dir=f"{work}/trl", num_train_epochs=options.epochs,
        per_device_train_batch_size=options.pack_batch_size if packed else options.batch_size,
        learning_rate=options.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, adam_beta1=0.9,
        adam_beta2=0.999, adam_epsilon=1e-8, max_grad_norm=1.0, use_cpu=not torch.cuda.is_available(),
        bf16=torch.cuda.is_available(), report_to=[], logging_steps=1, save_strategy="no",
        train_sampling_strategy="sequential", dataloader_num_workers=0, packing=packed,
        padding_free=options.trl_mode == "padding_free", max_length=options.max_train_length if packed else None,
    )
    step_ends: list[float] = []

    class StepTimes(transformers.TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if not step_ends:  # the first step's start
                step_ends.append(time.time())

        def on_step_end(self, args, state, control, **kwargs):
            step_ends.append(time.time())

    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, callbacks=[StepTimes()],
                         processing_class=transformers.AutoTokenizer.from_pretrained(f"{work}/model"))
    marks["trainer"] = time.time()
    losses, real_tokens, padded_tokens = [], [0], [0]
    compute_loss = trainer.compute_loss

    def recording_compute_loss(model, inputs, *args, **kwargs):
        # HF rounds logged losses to 4 decimals; record them exactly, with the batch's padding.
        # Padding-free batches carry no attention mask and no padding here (TRL pads them only on Neuron).
        mask = inputs.get("attention_mask")
        real_tokens[0] += int(mask.sum()) if mask is not None else inputs["input_ids"].numel()
        padded_tokens[0] += inputs["input_ids"].numel()
        loss = compute_loss(model, inputs, *args, **kwargs)
        losses.append(float((loss[0] if isinstance(loss, tuple) else loss).detach()))
        return loss

    trainer.compute_loss = recording_compute_loss
    output = trainer.train()
    phases, last = {}, options.launched_at
    for name in ("imports", "data and model", "trainer"):
        phases[f"{name.replace(' ', '_')}_s"], last = marks[name] - last, marks[name]
    phases["until_first_step_s"] = step_ends[0] - last  # train() set-up: dataloader, optimizer
    step_seconds = [b - a for a, b in zip(step_ends, step_ends[1:])]
    return {
        "losses": losses,
        "tokens": real_tokens[0],
        "tokens_per_s": real_tokens[0] / output.metrics["train_runtime"],
        "train_seconds": output.metrics["train_runtime"],
        "first_step_after_s": step_ends[1] - options.launched_at,
        **step_times_summary(step_seconds),
        "peak_memory_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
        "padding_fraction": 1 - real_tokens[0] / padded_tokens[0],
        "startup": phases,
    }


def packing_efficiency(work: str, options: argparse.Namespace) -> dict:
    """Padding fraction of micro-batches on the long-tailed length distribution: ours (dynamic batch size, pad to
    a multiple of 128) against TRL's padded batches; TRL's padding-free modes (`padding_free`, and `packing`,
    which turns padding-free on for its BFD strategies) compute no padding, but BFD packing truncates what does not
    fit in --pack-length."""
    import datasets
    from trl.data_utils import pack_dataset

    from slime.utils.dp_schedule import build_dp_schedule

    with open(f"{work}/lengths.json") as f:
        lengths = json.load(f)
    real = sum(lengths)
    schedule = build_dp_schedule(lengths, list(range(len(lengths))), dp_size=1, global_batch_size=len(lengths),
                                 max_tokens_per_gpu=options.max_tokens_per_gpu)
    ours_pad = sum(-sum(lengths[i] for i in mb) % 128 for mb in schedule.steps[0][0])
    batches = [lengths[i : i + options.batch_size] for i in range(0, len(lengths), options.batch_size)]
    trl_padded = sum(max(b) * len(b) for b in batches)
    packed = pack_dataset(datasets.Dataset.from_dict({"input_ids": [[0] * n for n in lengths]}),
                          seq_length=options.pack_length, strategy="bfd")
    return {
        "sequences": len(lengths), "mean_length": round(real / len(lengths), 1), "max_length": max(lengths),
        "ours_dynamic_batch": round(ours_pad / (real + ours_pad), 4),
        "trl_padded": round(1 - real / trl_padded, 4),
        "trl_packed_tokens_dropped_by_truncation": real - sum(len(x) for x in packed["input_ids"]),
    }


def add_mfu(work: str, options: argparse.Namespace, *results: dict) -> None:
    """MFU of each trainer from its tokens/s, the same model FLOPs per token (shape and the trained sequences'
    real lengths) and the same peak (the GPU's dense bf16 peak, or this CPU's measured fp32 matmul rate)."""
    from slime.utils.device import peak_tflops
    from slime.utils.flops import training_flops

    layers, hidden, ffn, heads, kv_heads, head_dim = SHAPES[options.shape]
    shape = argparse.Namespace(num_layers=layers, hidden_size=hidden, ffn_hidden_size=ffn, num_attention_heads=heads,
                               num_query_groups=kv_heads, kv_channels=head_dim, swiglu=True,
                               padded_vocab_size=151936, vocab_size=151936, peak_tflops=None)
    lengths = [len(json.loads(line)["input_ids"]) for line in open(f"{work}/tokenized.jsonl")]
    lengths = lengths[: options.steps * options.batch_size]
    flops_per_token = training_flops(shape, lengths) / sum(lengths)
    peak = peak_tflops(shape)
    for result in results:
        result["tflops"] = result["tokens_per_s"] * flops_per_token / 1e12
        result["mfu"] = result["tflops"] / peak if peak else None


def run_child(work: str, options: argparse.Namespace, *flags: str) -> tuple[dict, float]:
    """This script in its own process (a TRL configuration, or the start-up probe): its result and the seconds from
    launch to exit."""
    passed_on = {k: v for k, v in vars(options).items() if k in PASSED_ON}
    command = [sys.executable, __file__, "--work-dir", work, *flags, f"--launched-at={time.time()}",
               *[f"--{k.replace('_', '-')}={v}" for k, v in passed_on.items()]]
    child, seconds, _ = run_process(command, {**os.environ, "PYTHONPATH": ROOT}, lambda: False)
    match = re.search(r"^RESULT (.*)$", child.stdout, re.M)
    if not match:
        sys.exit(f"{' '.join(flags)} failed:\n{child.stdout[-2000:]}{child.stderr[-4000:]}")
    return json.loads(match[1]), seconds


# The options that define the work (passed to the child processes and recorded in the report).
PASSED_ON = ("steps", "batch_size", "epochs", "repeats", "lr", "shape", "conversations", "max_train_length",
             "max_tokens_per_gpu", "pack_length", "pack_batch_size", "trl_modes")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6, help="Steps per epoch of the unpacked configurations: the "
                        "data is the first --steps x --batch-size conversations.")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1, help="Run every trainer this many times, in turn.")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="small", help="Model shape (random weights).")
    parser.add_argument("--conversations", type=int, default=2000, help="Generated conversations (the packing "
                        "study's; training takes the first --steps x --batch-size of those that fit).")
    parser.add_argument("--max-train-length", type=int, default=1024, help="Train on conversations up to this long.")
    parser.add_argument("--max-tokens-per-gpu", type=int, default=9216, help="Packing study: our token budget.")
    parser.add_argument("--pack-length", type=int, default=2048, help="Packing study: TRL's packed max_length.")
    parser.add_argument("--pack-batch-size", type=int, default=1, help="TRL packed: packs per step.")
    parser.add_argument("--trl-modes", default=",".join(TRL_MODES), help="TRL configurations to run, comma-separated.")
    parser.add_argument("--output", default=os.path.join(ROOT, "benchmarks", "results", "sft_vs_trl.json"))
    parser.add_argument("--work-dir", default=None)
    parser.add_argument("--trl-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--trl-mode", choices=TRL_MODES, default="padded", help=argparse.SUPPRESS)
    parser.add_argument("--startup-probe", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--launched-at", type=float, default=None, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.trl_worker or options.startup_probe:
        worker = trl_worker if options.trl_worker else startup_probe
        print("RESULT " + json.dumps(worker(options.work_dir, options)))
        return
    modes = options.trl_modes.split(",")
    if not modes or not set(modes) <= set(TRL_MODES):
        parser.error(f"--trl-modes: choose from {', '.join(TRL_MODES)}")
    work = options.work_dir or tempfile.mkdtemp(prefix="sft_vs_trl_")
    os.makedirs(work, exist_ok=True)
    train_conversations = options.steps * options.batch_size
    build_inputs(work, max(options.conversations, 2 * train_conversations), options.shape, options.max_train_length,
                 train_conversations)
    # Each repeat runs every trainer once, in turn, so that a change in the shared machine's load between repeats
    # moves all of them; ratios are taken within a repeat, then their median over repeats.
    repeats: list[dict[str, dict]] = []
    for _ in range(options.repeats):
        runs = {"ours": run_ours(work, options)}
        for mode in modes:
            runs[mode], runs[mode]["process_seconds"] = run_child(work, options, "--trl-worker", f"--trl-mode={mode}")
        repeats.append(runs)
    ours, trl = repeats[0]["ours"], {mode: repeats[0][mode] for mode in modes}
    ours["startup"].update({f"probe/{k}": v for k, v in run_child(work, options, "--startup-probe")[0].items()})
    import torch
    import trl as trl_package

    add_mfu(work, options, ours, *trl.values())

    def median_ratio(mode: str, key: str, ours_over_trl: bool = False) -> float:
        ratios = sorted(r["ours"][key] / r[mode][key] if ours_over_trl else r[mode][key] / r["ours"][key]
                        for r in repeats)
        return ratios[len(ratios) // 2]

    report = {
        "date": time.strftime("%Y-%m-%d"),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)",
        "versions": {"torch": torch.__version__, "trl": trl_package.__version__},
        "config": {k: v for k, v in vars(options).items() if k in PASSED_ON},
        "ours": ours,
        "trl": trl,
        # Every repeat's times (the first repeat's full results are "ours" and "trl").
        "repeats": [{name: {k: run[k] for k in ("process_seconds", "train_seconds", "first_step_after_s")}
                     for name, run in runs.items()} for runs in repeats],
        # Packed TRL trains other batches (packs), so only the unpacked modes are compared step by step.
        "max_step_loss_abs_diff": {mode: max(abs(a - b) for a, b in zip(ours["losses"], trl[mode]["losses"]))
                                   for mode in trl if mode != "packed"},
        # The same tokens (data x epochs) in every run: TRL's time over ours, the median over repeats.
        "speedup": {mode: {"process": median_ratio(mode, "process_seconds"),
                           "train": median_ratio(mode, "train_seconds"),
                           "tokens_per_s": median_ratio(mode, "tokens_per_s", ours_over_trl=True)} for mode in trl},
        "padding": packing_efficiency(work, options),
    }
    if not options.work_dir:  # ours to remove (a model, its checkpoint, the data)
        shutil.rmtree(work, ignore_errors=True)
    os.makedirs(os.path.dirname(options.output), exist_ok=True)
    with open(options.output, "w") as f:
        json.dump(report, f, indent=2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
