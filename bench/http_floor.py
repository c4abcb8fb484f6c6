"""What HTTP + JSON cost on this machine, below any server logic: the floor under
`laser-server bench`'s "server overhead". A bare FastAPI app on uvicorn (127.0.0.1), asked by
an httpx client on the same event loop (as the bench's client is), answering
- a typed `GenerateResponse` from a POST with a /generate-sized JSON body (what our routes
  do: FastAPI validates the body, Pydantic serialises the reply in Rust);
- the same reply as pre-encoded bytes (no serialisation at all: the most any faster JSON
  library, e.g. orjson, could save);
plus `GenerateResponse.model_dump_json()` alone. Alternating, `--requests` each.

    .venv/bin/python bench/http_floor.py --out bench/http_floor.json     # ~20 seconds

Not a timed test: figures depend on the machine; read the differences.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import time
from pathlib import Path
from typing import Any

# Module level: FastAPI resolves the routes' (string) annotations in this module's globals.
from fastapi import FastAPI, Request, Response

from laser.server.protocol import GenerateRequest, GenerateResponse

ROOT = Path(__file__).resolve().parents[1]


def _reply() -> Any:
    from laser.server.protocol import Candidate, GenerateResponse, Usage

    text = "The answer is 42, because six times seven is forty-two. " * 2
    return GenerateResponse(
        id="d" * 32, text=text, reward_model="relevance", score=0.73, index=2,
        propensity=0.81, selection="bandit", model="smollm2-135m-instruct",
        candidates=[Candidate(text=text, score=0.5, finish_reason="length", tokens=32)] * 4,
        usage=Usage(prompt_tokens=40, completion_tokens=128, total_tokens=168),
        timings_ms={k: 1.0 for k in ("prepare", "generate", "score", "select", "store", "total")},
    )  # fmt: skip


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    import httpx
    import uvicorn

    reply = _reply()
    encoded = reply.model_dump_json().encode()
    app = FastAPI()

    @app.post("/typed", response_model=GenerateResponse)
    async def typed(body: GenerateRequest) -> GenerateResponse:
        return reply

    @app.post("/bytes")
    async def raw(request: Request) -> Response:
        GenerateRequest.model_validate_json(await request.body())
        return Response(encoded, media_type="application/json")

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    serving = asyncio.ensure_future(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    body = {
        "prompt": "What is 6 times 7? " * 3,
        "n": 4,
        "max_tokens": 32,
        "return_candidates": True,
    }
    times: dict[str, list[float]] = {"typed": [], "bytes": []}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
        for path in times:  # warm-up
            (await http.post(f"/{path}", json=body)).raise_for_status()
        for i in range(args.requests):
            for path in ("typed", "bytes") if i % 2 == 0 else ("bytes", "typed"):
                t = time.perf_counter()
                r = await http.post(f"/{path}", json=body)
                times[path].append((time.perf_counter() - t) * 1000)
                assert r.status_code == 200
    server.should_exit = True
    await serving
    t = time.perf_counter()
    for _ in range(2000):
        reply.model_dump_json()
    dump_us = (time.perf_counter() - t) / 2000 * 1e6
    p50 = {k: statistics.median(v) for k, v in times.items()}
    return {
        "requests": args.requests,
        "cores": os.cpu_count(),
        "load_average": os.getloadavg(),
        "p50_ms": p50,
        "p99_ms": {k: sorted(v)[int(0.99 * (len(v) - 1))] for k, v in times.items()},
        "serialisation_saved_ms": p50["typed"] - p50["bytes"],
        "model_dump_json_us": dump_us,
        "reply_bytes": len(encoded),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "http_floor.json")
    p.add_argument("--requests", type=int, default=300)
    args = p.parse_args()
    result = asyncio.run(_main(args))
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    p50 = result["p50_ms"]
    print(
        f"POST round trip p50 over {args.requests} requests: typed reply {p50['typed']:.2f} ms, "
        f"pre-encoded bytes {p50['bytes']:.2f} ms (serialisation: "
        f"{result['serialisation_saved_ms']:.2f} ms); model_dump_json alone "
        f"{result['model_dump_json_us']:.0f} us for {result['reply_bytes']} bytes"
    )


if __name__ == "__main__":
    main()
