#!/usr/bin/env bash
# GRPO on one GPU, ours against TRL (benchmarks/grpo_vs_trl.py, the generation-heavy `long` workload: recite a
# memorised text from a given word to the end of its sentence, answers of 5 to 204 tokens, at most 256 new tokens)
# on a Qwen3-0.6B-shaped model: random weights with the real Qwen3 tokenizer, fine-tuned on the task on the GPU first
# (bf16 autocast, saved in bf16) so that it knows the text and ends its turns, then the same checkpoint for every side:
#   - TRL's GRPOTrainer with its vLLM-free default (model.generate), and again with vLLM colocated in its process
#     when vllm is installed;
#   - ours: train.py with one trainer and one SGLang engine sharing the GPU (--colocate); the engine's generation
#     tokens/s is the `ours` row's generation figure (all of a step's requests in flight at once, through the
#     router), next to TRL's.
# Per side: whole-process time, generation and training seconds per step, tokens/s, reward per step, held-out
# accuracy, generated-length distribution, step time over the FLOPs floor (bf16 matmul rate measured in the run).
# Not yet run on a GPU (none has been available to this work), so its duration there is unmeasured.
#   bash benchmarks/gpu_grpo.sh           # one GPU: needs trl, sglang and sglang-router (vllm optional)
#   bash benchmarks/gpu_grpo.sh --tiny    # anywhere (CPU): the same commands on a tiny model with CPU engines and
#                                         # TRL's default generation only, so the script does not rot (CI runs it)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
PYTHON=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled}
if [ "${1:-}" = "--tiny" ]; then
    shift
    exec "$PYTHON" benchmarks/grpo_vs_trl.py --workload long --tiny --colocate --output "$OUT/gpu_grpo_tiny.json" "$@"
fi
TRL_GENERATION=(generate)
if "$PYTHON" -c "import vllm" 2>/dev/null; then
    TRL_GENERATION+=(vllm)
else
    echo "vllm is not installed: TRL runs with model.generate only" >&2
fi
# A hang (a stuck engine, a kernel compile loop) must not eat the GPU budget.
exec timeout --signal=INT --kill-after=30 "${GPU_GRPO_TIMEOUT:-1800}" "$PYTHON" benchmarks/grpo_vs_trl.py \
    --workload long --shape qwen3-0.6b --colocate --warm-up-steps 300 --warm-up-lr 3e-4 \
    --steps 10 --prompts 16 --group-size 8 --lr 1e-5 --trl-generation "${TRL_GENERATION[@]}" \
    --output "$OUT/gpu_grpo.json" "$@"
