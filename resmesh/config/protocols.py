"""The protocols a cluster may speak, each a table entry: its section and its operation names.

A protocol that the gateway implements adds one :class:`ProtocolSection` to :data:`PROTOCOLS`:
the parser of its own section under a cluster (``clusters.X.redis``), the check that an
operation name under ``governance.operations`` is one of its operations, and the check of
what an operation's settings may say for it. A protocol of :class:`~resmesh.call.Protocol`
that has no entry is refused as not implemented yet.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final

from ..call import Protocol
from . import motan2, mysql, redis
from .errors import Context, KeyPath
from .governance import OperationSettings
from .presets import Layer, Merged

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

__all__ = ["PROTOCOLS", "ProtocolSection"]


@dataclass(frozen=True, slots=True)
class ProtocolSection:
    """What one protocol adds to a cluster's configuration.

    Attributes:
        settings: the type of its section, ``clusters.X.<protocol>`` (its knobs are the keys).
        parse: reads that section (``None`` when the file leaves it out) at the given path.
        check_operation_name: ``(layer, path, as written, upper-cased)``: refuses a name that
            is not an operation of the protocol (a misspelt one would never match a call, and
            its limit or switch would silently do nothing).
        check_operation: ``(where, path, name, settings)``: refuses settings the protocol
            cannot honour for that operation.
    """

    settings: type[DataclassInstance]
    parse: Callable[[Context, object, KeyPath], Any]
    check_operation_name: Callable[[Layer, KeyPath, str, str], None]
    check_operation: Callable[[Merged, KeyPath, str, OperationSettings], None]


PROTOCOLS: Final[Mapping[Protocol, ProtocolSection]] = MappingProxyType(
    {
        Protocol.REDIS: ProtocolSection(
            redis.RedisSettings,
            redis.parse_redis,
            redis.check_command_name,
            redis.check_operation,
        ),
        Protocol.MYSQL: ProtocolSection(
            mysql.MySQLSettings,
            mysql.parse_mysql,
            mysql.check_operation_name,
            mysql.check_operation,
        ),
        Protocol.MOTAN2: ProtocolSection(
            motan2.Motan2Settings,
            motan2.parse_motan2,
            motan2.check_method_name,
            motan2.check_operation,
        ),
    }
)
