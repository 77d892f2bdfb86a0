"""Command-phase packets: OK, ERR, EOF, column definitions, text and binary rows, prepared
statement packets and text commands, against MariaDB's bytes and in hypothesis round trips."""

from __future__ import annotations

import datetime
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resmesh.protocols.mysql.binary import (
    BinaryValue,
    DateTimeValue,
    TimeValue,
    decode_binary_row,
    decode_binary_value,
    encode_binary_row,
    encode_binary_value,
)
from resmesh.protocols.mysql.commands import (
    ChangeUser,
    FieldList,
    InitDb,
    Query,
    QueryAttribute,
    SetOption,
    command_of,
    decode_change_user,
    decode_field_list,
    decode_init_db,
    decode_query,
    decode_set_option,
    encode_change_user,
    encode_field_list,
    encode_init_db,
    encode_query,
    encode_set_option,
)
from resmesh.protocols.mysql.constants import (
    Capability,
    ColumnFlag,
    ColumnType,
    Command,
    ServerStatus,
    SessionTrack,
)
from resmesh.protocols.mysql.errors import MySQLLocalError, MySQLRemoteError, read_only
from resmesh.protocols.mysql.results import (
    ColumnCount,
    ColumnDefinition,
    EofPacket,
    ErrPacket,
    OkPacket,
    ProgressReport,
    decode_column_count,
    decode_column_definition,
    decode_eof,
    decode_err,
    decode_local_infile_request,
    decode_ok,
    decode_progress_report,
    decode_session_state,
    decode_terminator,
    decode_text_row,
    encode_column_count,
    encode_column_definition,
    encode_eof,
    encode_err,
    encode_local_infile_request,
    encode_ok,
    encode_progress_report,
    encode_text_row,
    is_row_terminator,
)
from resmesh.protocols.mysql.statements import (
    LONG_DATA,
    ParamType,
    PrepareOk,
    StmtExecute,
    decode_prepare_ok,
    decode_stmt_close,
    decode_stmt_execute,
    decode_stmt_fetch,
    decode_stmt_reset,
    decode_stmt_send_long_data,
    encode_prepare_ok,
    encode_stmt_execute,
)
from resmesh.protocols.mysql.wire import Reader
from tests.protocols.mysql.mysql_support import (
    BY_NAME,
    capabilities_of,
    compare_value,
    ids,
    of_kind,
    payload_of,
)

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
P41 = Capability.PROTOCOL_41
STATUS = {flag.name: flag for flag in ServerStatus}


def status_of(names: list[str]) -> ServerStatus:
    value = ServerStatus(0)
    for name in names:
        value |= STATUS[name]
    return value


# -- vectors -------------------------------------------------------------------------------

OKS = of_kind("ok")
ERRS = of_kind("err")
EOFS = of_kind("eof")
COLUMNS = of_kind("column_definition")


@pytest.mark.parametrize("vector", OKS, ids=ids(OKS))
def test_ok_vectors(vector: dict[str, Any]) -> None:
    payload = payload_of(vector)
    capabilities = capabilities_of(vector, P41)
    ok = decode_ok(payload, capabilities)
    want = vector["decoded"]
    assert ok.header == want["header"]
    assert (ok.affected_rows, ok.last_insert_id, ok.warnings) == (
        want["affected_rows"],
        want["last_insert_id"],
        want["warnings"],
    )
    assert ok.status == status_of(want["status"])
    assert ok.info.decode() == want["info"]
    if "session_state_hex" in want:
        assert ok.session_state is not None
        assert ok.session_state.hex() == want["session_state_hex"]
    assert encode_ok(ok, capabilities) == payload
    assert isinstance(decode_terminator(payload, capabilities), OkPacket)


def test_session_state_schema_change() -> None:
    ok = decode_ok(payload_of(BY_NAME["ok_login_session_track"]), P41 | Capability.SESSION_TRACK)
    assert ok.session_state is not None
    [(kind, data)] = decode_session_state(ok.session_state)
    assert kind == SessionTrack.SCHEMA
    assert Reader(data).lenenc_str() == b"test"


@pytest.mark.parametrize("vector", ERRS, ids=ids(ERRS))
def test_err_vectors(vector: dict[str, Any]) -> None:
    payload = payload_of(vector)
    err = decode_err(payload)
    want = vector["decoded"]
    assert (err.errno, err.sqlstate, err.message) == (
        want["errno"],
        want["sqlstate"],
        want["message"],
    )
    assert encode_err(err) == payload
    assert is_row_terminator(payload)


def test_gateway_errors_match_mariadb_words() -> None:
    denied = decode_err(payload_of(BY_NAME["err_access_denied_1045"]))
    from resmesh.protocols.mysql.errors import access_denied, unknown_command

    assert access_denied("codec_test", "127.0.0.1", using_password=True) == denied.info
    unknown = decode_err(payload_of(BY_NAME["err_unknown_command_1047"]))
    assert unknown_command() == unknown.info
    refusal = read_only()
    assert (refusal.errno, refusal.sqlstate) == (1290, "HY000")
    assert "--read-only" in refusal.message
    assert decode_err(encode_err(ErrPacket.from_info(refusal))).info == refusal


@pytest.mark.parametrize("vector", EOFS, ids=ids(EOFS))
def test_eof_vectors(vector: dict[str, Any]) -> None:
    payload = payload_of(vector)
    eof = decode_eof(payload)
    assert eof.warnings == vector["decoded"]["warnings"]
    assert eof.status == status_of(vector["decoded"]["status"])
    assert encode_eof(eof) == payload
    assert isinstance(decode_terminator(payload, P41), EofPacket)


@pytest.mark.parametrize("vector", COLUMNS, ids=ids(COLUMNS))
def test_column_definition_vectors(vector: dict[str, Any]) -> None:
    payload = payload_of(vector)
    capabilities = capabilities_of(vector, P41)
    column = decode_column_definition(payload, capabilities)
    want = vector["decoded"]
    for name in ("catalog", "schema", "table", "org_table", "name", "org_name", "charset"):
        assert getattr(column, name) == want[name], name
    assert (column.length, column.type, column.flags, column.decimals) == (
        want["length"],
        want["type"],
        want["flags"],
        want["decimals"],
    )
    if "extended_metadata_hex" in want:
        assert column.extended_metadata is not None
        assert column.extended_metadata.hex() == want["extended_metadata_hex"]
    if "default_value_hex" in want:
        assert column.default_value is not None
        assert column.default_value.hex() == want["default_value_hex"]
    assert encode_column_definition(column, capabilities) == payload


def test_column_flags_named() -> None:
    pk = decode_column_definition(payload_of(BY_NAME["column_definition_int_pk"]), P41)
    assert pk.flags & ColumnFlag.PRI_KEY and pk.flags & ColumnFlag.AUTO_INCREMENT
    assert pk.column_type is ColumnType.LONG
    big = decode_column_definition(payload_of(BY_NAME["column_definition_bigint_unsigned"]), P41)
    assert big.unsigned and big.column_type is ColumnType.LONGLONG


@pytest.mark.parametrize("vector", of_kind("column_count"), ids=ids(of_kind("column_count")))
def test_column_count_vectors(vector: dict[str, Any]) -> None:
    payload = payload_of(vector)
    capabilities = capabilities_of(vector, P41)
    count = decode_column_count(payload, capabilities)
    assert count == ColumnCount(vector["decoded"]["count"], vector["decoded"]["metadata_follows"])
    assert encode_column_count(count, capabilities) == payload


@pytest.mark.parametrize("vector", of_kind("text_row"), ids=ids(of_kind("text_row")))
def test_text_row_vectors(vector: dict[str, Any]) -> None:
    payload = payload_of(vector)
    values = decode_text_row(payload, vector["decoded"]["column_count"])
    want = vector["decoded"]["values"]
    for got, expected in zip(values, want, strict=True):
        if isinstance(expected, dict):
            assert got is not None and got.hex() == expected["hex"]
        else:
            assert (got if got is None else got.decode()) == expected
    assert encode_text_row(values) == payload
    assert not is_row_terminator(payload)
    with pytest.raises(MySQLRemoteError):
        decode_text_row(payload, len(want) + 1)


@pytest.mark.parametrize("vector", of_kind("binary_row"), ids=ids(of_kind("binary_row")))
def test_binary_row_vectors(vector: dict[str, Any]) -> None:
    payload = payload_of(vector)
    columns = [(t, bool(u)) for t, u in vector["decoded"]["columns"]]
    values = decode_binary_row(payload, columns)
    for got, want, (column_type, _) in zip(
        values, vector["decoded"]["values"], columns, strict=True
    ):
        if want is None:
            assert got is None
        else:
            assert compare_value(got, want, column_type), (got, want)
    assert encode_binary_row(columns, values) == payload


def test_binary_temporal_vectors_convert_to_python() -> None:
    columns = [(t, bool(u)) for t, u in BY_NAME["binary_row_1"]["decoded"]["columns"]]
    values = decode_binary_row(payload_of(BY_NAME["binary_row_1"]), columns)
    date, stamp, duration = values[-3:]
    assert isinstance(stamp, DateTimeValue) and isinstance(duration, TimeValue)
    assert stamp.to_python() == datetime.datetime(2024, 2, 29, 13, 14, 15, 123456)
    assert duration.to_timedelta() == -datetime.timedelta(hours=838, minutes=59, seconds=58.5)
    assert TimeValue.from_timedelta(duration.to_timedelta()) == duration
    assert (
        isinstance(date, DateTimeValue)
        and DateTimeValue.from_python(datetime.date(2024, 2, 29)) == date
    )
    assert DateTimeValue().to_python() is None  # 0000-00-00


EXECUTES = of_kind("stmt_execute")


@pytest.mark.parametrize("vector", EXECUTES, ids=ids(EXECUTES))
def test_stmt_execute_vectors(vector: dict[str, Any]) -> None:
    payload = payload_of(vector)
    want = vector["decoded"]
    execute = decode_stmt_execute(payload, want["param_count"])
    assert execute.statement_id == want["statement_id"]
    assert (execute.flags, execute.iteration_count) == (want["flags"], want["iteration_count"])
    assert execute.new_params_bound == want["new_params_bound"]
    assert [[p.type, p.flags] for p in execute.param_types] == want["param_types"]
    for got, expected, param in zip(
        execute.values, want["values"], execute.param_types, strict=True
    ):
        if expected is None:
            assert got is None
        else:
            assert got is not LONG_DATA
            assert compare_value(got, expected, param.type), (got, expected)
    assert encode_stmt_execute(execute) == payload
    # Without the types in the packet, the caller must supply the previous ones.
    rebound = StmtExecute(
        statement_id=execute.statement_id,
        values=execute.values,
        param_types=execute.param_types,
        new_params_bound=False,
    )
    again = encode_stmt_execute(rebound)
    with pytest.raises(MySQLRemoteError) as info:
        decode_stmt_execute(again, want["param_count"])
    assert info.value.error.errno == 1210
    assert (
        decode_stmt_execute(again, want["param_count"], previous_types=execute.param_types)
        == rebound
    )


def test_prepare_ok_vector() -> None:
    payload = payload_of(BY_NAME["prepare_ok"])
    prepare = decode_prepare_ok(payload)
    assert prepare == PrepareOk(**BY_NAME["prepare_ok"]["decoded"])
    assert encode_prepare_ok(prepare) == payload


def test_statement_command_vectors() -> None:
    fetch = decode_stmt_fetch(payload_of(BY_NAME["com_stmt_fetch"]))
    assert (fetch.statement_id, fetch.num_rows) == (
        BY_NAME["com_stmt_fetch"]["decoded"]["statement_id"],
        1,
    )
    statement_id = BY_NAME["com_stmt_reset"]["decoded"]["statement_id"]
    assert decode_stmt_reset(payload_of(BY_NAME["com_stmt_reset"])).statement_id == statement_id
    assert decode_stmt_close(payload_of(BY_NAME["com_stmt_close"])).statement_id == statement_id
    long_data = decode_stmt_send_long_data(payload_of(BY_NAME["com_stmt_send_long_data"]))
    assert (long_data.param_id, long_data.data) == (0, b"long ")


def test_long_data_params_are_left_out_of_execute() -> None:
    execute = StmtExecute(
        statement_id=3,
        values=(LONG_DATA, 7, None),
        param_types=(ParamType(ColumnType.BLOB), ParamType(ColumnType.LONG), ParamType(6)),
    )
    payload = encode_stmt_execute(execute)
    assert decode_stmt_execute(payload, 3, long_data={0}) == execute


def test_text_command_vectors() -> None:
    assert command_of(payload_of(BY_NAME["com_query_select_1"])) is Command.QUERY
    assert decode_query(payload_of(BY_NAME["com_query_select_1"])).sql == b"SELECT 1"
    assert decode_init_db(payload_of(BY_NAME["com_init_db"])) == InitDb("test")
    field_list = payload_of(BY_NAME["com_field_list"])
    assert decode_field_list(field_list) == FieldList("codec_kv")
    assert encode_field_list(FieldList("codec_kv")) == field_list
    set_option = payload_of(BY_NAME["com_set_option_off"])
    assert decode_set_option(set_option) == SetOption(1)
    assert encode_set_option(SetOption(1)) == set_option
    vector = BY_NAME["com_change_user"]
    capabilities = capabilities_of(vector, P41)
    change = decode_change_user(payload_of(vector), capabilities)
    want = vector["decoded"]
    assert (change.username, change.database, change.charset, change.auth_plugin_name) == (
        want["username"],
        want["database"],
        want["charset"],
        want["auth_plugin_name"],
    )
    assert len(change.auth_response) == 20
    assert encode_change_user(change, capabilities) == payload_of(vector)
    assert command_of(b"\xee") == 0xEE
    assert command_of(b"") is None


def test_local_infile_request_vector() -> None:
    payload = payload_of(BY_NAME["local_infile_request"])
    request = decode_local_infile_request(payload)
    assert request.filename.decode() == BY_NAME["local_infile_request"]["decoded"]["filename"]
    assert encode_local_infile_request(request) == payload


# -- round trips ----------------------------------------------------------------------------

_u64 = st.integers(0, 2**64 - 1)
_session_caps = st.sampled_from(
    [P41, P41 | Capability.SESSION_TRACK, Capability.TRANSACTIONS, Capability(0)]
)


@given(
    _u64,
    _u64,
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFF),
    st.binary(max_size=300),
    st.one_of(st.none(), st.binary(max_size=40)),
    st.sampled_from([0x00, 0xFE]),
    _session_caps,
)
@FAST
def test_ok_round_trip(
    affected: int,
    insert_id: int,
    status: int,
    warnings: int,
    info: bytes,
    state: bytes | None,
    header: int,
    capabilities: Capability,
) -> None:
    if not capabilities & Capability.SESSION_TRACK or state is None:
        status &= ~ServerStatus.SESSION_STATE_CHANGED
        state = None
    else:
        status |= ServerStatus.SESSION_STATE_CHANGED
    if not capabilities & (P41 | Capability.TRANSACTIONS):
        status = 0
    if not capabilities & P41:
        warnings = 0
    ok = OkPacket(
        affected_rows=affected,
        last_insert_id=insert_id,
        status=ServerStatus(status),
        warnings=warnings,
        info=info,
        session_state=state,
        header=header,
    )
    assert decode_ok(encode_ok(ok, capabilities), capabilities) == ok


@given(
    st.integers(0, 0xFFFE),
    st.text(alphabet="0123456789ABCDEFHSZ", min_size=5, max_size=5),
    st.text(),
)
@FAST
def test_err_round_trip(errno: int, sqlstate: str, message: str) -> None:
    err = ErrPacket(errno, sqlstate, message)
    message_bytes = message.encode("utf-8", "surrogateescape")
    assert decode_err(encode_err(err)) == ErrPacket(
        errno, sqlstate, message_bytes.decode("utf-8", "surrogateescape")
    )
    old = ErrPacket(errno, None, "x" + message)
    assert decode_err(encode_err(old, Capability(0))).sqlstate is None


@given(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF))
@FAST
def test_eof_round_trip(warnings: int, status: int) -> None:
    eof = EofPacket(warnings, ServerStatus(status))
    payload = encode_eof(eof)
    assert len(payload) == 5 and is_row_terminator(payload)
    assert decode_eof(payload) == eof


@given(st.integers(1, 100), st.integers(0, 255), st.integers(0, 0xFFFFFF), st.integers(0, 255))
@FAST
def test_progress_round_trip(stage: int, max_stage: int, progress: int, size: int) -> None:
    report = ProgressReport(
        stage=stage % 256, max_stage=max_stage, progress=progress, info=b"x" * size
    )
    assert decode_progress_report(encode_progress_report(report)) == report


_idents = st.text(max_size=20)


@given(
    _idents,
    _idents,
    _idents,
    st.integers(0, 0xFFFF),
    st.integers(0, 2**32 - 1),
    st.integers(0, 255),
    st.integers(0, 0xFFFF),
    st.integers(0, 255),
    st.one_of(st.none(), st.binary(max_size=10)),
    st.booleans(),
    st.one_of(st.none(), st.binary(max_size=10)),
)
@FAST
def test_column_definition_round_trip(
    name: str,
    table: str,
    schema: str,
    charset: int,
    length: int,
    column_type: int,
    flags: int,
    decimals: int,
    extended: bytes | None,
    with_extended: bool,
    default: bytes | None,
) -> None:
    capabilities = P41 | (Capability.MARIADB_EXTENDED_METADATA if with_extended else 0)
    column = ColumnDefinition(
        name=name,
        table=table,
        schema=schema,
        org_table=table,
        org_name=name,
        charset=charset,
        length=length,
        type=column_type,
        flags=ColumnFlag(flags),
        decimals=decimals,
        extended_metadata=(extended or b"") if with_extended else None,
        default_value=default,
    )
    assert (
        decode_column_definition(encode_column_definition(column, capabilities), capabilities)
        == column
    )


@given(st.lists(st.one_of(st.none(), st.binary(max_size=300)), min_size=1, max_size=8))
@FAST
def test_text_row_round_trip(values: list[bytes | None]) -> None:
    payload = encode_text_row(values)
    assert decode_text_row(payload, len(values)) == tuple(values)


_INT_RANGES = {
    ColumnType.TINY: 8,
    ColumnType.SHORT: 16,
    ColumnType.YEAR: 16,
    ColumnType.LONG: 32,
    ColumnType.INT24: 32,
    ColumnType.LONGLONG: 64,
}
_datetimes = st.builds(
    DateTimeValue,
    st.integers(0, 9999),
    st.integers(0, 12),
    st.integers(0, 31),
    st.integers(0, 23),
    st.integers(0, 59),
    st.integers(0, 59),
    st.integers(0, 999999),
)
_times = st.builds(
    TimeValue,
    st.booleans(),
    st.integers(0, 34),
    st.integers(0, 23),
    st.integers(0, 59),
    st.integers(0, 59),
    st.integers(0, 999999),
)


@st.composite
def typed_values(draw: st.DrawFn) -> tuple[int, bool, BinaryValue]:
    """A column type, its signedness and a value of it, for every type of the binary protocol."""
    column_type = draw(st.sampled_from([t for t in ColumnType if t != ColumnType.NULL] + [0x20]))
    unsigned = draw(st.booleans())
    bits = _INT_RANGES.get(column_type)
    value: BinaryValue
    if bits is not None:
        low, high = (0, 2**bits - 1) if unsigned else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
        value = draw(st.integers(low, high))
    elif column_type == ColumnType.DOUBLE:
        value = draw(st.floats(allow_nan=False))
    elif column_type == ColumnType.FLOAT:
        value = draw(st.floats(width=32, allow_nan=False))
    elif column_type in (
        ColumnType.DATE,
        ColumnType.DATETIME,
        ColumnType.TIMESTAMP,
        ColumnType.NEWDATE,
    ):
        value = draw(_datetimes)
    elif column_type == ColumnType.TIME:
        value = draw(_times)
    else:
        value = draw(st.binary(max_size=300))
    return column_type, unsigned, value


@given(typed_values())
@FAST
def test_binary_value_round_trip(typed: tuple[int, bool, BinaryValue]) -> None:
    column_type, unsigned, value = typed
    encoded = encode_binary_value(column_type, value, unsigned)
    reader = Reader(encoded + b"tail")
    decoded = decode_binary_value(reader, column_type, unsigned)
    assert reader.rest() == b"tail"
    if isinstance(value, float):
        assert isinstance(decoded, float)
        assert decoded == value or (math.isinf(value) and decoded == value)
    else:
        assert decoded == value


@given(st.lists(st.one_of(st.just(None), typed_values()), min_size=1, max_size=20))
@FAST
def test_binary_row_round_trip(cells: list[tuple[int, bool, BinaryValue] | None]) -> None:
    columns = [(cell[0], cell[1]) if cell else (ColumnType.LONG, False) for cell in cells]
    values = [cell[2] if cell else None for cell in cells]
    assert decode_binary_row(encode_binary_row(columns, values), columns) == tuple(values)


@given(
    st.lists(st.one_of(st.just(None), typed_values()), max_size=12),
    st.integers(0, 2**32 - 1),
    st.booleans(),
)
@FAST
def test_stmt_execute_round_trip(
    cells: list[tuple[int, bool, BinaryValue] | None], statement_id: int, attributes: bool
) -> None:
    types = tuple(ParamType(c[0], 0x80 if c[1] else 0) if c else ParamType(6) for c in cells)
    values = tuple(c[2] if c else None for c in cells)
    capabilities = Capability.QUERY_ATTRIBUTES if attributes else Capability(0)
    names = tuple(f"p{i}".encode() for i in range(len(cells))) if attributes and cells else None
    execute = StmtExecute(
        statement_id=statement_id,
        values=values,
        param_types=types if cells else (),
        param_names=names,
    )
    payload = encode_stmt_execute(execute, capabilities)
    assert decode_stmt_execute(payload, len(cells), capabilities=capabilities) == execute


def test_shortest_temporal_forms() -> None:
    """Servers pick the shortest length (vectors: DATETIME '2000-01-01 00:00:00' is 4 bytes)."""
    assert encode_binary_value(ColumnType.DATETIME, DateTimeValue()) == b"\x00"
    assert encode_binary_value(ColumnType.DATETIME, DateTimeValue(2000, 1, 1)).hex() == "04d0070101"
    assert len(encode_binary_value(ColumnType.DATETIME, DateTimeValue(2000, 1, 1, 1))) == 8
    assert encode_binary_value(ColumnType.TIME, TimeValue()) == b"\x00"
    assert len(encode_binary_value(ColumnType.TIME, TimeValue(True))) == 9
    for bad in (b"\x05\x00\x00\x00\x00\x00", b"\x04\x00"):
        with pytest.raises(MySQLRemoteError):
            decode_binary_value(Reader(bad), ColumnType.DATE)
    with pytest.raises(MySQLLocalError):
        encode_binary_value(ColumnType.TINY, 300)
    with pytest.raises(MySQLLocalError):
        encode_binary_value(ColumnType.LONG, b"x")


@given(
    st.lists(
        st.tuples(st.binary(max_size=8), st.integers(0, 255), st.integers(0, 255)), max_size=3
    ),
    st.binary(max_size=30),
)
@FAST
def test_query_round_trip(raw: list[tuple[bytes, int, int]], sql: bytes) -> None:
    attributes = tuple(
        QueryAttribute(name, ParamType(ColumnType.LONGLONG, 0x80), value) for name, value, _ in raw
    )
    query = Query(sql, attributes)
    capabilities = Capability.QUERY_ATTRIBUTES
    assert decode_query(encode_query(query, capabilities), capabilities) == query
    assert decode_query(encode_query(Query(sql))) == Query(sql)
    assert decode_init_db(encode_init_db(InitDb("d"))) == InitDb("d")


@given(
    st.text(max_size=10).filter(lambda t: "\x00" not in t),
    st.binary(max_size=40),
    st.text(max_size=10).filter(lambda t: "\x00" not in t),
)
@FAST
def test_change_user_round_trip(user: str, auth: bytes, database: str) -> None:
    capabilities = (
        P41 | Capability.SECURE_CONNECTION | Capability.PLUGIN_AUTH | Capability.CONNECT_ATTRS
    )
    change = ChangeUser(
        username=user,
        auth_response=auth,
        database=database,
        charset=45,
        auth_plugin_name="mysql_native_password",
        connect_attributes=(("a", "b"),),
    )
    assert decode_change_user(encode_change_user(change, capabilities), capabilities) == change
