"""Cross-request batching for in-process RMs (`laser.server.rms.coalesce`), measured side by side:
16 requests with 4 candidates each arrive at once at the `hf` RM as large as the policy
(SmolLM2-135M's weights, fresh head: `assets.policy_sized_reward_model`), scored
- coalesced (what the server does): one forward at a time, waiting requests batched together;
- per request, all at once (before): each request's own forward in its own thread.
Alternating, `--repeats` times each; prints the medians and their ratio.

    .venv/bin/python bench/rm_batching.py --out bench/rm_batching.json     # ~1 minute

Not a timed test: figures depend on the machine; read the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


async def _main(args: argparse.Namespace) -> dict[str, object]:
    from laser.server import assets
    from laser.server.data import arithmetic_items
    from laser.server.rms.base import Query
    from laser.server.rms.model_backed import HFRewardModel

    cache = ROOT / "laser-data" / "cache"
    rm = HFRewardModel("policy-rm", str(assets.policy_sized_reward_model(cache)))
    items = arithmetic_items(args.requests, seed=3)
    requests = [
        (Query(it.prompt, ""), [f"The answer is {it.reference}.", "I am not sure.",
                                f"It is {i}.", "Let me think step by step about this."])
        for i, it in enumerate(items)
    ]  # fmt: skip
    await asyncio.gather(*(rm.score(q, r) for q, r in requests[:2]))  # warm-up

    async def coalesced() -> float:
        t = time.perf_counter()
        await asyncio.gather(*(rm.score(q, r) for q, r in requests))
        return time.perf_counter() - t

    async def per_request() -> float:
        t = time.perf_counter()
        await asyncio.gather(*(asyncio.to_thread(rm._score, q, r) for q, r in requests))
        return time.perf_counter() - t

    runs: dict[str, list[float]] = {"coalesced": [], "per_request": []}
    for i in range(args.repeats):
        order = ("coalesced", "per_request") if i % 2 == 0 else ("per_request", "coalesced")
        for name in order:
            runs[name].append(await (coalesced() if name == "coalesced" else per_request()))
    med = {k: statistics.median(v) for k, v in runs.items()}
    return {
        "requests": args.requests,
        "candidates_per_request": 4,
        "cores": os.cpu_count(),
        "load_average": os.getloadavg(),
        "runs_s": runs,
        "median_s": med,
        "speedup": med["per_request"] / med["coalesced"],
        "forward_calls": rm.batcher.calls,
        "items": rm.batcher.items,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "rm_batching.json")
    p.add_argument("--requests", type=int, default=16)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    result = asyncio.run(_main(args))
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    m = result["median_s"]
    assert isinstance(m, dict)
    print(
        f"{args.requests} requests x 4 candidates at once: coalesced {m['coalesced']:.2f} s, "
        f"per request {m['per_request']:.2f} s (median of {args.repeats}); "
        f"{result['speedup']:.2f}x"
    )


if __name__ == "__main__":
    main()
