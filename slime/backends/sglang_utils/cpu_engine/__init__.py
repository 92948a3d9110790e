"""A CPU stand-in for an SGLang server: SGLang's HTTP API with a transformers model underneath.

Start one with `python -m slime.backends.sglang_utils.cpu_engine --model-path DIR --port P` or, from Python,
`launch_cpu_engine(DIR, P)` (`slime.backends.sglang_utils.cpu_engine.launcher`). See docs/cpu_engine.md.
Importing this package loads neither torch nor FastAPI.
"""
