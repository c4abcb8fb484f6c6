"""laser.client: talk to a laser-server over HTTP. Needs httpx and pydantic only."""

from __future__ import annotations

__all__: list[str] = []
