"""Numbers of the MySQL/MariaDB client/server protocol (protocol version 10), named once.

Written from the public protocol documentation, not from any driver's source:

- MariaDB: https://mariadb.com/kb/en/clientserver-protocol/ (capabilities and the initial
  handshake: https://mariadb.com/kb/en/connection/; OK, ERR and EOF:
  https://mariadb.com/kb/en/ok_packet/, https://mariadb.com/kb/en/err_packet/,
  https://mariadb.com/kb/en/eof_packet/; column types:
  https://mariadb.com/kb/en/result-set-packets/; MariaDB's own capabilities:
  https://mariadb.com/kb/en/mariadb-protocol-differences-with-mysql/);
- MySQL: https://dev.mysql.com/doc/dev/mysql-server/latest/PAGE_PROTOCOL.html (capability
  flags: ``group__group__cs__capabilities__flags.html``; status flags: ``mysql__com_8h.html``);
- error numbers and texts as MariaDB 10.11's ``perror`` prints them, SQLSTATEs from
  https://mariadb.com/kb/en/mariadb-error-codes/.

Why enums: a packet dump that says ``Capability.DEPRECATE_EOF|PROTOCOL_41`` can be read, and
``IntFlag`` members still compare and combine as the integers on the wire. MariaDB's extended
capabilities (sent in 4 bytes of the handshake that MySQL leaves reserved) are kept in the same
flag type, shifted left by 32, so one value says everything a peer can do.
"""

from __future__ import annotations

import enum
from typing import Final

__all__ = [
    "CACHING_SHA2_FAST_AUTH_SUCCESS",
    "CACHING_SHA2_PERFORM_FULL_AUTH",
    "CACHING_SHA2_REQUEST_PUBLIC_KEY",
    "DEFAULT_CHARSET",
    "ERROR_SQLSTATES",
    "MARIADB_VERSION_PREFIX",
    "PROTOCOL_VERSION",
    "AuthPlugin",
    "Capability",
    "Charset",
    "ColumnFlag",
    "ColumnType",
    "Command",
    "CursorFlag",
    "ErrorCode",
    "PacketHeader",
    "ServerStatus",
    "SessionTrack",
    "SetOption",
]

#: The only protocol version this codec speaks (the first byte of the initial handshake).
PROTOCOL_VERSION: Final = 10

#: MariaDB 10.x prefixes its version string with this, so that MySQL replicas that parse the
#: version keep working ("5.5.5-10.11.19-MariaDB"); MariaDB 11 dropped it.
MARIADB_VERSION_PREFIX: Final = "5.5.5-"


class Capability(enum.IntFlag):
    """Capability flags: what a client and a server can do; the session uses the intersection.

    Bits 0-31 are the protocol's (both the server's greeting and the client's response carry
    them); bits 32-37 are MariaDB's extended capabilities, present on the wire only when the
    sender does *not* set :attr:`LONG_PASSWORD` (which MariaDB calls ``CLIENT_MYSQL``).
    """

    #: MySQL: "new more secure passwords" (always set by MySQL peers). MariaDB calls it
    #: ``CLIENT_MYSQL``: a MariaDB server or client leaves it clear, which says that the
    #: extended capabilities follow.
    LONG_PASSWORD = 1 << 0
    #: Affected rows of an UPDATE count the rows found, not the rows changed.
    FOUND_ROWS = 1 << 1
    #: Column flags are sent in full.
    LONG_FLAG = 1 << 2
    #: The handshake response may name a database.
    CONNECT_WITH_DB = 1 << 3
    #: ``db.table.column`` is refused.
    NO_SCHEMA = 1 << 4
    #: The compressed protocol (not supported by this codec).
    COMPRESS = 1 << 5
    ODBC = 1 << 6
    #: ``LOAD DATA LOCAL INFILE`` is allowed.
    LOCAL_FILES = 1 << 7
    IGNORE_SPACE = 1 << 8
    #: The 4.1 protocol: 2-byte status and warnings in OK/EOF, SQLSTATE in ERR.
    PROTOCOL_41 = 1 << 9
    INTERACTIVE = 1 << 10
    #: TLS: the client sends an SSLRequest and then upgrades the connection.
    SSL = 1 << 11
    IGNORE_SIGPIPE = 1 << 12
    #: Status flags in OK (pre-4.1 peers only; 4.1 always has them).
    TRANSACTIONS = 1 << 13
    RESERVED = 1 << 14
    #: 4.1 authentication: the auth response carries a 1-byte length.
    SECURE_CONNECTION = 1 << 15
    #: Several statements per COM_QUERY.
    MULTI_STATEMENTS = 1 << 16
    #: Several result sets per command (stored procedures).
    MULTI_RESULTS = 1 << 17
    #: Several result sets per COM_STMT_EXECUTE.
    PS_MULTI_RESULTS = 1 << 18
    #: Authentication plugins: the plugin is named in the handshake, AuthSwitchRequest exists.
    PLUGIN_AUTH = 1 << 19
    #: The handshake response ends with connection attributes.
    CONNECT_ATTRS = 1 << 20
    #: The auth response in the handshake response is a length-encoded string.
    PLUGIN_AUTH_LENENC_CLIENT_DATA = 1 << 21
    CAN_HANDLE_EXPIRED_PASSWORDS = 1 << 22
    #: OK packets may carry session state changes.
    SESSION_TRACK = 1 << 23
    #: Result sets end with an OK packet (header 0xFE) instead of EOF; no EOF after columns.
    DEPRECATE_EOF = 1 << 24
    #: MySQL 8: result sets may omit column definitions.
    OPTIONAL_RESULTSET_METADATA = 1 << 25
    #: MySQL 8: zstd compression (a level byte ends the handshake response).
    ZSTD_COMPRESSION_ALGORITHM = 1 << 26
    #: MySQL 8.0.23+: COM_QUERY and COM_STMT_EXECUTE carry named query attributes.
    QUERY_ATTRIBUTES = 1 << 27
    MULTI_FACTOR_AUTHENTICATION = 1 << 28
    CAPABILITY_EXTENSION = 1 << 29
    SSL_VERIFY_SERVER_CERT = 1 << 30
    REMEMBER_OPTIONS = 1 << 31
    #: MariaDB: progress report packets (ERR with errno 0xFFFF) during long statements.
    MARIADB_PROGRESS = 1 << 32
    #: MariaDB: COM_MULTI (removed again; never negotiated by current servers).
    MARIADB_COM_MULTI = 1 << 33
    #: MariaDB: COM_STMT_BULK_EXECUTE and parameter indicators.
    MARIADB_STMT_BULK_OPERATIONS = 1 << 34
    #: MariaDB 10.5+: column definitions carry an extra length-encoded metadata string.
    MARIADB_EXTENDED_METADATA = 1 << 35
    #: MariaDB 10.6+: a result set's column count is followed by a "metadata follows" byte,
    #: and COM_STMT_EXECUTE results may omit the column definitions the client cached.
    MARIADB_CACHE_METADATA = 1 << 36
    #: MariaDB 11.5+: a result per row of a bulk execution.
    MARIADB_BULK_UNIT_RESULTS = 1 << 37


class ServerStatus(enum.IntFlag):
    """Server status flags, sent in the greeting and in every OK and EOF packet.

    The gateway tracks transactions with these (never by parsing SQL): :attr:`IN_TRANS` is set
    from the first statement of a transaction to its end, :attr:`MORE_RESULTS_EXISTS` says that
    another result follows the one this packet ends.
    """

    IN_TRANS = 0x0001
    AUTOCOMMIT = 0x0002
    MORE_RESULTS_EXISTS = 0x0008
    QUERY_NO_GOOD_INDEX_USED = 0x0010
    QUERY_NO_INDEX_USED = 0x0020
    #: COM_STMT_EXECUTE opened a cursor: rows come with COM_STMT_FETCH.
    CURSOR_EXISTS = 0x0040
    LAST_ROW_SENT = 0x0080
    DB_DROPPED = 0x0100
    NO_BACKSLASH_ESCAPES = 0x0200
    METADATA_CHANGED = 0x0400
    QUERY_WAS_SLOW = 0x0800
    #: The result set holds a stored procedure's OUT parameters.
    PS_OUT_PARAMS = 0x1000
    IN_TRANS_READONLY = 0x2000
    #: The OK packet carries session state changes (with CLIENT_SESSION_TRACK).
    SESSION_STATE_CHANGED = 0x4000
    #: MariaDB: the session's sql_mode includes ANSI_QUOTES.
    ANSI_QUOTES = 0x8000


class Command(enum.IntEnum):
    """The first byte of a client's packet in the command phase (``COM_*``)."""

    SLEEP = 0x00
    QUIT = 0x01
    INIT_DB = 0x02
    QUERY = 0x03
    FIELD_LIST = 0x04
    CREATE_DB = 0x05
    DROP_DB = 0x06
    REFRESH = 0x07
    SHUTDOWN = 0x08
    STATISTICS = 0x09
    PROCESS_INFO = 0x0A
    CONNECT = 0x0B
    PROCESS_KILL = 0x0C
    DEBUG = 0x0D
    PING = 0x0E
    TIME = 0x0F
    DELAYED_INSERT = 0x10
    CHANGE_USER = 0x11
    BINLOG_DUMP = 0x12
    TABLE_DUMP = 0x13
    CONNECT_OUT = 0x14
    REGISTER_SLAVE = 0x15
    STMT_PREPARE = 0x16
    STMT_EXECUTE = 0x17
    STMT_SEND_LONG_DATA = 0x18
    STMT_CLOSE = 0x19
    STMT_RESET = 0x1A
    SET_OPTION = 0x1B
    STMT_FETCH = 0x1C
    DAEMON = 0x1D
    BINLOG_DUMP_GTID = 0x1E
    RESET_CONNECTION = 0x1F
    #: MariaDB: an array execution of a prepared statement.
    STMT_BULK_EXECUTE = 0xFA


class PacketHeader(enum.IntEnum):
    """First bytes that give a server packet its meaning (and the client's auth markers)."""

    OK = 0x00
    #: AuthMoreData in the authentication exchange.
    AUTH_MORE_DATA = 0x01
    #: LOCAL INFILE request in reply to a query; also NULL in a text row.
    LOCAL_INFILE = 0xFB
    #: EOF, the deprecate-EOF OK, or AuthSwitchRequest during authentication.
    EOF = 0xFE
    ERR = 0xFF


#: caching_sha2_password's AuthMoreData markers (one byte after the 0x01 header), and the
#: client's request for the server's RSA public key.
CACHING_SHA2_REQUEST_PUBLIC_KEY: Final = 0x02
CACHING_SHA2_FAST_AUTH_SUCCESS: Final = 0x03
CACHING_SHA2_PERFORM_FULL_AUTH: Final = 0x04


class AuthPlugin(enum.StrEnum):
    """Authentication plugin names as they appear on the wire."""

    NATIVE_PASSWORD = "mysql_native_password"
    CACHING_SHA2_PASSWORD = "caching_sha2_password"
    SHA256_PASSWORD = "sha256_password"
    CLEAR_PASSWORD = "mysql_clear_password"
    OLD_PASSWORD = "mysql_old_password"
    ED25519 = "client_ed25519"
    GSSAPI = "auth_gssapi_client"
    DIALOG = "dialog"


class ColumnType(enum.IntEnum):
    """Field types (``MYSQL_TYPE_*``) of column definitions and statement parameters."""

    DECIMAL = 0x00
    TINY = 0x01
    SHORT = 0x02
    LONG = 0x03
    FLOAT = 0x04
    DOUBLE = 0x05
    NULL = 0x06
    TIMESTAMP = 0x07
    LONGLONG = 0x08
    INT24 = 0x09
    DATE = 0x0A
    TIME = 0x0B
    DATETIME = 0x0C
    YEAR = 0x0D
    NEWDATE = 0x0E
    VARCHAR = 0x0F
    BIT = 0x10
    TIMESTAMP2 = 0x11
    DATETIME2 = 0x12
    TIME2 = 0x13
    JSON = 0xF5
    NEWDECIMAL = 0xF6
    ENUM = 0xF7
    SET = 0xF8
    TINY_BLOB = 0xF9
    MEDIUM_BLOB = 0xFA
    LONG_BLOB = 0xFB
    BLOB = 0xFC
    VAR_STRING = 0xFD
    STRING = 0xFE
    GEOMETRY = 0xFF


class ColumnFlag(enum.IntFlag):
    """Column definition flags."""

    NOT_NULL = 0x0001
    PRI_KEY = 0x0002
    UNIQUE_KEY = 0x0004
    MULTIPLE_KEY = 0x0008
    BLOB = 0x0010
    UNSIGNED = 0x0020
    ZEROFILL = 0x0040
    BINARY = 0x0080
    ENUM = 0x0100
    AUTO_INCREMENT = 0x0200
    TIMESTAMP = 0x0400
    SET = 0x0800
    NO_DEFAULT_VALUE = 0x1000
    ON_UPDATE_NOW = 0x2000
    PART_KEY = 0x4000
    NUM = 0x8000


class CursorFlag(enum.IntFlag):
    """The flags byte of COM_STMT_EXECUTE."""

    NO_CURSOR = 0x00
    READ_ONLY = 0x01
    FOR_UPDATE = 0x02
    SCROLLABLE = 0x04
    #: MySQL 8 with CLIENT_QUERY_ATTRIBUTES: a parameter count precedes the parameters.
    PARAMETER_COUNT_AVAILABLE = 0x08


class SetOption(enum.IntEnum):
    """COM_SET_OPTION's argument."""

    MULTI_STATEMENTS_ON = 0
    MULTI_STATEMENTS_OFF = 1


class SessionTrack(enum.IntEnum):
    """Types of the session state changes an OK packet carries (CLIENT_SESSION_TRACK)."""

    SYSTEM_VARIABLES = 0x00
    SCHEMA = 0x01
    STATE_CHANGE = 0x02
    GTIDS = 0x03
    TRANSACTION_CHARACTERISTICS = 0x04
    TRANSACTION_STATE = 0x05


class Charset(enum.IntEnum):
    """Collation ids the gateway names (the handshake's and column definitions' charset)."""

    LATIN1_SWEDISH_CI = 8
    UTF8MB3_GENERAL_CI = 33
    UTF8MB4_GENERAL_CI = 45
    BINARY = 63
    UTF8MB4_UNICODE_CI = 224
    UTF8MB4_0900_AI_CI = 255


#: MariaDB 10.11's default collation, what its greeting announces.
DEFAULT_CHARSET: Final = Charset.UTF8MB4_GENERAL_CI


class ErrorCode(enum.IntEnum):
    """Server error numbers the gateway sends or reacts to (``ER_*``). Texts: :mod:`.errors`."""

    UNKNOWN_ERROR = 1105
    CON_COUNT_ERROR = 1040
    HANDSHAKE_ERROR = 1043
    DBACCESS_DENIED_ERROR = 1044
    ACCESS_DENIED_ERROR = 1045
    NO_DB_ERROR = 1046
    UNKNOWN_COM_ERROR = 1047
    BAD_DB_ERROR = 1049
    DUP_ENTRY = 1062
    PARSE_ERROR = 1064
    NO_SUCH_TABLE = 1146
    NET_PACKET_TOO_LARGE = 1153
    NET_PACKETS_OUT_OF_ORDER = 1156
    NET_READ_ERROR = 1158
    NET_READ_INTERRUPTED = 1159
    LOCK_WAIT_TIMEOUT = 1205
    WRONG_ARGUMENTS = 1210
    LOCK_DEADLOCK = 1213
    SPECIFIC_ACCESS_DENIED_ERROR = 1227
    UNKNOWN_STMT_HANDLER = 1243
    NOT_SUPPORTED_AUTH_MODE = 1251
    OPTION_PREVENTS_STATEMENT = 1290
    QUERY_INTERRUPTED = 1317
    MALFORMED_PACKET = 1835
    CONNECTION_KILLED = 1927
    STATEMENT_TIMEOUT = 1969
    #: MariaDB's progress report (not an error): an ERR packet with this number.
    PROGRESS_REPORT = 0xFFFF


#: SQLSTATE of each error number above (``HY000`` for any other).
ERROR_SQLSTATES: Final[dict[int, str]] = {
    ErrorCode.UNKNOWN_ERROR: "HY000",
    ErrorCode.CON_COUNT_ERROR: "08004",
    ErrorCode.HANDSHAKE_ERROR: "08S01",
    ErrorCode.DBACCESS_DENIED_ERROR: "42000",
    ErrorCode.ACCESS_DENIED_ERROR: "28000",
    ErrorCode.NO_DB_ERROR: "3D000",
    ErrorCode.UNKNOWN_COM_ERROR: "08S01",
    ErrorCode.BAD_DB_ERROR: "42000",
    ErrorCode.DUP_ENTRY: "23000",
    ErrorCode.PARSE_ERROR: "42000",
    ErrorCode.NO_SUCH_TABLE: "42S02",
    ErrorCode.NET_PACKET_TOO_LARGE: "08S01",
    ErrorCode.NET_PACKETS_OUT_OF_ORDER: "08S01",
    ErrorCode.NET_READ_ERROR: "08S01",
    ErrorCode.NET_READ_INTERRUPTED: "08S01",
    ErrorCode.LOCK_WAIT_TIMEOUT: "HY000",
    ErrorCode.WRONG_ARGUMENTS: "HY000",
    ErrorCode.LOCK_DEADLOCK: "40001",
    ErrorCode.SPECIFIC_ACCESS_DENIED_ERROR: "42000",
    ErrorCode.UNKNOWN_STMT_HANDLER: "HY000",
    ErrorCode.NOT_SUPPORTED_AUTH_MODE: "08004",
    ErrorCode.OPTION_PREVENTS_STATEMENT: "HY000",
    ErrorCode.QUERY_INTERRUPTED: "70100",
    ErrorCode.MALFORMED_PACKET: "HY000",
    ErrorCode.CONNECTION_KILLED: "70100",
    ErrorCode.STATEMENT_TIMEOUT: "70100",
}
