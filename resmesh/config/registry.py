"""``registry:``: where the live state of the clusters is kept, and what to do without it.

Two kinds: ``file``, one YAML file (the embedded default, so a single gateway needs nothing
else), and ``etcd``, for a fleet of gateways sharing one store operators already run (etcd's
v3 API, through its JSON gateway). Without a ``registry:`` section a gateway uses the file
``registry.yaml`` beside its config.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from ..knobs import Kind, knob, knobs
from . import values
from .errors import Context, KeyPath
from .fields import parse_section

__all__ = ["RegistryConfig", "RegistryKind", "UnreachableAtStart", "parse_registry"]

#: The file registry's name when the config names none: beside the config file.
DEFAULT_FILE: Final = "registry.yaml"
_URL_RE: Final = re.compile(r"^https?://[^/\s]+/?$")
_PREFIX_RE: Final = re.compile(r"^/[A-Za-z0-9_./-]*$")


class RegistryKind(enum.StrEnum):
    FILE = "file"
    ETCD = "etcd"


class UnreachableAtStart(enum.StrEnum):
    """What a gateway does when the registry cannot be read as it starts."""

    #: Start on the configuration's state, and apply the registry's once it answers.
    CONFIG = "config"
    #: Refuse to start (exit 1): better no gateway than one on a stale layout.
    REFUSE = "refuse"


@dataclass(frozen=True, slots=True)
class RegistryConfig:
    """Attributes:
    kind: ``file`` or ``etcd``.
    path: the file registry's YAML file (relative paths are relative to the config file).
    endpoints: etcd's client URLs (``http://127.0.0.1:2379``), tried in turn.
    prefix: the etcd key prefix under which this fleet's clusters are kept.
    timeout: how long one registry request may take.
    unreachable_at_start: ``config`` or ``refuse``.
    """

    kind: RegistryKind = knob(RegistryKind.FILE, Kind.ENUM, choices=RegistryKind)
    path: Path = Path(DEFAULT_FILE)
    endpoints: tuple[str, ...] = ()
    prefix: str = knob("/resmesh", Kind.STRING, low=1, example="/resmesh")
    timeout: float = knob(2.0, Kind.DURATION, low_open=True, example="2s")
    unreachable_at_start: UnreachableAtStart = knob(
        UnreachableAtStart.CONFIG, Kind.ENUM, choices=UnreachableAtStart
    )

    def describe(self) -> str:
        if self.kind is RegistryKind.FILE:
            return f"file {self.path}"
        return f"etcd {','.join(self.endpoints)} prefix {self.prefix}"


def parse_registry(ctx: Context, value: object, path: KeyPath) -> RegistryConfig:
    """The ``registry:`` section (``None``: the file beside the config)."""
    section = values.mapping(
        ctx,
        value,
        path,
        ("path", "endpoints", *knobs(RegistryConfig)),
        example="{kind: etcd, endpoints: [http://127.0.0.1:2379]}",
        allow_null=True,
    )
    tuned = {key: raw for key, raw in section.items() if key not in ("path", "endpoints")}
    settings = parse_section(ctx, tuned, path, RegistryConfig)
    base = ctx.source.parent
    file = base / DEFAULT_FILE
    if "path" in section:
        if settings.kind is not RegistryKind.FILE:
            raise ctx.error(
                (*path, "path"), "an etcd registry has no path", "remove it, or set kind: file"
            )
        text = values.string(ctx, section["path"], (*path, "path"), example=DEFAULT_FILE)
        file = base / Path(text).expanduser()
    endpoints: list[str] = []
    if settings.kind is RegistryKind.ETCD:
        raw = section.get("endpoints")
        if not isinstance(raw, list) or not raw:
            raise ctx.error(
                (*path, "endpoints"),
                "an etcd registry needs its endpoints",
                "list etcd's client URLs, e.g. endpoints: [http://127.0.0.1:2379]",
            )
        for index, url in enumerate(raw):
            where = (*path, "endpoints", index)
            text = values.string(ctx, url, where, example="http://127.0.0.1:2379")
            if not _URL_RE.match(text):
                raise ctx.error(
                    where,
                    f"{text!r} is not an etcd client URL",
                    "write it as http://HOST:PORT, e.g. http://127.0.0.1:2379",
                )
            endpoints.append(text.rstrip("/"))
        if not _PREFIX_RE.match(settings.prefix):
            raise ctx.error(
                (*path, "prefix"),
                f"{settings.prefix!r} is not a key prefix",
                "start it with / and use letters, digits and _ . / -, e.g. /resmesh",
            )
    elif "endpoints" in section:
        raise ctx.error(
            (*path, "endpoints"),
            "a file registry has no endpoints",
            "set kind: etcd, or remove them",
        )
    return dataclasses.replace(
        settings, path=file, endpoints=tuple(endpoints), prefix=settings.prefix.rstrip("/")
    )
