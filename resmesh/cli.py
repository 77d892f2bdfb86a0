"""The ``resmesh`` command: ``run``, ``check``, ``ctl`` and ``--version``.

Why the CLI stays thin: it parses arguments, sets up logging, loads the config and hands over.
Everything it prints is either the answer the user asked for (``check``'s summary, the version)
or one line saying what is wrong and how to fix it, so scripts can rely on exit codes:
0 success, 2 bad usage or bad config (argparse's convention), anything else from the server.
Heavy imports (Trio, the server) happen inside ``run`` so ``check`` and ``--help`` stay fast.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import sys
from pathlib import Path
from typing import Final

from resmesh import __version__
from resmesh.config import Config, ConfigError, load_config
from resmesh.policies.switch import SwitchMode

__all__ = ["KeyValueFormatter", "build_parser", "configure_logging", "main", "summarize"]

DEFAULT_CONFIG: Final = Path("examples/quickstart.yaml")
LOG_LEVELS: Final = ("debug", "info", "warning", "error", "critical")
EXIT_USAGE: Final = 2
"""Bad arguments or a bad config: argparse's own exit code, so both mean "fix your input"."""

_log = logging.getLogger("resmesh.cli")

_DESCRIPTION: Final = """\
resmesh is a gateway for Redis, MySQL and Motan2 RPC that runs beside your application.
Apps point their usual clients at it on localhost; every command and every call
passes through one governance pipeline (limits, circuit breakers, data-center routing,
failover, backup requests, degrade switches) before it reaches the real servers. For Motan2 it
is the mesh agent on both sides: apps call services through its client side, and remote
agents reach this host's services through its server side.
"""

_EPILOG: Final = """\
examples:
  resmesh check -c examples/quickstart.yaml   # validate a config and show what it defines
  resmesh run -c examples/quickstart.yaml     # serve it (Redis on 127.0.0.1:6380, the
                                              # Motan2 agent on 9981 and 9982)
  redis-cli -p 6380 PING                      # then talk to Redis through the gateway
  python examples/motan2_echo.py              # the demo service the quickstart routes
  resmesh ctl status                          # every cluster, node and breaker at a glance
  resmesh ctl degrade feed-cache --mode miss  # every gateway answers misses within a second
"""

_CTL_EPILOG: Final = """\
examples:
  resmesh ctl status [--json]
  resmesh ctl top                                     # live calls/s, errors, p99 per operation
  resmesh ctl degrade feed-cache --mode miss          # or --op GET; restore undoes it
  resmesh ctl degrade echo --mode fallback --value n/a
  resmesh ctl restore feed-cache
  resmesh ctl limit feed-cache --rate 5000 --concurrency 200   # --op KEYS; --reset
  resmesh ctl shift feed-cache dc-a=0 dc-b=100
  resmesh ctl node add feed-cache 10.0.0.7:6379 --group dc-b
  resmesh ctl node disable feed-cache 10.0.0.7:6379
  resmesh ctl primary feed-cache 10.0.0.8:6379
"""

# Attributes every LogRecord has; anything else came from ``extra=`` and is printed as key=value.
_STANDARD_RECORD_KEYS: Final = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime"}
)


class KeyValueFormatter(logging.Formatter):
    """One line per record: ``ts level logger msg key=value ...``.

    Why this shape: it greps well, it reads well, and log shippers parse ``key=value`` without
    configuration. Fields come from ``logger.info("msg", extra={"cluster": "feed-cache"})``.
    Timestamps are UTC ISO 8601 with milliseconds so lines from several hosts sort together.
    """

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.datetime.fromtimestamp(record.created, tz=datetime.UTC)
        parts = [
            stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z",
            record.levelname.lower(),
            record.name,
            record.getMessage(),
        ]
        for key, value in vars(record).items():
            if key not in _STANDARD_RECORD_KEYS and not key.startswith("_"):
                parts.append(f"{key}={_quote(value)}")
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


def _quote(value: object) -> str:
    text = str(value)
    if not text or any(char.isspace() or char in '"=' for char in text):
        return json.dumps(text, ensure_ascii=False)
    return text


def configure_logging(level: str) -> None:
    """Send every log record to stderr, one key=value line each, at ``level`` and above.

    Logs go to stderr so that stdout carries only what the user asked for.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, built fresh each call (tests and ``main`` must not share state)."""
    # ``--log-level`` works before or after the subcommand; SUPPRESS on the subcommand copy
    # keeps it from overwriting a value given before the subcommand with the default.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--log-level",
        type=str.lower,
        choices=LOG_LEVELS,
        default=argparse.SUPPRESS,
        help="log verbosity (default: info)",
    )
    parser = argparse.ArgumentParser(
        prog="resmesh",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"resmesh {__version__}")
    parser.add_argument(
        "--log-level",
        type=str.lower,
        choices=LOG_LEVELS,
        default="info",
        help="log verbosity (default: info)",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = commands.add_parser(
        "run",
        parents=[common],
        help="start the gateway and serve until SIGTERM/SIGINT",
        description="Load the config and serve every cluster in it until SIGTERM or SIGINT, "
        "then drain in-flight calls and exit 0.",
    )
    run.add_argument(
        "-c",
        "--config",
        type=Path,
        default=DEFAULT_CONFIG,
        metavar="FILE",
        help=f"YAML config file (default: {DEFAULT_CONFIG}, relative to the current directory)",
    )
    run.set_defaults(handler=_cmd_run)

    check = commands.add_parser(
        "check",
        parents=[common],
        help="validate a config file and summarize it",
        description="Validate a config file without starting anything. Exit 0 and print a "
        "summary if it is usable; otherwise print one line naming the file, key and fix, "
        "and exit 2.",
    )
    check.add_argument(
        "-c", "--config", type=Path, required=True, metavar="FILE", help="YAML config file"
    )
    check.set_defaults(handler=_cmd_check)

    ctl = commands.add_parser(
        "ctl",
        parents=[common],
        help="control every gateway through the registry: status, top, degrade, restore, "
        "limit, shift, node, primary",
        description="Change the live state of a cluster in the registry; every gateway "
        "watching it obeys within a second. status shows what a gateway runs.",
        epilog=_CTL_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ctl.add_argument(
        "-c",
        "--config",
        type=Path,
        default=DEFAULT_CONFIG,
        metavar="FILE",
        help=f"the gateway's config file, to find the registry (default: {DEFAULT_CONFIG})",
    )
    _add_ctl_commands(ctl)
    ctl.set_defaults(handler=_cmd_ctl)
    return parser


def _add_ctl_commands(ctl: argparse.ArgumentParser) -> None:
    """The ``ctl`` subcommands and their arguments."""
    commands = ctl.add_subparsers(dest="ctl_command", metavar="COMMAND", required=True)
    status = commands.add_parser(
        "status",
        help="every cluster, group and node: health, breaker, route weights, switches, version",
    )
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")

    top = commands.add_parser(
        "top", help="live view: calls/s, errors, p99 per cluster and operation, breakers"
    )
    top.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes")
    top.add_argument(
        "--iterations", type=int, help="refresh this many times, then exit (default: until ^C)"
    )

    down = commands.add_parser("degrade", help="turn on a degrade switch")
    down.add_argument("cluster")
    down.add_argument(
        "--mode",
        choices=[m.value for m in SwitchMode],
        help="miss: reads answer empty, writes are acknowledged; error: every call fails; "
        "readonly: writes fail; fallback: every call answers --value (default: miss for "
        "Redis, readonly for MySQL, error for Motan2)",
    )
    down.add_argument("--op", help="only this operation (a Redis command, SQL verb, method)")
    down.add_argument("--value", help="the answer of mode fallback")
    down.add_argument("--reason", default="", help="why, shown in errors and status")

    up = commands.add_parser("restore", help="turn degrade switches off")
    up.add_argument("cluster")
    up.add_argument("--op", help="only this operation's switch (default: every switch)")

    cap = commands.add_parser(
        "limit",
        help="replace the config's rate and concurrency limits of a cluster or an operation",
    )
    cap.add_argument("cluster")
    cap.add_argument("--op", help="only this operation (default: the whole cluster)")
    cap.add_argument("--rate", type=float, help="calls per second (burst: 2x unless given)")
    cap.add_argument("--burst", type=float, help="token bucket size")
    cap.add_argument("--concurrency", type=int, help="calls in flight at most")
    cap.add_argument(
        "--reset", action="store_true", help="give the scope its configured limits back"
    )

    move = commands.add_parser(
        "shift", help="set route weights between groups, e.g. shift feed-cache dc-a=0 dc-b=100"
    )
    move.add_argument("cluster")
    move.add_argument("weights", nargs="+", metavar="GROUP=WEIGHT")

    node = commands.add_parser("node", help="add, remove, enable or disable a node")
    node.add_argument("action", choices=["add", "remove", "enable", "disable"])
    node.add_argument("cluster")
    node.add_argument("address", metavar="ADDR", help="host:port")
    node.add_argument(
        "--group", help="add: the group to join (default: the first; a new one gets weight 0)"
    )
    node.add_argument("--weight", type=int, default=100, help="add: its share of its group")

    lead = commands.add_parser("primary", help="make a node the primary (it takes the writes)")
    lead.add_argument("cluster")
    lead.add_argument("address", metavar="ADDR", help="host:port")


def main(argv: list[str] | None = None) -> int:
    """Entry point for the ``resmesh`` console script and ``python -m resmesh``.

    Returns the process exit code instead of exiting, so tests can call it directly; argparse's
    own exits (``--help``, ``--version``, usage errors) are turned into return codes too.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return _exit_code(exc.code)
    configure_logging(args.log_level)
    handler = args.handler
    code: int = handler(args)
    return code


def _exit_code(code: str | int | None) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    return EXIT_USAGE


def _load(path: Path, *, is_default: bool) -> Config | None:
    """Load a config, or print the one-line reason to stderr and return ``None``."""
    try:
        return load_config(path)
    except ConfigError as error:
        if is_default and error.key is None and error.problem == "config file not found":
            error = ConfigError(
                error.file,
                None,
                "default config file not found in the current directory",
                "run from the resmesh checkout, or pass -c FILE",
            )
        _fail(str(error))
        return None


def _fail(message: str) -> None:
    """Print one line to stderr: the whole of what a user needs, with nothing to scroll past."""
    print(message, file=sys.stderr)


def _cmd_run(args: argparse.Namespace) -> int:
    config_path: Path = args.config
    config = _load(config_path, is_default=config_path == DEFAULT_CONFIG)
    if config is None:
        return EXIT_USAGE
    _log.info(
        "config loaded",
        extra={"config": str(config.source), "clusters": ",".join(config.clusters)},
    )
    # Imported here: the server pulls in Trio and every protocol, which ``check`` and
    # ``--help`` do not need.
    from resmesh import server

    try:
        code: int = server.run(config)
    except KeyboardInterrupt:
        # The server drains on SIGINT itself; this only catches a Ctrl-C during startup.
        _log.info("interrupted")
        return 130
    return code


def _cmd_check(args: argparse.Namespace) -> int:
    config = _load(args.config, is_default=False)
    if config is None:
        return EXIT_USAGE
    for line in summarize(config):
        print(line)
    return 0


def _cmd_ctl(args: argparse.Namespace) -> int:
    config_path: Path = args.config
    config = _load(config_path, is_default=config_path == DEFAULT_CONFIG)
    if config is None:
        return EXIT_USAGE
    from resmesh.admin.ctl import run_ctl

    return run_ctl(config, args)


def summarize(config: Config) -> list[str]:
    """A short human summary of a validated config: what ``resmesh check`` prints."""
    gateway = config.gateway
    admin = str(gateway.admin) if gateway.admin is not None else "off"
    lines = [
        f"{config.source}: ok",
        f"gateway {gateway.app}: admin {admin}, workers {gateway.workers}, "
        f"drain_timeout {gateway.drain_timeout:g}s",
        f"registry {config.registry.describe()}, when unreachable at start: "
        f"{config.registry.unreachable_at_start}",
    ]
    for name, cluster in config.clusters.items():
        groups = ", ".join(
            f"{group} ({len(nodes)} node{'s' if len(nodes) != 1 else ''})"
            for group, nodes in cluster.groups.items()
        )
        route = " ".join(f"{group}={weight}" for group, weight in cluster.route.items())
        policy = f", policy {cluster.policy}" if cluster.policy else ""
        if cluster.motan2 is not None:
            service = cluster.motan2.service
            if cluster.motan2.group is not None:
                service += f" (group {cluster.motan2.group})"
            lines.append(
                f"cluster {name}: motan2 {service} via the agent on {cluster.listen}, "
                f"groups {groups}, route {route}{policy}"
            )
            continue
        lines.append(
            f"cluster {name}: {cluster.protocol}, listen {cluster.listen}, {cluster.mode}, "
            f"groups {groups}, route {route}{policy}"
        )
    agent = config.motan2
    if agent is not None:
        server = f"server side {agent.server}" if agent.server is not None else "no server side"
        exports = ", ".join(f"{s} -> {a}" for s, a in agent.export.items()) or "none"
        lines.append(f"motan2 agent: client side {agent.client}, {server}, exports {exports}")
    if config.users:
        lines.extend(
            f"user {name}: clusters {', '.join(sorted(user.clusters))}"
            for name, user in config.users.items()
        )
    else:
        lines.append("users: none (clients connect without AUTH)")
    return lines
