"""Typed RESP2/RESP3 values: what :mod:`.parser` produces and :mod:`.writer` encodes.

Why one class per wire type rather than plain Python values: the gateway must be able to re-encode
a reply *exactly* as the backend sent it (``+OK`` and ``$2\\r\\nOK`` are different replies to a
client, ``$-1``, ``*-1`` and ``_`` are three different nulls, a RESP3 ``,1.50`` double is not the
same bytes as ``,1.5``). Plain ``bytes``/``None``/``float`` collapse those distinctions, which is
exactly what hiredis does (see :class:`.parser.HiredisReplyParser`).

Every value is a frozen, slotted dataclass (hashable, so a :class:`Map` converts to a ``dict``
whatever its keys). Construction validates what could make the value unencodable (a simple string
holding CR or LF, an integer outside int64, a malformed double) and raises
:class:`~resmesh.protocols._errors.LocalProtocolError`: building such a value is a bug on our
side, never the peer's fault (the parser raises
:class:`~resmesh.protocols._errors.RemoteProtocolError` before it would construct one).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Final, TypeAlias

from .._errors import LocalProtocolError

__all__ = [
    "NULL",
    "NULL_ARRAY",
    "NULL_BULK",
    "Array",
    "Attributed",
    "BigNumber",
    "BlobError",
    "Boolean",
    "BulkString",
    "Double",
    "Integer",
    "Map",
    "Null",
    "NullKind",
    "Push",
    "Set",
    "SimpleError",
    "SimpleString",
    "Value",
    "VerbatimString",
]

#: RESP integers are signed 64-bit (redis-server's ``long long``; hiredis rejects anything wider).
INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1

#: CPython refuses int <-> str conversions above 4300 digits (``sys.get_int_max_str_digits``), so
#: a big number beyond that could be neither parsed nor encoded without changing a global setting.
BIG_NUMBER_MAX_DIGITS: Final = 4300
_BIG_NUMBER_BOUND: Final = 10**BIG_NUMBER_MAX_DIGITS

#: RESP3 double text: ``inf``/``-inf``/``nan`` (any case, as hiredis accepts) or a decimal number
#: with an optional exponent. Stricter than ``float()``, which also takes ``1_0``, ``infinity``
#: and surrounding blanks, none of which a RESP3 server emits.
_DOUBLE_RE: Final = re.compile(
    rb"[+-]?(?:[iI][nN][fF]|[nN][aA][nN]|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)"
)


#: ``object.__setattr__``: how a frozen dataclass's own ``__init__`` sets its fields.
_set: Final = object.__setattr__


def _line_error(text: bytes, what: str) -> LocalProtocolError:
    return LocalProtocolError(f"ERR {what} must not contain CR or LF: {text[:40]!r}")


def is_double_text(text: bytes) -> bool:
    """Whether ``text`` is a valid RESP3 double (the bytes between ``,`` and CRLF)."""
    return _DOUBLE_RE.fullmatch(text) is not None


# The hot scalars (simple strings, errors, integers) validate in a hand-written ``__init__``:
# a ``__post_init__`` would cost a second Python call per value. ``13 in value`` (an int needle)
# is a memchr; ``b"\\r" in value`` would first try, and fail, to read the needle as an int.


@dataclass(frozen=True, slots=True, init=False)
class SimpleString:
    """``+<text>\\r\\n``: a status reply such as ``+OK``. Never holds CR or LF."""

    value: bytes

    def __init__(self, value: bytes) -> None:
        if 13 in value or 10 in value:
            raise _line_error(value, "a simple string")
        _set(self, "value", value)


@dataclass(frozen=True, slots=True, init=False)
class SimpleError:
    """``-<text>\\r\\n``: an error reply such as ``-WRONGTYPE Operation against a key...``.

    A value, not an exception: an error reply is a normal answer to one command in a pipeline.
    """

    value: bytes

    def __init__(self, value: bytes) -> None:
        if 13 in value or 10 in value:
            raise _line_error(value, "an error")
        _set(self, "value", value)

    @property
    def code(self) -> bytes:
        """The error's first word (``b"WRONGTYPE"``): what clients and ``Outcome`` key on."""
        return self.value.split(b" ", 1)[0]


@dataclass(frozen=True, slots=True, init=False)
class Integer:
    """``:<n>\\r\\n``: a signed 64-bit integer."""

    value: int

    def __init__(self, value: int) -> None:
        if not INT64_MIN <= value <= INT64_MAX:
            raise LocalProtocolError(f"ERR integer reply out of int64 range: {value}")
        _set(self, "value", value)


@dataclass(frozen=True, slots=True)
class BulkString:
    """``$<len>\\r\\n<bytes>\\r\\n``: a binary-safe string."""

    value: bytes


class NullKind(enum.Enum):
    """Which of RESP's three nulls this is; each re-encodes to its own bytes.

    Why keep them apart: a RESP2 client expects ``*-1`` (not ``$-1``) for a timed-out ``BLPOP``
    and for an aborted ``EXEC``, and a RESP2 client cannot parse ``_`` at all.
    """

    BULK = "$-1"
    ARRAY = "*-1"
    RESP3 = "_"


@dataclass(frozen=True, slots=True)
class Null:
    """A null reply: RESP2 null bulk ``$-1``, RESP2 null array ``*-1`` or RESP3 ``_``."""

    kind: NullKind = NullKind.RESP3


@dataclass(frozen=True, slots=True)
class Array:
    """``*<n>\\r\\n`` followed by ``n`` values."""

    items: tuple[Value, ...]


@dataclass(frozen=True, slots=True)
class Boolean:
    """RESP3 ``#t\\r\\n`` / ``#f\\r\\n``."""

    value: bool


@dataclass(frozen=True, slots=True)
class Double:
    """RESP3 ``,<text>\\r\\n``.

    Holds the wire *text*, not a float: servers format doubles differently (Redis 6 used
    ``%.17g``, Redis 7 the shortest round-trip form), and keeping the text is the only way to
    re-encode exactly. It also makes ``nan`` equal to itself, so values compare sanely.
    Use :meth:`of` to build one from a float and :attr:`value` to read it.
    """

    text: bytes

    def __post_init__(self) -> None:
        if _DOUBLE_RE.fullmatch(self.text) is None:
            raise LocalProtocolError(f"ERR invalid double text: {self.text[:40]!r}")

    @classmethod
    def of(cls, number: float) -> Double:
        """The canonical RESP3 double for ``number`` (``inf``, ``-inf``, ``nan`` or ``repr``)."""
        if number != number:
            return cls(b"nan")
        if number in (float("inf"), float("-inf")):
            return cls(b"inf" if number > 0 else b"-inf")
        return cls(repr(float(number)).encode())

    @property
    def value(self) -> float:
        """The number as a Python float."""
        return float(self.text)


@dataclass(frozen=True, slots=True)
class BigNumber:
    """RESP3 ``(<digits>\\r\\n``: an integer of any size (up to 4300 digits, CPython's cap)."""

    value: int

    def __post_init__(self) -> None:
        if not -_BIG_NUMBER_BOUND < self.value < _BIG_NUMBER_BOUND:
            raise LocalProtocolError(
                f"ERR big number longer than {BIG_NUMBER_MAX_DIGITS} digits cannot be encoded"
            )


@dataclass(frozen=True, slots=True)
class BlobError:
    """RESP3 ``!<len>\\r\\n<bytes>\\r\\n``: a binary-safe error (may hold CR/LF)."""

    value: bytes

    @property
    def code(self) -> bytes:
        """The error's first word, as :attr:`SimpleError.code`."""
        return self.value.split(b" ", 1)[0]


@dataclass(frozen=True, slots=True)
class VerbatimString:
    """RESP3 ``=<len>\\r\\n<fmt>:<text>\\r\\n``: text with a three-byte format (``txt``, ``mkd``).

    Redis uses it for human-readable replies (``INFO``, ``LATENCY DOCTOR``) so a CLI can render
    them; a RESP2 client gets the text as a bulk string instead.
    """

    format: bytes
    text: bytes

    def __post_init__(self) -> None:
        if len(self.format) != 3:
            raise LocalProtocolError(f"ERR verbatim format must be 3 bytes: {self.format!r}")


@dataclass(frozen=True, slots=True)
class Map:
    """RESP3 ``%<n>\\r\\n`` followed by ``n`` key/value pairs.

    Pairs stay an ordered tuple, not a dict: the wire order and duplicate keys both survive a
    round trip. :meth:`to_dict` gives a dict when that is what the caller wants.
    """

    pairs: tuple[tuple[Value, Value], ...]

    def to_dict(self) -> dict[Value, Value]:
        """The pairs as a dict (later duplicates win, as they would in any client)."""
        return dict(self.pairs)


@dataclass(frozen=True, slots=True)
class Set:
    """RESP3 ``~<n>\\r\\n`` followed by ``n`` values (order and duplicates kept as sent)."""

    items: tuple[Value, ...]


@dataclass(frozen=True, slots=True)
class Push:
    """RESP3 ``><n>\\r\\n``: out-of-band data (pub/sub messages, client-side caching invalidations).

    The first item names the kind (``message``, ``invalidate``...). One push is one reply for
    framing purposes, but it answers no command.
    """

    items: tuple[Value, ...]


@dataclass(frozen=True, slots=True)
class Attributed:
    """A value preceded by a RESP3 attribute ``|<n>\\r\\n`` (``n`` key/value pairs).

    The spec attaches an attribute to the value that follows it (popularity hints, key TTLs), so
    the parser returns the pair as one value and a client that ignores attributes can just look at
    :attr:`value`. Several attributes in a row nest.
    """

    attributes: tuple[tuple[Value, Value], ...]
    value: Value


Value: TypeAlias = (
    SimpleString
    | SimpleError
    | Integer
    | BulkString
    | Null
    | Array
    | Boolean
    | Double
    | BigNumber
    | BlobError
    | VerbatimString
    | Map
    | Set
    | Push
    | Attributed
)

#: The three nulls, shared so the parser does not allocate one per null.
NULL_BULK: Final = Null(NullKind.BULK)
NULL_ARRAY: Final = Null(NullKind.ARRAY)
NULL: Final = Null(NullKind.RESP3)
