"""Tests for the ``resmesh`` command line, run the way a user runs it: as a separate process.

Only the bad-config path of ``run`` is exercised here; serving is the integration tests' job.
The tests that start ``resmesh run`` (a gateway process, even one that exits at once) are
marked ``integration``; ``check``, ``--version`` and ``--help`` stay in the fast tier.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from resmesh import __version__
from resmesh.cli import KeyValueFormatter, main, summarize
from resmesh.config import load_config

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "examples" / "quickstart.yaml"


def resmesh(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "resmesh", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def bad_config(tmp_path: Path) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "clusters:\n"
        "  feed-cache:\n"
        "    protocol: redis\n"
        "    listen: nonsense\n"
        "    groups: {dc-a: [127.0.0.1:6379]}\n",
        encoding="utf-8",
    )
    return path


def test_version() -> None:
    result = resmesh("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"resmesh {__version__}" == "resmesh 0.1.0"


def test_help_explains_itself() -> None:
    result = resmesh("--help")
    assert result.returncode == 0
    for word in ("gateway", "run", "check", "ctl", "examples:", "resmesh run -c"):
        assert word in result.stdout


def test_check_ok_prints_a_summary() -> None:
    result = resmesh("check", "-c", str(QUICKSTART))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    out = result.stdout
    assert f"{QUICKSTART}: ok" in out
    assert "cluster feed-cache: redis, listen 127.0.0.1:6380, replicated" in out
    assert "groups dc-a (1 node)" in out
    assert "route dc-a=100" in out


def test_check_bad_config_is_one_line_on_stderr(tmp_path: Path) -> None:
    path = bad_config(tmp_path)
    result = resmesh("check", "-c", str(path))
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"{path}:4: clusters.feed-cache.listen: expected host:port")
    assert "— fix: " in lines[0]


def test_check_requires_a_file() -> None:
    result = resmesh("check")
    assert result.returncode == 2
    assert "-c" in result.stderr


@pytest.mark.integration
def test_run_with_bad_config_exits_2(tmp_path: Path) -> None:
    path = bad_config(tmp_path)
    result = resmesh("run", "-c", str(path))
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1
    assert "clusters.feed-cache.listen" in lines[0]


@pytest.mark.integration
def test_run_without_default_config_says_so(tmp_path: Path) -> None:
    result = resmesh("run", cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("examples/quickstart.yaml: default config file not found")
    assert "pass -c FILE" in lines[0]


def test_ctl_explains_its_commands() -> None:
    result = resmesh("ctl", "--help")
    assert result.returncode == 0
    for command in ("status", "degrade", "restore", "shift", "node", "primary"):
        assert command in result.stdout
    assert resmesh("ctl").returncode == 2  # a command is required


def test_ctl_names_the_valid_clusters_and_writes_nothing() -> None:
    result = resmesh("ctl", "degrade", "no-such-cluster")
    assert result.returncode == 2
    assert "clusters: feed-cache, user-db, echo" in result.stderr
    assert (
        not (ROOT / "examples" / "registry.yaml").exists()
        or "no-such" not in (ROOT / "examples" / "registry.yaml").read_text()
    )


def test_ctl_says_when_the_registry_is_unreachable(tmp_path: Path) -> None:
    config = tmp_path / "fleet.yaml"
    config.write_text(
        "registry: {kind: etcd, endpoints: ['http://127.0.0.1:9'], timeout: 1s}\n"
        "clusters:\n"
        "  c: {protocol: redis, listen: '127.0.0.1:0', groups: {dc-a: ['127.0.0.1:1']}}\n"
    )
    result = resmesh("ctl", "-c", str(config), "degrade", "c")
    assert result.returncode == 1
    assert "registry unavailable" in result.stderr and "127.0.0.1:9" in result.stderr


# In-process: fast, and covers main()'s return-code contract.


def test_main_returns_codes_instead_of_exiting(capsys: pytest.CaptureFixture[str]) -> None:
    """None of these reach logging setup, so global logging state is left alone."""
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == "resmesh 0.1.0"
    assert main(["--log-level", "loud", "check", "-c", str(QUICKSTART)]) == 2
    assert main([]) == 2


def test_log_level_works_after_the_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    try:
        assert main(["check", "-c", str(QUICKSTART), "--log-level", "DEBUG"]) == 0
        assert logging.getLogger().level == logging.DEBUG
        assert main(["--log-level", "warning", "check", "-c", str(QUICKSTART)]) == 0
        assert logging.getLogger().level == logging.WARNING
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
    assert "feed-cache" in capsys.readouterr().out


def test_summary_lists_users(tmp_path: Path) -> None:
    config = load_config(QUICKSTART)
    assert summarize(config)[-1] == "user app: clusters user-db"
    path = tmp_path / "open.yaml"
    path.write_text("clusters:\n  c: {protocol: redis, listen: 127.0.0.1:1, groups: {a: [h:1]}}\n")
    assert summarize(load_config(path))[-1] == "users: none (clients connect without AUTH)"


def test_log_format_is_one_key_value_line() -> None:
    record = logging.LogRecord("resmesh.net", logging.INFO, __file__, 1, "listening", None, None)
    record.__dict__.update(cluster="feed-cache", listen="127.0.0.1:6380", note="two words")
    line = KeyValueFormatter().format(record)
    stamp, level, logger, rest = line.split(" ", 3)
    assert stamp.endswith("Z") and "T" in stamp
    assert (level, logger) == ("info", "resmesh.net")
    assert rest == 'listening cluster=feed-cache listen=127.0.0.1:6380 note="two words"'


@pytest.mark.integration
def test_run_on_a_taken_port_names_the_cluster_the_address_and_a_fix(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        path = tmp_path / "taken.yaml"
        path.write_text(
            f"clusters:\n  feed-cache: {{protocol: redis, listen: 127.0.0.1:{port}, "
            "groups: {a: [127.0.0.1:6379]}}\n"
        )
        ran = resmesh("run", "-c", str(path))
    assert ran.returncode == 1
    assert f"cluster feed-cache cannot listen on 127.0.0.1:{port}" in ran.stderr, ran.stderr
    assert "change clusters.feed-cache.listen" in ran.stderr


def test_port_zero_with_several_workers_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "zero.yaml"
    path.write_text(
        "gateway: {workers: 2}\nclusters:\n  c: {protocol: redis, listen: 127.0.0.1:0, "
        "groups: {a: [127.0.0.1:6379]}}\n"
    )
    ran = resmesh("check", "-c", str(path))
    assert ran.returncode == 2
    assert "clusters.c.listen" in ran.stderr and "each worker" in ran.stderr
