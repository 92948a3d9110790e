#!/usr/bin/env bash
# One GPU: a Qwen3-4B-shaped model (random weights), a fixed number of steps, ours and TRL (padded, padding-free,
# packed) side by side: tokens/s/GPU and MFU for each, plus our trainer alone (bench_train.py). Not yet run on a
# GPU (none has been available to this work), so its duration there is unmeasured.
#   bash benchmarks/gpu_sft.sh            # on a GPU
#   bash benchmarks/gpu_sft.sh --tiny     # anywhere (CPU): the same commands on a tiny shape, so the script does not rot
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
if [ "${1:-}" = "--tiny" ]; then
    python benchmarks/sft_vs_trl.py --shape tiny --steps 2 --batch-size 2 --conversations 40 --output "$OUT/gpu_sft_tiny.json"
    python benchmarks/bench_train.py --presets tiny --steps 1 --seq-len 64 --output "$OUT/gpu_train_tiny.json"
else
    python benchmarks/sft_vs_trl.py --shape qwen3-4b --steps 8 --batch-size 8 --conversations 400 \
        --output "$OUT/gpu_sft_vs_trl.json"
    python benchmarks/bench_train.py --presets qwen3-4b --steps 5 --seq-len 4096 --seqs-per-step 2 \
        --output "$OUT/gpu_train.json"
fi
