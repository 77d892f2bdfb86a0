"""The Motan2 agent's configuration: the top-level ``motan2:`` section (its two ports, frame
limit, heartbeats and the services this host exports) and a Motan2 cluster's own section,
``clusters.X.motan2`` (which service it is).

The shape follows the motan-go agent's (https://github.com/weibocom/motan-go, its
``motan-agent``, ``motan-refer`` and ``motan-service`` sections): one client-side port where
apps send every call, routed by the request's service path (``M_p``) and group (``M_g``) to
a cluster; one server-side port where remote agents send calls for the services this host
exports, forwarded to the local service process. A cluster of ``protocol: motan2`` is one
referred service; its nodes are the hosts that serve it (their server-side agents, or the
service processes themselves).

Operations of a Motan2 cluster are its methods (``M_m``), matched ignoring case, as every
operation name is (motan-go itself upper-cases a method's first letter to find it).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

from ..knobs import Kind, knob, knobs
from . import values
from .address import Address
from .errors import Context, KeyPath
from .fields import parse_section
from .governance import OperationSettings
from .presets import Layer, Merged

__all__ = [
    "Motan2AgentConfig",
    "Motan2Settings",
    "check_method_name",
    "check_operation",
    "parse_agent",
    "parse_motan2",
]

#: A method name as Java, Go and PHP services spell them.
_METHOD_RE: Final = re.compile(r"^[A-Za-z_$][A-Za-z0-9_$]*$")
#: A service path (a Java interface name, dotted) or a group or version: no spaces or
#: newlines (meta cannot carry a newline).
_WORD_RE: Final = re.compile(r"^[^\s]{1,256}$")


@dataclass(frozen=True, slots=True)
class Motan2Settings:
    """Which service a Motan2 cluster is (``clusters.X.motan2``).

    Attributes:
        service: the service path requests name in ``M_p`` (the Java interface name).
        group: the service group (``M_g``); a request naming another group is not this
            cluster's. ``None``: requests of any group, when no other cluster of the same
            service names theirs.
        version: the service version (``M_v``) this cluster serves; ``None``: any.
        idempotent: every method of the service may run twice (retried on another node,
            backed up when slow), unless its ``governance.operations.METHOD.idempotent`` says
            ``false``; default off: only the service knows.
    """

    service: str = knob("", Kind.STRING, low=1, example="resmesh.demo.EchoService")
    group: str | None = knob(None, Kind.STRING, low=1, example="resmesh-demo")
    version: str | None = knob(None, Kind.STRING, low=1, example="1.0")
    idempotent: bool = knob(False, Kind.BOOL)


@dataclass(frozen=True, slots=True)
class Motan2AgentConfig:
    """The agent as a whole (top-level ``motan2:``).

    Attributes:
        client: the client-side agent's listen address (motan-go's ``port``, 9981): apps
            send their calls here.
        server: the server-side agent's listen address (motan-go's ``eport``, 9982): remote
            agents send the calls of exported services here; ``None``: no server side.
        max_frame: the largest meta block and the largest body accepted, each (motan-go's
            ``maxContentLength``, 10 MiB).
        heartbeat_interval: how often the client side sends a heartbeat on each idle node
            connection; a node that does not answer in time is taken out of rotation until
            one is answered (motan-go's keepalive; a server-side agent told to stop
            answering heartbeats is taken out this way).
        heartbeats: whether the server side answers heartbeats. ``false`` is the
            backend-down degrade of real agents: it closes the connection of a heartbeat
            instead, so the upstream agents stop sending it calls.
        export_timeout: how long the server side waits for the local service's answer.
        max_clients: client connections at most, on each port.
        client_idle_timeout: close a client connection silent this long; 0 means never.
        export: service path → address of the local process serving it.
    """

    client: Address = field(default=Address("127.0.0.1", 9981))
    server: Address | None = None
    max_frame: int = knob(10 * 1024 * 1024, Kind.SIZE, example="10MiB")
    heartbeat_interval: float = knob(1.0, Kind.DURATION, low_open=True, example="1s")
    heartbeats: bool = knob(True, Kind.BOOL)
    export_timeout: float = knob(5.0, Kind.DURATION, low_open=True, example="5s")
    max_clients: int = knob(10000, Kind.INT, low=1, high=1_000_000)
    client_idle_timeout: float = knob(0.0, Kind.DURATION, example="300s (0 means never)")
    export: Mapping[str, Address] = field(default_factory=lambda: MappingProxyType({}))


_AGENT_EXAMPLE: Final = "{client: 127.0.0.1:9981, server: 127.0.0.1:9982}"


def parse_agent(ctx: Context, value: object, path: KeyPath) -> Motan2AgentConfig:
    section = values.mapping(
        ctx,
        value,
        path,
        ("client", "server", "export", *knobs(Motan2AgentConfig)),
        example=_AGENT_EXAMPLE,
        required=("client",),
    )
    client = values.address(
        ctx, section["client"], (*path, "client"), example="127.0.0.1:9981", allow_port_zero=True
    )
    server = None
    if section.get("server") is not None:
        server = values.address(
            ctx,
            section["server"],
            (*path, "server"),
            example="127.0.0.1:9982",
            allow_port_zero=True,
        )
    export: dict[str, Address] = {}
    if section.get("export") is not None:
        if server is None:
            raise ctx.error(
                (*path, "export"),
                "services are exported through the server-side agent, and 'server' is not set",
                "add server: 127.0.0.1:9982, or remove export",
            )
        raw = values.mapping(
            ctx,
            section["export"],
            (*path, "export"),
            None,
            example="{resmesh.demo.EchoService: 127.0.0.1:8100}",
        )
        for service, address in raw.items():
            where = (*path, "export", service)
            _word(ctx, service, where, "service path", "resmesh.demo.EchoService")
            export[service] = values.address(
                ctx, address, where, example="127.0.0.1:8100", allow_port_zero=False
            )
    tuned = {key: raw for key, raw in section.items() if key in knobs(Motan2AgentConfig)}
    settings = parse_section(ctx, tuned, path, Motan2AgentConfig)
    return dataclasses.replace(
        settings, client=client, server=server, export=MappingProxyType(export)
    )


def parse_motan2(ctx: Context, value: object, path: KeyPath) -> Motan2Settings:
    if value is None:
        raise ctx.error(
            path,
            "a Motan2 cluster names the service it is",
            "add motan2: {service: resmesh.demo.EchoService, group: resmesh-demo}",
        )
    return parse_section(ctx, value, path, Motan2Settings, check=_check_settings)


def _check_settings(ctx: Context, path: KeyPath, settings: Mapping[str, Any]) -> None:
    if not settings["service"]:
        raise ctx.error(
            (*path, "service"),
            "missing required key 'service'",
            "add service: resmesh.demo.EchoService (the M_p its requests carry)",
        )
    for key, example in (
        ("service", "resmesh.demo.EchoService"),
        ("group", "resmesh-demo"),
        ("version", "1.0"),
    ):
        if settings[key] is not None:
            _word(ctx, settings[key], (*path, key), key, example)


def _word(ctx: Context, text: str, path: KeyPath, what: str, example: str) -> None:
    if not _WORD_RE.match(text):
        raise ctx.error(
            path,
            f"{text!r} is not a valid {what}: it goes in a request's meta, which holds no "
            "spaces or newlines",
            f"write it as requests name it, e.g. {example}",
        )


def check_method_name(layer: Layer, path: KeyPath, written: str, name: str) -> None:
    """An operation of a Motan2 cluster is a method name."""
    if not _METHOD_RE.match(written):
        raise layer.error_as_written(
            path,
            f"{written!r} is not a method name",
            "name a method of the service as its callers do, e.g. echo",
        )


def check_operation(where: Merged, path: KeyPath, name: str, settings: OperationSettings) -> None:
    """Any method may be declared idempotent: only the service knows, so the default is off
    and the operator says which (motan-go's backup requests are set per method too)."""
