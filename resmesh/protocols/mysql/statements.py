"""Prepared statements (the binary protocol's commands and the prepare response).

Public descriptions: https://mariadb.com/kb/en/com_stmt_prepare/,
https://mariadb.com/kb/en/com_stmt_execute/, https://mariadb.com/kb/en/com_stmt_close/,
https://mariadb.com/kb/en/com_stmt_reset/, https://mariadb.com/kb/en/com_stmt_send_long_data/,
https://mariadb.com/kb/en/com_stmt_fetch/ and
https://dev.mysql.com/doc/dev/mysql-server/latest/page_protocol_com_stmt_execute.html.

The lifecycle::

    COM_STMT_PREPARE "SELECT ? ..."   -> PREPARE_OK (id, columns, params, warnings)
                                         + param definitions [EOF] + column definitions [EOF]
    [COM_STMT_SEND_LONG_DATA id p data]  (no reply; the value is left out of EXECUTE)
    COM_STMT_EXECUTE id flags 1 [NULL bitmap, new-params-bound, types, values]
                                      -> OK | ERR | binary result set(s)
    COM_STMT_FETCH id n                -> rows + EOF   (when EXECUTE opened a cursor)
    COM_STMT_RESET id                  -> OK | ERR
    COM_STMT_CLOSE id                  (no reply)

Why :func:`decode_stmt_execute` needs the statement's parameter count and, when the client
does not resend them, the types of its previous execution: the packet does not say how many
parameters follow, nor (with new-params-bound 0) their types. A server keeps both per
statement; so does whoever calls this (the prepare response gives the count). MariaDB's
statement id 0xFFFFFFFF means "the statement prepared last", which lets a client pipeline
PREPARE and EXECUTE (both MariaDB Connector/C and the Node.js connector do, see the vectors).
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Final, TypeAlias

from .binary import (
    UNSIGNED_FLAG,
    BinaryValue,
    decode_binary_value,
    decode_null_bitmap,
    encode_binary_value,
    encode_null_bitmap,
    null_bitmap_size,
)
from .constants import Capability, Command, CursorFlag
from .errors import MySQLLocalError, MySQLRemoteError, error_info, wrong_arguments
from .wire import Reader, int1, int2, int4, lenenc_int, lenenc_str

__all__ = [
    "LAST_STATEMENT_ID",
    "LONG_DATA",
    "ExecuteValue",
    "LongData",
    "ParamType",
    "PrepareOk",
    "StmtClose",
    "StmtExecute",
    "StmtFetch",
    "StmtPrepare",
    "StmtReset",
    "StmtSendLongData",
    "decode_prepare_ok",
    "decode_stmt_close",
    "decode_stmt_execute",
    "decode_stmt_fetch",
    "decode_stmt_prepare",
    "decode_stmt_reset",
    "decode_stmt_send_long_data",
    "encode_prepare_ok",
    "encode_stmt_close",
    "encode_stmt_execute",
    "encode_stmt_fetch",
    "encode_stmt_prepare",
    "encode_stmt_reset",
    "encode_stmt_send_long_data",
    "peek_statement_id",
]

_CURSOR_TYPES: Final = CursorFlag.READ_ONLY | CursorFlag.FOR_UPDATE | CursorFlag.SCROLLABLE

#: MariaDB: "the statement this connection prepared last" (pipelined PREPARE + EXECUTE).
LAST_STATEMENT_ID: Final = 0xFFFFFFFF


class LongData(enum.Enum):
    """The type of :data:`LONG_DATA`."""

    LONG_DATA = "LONG_DATA"


#: A parameter whose value was sent with COM_STMT_SEND_LONG_DATA: not in the EXECUTE packet.
LONG_DATA: Final = LongData.LONG_DATA

#: A parameter value of COM_STMT_EXECUTE.
ExecuteValue: TypeAlias = BinaryValue | LongData


@dataclass(frozen=True, slots=True)
class StmtPrepare:
    """COM_STMT_PREPARE: the statement text, ``?`` for each parameter."""

    query: bytes


def decode_stmt_prepare(payload: bytes) -> StmtPrepare:
    """Read COM_STMT_PREPARE."""
    reader = Reader(payload)
    if reader.int1() != Command.STMT_PREPARE:
        raise reader.fail()
    return StmtPrepare(reader.rest())


def encode_stmt_prepare(prepare: StmtPrepare) -> bytes:
    """COM_STMT_PREPARE's payload."""
    return bytes((Command.STMT_PREPARE,)) + prepare.query


@dataclass(frozen=True, slots=True, kw_only=True)
class PrepareOk:
    """The first packet of a successful prepare.

    Attributes:
        statement_id: the id to execute, fetch, reset and close the statement with.
        num_columns: columns of its result (0 for statements that return none).
        num_params: its ``?`` parameters.
        warnings: warnings of the prepare.
        metadata_follows: MySQL 8's byte (with ``OPTIONAL_RESULTSET_METADATA``), else ``None``.
    """

    statement_id: int
    num_columns: int
    num_params: int
    warnings: int = 0
    metadata_follows: int | None = None


def decode_prepare_ok(payload: bytes) -> PrepareOk:
    """Read a prepare response's first packet (0x00, 12 bytes)."""
    reader = Reader(payload)
    if reader.int1() != 0x00:
        raise reader.fail()
    statement_id = reader.int4()
    columns = reader.int2()
    params = reader.int2()
    reader.int1()  # reserved
    warnings = reader.int2() if reader.remaining >= 2 else 0
    follows = reader.int1() if not reader.at_end() else None
    if not reader.at_end():
        raise reader.fail()
    return PrepareOk(
        statement_id=statement_id,
        num_columns=columns,
        num_params=params,
        warnings=warnings,
        metadata_follows=follows,
    )


def encode_prepare_ok(ok: PrepareOk) -> bytes:
    """A prepare response's first packet."""
    out = (
        b"\x00"
        + int4(ok.statement_id)
        + int2(ok.num_columns)
        + int2(ok.num_params)
        + b"\x00"
        + int2(ok.warnings)
    )
    if ok.metadata_follows is not None:
        out += int1(ok.metadata_follows)
    return out


@dataclass(frozen=True, slots=True)
class ParamType:
    """A parameter's type as COM_STMT_EXECUTE sends it: a field type and a flag byte
    (0x80: unsigned)."""

    type: int
    flags: int = 0

    @property
    def unsigned(self) -> bool:
        """Whether integers are read unsigned."""
        return bool(self.flags & UNSIGNED_FLAG)


@dataclass(frozen=True, slots=True, kw_only=True)
class StmtExecute:
    """COM_STMT_EXECUTE.

    Attributes:
        statement_id: the prepared statement (or :data:`LAST_STATEMENT_ID`).
        flags: :class:`~.constants.CursorFlag` bits; a cursor defers the rows to FETCH.
        iteration_count: always 1.
        values: one per parameter: a value, ``None`` (NULL), or :data:`LONG_DATA`.
        param_types: the types the values are encoded with. On the wire only when
            ``new_params_bound``; otherwise those of the previous execution.
        new_params_bound: whether the packet carries the types.
        param_names: MySQL query attributes' parameter names (with ``QUERY_ATTRIBUTES``).
    """

    statement_id: int
    values: tuple[ExecuteValue, ...] = ()
    param_types: tuple[ParamType, ...] = ()
    flags: int = CursorFlag.NO_CURSOR
    iteration_count: int = 1
    new_params_bound: bool = True
    param_names: tuple[bytes, ...] | None = None

    @property
    def opens_cursor(self) -> bool:
        """Whether the client asked for a cursor (rows then come only with COM_STMT_FETCH)."""
        return bool(
            self.flags & (CursorFlag.READ_ONLY | CursorFlag.FOR_UPDATE | CursorFlag.SCROLLABLE)
        )


def peek_statement_id(payload: bytes) -> int | None:
    """The statement id of a COM_STMT_* packet, read without decoding the rest."""
    if len(payload) < 5:
        return None
    return int.from_bytes(payload[1:5], "little")


def decode_stmt_execute(
    payload: bytes,
    param_count: int,
    *,
    previous_types: Sequence[ParamType] | None = None,
    long_data: Collection[int] = (),
    capabilities: int = 0,
) -> StmtExecute:
    """Read COM_STMT_EXECUTE.

    Args:
        payload: the packet's payload.
        param_count: the statement's parameters (from its PREPARE_OK).
        previous_types: the types of its previous execution, needed when the client does not
            resend them (new-params-bound 0).
        long_data: indexes of parameters sent with COM_STMT_SEND_LONG_DATA since the last
            execution: their values are not in the packet.
        capabilities: the session's capabilities (``QUERY_ATTRIBUTES`` changes the layout).

    Raises:
        MySQLRemoteError: 1835 for a malformed packet; 1210 when the types are neither in the
            packet nor given.
    """
    reader = Reader(payload)
    if reader.int1() != Command.STMT_EXECUTE:
        raise reader.fail()
    statement_id = reader.int4()
    flags = reader.int1()
    iterations = reader.int4()
    attributes = bool(capabilities & Capability.QUERY_ATTRIBUTES)
    count = param_count
    if attributes and (count > 0 or flags & CursorFlag.PARAMETER_COUNT_AVAILABLE):
        count = reader.lenenc_int()
    if count == 0:
        if not reader.at_end():
            raise reader.fail()
        return StmtExecute(statement_id=statement_id, flags=flags, iteration_count=iterations)
    if count > reader.remaining * 8:
        raise reader.fail()
    nulls = decode_null_bitmap(reader.fixed(null_bitmap_size(count, 0)), count, 0)
    bound = reader.int1()
    if bound > 1:
        raise reader.fail()
    names: tuple[bytes, ...] | None = None
    if bound:
        types = []
        name_list = []
        for _ in range(count):
            types.append(ParamType(reader.int1(), reader.int1()))
            if attributes:
                name_list.append(reader.lenenc_str())
        param_types = tuple(types)
        names = tuple(name_list) if attributes else None
    elif previous_types is not None and len(previous_types) == count:
        param_types = tuple(previous_types)
    else:
        raise MySQLRemoteError(wrong_arguments("mysqld_stmt_execute"), close=False)
    values: list[ExecuteValue] = []
    for index, (null, param) in enumerate(zip(nulls, param_types, strict=True)):
        if index in long_data:
            values.append(LONG_DATA)
        elif null:
            values.append(None)
        else:
            values.append(decode_binary_value(reader, param.type, param.unsigned))
    if not reader.at_end():
        raise reader.fail()
    return StmtExecute(
        statement_id=statement_id,
        values=tuple(values),
        param_types=param_types,
        flags=flags,
        iteration_count=iterations,
        new_params_bound=bool(bound),
        param_names=names,
    )


def encode_stmt_execute(execute: StmtExecute, capabilities: int = 0) -> bytes:
    """COM_STMT_EXECUTE's payload.

    Raises:
        MySQLLocalError: a value that does not fit its type, or as many types as values
            missing.
    """
    out = [
        bytes((Command.STMT_EXECUTE,)),
        int4(execute.statement_id),
        int1(execute.flags),
        int4(execute.iteration_count),
    ]
    values = execute.values
    count = len(values)
    attributes = bool(capabilities & Capability.QUERY_ATTRIBUTES)
    if attributes and (count > 0 or execute.flags & CursorFlag.PARAMETER_COUNT_AVAILABLE):
        out.append(lenenc_int(count))
    if count == 0:
        return b"".join(out)
    types = execute.param_types
    if len(types) != count:
        raise MySQLLocalError(error_info(1105, f"{count} values need {count} parameter types"))
    out.append(encode_null_bitmap([value is None for value in values], 0))
    out.append(b"\x01" if execute.new_params_bound else b"\x00")
    if execute.new_params_bound:
        names = execute.param_names or (b"",) * count
        for param, name in zip(types, names, strict=True):
            out.append(int1(param.type) + int1(param.flags))
            if attributes:
                out.append(lenenc_str(name))
    for param, value in zip(types, values, strict=True):
        if value is None or value is LONG_DATA:
            continue
        out.append(encode_binary_value(param.type, value, param.unsigned))
    return b"".join(out)


@dataclass(frozen=True, slots=True)
class StmtSendLongData:
    """COM_STMT_SEND_LONG_DATA: a chunk of one parameter's value (no reply)."""

    statement_id: int
    param_id: int
    data: bytes


def decode_stmt_send_long_data(payload: bytes) -> StmtSendLongData:
    """Read COM_STMT_SEND_LONG_DATA."""
    reader = Reader(payload)
    if reader.int1() != Command.STMT_SEND_LONG_DATA:
        raise reader.fail()
    return StmtSendLongData(reader.int4(), reader.int2(), reader.rest())


def encode_stmt_send_long_data(command: StmtSendLongData) -> bytes:
    """COM_STMT_SEND_LONG_DATA's payload."""
    return (
        bytes((Command.STMT_SEND_LONG_DATA,))
        + int4(command.statement_id)
        + int2(command.param_id)
        + command.data
    )


@dataclass(frozen=True, slots=True)
class StmtClose:
    """COM_STMT_CLOSE (no reply)."""

    statement_id: int


@dataclass(frozen=True, slots=True)
class StmtReset:
    """COM_STMT_RESET: drops long data and closes the cursor (OK or ERR)."""

    statement_id: int


def _decode_id_only(payload: bytes, command: Command) -> int:
    reader = Reader(payload)
    if reader.int1() != command:
        raise reader.fail()
    statement_id = reader.int4()
    if not reader.at_end():
        raise reader.fail()
    return statement_id


def decode_stmt_close(payload: bytes) -> StmtClose:
    """Read COM_STMT_CLOSE."""
    return StmtClose(_decode_id_only(payload, Command.STMT_CLOSE))


def encode_stmt_close(command: StmtClose) -> bytes:
    """COM_STMT_CLOSE's payload."""
    return bytes((Command.STMT_CLOSE,)) + int4(command.statement_id)


def decode_stmt_reset(payload: bytes) -> StmtReset:
    """Read COM_STMT_RESET."""
    return StmtReset(_decode_id_only(payload, Command.STMT_RESET))


def encode_stmt_reset(command: StmtReset) -> bytes:
    """COM_STMT_RESET's payload."""
    return bytes((Command.STMT_RESET,)) + int4(command.statement_id)


@dataclass(frozen=True, slots=True)
class StmtFetch:
    """COM_STMT_FETCH: up to ``num_rows`` more rows of an open cursor."""

    statement_id: int
    num_rows: int


def decode_stmt_fetch(payload: bytes) -> StmtFetch:
    """Read COM_STMT_FETCH."""
    reader = Reader(payload)
    if reader.int1() != Command.STMT_FETCH:
        raise reader.fail()
    fetch = StmtFetch(reader.int4(), reader.int4())
    if not reader.at_end():
        raise reader.fail()
    return fetch


def encode_stmt_fetch(command: StmtFetch) -> bytes:
    """COM_STMT_FETCH's payload."""
    return bytes((Command.STMT_FETCH,)) + int4(command.statement_id) + int4(command.num_rows)
