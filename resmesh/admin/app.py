"""The admin HTTP API, as an ASGI application served by Hypercorn (which runs on Trio).

Read-only by design: ``/health`` (ready or not, and why), ``/status`` (every cluster, group
and node with health, breaker, route weights, switches, registry version and latency),
``/config`` (the state in force and its registry version), ``/metrics`` (Prometheus text) and
``/metrics.json`` (the same counters as a document). Changes go through the registry
(``resmesh ctl``), never into one process only, so every gateway of a fleet obeys the same
change.

A bearer token (RFC 6750), when configured, is required on every request; it is compared in
constant time. The routes are few and fixed, so the application is a plain ASGI callable
(https://asgi.readthedocs.io/en/latest/specs/www.html) rather than a web framework.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Any, Final, Protocol

from ..observe.prometheus import CONTENT_TYPE, render

__all__ = ["AdminApp", "AdminView"]

_Scope = dict[str, Any]
_Receive = Callable[[], Awaitable[dict[str, Any]]]
_Send = Callable[[dict[str, Any]], Awaitable[None]]

_PAGES: Final = ["/config", "/health", "/metrics", "/metrics.json", "/status"]


class AdminView(Protocol):
    """What the admin API shows: one gateway process, or every worker of one."""

    async def health(self) -> tuple[bool, str]: ...

    async def status(self) -> dict[str, Any]: ...

    async def config(self) -> dict[str, Any]: ...

    async def metrics(self) -> dict[str, Any]: ...


class AdminApp:
    """The ASGI application over ``view``; ``token`` ``None`` asks for none."""

    def __init__(self, view: AdminView, token: str | None = None) -> None:
        self.view = view
        self._token = f"Bearer {token}".encode() if token is not None else None

    async def __call__(self, scope: _Scope, receive: _Receive, send: _Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        if self._token is not None:
            given = dict(scope.get("headers") or []).get(b"authorization", b"")
            if not hmac.compare_digest(given, self._token):
                await _json(
                    send,
                    401,
                    {"error": "missing or wrong bearer token (Authorization: Bearer TOKEN)"},
                    [(b"www-authenticate", b'Bearer realm="resmesh"')],
                )
                return
        path = scope["path"].rstrip("/") or "/"
        if path not in _PAGES:
            await _json(send, 404, {"error": f"no such page {path}", "pages": _PAGES})
            return
        if scope["method"] not in ("GET", "HEAD"):
            await _json(
                send,
                405,
                {"error": "read-only: change state with resmesh ctl"},
                [(b"allow", b"GET, HEAD")],
            )
            return
        if path == "/health":
            ready, why = await self.view.health()
            await _json(send, 200 if ready else 503, {"ready": ready, "why": why})
        elif path == "/status":
            await _json(send, 200, await self.view.status())
        elif path == "/metrics":
            body = render(await self.view.metrics())
            await _respond(send, 200, body, CONTENT_TYPE.encode())
        elif path == "/metrics.json":
            await _json(send, 200, await self.view.metrics())
        else:
            await _json(send, 200, await self.view.config())


async def _json(
    send: _Send, status: int, body: object, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    data = json.dumps(body, indent=1, sort_keys=False, default=str).encode() + b"\n"
    await _respond(send, status, data, b"application/json", headers)


async def _respond(
    send: _Send,
    status: int,
    data: bytes,
    content_type: bytes,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(data)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})


async def _lifespan(receive: _Receive, send: _Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
