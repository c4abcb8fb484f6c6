"""Which hosts the server may call: remote reward models and the remote engine.

Every prompt, document and candidate goes to a remote RM, so the hosts it may reach are an
operator's decision (`outbound_hosts` in the settings; default: loopback only). An entry is a
host name (`rm.internal`), a `*.` suffix (`*.svc.cluster.local`), an IP address or a network
(`10.0.0.0/8`). Names are compared as written, never resolved; the check runs when an RM or
engine is configured and again on every request it sends, redirects included.

>>> allowed("http://127.0.0.1:9000/score", ["127.0.0.0/8"])
True
>>> allowed("https://evil.example/x", ["127.0.0.1", "*.internal"])
False
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

LOOPBACK = ["127.0.0.0/8", "::1", "localhost"]


class HostNotAllowedError(ValueError):
    """A URL whose host is not in `outbound_hosts`."""

    def __init__(self, url: str, host: str) -> None:
        super().__init__(
            f"{url!r}: host {host!r} is not in outbound_hosts; add it to the server's "
            "outbound_hosts setting to allow it"
        )
        self.url, self.host = url, host


def _matches(host: str, entry: str) -> bool:
    entry = entry.strip().lower()
    if entry.startswith("*."):
        return host.endswith(entry[1:])
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host == entry
    try:
        return ip in ipaddress.ip_network(entry, strict=False)
    except ValueError:
        return False


def host_of(url: str) -> str:
    host = (urlsplit(url).hostname or "").lower()
    if not host:
        raise ValueError(f"{url!r} is not an absolute http(s) URL")
    return host


def allowed(url: str, hosts: Sequence[str]) -> bool:
    """Whether `url`'s host matches an entry of `hosts`."""
    host = host_of(url)
    return any(_matches(host, e) for e in hosts)


def check_url(url: str, hosts: Sequence[str]) -> None:
    """Raise `HostNotAllowedError` unless `url` may be called (and is http or https)."""
    scheme = urlsplit(url).scheme.lower()
    if scheme not in ("http", "https"):
        raise ValueError(f"{url!r}: only http and https URLs can be called")
    if not allowed(url, hosts):
        raise HostNotAllowedError(url, host_of(url))


def guarded_client(hosts: Sequence[str], **kwargs: Any) -> Any:
    """An `httpx.AsyncClient` that refuses, before connecting, any request (a redirect too)
    to a host outside `hosts`. Redirects are followed only within the allowed hosts."""
    import httpx

    allow = list(hosts)

    async def check(request: httpx.Request) -> None:
        check_url(str(request.url), allow)

    return httpx.AsyncClient(event_hooks={"request": [check]}, follow_redirects=True, **kwargs)
