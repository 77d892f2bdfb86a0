"""MySQL protocol errors that carry a real ERR packet's contents: errno, SQLSTATE, message.

Why a subclass of the shared errors (``resmesh.protocols._errors``): the frontend answers a
protocol violation the way MariaDB would, with an ERR packet a client library shows its user
(PyMySQL raises ``OperationalError(1153, "Got a packet bigger than ...")``), so the reply hint
must be more than a string. :class:`ErrorInfo` is that reply; :class:`MySQLRemoteError` and
:class:`MySQLLocalError` carry one (``reply_hint`` is its message, for code that only knows the
base classes). The texts are MariaDB 10.11's (``perror`` prints them; the SQLSTATEs are listed
at https://mariadb.com/kb/en/mariadb-error-codes/), so a client sees the words it would see
without the gateway in between.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from .._errors import LocalProtocolError, RemoteProtocolError
from .constants import ERROR_SQLSTATES, ErrorCode

__all__ = [
    "ErrorInfo",
    "MySQLLocalError",
    "MySQLRemoteError",
    "access_denied",
    "bad_db",
    "bad_handshake",
    "dbaccess_denied",
    "error_info",
    "malformed_packet",
    "no_db",
    "not_supported_auth_mode",
    "packet_too_large",
    "packets_out_of_order",
    "read_only",
    "too_many_connections",
    "unknown_command",
    "unknown_stmt_handler",
    "wrong_arguments",
]


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """What an ERR packet says: the error number, the 5-character SQLSTATE, the message."""

    errno: int
    sqlstate: str
    message: str

    def __str__(self) -> str:
        return f"({self.errno}, {self.sqlstate}) {self.message}"


def error_info(errno: int, message: str) -> ErrorInfo:
    """An :class:`ErrorInfo` with the SQLSTATE MariaDB uses for ``errno`` (``HY000`` if the
    number is not one the gateway names)."""
    return ErrorInfo(errno, ERROR_SQLSTATES.get(errno, "HY000"), message)


class MySQLRemoteError(RemoteProtocolError):
    """The peer broke the protocol; :attr:`error` is the ERR packet to answer with.

    Attributes:
        error: errno, SQLSTATE and message for the frontend's ERR packet.
        close: whether the connection is unusable afterwards (framing errors: always).
    """

    def __init__(self, error: ErrorInfo, *, close: bool = True) -> None:
        super().__init__(error.message, close=close)
        self.error: Final = error

    def __str__(self) -> str:
        return str(self.error)


class MySQLLocalError(LocalProtocolError):
    """Our own code asked for bytes that break the protocol (a bug here, not the peer's)."""

    def __init__(self, error: ErrorInfo, *, close: bool = True) -> None:
        super().__init__(error.message, close=close)
        self.error: Final = error

    def __str__(self) -> str:
        return str(self.error)


def packet_too_large() -> ErrorInfo:
    """1153: a packet over the configured ``max_allowed_packet``."""
    return error_info(
        ErrorCode.NET_PACKET_TOO_LARGE, "Got a packet bigger than 'max_allowed_packet' bytes"
    )


def packets_out_of_order() -> ErrorInfo:
    """1156: a sequence id other than the expected one."""
    return error_info(ErrorCode.NET_PACKETS_OUT_OF_ORDER, "Got packets out of order")


def malformed_packet() -> ErrorInfo:
    """1835: a packet whose fields run past its end, or hold impossible values."""
    return error_info(ErrorCode.MALFORMED_PACKET, "Malformed communication packet")


def bad_handshake() -> ErrorInfo:
    """1043: a handshake response that cannot be read."""
    return error_info(ErrorCode.HANDSHAKE_ERROR, "Bad handshake")


def unknown_command() -> ErrorInfo:
    """1047: a command byte the server does not serve."""
    return error_info(ErrorCode.UNKNOWN_COM_ERROR, "Unknown command")


def access_denied(user: str, host: str, *, using_password: bool) -> ErrorInfo:
    """1045, worded exactly as MariaDB words it."""
    yes_no = "YES" if using_password else "NO"
    return error_info(
        ErrorCode.ACCESS_DENIED_ERROR,
        f"Access denied for user '{user}'@'{host}' (using password: {yes_no})",
    )


def dbaccess_denied(user: str, host: str, database: str) -> ErrorInfo:
    """1044: the user may not use ``database``."""
    return error_info(
        ErrorCode.DBACCESS_DENIED_ERROR,
        f"Access denied for user '{user}'@'{host}' to database '{database}'",
    )


def bad_db(database: str) -> ErrorInfo:
    """1049: no such database."""
    return error_info(ErrorCode.BAD_DB_ERROR, f"Unknown database '{database}'")


def no_db() -> ErrorInfo:
    """1046: a statement needs a default database and there is none."""
    return error_info(ErrorCode.NO_DB_ERROR, "No database selected")


def too_many_connections() -> ErrorInfo:
    """1040: the connection limit is reached."""
    return error_info(ErrorCode.CON_COUNT_ERROR, "Too many connections")


def read_only(option: str = "--read-only") -> ErrorInfo:
    """1290 (HY000): what MariaDB answers a write while it runs ``--read-only``; the gateway's
    read-only degrade switch answers the same, naming its own option."""
    return error_info(
        ErrorCode.OPTION_PREVENTS_STATEMENT,
        f"The MariaDB server is running with the {option} option so it cannot execute this "
        "statement",
    )


def not_supported_auth_mode() -> ErrorInfo:
    """1251: the client cannot speak the authentication plugin the server requires."""
    return error_info(
        ErrorCode.NOT_SUPPORTED_AUTH_MODE,
        "Client does not support authentication protocol requested by server; consider "
        "upgrading MariaDB client",
    )


def unknown_stmt_handler(statement_id: int, where: str) -> ErrorInfo:
    """1243: a statement id that was never prepared (or was closed)."""
    return error_info(
        ErrorCode.UNKNOWN_STMT_HANDLER,
        f"Unknown prepared statement handler ({statement_id}) given to {where}",
    )


def wrong_arguments(where: str) -> ErrorInfo:
    """1210: e.g. COM_STMT_EXECUTE without parameter types on its first execution."""
    return error_info(ErrorCode.WRONG_ARGUMENTS, f"Incorrect arguments to {where}")
