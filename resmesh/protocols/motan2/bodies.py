"""Motan2 bodies by serialization number, sans-IO: the arguments of a request, the result of a
response.

Why a module of its own: :mod:`.frames` keeps bodies opaque, because a gateway routes on the meta
and forwards the body untouched. A few policies do need the values (a fallback reply to encode, a
consistent-hash key read from an argument), and the client API and the example service must turn
Python values into bodies and back; they all go through here, naming the serialization by the
number the frame carries (byte 4, see ``protocols/motan2.md`` §2). Bodies are taken as they are
once gunzipped (:meth:`.frames.Frame.gunzip_body`).

Two serializations are supported (:data:`SUPPORTED`):

- **6, Simple**, motan-go's and motan-php's default, delegated to :mod:`.simple` with its value
  model (plain Python values plus marker types such as :class:`~.simple.Int32`).
- **3, msgpack** (https://msgpack.org/, spec: https://github.com/msgpack/msgpack/blob/master/spec.md),
  through the ``msgpack`` package. The number is reserved in the Motan2 registry and none of the
  reference implementations (motan-go https://github.com/weibocom/motan-go, Java motan, motan-php)
  implements it; resmesh offers it to applications that prefer a format every language already
  has a library for.

The shape of a body is the same for both, and for msgpack it is defined here the way Simple does
it (``protocols/motan2.md`` §4):

- a **request body** is the arguments' values back to back, with no count in front: zero
  arguments is the empty body; for msgpack that is consecutive msgpack objects, the stream form
  every msgpack library reads (a msgpack array would be one argument holding a list);
- a **response body** is exactly one value, and the **empty body is null** (motan-go writes no
  body at all when a call returns nil). :func:`encode_result` writes ``None`` as the empty body
  for both serializations, as motan-go does; a one-value null (Simple ``00``, Java's choice, or
  msgpack ``c0``) decodes to ``None`` too;
- an **exception response** has an empty body: it carries no value, its error is in the meta.

The msgpack value model is Simple's, seen through msgpack's type families:

=================================  =====================  ======================================
msgpack family (spec)              decoded as             encoded from
=================================  =====================  ======================================
nil                                ``None``               ``None``
bool                               ``bool``               ``bool``
int (fixint, uint/int 8 to 64)     ``int``                ``int``, :class:`~.simple.Byte`,
                                   (-2**63 .. 2**64-1)    :class:`~.simple.Int16`,
                                                          :class:`~.simple.Int32`
float 32, float 64                 ``float``              ``float``, :class:`~.simple.Float32`
                                                          (as float 64)
str (UTF-8)                        ``str``                ``str``
bin                                ``bytes``              ``bytes``, ``bytearray``,
                                                          ``memoryview``
array                              ``list``               ``list``, ``tuple``,
                                                          :class:`~.simple.StringArray`, any
                                                          other sequence
map                                ``dict``               ``dict``, :class:`~.simple.StringMap`,
                                                          any other mapping
ext (timestamp included)           refused                refused (``ExtType``, ``Timestamp``)
=================================  =====================  ======================================

Why the Simple marker types encode as their builtin: msgpack has no fixed-width integers (the
spec has an encoder use the smallest format that holds the number, so a decoder must read any
format into whatever type it wants: an ``int32`` is a size on the wire, not a type), and no string
map or string array apart from map and array. A :class:`~.simple.Float32` goes out as float 64,
like any ``float``: exact, where float 32 would round it. So a marker's tag is dropped, and its
range is not checked either (``Byte(300)`` is just 300): decoding msgpack yields only builtins,
and re-encoding such a value as Simple gives int64, float64, map and array tags. Integers span
what msgpack holds, -2**63 to 2**64-1, one bit more than Simple's int64.

Other choices, and why:

- **Strings must be valid UTF-8** (the spec defines str as UTF-8): an invalid one is a
  :class:`~resmesh.protocols._errors.RemoteProtocolError`, as in Simple; binary data belongs in
  bin. This also refuses binary written as str by encoders older than the spec's bin family.
- **Map keys may be any scalar** (``strict_map_key=False``: msgpack allows any key type, as Go's
  ``map[interface{}]interface{}`` does); an array or map key cannot be a dict key in Python and is
  refused, as in Simple. Duplicate keys: the last one wins.
- **Ext types are refused**, timestamps (type -1) included: they have no place in the value model,
  and an application-defined ext would be opaque to the gateway anyway.
- **Nesting** is bounded by ``max_depth`` as in Simple (a container at the top counts 1), on
  decoding and encoding alike, so a value that decodes here re-encodes, and a list that holds
  itself is an error rather than a hang.

Decoding is bounded (:class:`Limits`): a body longer than ``max_size`` is refused before it is
read. A msgpack body is read twice by the ``msgpack`` unpacker (C code): first skipped through,
which checks that it is complete and well formed and counts its values without building anything,
then decoded with ``msgpack.Unpacker``'s limits (``max_buffer_size``, ``max_str_len``,
``max_bin_len``, ``max_array_len``, ``max_map_len``, each also capped by the body's length). Why
the first pass: the unpacker allocates an array's slots as soon as it reads its declared length,
so a few bytes declaring nested arrays of millions of items would otherwise cost gigabytes before
the body is found to be short. Once the skip succeeded, every declared length is backed by bytes
that are really there, like Simple's checks before it reads.

Errors: malformed input or input over a limit raises only
:class:`~resmesh.protocols._errors.RemoteProtocolError` with ``close`` False (a bad body spoils
one call, not the connection: the frame around it was intact, so the call can be answered with an
exception); a value that cannot be encoded raises
:class:`~resmesh.protocols._errors.LocalProtocolError`. A serialization number outside
:data:`SUPPORTED` raises :class:`RemoteSerializationNotFound` when decoding (the peer chose it)
and :class:`LocalSerializationNotFound` when encoding; both are a
:class:`SerializationNotFound`, which knows motan-go's wording for the exception response. An
empty body decodes without a codec (no arguments, a null result), as in motan-go, which looks for
one only when there are bytes to read.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Final

import msgpack  # type: ignore[import-untyped]  # ships no type information (no py.typed)

from .._errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from . import simple
from .frames import DEFAULT_MAX_BODY, ERRTYPE_SERVICE, Serialization
from .simple import DEFAULT_MAX_DEPTH, DEFAULT_MAX_ITEMS, MAX_DEPTH_CEILING, Encodable, Value

__all__ = [
    "DEFAULT_LIMITS",
    "SERIALIZE_NOT_FOUND",
    "SUPPORTED",
    "Limits",
    "LocalSerializationNotFound",
    "RemoteSerializationNotFound",
    "SerializationNotFound",
    "decode_arguments",
    "decode_result",
    "encode_arguments",
    "encode_result",
]

#: The serialization numbers this module reads and writes.
SUPPORTED: Final[frozenset[int]] = frozenset((Serialization.SIMPLE, Serialization.MSGPACK))

#: motan-go's error text for a serialization it has no codec for (``ErrSerializeNil`` in
#: ``protocol/motanProtocol.go``).
SERIALIZE_NOT_FOUND: Final = "message serialize not found"

#: The serialization field is five bits wide.
_MAX_SERIALIZATION: Final = 31


# -- limits ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Limits:
    """How much one body may make the decoder build.

    Attributes:
        max_size: the body's length in bytes (both serializations; checked first). Defaults to
            the frame decoder's body limit, motan-go's ``maxContentLength``.
        max_depth: how many containers may nest inside one another (both; 0: no containers at
            all), at most :data:`~.simple.MAX_DEPTH_CEILING`.
        max_items: Simple only: the values in the whole body, nested ones included.
        max_str_len: msgpack only: the bytes of one str.
        max_bin_len: msgpack only: the bytes of one bin.
        max_array_len: msgpack only: the items of one array, and the arguments of one request
            (a request body is an array without its header).
        max_map_len: msgpack only: the entries of one map.

    A msgpack body also cannot declare more than it holds: each limit is further capped by the
    body's length (half of it for maps), since every item takes at least one byte.
    """

    max_size: int = DEFAULT_MAX_BODY
    max_depth: int = DEFAULT_MAX_DEPTH
    max_items: int = DEFAULT_MAX_ITEMS
    max_str_len: int = DEFAULT_MAX_BODY
    max_bin_len: int = DEFAULT_MAX_BODY
    max_array_len: int = DEFAULT_MAX_ITEMS
    max_map_len: int = DEFAULT_MAX_ITEMS

    def __post_init__(self) -> None:
        for name in (field.name for field in fields(self)):
            value = getattr(self, name)
            if type(value) is not int or value < 0:
                raise ValueError(f"{name} must be a non-negative int, not {value!r}")
        if self.max_depth > MAX_DEPTH_CEILING:
            raise ValueError(
                f"max_depth must be within 0..{MAX_DEPTH_CEILING}, not {self.max_depth}"
            )


#: The limits used when none are given.
DEFAULT_LIMITS: Final = Limits()


# -- errors ----------------------------------------------------------------------------------


class SerializationNotFound(ProtocolError):
    """A body's serialization number is not in :data:`SUPPORTED`.

    Catch this class for both directions; the concrete error is :class:`RemoteSerializationNotFound`
    or :class:`LocalSerializationNotFound`. ``reply_hint`` is motan-go's error text,
    :data:`SERIALIZE_NOT_FOUND`; a server answers the call with an exception response built from
    :attr:`errcode`, :meth:`errmsg` and :attr:`errtype`, the reply a motan-go server gives to a
    request in a serialization it lacks (``protocols/motan2.md`` §2):
    ``{"errcode":500,"errmsg":"deserialize fail. err:message serialize not found method:hello",
    "errtype":1}``.

    Attributes:
        serialization: the number that was asked for.
    """

    #: motan-go's ``errcode`` for a request it cannot deserialize.
    errcode: Final = 500
    #: motan-go's ``errtype`` for it: a service exception.
    errtype: Final = ERRTYPE_SERVICE

    def __init__(self, serialization: int) -> None:
        # close=False: the frame was intact; only this call cannot be served.
        super().__init__(SERIALIZE_NOT_FOUND, close=False)
        self.serialization: Final = serialization

    def __str__(self) -> str:
        return f"{self.reply_hint} (serialization {self.serialization})"

    def errmsg(self, method: str) -> str:
        """The ``errmsg`` motan-go's server writes for this error on a call to ``method`` (the
        request's ``M_m``), as in its ``server/motanserver.go``."""
        return f"deserialize fail. err:{self.reply_hint} method:{method}"


class RemoteSerializationNotFound(SerializationNotFound, RemoteProtocolError):
    """A body to decode is in a serialization this module does not implement (the peer's
    choice)."""


class LocalSerializationNotFound(SerializationNotFound, LocalProtocolError):
    """Values were to be encoded in a serialization this module does not implement (our own
    caller's choice)."""


def _remote(message: str) -> RemoteProtocolError:
    # close=False: the frame was intact, only this body is unusable.
    return RemoteProtocolError(f"motan2 msgpack: {message}", close=False)


def _local(message: str) -> LocalProtocolError:
    # close=False: nothing was written, the connection is intact.
    return LocalProtocolError(f"motan2 msgpack: {message}", close=False)


def _number(serialization: int) -> int:
    """``serialization`` checked to be a number a frame can carry (a caller's bug otherwise)."""
    if type(serialization) is bool or not isinstance(serialization, int):
        raise TypeError(f"a serialization number is an int, not {type(serialization).__name__}")
    if not 0 <= serialization <= _MAX_SERIALIZATION:
        raise ValueError(
            f"a serialization number is within 0..{_MAX_SERIALIZATION}, not {serialization}"
        )
    return int(serialization)


def _as_bytes(body: bytes | bytearray | memoryview) -> bytes:
    return body if isinstance(body, bytes) else bytes(body)


# -- walking values: depth, and on encoding the types --------------------------------------------

_SCALARS: Final = (type(None), bool, int, float, str, bytes, bytearray, memoryview)
_EXT_TYPES: Final = (msgpack.ExtType, msgpack.Timestamp)
_SCALAR: Final = 0
_CONTAINER: Final = 1
_EXT: Final = 2
_UNKNOWN: Final = 3


@functools.cache
def _kind(cls: type) -> int:
    """What an encoder makes of instances of ``cls``; cached, as a program has few types."""
    if issubclass(cls, _EXT_TYPES):  # before tuple: ExtType is a namedtuple
        return _EXT
    if issubclass(cls, _SCALARS):
        return _SCALAR
    if issubclass(cls, list | tuple | dict | Mapping | Sequence):
        return _CONTAINER
    return _UNKNOWN


def _children(container: object, encoding: bool) -> Sequence[object]:
    """The items of a container: a mapping's values (and on ``encoding`` its keys too, since a
    tuple key is an array on the wire; decoded keys are always scalars)."""
    if isinstance(container, list):
        return container
    if isinstance(container, Mapping):
        if encoding:
            return [*container, *container.values()]
        return list(container.values())
    return container  # type: ignore[return-value]  # a Sequence, as _kind established


def _type_problem(kinds: Iterable[type]) -> str | None:
    for cls in kinds:
        kind = _kind(cls)
        if kind == _EXT:
            return f"cannot encode a value of type {cls.__name__}: ext types are refused"
        if kind == _UNKNOWN:
            return f"cannot encode a value of type {cls.__name__} (not a msgpack value)"
    return None


def _walk(values: Sequence[object], max_depth: int, *, encoding: bool) -> str | None:
    """Why ``values`` cannot be taken (too deep; on ``encoding``, a type msgpack must not
    carry), or None.

    Depth first with an explicit stack, so a list that holds itself is caught after
    ``max_depth`` steps (breadth first, ``[x, x]`` with ``x`` inside itself would double at each
    level). Each container's items are first looked at as a *set of types*, built at C speed by
    ``set(map(type, ...))``: a container without containers inside (a list of a million numbers)
    costs one pass in C and is not entered, and only then are items visited in Python.
    """
    kinds = set(map(type, values))
    if encoding:
        problem = _type_problem(kinds)
        if problem is not None:
            return problem
    inner = {cls for cls in kinds if _kind(cls) == _CONTAINER}
    if not inner:
        return None
    # Each entry: the items still to look at, and the container types among them.
    stack: list[tuple[Iterator[object], set[type]]] = [(iter(values), inner)]
    while stack:
        items, containers = stack[-1]
        for item in items:
            if type(item) not in containers:
                continue
            if len(stack) > max_depth:  # ``item`` is at depth len(stack)
                return f"values nest deeper than {max_depth} containers"
            children = _children(item, encoding)
            kinds = set(map(type, children))
            if encoding:
                problem = _type_problem(kinds)
                if problem is not None:
                    return problem
            inner = {cls for cls in kinds if _kind(cls) == _CONTAINER}
            if inner:
                stack.append((iter(children), inner))
                break
        else:
            stack.pop()
    return None


# -- msgpack decoding ------------------------------------------------------------------------


class _ExtRefused(ValueError):
    """Raised by the unpacker's ext hook: ext types have no place in the value model."""


def _refuse_ext(code: int, data: bytes) -> object:
    raise _ExtRefused(f"ext type {code}")


def _msgpack_offsets(body: bytes, limit: int, *, one: bool) -> list[int]:
    """Where each top-level value of ``body`` starts, found by skipping through it in C without
    building anything; at most ``limit`` values (``one``: a single one), and the body must end
    with the last one."""
    total = len(body)
    skipper = msgpack.Unpacker(None, max_buffer_size=total)
    skipper.feed(body)
    offsets: list[int] = []
    at = 0
    while at < total:
        if len(offsets) >= limit:
            if one:
                raise _remote(f"{total - at} unexpected bytes after the value, at offset {at}")
            raise _remote(f"more than {limit} values (at offset {at})")
        offsets.append(at)
        try:
            skipper.skip()
        except msgpack.OutOfData:
            raise _remote(
                f"value at offset {at} is cut short: the body ends at offset {total}"
            ) from None
        except msgpack.StackError:
            raise _remote(
                f"value at offset {at} nests deeper than the msgpack unpacker allows"
            ) from None
        except (ValueError, msgpack.UnpackException) as exc:  # FormatError: byte 0xc1
            raise _remote(f"value at offset {at} is not valid msgpack ({_describe(exc)})") from None
        at = skipper.tell()
    return offsets


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _msgpack_decode(body: bytes, limits: Limits, *, one: bool) -> list[Value]:
    total = len(body)
    if total == 0:
        return []
    if total > limits.max_size:
        raise _remote(f"body of {total} bytes is over the limit of {limits.max_size}")
    offsets = _msgpack_offsets(body, 1 if one else limits.max_array_len, one=one)
    unpacker = msgpack.Unpacker(
        None,
        raw=False,
        strict_map_key=False,
        use_list=True,
        max_buffer_size=total,
        max_str_len=min(limits.max_str_len, total),
        max_bin_len=min(limits.max_bin_len, total),
        max_array_len=min(limits.max_array_len, total),
        max_map_len=min(limits.max_map_len, total // 2),
        max_ext_len=0,  # with the hook below, every ext is refused, timestamps included
        ext_hook=_refuse_ext,
    )
    unpacker.feed(body)
    values: list[Value] = []
    for at in offsets:
        try:
            values.append(unpacker.unpack())
        except UnicodeDecodeError:
            raise _remote(f"value at offset {at} holds a str that is not valid UTF-8") from None
        except _ExtRefused as exc:
            raise _remote(f"value at offset {at} holds an {exc}: ext types are refused") from None
        except TypeError:  # an array or map as a map key: unhashable
            raise _remote(
                f"value at offset {at} holds a map with an array or map as a key, which cannot"
                " be a key"
            ) from None
        except (ValueError, msgpack.UnpackException, RecursionError) as exc:
            text = _describe(exc)
            if "max_ext_len" in text or "timestamp" in text.lower():
                raise _remote(
                    f"value at offset {at} holds an ext value: ext types are refused"
                ) from None
            raise _remote(f"value at offset {at} is over a limit or malformed: {text}") from None
    if total > limits.max_depth:  # nesting N containers takes at least N bytes
        problem = _walk(values, limits.max_depth, encoding=False)
        if problem is not None:
            raise _remote(problem)
    return values


# -- msgpack encoding ------------------------------------------------------------------------


def _default(value: Any) -> Any:
    """The packer's fallback for types it lacks: any other mapping or sequence (the same
    convenience :func:`.simple.encode` offers)."""
    if isinstance(value, int):  # the packer asks here about an int it found out of range
        raise OverflowError(value.bit_length())
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return list(value)
    raise TypeError(f"cannot encode a value of type {type(value).__name__}")


def _msgpack_encode(values: Sequence[object], max_depth: int) -> bytes:
    if not 0 <= max_depth <= MAX_DEPTH_CEILING:
        raise ValueError(f"max_depth must be within 0..{MAX_DEPTH_CEILING}, not {max_depth}")
    problem = _walk(values, max_depth, encoding=True)
    if problem is not None:
        raise _local(problem)
    # A packer per call: a Packer holds a buffer, so one shared across threads would mix bodies.
    packer = msgpack.Packer(
        use_bin_type=True,  # bytes as bin, str as str: the distinction the value model needs
        strict_types=False,  # subclasses (markers, IntEnum) pack as their builtin
        datetime=False,
        unicode_errors="strict",
        autoreset=False,
        default=_default,
    )
    try:
        for value in values:
            packer.pack(value)
    except UnicodeEncodeError:
        raise _local("a str is not encodable as UTF-8 (a lone surrogate)") from None
    except OverflowError:
        raise _local("an integer is outside msgpack's range, -2**63 .. 2**64-1") from None
    except (TypeError, ValueError, RecursionError) as exc:
        raise _local(f"cannot encode the value: {_describe(exc)}") from None
    return bytes(packer.bytes())


# -- the API ---------------------------------------------------------------------------------


def decode_arguments(
    serialization: int,
    body: bytes | bytearray | memoryview,
    *,
    limits: Limits = DEFAULT_LIMITS,
) -> list[Value]:
    """A request body's arguments, in order (an empty body has none).

    An empty body is decoded without looking at the serialization, as motan-go does (it asks for
    a codec only when there are bytes to read), so a call without arguments in an unsupported
    serialization still yields ``[]``.

    Raises:
        RemoteProtocolError: the body is malformed or over a limit (``close`` False).
        RemoteSerializationNotFound: the body is not empty and ``serialization`` is not in
            :data:`SUPPORTED`.
        ValueError: ``serialization`` is not a number within 0..31.
    """
    number = _number(serialization)
    data = _as_bytes(body)
    if not data:
        return []
    if number == Serialization.SIMPLE:
        _check_size(data, limits)
        return simple.decode(data, max_depth=limits.max_depth, max_items=limits.max_items)
    if number == Serialization.MSGPACK:
        return _msgpack_decode(data, limits, one=False)
    raise RemoteSerializationNotFound(number)


def decode_result(
    serialization: int,
    body: bytes | bytearray | memoryview,
    *,
    limits: Limits = DEFAULT_LIMITS,
) -> Value:
    """A normal response body's value; the empty body is ``None`` (whatever the serialization,
    as in motan-go), and so is a single encoded null.

    Raises:
        RemoteProtocolError: the body is malformed, holds more than one value, or is over a
            limit (``close`` False).
        RemoteSerializationNotFound: as :func:`decode_arguments`.
        ValueError: as :func:`decode_arguments`.
    """
    number = _number(serialization)
    data = _as_bytes(body)
    if not data:
        return None
    if number == Serialization.SIMPLE:
        _check_size(data, limits)
        return simple.decode_one(data, max_depth=limits.max_depth, max_items=limits.max_items)
    if number == Serialization.MSGPACK:
        return _msgpack_decode(data, limits, one=True)[0]
    raise RemoteSerializationNotFound(number)


def _check_size(data: bytes, limits: Limits) -> None:
    if len(data) > limits.max_size:
        raise RemoteProtocolError(
            f"motan2 simple: body of {len(data)} bytes is over the limit of {limits.max_size}",
            close=False,
        )


def encode_arguments(
    serialization: int, args: Iterable[Encodable], *, max_depth: int = DEFAULT_MAX_DEPTH
) -> bytes:
    """A request body: the arguments' values back to back (none: ``b""``).

    Raises:
        LocalProtocolError: an argument cannot be represented (see :func:`.simple.encode` for
            Simple; for msgpack an integer outside -2**63 .. 2**64-1, a type that is no msgpack
            value, an ext type, a str with lone surrogates, nesting deeper than ``max_depth``).
        LocalSerializationNotFound: ``serialization`` is not in :data:`SUPPORTED`, even with no
            arguments (motan-go refuses to build any request without a codec).
        ValueError: ``serialization`` is not within 0..31, or ``max_depth`` is out of range.
    """
    number = _number(serialization)
    if number == Serialization.SIMPLE:
        return simple.encode_many(args, max_depth=max_depth)
    if number == Serialization.MSGPACK:
        return _msgpack_encode(list(args), max_depth)
    raise LocalSerializationNotFound(number)


def encode_result(
    serialization: int, value: Encodable, *, max_depth: int = DEFAULT_MAX_DEPTH
) -> bytes:
    """A normal response body: ``value`` encoded, or ``b""`` for ``None`` (motan-go's form of a
    nil result; peers read it as null).

    Raises:
        LocalProtocolError, LocalSerializationNotFound, ValueError: as :func:`encode_arguments`.
    """
    number = _number(serialization)
    if number not in SUPPORTED:
        raise LocalSerializationNotFound(number)
    if value is None:
        return b""
    if number == Serialization.SIMPLE:
        return simple.encode(value, max_depth=max_depth)
    return _msgpack_encode([value], max_depth)
