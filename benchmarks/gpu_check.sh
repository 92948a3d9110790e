#!/usr/bin/env bash
# The GPU readiness check (benchmarks/gpu_check.py): one GPU, under 10 minutes, a table of what the seed's 8-GPU run
# relies on (TE / flash-attn found, bf16 steps against fp32, packed attention, async checkpoint + resume, HF export,
# Qwen3-4B-shaped tokens/s, MFU and peak memory against the estimate, the fused log-prob against the plain path;
# RL: a GRPO step with the reference model and old log-probs, a PPO critic, weight-sync payloads on CUDA and NCCL).
# Results also go to benchmarks/results/gpu_check.json (not for --dry-run, unless --output is given).
#   bash benchmarks/gpu_check.sh             # on a GPU machine (needs megatron-core: benchmarks/gpu_requirements.txt)
#   bash benchmarks/gpu_check.sh --only rl   # the RL rows alone, merged into the JSON in place of their old results
#   bash benchmarks/gpu_check.sh --dry-run   # anywhere: tiny shapes on the CPU, checks the script itself
set -euo pipefail
cd "$(dirname "$0")/.."
# As the seed's launch script sets them: TE's communication overlap needs one CUDA connection; fewer OOMs from
# fragmentation with expandable segments.
export CUDA_DEVICE_MAX_CONNECTIONS=1
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}
export PYTHONUNBUFFERED=1
# The check is sized for 10 minutes; a hang (a stuck collective, a kernel compile loop) must not eat the GPU budget.
# python3: GPU images often ship a venv or system Python with no plain `python`.
exec timeout --signal=INT --kill-after=30 "${GPU_CHECK_TIMEOUT:-600}" "${PYTHON:-python3}" benchmarks/gpu_check.py "$@"
