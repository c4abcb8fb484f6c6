"""The server's logs: text for people, or one JSON object a line for a log shipper
(`log_format = "json"`), both carrying the request a line belongs to.

Every HTTP request gets a context (`request_context`: its id, route, method; the generation
handler adds the decision id, the reranker the RM that chose) that every log line written
while serving it carries, and one access line when it ends (`laser.access`: method, route,
status, latency, request id, RM).

>>> import json, logging
>>> line = JsonFormatter().format(logging.makeLogRecord({"msg": "hi", "levelname": "INFO"}))
>>> sorted(json.loads(line))
['level', 'logger', 'message', 'time']
"""

from __future__ import annotations

import contextvars
import json
import logging
import time
from typing import Any

REQUEST: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "laser_request", default=None
)
"""The current request's log context (None outside a request)."""

_FIELDS = ("request_id", "route", "method", "status", "latency_ms", "rm")


def request_context() -> dict[str, Any] | None:
    return REQUEST.get()


def note(**fields: Any) -> None:
    """Add fields (request_id, rm, ...) to the current request's log context, if any."""
    ctx = REQUEST.get()
    if ctx is not None:
        ctx.update(fields)


def _context(record: logging.LogRecord) -> dict[str, Any]:
    out = {k: v for k, v in (REQUEST.get() or {}).items() if k in _FIELDS and v is not None}
    out.update({k: getattr(record, k) for k in _FIELDS if getattr(record, k, None) is not None})
    return out


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (ISO 8601, UTC), level, logger, message, the request's
    fields, and the exception text when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        t = time.gmtime(record.created)
        ms = int(record.msecs)
        obj: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{ms:03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **_context(record),
        }
        if record.exc_info:
            obj["exception"] = self.formatException(record.exc_info)
        return json.dumps(obj, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """The usual text line, with the request id appended when the line has one."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        rid = _context(record).get("request_id")
        return f"{line} [{rid}]" if rid and record.name != "laser.access" else line


def setup(fmt: str = "text", level: int = logging.INFO) -> None:
    """Root logging to stderr in `fmt` (`text` or `json`); uvicorn's and vLLM's loggers
    write through it too, so a JSON log has no plain lines."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "vllm"):
        lg = logging.getLogger(name)
        for h in list(lg.handlers):
            lg.removeHandler(h)
        lg.propagate = True


ACCESS = logging.getLogger("laser.access")


def access(status: int, latency_ms: float) -> None:
    """The one line per request, at its end."""
    ctx = REQUEST.get() or {}
    ACCESS.info(
        "%s %s %d %.1f ms",
        ctx.get("method", "-"),
        ctx.get("route", "-"),
        status,
        latency_ms,
        extra={"status": status, "latency_ms": round(latency_ms, 2)},
    )
