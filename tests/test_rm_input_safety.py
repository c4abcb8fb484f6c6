"""No request text can make a reward model raise, hang, or open its circuit for everyone.

Crafted arithmetic (hundreds of `1+` terms, 5,000-digit numbers, deep parentheses) and
megabyte references are scored as "nothing to check"; what an RM still cannot score is the
request's fault (`RMInputError`): the next RM scores it and the RM's circuit stays closed.
The remote RM is a real HTTP server on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest

from laser.server.config import BreakerSettings
from laser.server.metrics import Metrics
from laser.server.rms import verifiers
from laser.server.rms.base import Query
from laser.server.rms.builtin import AgreementRM, ArithmeticVerifierRM, GroundingRM
from laser.server.rms.model_backed import RemoteRM
from laser.server.rms.pool import RMPool
from tests.conftest import reply_json

CRAFTED = {
    "930 terms": "What is " + "1+" * 930 + "1?",
    "5000 terms = claim": "1+" * 5000 + "1 = 5001",
    "5000-digit number": "What is " + "9" * 5000 + " + 1?",
    "deep parentheses": "(" * 3000 + "1" + ")" * 3000 + " + 1 = 2",
    "comma run": "1," * 200_000 + "1 + 1 = 2",
    "blank run": "the answer is" + " " * 200_000 + "(B)",
    "many equations": "1 + 1 = 2. " * 50_000,
    "NUL byte": "1 +\x00 1 = 2",
    "operators only": "1 + + + " * 20_000,
}


@pytest.mark.parametrize("name", list(CRAFTED))
def test_crafted_text_is_scored_never_raises(name: str) -> None:
    text = CRAFTED[name]
    query = Query(question=text, prompt=text, reference=text[:400_000])
    responses = [text, "1 + 1 = 2. #### 2", ""]
    started = time.perf_counter()
    for rm in (ArithmeticVerifierRM("arith"), AgreementRM("agreement")):
        scores = asyncio.run(rm.score(query, responses))
        assert len(scores) == 3 and all(math.isfinite(s) for s in scores), (rm.name, scores)
    docs = Query(question=text, prompt=text, documents=[text])
    assert len(asyncio.run(GroundingRM("grounding").score(docs, responses))) == 3
    # A guard against super-linear regexes (those took minutes), not a speed claim.
    assert time.perf_counter() - started < 20


def test_what_is_too_big_to_check_is_nothing_to_check() -> None:
    assert verifiers.evaluate("1+" * 930 + "1") is None  # was RecursionError
    assert verifiers.evaluate("9" * 5000 + " + 1") is None  # was ValueError (int digits)
    assert verifiers.evaluate("(" * 3000 + "1" + ")" * 3000) is None
    check = verifiers.check_arithmetic(CRAFTED["930 terms"], "1+" * 930 + "1 = 931. #### 931")
    assert (check.correct, check.wrong, check.score) == (0, 0, 0.0)
    # Ordinary arithmetic is still checked.
    assert verifiers.check_arithmetic("12 packs of 3 pens?", "12 * 3 = 36. #### 36").correct == 1


class _Flaky:
    """A pure RM whose text function raises on this input (as `arith` once did)."""

    kind = "arith"

    def __init__(self, name: str) -> None:
        self.name = name

    async def score(self, query: Query, responses: Any) -> list[float]:
        from laser.server.rms.base import input_safe

        def crash(*_: Any) -> list[float]:
            raise RecursionError("maximum recursion depth exceeded")

        return await asyncio.to_thread(input_safe, self.name, crash, query, responses)


def _pool(**models: Any) -> RMPool:
    return RMPool(models, BreakerSettings(failures=2, cooldown_s=30), Metrics(), timeout_s=10)


def test_an_input_error_falls_back_and_leaves_the_circuit_closed() -> None:
    pool = _pool(arith=_Flaky("arith"), agreement=AgreementRM("agreement"))
    query = Query(question="What is 2 + 3?", prompt="What is 2 + 3?")
    for _ in range(5):  # more than `failures` in a row
        used, scores = asyncio.run(pool.score(["arith", "agreement"], query, ["5", "5", "6"]))
        assert used == "agreement" and len(scores) == 3
    status = pool.status("arith")
    assert status["circuit"] == "closed" and status["consecutive_errors"] == 0
    assert (status["errors"], status["input_errors"]) == (0, 5)
    samples = pool.metrics.registry.get_sample_value
    assert samples("laser_rm_input_errors_total", {"rm": "arith"}) == 5
    assert samples("laser_rm_errors_total", {"rm": "arith"}) in (None, 0.0)


class _Refusing(BaseHTTPRequestHandler):
    status: ClassVar[int] = 422

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        reply_json(self, {"error": "input too long"}, status=type(self).status)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def refusing_url() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/score"
    httpd.shutdown()


@pytest.mark.parametrize(("status", "fault"), [(422, False), (413, False), (401, True)])
def test_a_remote_rm_refusing_the_input_is_not_its_fault(
    refusing_url: str, status: int, fault: bool
) -> None:
    _Refusing.status = status

    async def run() -> RMPool:
        remote = RemoteRM("remote", refusing_url, retries=0)
        pool = _pool(remote=remote, agreement=AgreementRM("agreement"))
        try:
            query = Query(question="q", prompt="q")
            for _ in range(3):
                used, _scores = await pool.score(["remote", "agreement"], query, ["a", "b"])
                assert used == "agreement"
        finally:
            await pool.aclose()
        return pool

    pool = asyncio.run(run())
    status_ = pool.status("remote")
    # 401 means a misconfigured RM: two faults open the circuit (the third request skips
    # it); 413/422 blame the request: called every time, circuit closed.
    assert (status_["circuit"] == "open") is fault
    assert (status_["errors"], status_["input_errors"]) == ((2, 0) if fault else (0, 3))


def test_crafted_questions_do_not_open_the_arith_circuit() -> None:
    """The issue's attack on the real `arith` RM and pool: questions that raised in `arith`
    opened its shared circuit after `failures` requests. (Through the pool, not a live
    server: the tests' shared engine has a 1,024-token context and these questions are
    1,861 to 4,400 tokens, a token a digit.)"""
    pool = _pool(arith=ArithmeticVerifierRM("arith"), agreement=AgreementRM("agreement"))
    crafted = [
        CRAFTED["930 terms"],  # was RecursionError in the parse
        "What is " + "9" * 4400 + " + 1?",  # was ValueError: int() refuses 4,300+ digits
        "What is " + "1*" * 930 + "1?",
    ]
    for text in crafted:
        query = Query(question=text, prompt=text)
        used, scores = asyncio.run(pool.score(["arith", "agreement"], query, [text, "#### 2"]))
        assert used == "arith" and len(scores) == 2  # scored by arith, not a fallback
    status = pool.status("arith")
    assert status["circuit"] == "closed" and status["errors"] == status["input_errors"] == 0
