#!/usr/bin/env bash
# CPU quick start: a real SFT run through train_async.py with 2 trainers (DP=2) on this machine's CPUs.
#   bash scripts/quickstart-cpu.sh
# Installs what is missing (a .venv with the CPU build of torch), builds a small chat task (reverse a list of
# words) with examples/quickstart/make_task.py, converts it with tools/prepare_openhermes.py, makes a small
# Qwen3-architecture model, trains it with sft_loss and per-token averaging, saves a checkpoint and an HF export,
# and compares greedy answers on held-out prompts before and after. Outputs go to $OUT (outputs/quickstart); the
# figures (times, tokens/s, losses, accuracy before/after) to $RESULTS (benchmarks/results/quickstart.json).
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS=0
INSTALLED=0

if [ -f .venv/bin/activate ]; then . .venv/bin/activate; fi
if ! python3 -c "import slime, torch, megatron.core, ray, transformers, pyarrow, gguf" 2>/dev/null; then
    echo "== installing (a .venv with the CPU build of torch, then this package)"
    [ -d .venv ] || python3 -m venv .venv
    . .venv/bin/activate
    python3 -m pip install -q -U pip
    python3 -m pip install -q torch==2.13.0
    python3 -m pip install -q -e ".[assets]"   # assets: the GGUF reader that unpacks the SmolLM2 tokenizer
    INSTALLED=1
fi

export RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled} PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
OUT=${OUT:-outputs/quickstart}
ROLLOUTS=${ROLLOUTS:-150}
RESULTS=${RESULTS:-benchmarks/results/quickstart.json}
mkdir -p "$OUT"

echo "== data: the task in ShareGPT form, converted to messages parquet by the real converter"
python3 examples/quickstart/make_task.py --output-dir "$OUT/data"
python3 tools/prepare_openhermes.py --input "$OUT/data/train.json" --output "$OUT/data/train.parquet"
python3 tools/prepare_openhermes.py --input "$OUT/data/validation.json" --output "$OUT/data/validation.parquet"

echo "== model: a small randomly initialised Qwen3 with SmolLM2's tokenizer and ChatML template"
python3 examples/quickstart/make_model.py --output-dir "$OUT/init_model"

echo "== before training: greedy answers on held-out prompts"
python3 examples/quickstart/evaluate.py --model "$OUT/init_model" --prompts "$OUT/data/held_out.json" \
    | tee "$OUT/before.txt"

echo "== training: train_async.py, 2 CPU trainers"
rm -rf "$OUT/ckpt" "$OUT/hf" "$OUT/metrics.jsonl"
python3 train_async.py \
    --actor-num-nodes 1 --actor-num-gpus-per-node 2 \
    --hf-checkpoint "$OUT/init_model" --ref-load "$OUT/init_model" --load "$OUT/ckpt" \
    --rollout-function-path slime.rollout.sft_rollout.generate_rollout \
    --prompt-data "$OUT/data/train.parquet" --input-key messages --rollout-shuffle \
    --num-rollout "$ROLLOUTS" --rollout-batch-size 32 --global-batch-size 32 \
    --loss-type sft_loss --calculate-per-token-loss --disable-compute-advantages-and-returns --debug-train-only \
    --use-dynamic-batch-size --max-tokens-per-gpu 2048 --data-pad-size-multiplier 8 \
    --optimizer adam --lr 3e-3 --lr-decay-style cosine --min-lr 3e-4 --lr-warmup-fraction 0.05 \
    --weight-decay 0.0 --adam-beta1 0.9 --adam-beta2 0.95 --attention-dropout 0.0 --hidden-dropout 0.0 \
    --eval-prompt-data validation "$OUT/data/validation.parquet" --eval-interval 50 \
    --save "$OUT/ckpt" --save-interval "$ROLLOUTS" --save-hf "$OUT/hf" --metrics-file "$OUT/metrics.jsonl" \
    2>&1 | tee "$OUT/train.log"

echo "== after training: greedy answers on the same held-out prompts"
python3 examples/quickstart/evaluate.py --model "$OUT/hf" --prompts "$OUT/data/held_out.json" | tee "$OUT/after.txt"

python3 examples/quickstart/summarize.py --out "$OUT" --results "$RESULTS" --script-seconds "$SECONDS" \
    --installed "$INSTALLED"
