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
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {
    "merged": ["--handover", "merged"],
    "lora": ["--handover", "lora"],
    "hf": ["--engine", "hf"],
}


def _run(name: str, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix=f"handover-{name}-") as out:
        cmd = [
            str(ROOT / ".venv" / "bin" / "laser-server"),
            "train",
            "--demo", str(args.prompts),
            "--iterations", "1",
            "--batch-size", str(args.batch_size),
            "--n", str(args.n),
            "--max-tokens", str(args.max_tokens),
            "--lr", "1e-4",
            "--selector", "fixed",
            "--fixed-rm", "arith",
            "--output-dir", out,
            *VARIANTS[name],
        ]  # fmt: skip
        print(f"[{name}] {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
        wall = time.perf_counter() - t
        if proc.returncode != 0:
            raise SystemExit(f"[{name}] failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        steps = [json.loads(line) for line in Path(out, "steps.jsonl").read_text().splitlines()]
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
