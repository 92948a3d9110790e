#!/usr/bin/env bash
# CPU RL quick start: SFT warm-up, then GRPO through train.py with 2 CPU trainers and 2 CPU engines behind the router.
#   bash scripts/quickstart-rl-cpu.sh
# Installs what is missing (a .venv with the CPU build of torch, this package, reasoning-gym), builds a verifiable
# task with reasoning-gym (basic_arithmetic: one-digit additions, "Calculate 3 + 5.") split into SFT, RL and
# held-out questions (tools/prepare_reasoning_gym.py), makes a small Qwen3-architecture model, warms it up with the
# project's SFT (train.py, sft_loss, short of mastery), then trains it with GRPO on the RL questions, rewarded by
# reasoning-gym's own score_answer (--custom-rm-path examples.reasoning_gym.reward.reward_func), and reports greedy
# held-out accuracy after SFT and after GRPO, the reward curve and tokens/s. Outputs go to $OUT
# (outputs/quickstart_rl); the figures to $RESULTS (benchmarks/results/quickstart_rl.json).
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS=0
INSTALLED=0

if [ -f .venv/bin/activate ]; then . .venv/bin/activate; fi
if ! python3 -c "import slime, torch, megatron.core, ray, transformers, pyarrow, gguf, sglang_router, reasoning_gym" \
        2>/dev/null; then
    echo "== installing (a .venv with the CPU build of torch, then this package and reasoning-gym)"
    [ -d .venv ] || python3 -m venv .venv
    . .venv/bin/activate
    python3 -m pip install -q -U pip
    python3 -m pip install -q torch==2.13.0
    python3 -m pip install -q -e ".[assets]" reasoning-gym==0.1.25
    INSTALLED=1
fi

export RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled} PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
OUT=${OUT:-outputs/quickstart_rl}
SFT_ROLLOUTS=${SFT_ROLLOUTS:-300}
GRPO_ROLLOUTS=${GRPO_ROLLOUTS:-80}
RESULTS=${RESULTS:-benchmarks/results/quickstart_rl.json}
TASK_CONFIG='{"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1, "operators": ["+"],
              "allow_parentheses": false, "allow_negation": false}'
mkdir -p "$OUT"

echo "== data: reasoning-gym basic_arithmetic, 121 distinct questions split into SFT / RL / held-out"
python3 tools/prepare_reasoning_gym.py --task basic_arithmetic --config "$TASK_CONFIG" \
    --sft 45 --train 46 --held-out 30 --seed 0 --output-dir "$OUT/data" \
    --system-prompt "Answer between <answer> and </answer> tags."

echo "== model: a small randomly initialised Qwen3 with SmolLM2's tokenizer and ChatML template"
python3 examples/quickstart/make_model.py --output-dir "$OUT/init_model"

# Shared by both stages: 2 CPU trainers (DP=2), Adam, no dropout.
COMMON_ARGS=(
    --actor-num-nodes 1 --actor-num-gpus-per-node 2
    --input-key messages --use-dynamic-batch-size --max-tokens-per-gpu 8192
    --optimizer adam --weight-decay 0.0 --adam-beta1 0.9 --attention-dropout 0.0 --hidden-dropout 0.0
)
SFT_ARGS=(
    --hf-checkpoint "$OUT/init_model" --ref-load "$OUT/init_model" --load "$OUT/sft_ckpt"
    --rollout-function-path slime.rollout.sft_rollout.generate_rollout
    --prompt-data "$OUT/data/sft.jsonl" --rollout-shuffle
    --num-rollout "$SFT_ROLLOUTS" --rollout-batch-size 16 --global-batch-size 16
    --loss-type sft_loss --calculate-per-token-loss --disable-compute-advantages-and-returns --debug-train-only
    --data-pad-size-multiplier 8
    --lr 3e-3 --lr-decay-style cosine --min-lr 3e-4 --lr-warmup-fraction 0.05 --adam-beta2 0.95
    --save "$OUT/sft_ckpt" --save-interval "$SFT_ROLLOUTS" --save-hf "$OUT/sft_hf"
    --metrics-file "$OUT/sft_metrics.jsonl"
)
# slime's GRPO flags (scripts/run-qwen3-4B.sh), at CPU size: 8 questions x 8 samples per rollout, one optimizer
# step per rollout, clip-higher, no KL; the engines evaluate the held-out questions greedily before and after.
GRPO_ARGS=(
    --rollout-num-gpus 2 --rollout-num-gpus-per-engine 1
    --hf-checkpoint "$OUT/sft_hf" --ref-load "$OUT/sft_hf" --load "$OUT/grpo_ckpt"
    --prompt-data "$OUT/data/train.jsonl" --label-key label --metadata-key metadata --apply-chat-template
    --rollout-shuffle --custom-rm-path examples.reasoning_gym.reward.reward_func
    --num-rollout "$GRPO_ROLLOUTS" --rollout-batch-size 8 --n-samples-per-prompt 8 --global-batch-size 64
    --rollout-max-response-len 12 --rollout-temperature 1.0
    --advantage-estimator grpo --loss-type policy_loss --eps-clip 0.2 --eps-clip-high 0.28 --kl-coef 0
    --lr 3e-4 --lr-decay-style constant --adam-beta2 0.98
    --eval-prompt-data held_out "$OUT/data/held_out.jsonl" --eval-interval "$GRPO_ROLLOUTS"
    --eval-temperature 0 --eval-max-response-len 12
    --save "$OUT/grpo_ckpt" --save-interval "$GRPO_ROLLOUTS" --save-hf "$OUT/grpo_hf"
    --metrics-file "$OUT/grpo_metrics.jsonl" --save-debug-rollout-data "$OUT/rollouts/{rollout_id}.pt"
)

echo "== SFT warm-up: train.py, 2 CPU trainers, $SFT_ROLLOUTS rollouts of 16 conversations"
rm -rf "$OUT/sft_ckpt" "$OUT/sft_hf" "$OUT/sft_metrics.jsonl"
python3 train.py "${COMMON_ARGS[@]}" "${SFT_ARGS[@]}" 2>&1 | tee "$OUT/sft.log"

echo "== after SFT: greedy answers on held-out questions"
python3 examples/reasoning_gym/evaluate.py --model "$OUT/sft_hf" --prompts "$OUT/data/held_out.jsonl" \
    | tee "$OUT/after_sft.txt"

echo "== GRPO: train.py, 2 CPU trainers, 2 CPU engines behind the router, $GRPO_ROLLOUTS rollouts"
rm -rf "$OUT/grpo_ckpt" "$OUT/grpo_hf" "$OUT/grpo_metrics.jsonl" "$OUT/rollouts"
python3 train.py "${COMMON_ARGS[@]}" "${GRPO_ARGS[@]}" 2>&1 | tee "$OUT/grpo.log"

echo "== after GRPO: greedy answers on the same held-out questions"
python3 examples/reasoning_gym/evaluate.py --model "$OUT/grpo_hf" --prompts "$OUT/data/held_out.jsonl" \
    | tee "$OUT/after_grpo.txt"

python3 examples/reasoning_gym/summarize.py --out "$OUT" --results "$RESULTS" --script-seconds "$SECONDS" \
    --installed "$INSTALLED"
