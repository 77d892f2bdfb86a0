"""``metrics:``: counting calls, and where the counts go besides the admin API's ``/metrics``.

::

    metrics:
      enabled: true                  # count every call (false, for benchmarks: only the
                                     # latencies of clusters that hedge, which the delay reads)
      graphite:                      # push to Graphite's plaintext protocol (off when absent)
        address: 127.0.0.1:2003
        transport: tcp               # or udp
        interval: 10s
      access_log:                    # one line per call (off when absent)
        path: stdout                 # or a file
        sample: 1.0                  # share of calls logged, 0..1
        buffer: 10000                # lines held for a slow sink; past it lines are dropped
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from ..knobs import Kind, knob, knobs
from . import values
from .address import Address
from .errors import Context, KeyPath
from .fields import parse_section

_S = TypeVar("_S", "GraphiteConfig", "AccessLogConfig")

__all__ = [
    "AccessLogConfig",
    "GraphiteConfig",
    "GraphiteTransport",
    "MetricsConfig",
    "parse_metrics",
]


class GraphiteTransport(enum.StrEnum):
    TCP = "tcp"
    UDP = "udp"


@dataclass(frozen=True, slots=True)
class GraphiteConfig:
    """Attributes:
    address: carbon's plaintext listener (``host:2003``).
    transport: ``tcp`` (carbon-cache's default line receiver) or ``udp`` (fire and forget).
    interval: how often the counts are pushed.
    prefix: put before every key (``""``: none).
    """

    address: Address = dataclasses.field(default=Address("127.0.0.1", 2003))
    transport: GraphiteTransport = knob(GraphiteTransport.TCP, Kind.ENUM, choices=GraphiteTransport)
    interval: float = knob(10.0, Kind.DURATION, low_open=True, example="10s")
    prefix: str = knob("", Kind.STRING, example="prod")


@dataclass(frozen=True, slots=True)
class AccessLogConfig:
    """Attributes:
    path: ``stdout``, or a file appended to.
    sample: the share of calls logged (1.0: all).
    buffer: lines held while the sink is slow; past it lines are dropped and counted.
    """

    path: Path | None = None
    sample: float = knob(1.0, Kind.RATIO, high=1.0, example="0.1")
    buffer: int = knob(10_000, Kind.INT, low=1, high=10_000_000)


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """Attributes:
    enabled: whether calls are counted; off, only clusters with a measured hedge delay count
        theirs (the delay is read from them).
    graphite: the Graphite push, or ``None``.
    access_log: the access log, or ``None``.
    """

    enabled: bool = knob(True, Kind.BOOL)
    graphite: GraphiteConfig | None = None
    access_log: AccessLogConfig | None = None


def parse_metrics(ctx: Context, value: object, path: KeyPath) -> MetricsConfig:
    section = values.mapping(
        ctx,
        value,
        path,
        ("graphite", "access_log", *knobs(MetricsConfig)),
        example="{enabled: true, graphite: {address: 127.0.0.1:2003}}",
        allow_null=True,
    )
    tuned = {k: v for k, v in section.items() if k in knobs(MetricsConfig)}
    settings = parse_section(ctx, tuned, path, MetricsConfig)
    graphite = None
    if section.get("graphite") is not None:
        where = (*path, "graphite")
        address, tuned_graphite = _subsection(
            ctx, section["graphite"], where, GraphiteConfig, "address", "127.0.0.1:2003"
        )
        graphite = dataclasses.replace(
            tuned_graphite,
            address=values.address(
                ctx, address, (*where, "address"), example="127.0.0.1:2003", allow_port_zero=False
            ),
        )
    access_log = None
    if section.get("access_log") is not None:
        where = (*path, "access_log")
        text, tuned_log = _subsection(
            ctx, section["access_log"], where, AccessLogConfig, "path", "stdout"
        )
        text = values.string(ctx, text, (*where, "path"), example="stdout")
        file = None if text == "stdout" else ctx.source.parent / Path(text).expanduser()
        access_log = dataclasses.replace(tuned_log, path=file)
    return dataclasses.replace(settings, graphite=graphite, access_log=access_log)


def _subsection(
    ctx: Context, value: object, path: KeyPath, cls: type[_S], key: str, example: str
) -> tuple[object, _S]:
    """A section made of one required ``key`` (parsed by the caller) and the knobs of
    ``cls``: the key's raw value, and the knobs parsed."""
    raw = values.mapping(
        ctx,
        value,
        path,
        (key, *knobs(cls)),
        example=f"{{{key}: {example}}}",
        required=(key,),
    )
    tuned = {k: v for k, v in raw.items() if k != key}
    return raw[key], parse_section(ctx, tuned, path, cls)
