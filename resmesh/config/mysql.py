"""A MySQL cluster's own configuration: ``clusters.X.mysql``, and its operation names.

Who may log in: every gateway user (``users:``) whose ``clusters`` lists the MySQL cluster,
with its ``users.NAME.password`` (mysql_native_password). A MySQL cluster always requires a
login. The gateway logs in to the nodes with the cluster's ``backend.username`` /
``backend.password``, which apps never see.

Operations of a MySQL cluster are SQL verbs (``SELECT``, ``INSERT``...: the first word of a
statement) and the commands that carry no SQL, by their protocol names (``COM_PING``,
``COM_INIT_DB``, ``COM_STMT_PREPARE``...). A prepared statement's executions count as its
statement's verb.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

from ..knobs import Kind, knob
from .errors import Context, KeyPath, suggest
from .fields import parse_section
from .governance import OperationSettings
from .presets import Layer, Merged

__all__ = [
    "COMMAND_OPERATIONS",
    "READ_VERBS",
    "SESSION_VERBS",
    "SQL_VERBS",
    "MySQLSettings",
    "check_operation",
    "check_operation_name",
    "parse_mysql",
]

#: Statements that change no data (served under a ``readonly`` switch). ``SET`` and the
#: transaction statements change only the session's state.
READ_VERBS: Final = frozenset(
    {
        "SELECT",
        "SHOW",
        "DESCRIBE",
        "DESC",
        "EXPLAIN",
        "USE",
        "SET",
        "HELP",
        "DO",
        "BEGIN",
        "START",
        "COMMIT",
        "ROLLBACK",
        "SAVEPOINT",
        "RELEASE",
        "PREPARE",
        "DEALLOCATE",
        "VALUES",
        "TABLE",
        "WITH",
        "CHECKSUM",
    }
)

#: Statements about the session, not the data: a degrade switch never refuses them (a client
#: library's ``SET NAMES`` at connect, ending a transaction).
SESSION_VERBS: Final = frozenset(
    {"SET", "USE", "BEGIN", "START", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE", "DEALLOCATE"}
)

#: Every SQL verb an operation may name.
SQL_VERBS: Final = READ_VERBS | frozenset(
    {
        "INSERT",
        "UPDATE",
        "DELETE",
        "REPLACE",
        "CALL",
        "CREATE",
        "DROP",
        "ALTER",
        "TRUNCATE",
        "RENAME",
        "EXECUTE",
        "LOAD",
        "LOCK",
        "UNLOCK",
        "GRANT",
        "REVOKE",
        "ANALYZE",
        "OPTIMIZE",
        "REPAIR",
        "CHECK",
        "FLUSH",
        "KILL",
        "HANDLER",
        "XA",
        "INSTALL",
        "UNINSTALL",
        "RESET",
        "PURGE",
        "SIGNAL",
        "RESIGNAL",
        "BINLOG",
        "CACHE",
        "SHUTDOWN",
        "GET",
        "BACKUP",
    }
)

#: Commands that carry no SQL, by the names their operations have.
COMMAND_OPERATIONS: Final = frozenset(
    {
        "COM_PING",
        "COM_INIT_DB",
        "COM_STMT_PREPARE",
        "COM_STMT_RESET",
        "COM_STMT_FETCH",
        "COM_STATISTICS",
        "COM_FIELD_LIST",
        "COM_RESET_CONNECTION",
        "COM_SET_OPTION",
        "COM_PROCESS_KILL",
        "COM_DEBUG",
        "COM_PROCESS_INFO",
    }
)


class MySQLAuthPlugin(enum.StrEnum):
    """The logins the gateway offers MySQL clients."""

    NATIVE_PASSWORD = "mysql_native_password"
    CACHING_SHA2_PASSWORD = "caching_sha2_password"


@dataclass(frozen=True, slots=True)
class MySQLSettings:
    """Per-client bounds and identity of a MySQL cluster.

    Attributes:
        max_allowed_packet: the largest payload a client may send (MariaDB's
            ``max_allowed_packet``, 16 MiB by default); larger is refused with 1153.
        server_version: the version the gateway's greeting announces to apps.
        auth_plugin: the login the greeting asks for: ``mysql_native_password``, or
            ``caching_sha2_password`` (MySQL 8's default: a SHA-256 scramble, and on a user's
            first login since the gateway started, the full authentication, with the
            password RSA-encrypted for the gateway's key). Clients that answer with the
            other plugin are served too.
    """

    max_allowed_packet: int = knob(16 * 1024 * 1024, Kind.SIZE, example="16MiB")
    auth_plugin: MySQLAuthPlugin = knob(
        MySQLAuthPlugin.NATIVE_PASSWORD, Kind.ENUM, choices=MySQLAuthPlugin
    )
    server_version: str = knob(
        "5.5.5-10.11.19-MariaDB-resmesh", Kind.STRING, low=1, example="5.5.5-10.11.19-MariaDB"
    )


def parse_mysql(ctx: Context, value: object, path: KeyPath) -> MySQLSettings:
    return parse_section(ctx, value, path, MySQLSettings)


def check_operation_name(layer: Layer, path: KeyPath, written: str, name: str) -> None:
    """An operation of a MySQL cluster is an SQL verb or a ``COM_*`` command name."""
    if name in SQL_VERBS or name in COMMAND_OPERATIONS:
        return
    known = sorted(SQL_VERBS | COMMAND_OPERATIONS)
    suggestion = suggest(name, known)
    raise layer.error_as_written(
        path,
        f"{written!r} is not an SQL verb nor a MySQL command",
        f"did you mean {suggestion!r}?"
        if suggestion
        else "name the first word of a statement (SELECT, INSERT...) or a command (COM_PING)",
    )


def check_operation(where: Merged, path: KeyPath, name: str, settings: OperationSettings) -> None:
    """``idempotent: true`` holds for a read only (a MySQL session keeps its connection: no
    retry or backup request happens in this version either way)."""
    if settings.idempotent is True and name not in READ_VERBS:
        raise where.error(
            (*path, "idempotent"),
            f"{name} may change data, so it cannot be sent twice",
            "remove idempotent: true",
        )
