"""The bench's sections: every variant side by side, concurrency, n and document scaling,
and the server's overhead as a client in another process sees it. `Bench` is one object
(the in-process alternatives of `variants.py` plus the server over HTTP) because every
section shares the loaded engine, RMs, HTTP client and prompt counter.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from typing import TYPE_CHECKING, Any

from laser.server.benchmark.config import (
    DOC_QUESTION,
    PROMPTS,
    VARIANTS,
    BenchConfig,
    make_document,
    pct,
    summary_ms,
    timed,
)
from laser.server.benchmark.summary import loglik_row
from laser.server.benchmark.variants import Alternatives
from laser.server.prompts import format_documents

if TYPE_CHECKING:
    from laser.server.config import Settings
    from laser.server.services import Services


class Bench(Alternatives):
    """The alternatives, the server over HTTP (`url`, `http`: set once it is up), and the
    bench's sections."""

    def __init__(self, config: BenchConfig, settings: Settings, services: Services) -> None:
        super().__init__(config, settings, services)
        self.url = ""
        self.http: Any = None
        # (client wall ms, reply) of every sequential short-prompt request: the overhead sample
        self.sequential: list[tuple[float, dict[str, Any]]] = []

    # .. the server over HTTP ....................................................................
    async def post(self, body: dict[str, Any]) -> tuple[float, int, dict[str, Any]]:
        """(client wall ms, status, reply); the reply gains `server_app_ms`, the app's own
        time from its `Server-Timing` header (arrival to response headers)."""
        t = time.perf_counter()
        r = await self.http.post(self.url + "/generate", json=body)
        ms = (time.perf_counter() - t) * 1000
        data: dict[str, Any] = r.json()
        timing = r.headers.get("server-timing", "")
        if timing.startswith("app;dur="):
            data["server_app_ms"] = float(timing.split("=", 1)[1])
        return ms, r.status_code, data

    async def server(self, body: dict[str, Any]) -> tuple[float, dict[str, Any]]:
        ms, status, data = await self.post(body)
        if status != 200:
            raise RuntimeError(f"/generate answered {status}: {data}")
        return ms, data

    # .. sections ................................................................................
    async def comparison(self) -> dict[str, Any]:
        """Each round: the server first (its RM pick fixes the RM of the others), then the
        alternatives in a rotating order, so slow drift of the machine spreads evenly."""
        cfg, n = self.cfg, self.cfg.n
        # Scoring times from these rounds only (not the warm-up, which compiles and loads).
        self.scoring = {"one_rm": [], "ensemble": []}
        self.per_rm = {name: [] for name in self.rms}
        wall: dict[str, list[float]] = {k: [] for k in VARIANTS if k != "naive_hf" or cfg.naive_hf}
        picked: list[str] = []
        others = [k for k in wall if k != "server"]
        for r in range(cfg.rounds):
            base_q = PROMPTS[r % len(PROMPTS)]
            body = {"prompt": self.tag(base_q), "n": n, "max_tokens": cfg.max_tokens}
            ms, data = await self.server(body)
            wall["server"].append(ms)
            self.sequential.append((ms, data))
            rm = data["reward_model"]
            picked.append(rm)
            k = r % len(others)
            for name in others[k:] + others[:k]:
                question = self.tag(base_q)
                prompt = self.chat(question)
                ms, _ = await timed(self.variant(name, question, prompt, n, rm))
                wall[name].append(ms)
            self.log(
                f"  round {r + 1}/{cfg.rounds} (RM {rm}): "
                + ", ".join(f"{k} {v[-1]:.0f} ms" for k, v in wall.items())
            )
        served_scoring = [r["timings_ms"]["score"] for _, r in self.sequential[-cfg.rounds :]]
        base = statistics.fmean(wall["engine_rm"])
        floor = statistics.fmean(wall["engine"])
        rows = {
            name: {
                "label": VARIANTS[name],
                **summary_ms(ms),
                # Ratio of means = ratio of throughputs at concurrency 1.
                "vs_engine_rm": statistics.fmean(ms) / base,
                "vs_floor": statistics.fmean(ms) / floor,
                # The median of each round's own ratio shrugs off a round hit by a load spike.
                "median_round_vs_engine_rm": statistics.median(
                    a / b for a, b in zip(ms, wall["engine_rm"], strict=True)
                ),
            }
            for name, ms in wall.items()
        }
        return {
            "rows": rows,
            "rm_picked": picked,
            "n": n,
            "rounds_ms": wall,
            "scoring": self._scoring_summary(served_scoring),
        }

    def _scoring_summary(self, served: list[float]) -> dict[str, Any]:
        """RM scoring time per request: LASeR's one RM against the ensemble's K."""
        k = len(self.rms)
        ensemble = statistics.fmean(self.scoring["ensemble"])
        per_rm = {rm: statistics.fmean(ms) for rm, ms in self.per_rm.items() if ms}
        laser = statistics.fmean(served)
        return {
            "k": k,
            "laser_served_ms": laser,
            "one_rm_in_process_ms": statistics.fmean(self.scoring["one_rm"]),
            "ensemble_ms": ensemble,
            "ensemble_sum_of_rms_ms": sum(per_rm.values()),
            "per_rm_ms": per_rm,
            "laser_vs_ensemble": laser / ensemble,
            "goal": 1 / k + 0.10,
        }

    async def _closed_loop(
        self, kind: str, c: int, total: int, replies: list[dict[str, Any]] | None = None
    ) -> tuple[list[float], int, float]:
        """`total` requests from `c` clients; (latencies of the answered, refused, seconds).
        The server's answers are appended to `replies` when given."""
        cfg = self.cfg
        lat: list[float] = []
        refused = 0
        left = list(range(total))

        async def client() -> None:
            nonlocal refused
            while left:
                question = self.tag(PROMPTS[left.pop() % len(PROMPTS)])
                if kind == "server":
                    body = {"prompt": question, "n": cfg.n, "max_tokens": cfg.max_tokens}
                    ms, status, data = await self.post(body)
                    if status != 200:  # 429/503 under back-pressure: counted, not retried
                        refused += 1
                        continue
                    if replies is not None:
                        replies.append(data)
                else:
                    ms, _ = await timed(self.engine_only(self.chat(question), cfg.n))
                lat.append(ms)

        t = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(c)))
        return lat, refused, time.perf_counter() - t

    async def concurrency(self) -> list[dict[str, Any]]:
        """Closed loop: `c` clients each send their next request as soon as one returns."""
        cfg = self.cfg
        out = []
        for c in cfg.concurrency:
            total = cfg.requests_at(c)
            row: dict[str, Any] = {"concurrency": c, "requests": total}
            replies: list[dict[str, Any]] = []
            for kind in ("server", "engine"):
                lat, refused, secs = await self._closed_loop(kind, c, total, replies)
                row[kind] = {
                    "ok": len(lat),
                    "refused": refused,
                    "seconds": secs,
                    "rps": len(lat) / secs,
                    **summary_ms(lat),
                }
            row["throughput_vs_engine"] = row["server"]["rps"] / row["engine"]["rps"]
            # Where the server's time goes beyond generation: the RMs it picked and their
            # scoring (an LM-pass RM such as `judge` takes engine time), and its own stages.
            picks = [r["reward_model"] for r in replies]
            row["rm_picked"] = {rm: picks.count(rm) for rm in sorted(set(picks))}
            for stage in ("generate", "score", "featurize", "store"):
                row[f"{stage}_ms_mean"] = (
                    statistics.fmean(r["timings_ms"].get(stage, 0.0) for r in replies)
                    if replies
                    else 0.0
                )
            self.log(
                f"  concurrency {c}: server {row['server']['rps']:.2f} req/s, "
                f"engine {row['engine']['rps']:.2f} req/s"
            )
            out.append(row)
        return out

    async def n_scaling(self) -> list[dict[str, Any]]:
        cfg = self.cfg
        rows = []
        for n in cfg.ns:
            server, floor = [], []
            for i in range(cfg.ns_requests):
                question = PROMPTS[i % len(PROMPTS)]
                ms, data = await self.server(
                    {"prompt": self.tag(question), "n": n, "max_tokens": cfg.max_tokens}
                )
                server.append(ms)
                self.sequential.append((ms, data))
                prompt = self.chat(self.tag(question))
                floor.append((await timed(self.engine_only(prompt, n)))[0])
            rows.append(
                {
                    "n": n,
                    "server_p50_ms": pct(server, 50),
                    "engine_p50_ms": pct(floor, 50),
                    "vs_floor": statistics.fmean(server) / statistics.fmean(floor),
                }
            )
            self.log(f"  n={n}: server {pct(server, 50):.0f} ms, engine {pct(floor, 50):.0f} ms")
        for row in rows:
            row["server_vs_n1"] = row["server_p50_ms"] / rows[0]["server_p50_ms"]
        return rows

    async def external_client(self, requests: int) -> list[tuple[float, dict[str, Any]]]:
        """`requests` sequential short /generate calls from a client in ANOTHER process (as
        real clients are): (client wall ms, reply with `server_app_ms`) each. The bench's own
        client shares the server's process and event loop, which adds its parsing to what
        looks like the server's overhead."""
        script = (
            "import json, sys, time, httpx\n"
            "url, n, max_tokens, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), "
            "int(sys.argv[4])\n"
            "out = []\n"
            "with httpx.Client(timeout=600) as c:\n"
            "    for i in range(count + 1):\n"
            "        body = {'prompt': f'({i}) ' + sys.argv[5 + i % (len(sys.argv) - 5)], "
            "'n': n, 'max_tokens': max_tokens}\n"
            "        t = time.perf_counter()\n"
            "        r = c.post(url + '/generate', json=body)\n"
            "        ms = (time.perf_counter() - t) * 1000\n"
            "        r.raise_for_status()\n"
            "        d = r.json()\n"
            "        d['server_app_ms'] = float(r.headers['server-timing'].split('=', 1)[1])\n"
            "        if i:  # the first one warms the connection\n"
            "            out.append([ms, d])\n"
            "print(json.dumps(out))\n"
        )
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", script, self.url, str(self.cfg.n), str(self.cfg.max_tokens),
            str(requests), *[self.tag(p) for p in PROMPTS],
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"external client failed: {err.decode()[-2000:]}")
        return [(float(ms), reply) for ms, reply in json.loads(out)]

    async def _loglik_pair(
        self, prompt: str, texts: list[str], out: dict[str, list[float]]
    ) -> None:
        """The `loglik` RM's likelihoods of `texts` right after their generation: as serving
        computes them (logprobs kept from sampling; otherwise the prompt's KV from vLLM's
        prefix cache) and from scratch (one full prefill per sample), alternating which
        goes first. Only for the in-process vLLM engine; skipped otherwise."""
        from laser.server.engines.vllm_engine import VLLMEngine

        engine = self.engine
        if not isinstance(engine, VLLMEngine) or engine.supports_adapters:
            return
        order = ("reuse", "scratch") if len(out["reuse"]) % 2 == 0 else ("scratch", "reuse")
        for how in order:
            ms, _ = await timed(engine.loglikelihoods(prompt, texts, reuse_prefix=how == "reuse"))
            out[how].append(ms)

    async def doc_scaling(self) -> list[dict[str, Any]]:
        """Documents of about 1k/4k/8k tokens; each target is capped so that the rendered
        prompt plus max_tokens fits the engine's context (the table says what it was)."""
        cfg = self.cfg
        tok = self.engine.tokenizer
        template = self.engine.count_tokens(
            self.engine.render_chat(
                [{"role": "user", "content": format_documents(DOC_QUESTION, ["x"])}]
            )
        )
        room = self.engine.max_model_len - cfg.max_tokens - template - 16  # 16: the tag
        rows = []
        for target in cfg.doc_tokens:
            doc = make_document(tok, min(target, room))
            server, floor, rms = [], [], []
            server_cached, floor_cached = [], []
            loglik: dict[str, list[float]] = {"reuse": [], "scratch": []}
            prompt_tokens, truncated = 0, False
            for _ in range(cfg.doc_requests):
                body = {
                    "prompt": DOC_QUESTION,
                    "document": self.tag(doc),
                    "n": cfg.n,
                    "max_tokens": cfg.max_tokens,
                }
                ms, data = await self.server(body)
                server.append(ms)
                rms.append(data["reward_model"])
                prompt_tokens = data["usage"]["prompt_tokens"]
                truncated = truncated or data["document_truncated"]
                # The same document again: its prefill comes from vLLM's prefix cache.
                server_cached.append((await self.server(body))[0])
                prompt = self.chat(format_documents(DOC_QUESTION, [self.tag(doc)]))
                ms, gen = await timed(self.engine_only(prompt, cfg.n))
                floor.append(ms)
                floor_cached.append((await timed(self.engine_only(prompt, cfg.n)))[0])
                await self._loglik_pair(prompt, [c.text for c in gen.completions], loglik)
            rows.append(
                {
                    "target_tokens": target,
                    "document_tokens": self.engine.count_tokens(doc),
                    "prompt_tokens": prompt_tokens,
                    "truncated": truncated,
                    "rm_picked": rms,
                    "server_p50_ms": pct(server, 50),
                    "engine_p50_ms": pct(floor, 50),
                    "vs_floor": statistics.fmean(server) / statistics.fmean(floor),
                    "server_cached_p50_ms": pct(server_cached, 50),
                    "engine_cached_p50_ms": pct(floor_cached, 50),
                    "cached_vs_floor": statistics.fmean(server_cached)
                    / statistics.fmean(floor_cached),
                    **loglik_row(loglik),
                }
            )
            self.log(
                f"  document ~{target} tokens (prompt {prompt_tokens}): new: server "
                f"{pct(server, 50):.0f} ms, engine {pct(floor, 50):.0f} ms; cached: server "
                f"{pct(server_cached, 50):.0f} ms, engine {pct(floor_cached, 50):.0f} ms"
                + (
                    f"; loglik of {cfg.n}: {rows[-1]['loglik_reuse_ms']:.0f} ms as served, "
                    f"{rows[-1]['loglik_scratch_ms']:.0f} ms from scratch"
                    if loglik["reuse"]
                    else ""
                )
            )
        return rows
