"""The connection phase's packets, in both roles: the server's greeting (Initial Handshake v10),
the client's HandshakeResponse41 and SSLRequest, AuthSwitchRequest and AuthMoreData.

Public descriptions: https://mariadb.com/kb/en/connection/ and
https://dev.mysql.com/doc/dev/mysql-server/latest/page_protocol_connection_phase.html (with its
``..._packets_protocol_handshake_v10.html`` and ``..._handshake_response.html`` pages).

The order of a login::

    server  greeting (seq 0): version, connection id, 20-byte scramble, capabilities, plugin
    client  [SSLRequest (seq 1), then TLS]  HandshakeResponse41: user, auth response, db, plugin
    server  OK | ERR | AuthSwitchRequest (0xFE: another plugin, a new scramble)
            | AuthMoreData (0x01: plugin-specific, e.g. caching_sha2's fast-auth markers)
    client  raw auth data after a switch or more data ...            (until OK or ERR)

Why the dataclasses keep every field, even those a gateway ignores (max packet size, filler
capabilities, attribute order): both roles must re-encode what they decode byte for byte, so a
golden vector from a real client round-trips and a proxy can rebuild a packet after changing one
field (the database, say) without losing the rest.

MariaDB specifics kept here: its servers leave ``CLIENT_MYSQL`` (bit 0) clear and put 4 more
capability bytes where MySQL has reserved zeros, in the greeting and in the client's response
(https://mariadb.com/kb/en/mariadb-protocol-differences-with-mysql/); MariaDB 10.x prefixes its
version with ``5.5.5-``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from .constants import (
    DEFAULT_CHARSET,
    PROTOCOL_VERSION,
    AuthPlugin,
    Capability,
    PacketHeader,
    ServerStatus,
)
from .errors import MySQLLocalError, MySQLRemoteError, bad_handshake, error_info
from .wire import Reader, int1, int2, int4, lenenc_str, nul_str

__all__ = [
    "SSL_REQUEST_SIZE",
    "AuthMoreData",
    "AuthSwitchRequest",
    "HandshakeResponse",
    "InitialHandshake",
    "SSLRequest",
    "decode_auth_more_data",
    "decode_auth_switch_request",
    "decode_client_handshake",
    "decode_handshake_response",
    "decode_initial_handshake",
    "decode_ssl_request",
    "encode_auth_more_data",
    "encode_auth_switch_request",
    "encode_handshake_response",
    "encode_initial_handshake",
    "encode_ssl_request",
    "split_capabilities",
]

#: An SSLRequest is exactly the first 32 bytes of a HandshakeResponse41.
SSL_REQUEST_SIZE: Final = 32
_LOW32: Final = 0xFFFFFFFF
_TEXT: Final = "utf-8"
_ERRORS: Final = "surrogateescape"  # any bytes survive a decode/encode round trip


def _text(raw: bytes) -> str:
    return raw.decode(_TEXT, _ERRORS)


def _raw(text: str) -> bytes:
    return text.encode(_TEXT, _ERRORS)


def split_capabilities(capabilities: int) -> tuple[int, int]:
    """The 32 protocol bits and MariaDB's 32 extended bits of a :class:`Capability` value."""
    return capabilities & _LOW32, capabilities >> 32


def _bad() -> MySQLRemoteError:
    return MySQLRemoteError(bad_handshake(), close=True)


# -- the server's greeting -----------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class InitialHandshake:
    """The server's first packet (Initial Handshake v10).

    Attributes:
        server_version: as sent (MariaDB 10: ``5.5.5-10.11.19-MariaDB-...``).
        connection_id: the server's thread id.
        auth_plugin_data: the scramble (nonce): 20 bytes from MariaDB and MySQL, sent in two
            parts (8 bytes, then the rest followed by a NUL that is not part of it).
        capabilities: the server's capabilities, MariaDB's extended ones included (bits 32+).
        charset: the server's default collation id.
        status: the server status flags.
        auth_plugin_name: the default plugin (with ``PLUGIN_AUTH``), else ``None``.
        protocol_version: always 10.
        auth_plugin_data_len: the length byte as sent (``len(scramble) + 1`` normally; kept
            for byte-exact re-encoding).
    """

    server_version: str
    connection_id: int
    auth_plugin_data: bytes
    capabilities: Capability
    charset: int = DEFAULT_CHARSET
    status: ServerStatus = ServerStatus.AUTOCOMMIT
    auth_plugin_name: str | None = AuthPlugin.NATIVE_PASSWORD.value
    protocol_version: int = PROTOCOL_VERSION
    auth_plugin_data_len: int | None = None

    @property
    def is_mariadb(self) -> bool:
        """MariaDB servers leave ``CLIENT_MYSQL`` (``LONG_PASSWORD``) clear."""
        return not self.capabilities & Capability.LONG_PASSWORD


def decode_initial_handshake(payload: bytes) -> InitialHandshake:
    """Read a server greeting.

    Raises:
        MySQLRemoteError: not protocol 10, or fields run past the packet (1043, closes).
    """
    reader = Reader(payload)
    try:
        protocol_version = reader.int1()
        if protocol_version != PROTOCOL_VERSION:
            raise _bad()
        server_version = _text(reader.nul_str())
        connection_id = reader.int4()
        part1 = reader.fixed(8)
        reader.int1()  # filler
        low = reader.int2()
        charset = 0
        status = 0
        data_len = 0
        high = 0
        extended = 0
        part2 = b""
        plugin: str | None = None
        if not reader.at_end():
            charset = reader.int1()
            status = reader.int2()
            high = reader.int2()
            data_len = reader.int1()
            reader.fixed(6)
            extended = reader.int4()
            capabilities = low | high << 16
            if capabilities & Capability.LONG_PASSWORD:
                extended = 0  # MySQL: reserved bytes, not capabilities
            if capabilities & Capability.SECURE_CONNECTION:
                part2 = reader.fixed(min(max(13, data_len - 8), reader.remaining))
                if data_len > 8:
                    part2 = part2[: data_len - 9]  # the length counts a trailing NUL
                elif part2.endswith(b"\x00"):
                    part2 = part2[:-1]
            if capabilities & Capability.PLUGIN_AUTH:
                plugin = _text(reader.nul_str_or_rest())
    except MySQLRemoteError:
        raise _bad() from None
    return InitialHandshake(
        server_version=server_version,
        connection_id=connection_id,
        auth_plugin_data=part1 + part2,
        capabilities=Capability(low | high << 16 | extended << 32),
        charset=charset,
        status=ServerStatus(status),
        auth_plugin_name=plugin,
        protocol_version=protocol_version,
        auth_plugin_data_len=data_len,
    )


def encode_initial_handshake(greeting: InitialHandshake) -> bytes:
    """The greeting's payload, as MariaDB lays it out.

    Raises:
        MySQLLocalError: a scramble shorter than the 8 bytes of its first part.
    """
    data = greeting.auth_plugin_data
    if len(data) < 8:
        raise MySQLLocalError(error_info(1105, "the scramble needs at least 8 bytes"))
    capabilities = int(greeting.capabilities)
    low, extended = split_capabilities(capabilities)
    if capabilities & Capability.LONG_PASSWORD:
        extended = 0
    plugin_auth = bool(capabilities & Capability.PLUGIN_AUTH)
    data_len = greeting.auth_plugin_data_len
    if data_len is None:
        data_len = len(data) + 1 if plugin_auth else 0
    out = [
        int1(greeting.protocol_version),
        nul_str(_raw(greeting.server_version)),
        int4(greeting.connection_id),
        data[:8],
        b"\x00",
        int2(low & 0xFFFF),
        int1(greeting.charset),
        int2(int(greeting.status)),
        int2(low >> 16),
        int1(data_len),
        b"\x00" * 6,
        int4(extended),
    ]
    if capabilities & Capability.SECURE_CONNECTION:
        part2 = data[8:] + b"\x00"
        out.append(part2.ljust(max(13, data_len - 8), b"\x00"))
    if plugin_auth:
        out.append(nul_str(_raw(greeting.auth_plugin_name or "")))
    return b"".join(out)


# -- the client's response -----------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class SSLRequest:
    """The short response a client sends before starting TLS (``CLIENT_SSL`` set)."""

    capabilities: Capability
    max_packet_size: int
    charset: int


@dataclass(frozen=True, slots=True, kw_only=True)
class HandshakeResponse:
    """The client's HandshakeResponse41.

    Attributes:
        capabilities: what the client asks for (MariaDB extended bits included).
        max_packet_size: the client's ``max_allowed_packet``.
        charset: the collation id the client wants.
        username: the account name.
        auth_response: the plugin's first answer (a scramble for mysql_native_password).
        database: the default database (with ``CONNECT_WITH_DB``), else ``None``.
        auth_plugin_name: the plugin ``auth_response`` is for (with ``PLUGIN_AUTH``).
        connect_attributes: ``(key, value)`` pairs in wire order (with ``CONNECT_ATTRS``).
        zstd_compression_level: MySQL 8's level byte (with ``ZSTD_COMPRESSION_ALGORITHM``).
    """

    capabilities: Capability
    username: str
    auth_response: bytes = b""
    max_packet_size: int = 0x01000000
    charset: int = DEFAULT_CHARSET
    database: str | None = None
    auth_plugin_name: str | None = None
    connect_attributes: tuple[tuple[str, str], ...] | None = None
    zstd_compression_level: int | None = None

    @property
    def attributes(self) -> dict[str, str]:
        """The connection attributes as a dict (``_client_name``, ``_pid``...)."""
        return dict(self.connect_attributes or ())


def _read_prefix(reader: Reader) -> tuple[Capability, int, int]:
    low = reader.int4()
    max_packet = reader.int4()
    charset = reader.int1()
    reader.fixed(19)
    extended = reader.int4()
    if low & Capability.LONG_PASSWORD:
        extended = 0
    return Capability(low | extended << 32), max_packet, charset


def _prefix(capabilities: int, max_packet_size: int, charset: int) -> bytes:
    low, extended = split_capabilities(capabilities)
    if low & Capability.LONG_PASSWORD:
        extended = 0
    return int4(low) + int4(max_packet_size) + int1(charset) + b"\x00" * 19 + int4(extended)


def decode_ssl_request(payload: bytes) -> SSLRequest:
    """Read an SSLRequest (32 bytes)."""
    reader = Reader(payload)
    try:
        capabilities, max_packet, charset = _read_prefix(reader)
    except MySQLRemoteError:
        raise _bad() from None
    return SSLRequest(capabilities=capabilities, max_packet_size=max_packet, charset=charset)


def encode_ssl_request(request: SSLRequest) -> bytes:
    """An SSLRequest's payload."""
    return _prefix(int(request.capabilities), request.max_packet_size, request.charset)


def decode_handshake_response(payload: bytes) -> HandshakeResponse:
    """Read a HandshakeResponse41.

    Raises:
        MySQLRemoteError: 1043 Bad handshake: a pre-4.1 client, or fields past the packet.
    """
    reader = Reader(payload)
    try:
        capabilities, max_packet, charset = _read_prefix(reader)
        if not capabilities & Capability.PROTOCOL_41:
            raise _bad()
        username = _text(reader.nul_str())
        if capabilities & Capability.PLUGIN_AUTH_LENENC_CLIENT_DATA:
            auth_response = reader.lenenc_str()
        elif capabilities & Capability.SECURE_CONNECTION:
            auth_response = reader.fixed(reader.int1())
        else:
            auth_response = reader.nul_str()
        database = None
        if capabilities & Capability.CONNECT_WITH_DB and not reader.at_end():
            database = _text(reader.nul_str())
        plugin = None
        if capabilities & Capability.PLUGIN_AUTH and not reader.at_end():
            plugin = _text(reader.nul_str_or_rest())
        attributes = None
        if capabilities & Capability.CONNECT_ATTRS and not reader.at_end():
            block = Reader(reader.lenenc_str())
            pairs = []
            while not block.at_end():
                key = _text(block.lenenc_str())
                pairs.append((key, _text(block.lenenc_str())))
            attributes = tuple(pairs)
        zstd = None
        if capabilities & Capability.ZSTD_COMPRESSION_ALGORITHM and not reader.at_end():
            zstd = reader.int1()
    except MySQLRemoteError:
        raise _bad() from None
    return HandshakeResponse(
        capabilities=capabilities,
        max_packet_size=max_packet,
        charset=charset,
        username=username,
        auth_response=auth_response,
        database=database,
        auth_plugin_name=plugin,
        connect_attributes=attributes,
        zstd_compression_level=zstd,
    )


def encode_handshake_response(response: HandshakeResponse) -> bytes:
    """A HandshakeResponse41's payload; the auth response in the form the capabilities say.

    Raises:
        MySQLLocalError: an auth response over 255 bytes without
            ``PLUGIN_AUTH_LENENC_CLIENT_DATA``, or one with a NUL without ``SECURE_CONNECTION``.
    """
    capabilities = int(response.capabilities)
    out = [
        _prefix(capabilities, response.max_packet_size, response.charset),
        nul_str(_raw(response.username)),
    ]
    auth = response.auth_response
    if capabilities & Capability.PLUGIN_AUTH_LENENC_CLIENT_DATA:
        out.append(lenenc_str(auth))
    elif capabilities & Capability.SECURE_CONNECTION:
        if len(auth) > 0xFF:
            raise MySQLLocalError(error_info(1105, "auth response over 255 bytes"))
        out.append(int1(len(auth)) + auth)
    else:
        out.append(nul_str(auth))
    if capabilities & Capability.CONNECT_WITH_DB and response.database is not None:
        out.append(nul_str(_raw(response.database)))
    elif capabilities & Capability.CONNECT_WITH_DB and (
        response.auth_plugin_name is not None or response.connect_attributes is not None
    ):
        out.append(b"\x00")
    if capabilities & Capability.PLUGIN_AUTH and response.auth_plugin_name is not None:
        out.append(nul_str(_raw(response.auth_plugin_name)))
    if capabilities & Capability.CONNECT_ATTRS and response.connect_attributes is not None:
        out.append(lenenc_str(_attributes(response.connect_attributes)))
    if (
        capabilities & Capability.ZSTD_COMPRESSION_ALGORITHM
        and response.zstd_compression_level is not None
    ):
        out.append(int1(response.zstd_compression_level))
    return b"".join(out)


def _attributes(pairs: Sequence[tuple[str, str]]) -> bytes:
    return b"".join(lenenc_str(_raw(key)) + lenenc_str(_raw(value)) for key, value in pairs)


def decode_client_handshake(payload: bytes) -> SSLRequest | HandshakeResponse:
    """Read the client's first packet: an SSLRequest or a HandshakeResponse41.

    An SSLRequest is exactly 32 bytes with ``CLIENT_SSL`` set; a HandshakeResponse41 is longer
    (it names a user, NUL-terminated, after the same 32 bytes).
    """
    if len(payload) == SSL_REQUEST_SIZE:
        request = decode_ssl_request(payload)
        if request.capabilities & Capability.SSL:
            return request
        raise _bad()
    return decode_handshake_response(payload)


# -- authentication exchange ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuthSwitchRequest:
    """0xFE: the server asks the client to authenticate with another plugin.

    Attributes:
        plugin_name: the plugin, or ``None`` for the pre-4.1 form (a lone 0xFE byte:
            "use mysql_old_password").
        plugin_data: the plugin's data as sent; for the scramble-based plugins, the new
            20-byte scramble followed by a NUL (see :attr:`scramble`).
    """

    plugin_name: str | None
    plugin_data: bytes = b""

    @property
    def scramble(self) -> bytes:
        """``plugin_data`` without the trailing NUL servers append."""
        data = self.plugin_data
        return data[:-1] if data.endswith(b"\x00") else data


def decode_auth_switch_request(payload: bytes) -> AuthSwitchRequest:
    """Read an AuthSwitchRequest (first byte 0xFE)."""
    reader = Reader(payload)
    if reader.int1() != PacketHeader.EOF:
        raise reader.fail()
    if reader.at_end():
        return AuthSwitchRequest(None)
    plugin = _text(reader.nul_str_or_rest())
    return AuthSwitchRequest(plugin, reader.rest())


def encode_auth_switch_request(request: AuthSwitchRequest) -> bytes:
    """An AuthSwitchRequest's payload."""
    if request.plugin_name is None:
        return b"\xfe"
    return b"\xfe" + nul_str(_raw(request.plugin_name)) + request.plugin_data


@dataclass(frozen=True, slots=True)
class AuthMoreData:
    """0x01: plugin-specific data from the server (caching_sha2's 0x03 / 0x04 markers, a PEM
    public key...)."""

    data: bytes


def decode_auth_more_data(payload: bytes) -> AuthMoreData:
    """Read an AuthMoreData packet (first byte 0x01)."""
    if not payload or payload[0] != PacketHeader.AUTH_MORE_DATA:
        raise Reader(payload).fail()
    return AuthMoreData(payload[1:])


def encode_auth_more_data(more: AuthMoreData) -> bytes:
    """An AuthMoreData packet's payload."""
    return b"\x01" + more.data
