"""``gateway:``: settings of the gateway process as a whole."""

from __future__ import annotations

import dataclasses
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
        admin: the address reserved for the admin HTTP API (status, /metrics, switches),
            which is not served yet; ``None`` reserves none.
        drain_timeout: seconds in-flight calls may take to finish after SIGTERM/SIGINT.
        workers: gateway processes sharing the listen ports.
    """

    app: str = "resmesh"
    admin: Address | None = None
    drain_timeout: float = knob(5.0, Kind.DURATION, example="5s")
    workers: int = knob(1, Kind.INT, low=1, high=256)


def parse_gateway(ctx: Context, value: object, path: KeyPath) -> GatewayConfig:
    section = values.mapping(
        ctx,
        value,
        path,
        ("app", "admin", *knobs(GatewayConfig)),
        example="{app: demo-app, workers: 1}",
        allow_null=True,
    )
    tuned = {key: raw for key, raw in section.items() if key not in ("app", "admin")}
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
    return dataclasses.replace(settings, app=app, admin=admin)
