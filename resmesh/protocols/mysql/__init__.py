"""The MySQL/MariaDB client/server protocol (protocol 10), sans-IO, for both of the gateway's
roles: a server towards applications, a client towards MariaDB/MySQL backends.

Modules, one job each: :mod:`.constants` (numbers), :mod:`.errors` (ERR-packet errors),
:mod:`.wire` (integers and strings), :mod:`.packets` (framing), :mod:`.handshake` and
:mod:`.auth` / :mod:`.rsa` (connection phase), :mod:`.commands`, :mod:`.results`,
:mod:`.binary` and :mod:`.statements` (command phase), :mod:`.state` (transition tables),
:mod:`.events` and :mod:`.connection` (the h11-style connection object). The wire is described
in ``protocols/mysql.md``; public sources: https://mariadb.com/kb/en/clientserver-protocol/ and
https://dev.mysql.com/doc/dev/mysql-server/latest/PAGE_PROTOCOL.html.
"""

from .connection import NEED_DATA, PAUSED, Connection, StatementInfo
from .errors import ErrorInfo, MySQLLocalError, MySQLRemoteError
from .packets import Packet, PacketDecoder, encode_packet
from .state import PacketKind, Role, State

__all__ = [
    "NEED_DATA",
    "PAUSED",
    "Connection",
    "ErrorInfo",
    "MySQLLocalError",
    "MySQLRemoteError",
    "Packet",
    "PacketDecoder",
    "PacketKind",
    "Role",
    "State",
    "StatementInfo",
    "encode_packet",
]
