"""Evaluation: RM-selection strategies side by side on the same cached candidates.

`laser-server eval` (`cli.py`) builds the data (`data.py`); `harness.evaluate` collects
(`collect.py`: load, sample in `sampling.py`, score in `scoring.py`, grade with `metrics.py`,
featurize; cached on disk by `cache.py`), lets every strategy choose (`analysis.py` runs the
protocol of `protocol.py` over `strategies.py`, pure numpy) and writes the report
(`report.py`, plots in `plots.py`, row names in `labels.py`).

From Python, inside the event loop the engine runs on:

>>> # from laser.server.evaluation.config import EvalConfig
>>> # from laser.server.evaluation.harness import evaluate
>>> # report = await evaluate(EvalConfig(tasks=["arithmetic"], items_per_task=20), settings,
>>> #                         services.engine, services.encoder, "out", "cache")
"""
