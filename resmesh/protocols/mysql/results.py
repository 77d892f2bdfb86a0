"""Server replies of the text protocol: OK, ERR, EOF, MariaDB's progress report, result sets
(column count, column definitions, text rows) and the LOCAL INFILE request.

Public descriptions: https://mariadb.com/kb/en/ok_packet/, https://mariadb.com/kb/en/err_packet/,
https://mariadb.com/kb/en/eof_packet/, https://mariadb.com/kb/en/result-set-packets/,
https://mariadb.com/kb/en/progress-reporting/ and
https://dev.mysql.com/doc/dev/mysql-server/latest/page_protocol_basic_response_packets.html,
https://dev.mysql.com/doc/dev/mysql-server/latest/page_protocol_com_query_response_text_resultset.html.

A text result set is::

    column count        int<lenenc> [+ 1 "metadata follows" byte with MariaDB's CACHE_METADATA]
    column definition   x count (skipped when "metadata follows" is 0)
    EOF                 (not with CLIENT_DEPRECATE_EOF)
    row                 x n: one string<lenenc> per column, 0xFB for NULL
    EOF | OK (0xFE)     the OK form with CLIENT_DEPRECATE_EOF; or ERR mid-stream

Why these functions decode one packet each and nothing keeps a result in memory: the proxy
streams rows packet by packet (:mod:`.state` only looks at first bytes and lengths); decoding a
row is a separate, optional call.

Two details taken from what MariaDB 10.11 really sends (see ``protocols/mysql-vectors.json``):
the OK packet's info text is length-encoded even without ``CLIENT_SESSION_TRACK`` (the
documentation calls it ``string<EOF>``; the decoder accepts both), and an EOF-form OK is told from
an EOF by its length (an EOF is 5 bytes; an OK needs at least 7).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from .constants import Capability, ColumnFlag, ColumnType, ErrorCode, PacketHeader, ServerStatus
from .errors import ErrorInfo, MySQLLocalError, MySQLRemoteError, error_info
from .wire import Reader, int1, int2, int4, lenenc_int, lenenc_str

__all__ = [
    "EOF_MAX_SIZE",
    "ColumnCount",
    "ColumnDefinition",
    "EofPacket",
    "ErrPacket",
    "LocalInfileRequest",
    "OkPacket",
    "ProgressReport",
    "decode_column_count",
    "decode_column_definition",
    "decode_eof",
    "decode_err",
    "decode_local_infile_request",
    "decode_ok",
    "decode_progress_report",
    "decode_session_state",
    "decode_terminator",
    "decode_text_row",
    "encode_column_count",
    "encode_column_definition",
    "encode_eof",
    "encode_err",
    "encode_local_infile_request",
    "encode_ok",
    "encode_progress_report",
    "encode_session_state",
    "encode_text_row",
    "is_eof_packet",
    "is_err_packet",
    "is_progress_report",
    "is_row_terminator",
]

#: An EOF packet is 0xFE + warnings + status: 5 bytes (1 before protocol 4.1). A longer 0xFE
#: packet that is not a row is an OK packet (CLIENT_DEPRECATE_EOF).
EOF_MAX_SIZE: Final = 5
#: A payload this long (or longer) that starts with 0xFE is a row: a length-encoded string of
#: 2**24 bytes or more, never a terminator.
_ROW_MIN_FE_SIZE: Final = 0xFFFFFF
_TEXT: Final = "utf-8"
_ERRORS: Final = "surrogateescape"


def _text(raw: bytes) -> str:
    return raw.decode(_TEXT, _ERRORS)


def _raw(text: str) -> bytes:
    return text.encode(_TEXT, _ERRORS)


# -- OK ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class OkPacket:
    """An OK packet (header 0x00, or 0xFE when it ends a result set under DEPRECATE_EOF).

    Attributes:
        affected_rows: rows changed (or found, with ``CLIENT_FOUND_ROWS``).
        last_insert_id: the AUTO_INCREMENT value the statement generated.
        status: server status flags (transaction state, more results...).
        warnings: number of warnings.
        info: human-readable text ("Rows matched: 2  Changed: 0  Warnings: 0").
        session_state: the raw session state changes (with ``CLIENT_SESSION_TRACK`` and
            ``SESSION_STATE_CHANGED``); see :func:`decode_session_state`.
        header: 0x00, or 0xFE for the form that ends a result set.
    """

    affected_rows: int = 0
    last_insert_id: int = 0
    status: ServerStatus = ServerStatus.AUTOCOMMIT
    warnings: int = 0
    info: bytes = b""
    session_state: bytes | None = None
    header: int = PacketHeader.OK


def decode_ok(payload: bytes, capabilities: int) -> OkPacket:
    """Read an OK packet.

    Raises:
        MySQLRemoteError: 1835 if fields run past the packet or the header is not 0x00/0xFE.
    """
    reader = Reader(payload)
    header = reader.int1()
    if header not in (PacketHeader.OK, PacketHeader.EOF):
        raise reader.fail()
    affected = reader.lenenc_int()
    insert_id = reader.lenenc_int()
    status = 0
    warnings = 0
    if capabilities & Capability.PROTOCOL_41:
        status = reader.int2()
        warnings = reader.int2()
    elif capabilities & Capability.TRANSACTIONS:
        status = reader.int2()
    info = b""
    state = None
    if capabilities & Capability.SESSION_TRACK:
        if not reader.at_end():
            info = reader.lenenc_str()
        if status & ServerStatus.SESSION_STATE_CHANGED and not reader.at_end():
            state = reader.lenenc_str()
    elif not reader.at_end():
        # Servers write a length-encoded string where the documentation says string<EOF>.
        mark = reader.pos
        try:
            info = reader.lenenc_str()
            exact = reader.at_end()
        except MySQLRemoteError:
            exact = False
        if not exact:
            reader.pos = mark
            info = reader.rest()
    if not reader.at_end():
        raise reader.fail()
    return OkPacket(
        affected_rows=affected,
        last_insert_id=insert_id,
        status=ServerStatus(status),
        warnings=warnings,
        info=info,
        session_state=state,
        header=header,
    )


def encode_ok(ok: OkPacket, capabilities: int) -> bytes:
    """An OK packet's payload, written as MariaDB writes it."""
    out = [int1(ok.header), lenenc_int(ok.affected_rows), lenenc_int(ok.last_insert_id)]
    if capabilities & Capability.PROTOCOL_41:
        out.append(int2(int(ok.status)) + int2(ok.warnings))
    elif capabilities & Capability.TRANSACTIONS:
        out.append(int2(int(ok.status)))
    if capabilities & Capability.SESSION_TRACK:
        state = ok.session_state if ok.status & ServerStatus.SESSION_STATE_CHANGED else None
        if ok.info or state is not None:
            out.append(lenenc_str(ok.info))
        if state is not None:
            out.append(lenenc_str(state))
    elif ok.info:
        out.append(lenenc_str(ok.info))
    return b"".join(out)


def decode_session_state(data: bytes) -> list[tuple[int, bytes]]:
    """Split an OK packet's session state changes into ``(type, data)`` pairs.

    ``type`` is a :class:`~.constants.SessionTrack` value (or an unknown int); ``data`` is
    the entry's own payload: for SCHEMA a string<lenenc> with the database name; for
    SYSTEM_VARIABLES two (name, value); see https://mariadb.com/kb/en/ok_packet/.
    """
    reader = Reader(data)
    entries = []
    while not reader.at_end():
        kind = reader.int1()
        entries.append((kind, reader.lenenc_str()))
    return entries


def encode_session_state(entries: Sequence[tuple[int, bytes]]) -> bytes:
    """The inverse of :func:`decode_session_state`."""
    return b"".join(int1(kind) + lenenc_str(data) for kind, data in entries)


# -- ERR, progress -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ErrPacket:
    """An ERR packet: the error number, the SQLSTATE (``None`` in the pre-4.1 form, which
    has no ``#`` marker), the message."""

    errno: int
    sqlstate: str | None
    message: str

    @property
    def info(self) -> ErrorInfo:
        """As an :class:`~.errors.ErrorInfo` (``HY000`` when no SQLSTATE was sent)."""
        return ErrorInfo(self.errno, self.sqlstate or "HY000", self.message)

    @classmethod
    def from_info(cls, info: ErrorInfo) -> ErrPacket:
        """The ERR packet that reports ``info``."""
        return cls(info.errno, info.sqlstate, info.message)


def is_err_packet(payload: bytes) -> bool:
    """First byte 0xFF (in a reply; a client's command never starts with 0xFF)."""
    return bool(payload) and payload[0] == PacketHeader.ERR


def is_progress_report(payload: bytes) -> bool:
    """MariaDB's progress report: an ERR header with error number 0xFFFF."""
    return len(payload) >= 3 and payload[0] == 0xFF and payload[1] == 0xFF and payload[2] == 0xFF


def decode_err(payload: bytes) -> ErrPacket:
    """Read an ERR packet. The ``#``+SQLSTATE marker is read wherever it is present (servers
    also send it before they know the client's capabilities, e.g. "Too many connections").
    """
    reader = Reader(payload)
    if reader.int1() != PacketHeader.ERR:
        raise reader.fail()
    errno = reader.int2()
    sqlstate = None
    if reader.remaining >= 6 and payload[reader.pos] == ord("#"):
        reader.pos += 1
        sqlstate = reader.fixed(5).decode("ascii", _ERRORS)
    return ErrPacket(errno, sqlstate, _text(reader.rest()))


def encode_err(err: ErrPacket, capabilities: int = Capability.PROTOCOL_41) -> bytes:
    """An ERR packet's payload (SQLSTATE only with ``PROTOCOL_41``).

    Raises:
        MySQLLocalError: a SQLSTATE that is not 5 ASCII characters.
    """
    out = [b"\xff", int2(err.errno)]
    if capabilities & Capability.PROTOCOL_41 and err.sqlstate is not None:
        state = err.sqlstate.encode("ascii", _ERRORS)
        if len(state) != 5:
            raise MySQLLocalError(error_info(1105, f"SQLSTATE {err.sqlstate!r} is not 5 bytes"))
        out.append(b"#" + state)
    out.append(_raw(err.message))
    return b"".join(out)


@dataclass(frozen=True, slots=True, kw_only=True)
class ProgressReport:
    """MariaDB's progress report (ERR with errno 0xFFFF, with ``MARIADB_PROGRESS``), sent
    during long statements; not an error and not the end of a reply.

    Attributes:
        stage: current stage (1-based).
        max_stage: number of stages.
        progress: progress of this stage in thousandths of a percent (0..100000).
        info: the stage's name ("copy to tmp table").
    """

    stage: int
    max_stage: int
    progress: int
    info: bytes = b""


def decode_progress_report(payload: bytes) -> ProgressReport:
    """Read a progress report (https://mariadb.com/kb/en/progress-reporting/)."""
    reader = Reader(payload)
    if reader.int1() != PacketHeader.ERR or reader.int2() != ErrorCode.PROGRESS_REPORT:
        raise reader.fail()
    reader.int1()  # number of strings, always 1
    stage = reader.int1()
    max_stage = reader.int1()
    progress = reader.int3()
    return ProgressReport(
        stage=stage, max_stage=max_stage, progress=progress, info=reader.lenenc_str()
    )


def encode_progress_report(report: ProgressReport) -> bytes:
    """A progress report's payload."""
    return (
        b"\xff\xff\xff\x01"
        + int1(report.stage)
        + int1(report.max_stage)
        + report.progress.to_bytes(3, "little")
        + lenenc_str(report.info)
    )


# -- EOF ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EofPacket:
    """An EOF packet: warnings and status flags (ends column definitions and rows)."""

    warnings: int = 0
    status: ServerStatus = ServerStatus.AUTOCOMMIT


def is_eof_packet(payload: bytes) -> bool:
    """0xFE and short enough to be an EOF rather than an OK or a row."""
    return bool(payload) and payload[0] == PacketHeader.EOF and len(payload) <= EOF_MAX_SIZE


def is_row_terminator(payload: bytes) -> bool:
    """Whether a packet in the rows of a result set ends them: ERR, EOF, or OK (0xFE form).

    Only the first byte and the length are looked at: a row never starts with 0xFF, and a row
    that starts with 0xFE is a string of 16 MiB or more, so its payload is at least 0xFFFFFF
    bytes long.
    """
    if not payload:
        return False
    first = payload[0]
    return first == PacketHeader.ERR or (
        first == PacketHeader.EOF and len(payload) < _ROW_MIN_FE_SIZE
    )


def decode_eof(payload: bytes, capabilities: int = Capability.PROTOCOL_41) -> EofPacket:
    """Read an EOF packet."""
    reader = Reader(payload)
    if reader.int1() != PacketHeader.EOF:
        raise reader.fail()
    if capabilities & Capability.PROTOCOL_41 and not reader.at_end():
        warnings = reader.int2()
        status = reader.int2()
        if not reader.at_end():
            raise reader.fail()
        return EofPacket(warnings, ServerStatus(status))
    if not reader.at_end():
        raise reader.fail()
    return EofPacket(0, ServerStatus(0))


def encode_eof(eof: EofPacket, capabilities: int = Capability.PROTOCOL_41) -> bytes:
    """An EOF packet's payload."""
    if capabilities & Capability.PROTOCOL_41:
        return b"\xfe" + int2(eof.warnings) + int2(int(eof.status))
    return b"\xfe"


def decode_terminator(payload: bytes, capabilities: int) -> OkPacket | EofPacket | ErrPacket:
    """Read whatever ends a reply or a result set: ERR, EOF (5 bytes), or OK (0x00 or 0xFE)."""
    if is_err_packet(payload):
        return decode_err(payload)
    if is_eof_packet(payload):
        return decode_eof(payload, capabilities)
    return decode_ok(payload, capabilities)


# -- result sets -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ColumnCount:
    """The first packet of a result set.

    Attributes:
        count: number of columns.
        metadata_follows: whether column definitions follow. Only MariaDB's
            ``CACHE_METADATA`` adds the byte that can say they do not (a COM_STMT_EXECUTE
            whose prepare response already carried them).
    """

    count: int
    metadata_follows: bool = True


def decode_column_count(payload: bytes, capabilities: int) -> ColumnCount:
    """Read a column count packet."""
    reader = Reader(payload)
    count = reader.lenenc_int()
    follows = True
    if capabilities & Capability.MARIADB_CACHE_METADATA:
        follows = bool(reader.int1())
    if not reader.at_end() or count == 0:
        raise reader.fail()
    return ColumnCount(count, follows)


def encode_column_count(column_count: ColumnCount, capabilities: int) -> bytes:
    """A column count packet's payload."""
    out = lenenc_int(column_count.count)
    if capabilities & Capability.MARIADB_CACHE_METADATA:
        out += b"\x01" if column_count.metadata_follows else b"\x00"
    return out


_NO_FLAGS: Final = ColumnFlag(0)


@dataclass(frozen=True, slots=True, kw_only=True)
class ColumnDefinition:
    """A Column Definition 41 packet (result set columns and prepared statement parameters).

    Attributes:
        name: the column's name or alias; ``org_name`` the underlying column.
        table, org_table, schema, catalog: where it comes from (catalog is always "def").
        charset: collation id (63 for binary).
        length: maximum display length.
        type: the field type (a :class:`~.constants.ColumnType` when known).
        flags: :class:`~.constants.ColumnFlag` bits (``UNSIGNED`` matters to binary rows).
        decimals: digits after the point (31 for floats of no fixed scale).
        extended_metadata: MariaDB's extra data type info (with ``EXTENDED_METADATA``):
            raw ``(type byte, string<lenenc>)`` entries, e.g. the "json" format.
        default_value: the default value, only in COM_FIELD_LIST replies.
    """

    name: str
    type: int
    catalog: str = "def"
    schema: str = ""
    table: str = ""
    org_table: str = ""
    org_name: str = ""
    charset: int = 63
    length: int = 0
    flags: ColumnFlag = _NO_FLAGS
    decimals: int = 0
    extended_metadata: bytes | None = None
    default_value: bytes | None = None

    @property
    def unsigned(self) -> bool:
        """The UNSIGNED flag (binary rows need it to read integers)."""
        return bool(self.flags & ColumnFlag.UNSIGNED)

    @property
    def column_type(self) -> ColumnType | int:
        """``type`` as a :class:`~.constants.ColumnType` when it is one."""
        try:
            return ColumnType(self.type)
        except ValueError:
            return self.type


def decode_column_definition(payload: bytes, capabilities: int) -> ColumnDefinition:
    """Read a column definition (with the default value a COM_FIELD_LIST reply adds)."""
    reader = Reader(payload)
    catalog = reader.lenenc_str()
    schema = reader.lenenc_str()
    table = reader.lenenc_str()
    org_table = reader.lenenc_str()
    name = reader.lenenc_str()
    org_name = reader.lenenc_str()
    extended = None
    if capabilities & Capability.MARIADB_EXTENDED_METADATA:
        extended = reader.lenenc_str()
    fixed_length = reader.lenenc_int()
    if fixed_length != 0x0C:
        raise reader.fail()
    charset = reader.int2()
    length = reader.int4()
    column_type = reader.int1()
    flags = reader.int2()
    decimals = reader.int1()
    reader.int2()  # filler
    default = reader.lenenc_str() if not reader.at_end() else None
    if not reader.at_end():
        raise reader.fail()
    return ColumnDefinition(
        catalog=_text(catalog),
        schema=_text(schema),
        table=_text(table),
        org_table=_text(org_table),
        name=_text(name),
        org_name=_text(org_name),
        charset=charset,
        length=length,
        type=column_type,
        flags=ColumnFlag(flags),
        decimals=decimals,
        extended_metadata=extended,
        default_value=default,
    )


def encode_column_definition(column: ColumnDefinition, capabilities: int) -> bytes:
    """A column definition's payload."""
    out = [
        lenenc_str(_raw(column.catalog)),
        lenenc_str(_raw(column.schema)),
        lenenc_str(_raw(column.table)),
        lenenc_str(_raw(column.org_table)),
        lenenc_str(_raw(column.name)),
        lenenc_str(_raw(column.org_name)),
    ]
    if capabilities & Capability.MARIADB_EXTENDED_METADATA:
        out.append(lenenc_str(column.extended_metadata or b""))
    out.append(
        b"\x0c"
        + int2(column.charset)
        + int4(column.length)
        + int1(column.type)
        + int2(int(column.flags))
        + int1(column.decimals)
        + b"\x00\x00"
    )
    if column.default_value is not None:
        out.append(lenenc_str(column.default_value))
    return b"".join(out)


def decode_text_row(payload: bytes, column_count: int) -> tuple[bytes | None, ...]:
    """Read a text row: one ``string<lenenc>`` per column, ``None`` for NULL (0xFB).

    Raises:
        MySQLRemoteError: 1835 if the row holds more or fewer values than ``column_count``.
    """
    reader = Reader(payload)
    values = tuple(reader.lenenc_str_or_null() for _ in range(column_count))
    if not reader.at_end():
        raise reader.fail()
    return values


def encode_text_row(values: Sequence[bytes | None]) -> bytes:
    """A text row's payload."""
    return b"".join(b"\xfb" if value is None else lenenc_str(value) for value in values)


# -- LOCAL INFILE ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LocalInfileRequest:
    """0xFB in reply to a query: the server asks the client for a file's contents (LOAD DATA
    LOCAL INFILE). The client answers with the data in packets and an empty packet."""

    filename: bytes


def decode_local_infile_request(payload: bytes) -> LocalInfileRequest:
    """Read a LOCAL INFILE request."""
    reader = Reader(payload)
    if reader.int1() != PacketHeader.LOCAL_INFILE:
        raise reader.fail()
    return LocalInfileRequest(reader.rest())


def encode_local_infile_request(request: LocalInfileRequest) -> bytes:
    """A LOCAL INFILE request's payload."""
    return b"\xfb" + request.filename
