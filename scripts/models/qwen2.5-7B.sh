# Megatron architecture flags of qwen2.5-7B (must match its HF config.json; checked at start-up).
MODEL_ARGS=(
   --swiglu
   --num-layers 28
   --hidden-size 3584
   --ffn-hidden-size 18944
   --num-attention-heads 28
   --group-query-attention
   --num-query-groups 4
   --use-rotary-position-embeddings
   --disable-bias-linear
   --normalization RMSNorm
   --norm-epsilon 1e-6
   --rotary-base ${MODEL_ARGS_ROTARY_BASE:-1000000}
   --vocab-size 152064
   --kv-channels 128
   --add-qkv-bias
   --untie-embeddings-and-output-weights
)
