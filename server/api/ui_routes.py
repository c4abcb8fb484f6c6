"""The operator page: `GET /ui` and its script and style sheet, served from the package
(`server/ui/`; no build step, no CDN). The page itself holds no data and needs no key; every
number on it comes from the admin API, which needs the API key when one is set (the page
asks for it)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import Response

router = APIRouter()
_UI = Path(__file__).resolve().parents[1] / "ui"
_FILES = {
    "": ("index.html", "text/html; charset=utf-8"),
    "app.js": ("app.js", "text/javascript; charset=utf-8"),
    "style.css": ("style.css", "text/css; charset=utf-8"),
}
# Only what the page itself serves may run or load: no inline script, no other origin.
_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


def _file(name: str) -> Response:
    filename, media = _FILES[name]
    return Response((_UI / filename).read_bytes(), media_type=media, headers=_HEADERS)


@router.get("/ui", include_in_schema=False)
async def page() -> Response:
    return _file("")


@router.get("/ui/app.js", include_in_schema=False)
async def script() -> Response:
    return _file("app.js")


@router.get("/ui/style.css", include_in_schema=False)
async def style() -> Response:
    return _file("style.css")
