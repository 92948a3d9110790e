# Megatron architecture flags of qwen2.5-0.5B (must match its HF config.json; checked at start-up).
MODEL_ARGS=(
   --swiglu
   --num-layers 24
   --hidden-size 896
   --ffn-hidden-size 4864
   --num-attention-heads 14
   --group-query-attention
   --num-query-groups 2
   --use-rotary-position-embeddings
   --disable-bias-linear
   --normalization RMSNorm
   --norm-epsilon 1e-6
   --rotary-base ${MODEL_ARGS_ROTARY_BASE:-1000000}
   --vocab-size 151936
   --kv-channels 64
   --add-qkv-bias
)
