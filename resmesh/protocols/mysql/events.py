"""Events a :class:`~.connection.Connection` returns: one per payload, each holding the
:class:`~.packets.Packet` it came in (so a proxy forwards the bytes unchanged) and, where that
is cheap and needed to follow the conversation, its decoded contents.

Why rows and column definitions stay undecoded: a proxy streams them, and only the packet's
first byte and length are needed to know where a result set ends (:mod:`.state`). Decoding them
is a separate call (:func:`~.results.decode_text_row`, :func:`~.binary.decode_binary_row`,
:func:`~.results.decode_column_definition`). The small control packets (greeting, handshake
response, OK, EOF, ERR, prepare OK) are decoded, because the session follows their fields:
capabilities, the authentication plugin, status flags, statement ids.

Events are frozen, slotted dataclasses, as h11's are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .constants import Command, ServerStatus
from .handshake import AuthSwitchRequest, HandshakeResponse, InitialHandshake, SSLRequest
from .packets import Packet
from .results import ColumnCount, EofPacket, ErrPacket, OkPacket
from .state import PacketKind
from .statements import PrepareOk

__all__ = [
    "AuthData",
    "AuthMoreDataEvent",
    "AuthSwitch",
    "ClientHandshake",
    "ColumnCountEvent",
    "ColumnDefinitionEvent",
    "CommandEvent",
    "ConnectionClosed",
    "Eof",
    "Err",
    "Event",
    "Greeting",
    "LocalInfileData",
    "LocalInfileEnd",
    "LocalInfileRequestEvent",
    "Ok",
    "PrepareOkEvent",
    "Progress",
    "Row",
    "Statistics",
    "TlsRequest",
]


#: The packet of :class:`ConnectionClosed`: none was received.
_NO_PACKET = Packet(0, b"")


class Event:
    """Base class of the events: each has the :class:`~.packets.Packet` it came in."""

    __slots__ = ()
    kind: ClassVar[PacketKind | None] = None
    packet: Packet


@dataclass(frozen=True, slots=True)
class Greeting(Event):
    """The server's Initial Handshake."""

    kind: ClassVar[PacketKind] = PacketKind.GREETING
    packet: Packet
    handshake: InitialHandshake


@dataclass(frozen=True, slots=True)
class TlsRequest(Event):
    """The client's SSLRequest: TLS should start now (or the server refuses and closes)."""

    kind: ClassVar[PacketKind] = PacketKind.SSL_REQUEST
    packet: Packet
    request: SSLRequest


@dataclass(frozen=True, slots=True)
class ClientHandshake(Event):
    """The client's HandshakeResponse41."""

    kind: ClassVar[PacketKind] = PacketKind.HANDSHAKE_RESPONSE
    packet: Packet
    response: HandshakeResponse


@dataclass(frozen=True, slots=True)
class AuthSwitch(Event):
    """AuthSwitchRequest: authenticate with another plugin and scramble."""

    kind: ClassVar[PacketKind] = PacketKind.AUTH_SWITCH_REQUEST
    packet: Packet
    request: AuthSwitchRequest


@dataclass(frozen=True, slots=True)
class AuthMoreDataEvent(Event):
    """AuthMoreData: plugin data from the server (``data`` without the 0x01 header)."""

    kind: ClassVar[PacketKind] = PacketKind.AUTH_MORE_DATA
    packet: Packet
    data: bytes


@dataclass(frozen=True, slots=True)
class AuthData(Event):
    """The client's raw authentication data after a switch or more data."""

    kind: ClassVar[PacketKind] = PacketKind.AUTH_DATA
    packet: Packet

    @property
    def data(self) -> bytes:
        """The data (the whole payload)."""
        return self.packet.payload


@dataclass(frozen=True, slots=True)
class CommandEvent(Event):
    """A client command; ``command`` is its first byte (a :class:`~.constants.Command` when
    known). Decode its arguments with :mod:`.commands` or :mod:`.statements` if needed."""

    kind: ClassVar[PacketKind] = PacketKind.COMMAND
    packet: Packet
    command: Command | int


@dataclass(frozen=True, slots=True)
class Ok(Event):
    """An OK packet.

    Attributes:
        ok: its fields.
        ends_reply: the command's reply is complete (no more results follow).
    """

    kind: ClassVar[PacketKind] = PacketKind.OK
    packet: Packet
    ok: OkPacket
    ends_reply: bool

    @property
    def status(self) -> ServerStatus:
        """The status flags."""
        return self.ok.status


@dataclass(frozen=True, slots=True)
class Eof(Event):
    """An EOF packet (ends column definitions or rows).

    Attributes:
        eof: its fields.
        ends_reply: the command's reply is complete.
    """

    kind: ClassVar[PacketKind] = PacketKind.EOF
    packet: Packet
    eof: EofPacket
    ends_reply: bool

    @property
    def status(self) -> ServerStatus:
        """The status flags."""
        return self.eof.status


@dataclass(frozen=True, slots=True)
class Err(Event):
    """An ERR packet; it always ends the reply (and, during login, the connection)."""

    kind: ClassVar[PacketKind] = PacketKind.ERR
    packet: Packet
    error: ErrPacket
    ends_reply: bool = True


@dataclass(frozen=True, slots=True)
class Progress(Event):
    """MariaDB's progress report (decode with :func:`~.results.decode_progress_report`)."""

    kind: ClassVar[PacketKind] = PacketKind.PROGRESS
    packet: Packet


@dataclass(frozen=True, slots=True)
class ColumnCountEvent(Event):
    """The first packet of a result set."""

    kind: ClassVar[PacketKind] = PacketKind.COLUMN_COUNT
    packet: Packet
    column_count: ColumnCount


@dataclass(frozen=True, slots=True)
class ColumnDefinitionEvent(Event):
    """A column (or prepared statement parameter) definition, undecoded.

    Attributes:
        index: its position among the definitions of this block.
        is_param: it defines a prepared statement's parameter, not a result column.
        ends_reply: it is the last packet of a prepare reply (with CLIENT_DEPRECATE_EOF no
            EOF follows the last definition).
    """

    kind: ClassVar[PacketKind] = PacketKind.COLUMN_DEFINITION
    packet: Packet
    index: int
    is_param: bool = False
    ends_reply: bool = False


@dataclass(frozen=True, slots=True)
class Row(Event):
    """A row of a result set (text or binary), undecoded."""

    kind: ClassVar[PacketKind] = PacketKind.ROW
    packet: Packet


@dataclass(frozen=True, slots=True)
class LocalInfileRequestEvent(Event):
    """0xFB: the server asks for a local file's contents."""

    kind: ClassVar[PacketKind] = PacketKind.LOCAL_INFILE_REQUEST
    packet: Packet
    filename: bytes


@dataclass(frozen=True, slots=True)
class LocalInfileData(Event):
    """A chunk of the file the client sends for LOAD DATA LOCAL INFILE."""

    kind: ClassVar[PacketKind] = PacketKind.LOCAL_INFILE_DATA
    packet: Packet


@dataclass(frozen=True, slots=True)
class LocalInfileEnd(Event):
    """The empty packet that ends the file."""

    kind: ClassVar[PacketKind] = PacketKind.LOCAL_INFILE_END
    packet: Packet


@dataclass(frozen=True, slots=True)
class PrepareOkEvent(Event):
    """The first packet of a successful COM_STMT_PREPARE reply (the whole reply when the
    statement has neither parameters nor columns: ``ends_reply``)."""

    kind: ClassVar[PacketKind] = PacketKind.PREPARE_OK
    packet: Packet
    prepare: PrepareOk
    ends_reply: bool = False


@dataclass(frozen=True, slots=True)
class Statistics(Event):
    """COM_STATISTICS' reply: a human-readable string."""

    kind: ClassVar[PacketKind] = PacketKind.STATISTICS
    packet: Packet
    ends_reply: bool = True

    @property
    def text(self) -> str:
        """The statistics line."""
        return self.packet.payload.decode("utf-8", "replace")


@dataclass(frozen=True, slots=True)
class ConnectionClosed(Event):
    """The peer closed the connection (after every complete packet was returned)."""

    packet: Packet = _NO_PACKET
