"""Evaluation: RM-selection strategies side by side on the same cached candidates.

`laser-server eval` (`cli.py`) builds the data (`data.py`), samples and scores once
(`harness.py`, cached on disk), lets every strategy choose (`strategies.py`, pure numpy),
grades (`metrics.py`) and writes the report and plots (`report.py`).

From Python, inside the event loop the engine runs on:

>>> # from laser.server.evaluation.config import EvalConfig
>>> # from laser.server.evaluation.harness import evaluate
>>> # report = await evaluate(EvalConfig(tasks=["arithmetic"], items_per_task=20), settings,
>>> #                         services.engine, services.encoder, "out", "cache")
"""
