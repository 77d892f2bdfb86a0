"""The MySQL cluster's configuration (``clusters.X.mysql``, its operation names, the checks a
MySQL cluster has) and how a query's verbs are read for governance."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from resmesh.call import Protocol
from resmesh.config import ConfigError, parse_config
from resmesh.config.mysql import MySQLSettings
from resmesh.net.mysql.sql import request_id_of, statement_verbs

SOURCE = Path("gateway.yaml")


def mysql(**cluster: Any) -> dict[str, Any]:
    return {
        "clusters": {
            "db": {
                "protocol": "mysql",
                "listen": "127.0.0.1:3307",
                "groups": {"a": ["127.0.0.1:3306"]},
                "backend": {"username": "gw", "password": "secret"},
                **cluster,
            }
        },
        "users": {"app": {"password": "pw", "clusters": ["db"]}},
    }


def error_for(data: object) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(data, SOURCE)
    return info.value


def test_a_mysql_cluster_and_its_section() -> None:
    config = parse_config(mysql(mysql={"max_allowed_packet": "32MiB"}), SOURCE)
    cluster = config.clusters["db"]
    assert cluster.protocol is Protocol.MYSQL
    assert cluster.mysql == MySQLSettings(max_allowed_packet=32 << 20)
    assert cluster.backend.username == "gw"
    assert config.users["app"].clusters == frozenset({"db"})
    assert parse_config(mysql(), SOURCE).clusters["db"].mysql == MySQLSettings()


def test_operations_are_sql_verbs_or_command_names() -> None:
    operations = {"select": {"limit": {"rate": 10}}, "COM_PING": {"limit": {"rate": 5}}}
    config = parse_config(mysql(governance={"operations": operations}), SOURCE)
    assert set(config.clusters["db"].governance.operations) == {"SELECT", "COM_PING"}
    found = error_for(mysql(governance={"operations": {"SELCT": {"limit": {"rate": 1}}}}))
    assert found.key == "clusters.db.governance.operations.SELCT"
    assert "'SELCT' is not an SQL verb nor a MySQL command" in found.problem
    assert found.fix == "did you mean 'SELECT'?"


def test_idempotent_true_is_for_reads_only() -> None:
    found = error_for(mysql(governance={"operations": {"INSERT": {"idempotent": True}}}))
    assert found.key == "clusters.db.governance.operations.INSERT.idempotent"
    assert "INSERT may change data" in found.problem


def test_a_mysql_cluster_needs_a_backend_login_and_cannot_be_sharded() -> None:
    found = error_for(mysql(backend={}))
    assert found.key == "clusters.db.backend.username"
    found = error_for(mysql(mode="sharded"))
    assert found.key == "clusters.db.mode"
    assert "a MySQL cluster cannot be sharded" in found.problem


@pytest.mark.parametrize(
    ("sql", "verbs"),
    [
        (b"SELECT 1", ["SELECT"]),
        (b"  select 1", ["SELECT"]),
        (b"-- note\nUPDATE t SET a = 1", ["UPDATE"]),
        (b"# note\nDELETE FROM t", ["DELETE"]),
        (b"/* x; y */ INSERT INTO t VALUES (1)", ["INSERT"]),
        (b"/*!40101 SET NAMES utf8 */", ["SET"]),
        (b"(SELECT 1) UNION (SELECT 2)", ["SELECT"]),
        (b"SELECT ';' ; DELETE FROM t", ["SELECT", "DELETE"]),
        (b"SELECT \"a;b\", `c;d`; SELECT 'it''s;'", ["SELECT", "SELECT"]),
        (b"SELECT 'a\\';'; DROP TABLE t", ["SELECT", "DROP"]),
        (b";; ;", []),
        (b"", []),
        (b"SET STATEMENT max_statement_time=1 FOR UPDATE t SET v = 1", ["UPDATE"]),
        (b"set statement x=1 for select 1; SET NAMES utf8", ["SELECT", "SET"]),
        (b"SET STATEMENT x=1", [""]),
        (b"SET statements = 1", ["SET"]),
    ],
)
def test_statement_verbs(sql: bytes, verbs: list[str]) -> None:
    assert statement_verbs(sql) == (verbs, False)


def test_a_huge_multi_statement_query_is_bounded() -> None:
    verbs, more = statement_verbs(b"SELECT 1;" * 100 + b"DELETE FROM t")
    assert len(verbs) == 64 and more
    assert statement_verbs(b"SELECT 1;" * 64) == (["SELECT"] * 64, False)


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        (b"/* rid=order-7 */ SELECT 1", "order-7"),
        (b"SELECT 1 /*traceparent='00-ab',request_id='q.9:1'*/", "q.9:1"),
        (b"/* hello */ SELECT /* rid=z */ 2", "z"),
        (b"SELECT 'rid=not-a-comment'", None),
        (b"SELECT 1", None),
        (b"/* rid= */ SELECT 1", None),
    ],
)
def test_a_request_id_is_read_from_a_comment_only(sql: bytes, expected: str | None) -> None:
    assert request_id_of(sql) == expected
