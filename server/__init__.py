"""laser.server: the FastAPI app, the reranker, engines, reward models, the store, training.

Folders are layers, imports point down: `api/` (HTTP) -> `reranker.py` and `services.py` ->
`engines/`, `rms/`, `store/`, `featurize.py`, `prompts.py` -> `config.py`, `protocol.py`,
`errors.py` and the other base modules. The commands (`cli.py`, `training/`,
`evaluation/`, `benchmark/`, `ope/`) sit on top.
"""
