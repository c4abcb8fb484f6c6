"""The durable log: decisions, feedback, bandit snapshots, reward-model changes.

- `base.py`: what both stores share (`Decision`, `FeedbackRow`, the row layout, the
  `LogStore` protocol, errors).
- `sqlite.py`: `Store`, one SQLite file in WAL mode (the default).
- `postgres.py`: `PostgresStore`, one log shared by replicas.
- `restore.py`: the bandit rebuilt from the latest snapshot and the feedback after it.
"""
