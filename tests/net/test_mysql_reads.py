"""Which MySQL reads may run on another node, and what that node must repeat of the session
(resmesh/net/mysql/reads.py)."""

from __future__ import annotations

import pytest

from resmesh.net.mysql.reads import MAX_SETTINGS, SessionSettings, reads_anywhere
from resmesh.net.mysql.sql import statement_verbs


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


def test_too_many_settings_keep_reads_home() -> None:
    settings = _ran(SessionSettings(), *(b"SET sql_mode = ''" for _ in range(MAX_SETTINGS)))
    assert settings.home_only is None
    _ran(settings, b"SET sql_mode = ''")
    assert settings.home_only is not None


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
