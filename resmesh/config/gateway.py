"""``gateway:``: settings of the gateway process as a whole."""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from dataclasses import dataclass
from typing import Final

from ..knobs import Kind, knob, knobs
from . import values
from .address import Address
from .errors import Context, KeyPath
from .fields import parse_section

__all__ = ["GatewayConfig", "parse_gateway"]

_APP_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """Process-wide settings.

    Attributes:
        app: this application's name, for logs and metrics.
        admin: where the admin HTTP API listens (``/health``, ``/status``, ``/config``);
            ``None``: nowhere.
        admin_token: the bearer token every admin request must carry (``Authorization:
            Bearer TOKEN``); required when ``admin`` is not a loopback address.
        drain_timeout: seconds in-flight calls may take to finish after SIGTERM/SIGINT.
        workers: gateway processes sharing the listen ports.
    """

    app: str = "resmesh"
    admin: Address | None = None
    admin_token: str | None = None
    drain_timeout: float = knob(5.0, Kind.DURATION, example="5s")
    workers: int = knob(1, Kind.INT, low=1, high=256)


def parse_gateway(ctx: Context, value: object, path: KeyPath) -> GatewayConfig:
    section = values.mapping(
        ctx,
        value,
        path,
        ("app", "admin", "admin_token", *knobs(GatewayConfig)),
        example="{app: demo-app, workers: 1}",
        allow_null=True,
    )
    tuned = {key: raw for key, raw in section.items() if key not in ("app", "admin", "admin_token")}
    settings = parse_section(ctx, tuned, path, GatewayConfig)
    app = settings.app
    if "app" in section:
        app = values.string(ctx, section["app"], (*path, "app"), example="demo-app")
        if not _APP_RE.match(app):
            raise ctx.error((*path, "app"), f"{app!r} is not a valid app name", values.NAME_FIX)
    admin = None
    if section.get("admin") is not None:
        admin = values.address(
            ctx, section["admin"], (*path, "admin"), example="127.0.0.1:8002", allow_port_zero=True
        )
    token = None
    if section.get("admin_token") is not None:
        token = values.string(
            ctx, section["admin_token"], (*path, "admin_token"), example="a-long-random-secret"
        )
        if len(token) < 16 or any(c.isspace() for c in token):
            raise ctx.error(
                (*path, "admin_token"),
                "the admin token is shorter than 16 characters or has spaces",
                "use a long random secret, e.g. the output of: openssl rand -hex 24",
            )
    if admin is not None and token is None and not _loopback(admin.host):
        raise ctx.error(
            (*path, "admin"),
            f"the admin API on {admin} is reachable from other hosts, and no admin_token is set",
            "set gateway.admin_token to a secret (clients send 'Authorization: Bearer TOKEN'), "
            "or listen on 127.0.0.1",
        )
    return dataclasses.replace(settings, app=app, admin=admin, admin_token=token)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
