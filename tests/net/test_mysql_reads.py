"""Which MySQL reads may run on another node, and what that node must repeat of the session
(resmesh/net/mysql/reads.py)."""

from __future__ import annotations

import pytest

from resmesh.net.mysql.reads import MAX_SETTINGS, SessionSettings, reads_anywhere
from resmesh.net.mysql.sql import leads_to_write, statement_verbs


def _anywhere(sql: bytes) -> bool:
    return reads_anywhere(sql, statement_verbs(sql)[0])


@pytest.mark.parametrize(
    "sql",
    [
        b"SELECT * FROM t WHERE id = 1",
        b"select v, @@server_id from t",
        b"/* rid=a-1 */ SELECT 1",
        b"WITH x AS (SELECT 1) SELECT * FROM x",
        b"SELECT 1; SELECT 2",
        b"DESCRIBE t",
        b"EXPLAIN SELECT * FROM t",
    ],
)
def test_plain_reads_may_run_anywhere(sql: bytes) -> None:
    assert _anywhere(sql)


@pytest.mark.parametrize(
    "sql",
    [
        b"SELECT * FROM t WHERE id = 1 FOR UPDATE",
        b"SELECT * FROM t LOCK IN SHARE MODE",
        b"SELECT * FROM t FOR SHARE",
        b"SELECT GET_LOCK('a', 1)",
        b"SELECT IS_USED_LOCK('a')",
        b"SELECT LAST_INSERT_ID()",
        b"SELECT FOUND_ROWS()",
        b"SELECT SQL_CALC_FOUND_ROWS * FROM t",
        b"SELECT ROW_COUNT()",
        b"SELECT @@warning_count",
        b"SELECT CONNECTION_ID()",
        b"SELECT NEXTVAL(s)",
        b"SELECT NEXT VALUE FOR s",
        b"SELECT @x",
        b"SELECT 1 INTO @x",
        b"SELECT * FROM t INTO OUTFILE '/tmp/x'",
        b"SELECT 1; INSERT INTO t VALUES (1)",
        b"SHOW WARNINGS",
        b"SET NAMES utf8mb4",
        b"BEGIN",
        b"INSERT INTO t VALUES (1)",
        b"",
    ],
)
def test_reads_of_the_session_s_own_state_stay_home(sql: bytes) -> None:
    assert not _anywhere(sql)


def _ran(settings: SessionSettings, *queries: bytes) -> SessionSettings:
    for sql in queries:
        settings.ran(sql, statement_verbs(sql)[0])
    return settings


def test_set_statements_are_kept_in_order_but_not_autocommit() -> None:
    settings = _ran(
        SessionSettings(),
        b"SET NAMES utf8mb4",
        b"SET AUTOCOMMIT = 0",
        b"SET @@session.autocommit = ON",
        b"set time_zone = '+00:00'",
        b"SET @x = 1",
    )
    assert settings.statements == (b"SET NAMES utf8mb4", b"set time_zone = '+00:00'")
    assert settings.home_only is None


def test_use_selects_the_database() -> None:
    assert _ran(SessionSettings(), b"USE shop").database == "shop"
    assert _ran(SessionSettings(), b"use `my db`;").database == "my db"
    odd = _ran(SessionSettings(), b"USE /* x */ shop")
    assert odd.home_only is not None


@pytest.mark.parametrize(
    "sql",
    [
        b"CREATE TEMPORARY TABLE t (a INT)",
        b"LOCK TABLES t READ",
        b"SET NAMES utf8mb4; SELECT 1",
        b"SET @x = 1, NAMES utf8mb4",
        b"SET autocommit = 0, NAMES utf8mb4",
    ],
)
def test_state_that_cannot_be_repeated_keeps_reads_home_until_a_reset(sql: bytes) -> None:
    settings = _ran(SessionSettings(), sql)
    assert settings.home_only is not None
    settings.reset("shop")
    assert (settings.home_only, settings.statements, settings.database) == (None, (), "shop")


def test_a_repeated_set_is_kept_once_and_too_many_keep_reads_home() -> None:
    settings = _ran(SessionSettings(), *(b"SET sql_mode = ''" for _ in range(MAX_SETTINGS + 1)))
    assert settings.statements == (b"SET sql_mode = ''",)
    _ran(settings, *(b"SET max_error_count = %d" % i for i in range(MAX_SETTINGS - 1)))
    assert settings.home_only is None
    _ran(settings, b"SET max_error_count = 0")  # a repeat: nothing new
    assert settings.home_only is None
    _ran(settings, b"SET max_error_count = 99")
    assert settings.home_only is not None


@pytest.mark.parametrize(
    "sql",
    [
        b"SET GLOBAL max_connections = 10",
        b"SET @@global.max_connections = 10",
        b"SET PASSWORD = PASSWORD('x')",
        b"SET TRANSACTION ISOLATION LEVEL READ COMMITTED",
        b"SET STATEMENT max_statement_time = 1 FOR UPDATE t SET v = 1",
        b"SET @x = 'a@b'",
    ],
)
def test_sets_that_leave_the_session_s_variables_are_neither_kept_nor_pinning(
    sql: bytes,
) -> None:
    settings = _ran(SessionSettings(), sql)
    assert (settings.statements, settings.home_only) == ((), None)


@pytest.mark.parametrize(
    "sql",
    [
        b"SET time_zone = @tz",
        b"SET NAMES @saved_cs_client",
        b"SET ROLE admin",
        b"CALL refresh()",
        b"PREPARE s FROM 'SET @x = 1'",
    ],
)
def test_state_the_gateway_cannot_see_or_repeat_keeps_reads_home(sql: bytes) -> None:
    assert _ran(SessionSettings(), sql).home_only is not None


def test_session_transaction_settings_and_names_are_repeated() -> None:
    sets = (b"SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED", b"SET CHARACTER SET utf8")
    assert _ran(SessionSettings(), *sets).statements == sets


def test_an_at_sign_in_a_string_is_not_a_user_variable() -> None:
    assert _anywhere(b"SELECT id FROM users WHERE email = 'a@example.com'")
    settings = SessionSettings()
    settings.ran_at_home(b"UPDATE users SET email = 'a@example.com' WHERE id = 1")
    assert settings.unmovable is None


@pytest.mark.parametrize(
    ("sql", "unmovable"),
    [
        (b"SET @x = 1", True),
        (b"select get_lock('a', 1)", True),
        (b"SELECT last_insert_id(5)", True),
        (b"SELECT LAST_INSERT_ID()", False),
        (b"SELECT @@time_zone", False),
        (b"INSERT INTO t VALUES (1)", False),
    ],
)
def test_state_that_no_other_connection_can_have_is_noted(sql: bytes, unmovable: bool) -> None:
    settings = SessionSettings()
    settings.ran_at_home(sql)
    assert (settings.unmovable is not None) is unmovable


def test_a_repeated_set_moves_to_the_end_so_the_latest_value_is_replayed_last() -> None:
    settings = _ran(
        SessionSettings(),
        b"SET SQL_SELECT_LIMIT=100",
        b"SET SQL_SELECT_LIMIT=DEFAULT",
        b"SET SQL_SELECT_LIMIT=100",
    )
    assert settings.statements == (b"SET SQL_SELECT_LIMIT=DEFAULT", b"SET SQL_SELECT_LIMIT=100")


def test_set_transaction_keeps_the_next_read_home() -> None:
    settings = _ran(SessionSettings(), b"SET TRANSACTION READ ONLY")
    assert settings.next_transaction and settings.statements == ()


@pytest.mark.parametrize(
    "sql",
    [
        b"SET GLOBAL max_connections=500, SESSION sql_mode='ANSI_QUOTES'",
        b"SET sql_mode='', GLOBAL read_only=OFF",
    ],
)
def test_a_set_of_global_and_session_variables_together_keeps_reads_home(sql: bytes) -> None:
    settings = _ran(SessionSettings(), sql)
    assert (settings.statements, settings.home_only is not None) == ((), True)


def test_without_backslash_escapes_a_backslash_ends_nothing() -> None:
    sql = b"SELECT name FROM t WHERE dir = 'C:\\' AND owner = @uid OR name = 'x'"
    assert reads_anywhere(sql, ["SELECT"])  # read with escapes: one literal hides the @
    assert not reads_anywhere(sql, ["SELECT"], backslash_escapes=False)
    verbs, _ = statement_verbs(b"SELECT 'C:\\'; DELETE FROM t; SELECT '", backslash_escapes=False)
    assert verbs == ["SELECT", "DELETE", "SELECT"]


def test_explain_analyze_of_a_write_is_a_write() -> None:
    assert leads_to_write(["EXPLAIN"], b"EXPLAIN ANALYZE UPDATE t SET a = 1")
    assert leads_to_write(["WITH"], b"WITH c AS (SELECT 1) DELETE t FROM t JOIN c")
    assert not leads_to_write(["EXPLAIN"], b"EXPLAIN SELECT * FROM t")
    assert not leads_to_write(["SELECT"], b"SELECT 'UPDATE'")


def test_a_for_inside_a_set_statement_value_is_not_its_statement() -> None:
    sql = b"SET STATEMENT sql_mode='for select' FOR DELETE FROM t"
    assert statement_verbs(sql) == (["DELETE"], False)
