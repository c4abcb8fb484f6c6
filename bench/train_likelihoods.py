"""Where a training step's likelihood RMs get the base model's likelihoods, side by side in
one run: the same `laser-server train` (embedded SmolLM2-135M, arithmetic demo, the vLLM
sampler with the merged hand-over, one fixed likelihood RM) with

- `hf`: a transformers copy of the base model scores the candidates (what training did
  before: the engine holds the policy, so it cannot);
- `engine`: the engine reloads the base weights in place, scores at engine speed (prompt
  logprobs, prefix cache), and the sampler hands the policy back before it samples again.

Step 1 samples from the base model (nothing handed over yet: both score in the engine), so
the comparison is over steps 2..; printed per RM: median RM scoring time per step, median
sampling time, their ratio, and hf / engine.

    .venv/bin/python bench/train_likelihoods.py --out bench/train_likelihoods.json  # ~15 min

Not a timed test: figures depend on the machine; read the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from pathlib import Path
from typing import Any

from _training import ROOT, train_steps


def _run(rm: str, likelihoods: str, args: argparse.Namespace) -> dict[str, Any]:
    flags = [
        "--demo", str(args.prompts),
        "--demo-eval", "1",
        "--iterations", "1",
        "--batch-size", str(args.batch_size),
        "--n", str(args.n),
        "--max-tokens", str(args.max_tokens),
        "--lr", "1e-4",
        "--selector", "fixed",
        "--fixed-rm", rm,
        "--likelihoods", likelihoods,
        "--no-progress",
    ]  # fmt: skip
    steps, wall = train_steps(f"lik-{rm}-{likelihoods}", flags, args.timeout)
    later = steps[1:]
    score = statistics.median(s["score_s"] for s in later)
    sampling = statistics.median(s["generate_s"] + s["handover_s"] for s in later)
    return {
        "rm": rm,
        "likelihoods": likelihoods,
        "wall_s": round(wall, 1),
        "steps": [
            {k: s.get(k) for k in ("step", "generate_s", "handover_s", "score_s", "dpo_s")}
            for s in steps
        ],
        "score_s_median": round(score, 2),
        "sampling_s_median": round(sampling, 2),
        "score_over_sampling": round(score / sampling, 2),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "train_likelihoods.json")
    p.add_argument("--rms", nargs="+", default=["loglik", "judge"])
    p.add_argument("--prompts", type=int, default=24, help="demo prompts (steps = prompts/batch)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--timeout", type=float, default=1800)
    args = p.parse_args()
    results = [_run(rm, lik, args) for rm in args.rms for lik in ("hf", "engine")]
    report = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "load_average": os.getloadavg(),
        },
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "command": "python bench/train_likelihoods.py " + " ".join(sys.argv[1:]),
        "results": results,
    }
    args.out.write_text(json.dumps(report, indent=1, default=str) + "\n")
    print("| RM | likelihoods | RM scoring per step (median) | sampling per step | scoring / "
          "sampling | hf / engine |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|")
    by = {(r["rm"], r["likelihoods"]): r for r in results}
    for r in results:
        speedup = by[(r["rm"], "hf")]["score_s_median"] / max(
            by[(r["rm"], "engine")]["score_s_median"], 1e-9
        )
        print(
            f"| {r['rm']} | {r['likelihoods']} | {r['score_s_median']:.1f} s "
            f"| {r['sampling_s_median']:.1f} s | {r['score_over_sampling']:.2f}x "
            f"| {speedup:.1f}x |"
        )


if __name__ == "__main__":
    main()
