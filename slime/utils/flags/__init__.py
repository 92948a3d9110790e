"""Flag declarations, one module per family: Megatron's flags, slime's flags, SGLang's flags."""
