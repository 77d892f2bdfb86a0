"""A tiny blocking MySQL client built on the sans-IO codec, for tests against a real MariaDB.

Not a test module. The codec does no I/O; this drives it with a plain socket (with a timeout on
every read), which is enough to log in, run commands and collect every event of each reply.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

from resmesh.protocols.mysql.auth import native_password_scramble
from resmesh.protocols.mysql.connection import NEED_DATA, PAUSED, Connection
from resmesh.protocols.mysql.constants import AuthPlugin, Capability
from resmesh.protocols.mysql.events import (
    AuthSwitch,
    ConnectionClosed,
    Err,
    Event,
    Greeting,
    Ok,
)
from resmesh.protocols.mysql.handshake import HandshakeResponse, encode_handshake_response
from resmesh.protocols.mysql.state import Role, State

#: What the codec's own client asks for: every feature the state machine follows.
CLIENT_CAPABILITIES = (
    Capability.LONG_FLAG
    | Capability.CONNECT_WITH_DB
    | Capability.PROTOCOL_41
    | Capability.TRANSACTIONS
    | Capability.SECURE_CONNECTION
    | Capability.MULTI_STATEMENTS
    | Capability.MULTI_RESULTS
    | Capability.PS_MULTI_RESULTS
    | Capability.PLUGIN_AUTH
    | Capability.CONNECT_ATTRS
    | Capability.PLUGIN_AUTH_LENENC_CLIENT_DATA
    | Capability.SESSION_TRACK
    | Capability.DEPRECATE_EOF
    | Capability.MARIADB_PROGRESS
    | Capability.MARIADB_EXTENDED_METADATA
    | Capability.MARIADB_CACHE_METADATA
)


@dataclass
class BlockingClient:
    """A logged-in connection: :meth:`command` sends one payload and returns its reply."""

    sock: socket.socket
    conn: Connection
    greeting: Greeting
    login: list[Event] = field(default_factory=list)

    def events(self) -> list[Event]:
        """Read until it is our turn again (the reply is complete) or the peer closes."""
        out: list[Event] = []
        while True:
            event = self.conn.next_event()
            if event is PAUSED:
                return out
            if event is NEED_DATA:
                self.conn.receive_data(self.sock.recv(1 << 20))
                continue
            out.append(event)
            if isinstance(event, ConnectionClosed):
                return out

    def command(self, payload: bytes) -> list[Event]:
        """Send a command and read its whole reply (nothing for commands without one)."""
        self.sock.sendall(self.conn.send(payload))
        if self.conn.state in (State.IDLE, State.CLOSED):
            return []
        return self.events()

    def send(self, payload: bytes) -> None:
        """Send a packet without reading (pipelining, LOCAL INFILE data)."""
        self.sock.sendall(self.conn.send(payload))

    def close(self) -> None:
        self.sock.close()


def connect(
    host: str,
    port: int,
    user: str,
    password: str,
    database: str | None = None,
    *,
    capabilities: Capability = CLIENT_CAPABILITIES,
    timeout: float = 5.0,
    max_payload: int = 64 * 1024 * 1024,
) -> BlockingClient:
    """Log in with mysql_native_password (answering an AuthSwitchRequest if one comes)."""
    sock = socket.create_connection((host, port), timeout=timeout)
    conn = Connection(Role.CLIENT, max_payload=max_payload)
    client = BlockingClient(sock, conn, greeting=None)  # type: ignore[arg-type]
    first = client.events()
    greeting = first[0]
    assert isinstance(greeting, Greeting), first
    client.greeting = greeting
    if database is None:
        capabilities &= ~Capability.CONNECT_WITH_DB
    scramble = greeting.handshake.auth_plugin_data
    response = HandshakeResponse(
        capabilities=capabilities,
        username=user,
        auth_response=native_password_scramble(password.encode(), scramble),
        database=database,
        auth_plugin_name=AuthPlugin.NATIVE_PASSWORD.value,
        connect_attributes=(("_client_name", "resmesh-codec-test"),),
    )
    client.login = client.command(encode_handshake_response(response))
    while client.login and isinstance(client.login[-1], AuthSwitch):
        switch = client.login[-1]
        assert isinstance(switch, AuthSwitch)
        reply = native_password_scramble(password.encode(), switch.request.scramble)
        client.login += client.command(reply)
    assert isinstance(client.login[-1], Ok | Err), client.login
    return client
