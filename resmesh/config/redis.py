"""A Redis cluster's own configuration: ``clusters.X.redis``, and its operation names.

The section bounds what one client may make the gateway hold in memory while it parses a
request. Defaults are redis-server's own (``proto-max-bulk-len`` 512 MiB, 1024*1024
multibulk elements, ``client-query-buffer-limit`` 1 GiB: see redis.conf), so a client that
works against Redis works against the gateway.

Operations of a Redis cluster are command names, checked against the command table that
:mod:`resmesh.protocols.resp.commands` generates from redis-server's ``COMMAND`` reply.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..knobs import Kind, knob
from .errors import Context, KeyPath, suggest
from .fields import parse_section
from .governance import OperationSettings
from .presets import Layer, Merged

if TYPE_CHECKING:
    from ..protocols.resp.commands import CommandSpec

__all__ = ["RedisSettings", "check_command_name", "check_operation", "parse_redis"]


@dataclass(frozen=True, slots=True)
class RedisSettings:
    """Per-client request bounds of a Redis cluster.

    Attributes:
        max_bulk_len: the longest single argument (``proto-max-bulk-len``).
        max_multibulk_len: the most arguments in one command.
        max_request_buffer: the most unparsed input held per client
            (``client-query-buffer-limit``).
    """

    max_bulk_len: int = knob(512 * 1024 * 1024, Kind.SIZE, example="512MiB")
    max_multibulk_len: int = knob(1024 * 1024, Kind.INT, low=1, high=2**31 - 1)
    max_request_buffer: int = knob(1024 * 1024 * 1024, Kind.SIZE, example="1GiB")


def parse_redis(ctx: Context, value: object, path: KeyPath) -> RedisSettings:
    return parse_section(ctx, value, path, RedisSettings, check=_check_bounds)


def _check_bounds(ctx: Context, path: KeyPath, settings: Mapping[str, Any]) -> None:
    max_bulk_len, max_request_buffer = settings["max_bulk_len"], settings["max_request_buffer"]
    if max_bulk_len > max_request_buffer:
        raise ctx.error(
            (*path, "max_bulk_len"),
            f"max_bulk_len ({max_bulk_len} bytes) is larger than max_request_buffer "
            f"({max_request_buffer} bytes), so the largest allowed value could never arrive",
            "lower max_bulk_len or raise max_request_buffer",
        )


def check_command_name(layer: Layer, path: KeyPath, written: str, name: str) -> None:
    """An operation of a Redis cluster is a command name (``CLIENT|LIST`` for a subcommand).

    Names with a dot are module commands (``JSON.GET``), which the command table cannot know.
    """
    from ..protocols.resp.commands import COMMANDS  # the table is large: load it only here

    if "." in name or name.encode() in COMMANDS:
        return
    known = sorted(c.decode() for c in COMMANDS if b"|" not in c)
    # Swapped letters first (GTE is GET), which difflib's ratio ranks below GETEX.
    anagrams = [command for command in known if sorted(command) == sorted(name)]
    suggestion = anagrams[0] if anagrams else suggest(name, known)
    raise layer.error_as_written(
        path,
        f"{written!r} is not a Redis command",
        f"did you mean {suggestion!r}?"
        if suggestion
        else "name a command, e.g. GET (a module command is written with its dot, JSON.GET)",
    )


def check_operation(where: Merged, path: KeyPath, name: str, settings: OperationSettings) -> None:
    """``idempotent: true`` holds for a read only.

    A Redis read is retried on another node and hedged already (``idempotent: true`` there
    changes nothing, and ``false`` keeps it on the primary, once); anything else runs on the
    primary only, so there is no other node to retry or hedge it on, and ``true`` would
    promise what cannot happen.
    """
    if settings.idempotent is not True:
        return
    from ..protocols.resp.commands import COMMANDS, is_idempotent_read

    spec = COMMANDS.get(name.encode())
    if spec is not None and is_idempotent_read(spec):
        return
    shown = name.replace("|", " ")
    raise where.error(
        (*path, "idempotent"),
        f"{shown} {_why_primary_only(spec)}, so there is no other node to retry or hedge it on",
        "remove idempotent: true (reads are retried and hedged already; idempotent: false "
        "keeps one of them on the primary)",
    )


def _why_primary_only(spec: CommandSpec | None) -> str:
    from ..protocols.resp.commands import CommandFlag

    if spec is None:
        return (
            "is a module command, whose reads and writes the gateway cannot tell apart: it "
            "runs on the primary only"
        )
    if CommandFlag.WRITE in spec.flags:
        return "is a write: a Redis write runs on the primary only"
    if spec.flags & (CommandFlag.BLOCKING | CommandFlag.PUBSUB | CommandFlag.TRANSACTION):
        return (
            "blocks or belongs to a session pinned to one connection: it runs on the primary only"
        )
    return "is about the node it runs on, not the data: it runs on the primary only"
