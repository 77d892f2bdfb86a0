"""The Redis command table: what each command is, where its keys are, and what the gateway allows.

Every Redis command becomes one governed ``Call``, and the call needs facts the bytes alone do not
carry: may it be retried or hedged (``is_idempotent_read``), does it pin a backend connection
(``CommandFlag.BLOCKING``/``PUBSUB``/``TRANSACTION``), which keys does it touch (for consistent
hashing and hot-key limits, ``command_keys``), how long may it legitimately block
(``block_timeout``, so a deadline is not mistaken for a dead node), and does the gateway refuse it
outright (``refusal``).

The facts come from redis-server itself: ``_command_data`` is generated from ``COMMAND`` and
``COMMAND DOCS`` by ``scripts/gen_redis_commands.py``. This module owns the decisions made on top
of them: the flags we derive (``PUBSUB`` means *enters subscriber mode*, not the server's broader
``pubsub`` flag; ``BLOCKING`` adds ``WAIT``/``WAITAOF``), the few key extractors the server's key
specs cannot express (``SORT ... STORE``, ``MIGRATE ... KEYS``), and the gateway's refusal policy.

Key extraction follows redis-server's ``getKeysFromCommandWithSpecs`` (``db.c``) so that, for any
well-formed command, ``command_keys`` returns exactly what ``COMMAND GETKEYS`` returns, in the same
order. Where the server would give up on a malformed command (numkeys larger than the argument
list, a missing ``STREAMS`` id), we instead return the keys that can be found: arity and syntax
errors are the server's to report, and the gateway must never fail on them first.

Hot-path cost (both functions run for every command): ``lookup`` is one dict get for a
non-container command sent in upper or lower case, and every command whose keys sit at fixed or
end-relative positions (``GET``, ``SET``, ``MGET``, ``MSET``, ``DEL``, ``BLPOP``...) extracts them
with one precomputed slice. Measured with ``timeit`` on CPython 3.11: about 0.1 µs per ``lookup``
and 0.1 µs per ``command_keys`` for ``GET``/``SET``/``MGET``.
"""

from __future__ import annotations

import enum
import math
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, final

from . import _command_data

__all__ = [
    "COMMANDS",
    "REFUSALS",
    "BeginSearch",
    "CommandFlag",
    "CommandSpec",
    "FindKeys",
    "KeyFlag",
    "KeySpec",
    "block_timeout",
    "command_keys",
    "is_idempotent_read",
    "lookup",
    "refusal",
]


class CommandFlag(enum.IntFlag):
    """What a command is, for governance.

    Most flags are redis-server's own ``COMMAND`` flags under our names; the rest are ours,
    derived from names, ACL categories and tips, because the server's vocabulary answers
    *server* questions (may it run during loading?) and the gateway has its own (does it pin a
    connection?).

    Server flags (``COMMAND`` reply, Redis 7):
        READONLY, WRITE: reads only / may modify the keyspace. Neither is set on commands that
            touch no data (``PING``, ``CLIENT ...``).
        DENYOOM: refused by the server when over ``maxmemory``.
        ADMIN: an administrative command (``@admin``).
        NOSCRIPT: not allowed inside Lua scripts or functions.
        LOADING_OK, STALE_OK: allowed while the server loads its dataset / on a replica that
            lost its master (the server's ``loading`` and ``stale``).
        SKIP_MONITOR, SKIP_SLOWLOG, FAST, NO_AUTH, MAY_REPLICATE, NO_MANDATORY_KEYS,
        NO_ASYNC_LOADING, NO_MULTI, ALLOW_BUSY, ASKING, MODULE: as in redis ``server.h``.
        MOVABLE_KEYS: key positions depend on the arguments (``EVAL``'s numkeys, ``XREAD``'s
            ``STREAMS``); ``command_keys`` handles them.

    Server tips:
        NONDETERMINISTIC (alias RANDOM): the reply may differ between identical calls
            (``RANDOMKEY``, ``SRANDMEMBER``, ``SCAN``...). Not a reason to refuse a retry on its
            own: a read with a random answer is still safe to repeat.
        NONDETERMINISTIC_ORDER: same elements, any order (``SMEMBERS``, ``KEYS``).

    Our own:
        BLOCKING: may block the connection waiting for data or replication: the server's
            ``blocking`` (``BLPOP``, ``BRPOP``, ``BLMOVE``, ``BRPOPLPUSH``, ``BZPOPMIN``/``MAX``,
            ``BLMPOP``, ``BZMPOP``, ``XREAD``, ``XREADGROUP``) plus ``WAIT`` and ``WAITAOF``,
            which the server does not flag but which hold the connection just the same.
            ``XREAD``/``XREADGROUP`` block only with ``BLOCK``: ``block_timeout`` answers per
            call.
        PUBSUB: enters or leaves subscriber mode (``SUBSCRIBE``, ``PSUBSCRIBE``,
            ``SSUBSCRIBE`` and their ``UNSUBSCRIBE`` forms), so the connection is pinned and
            replies stop matching requests one to one. ``PUBLISH``/``SPUBLISH``/``PUBSUB ...``
            are ordinary request/reply commands and do not carry it.
        TRANSACTION: ``MULTI``, ``EXEC``, ``DISCARD``, ``WATCH``, ``UNWATCH``: session state the
            gateway must pin.
        SCRIPTING: ``EVAL*``, ``EVALSHA*``, ``FCALL*``, ``SCRIPT ...``, ``FUNCTION ...``.
        CONNECTION: acts on the client connection rather than on data (``AUTH``, ``HELLO``,
            ``SELECT``, ``CLIENT ...``, ``QUIT``, ``RESET``, ``PING``, ``ECHO``); the gateway
            answers or tracks these itself.
        CONTAINER: a command family (``CLIENT``, ``CONFIG``, ``OBJECT``...) whose real spec is
            the subcommand's; ``lookup`` returns the container only when the subcommand is
            missing or unknown, and the server then answers with its own error.
    """

    NONE = 0
    READONLY = 1 << 0
    WRITE = 1 << 1
    DENYOOM = 1 << 2
    ADMIN = 1 << 3
    NOSCRIPT = 1 << 4
    LOADING_OK = 1 << 5
    STALE_OK = 1 << 6
    SKIP_MONITOR = 1 << 7
    SKIP_SLOWLOG = 1 << 8
    FAST = 1 << 9
    NO_AUTH = 1 << 10
    MAY_REPLICATE = 1 << 11
    NO_MANDATORY_KEYS = 1 << 12
    NO_ASYNC_LOADING = 1 << 13
    NO_MULTI = 1 << 14
    ALLOW_BUSY = 1 << 15
    ASKING = 1 << 16
    MODULE = 1 << 17
    MOVABLE_KEYS = 1 << 18
    NONDETERMINISTIC = 1 << 19
    RANDOM = NONDETERMINISTIC
    NONDETERMINISTIC_ORDER = 1 << 20
    BLOCKING = 1 << 21
    PUBSUB = 1 << 22
    TRANSACTION = 1 << 23
    SCRIPTING = 1 << 24
    CONNECTION = 1 << 25
    CONTAINER = 1 << 26


class KeyFlag(enum.IntFlag):
    """How a command uses the keys of one key spec (redis ``server.h``, ``CMD_KEY_*``).

    ``RO``/``RW``/``OW``/``RM`` say what happens to the key as a whole (read, read-write,
    overwrite, remove); ``ACCESS``/``UPDATE``/``INSERT``/``DELETE`` what happens to its content.
    ``NOT_KEY`` marks a spec that names a shard channel, not a key (``SPUBLISH``), which
    ``command_keys`` skips like ``COMMAND GETKEYS`` does. ``INCOMPLETE`` and ``VARIABLE_FLAGS``
    tell that the spec alone is not the whole story.
    """

    NONE = 0
    RO = 1 << 0
    RW = 1 << 1
    OW = 1 << 2
    RM = 1 << 3
    ACCESS = 1 << 4
    UPDATE = 1 << 5
    INSERT = 1 << 6
    DELETE = 1 << 7
    NOT_KEY = 1 << 8
    INCOMPLETE = 1 << 9
    VARIABLE_FLAGS = 1 << 10


class BeginSearch(enum.Enum):
    """Where a key spec's first key is: at a fixed index, after a keyword, or unknowable."""

    INDEX = "index"
    KEYWORD = "keyword"
    UNKNOWN = "unknown"


class FindKeys(enum.Enum):
    """How many keys follow the first: a range, a count argument (numkeys), or unknowable."""

    RANGE = "range"
    KEYNUM = "keynum"
    UNKNOWN = "unknown"


@final
@dataclass(frozen=True, slots=True)
class KeySpec:
    """One of a command's key specs, as redis-server describes it (``COMMAND INFO``).

    Attributes:
        begin: how to find the first key.
        begin_at: ``INDEX``: argv position of the first key. ``KEYWORD``: where the keyword search
            starts; negative counts from the end and searches backwards (``MIGRATE ... KEYS``).
        keyword: ``KEYWORD`` only: the upper-case keyword that precedes the keys.
        find: how to find the remaining keys.
        last_key: ``RANGE``: last key relative to the first; negative counts from the end of the
            arguments.
        key_step: ``RANGE`` and ``KEYNUM``: distance between keys (2 for ``MSET``'s key/value).
        limit: ``RANGE`` with ``last_key == -1``: only ``1/limit`` of the remaining arguments are
            keys (``XREAD ... STREAMS k1 k2 id1 id2`` has limit 2).
        numkeys_at: ``KEYNUM``: position of the key count relative to the begin position.
        first_key: ``KEYNUM``: position of the first key relative to the begin position.
        flags: how the keys are used.
    """

    begin: BeginSearch
    begin_at: int = 0
    keyword: bytes = b""
    find: FindKeys = FindKeys.RANGE
    last_key: int = 0
    key_step: int = 1
    limit: int = 0
    numkeys_at: int = 0
    first_key: int = 1
    flags: KeyFlag = KeyFlag.NONE

    @property
    def is_simple(self) -> bool:
        """Whether the keys sit at fixed or end-relative positions, so one slice finds them."""
        return (
            self.begin is BeginSearch.INDEX
            and self.find is FindKeys.RANGE
            and self.limit == 0
            and self.begin_at >= 1
            and self.key_step >= 1
        )

    def as_slice(self) -> slice:
        """The argv slice holding this spec's keys (only for ``is_simple`` specs).

        ``last_key >= 0`` is a fixed stop; ``last_key < 0`` is relative to the end, which is what
        a negative slice stop means too (``-1`` → to the end, ``-2`` → all but the last argument,
        as for ``BLPOP k1 k2 timeout``).
        """
        start = self.begin_at
        if self.last_key >= 0:
            return slice(start, start + self.last_key + 1, self.key_step)
        return slice(start, self.last_key + 1 or None, self.key_step)


#: ``args -> keys``; takes the full command line, name included.
KeyExtractor = Callable[[list[bytes]], list[bytes]]

_CONTAINER_BIT: Final = CommandFlag.CONTAINER.value
_READONLY_BIT: Final = CommandFlag.READONLY.value
_NOT_IDEMPOTENT_BITS: Final = (
    CommandFlag.BLOCKING | CommandFlag.PUBSUB | CommandFlag.TRANSACTION
).value


@final
@dataclass(frozen=True, slots=True)
class CommandSpec:
    """Everything the gateway knows about one command or subcommand.

    Attributes:
        name: upper-case, e.g. ``b"GET"``; a subcommand is ``b"CLIENT|SETNAME"`` (the server's
            own ``|`` naming).
        arity: Redis arity, counting the command name (and the subcommand name for a
            subcommand); negative means "at least ``-arity``".
        flags: see ``CommandFlag``.
        key_specs: where the keys are, in the server's order.
        acl_categories: the server's ACL categories without ``@`` (``"read"``, ``"fast"``...).
        tips: the server's command tips (``"nondeterministic_output"``,
            ``"request_policy:all_shards"``: the latter tell a sharded gateway how to fan out).
        group: the documentation group (``"string"``, ``"stream"``...).
        since: the Redis version that introduced the command.
        deprecated: the server documents the command as deprecated (``GETSET``, ``SLAVEOF``...).

    The remaining fields are derived once, here, so the hot path reads plain attributes instead
    of combining ``IntFlag`` values (an ``IntFlag`` ``&`` costs about as much as a ``lookup``).
    """

    name: bytes
    arity: int
    flags: CommandFlag
    key_specs: tuple[KeySpec, ...] = ()
    acl_categories: frozenset[str] = frozenset()
    tips: tuple[str, ...] = ()
    group: str = ""
    since: str = ""
    deprecated: bool = False
    #: ``CommandFlag.CONTAINER in flags``, as a plain bool for ``lookup``.
    container: bool = field(init=False, repr=False, compare=False)
    #: See ``is_idempotent_read``.
    idempotent_read: bool = field(init=False, repr=False, compare=False)
    #: Precompiled key extraction; see ``command_keys``.
    extract_keys: KeyExtractor = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        bits = self.flags.value
        object.__setattr__(self, "container", bool(bits & _CONTAINER_BIT))
        idempotent = bool(bits & _READONLY_BIT) and not bits & _NOT_IDEMPOTENT_BITS
        object.__setattr__(self, "idempotent_read", idempotent)
        object.__setattr__(self, "extract_keys", _compile_extractor(self.name, self.key_specs))

    @property
    def display_name(self) -> str:
        """The name as a user types it: ``"CLIENT KILL"`` for ``b"CLIENT|KILL"``."""
        return self.name.decode("ascii", "replace").replace("|", " ")


# --- argument parsing, the server's way ------------------------------------------------------

#: ``string2ll`` accepts at most 20 characters (``-9223372036854775808``).
_MAX_LL_CHARS: Final = 20
_LL_MIN: Final = -(2**63)
_LL_MAX: Final = 2**63 - 1


def _parse_ll(raw: bytes) -> int | None:
    """Parse a signed 64-bit integer exactly as redis ``string2ll`` does, or ``None``.

    Redis accepts only the canonical decimal form: no spaces, no ``+``, no leading zeros, no
    ``-0``. ``int()`` is laxer, so the result is checked by printing it back.
    """
    if not raw or len(raw) > _MAX_LL_CHARS:
        return None
    try:
        value = int(raw)
    except ValueError:
        return None
    if b"%d" % value != raw or not _LL_MIN <= value <= _LL_MAX:
        return None
    return value


def _parse_long_double(raw: bytes) -> float | None:
    """Parse a number as redis ``string2ld`` (``strtold``) does, or ``None``.

    ``strtold`` rejects leading/trailing spaces and NaN but accepts hexadecimal floats
    (``0x1p4``) and ``inf``; Python's ``float`` accepts spaces and ``1_0`` but not hex.
    """
    if not raw or raw[:1].isspace() or raw[-1:].isspace() or b"_" in raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        digits = raw.lstrip(b"+-")
        if digits[:2].lower() != b"0x" or len(raw) - len(digits) > 1:
            return None
        try:
            value = float.fromhex(raw.decode("ascii"))
        except (ValueError, UnicodeDecodeError):
            return None
    if math.isnan(value):
        return None
    return value


def _seconds_timeout(raw: bytes) -> float | None:
    """A blocking-pop timeout in seconds, as the server reads it; ``None`` when it errors.

    redis ``getTimeoutFromObjectOrReply`` with ``UNIT_SECONDS`` (7.0) computes
    ``(long long) ceill(seconds * 1000)``: sub-millisecond timeouts round *up* to 1 ms, while
    values in ``(-0.001, 0]`` round to 0, which means "forever". Values whose millisecond count
    overflows a ``long long`` (``inf``, ``1e400``) come out negative and are refused as
    "timeout is negative", as are genuinely negative ones.
    """
    seconds = _parse_long_double(raw)
    if seconds is None:
        return None
    millis = seconds * 1000.0
    if not -(2.0**63) <= millis < 2.0**63:
        return None
    whole = math.ceil(millis)
    if whole < 0:
        return None
    return math.inf if whole == 0 else whole / 1000.0


def _millis_timeout(raw: bytes) -> float | None:
    """A timeout given in integer milliseconds (``WAIT``, ``XREAD BLOCK``), in seconds."""
    millis = _parse_ll(raw)
    if millis is None or millis < 0:
        return None
    return math.inf if millis == 0 else millis / 1000.0


# --- key extraction ---------------------------------------------------------------------------


def _no_keys(args: list[bytes]) -> list[bytes]:
    return []


def _keyword_first(spec: KeySpec, args: Sequence[bytes]) -> int:
    """Position after ``spec.keyword``, or 0 when absent (redis ``getKeysUsingKeySpecs``).

    The search never looks at the last argument (moving forwards) or at argv[1] (moving
    backwards): a keyword there could not be followed by a key.
    """
    argc = len(args)
    keyword = spec.keyword
    if spec.begin_at > 0:
        position, end = spec.begin_at, argc - 1
    else:
        position, end = argc + spec.begin_at, 1
    step = 1 if position <= end else -1
    size = len(keyword)
    while position != end:
        if position >= argc or position < 1:
            break
        candidate = args[position]
        if len(candidate) == size and candidate.upper() == keyword:
            return position + 1
        position += step
    return 0


def _c_div(numerator: int, denominator: int) -> int:
    """C integer division (truncates toward zero), as the server computes range limits."""
    quotient = abs(numerator) // abs(denominator)
    return quotient if (numerator >= 0) == (denominator > 0) else -quotient


def _spec_positions(spec: KeySpec, args: Sequence[bytes]) -> range:
    """Argv positions of one spec's keys (redis ``getKeysUsingKeySpecs``, partial on errors).

    Where the server declares the whole spec invalid because the last key would lie beyond the
    arguments, we stop at the last argument instead: those keys are present and routable.
    """
    argc = len(args)
    if spec.begin is BeginSearch.INDEX:
        first = spec.begin_at
    elif spec.begin is BeginSearch.KEYWORD:
        first = _keyword_first(spec, args)
        if not first:
            return range(0)
    else:
        return range(0)
    if first < 1 or first >= argc:
        return range(0)
    if spec.find is FindKeys.RANGE:
        if spec.last_key >= 0:
            last = first + spec.last_key
        elif not spec.limit:
            last = argc + spec.last_key
        else:
            last = first + _c_div(argc - first, spec.limit) + spec.last_key
    elif spec.find is FindKeys.KEYNUM:
        numkeys_at = first + spec.numkeys_at
        if numkeys_at >= argc:
            return range(0)
        numkeys = _parse_ll(args[numkeys_at])
        if numkeys is None or numkeys < 0:
            return range(0)
        first += spec.first_key
        # numkeys counts keys, not arguments (later Redis releases agree; every 7.0 numkeys
        # spec has keystep 1, where the two readings coincide).
        last = first + (numkeys - 1) * max(spec.key_step, 1)
    else:
        return range(0)
    return range(first, min(last, argc - 1) + 1, max(spec.key_step, 1))


def _sort_keys(args: list[bytes]) -> list[bytes]:
    """``SORT key ... [STORE destination]`` (redis ``sortGetKeys``).

    The option scan skips ``LIMIT``'s two arguments and ``BY``/``GET``'s one, so a pattern
    that happens to read "store" is not mistaken for the option; the last ``STORE`` wins, as in
    ``SORT`` itself. ``BY``/``GET`` patterns name keys only through the sorted data, which no
    proxy can know, so they are not keys here (nor in ``COMMAND GETKEYS``).
    """
    argc = len(args)
    if argc < 2:
        return []
    store = 0
    position = 2
    while position < argc:
        option = args[position].upper()
        if option == b"LIMIT":
            position += 2
        elif option in (b"GET", b"BY"):
            position += 1
        elif option == b"STORE" and position + 1 < argc:
            store = position + 1
        position += 1
    return [args[1], args[store]] if store else [args[1]]


def _sort_ro_keys(args: list[bytes]) -> list[bytes]:
    """``SORT_RO key ...`` (redis ``sortROGetKeys``): only the sorted key."""
    return args[1:2]


#: ``MIGRATE`` options and how many arguments follow each (redis ``migrateGetKeys``).
_MIGRATE_OPTION_ARGS: Final[Mapping[bytes, int]] = {
    b"COPY": 0,
    b"REPLACE": 0,
    b"AUTH": 1,
    b"AUTH2": 2,
}


def _migrate_keys(args: list[bytes]) -> list[bytes]:
    """``MIGRATE host port key|"" db timeout [COPY] [REPLACE] [AUTH ...] [KEYS k ...]``.

    The ``KEYS`` form requires the single-key slot to be the empty string; with both a key and
    ``KEYS`` the command is a syntax error and, like redis 7.0's ``migrateGetKeys``, we report
    no keys rather than guess which form was meant. ``AUTH``/``AUTH2`` values are skipped, so a
    password that reads "keys" is not taken for the option.
    """
    argc = len(args)
    position = 6
    while position < argc:
        option = args[position].upper()
        if option == b"KEYS":
            return [] if args[3] else args[position + 1 :]
        position += _MIGRATE_OPTION_ARGS.get(option, 0) + 1
    return args[3:4]


#: Commands whose key specs the server itself does not trust (``unknown`` or ``incomplete``
#: specs), so ``COMMAND GETKEYS`` runs a hand-written parser instead; these are ours.
_KEY_PROCS: Final[Mapping[bytes, KeyExtractor]] = {
    b"SORT": _sort_keys,
    b"SORT_RO": _sort_ro_keys,
    b"MIGRATE": _migrate_keys,
}


def _needs_proc(key_specs: Sequence[KeySpec]) -> bool:
    """Whether the server would fall back to the command's own key parser."""
    return any(
        spec.begin is BeginSearch.UNKNOWN
        or spec.find is FindKeys.UNKNOWN
        or KeyFlag.INCOMPLETE in spec.flags
        for spec in key_specs
        if KeyFlag.NOT_KEY not in spec.flags
    )


def _compile_spec(spec: KeySpec) -> KeyExtractor:
    """One spec's extractor: a precomputed slice, a numkeys slice, or the general search."""
    if spec.is_simple:
        keys = spec.as_slice()
        return lambda args: args[keys]
    if spec.begin is BeginSearch.INDEX and spec.find is FindKeys.KEYNUM and spec.begin_at >= 1:
        numkeys_at = spec.begin_at + spec.numkeys_at
        first = spec.begin_at + spec.first_key
        step = max(spec.key_step, 1)

        def by_count(args: list[bytes]) -> list[bytes]:
            if numkeys_at >= len(args):
                return []
            numkeys = _parse_ll(args[numkeys_at])
            if numkeys is None or numkeys <= 0:
                return []
            return args[first : first + (numkeys - 1) * step + 1 : step]

        return by_count

    def search(args: list[bytes]) -> list[bytes]:
        found = _spec_positions(spec, args)
        return args[found.start : found.stop : found.step]

    return search


def _compile_extractor(name: bytes, key_specs: Sequence[KeySpec]) -> KeyExtractor:
    """Build the fastest correct key extractor for one command, once, at import.

    Fixed/end-relative specs become precomputed slices (one slice for ``GET``, ``MGET``,
    ``MSET``, ``DEL``...), numkeys specs a slice sized by the count, keyword specs go through
    ``_spec_positions``; commands with untrusted specs use their ``_KEY_PROCS`` parser, like the
    server. ``SET`` and ``BITFIELD`` have ``VARIABLE_FLAGS`` specs, which the server also hands
    to a parser, but that parser only changes the key's *flags*, never its position, so their
    specs serve as is.
    """
    proc = _KEY_PROCS.get(name)
    if proc is not None:
        return proc
    specs = tuple(spec for spec in key_specs if KeyFlag.NOT_KEY not in spec.flags)
    if _needs_proc(specs):
        # No parser for a spec the server does not trust: use what the trusted specs give.
        specs = tuple(spec for spec in specs if not _needs_proc((spec,)))
    parts = tuple(_compile_spec(spec) for spec in specs)
    if not parts:
        return _no_keys
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:
        one, two = parts
        return lambda args: one(args) + two(args)
    return lambda args: [key for part in parts for key in part(args)]


# --- the table ---------------------------------------------------------------------------------

_SERVER_FLAGS: Final[Mapping[str, CommandFlag]] = {
    "readonly": CommandFlag.READONLY,
    "write": CommandFlag.WRITE,
    "denyoom": CommandFlag.DENYOOM,
    "admin": CommandFlag.ADMIN,
    "noscript": CommandFlag.NOSCRIPT,
    "loading": CommandFlag.LOADING_OK,
    "stale": CommandFlag.STALE_OK,
    "skip_monitor": CommandFlag.SKIP_MONITOR,
    "skip_slowlog": CommandFlag.SKIP_SLOWLOG,
    "fast": CommandFlag.FAST,
    "no_auth": CommandFlag.NO_AUTH,
    "may_replicate": CommandFlag.MAY_REPLICATE,
    "no_mandatory_keys": CommandFlag.NO_MANDATORY_KEYS,
    "no_async_loading": CommandFlag.NO_ASYNC_LOADING,
    "no_multi": CommandFlag.NO_MULTI,
    "allow_busy": CommandFlag.ALLOW_BUSY,
    "asking": CommandFlag.ASKING,
    "module": CommandFlag.MODULE,
    "movablekeys": CommandFlag.MOVABLE_KEYS,
    "blocking": CommandFlag.BLOCKING,
    # The server's ``pubsub`` also covers PUBLISH and PUBSUB CHANNELS; ours is narrower
    # (subscriber mode), so it is derived from names below. Sentinel flags do not apply.
    "pubsub": CommandFlag.NONE,
    "sentinel": CommandFlag.NONE,
    "only_sentinel": CommandFlag.NONE,
}

_TIP_FLAGS: Final[Mapping[str, CommandFlag]] = {
    "nondeterministic_output": CommandFlag.NONDETERMINISTIC,
    "nondeterministic_output_order": CommandFlag.NONDETERMINISTIC_ORDER,
}

_KEY_FLAGS: Final[Mapping[str, KeyFlag]] = {
    "RO": KeyFlag.RO,
    "RW": KeyFlag.RW,
    "OW": KeyFlag.OW,
    "RM": KeyFlag.RM,
    "access": KeyFlag.ACCESS,
    "update": KeyFlag.UPDATE,
    "insert": KeyFlag.INSERT,
    "delete": KeyFlag.DELETE,
    "not_key": KeyFlag.NOT_KEY,
    "incomplete": KeyFlag.INCOMPLETE,
    "variable_flags": KeyFlag.VARIABLE_FLAGS,
}

_NAMED_FLAGS: Final[Mapping[bytes, CommandFlag]] = {
    # Blocking without the server's flag: both hold the connection until replicas acknowledge.
    b"WAIT": CommandFlag.BLOCKING,
    b"WAITAOF": CommandFlag.BLOCKING,
    **dict.fromkeys(
        (
            b"SUBSCRIBE",
            b"PSUBSCRIBE",
            b"SSUBSCRIBE",
            b"UNSUBSCRIBE",
            b"PUNSUBSCRIBE",
            b"SUNSUBSCRIBE",
        ),
        CommandFlag.PUBSUB,
    ),
    **dict.fromkeys((b"MULTI", b"EXEC", b"DISCARD", b"WATCH", b"UNWATCH"), CommandFlag.TRANSACTION),
    **dict.fromkeys(
        (b"AUTH", b"HELLO", b"SELECT", b"CLIENT", b"QUIT", b"RESET", b"PING", b"ECHO"),
        CommandFlag.CONNECTION,
    ),
    b"SCRIPT": CommandFlag.SCRIPTING,
    b"FUNCTION": CommandFlag.SCRIPTING,
}


def _key_spec(row: _command_data.KeySpecRow) -> KeySpec:
    begin, at, keyword, find, a, b, c, flag_names = row
    # Plain ints while combining: IntFlag's ``|`` goes through the enum machinery each time.
    bits = 0
    for flag_name in flag_names:
        bits |= _KEY_FLAGS.get(flag_name, KeyFlag.NONE).value
    flags = KeyFlag(bits)
    find_kind = FindKeys(find)
    if find_kind is FindKeys.KEYNUM:
        return KeySpec(
            BeginSearch(begin),
            at,
            keyword.upper().encode(),
            find_kind,
            numkeys_at=a,
            first_key=b,
            key_step=c,
            flags=flags,
        )
    return KeySpec(
        BeginSearch(begin),
        at,
        keyword.upper().encode(),
        find_kind,
        last_key=a,
        key_step=b,
        limit=c,
        flags=flags,
    )


def _spec(row_name: str, row: _command_data.CommandRow, containers: frozenset[str]) -> CommandSpec:
    arity, server_flags, categories, tips, key_rows, group, since, doc_flags = row
    name = row_name.upper().encode()
    family = name.split(b"|", 1)[0]
    bits = 0
    for flag_name in server_flags:
        bits |= _SERVER_FLAGS.get(flag_name, CommandFlag.NONE).value
    for tip in tips:
        bits |= _TIP_FLAGS.get(tip, CommandFlag.NONE).value
    bits |= _NAMED_FLAGS.get(name, CommandFlag.NONE).value
    bits |= _NAMED_FLAGS.get(family, CommandFlag.NONE).value
    if "scripting" in categories:
        bits |= CommandFlag.SCRIPTING.value
    if row_name in containers:
        bits |= CommandFlag.CONTAINER.value
    return CommandSpec(
        name=name,
        arity=arity,
        flags=CommandFlag(bits),
        key_specs=tuple(_key_spec(key_row) for key_row in key_rows),
        acl_categories=frozenset(categories),
        tips=tips,
        group=group,
        since=since,
        deprecated="deprecated" in doc_flags,
    )


def _build() -> tuple[
    dict[bytes, CommandSpec], dict[bytes, dict[bytes, CommandSpec]], dict[bytes, CommandSpec]
]:
    rows = {**_command_data.SUPPLEMENT, **_command_data.COMMANDS}
    containers = frozenset(name.split("|", 1)[0] for name in rows if "|" in name)
    canonical: dict[bytes, CommandSpec] = {}
    for row_name, row in rows.items():
        spec = _spec(row_name, row, containers)
        canonical[spec.name] = spec
    # Both spellings clients actually send, so the usual case is a single dict hit.
    top: dict[bytes, CommandSpec] = {}
    subcommands: dict[bytes, dict[bytes, CommandSpec]] = {}
    for name, spec in canonical.items():
        family, _, sub = name.partition(b"|")
        if sub:
            table = subcommands.setdefault(family, {})
            table[sub] = table[sub.lower()] = spec
        else:
            top[name] = top[name.lower()] = spec
    return top, subcommands, canonical


_BY_NAME, _SUBCOMMANDS, _CANONICAL = _build()

#: Every command and subcommand by canonical name (``b"GET"``, ``b"CLIENT|SETNAME"``).
COMMANDS: Final[Mapping[bytes, CommandSpec]] = types.MappingProxyType(_CANONICAL)


def lookup(args: Sequence[bytes]) -> CommandSpec | None:
    """The spec for a command line, or ``None`` for a command the table does not know.

    Case-insensitive, like the server. A container command (``CLIENT``, ``CONFIG``, ``OBJECT``,
    ``XINFO``...) resolves to its subcommand from ``args[1]``; when the subcommand is missing or
    unknown the container's own spec is returned, so the gateway can forward the command and let
    the server answer with its usual error ("unknown subcommand", "wrong number of arguments").
    """
    if not args:
        return None
    name = args[0]
    spec = _BY_NAME.get(name)
    if spec is None:
        spec = _BY_NAME.get(name.upper())
        if spec is None:
            return None
    if spec.container and len(args) > 1:
        table = _SUBCOMMANDS[spec.name]
        sub = args[1]
        found = table.get(sub)
        if found is None:
            found = table.get(sub.upper())
        if found is not None:
            return found
    return spec


def command_keys(spec: CommandSpec, args: list[bytes]) -> list[bytes]:
    """Every key the command touches, in the order ``COMMAND GETKEYS`` gives them.

    Includes movable keys (``EVAL``/``FCALL`` numkeys, ``ZUNIONSTORE`` destination and
    sources, ``LMPOP``/``ZMPOP``/``SINTERCARD`` numkeys, ``XREAD ... STREAMS``,
    ``SORT ... STORE``, ``MIGRATE ... KEYS``, ``GEORADIUS ... STORE/STOREDIST``, keys of
    subcommands such as ``OBJECT ENCODING`` or ``MEMORY USAGE``). Shard channels
    (``SPUBLISH``) are not keys. Never raises: on malformed arguments it returns the keys that
    can be found and leaves the error to the server. ``args`` includes the command name (and the
    subcommand name), exactly as sent.
    """
    return spec.extract_keys(args)


def is_idempotent_read(spec: CommandSpec, args: Sequence[bytes] | None = None) -> bool:
    """Whether the call may be retried on another node or hedged (sent twice).

    True for ``READONLY`` commands that neither block nor change session state: repeating them
    changes nothing on any node, so failover and backup requests are safe. Blocking reads are
    excluded because a second copy would wait (and possibly consume, for ``XREADGROUP``, which
    is a write anyway) on its own; pub/sub and transaction commands because they belong to a
    pinned session. Random-looking reads (``RANDOMKEY``, ``SRANDMEMBER``) stay idempotent: any
    answer is a correct one, and random commands with side effects (``SPOP``) are writes.
    ``EVAL_RO``/``FCALL_RO`` count as reads, since the server forbids them to write.

    With ``args``, ``XREAD`` without ``BLOCK`` is recognised as a plain read.
    """
    if spec.idempotent_read:
        return True
    return args is not None and spec.name == b"XREAD" and not _has_block_option(args)


def _arity_ok(arity: int, argc: int) -> bool:
    return argc == arity if arity >= 0 else argc >= -arity


def _xread_timeout(args: Sequence[bytes], *, group: bool) -> float | None:
    """``XREAD``/``XREADGROUP``'s ``BLOCK`` in seconds; ``None`` if it will not block.

    Parses options like redis ``xreadCommand``: an option error, an unbalanced ``STREAMS``
    list or a missing ``GROUP`` makes the server answer at once. ``XREADGROUP`` serves pending
    history immediately for any ID other than ``>``, so it blocks only when every ID is ``>``.
    """
    argc = len(args)
    timeout: float | None = None
    has_group = False
    position = 1
    while position < argc:
        more = argc - position - 1
        option = args[position].upper()
        if option == b"BLOCK" and more:
            position += 1
            timeout = _millis_timeout(args[position])
            if timeout is None:
                return None
        elif option == b"COUNT" and more:
            position += 1
            if _parse_ll(args[position]) is None:
                return None
        elif option == b"STREAMS" and more:
            streams = args[position + 1 :]
            if len(streams) % 2 or (group and not has_group):
                return None
            if group and any(stream_id != b">" for stream_id in streams[len(streams) // 2 :]):
                return None
            return timeout
        elif option == b"GROUP" and more >= 2 and group:
            has_group = True
            position += 2
        elif not (option == b"NOACK" and group):
            return None
        position += 1
    return None


def _has_block_option(args: Sequence[bytes]) -> bool:
    """Whether ``BLOCK`` appears among XREAD's options (before ``STREAMS``), valid or not.

    Deliberately cruder than ``_xread_timeout``: when in doubt, ``is_idempotent_read`` must
    answer "not a plain read".
    """
    for option in args[1:]:
        upper = option.upper()
        if upper == b"STREAMS":
            return False
        if upper == b"BLOCK":
            return True
    return False


def _last_arg_seconds(args: Sequence[bytes]) -> float | None:
    return _seconds_timeout(args[-1])


def _first_arg_seconds(args: Sequence[bytes]) -> float | None:
    return _seconds_timeout(args[1])


#: Where each blocking command keeps its own timeout, and in what unit.
_BLOCK_TIMEOUTS: Final[Mapping[bytes, Callable[[Sequence[bytes]], float | None]]] = {
    b"BLPOP": _last_arg_seconds,
    b"BRPOP": _last_arg_seconds,
    b"BRPOPLPUSH": _last_arg_seconds,
    b"BLMOVE": _last_arg_seconds,
    b"BZPOPMIN": _last_arg_seconds,
    b"BZPOPMAX": _last_arg_seconds,
    b"BLMPOP": _first_arg_seconds,
    b"BZMPOP": _first_arg_seconds,
    b"WAIT": lambda args: _millis_timeout(args[2]),
    b"WAITAOF": lambda args: _millis_timeout(args[3]),
    b"XREAD": lambda args: _xread_timeout(args, group=False),
    b"XREADGROUP": lambda args: _xread_timeout(args, group=True),
}


def block_timeout(spec: CommandSpec, args: Sequence[bytes]) -> float | None:
    """How long the command may block, in seconds, by its own arguments.

    Returns ``math.inf`` for "block forever" (a timeout of 0), and ``None`` when the command
    will not block at all: it is not a blocking command, ``XREAD`` has no ``BLOCK``, or the
    arguments are malformed so the server replies with an error at once. The gateway adds this
    to its own deadline so a long ``BLPOP`` is not mistaken for a dead node.

    Units follow the server: ``BLPOP``/``BRPOP``/``BLMOVE``/``BRPOPLPUSH``/``BZPOP*`` (last
    argument) and ``BLMPOP``/``BZMPOP`` (first argument) take seconds, fractions allowed;
    ``WAIT``/``WAITAOF`` and ``XREAD``/``XREADGROUP ... BLOCK`` take integer milliseconds.
    Inside ``MULTI`` nothing blocks; that is session state for the caller to apply.
    """
    reader = _BLOCK_TIMEOUTS.get(spec.name)
    if reader is None or not _arity_ok(spec.arity, len(args)):
        return None
    return reader(args)


# --- gateway policy: refusals ------------------------------------------------------------------

_TOPOLOGY: Final = "replication topology belongs to the registry and the operator, not to a client"
_PERSISTENCE: Final = (
    "persistence is the operator's job on each node, and the command would run on whichever "
    "node the gateway picked"
)
_DIAGNOSTICS: Final = "it would erase diagnostics the operator relies on for a shared node"
_SHARED_CONNECTION: Final = (
    "it would change a backend connection the gateway shares between clients"
)
_TRACKING: Final = (
    "client-side caching needs invalidation messages on the client's own backend connection, "
    "and the gateway shares its backend connections"
)

#: Commands refused whole, with the reason shown to the client.
_REFUSED_COMMANDS: Final[Mapping[str, str]] = {
    "MONITOR": "it would observe a shared backend connection, other applications' traffic included",
    "SHUTDOWN": "it would stop a backend node shared by every application behind the gateway",
    "DEBUG": "it can crash, stall or rewrite a shared backend node",
    "REPLICAOF": _TOPOLOGY,
    "SLAVEOF": _TOPOLOGY,
    "FAILOVER": _TOPOLOGY,
    "SYNC": "it is the replication protocol between servers; replicas connect to nodes directly",
    "PSYNC": "it is the replication protocol between servers; replicas connect to nodes directly",
    "REPLCONF": "it is the replication protocol between servers; replicas connect to nodes "
    "directly",
    "SAVE": _PERSISTENCE,
    "BGSAVE": _PERSISTENCE,
    "BGREWRITEAOF": _PERSISTENCE,
    "MIGRATE": "it moves keys to a server address chosen by the client, around the gateway's "
    "routing",
    "SWAPDB": "it swaps whole databases under every application sharing the node, and cannot "
    "be applied atomically across the gateway's nodes",
}

#: Subcommands refused, with the reason.
_REFUSED_SUBCOMMANDS: Final[Mapping[str, str]] = {
    "CLIENT|KILL": "it would close connections on a shared backend node, the gateway's own "
    "pooled connections and other applications' included",
    "CLIENT|PAUSE": "it would pause every client of a shared backend node",
    "CLIENT|UNPAUSE": "pausing and resuming a shared backend node is the operator's job",
    "CLIENT|UNBLOCK": "backend client ids belong to the gateway's pooled connections, not to "
    "this client",
    "CLIENT|REPLY": "the gateway pairs every request with its reply on a shared backend "
    "connection; suppressed replies would desynchronise it",
    "CLIENT|TRACKING": _TRACKING,
    "CLIENT|CACHING": _TRACKING,
    "CLIENT|NO-EVICT": _SHARED_CONNECTION,
    "CLIENT|NO-TOUCH": _SHARED_CONNECTION,
    "CONFIG|SET": "it would change the configuration of a shared backend node (CONFIG GET is "
    "allowed)",
    "CONFIG|REWRITE": "it would rewrite the configuration file of a shared backend node",
    "CONFIG|RESETSTAT": _DIAGNOSTICS,
    "LATENCY|RESET": _DIAGNOSTICS,
    "SLOWLOG|RESET": _DIAGNOSTICS,
    "SCRIPT|DEBUG": "the Lua debugger takes over the backend connection with its own "
    "conversation (SCRIPT DEBUG NO is allowed)",
}

#: Families refused except for a few harmless subcommands: (reason, allowed subcommands).
_REFUSED_FAMILIES: Final[Mapping[str, tuple[str, frozenset[str]]]] = {
    "CLUSTER": (
        "the gateway presents one non-cluster Redis; cluster topology and slots stay behind it "
        "(CLUSTER KEYSLOT is allowed)",
        frozenset({"KEYSLOT", "HELP"}),
    ),
    "ACL": (
        "backend users belong to the operator; applications authenticate with the gateway's "
        "own users (ACL CAT, GENPASS and HELP are allowed)",
        frozenset({"CAT", "GENPASS", "HELP"}),
    ),
    "MODULE": (
        "loading server code into a shared node is the operator's job (MODULE LIST is allowed)",
        frozenset({"LIST", "HELP"}),
    ),
}

#: Arguments that make an otherwise refused subcommand harmless.
_ALLOWED_FORMS: Final[Mapping[bytes, Callable[[Sequence[bytes]], bool]]] = {
    # CLIENT REPLY ON is the default state: nothing to desynchronise.
    b"CLIENT|REPLY": lambda args: len(args) == 3 and args[2].upper() == b"ON",
    b"SCRIPT|DEBUG": lambda args: len(args) == 3 and args[2].upper() == b"NO",
}


def _refusal_reasons() -> dict[bytes, str]:
    reasons: dict[bytes, str] = {}
    for listed, reason in (*_REFUSED_COMMANDS.items(), *_REFUSED_SUBCOMMANDS.items()):
        reasons[listed.encode()] = reason
    for family, (reason, allowed) in _REFUSED_FAMILIES.items():
        reasons[family.encode()] = reason
        for name in _CANONICAL:
            container, _, sub = name.partition(b"|")
            if sub and container == family.encode() and sub.decode() not in allowed:
                reasons[name] = reason
    return reasons


#: Why the gateway refuses each refused command (canonical name → reason).
#:
#: The policy, in short: refuse what acts on the *shared node or its connections* rather than
#: on the application's data (MONITOR, SHUTDOWN, DEBUG, persistence, replication, CONFIG SET,
#: cluster and ACL administration, CLIENT KILL/PAUSE/REPLY/TRACKING), what routes around the
#: gateway (MIGRATE), and what cannot mean the same thing through it (SWAPDB across nodes,
#: CLIENT UNBLOCK by backend id). Data commands stay allowed even when destructive:
#: FLUSHALL/FLUSHDB are how applications reset caches and test fixtures, and guarding data is
#: the job of per-user permissions, not of a protocol refusal. OBJECT FREQ, SCRIPT/FUNCTION
#: KILL (recovering from BUSY), CONFIG GET, INFO, SLOWLOG GET are allowed. CLIENT SETNAME,
#: GETNAME, ID, SETINFO, INFO and LIST are not refused either: the gateway answers them itself.
#: WAIT/WAITAOF are allowed but only meaningful when the client's writes used the same backend
#: connection, which a pinned session guarantees and a shared pool does not.
REFUSALS: Final[Mapping[bytes, str]] = types.MappingProxyType(_refusal_reasons())

_REFUSAL_MESSAGES: Final[Mapping[bytes, str]] = {
    name: "ERR command '{}' is not supported through the resmesh gateway: {}".format(
        name.decode().replace("|", " "), reason
    )
    for name, reason in REFUSALS.items()
}


def refusal(spec: CommandSpec, args: Sequence[bytes]) -> str | None:
    """The error to answer instead of forwarding the command, or ``None`` to forward it.

    The text is a complete RESP error message (``"ERR command 'MONITOR' is not supported
    through the resmesh gateway: ..."``) naming the command and the reason, the way twemproxy
    and Envoy's Redis proxy refuse commands, so an operator reading an application log knows at
    once it was the gateway, and why. See ``REFUSALS`` for the policy.
    """
    message = _REFUSAL_MESSAGES.get(spec.name)
    if message is None:
        return None
    allowed = _ALLOWED_FORMS.get(spec.name)
    if allowed is not None and allowed(args):
        return None
    return message
