"""The state of one client connection of the Redis frontend, sans-IO (h11's way).

A client of the gateway believes it holds a connection of its own to a Redis server, but its
commands travel on connections the gateway shares, except while the session's state lives on
the node (a transaction, a watch, a blocking command, a subscription): then it holds a
*dedicated* connection. This module decides, command by command, what the session does; the
driver (``resmesh.net.redis.session``) does the I/O and reports back. Nothing here touches a
socket, so every transition is tested without one.

**Classification, once per command name.** :func:`command_info` maps a command name, as the
client spells it, to a :class:`CommandInfo`: its command-table entry, its :class:`Kind`, whether
it is an idempotent read, whether a degrade switch applies to it. The driver looks it up once
per command and passes it along; nothing looks the command up again.

**Modes and transitions** (:data:`TRANSITIONS`, a table, as h11 keeps its own)::

    NORMAL ──WATCH──▶ WATCHING ──MULTI──▶ MULTI ──EXEC/DISCARD──▶ NORMAL
      │                  │                  ▲
      ├──MULTI───────────┼──────────────────┘        (MULTI refused: no dedicated connection,
      │                  └──UNWATCH──▶ NORMAL          a limit, a breaker, sharding)
      ├──MULTI refused──▶ MULTI_REFUSED ──EXEC/DISCARD──▶ NORMAL
      └──SUBSCRIBE──▶ SUBSCRIBED (for the rest of the connection)

Authentication, the selected database and the protocol version (RESP2 or RESP3) are
orthogonal to the mode. ``QUIT`` and ``RESET`` are obeyed in every mode.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Callable, Iterable, Mapping
from typing import Final, final

from . import commands as cmdtable
from . import replies as R
from . import sharding
from .commands import CommandFlag, CommandSpec
from .framing import scan_reply
from .requests import Command, encode_command

__all__ = [
    "TRANSITIONS",
    "Action",
    "CommandInfo",
    "Kind",
    "Mode",
    "RespSession",
    "batch_operations",
    "classify",
    "command_info",
    "exec_element",
]


class Mode(enum.Enum):
    """Where the session's commands go."""

    #: To the shared connections.
    NORMAL = "normal"
    #: ``WATCH`` is active: to the session's dedicated connection.
    WATCHING = "watching"
    #: Inside ``MULTI``: queued on the dedicated connection until ``EXEC`` or ``DISCARD``.
    MULTI = "multi"
    #: ``MULTI`` was refused: nothing runs until ``EXEC`` (which answers ``EXECABORT``) or
    #: ``DISCARD``, since the client sent those commands to run atomically.
    MULTI_REFUSED = "multi-refused"
    #: Subscribed: relayed both ways on the dedicated connection for the rest of its life
    #: (RESP2 subscribers get messages that cannot be paired with requests).
    SUBSCRIBED = "subscribed"


class Kind(enum.Enum):
    """What a command is to the session."""

    #: Forwarded to the node (a read or a write).
    FORWARD = "forward"
    #: May block, depending on its arguments (``BLPOP``, ``XREAD BLOCK``, ``WAIT``).
    BLOCKING = "blocking"
    #: Answered by the gateway (``AUTH``, ``HELLO``, ``SELECT``, ``CLIENT``, ``PING``...).
    LOCAL = "local"
    MULTI = "multi"
    EXEC = "exec"  # EXEC and DISCARD
    WATCH = "watch"
    UNWATCH = "unwatch"
    SUBSCRIBE = "subscribe"  # SUBSCRIBE, PSUBSCRIBE, SSUBSCRIBE


class Action(enum.Enum):
    """What the driver does with one command (the reply, if the session made one, is in
    :attr:`RespSession.reply`)."""

    #: Send it to the node: the shared connections, or the dedicated one while it is held.
    FORWARD = "forward"
    #: Run it as a blocking command if its arguments make it block; else forward it.
    BLOCK = "block"
    #: The session answered: write :attr:`RespSession.reply`.
    REPLY = "reply"
    #: A local command that needs I/O: dispatch by name (``SELECT``, ``HELLO``, ``QUIT``...).
    LOCAL = "local"
    #: ``MULTI`` outside a transaction: take a dedicated connection, then queue it.
    BEGIN_MULTI = "begin-multi"
    #: ``WATCH`` outside a transaction: take a dedicated connection, then send it.
    BEGIN_WATCH = "begin-watch"
    #: Inside ``MULTI``: queue it on the node (it answers ``+QUEUED``).
    QUEUE = "queue"
    #: Inside ``MULTI``, refused at queue time (:attr:`RespSession.reply` says why): the node
    #: must abort the transaction, as it does when it refuses a command itself.
    REFUSE_QUEUED = "refuse-queued"
    #: ``EXEC``/``DISCARD`` inside ``MULTI``: send, then the session leaves the transaction.
    END_MULTI = "end-multi"
    #: ``UNWATCH`` while watching: send it; the dedicated connection is given back after.
    UNWATCH = "unwatch"
    #: Subscribe: the session becomes a relay.
    SUBSCRIBE = "subscribe"


#: Commands the gateway answers itself (its connection to the node is not the client's).
LOCAL_COMMANDS: Final = frozenset(b"AUTH HELLO SELECT PING ECHO QUIT RESET CLIENT".split())
_KINDS_BY_NAME: Final[Mapping[bytes, Kind]] = {
    b"MULTI": Kind.MULTI,
    b"EXEC": Kind.EXEC,
    b"DISCARD": Kind.EXEC,
    b"WATCH": Kind.WATCH,
    b"UNWATCH": Kind.UNWATCH,
    b"SUBSCRIBE": Kind.SUBSCRIBE,
    b"PSUBSCRIBE": Kind.SUBSCRIBE,
    b"SSUBSCRIBE": Kind.SUBSCRIBE,
    **{name: Kind.LOCAL for name in LOCAL_COMMANDS},
}
#: What an unauthenticated client may still send (redis-server's rule).
PRE_AUTH: Final = frozenset(b"AUTH HELLO QUIT RESET".split())
#: Refused inside MULTI: their effect on the connection outlives the transaction (a subscriber,
#: another protocol, another user), and the session could not follow it after EXEC.
NOT_IN_MULTI: Final = frozenset(b"SUBSCRIBE PSUBSCRIBE SSUBSCRIBE AUTH HELLO".split())
#: Commands that leave state on the connection that runs them (it is not pooled after).
CONNECTION_STATE: Final = frozenset(b"SELECT CLIENT".split())
#: Reads that name no key (the command table gives them no key positions) but read data.
_KEYSPACE_COMMANDS: Final = frozenset(b"SCAN KEYS RANDOMKEY DBSIZE".split())
#: What makes a command a write for the degrade switches; scripts other than the ``_RO``
#: forms may write too, and a publish hands a message to every subscriber.
_WRITE_FLAGS: Final = CommandFlag.WRITE | CommandFlag.MAY_REPLICATE
_PUBLISHING: Final = frozenset(b"PUBLISH SPUBLISH".split())
#: Pub/sub commands a degrade switch applies to: they carry the cluster's messages.
_PUBSUB_DATA: Final = frozenset(b"PUBLISH SPUBLISH SUBSCRIBE PSUBSCRIBE SSUBSCRIBE".split())


@final
class CommandInfo:
    """A command name, classified once (see :func:`command_info`).

    Attributes:
        name: the upper-cased name (``b"GET"``; a container's, ``b"CONFIG"``, for its
            subcommands too).
        operation: the name as governance keys it (``"GET"``, ``"CONFIG"``).
        spec: the command-table entry (a subcommand's, ``CONFIG|GET``, once
            :func:`classify` has seen the arguments); ``None`` for a command the table does
            not know (a module's), which is forwarded for the node to answer.
        container: the command has subcommands, which :func:`classify` tells apart.
        kind: see :class:`Kind`.
        plain: forwarded as it is in a normal session whatever its arguments: known, never
            refused, not answered here, never pinning or blocking, no subcommands. The
            driver's fast path.
        checked: its arguments may make it refused (``CONFIG SET``, ``CLIENT KILL``):
            :func:`~resmesh.protocols.resp.commands.refusal` must be asked per command.
        read: an idempotent read (retry, hedge and spreading over replicas are safe).
        write: may change data (the table's ``write`` or ``may_replicate``, a script that is
            not a ``_RO`` form, a publish; an unknown command is taken to): what a
            ``readonly`` switch refuses and a ``miss`` switch acknowledges. ``WATCH`` and
            ``SUBSCRIBE`` change nothing.
        switchable: a degrade switch applies: commands on data do; commands about the server
            (``INFO``, ``TIME``, ``CONFIG GET``) are answered even by a degraded cache.
    """

    __slots__ = (
        "checked",
        "container",
        "kind",
        "name",
        "operation",
        "plain",
        "read",
        "spec",
        "switchable",
        "write",
    )

    def __init__(self, name: bytes, spec: CommandSpec | None, *, subcommand: bool = False) -> None:
        self.name = name
        self.operation = name.decode("ascii", "replace")
        self.spec = spec
        self.kind = _KINDS_BY_NAME.get(name, Kind.FORWARD)
        if spec is not None and self.kind is Kind.FORWARD and spec.flags & CommandFlag.BLOCKING:
            self.kind = Kind.BLOCKING
        self.container = spec is not None and spec.container
        self.checked = spec is not None and (spec.container or spec.name in cmdtable.REFUSALS)
        # A subcommand's classification is never plain: the fast path sees the command's
        # name only, and another subcommand of it may be refused (CONFIG GET, CONFIG SET).
        self.plain = (
            spec is not None and self.kind is Kind.FORWARD and not self.checked and not subcommand
        )
        self.read = spec is not None and cmdtable.is_idempotent_read(spec)
        self.write = (
            spec is None
            or bool(spec.flags & _WRITE_FLAGS)
            or (bool(spec.flags & CommandFlag.SCRIPTING) and not spec.flags & CommandFlag.READONLY)
            or name in _PUBLISHING
        )
        self.switchable = (
            spec is None
            or bool(spec.key_specs)
            or name in _KEYSPACE_COMMANDS
            or name in _PUBSUB_DATA
        )

    def __repr__(self) -> str:
        return f"CommandInfo({self.operation}, {self.kind.name})"


#: Classifications by name as clients spell it (``get``, ``GET``, ``Get``...). Bounded: names
#: come from clients; past the cap (or for a name too long to be a command) the answer is
#: computed afresh each time.
_INFO: dict[bytes, CommandInfo] = {}
_INFO_MAX: Final = 4096
_NAME_MAX_LEN: Final = 32


def command_info(name: bytes) -> CommandInfo:
    """The classification of a command whose first argument is ``name``."""
    info = _INFO.get(name)
    if info is not None:
        return info
    upper = name.upper()
    canonical = _INFO.get(upper)
    if canonical is None:
        canonical = CommandInfo(upper, cmdtable.lookup([upper]))
    if len(_INFO) < _INFO_MAX and len(name) <= _NAME_MAX_LEN:
        _INFO[upper] = canonical
        _INFO[name] = canonical
    return canonical


def classify(args: list[bytes]) -> CommandInfo:
    """The classification of a whole command line: :func:`command_info` of its name, or, for
    a container (``CONFIG``, ``OBJECT``, ``CLIENT``...), of its subcommand, which decides
    whether it reads, whether it is refused and whether a switch applies."""
    info = command_info(args[0])
    if not info.container or len(args) < 2:
        return info
    key = (info.name, args[1])
    sub = _SUBCOMMAND_INFO.get(key)
    if sub is None:
        spec = cmdtable.lookup(args)
        sub = info if spec is info.spec else CommandInfo(info.name, spec, subcommand=True)
        if len(_SUBCOMMAND_INFO) < _INFO_MAX and len(args[1]) <= _NAME_MAX_LEN:
            _SUBCOMMAND_INFO[key] = sub
    return sub


_SUBCOMMAND_INFO: dict[tuple[bytes, bytes], CommandInfo] = {}


def batch_operations(commands: list[Command]) -> dict[str, int] | None:
    """How many calls of each operation a batch holds, if every command is plain (forwarded
    as it is), so a limiter can admit the batch in one step; ``None`` otherwise.

    Remembered per batch shape (the sequence of command names as sent): applications send
    the same few pipelines over and over, and counting a mixed one afresh costs more than
    admitting it."""
    shape = tuple([command.args[0] for command in commands])
    counts = _BATCH_SHAPES.get(shape, _UNKNOWN_SHAPE)
    if counts is not _UNKNOWN_SHAPE:
        return counts
    counts = {}
    for name in set(shape):
        info = command_info(name)
        if not info.plain:
            counts = None
            break
        counts[info.operation] = counts.get(info.operation, 0) + shape.count(name)
    if len(shape) <= _SHAPE_MAX_LEN and all(len(name) <= _NAME_MAX_LEN for name in shape):
        if len(_BATCH_SHAPES) >= _INFO_MAX:
            _BATCH_SHAPES.clear()
            _SHAPE_NAMES.clear()
        # The key holds one shared object per name, not the client's: a remembered shape
        # costs its tuple only, however often the names were sent.
        _BATCH_SHAPES[tuple([_SHAPE_NAMES.setdefault(name, name) for name in shape])] = counts
    return counts


#: What :func:`batch_operations` found per batch shape (bounded: cleared when full).
_BATCH_SHAPES: dict[tuple[bytes, ...], dict[str, int] | None] = {}
_UNKNOWN_SHAPE: Final[dict[str, int]] = {}
_SHAPE_NAMES: dict[bytes, bytes] = {}
#: Batches longer than this are not remembered (a long one pays for counting per command).
_SHAPE_MAX_LEN: Final = 64


#: The action for each (mode, kind). ``SUBSCRIBED`` is absent: a subscribed session's commands
#: are relayed (:meth:`RespSession.relay_payload`), not stepped.
TRANSITIONS: Final[Mapping[tuple[Mode, Kind], Action]] = {
    (Mode.NORMAL, Kind.FORWARD): Action.FORWARD,
    (Mode.NORMAL, Kind.BLOCKING): Action.BLOCK,
    (Mode.NORMAL, Kind.LOCAL): Action.LOCAL,
    (Mode.NORMAL, Kind.MULTI): Action.BEGIN_MULTI,
    (Mode.NORMAL, Kind.EXEC): Action.REPLY,  # EXEC without MULTI
    (Mode.NORMAL, Kind.WATCH): Action.BEGIN_WATCH,
    (Mode.NORMAL, Kind.UNWATCH): Action.REPLY,  # nothing watched: +OK
    (Mode.NORMAL, Kind.SUBSCRIBE): Action.SUBSCRIBE,
    (Mode.WATCHING, Kind.FORWARD): Action.FORWARD,
    (Mode.WATCHING, Kind.BLOCKING): Action.BLOCK,
    (Mode.WATCHING, Kind.LOCAL): Action.LOCAL,
    (Mode.WATCHING, Kind.MULTI): Action.QUEUE,
    (Mode.WATCHING, Kind.EXEC): Action.REPLY,
    (Mode.WATCHING, Kind.WATCH): Action.FORWARD,
    (Mode.WATCHING, Kind.UNWATCH): Action.UNWATCH,
    (Mode.WATCHING, Kind.SUBSCRIBE): Action.SUBSCRIBE,
    (Mode.MULTI, Kind.FORWARD): Action.QUEUE,
    (Mode.MULTI, Kind.BLOCKING): Action.QUEUE,  # inside MULTI nothing blocks
    (Mode.MULTI, Kind.LOCAL): Action.QUEUE,  # QUIT, RESET, AUTH, HELLO: see step()
    (Mode.MULTI, Kind.MULTI): Action.QUEUE,  # the node answers "calls can not be nested"
    (Mode.MULTI, Kind.EXEC): Action.END_MULTI,
    (Mode.MULTI, Kind.WATCH): Action.QUEUE,  # the node answers "inside MULTI is not allowed"
    (Mode.MULTI, Kind.UNWATCH): Action.QUEUE,
    (Mode.MULTI, Kind.SUBSCRIBE): Action.REFUSE_QUEUED,
    **{(Mode.MULTI_REFUSED, kind): Action.REPLY for kind in Kind},
}


def exec_element(reply: bytes, position: int) -> bytes:
    """The reply of the ``position``-th command in EXEC's array reply (``b""`` if absent)."""
    pos = reply.find(b"\r\n") + 2
    for _ in range(position):
        pos = scan_reply(reply, pos)
        if pos < 0:
            return b""
    end = scan_reply(reply, pos)
    return reply[pos:end] if end > 0 else b""


def _is_exec_success(reply: bytes) -> bool:
    """EXEC ran the transaction: an array reply (not a nil for a failed WATCH, not an error)."""
    return reply[:1] == b"*" and reply[:3] != b"*-1"


def _valid_client_name(name: bytes) -> bool:
    """redis-server accepts printable ASCII without spaces (``clientSetName``)."""
    return all(33 <= ch <= 126 for ch in name)


def _eval_reply(kind: bytes, text: str) -> bytes:
    """A command that makes the node itself answer ``text`` as a status or error reply.

    Used on the pub/sub relay, where the gateway cannot slot a reply in: the node emits it in
    its place in the stream, so order is kept.
    """
    script = b"return redis.%s(ARGV[1])" % kind
    return encode_command([b"EVAL", script, b"0", text.encode()])


#: Commands the relay cannot pass to the node as they are: ``CLIENT`` would answer for the
#: node's connection rather than the client's.
_NOT_ON_THE_RELAY: Final[Mapping[bytes, str]] = {
    b"CLIENT": "ERR resmesh: CLIENT on a subscribed connection is not supported; use another "
    "connection",
}
#: Kinds a sharded cluster refuses: one dedicated connection cannot follow keys across nodes.
_TRANSACTION_KINDS: Final = frozenset({Kind.MULTI, Kind.EXEC, Kind.WATCH, Kind.UNWATCH})
#: What a subscribed connection may run in a sharded cluster (it is pinned to one node).
_RELAY_SHARDED: Final = frozenset(
    b"SUBSCRIBE PSUBSCRIBE SSUBSCRIBE UNSUBSCRIBE PUNSUBSCRIBE SUNSUBSCRIBE PING ECHO QUIT "
    b"RESET AUTH HELLO".split()
)


class RespSession:
    """One client connection's state: mode, login, database, protocol, transaction.

    Args:
        client_id: the id ``CLIENT ID`` and ``HELLO`` report (unique in the process).
        peer: the client's address; ``listen``: the gateway's (``CLIENT LIST`` fields).
        users: gateway logins (name → password) allowed on this cluster; none: no AUTH.
        sharded: the cluster spreads keys over nodes (no transactions, no WATCH).
        peers: every session of the cluster, for ``CLIENT LIST``.
    """

    def __init__(
        self,
        client_id: int,
        peer: str,
        listen: str,
        users: Mapping[str, str],
        *,
        sharded: bool = False,
        peers: Callable[[], Iterable[RespSession]] = tuple,
        server_version: str = "7.0.0",
    ) -> None:
        self.id = client_id
        self.peer = peer
        self.listen = listen
        self.users = users
        self.auth_required = bool(users)
        self.sharded = sharded
        self.peers = peers
        self.server_version = server_version
        self.mode = Mode.NORMAL
        self.authenticated = not self.auth_required
        self.user: str | None = None
        self.db = 0
        self.resp = 2
        self.name = b""
        self.lib_name = b""
        self.lib_ver = b""
        self.last_command = b""
        self.closing = False
        #: The reply the last :meth:`step` made, for :attr:`Action.REPLY` and
        #: :attr:`Action.REFUSE_QUEUED`.
        self.reply = b""
        #: Why the client's MULTI was refused, while in ``MULTI_REFUSED``.
        self.multi_refused = ""
        #: Commands queued since MULTI, counted as the client sees them (EXEC's positions).
        self.multi_queued = 0
        #: SELECTs queued inside MULTI: (position in the transaction, db). Each takes effect
        #: only if EXEC runs and its own reply in EXEC's array is +OK.
        self.multi_selects: list[tuple[int, int]] = []
        #: Replies the gateway made for commands of the transaction that never reached the
        #: node (a degrade switch answered them): position → reply, spliced into EXEC's array.
        self.multi_local: dict[int, bytes] = {}

    # ----------------------------------------------------------------------------------------
    # Stepping

    @property
    def forwards_plain(self) -> bool:
        """Whether a plain command is simply forwarded now (the driver's fast path)."""
        return self.authenticated and (self.mode is Mode.NORMAL or self.mode is Mode.WATCHING)

    def step(self, command: Command, info: CommandInfo) -> Action:
        """What to do with ``command`` (classified as ``info``) in the current state.

        For :attr:`Action.REPLY` and :attr:`Action.REFUSE_QUEUED` the reply is in
        :attr:`reply`; the mode changes that need no I/O are made here.
        """
        name = info.name
        self.last_command = name
        mode = self.mode
        if mode is Mode.MULTI or mode is Mode.MULTI_REFUSED:
            if name == b"QUIT" or name == b"RESET":
                return Action.LOCAL
            if mode is Mode.MULTI_REFUSED:
                self.reply = self._in_refused_multi(info)
                return Action.REPLY
            refusal = self._refusal(command, info)
            if refusal is None and name in NOT_IN_MULTI:
                refusal = f"ERR resmesh: {name.decode()} inside MULTI is not supported"
            if refusal is not None:
                self.reply = R.error(refusal)
                return Action.REFUSE_QUEUED
            action = TRANSITIONS[mode, info.kind]
            if action is Action.QUEUE and name == b"SELECT":
                with contextlib.suppress(IndexError, ValueError):
                    self.multi_selects.append((self.multi_queued, int(command.args[1])))
            return action
        if not self.authenticated and name not in PRE_AUTH:
            self.reply = R.NOAUTH
            return Action.REPLY
        refusal = self._refusal(command, info)
        if refusal is None and self.sharded and info.kind in _TRANSACTION_KINDS:
            assert info.spec is not None
            reason = sharding.SHARDED_REFUSALS[name]
            refusal = f"ERR '{info.spec.display_name}' is not supported in sharded mode: {reason}"
            if info.kind is Kind.MULTI:
                self.refused_multi("transactions are not supported in sharded mode")
        if refusal is not None:
            self.reply = R.error(refusal)
            return Action.REPLY
        action = TRANSITIONS[mode, info.kind]
        if action is Action.REPLY:
            if info.kind is Kind.EXEC:
                self.reply = R.error(f"ERR {command.args[0].upper().decode()} without MULTI")
            else:  # UNWATCH with nothing watched
                self.reply = R.OK
        return action

    @staticmethod
    def _refusal(command: Command, info: CommandInfo) -> str | None:
        if not info.checked:
            return None
        assert info.spec is not None
        return cmdtable.refusal(info.spec, command.args)

    def _in_refused_multi(self, info: CommandInfo) -> bytes:
        """Between a refused MULTI and its EXEC or DISCARD nothing runs."""
        if info.kind is Kind.EXEC:
            self.mode = Mode.NORMAL
            self.multi_refused = ""
            return R.EXECABORT if info.name == b"EXEC" else R.OK
        if info.kind is Kind.MULTI:
            return R.error("ERR MULTI calls can not be nested")
        return R.error(f"ERR resmesh: not run: its MULTI was refused ({self.multi_refused})")

    # ----------------------------------------------------------------------------------------
    # Transactions and watches: what the driver reports back

    def began_multi(self) -> None:
        """The session holds a dedicated connection and has queued ``MULTI`` on it."""
        self.mode = Mode.MULTI
        self.multi_queued = 0
        self.multi_selects = []
        self.multi_local = {}

    def refused_multi(self, reason: str) -> None:
        """``MULTI`` was refused (no dedicated connection, a limit, the breaker, sharding)."""
        self.mode = Mode.MULTI_REFUSED
        self.multi_refused = reason

    def queued(self, local_reply: bytes | None = None) -> None:
        """A command inside MULTI was queued on the node, or (``local_reply``) answered
        ``+QUEUED`` by the gateway, which puts its reply into EXEC's array itself."""
        if local_reply is not None:
            self.multi_local[self.multi_queued] = local_reply
        self.multi_queued += 1

    def began_watch(self) -> None:
        self.mode = Mode.WATCHING

    def ending_multi(self) -> tuple[list[tuple[int, int]], dict[int, bytes]]:
        """``EXEC``/``DISCARD`` is being sent: leave the transaction (and any watch, which
        EXEC and DISCARD end too). Returns what :meth:`exec_reply` needs."""
        pending = (self.multi_selects, self.multi_local)
        self.mode = Mode.NORMAL
        self.multi_selects = []
        self.multi_local = {}
        return pending

    def exec_reply(
        self, reply: bytes, selects: list[tuple[int, int]], local: dict[int, bytes]
    ) -> bytes:
        """EXEC's reply as the client must see it: the replies the gateway made for switched
        commands spliced in at their positions, and the session's database following each
        SELECT of the transaction that the node answered +OK."""
        if not _is_exec_success(reply):
            return reply
        if local:
            reply = self._splice(reply, local)
        for position, db in selects:  # the SELECTs that took effect, in order
            if exec_element(reply, position).startswith(b"+OK"):
                self.db = db
        return reply

    @staticmethod
    def _splice(reply: bytes, local: dict[int, bytes]) -> bytes:
        pos = reply.find(b"\r\n") + 2
        count = int(reply[1 : pos - 2])
        parts: list[bytes] = []
        position = 0
        for _ in range(count):
            while position in local:
                parts.append(local[position])
                position += 1
            end = scan_reply(reply, pos)
            if end < 0:
                return reply  # not what EXEC answers: leave it as it came
            parts.append(reply[pos:end])
            pos = end
            position += 1
        while position in local:
            parts.append(local[position])
            position += 1
        return b"*%d\r\n" % len(parts) + b"".join(parts)

    def unwatched(self) -> None:
        self.mode = Mode.NORMAL

    def released(self) -> None:
        """The dedicated connection is gone (given back, or broken): so is any transaction or
        watch that lived on it."""
        if self.mode is Mode.MULTI or self.mode is Mode.WATCHING:
            self.mode = Mode.NORMAL
        self.multi_selects = []
        self.multi_local = {}

    def subscribed(self) -> None:
        self.mode = Mode.SUBSCRIBED

    def selected(self, db: int) -> None:
        self.db = db

    # ----------------------------------------------------------------------------------------
    # Commands the gateway answers

    def authenticate(self, credentials: list[bytes]) -> bytes:
        """Check gateway credentials (never the backend's); returns the reply to send."""
        users = self.users
        if len(credentials) == 1:
            if not users:
                return R.NOPASS_CONFIGURED
            password = credentials[0].decode(errors="replace")
            candidates = ["default"] if "default" in users else list(users)
            match = next((name for name in candidates if users[name] == password), None)
        elif len(credentials) == 2:
            name = credentials[0].decode(errors="replace")
            password = credentials[1].decode(errors="replace")
            if name == "default" and "default" not in users:
                # redis-server's ``default`` user is whoever ``AUTH <password>`` logs in as:
                # redis-py sends ``HELLO 3 AUTH default <password>`` for a bare password.
                if not users:
                    return R.OK  # like a passwordless default user: any password is accepted
                return self.authenticate(credentials[1:])
            match = name if users.get(name) == password else None
        else:
            return R.SYNTAX
        if match is None:
            return R.WRONGPASS
        self.user = match
        self.authenticated = True
        return R.OK

    def auth(self, command: Command) -> bytes:
        if len(command.args) not in (2, 3):
            return R.wrong_arity(b"auth")
        return self.authenticate(command.args[1:])

    def hello(self, command: Command) -> tuple[bytes, int | None]:
        """``HELLO [protover [AUTH user pass] [SETNAME name]]``: the reply, and the protocol
        version to switch to (``None`` when it stays or the command failed). The driver makes
        the switch (:meth:`switch_protocol`) once queued commands have gone out under the old
        one."""
        args = command.args
        resp = self.resp
        if len(args) > 1:
            try:
                resp = int(args[1])
            except ValueError:
                return R.error("ERR Protocol version is not an integer or out of range"), None
            if resp not in (2, 3):
                return R.NOPROTO, None
        name: bytes | None = None
        credentials: list[bytes] | None = None
        i = 2
        while i < len(args):
            option = args[i].upper()
            if option == b"AUTH" and i + 2 < len(args):
                credentials = args[i + 1 : i + 3]
                i += 3
            elif option == b"SETNAME" and i + 1 < len(args):
                name = args[i + 1]
                i += 2
            else:
                text = args[i].decode(errors="replace")
                return R.error(f"ERR Syntax error in HELLO option '{text}'"), None
        if credentials is not None:
            reply = self.authenticate(credentials)
            if reply != R.OK:
                return reply, None
        elif not self.authenticated:
            return (
                R.error(
                    "NOAUTH HELLO must be called with the client already authenticated, "
                    "otherwise the HELLO <proto> AUTH <user> <pass> option can be used to "
                    "authenticate the client and select the RESP protocol version at the "
                    "same time"
                ),
                None,
            )
        if name is not None:
            if not _valid_client_name(name):
                return R.BAD_CLIENT_NAME, None
            self.name = name
        reply = R.map_reply(
            [
                (R.bulk(b"server"), R.bulk(b"redis")),
                (R.bulk(b"version"), R.bulk(self.server_version.encode())),
                (R.bulk(b"proto"), R.integer(resp)),
                (R.bulk(b"id"), R.integer(self.id)),
                (R.bulk(b"mode"), R.bulk(b"standalone")),
                (R.bulk(b"role"), R.bulk(b"master")),
                (R.bulk(b"modules"), R.array([])),
            ],
            resp,
        )
        return reply, (resp if resp != self.resp else None)

    def switch_protocol(self, resp: int) -> None:
        self.resp = resp

    def select_target(self, command: Command) -> int | bytes:
        """``SELECT``'s database, or the error to answer (the driver checks the database
        exists on the node, then calls :meth:`selected`)."""
        if len(command.args) != 2:
            return R.wrong_arity(b"select")
        try:
            db = int(command.args[1])
        except ValueError:
            return R.NOT_INTEGER
        if db < 0:
            return R.DB_OUT_OF_RANGE
        return db

    @staticmethod
    def ping(command: Command) -> bytes:
        args = command.args
        if len(args) == 1:
            return R.PONG
        if len(args) == 2:
            return R.bulk(args[1])
        return R.wrong_arity(b"ping")

    @staticmethod
    def echo(command: Command) -> bytes:
        if len(command.args) != 2:
            return R.wrong_arity(b"echo")
        return R.bulk(command.args[1])

    def reset(self) -> bytes:
        """``RESET`` (redis-server 6.2): back to a fresh connection's state. The driver has
        sent what was queued before it and dropped the dedicated connection."""
        self.mode = Mode.NORMAL
        self.multi_refused = ""
        self.multi_selects = []
        self.multi_local = {}
        self.db = 0
        self.resp = 2
        self.name = b""
        self.user = None
        self.authenticated = not self.auth_required
        return R.RESET

    def client(self, command: Command) -> bytes:
        """The ``CLIENT`` subcommands the gateway answers for the client's own connection (its
        backend connection is not the client's: ``CLIENT ID`` there would name the gateway's)."""
        args = command.args
        if len(args) < 2:
            return R.wrong_arity(b"client")
        sub = args[1].upper()
        if sub == b"ID" and len(args) == 2:
            return R.integer(self.id)
        if sub == b"GETNAME" and len(args) == 2:
            return R.bulk(self.name) if self.name else R.null(self.resp)
        if sub == b"SETNAME" and len(args) == 3:
            if not _valid_client_name(args[2]):
                return R.BAD_CLIENT_NAME
            self.name = args[2]
            return R.OK
        if sub == b"SETINFO" and len(args) == 4:
            attribute = args[2].upper()
            if attribute == b"LIB-NAME":
                self.lib_name = args[3]
            elif attribute == b"LIB-VER":
                self.lib_ver = args[3]
            else:
                text = args[2].decode(errors="replace")
                return R.error(f"ERR Unrecognized option '{text}'")
            return R.OK
        if sub == b"INFO" and len(args) == 2:
            return R.verbatim(self.describe() + b"\n", self.resp)
        if sub == b"LIST":
            return self._client_list(args[2:])
        if sub == b"REPLY" and len(args) == 3:
            return R.OK  # ON (OFF and SKIP are refused): replies are on already
        if sub == b"GETREDIR" and len(args) == 2:
            return R.integer(-1)  # client-side caching (tracking) is off
        if sub == b"TRACKINGINFO" and len(args) == 2:
            return R.map_reply(
                [
                    (R.bulk(b"flags"), R.array([R.bulk(b"off")])),
                    (R.bulk(b"redirect"), R.integer(-1)),
                    (R.bulk(b"prefixes"), R.array([])),
                ],
                self.resp,
            )
        text = b" ".join(args[:2]).decode(errors="replace").upper()
        return R.error(f"ERR resmesh: '{text}' is not supported through the gateway")

    def _client_list(self, options: list[bytes]) -> bytes:
        """``CLIENT LIST [TYPE normal|master|replica|pubsub] [ID id ...]`` over the sessions
        of this cluster (redis-server's filters and errors)."""
        wanted_type: bytes | None = None
        ids: set[int] | None = None
        i = 0
        while i < len(options):
            option = options[i].upper()
            if option == b"TYPE" and i + 1 < len(options):
                wanted_type = options[i + 1].lower()
                if wanted_type not in (b"normal", b"master", b"replica", b"slave", b"pubsub"):
                    text = options[i + 1].decode(errors="replace")
                    return R.error(f"ERR Unknown client type '{text}'")
                i += 2
            elif option == b"ID" and i + 1 < len(options):
                ids = set()
                i += 1
                while i < len(options):
                    try:
                        client_id = int(options[i])
                    except ValueError:
                        return R.error("ERR Invalid client ID")
                    if client_id <= 0:
                        return R.error("ERR Invalid client ID")
                    ids.add(client_id)
                    i += 1
            else:
                return R.SYNTAX
        lines = []
        for session in self.peers():
            if ids is not None and session.id not in ids:
                continue
            if wanted_type is not None:
                kind = b"pubsub" if session.mode is Mode.SUBSCRIBED else b"normal"
                if kind != wanted_type:
                    continue
            lines.append(session.describe() + b"\n")
        return R.verbatim(b"".join(lines), self.resp)

    def describe(self) -> bytes:
        """One ``CLIENT LIST`` line for this session (redis-server's field names)."""
        multi = self.multi_queued if self.mode is Mode.MULTI else -1
        fields = (
            f"id={self.id} addr={self.peer} laddr={self.listen} "
            f"name={self.name.decode(errors='replace')} db={self.db} multi={multi} "
            f"watch={int(self.mode is Mode.WATCHING)} resp={self.resp} "
            f"user={self.user or 'default'} lib-name={self.lib_name.decode(errors='replace')} "
            f"lib-ver={self.lib_ver.decode(errors='replace')} "
            f"cmd={self.last_command.decode(errors='replace').lower()}"
        )
        return fields.encode()

    # ----------------------------------------------------------------------------------------
    # The pub/sub relay

    def relay_payload(
        self, commands: list[Command], refuse: Callable[[Command, CommandInfo], str | None]
    ) -> bytes:
        """A subscribed session's commands, translated for the node: it answers everything in
        order, the gateway's own words included (made into ``EVAL`` calls that return them).
        ``refuse`` is the driver's governance (a switch or a limit), asked for each command
        that would reach the data. A ``RESET`` goes to the node as it is (its ``+RESET``
        ends the relay: the driver then leaves subscribed mode)."""
        parts: list[bytes] = []
        for command in commands:
            info = classify(command.args)
            name = info.name
            self.last_command = name
            refusal = self._refusal(command, info)
            if refusal is None and not self.authenticated and name not in PRE_AUTH:
                refusal = R.NOAUTH[1:-2].decode()
            if refusal is None and self.sharded and name not in _RELAY_SHARDED:
                # This connection is on one node; the cluster's keys are on all of them.
                refusal = (
                    f"ERR resmesh: {name.decode(errors='replace')} on a connection that "
                    "subscribed in a sharded cluster: it runs pub/sub commands only; use "
                    "another connection"
                )
            if refusal is None:
                refusal = _NOT_ON_THE_RELAY.get(name)
            if refusal is None and name not in LOCAL_COMMANDS:
                refusal = refuse(command, info)
            if refusal is not None:
                parts.append(_eval_reply(b"error_reply", refusal))
            elif name == b"AUTH":
                reply = self.authenticate(command.args[1:])
                kind = b"status_reply" if reply == R.OK else b"error_reply"
                parts.append(_eval_reply(kind, reply[1:-2].decode()))
            elif name == b"HELLO":
                parts.append(self._relay_hello(command))
            else:
                parts.append(command.raw)
        return b"".join(parts)

    def _relay_hello(self, command: Command) -> bytes:
        """HELLO on the relay: check AUTH here, let the node switch protocol and answer."""
        args = command.args
        forwarded = args[:2]
        i = 2
        while i < len(args):
            option = args[i].upper()
            if option == b"AUTH" and i + 2 < len(args):
                reply = self.authenticate(args[i + 1 : i + 3])
                if reply != R.OK:
                    return _eval_reply(b"error_reply", reply[1:-2].decode())
                i += 3
            else:
                forwarded.append(args[i])
                i += 1
        if len(args) > 1 and args[1] in (b"2", b"3"):
            self.resp = int(args[1])
        return encode_command(forwarded)
