"""How the training loop's sampler follows the policy, measured side by side in one run:
the same `laser-server train` (embedded SmolLM2-135M, arithmetic demo, one fixed cheap RM so
that sampling is what differs) with each way of getting the new weights to the sampler:

- `merged`: the LoRA deltas merged into the base weights and reloaded into vLLM in place;
- `lora`: the adapter saved and loaded through vLLM's LoRA path every step;
- `hf`: transformers `generate` on the model being trained (no hand-over at all).

Step 1 samples from the initial policy (no adapter yet): it is each run's adapter-free
reference. Later steps sample with the adapter; their sampling time (hand-over + generate)
is reported against step 1's.

    .venv/bin/python bench/train_handover.py --out bench/train_handover.json    # ~12 minutes

Not a timed test: figures depend on the machine; read the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
from pathlib import Path
from typing import Any

from _training import ROOT, train_steps

VARIANTS = {
    "merged": ["--handover", "merged"],
    "lora": ["--handover", "lora"],
    "hf": ["--engine", "hf"],
}


def _run(name: str, args: argparse.Namespace) -> dict[str, Any]:
    flags = [
        "--demo", str(args.prompts),
        "--iterations", "1",
        "--batch-size", str(args.batch_size),
        "--n", str(args.n),
        "--max-tokens", str(args.max_tokens),
        "--lr", "1e-4",
        "--selector", "fixed",
        "--fixed-rm", "arith",
        *VARIANTS[name],
    ]  # fmt: skip
    steps, wall = train_steps(f"handover-{name}", flags, args.timeout)
    rows = [
        {
            "step": s["step"],
            "handover_s": s["handover_s"],
            "generate_s": s["generate_s"],
            "sampling_s": round(s["handover_s"] + s["generate_s"], 3),
            "step_s": s["step_s"],
        }
        for s in steps
    ]
    first = rows[0]["sampling_s"]
    later = [r["sampling_s"] for r in rows[1:]]
    later_steps = [r["step_s"] for r in rows[1:]]
    return {
        "variant": name,
        "wall_s": round(wall, 1),
        "steps": rows,
        "adapter_free_sampling_s": first,
        "with_adapter_sampling_s_median": statistics.median(later),
        "sampling_ratio": round(statistics.median(later) / first, 2),
        "step_ratio": round(statistics.median(later_steps) / rows[0]["step_s"], 2),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "train_handover.json")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--prompts", type=int, default=32, help="demo prompts (steps = prompts/batch)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--timeout", type=float, default=1800)
    args = p.parse_args()
    results = [_run(name, args) for name in args.variants]
    report = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "load_average": os.getloadavg(),
        },
        "settings": {k: v for k, v in vars(args).items() if k not in ("out",)},
        "results": results,
    }
    args.out.write_text(json.dumps(report, indent=1, default=str) + "\n")
    print("| sampler | step 1 sampling (no adapter) | later steps' sampling (median) | ratio "
          "| step time ratio | run wall |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r['variant']} | {r['adapter_free_sampling_s']:.1f} s "
            f"| {r['with_adapter_sampling_s_median']:.1f} s | {r['sampling_ratio']:.2f}x "
            f"| {r['step_ratio']:.2f}x | {r['wall_s']:.0f} s |"
        )


if __name__ == "__main__":
    main()
