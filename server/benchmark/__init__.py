"""`laser-server bench`: laser-server against the alternatives, side by side in one process.

One engine and one set of reward models are loaded once; on the same prompts and the same
model the run measures, in turns:

- `server`: laser-server's `POST /generate` over HTTP on 127.0.0.1 (best-of-n, one RM
  picked by the bandit, decision committed to SQLite before the reply);
- `engine`: the engine alone generating the same n samples (the floor);
- `engine_rm`: the engine's n samples scored by the RM the server picked in that round;
- `ensemble`: the n samples scored by EVERY configured RM (concurrently, the ensemble's best
  case) and combined by normalised mean;
- `naive_loop`: n separate one-sample engine calls, then the picked RM;
- `naive_hf`: transformers `generate(num_return_sequences=n)`, then the picked RM.

Then the server's own overhead per request (client wall time minus generation and scoring),
throughput and latency at several concurrencies over HTTP (with the engine alone at the
same concurrency), and how cost grows with n and with document length. Ratios are what to
read: absolute times on a shared machine are noisy.

    results = await run_bench(BenchConfig.quick_config(), settings)   # on a fresh loop
    print(markdown(results))
"""

from laser.server.benchmark.cli import add_parser
from laser.server.benchmark.config import VARIANTS, BenchConfig
from laser.server.benchmark.report import markdown
from laser.server.benchmark.runner import run_bench

__all__ = ["VARIANTS", "BenchConfig", "add_parser", "markdown", "run_bench"]
