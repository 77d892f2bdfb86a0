"""A reply scanner for raw relaying, sans-IO: it walks a server's reply bytes packet by packet
and says where the reply ends, decoding only the packets that decide that.

Why: a proxy that decodes every packet of a result set into an event and encodes it again
spends its time on rows it never looks at (the profile of ``bench/mysql.py`` before this module
showed ~72% of the gateway's CPU in that loop). The gateway forwards the client's command to
its node unchanged, with the same sequence ids (a command starts at 0,
https://dev.mysql.com/doc/dev/mysql-server/latest/page_protocol_basic_packets.html), so the
reply's bytes are already what the client expects: they can go to the client as they came, in
the chunks they came in. What the gateway must still know, and what this module reads:

- where the reply ends: its first packet (OK, ERR, a result set's column count, a LOCAL INFILE
  request; PREPARE_OK for COM_STMT_PREPARE), the EOF after the column definitions (none with
  ``CLIENT_DEPRECATE_EOF``), and what ends the rows: ERR, EOF, or the OK packet with the 0xFE
  header that replaces the EOF under ``CLIENT_DEPRECATE_EOF``
  (https://dev.mysql.com/doc/dev/mysql-server/latest/page_protocol_com_query_response_text_resultset.html,
  https://dev.mysql.com/doc/dev/mysql-server/latest/page_protocol_binary_resultset.html,
  https://dev.mysql.com/doc/dev/mysql-server/latest/page_protocol_com_stmt_prepare.html#sect_protocol_com_stmt_prepare_response);
- whether another result follows (``SERVER_MORE_RESULTS_EXISTS`` in an OK or EOF:
  multi-statements, stored procedures);
- the server status flags of the last OK/EOF: the transaction state comes from them, never from
  the SQL;
- the error number, SQLSTATE and message of an ERR that ends the reply (the outcome counted for
  the node depends on them).

Everything in between (column definitions, text and binary rows) is skipped by its length and
never copied: a definition is skipped by count (the column count says how many), a row is
anything in the rows that is not a terminator. A row is told from a terminator by its first byte
and length only, as :func:`~.results.is_row_terminator` does: a row never starts with 0xFF, and
a row that starts with 0xFE is a string of 16 MiB or more, so it is split into packets
(0xFFFFFF bytes, then the rest) and its first packet is full. Continuation packets of a split
payload are skipped as part of it.

The scanner checks sequence ids (1156 "Got packets out of order" otherwise) and the shapes it
decodes (1835 "Malformed communication packet"), both as :class:`~.errors.MySQLRemoteError`.
Memory is bounded: only an incomplete header, or an incomplete packet that must be decoded
(a terminator: a few bytes, or an OK with session state), is carried from one chunk to the
next; rows are never held. It gives the same answer however the bytes are chunked.

Use: :meth:`ReplyScanner.start` with the command sent (and the sequence id the reply starts
at), then :meth:`ReplyScanner.feed` each chunk received: it returns how many bytes of the chunk
belong to the reply (all of them until the last chunk), and :attr:`ReplyScanner.end` is set
once the reply is complete. The transition rules are those of :mod:`.state` (the full
:class:`~.connection.Connection` checks every packet; ``tests/protocols/mysql/test_relay.py``
compares both on generated replies).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final, final

from .constants import Capability, Command, ServerStatus
from .errors import MySQLRemoteError, malformed_packet, packet_too_large, packets_out_of_order
from .packets import DEFAULT_MAX_PAYLOAD, HEADER_SIZE, MAX_CHUNK
from .results import ErrPacket, decode_err

__all__ = ["ReplyEnd", "ReplyKind", "ReplyScanner", "scans_reply"]


class ReplyKind(enum.Enum):
    """The packet that ended a reply."""

    OK = "ok"
    ERR = "err"
    EOF = "eof"
    #: A result set's rows ended (EOF, or OK with the 0xFE header).
    ROWS_END = "rows-end"
    #: COM_STMT_PREPARE's reply (PREPARE_OK and its definitions).
    PREPARE_OK = "prepare-ok"
    #: LOAD DATA LOCAL: the server asks the client for a file (the client's turn).
    LOCAL_INFILE = "local-infile"
    #: COM_STATISTICS' string.
    STATISTICS = "statistics"
    #: COM_STMT_EXECUTE opened a cursor: the column EOF ends the reply.
    CURSOR = "cursor"


@dataclass(slots=True)
class ReplyEnd:
    """How a reply ended.

    Attributes:
        kind: what ended it.
        status: the server status flags of the reply's last OK or EOF, or ``None`` when it
            had none (an ERR, a prepare response without EOFs): the status stays as it was.
        error: the ERR that ended it.
        statement_id: the statement id of a PREPARE_OK.
        last_seq: the sequence id of the reply's last packet.
        results: the results it held (OK packets and result sets; more than one with
            ``SERVER_MORE_RESULTS_EXISTS``).
    """

    kind: ReplyKind
    status: int | None = None
    error: ErrPacket | None = None
    statement_id: int | None = None
    last_seq: int = 0
    results: int = 1


# Scanner states (ints: compared for every packet).
_RESULT: Final = 0
_COLUMNS: Final = 1
_COLUMNS_EOF: Final = 2
_ROWS: Final = 3
_PREPARE: Final = 4
_PARAMS: Final = 5
_PARAMS_EOF: Final = 6
_PCOLUMNS: Final = 7
_PCOLUMNS_EOF: Final = 8
_FIELD_LIST: Final = 9
_STATISTICS: Final = 10
_SIMPLE: Final = 11
#: The reply ended with the payload being skipped (the last prepare column definition
#: under DEPRECATE_EOF): complete once its last packet is.
_DONE: Final = 12

#: States whose packets are skipped by count.
_COUNTED: Final = frozenset({_COLUMNS, _PARAMS, _PCOLUMNS})

#: The state each command's reply starts in; commands not listed get ``_SIMPLE`` (OK | ERR |
#: EOF). Commands with no reply (COM_STMT_CLOSE, COM_STMT_SEND_LONG_DATA, COM_QUIT) and
#: COM_CHANGE_USER (an authentication exchange) are not scanned: see :func:`scans_reply`.
_START: Final[dict[int, int]] = {
    Command.QUERY: _RESULT,
    Command.STMT_EXECUTE: _RESULT,
    Command.STMT_BULK_EXECUTE: _RESULT,
    Command.PROCESS_INFO: _RESULT,
    Command.STMT_FETCH: _ROWS,
    Command.STMT_PREPARE: _PREPARE,
    Command.FIELD_LIST: _FIELD_LIST,
    Command.STATISTICS: _STATISTICS,
}
_NOT_SCANNED: Final = frozenset(
    {Command.QUIT, Command.STMT_CLOSE, Command.STMT_SEND_LONG_DATA, Command.CHANGE_USER}
)


def scans_reply(command: int) -> bool:
    """Whether the reply to ``command`` can be scanned (every command that has a reply and is
    not an authentication exchange)."""
    return command not in _NOT_SCANNED


_EOF: Final = 0xFE
_ERR: Final = 0xFF
_OK: Final = 0x00
_INFILE: Final = 0xFB
#: An EOF payload is at most this long (0xFE, warnings, status); a longer 0xFE terminator is
#: the DEPRECATE_EOF OK.
_EOF_MAX: Final = 5
#: A 0xFE payload this long or longer is a row (a string of 16 MiB or more), never a terminator.
_ROW_MIN_FE: Final = 0xFFFFFF
# Plain ints: ``int & IntFlag`` goes through the enum's reflected ``__rand__`` and builds a
# flag object, about a microsecond each time.
_DEPRECATE_EOF: Final = int(Capability.DEPRECATE_EOF)
_PROTOCOL_41: Final = int(Capability.PROTOCOL_41)
_STATUS_IN_OK: Final = int(Capability.PROTOCOL_41 | Capability.TRANSACTIONS)
_PROGRESS: Final = int(Capability.MARIADB_PROGRESS)
_CACHE_METADATA: Final = int(Capability.MARIADB_CACHE_METADATA)
_MORE: Final = int(ServerStatus.MORE_RESULTS_EXISTS)
_CURSOR: Final = int(ServerStatus.CURSOR_EXISTS)


@final
class ReplyScanner:
    """Finds the end of one reply at a time in a server's byte stream (see the module
    docstring).

    Attributes:
        capabilities: the connection's negotiated capabilities (DEPRECATE_EOF, PROTOCOL_41,
            MariaDB's CACHE_METADATA and PROGRESS shape the packets).
        end: how the current reply ended; ``None`` while it goes on.
        status: the status flags of the reply's last OK/EOF so far (``None``: none yet).
        last_insert_id: the last non-zero insert id an OK packet carried (what the
            connection's ``LAST_INSERT_ID()`` says, as far as its replies show); 0: none.
    """

    __slots__ = (
        "_collect",
        "_cont",
        "_count",
        "_end_after_skip",
        "_max_chunk",
        "_max_payload",
        "_pending",
        "_prepare_columns",
        "_results",
        "_seq",
        "_skip",
        "_state",
        "_statement_id",
        "capabilities",
        "end",
        "last_insert_id",
        "status",
    )

    def __init__(
        self,
        capabilities: int,
        *,
        max_chunk: int = MAX_CHUNK,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
    ) -> None:
        """Create a scanner for a connection with ``capabilities``.

        Args:
            capabilities: the negotiated capabilities.
            max_chunk: payload bytes per packet (0xFFFFFF; smaller only in tests).
            max_payload: the largest packet that is decoded (a terminator); larger is 1153.
        """
        self.capabilities = int(capabilities)
        self._max_chunk = max_chunk
        self._max_payload = max_payload
        self.end: ReplyEnd | None = None
        self.status: int | None = None
        self.last_insert_id = 0
        self._state = _SIMPLE
        self._seq = 0
        self._skip = 0
        self._cont = False
        self._end_after_skip = False
        self._collect: bytearray | None = None
        self._pending = b""
        self._count = 0
        self._prepare_columns = 0
        self._statement_id: int | None = None
        self._results = 1

    def start(self, command: int, seq: int = 1) -> None:
        """Expect the reply to ``command``, starting at sequence id ``seq`` (the command's
        last sequence id + 1).

        Raises:
            ValueError: a command whose reply is not scanned (see :func:`scans_reply`).
        """
        if command in _NOT_SCANNED:
            raise ValueError(f"the reply to command {command:#x} is not scanned")
        self._state = _START.get(command, _SIMPLE)
        self._seq = seq & 0xFF
        self.end = None
        self.status = None
        self._skip = 0
        self._cont = False
        self._end_after_skip = False
        self._collect = None
        self._pending = b""
        self._count = 0
        self._prepare_columns = 0
        self._statement_id = None
        self._results = 1

    @property
    def carried(self) -> int:
        """Bytes of an incomplete header or terminator held until the next chunk."""
        return len(self._pending) + (len(self._collect) if self._collect is not None else 0)

    def feed(self, data: bytes | bytearray | memoryview) -> int:
        """Scan the next chunk of the reply.

        Returns:
            How many bytes of ``data`` belong to the reply: ``len(data)`` while it goes on,
            fewer if it ended inside the chunk (the rest is what the server sent after it).

        Raises:
            MySQLRemoteError: out-of-order packets (1156), a packet that cannot come here
                (1835), a terminator over ``max_payload`` (1153).
        """
        if self.end is not None:
            return 0
        carry = len(self._pending)
        buf: bytes | bytearray | memoryview
        if carry:
            buf = self._pending + bytes(data)
            self._pending = b""
        else:
            buf = data
        size = len(buf)
        max_chunk = self._max_chunk
        # The hot loop keeps the position, the sequence id and the continuation flag in
        # locals, and writes them back wherever it returns.
        pos = self._skip
        if pos > size:
            self._skip = pos - size
            return len(data)
        self._skip = 0
        expect = self._seq
        cont = self._cont
        while True:
            if cont is False and self._end_after_skip:
                self._seq = expect
                self._finish(ReplyKind.PREPARE_OK)
                return pos - carry
            if size - pos < HEADER_SIZE:
                if pos < size:
                    self._pending = bytes(buf[pos:])
                self._seq = expect
                self._cont = cont
                return len(data)
            length = buf[pos] | buf[pos + 1] << 8 | buf[pos + 2] << 16
            if buf[pos + 3] != expect:
                raise MySQLRemoteError(packets_out_of_order())
            if length > max_chunk:
                raise MySQLRemoteError(malformed_packet())
            collect = self._collect
            if collect is None:
                if cont:
                    skip = True  # a continuation packet of a payload being skipped
                elif not length:
                    skip = not self._needed(-1, 0)
                elif size - pos <= HEADER_SIZE:
                    self._pending = bytes(buf[pos:])
                    self._seq = expect
                    self._cont = cont
                    return len(data)
                else:
                    skip = not self._needed(buf[pos + HEADER_SIZE], length)
                if skip:
                    # A definition or a row: skipped by its length.
                    expect = (expect + 1) & 0xFF
                    if not cont and self._state in _COUNTED:
                        self._counted_one()  # counted states move on at a payload's start
                    cont = length == max_chunk
                    pos += HEADER_SIZE + length
                    if pos > size:
                        self._skip = pos - size
                        self._seq = expect
                        self._cont = cont
                        return len(data)
                    continue
            # A packet to decode: wait until it is whole.
            end = pos + HEADER_SIZE + length
            if end > size:
                held = (len(collect) if collect is not None else 0) + size - pos
                if held > self._max_payload + HEADER_SIZE:
                    raise MySQLRemoteError(packet_too_large())
                self._pending = bytes(buf[pos:])
                self._seq = expect
                self._cont = cont
                return len(data)
            seq = expect
            expect = (expect + 1) & 0xFF
            part = buf[pos + HEADER_SIZE : end]
            if not isinstance(part, bytes):
                part = bytes(part)
            pos = end
            if length == max_chunk:
                if collect is None:
                    collect = self._collect = bytearray()
                collect += part
                if len(collect) > self._max_payload:
                    raise MySQLRemoteError(packet_too_large())
                cont = True
                continue
            cont = False
            if collect is not None:
                collect += part
                part = bytes(collect)
                self._collect = None
            self._seq = expect
            self._cont = False
            if self._payload(part, seq):
                return pos - carry

    # -- deciding and decoding ------------------------------------------------------------

    def _needed(self, first: int, length: int) -> bool:
        """Whether a payload starting with ``first`` (-1: empty) of ``length`` bytes in its
        first packet must be decoded (else it is skipped)."""
        state = self._state
        if state in _COUNTED:
            return False
        if state in (_ROWS, _FIELD_LIST):
            if first == _ERR:
                return True
            if first == _EOF:
                # A full first packet is a split payload: 16 MiB or more, a row (unless a
                # test's small max_chunk splits shorter payloads: then decide once joined).
                return length < self._max_chunk or self._max_chunk < _ROW_MIN_FE
            return False
        return True

    def _counted_one(self) -> None:
        """A definition of a counted state was skipped."""
        self._count -= 1
        if self._count > 0:
            return
        state = self._state
        deprecate = self.capabilities & _DEPRECATE_EOF
        if state == _COLUMNS:
            self._state = _ROWS if deprecate else _COLUMNS_EOF
        elif state == _PARAMS:
            if not deprecate:
                self._state = _PARAMS_EOF
            elif self._prepare_columns:
                self._state = _PCOLUMNS
                self._count = self._prepare_columns
            else:
                self._state = _DONE
                self._end_after_skip = True
        else:  # _PCOLUMNS
            if deprecate:
                self._state = _DONE
                self._end_after_skip = True
            else:
                self._state = _PCOLUMNS_EOF

    def _finish(self, kind: ReplyKind, error: ErrPacket | None = None) -> None:
        self.end = ReplyEnd(
            kind,
            self.status,
            error,
            self._statement_id,
            (self._seq - 1) & 0xFF,
            self._results,
        )
        self._end_after_skip = False

    def _payload(self, payload: bytes, seq: int) -> bool:
        """Decode a whole payload; whether it ended the reply."""
        state = self._state
        first = payload[0] if payload else -1
        if state in (_ROWS, _FIELD_LIST):
            if first == _ERR:
                self._finish(ReplyKind.ERR, decode_err(payload))
                return True
            if first != _EOF or len(payload) >= _ROW_MIN_FE:
                return False  # a row (only with a test's small max_chunk)
            self.status = self._terminator_status(payload)
            if state == _ROWS and self.status & _MORE:
                self._next_result()
                return False
            self._finish(ReplyKind.ROWS_END if state == _ROWS else ReplyKind.EOF)
            return True
        if state == _RESULT:
            if first == _OK:
                self.status = self._ok_status(payload)
                if self.status & _MORE:
                    self._next_result()
                    return False
                self._finish(ReplyKind.OK)
                return True
            if first == _ERR:
                if self._progress(payload):
                    return False
                self._finish(ReplyKind.ERR, decode_err(payload))
                return True
            if first == _INFILE:
                self._finish(ReplyKind.LOCAL_INFILE)
                return True
            if first == _EOF or first < 0:
                raise MySQLRemoteError(malformed_packet())
            self._column_count(payload)
            return False
        if state in (_COLUMNS_EOF, _PARAMS_EOF, _PCOLUMNS_EOF):
            if first != _EOF or len(payload) > _EOF_MAX:
                raise MySQLRemoteError(malformed_packet())
            self.status = self._eof_status(payload)
            if state == _COLUMNS_EOF:
                if self.status & _CURSOR:
                    self._finish(ReplyKind.CURSOR)
                    return True
                self._state = _ROWS
                return False
            if state == _PARAMS_EOF and self._prepare_columns:
                self._state = _PCOLUMNS
                self._count = self._prepare_columns
                return False
            self._finish(ReplyKind.PREPARE_OK)
            return True
        if state == _PREPARE:
            if first == _ERR:
                self._finish(ReplyKind.ERR, decode_err(payload))
                return True
            if first != _OK or len(payload) < 12:
                raise MySQLRemoteError(malformed_packet())
            self._statement_id = int.from_bytes(payload[1:5], "little")
            columns = payload[5] | payload[6] << 8
            params = payload[7] | payload[8] << 8
            self._prepare_columns = columns
            if params:
                self._state = _PARAMS
                self._count = params
                return False
            if columns:
                self._state = _PCOLUMNS
                self._count = columns
                return False
            self._finish(ReplyKind.PREPARE_OK)
            return True
        if state == _STATISTICS:
            self._finish(ReplyKind.STATISTICS)
            return True
        # _SIMPLE
        if first == _OK:
            self.status = self._ok_status(payload)
            self._finish(ReplyKind.OK)
            return True
        if first == _ERR:
            if self._progress(payload):
                return False
            self._finish(ReplyKind.ERR, decode_err(payload))
            return True
        if first == _EOF:
            if len(payload) <= _EOF_MAX:
                self.status = self._eof_status(payload)
                self._finish(ReplyKind.EOF)
            else:
                self.status = self._ok_status(payload)
                self._finish(ReplyKind.OK)
            return True
        raise MySQLRemoteError(malformed_packet())

    def _next_result(self) -> None:
        self._state = _RESULT
        self._results += 1

    def _progress(self, payload: bytes) -> bool:
        """MariaDB's progress report (an ERR with number 0xFFFF), when negotiated."""
        return (
            len(payload) >= 3
            and payload[1] == 0xFF
            and payload[2] == 0xFF
            and bool(self.capabilities & _PROGRESS)
        )

    def _column_count(self, payload: bytes) -> None:
        count, pos = _lenenc(payload, 0)
        follows = True
        if self.capabilities & _CACHE_METADATA:
            if pos >= len(payload):
                raise MySQLRemoteError(malformed_packet())
            follows = bool(payload[pos])
            pos += 1
        if pos != len(payload) or count == 0:
            raise MySQLRemoteError(malformed_packet())
        if follows:
            self._state = _COLUMNS
            self._count = count
        else:  # MariaDB's metadata cache: no definitions, the EOF still comes (if any)
            self._state = _ROWS if self.capabilities & _DEPRECATE_EOF else _COLUMNS_EOF

    def _ok_status(self, payload: bytes) -> int:
        """The status flags of an OK packet (header, affected rows, insert id, status); a
        non-zero insert id is kept in :attr:`last_insert_id`."""
        _, pos = _lenenc(payload, 1)
        insert_id, pos = _lenenc(payload, pos)
        if insert_id:
            self.last_insert_id = insert_id
        capabilities = self.capabilities
        if capabilities & _STATUS_IN_OK:
            if pos + 2 > len(payload):
                raise MySQLRemoteError(malformed_packet())
            return payload[pos] | payload[pos + 1] << 8
        return 0

    def _eof_status(self, payload: bytes) -> int:
        if len(payload) == _EOF_MAX and self.capabilities & _PROTOCOL_41:
            return payload[3] | payload[4] << 8
        if len(payload) == 1:
            return 0
        raise MySQLRemoteError(malformed_packet())

    def _terminator_status(self, payload: bytes) -> int:
        if len(payload) <= _EOF_MAX:
            return self._eof_status(payload)
        return self._ok_status(payload)


def _lenenc(payload: bytes, pos: int) -> tuple[int, int]:
    """``int<lenenc>`` at ``pos``: the value and the position after it."""
    size = len(payload)
    if pos >= size:
        raise MySQLRemoteError(malformed_packet())
    first = payload[pos]
    if first < 0xFB:
        return first, pos + 1
    width = {0xFC: 2, 0xFD: 3, 0xFE: 8}.get(first)
    if width is None or pos + 1 + width > size:
        raise MySQLRemoteError(malformed_packet())
    return int.from_bytes(payload[pos + 1 : pos + 1 + width], "little"), pos + 1 + width
