"""Reward models: one protocol (`base.RewardModel`), the built-ins, model-backed RMs, and
the pool that scores with fallbacks behind circuit breakers.

- `base.py`: `Query`, `RewardModel`, `RMInputError` (input an RM cannot score).
- `builtin.py`: `loglik`, `agreement`, `relevance`, `arith`, `grounding`, `judge`, and the
  score ensemble (`normalized_mean`).
- `verifiers.py`: the arithmetic and grounding checks behind `arith` and `grounding`.
- `model_backed.py`: transformers classifiers, vLLM pooling and remote HTTP RMs;
  `coalesce.py` batches their calls across requests.
- `pool.py`: `RMPool`, scoring in order with fallback; `breaker.py`: its circuit breakers.
"""
