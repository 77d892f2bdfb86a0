"""The client's text-protocol commands: COM_QUERY, COM_INIT_DB, COM_FIELD_LIST,
COM_CHANGE_USER, COM_SET_OPTION, COM_PROCESS_KILL and the one-byte ones (COM_QUIT, COM_PING,
COM_STATISTICS, COM_RESET_CONNECTION...). Prepared statements are in :mod:`.statements`.

Public descriptions: https://mariadb.com/kb/en/2-text-protocol/ (one page per command, e.g.
https://mariadb.com/kb/en/com_query/, https://mariadb.com/kb/en/com_change_user/) and
https://dev.mysql.com/doc/dev/mysql-server/latest/page_protocol_command_phase.html.

Why the gateway rarely needs these decoders: a command's first byte says what reply to expect
(:mod:`.state` needs nothing more) and the statement text of COM_QUERY is the rest of the
payload, read without copying the packet apart. Decoding matters where the gateway acts on a
command itself: COM_INIT_DB and COM_CHANGE_USER change session state it must replay on another
backend, COM_SET_OPTION switches multi-statements, and MySQL 8's query attributes sit in front
of the SQL text when ``CLIENT_QUERY_ATTRIBUTES`` was negotiated.
"""

from __future__ import annotations

from dataclasses import dataclass

from .binary import (
    BinaryValue,
    decode_binary_value,
    decode_null_bitmap,
    encode_binary_value,
    encode_null_bitmap,
    null_bitmap_size,
)
from .constants import Capability, Command
from .statements import ParamType
from .wire import Reader, int1, int2, int4, lenenc_int, lenenc_str, nul_str

__all__ = [
    "ChangeUser",
    "FieldList",
    "InitDb",
    "ProcessKill",
    "Query",
    "QueryAttribute",
    "SetOption",
    "command_of",
    "decode_change_user",
    "decode_field_list",
    "decode_init_db",
    "decode_process_kill",
    "decode_query",
    "decode_set_option",
    "encode_change_user",
    "encode_command",
    "encode_field_list",
    "encode_init_db",
    "encode_process_kill",
    "encode_query",
    "encode_set_option",
]

_TEXT = "utf-8"
_ERRORS = "surrogateescape"


def _text(raw: bytes) -> str:
    return raw.decode(_TEXT, _ERRORS)


def _raw(text: str) -> bytes:
    return text.encode(_TEXT, _ERRORS)


def command_of(payload: bytes) -> Command | int | None:
    """The command a client packet carries: a :class:`~.constants.Command`, an unknown
    byte as an int, or ``None`` for an empty packet."""
    if not payload:
        return None
    try:
        return Command(payload[0])
    except ValueError:
        return payload[0]


def encode_command(command: Command, argument: bytes = b"") -> bytes:
    """A command byte and its raw argument (COM_PING, COM_QUIT, COM_QUERY's SQL...)."""
    return bytes((command,)) + argument


@dataclass(frozen=True, slots=True)
class QueryAttribute:
    """One MySQL 8 query attribute: a name, a type and a value."""

    name: bytes
    type: ParamType
    value: BinaryValue


@dataclass(frozen=True, slots=True)
class Query:
    """COM_QUERY: the statement text (bytes in the connection's character set), and MySQL 8's
    query attributes (``None`` unless ``CLIENT_QUERY_ATTRIBUTES``)."""

    sql: bytes
    attributes: tuple[QueryAttribute, ...] | None = None


def decode_query(payload: bytes, capabilities: int = 0) -> Query:
    """Read COM_QUERY."""
    reader = Reader(payload)
    if reader.int1() != Command.QUERY:
        raise reader.fail()
    if not capabilities & Capability.QUERY_ATTRIBUTES:
        return Query(reader.rest())
    count = reader.lenenc_int()
    if reader.lenenc_int() != 1:  # parameter sets: always one
        raise reader.fail()
    attributes: list[QueryAttribute] = []
    if count:
        if count > reader.remaining * 8:
            raise reader.fail()
        nulls = decode_null_bitmap(reader.fixed(null_bitmap_size(count, 0)), count, 0)
        if reader.int1() != 1:
            raise reader.fail()
        heads = []
        for _ in range(count):
            param = ParamType(reader.int1(), reader.int1())
            heads.append((param, reader.lenenc_str()))
        for null, (param, name) in zip(nulls, heads, strict=True):
            value = None if null else decode_binary_value(reader, param.type, param.unsigned)
            attributes.append(QueryAttribute(name, param, value))
    return Query(reader.rest(), tuple(attributes))


def encode_query(query: Query, capabilities: int = 0) -> bytes:
    """COM_QUERY's payload."""
    out = [b"\x03"]
    if capabilities & Capability.QUERY_ATTRIBUTES:
        attributes = query.attributes or ()
        out.append(lenenc_int(len(attributes)) + b"\x01")
        if attributes:
            out.append(encode_null_bitmap([a.value is None for a in attributes], 0) + b"\x01")
            for attribute in attributes:
                param = attribute.type
                out.append(int1(param.type) + int1(param.flags) + lenenc_str(attribute.name))
            for attribute in attributes:
                if attribute.value is not None:
                    out.append(
                        encode_binary_value(
                            attribute.type.type, attribute.value, attribute.type.unsigned
                        )
                    )
    out.append(query.sql)
    return b"".join(out)


@dataclass(frozen=True, slots=True)
class InitDb:
    """COM_INIT_DB: change the default database (what ``USE db`` and ``select_db`` send)."""

    schema: str


def decode_init_db(payload: bytes) -> InitDb:
    """Read COM_INIT_DB."""
    reader = Reader(payload)
    if reader.int1() != Command.INIT_DB:
        raise reader.fail()
    return InitDb(_text(reader.rest()))


def encode_init_db(command: InitDb) -> bytes:
    """COM_INIT_DB's payload."""
    return b"\x02" + _raw(command.schema)


@dataclass(frozen=True, slots=True)
class FieldList:
    """COM_FIELD_LIST (deprecated): the columns of ``table`` matching ``wildcard``."""

    table: str
    wildcard: str = ""


def decode_field_list(payload: bytes) -> FieldList:
    """Read COM_FIELD_LIST."""
    reader = Reader(payload)
    if reader.int1() != Command.FIELD_LIST:
        raise reader.fail()
    table = _text(reader.nul_str())
    return FieldList(table, _text(reader.rest()))


def encode_field_list(command: FieldList) -> bytes:
    """COM_FIELD_LIST's payload."""
    return b"\x04" + nul_str(_raw(command.table)) + _raw(command.wildcard)


@dataclass(frozen=True, slots=True, kw_only=True)
class ChangeUser:
    """COM_CHANGE_USER: log in again on the same connection (the session is reset).

    The reply is an authentication exchange, like the connection phase's.
    """

    username: str
    auth_response: bytes = b""
    database: str = ""
    charset: int | None = None
    auth_plugin_name: str | None = None
    connect_attributes: tuple[tuple[str, str], ...] | None = None


def decode_change_user(payload: bytes, capabilities: int) -> ChangeUser:
    """Read COM_CHANGE_USER (its layout depends on the session's capabilities)."""
    reader = Reader(payload)
    if reader.int1() != Command.CHANGE_USER:
        raise reader.fail()
    username = _text(reader.nul_str())
    if capabilities & Capability.SECURE_CONNECTION:
        auth = reader.fixed(reader.int1())
    else:
        auth = reader.nul_str()
    database = _text(reader.nul_str_or_rest())
    charset = reader.int2() if reader.remaining >= 2 else None
    plugin = None
    if capabilities & Capability.PLUGIN_AUTH and not reader.at_end():
        plugin = _text(reader.nul_str_or_rest())
    attributes = None
    if capabilities & Capability.CONNECT_ATTRS and not reader.at_end():
        block = Reader(reader.lenenc_str())
        pairs = []
        while not block.at_end():
            key = _text(block.lenenc_str())
            pairs.append((key, _text(block.lenenc_str())))
        attributes = tuple(pairs)
    if not reader.at_end():
        raise reader.fail()
    return ChangeUser(
        username=username,
        auth_response=auth,
        database=database,
        charset=charset,
        auth_plugin_name=plugin,
        connect_attributes=attributes,
    )


def encode_change_user(command: ChangeUser, capabilities: int) -> bytes:
    """COM_CHANGE_USER's payload."""
    out = [b"\x11", nul_str(_raw(command.username))]
    if capabilities & Capability.SECURE_CONNECTION:
        out.append(int1(len(command.auth_response)) + command.auth_response)
    else:
        out.append(nul_str(command.auth_response))
    out.append(nul_str(_raw(command.database)))
    if command.charset is not None:
        out.append(int2(command.charset))
        if capabilities & Capability.PLUGIN_AUTH and command.auth_plugin_name is not None:
            out.append(nul_str(_raw(command.auth_plugin_name)))
            if capabilities & Capability.CONNECT_ATTRS and command.connect_attributes is not None:
                block = b"".join(
                    lenenc_str(_raw(k)) + lenenc_str(_raw(v)) for k, v in command.connect_attributes
                )
                out.append(lenenc_str(block))
    return b"".join(out)


@dataclass(frozen=True, slots=True)
class SetOption:
    """COM_SET_OPTION: multi-statements on (0) or off (1); the reply is EOF or ERR."""

    option: int


def decode_set_option(payload: bytes) -> SetOption:
    """Read COM_SET_OPTION."""
    reader = Reader(payload)
    if reader.int1() != Command.SET_OPTION:
        raise reader.fail()
    option = reader.int2()
    if not reader.at_end():
        raise reader.fail()
    return SetOption(option)


def encode_set_option(command: SetOption) -> bytes:
    """COM_SET_OPTION's payload."""
    return b"\x1b" + int2(command.option)


@dataclass(frozen=True, slots=True)
class ProcessKill:
    """COM_PROCESS_KILL: kill a connection by id (``KILL n`` is a COM_QUERY instead)."""

    connection_id: int


def decode_process_kill(payload: bytes) -> ProcessKill:
    """Read COM_PROCESS_KILL."""
    reader = Reader(payload)
    if reader.int1() != Command.PROCESS_KILL:
        raise reader.fail()
    command = ProcessKill(reader.int4())
    if not reader.at_end():
        raise reader.fail()
    return command


def encode_process_kill(command: ProcessKill) -> bytes:
    """COM_PROCESS_KILL's payload."""
    return b"\x0c" + int4(command.connection_id)
