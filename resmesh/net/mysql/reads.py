"""Which queries may read on another node than the session's own, and what that node's
connection must repeat of the session first.

A MySQL session lives on one connection of the primary (its transactions, variables,
temporary tables and prepared statements are there). A read that depends on none of that
gives the same answer on a replica, as long as the replica's connection has the session's
database and its ``SET`` statements: ProxySQL routes such reads to its reader hostgroup and
tracks the session's settings the same way (``mysql-set_query_lock_on_hostgroup``, its
"multiplexing" rules: https://proxysql.com/documentation/multiplexing/).

A read may go elsewhere (:func:`reads_anywhere`) when every statement is a ``SELECT`` (or
``WITH``, ``VALUES``, ``TABLE``, ``DESCRIBE``, ``EXPLAIN``) and its text names nothing that
belongs to the session or changes something: a locking read (``FOR UPDATE``, ``LOCK IN SHARE
MODE``), a lock function, a user variable (``@x``: its value is the session's), the last
statement's counters (``LAST_INSERT_ID()``, ``FOUND_ROWS()``, ``ROW_COUNT()``, warnings), the
connection's id, a sequence, or ``INTO`` a variable or file. The text is scanned as bytes, so a
word inside a string literal also keeps the read at home: wrong only on the safe side.

What is repeated (:class:`SessionSettings`): the database (``USE``, COM_INIT_DB: the connection
is taken from the node's pool for that database) and each ``SET`` the session ran (``SET
NAMES``, ``SET time_zone``, ``SET sql_mode``...), in order. Not repeated: ``autocommit`` (a
session with it off reads at home: its reads are in a transaction) and user variables (reads
that use them stay at home). Some state cannot be repeated and keeps every read of the session
at home until COM_RESET_CONNECTION: a temporary table, ``LOCK TABLES``, a ``SET`` that mixes
what is repeated with what is not, a ``USE`` whose name is not plain, too many ``SET``\\ s.

The same settings let a whole session move to a new primary at a safe point (between
transactions), unless it holds what is not tracked at all: user variables, named locks,
prepared statements (the session knows those), or state that keeps its reads at home.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from .sql import blank_literals

__all__ = ["READ_ANYWHERE_VERBS", "SessionSettings", "reads_anywhere"]

#: Statements that may run on any node (with the session's settings repeated there).
READ_ANYWHERE_VERBS: Final = frozenset(
    {"SELECT", "WITH", "VALUES", "TABLE", "DESCRIBE", "DESC", "EXPLAIN"}
)

#: What keeps a read at home: locking reads, lock and session functions, the last statement's
#: counters, sequences, ``INTO``, and a user variable (``@x`` not ``@@x``). Searched in the
#: upper-cased text, not with ``re.IGNORECASE`` (three times slower), behind a lookahead on
#: the characters the words start with (each position is tried once, not once per word).
_HOME_ONLY: Final = re.compile(
    rb"(?=[FLRWEICNPSM_@])(?:"
    rb"FOR\s+UPDATE|LOCK\s+IN\s+SHARE|FOR\s+SHARE|_LOCK\b|RELEASE_ALL_LOCKS|LAST_INSERT_ID|"
    rb"FOUND_ROWS|ROW_COUNT|WARNING_COUNT|ERROR_COUNT|IDENTITY|INSERT_ID|CONNECTION_ID|"
    rb"NEXTVAL|LASTVAL|SETVAL|NEXT\s+VALUE|PREVIOUS\s+VALUE|\bINTO\b|MASTER_POS_WAIT|"
    rb"MASTER_GTID_WAIT|(?<!@)@(?!@))"
)
_USER_VARIABLE: Final = re.compile(rb"(?<!@)@(?!@)")
#: Named locks and ``LAST_INSERT_ID(expr)`` (a value set by hand, which the replies do not
#: show), in the upper-cased text; user variables are looked for apart (an ``@`` first).
_UNMOVABLE: Final = re.compile(rb"(?=[GL])(?:GET_LOCK|LAST_INSERT_ID\s*\(\s*[^\s)])")
_TEMPORARY: Final = re.compile(rb"TEMPORARY", re.IGNORECASE)
_AUTOCOMMIT: Final = re.compile(rb"AUTOCOMMIT", re.IGNORECASE)

#: A ``SET`` of this session's own variables: ``SET [SESSION|LOCAL] x = ...``, ``SET
#: @@[session.|local.]x = ...``, ``SET NAMES``, ``SET CHARACTER SET``, ``SET SESSION
#: TRANSACTION ...``: what is repeated.
_SESSION_SET: Final = re.compile(
    rb"\s*SET\s+(?:(?:SESSION|LOCAL)\s+TRANSACTION\b|(?:(?:SESSION|LOCAL)\s+|@@(?:SESSION\.|LOCAL\.)?)?"
    rb"(?:NAMES\b|CHARACTER\s+SET\b|CHARSET\b|[A-Z_][A-Z0-9_]*\s*:?=))",
    re.IGNORECASE,
)
#: ``SET`` forms that leave the session's variables as they are: the server's globals, a
#: password, the next transaction only, one statement's variables (``SET STATEMENT ... FOR``,
#: whose statement is the call's verb). Neither repeated nor a reason to stay home.
_OTHER_SET: Final = re.compile(
    rb"\s*SET\s+(?:GLOBAL\b|PERSIST\b|PERSIST_ONLY\b|@@GLOBAL\.|@@PERSIST|PASSWORD\b|"
    rb"TRANSACTION\b|STATEMENT\b)",
    re.IGNORECASE,
)
#: ``SET @x = ...``: a user variable only (its value is not tracked; reads of it stay home).
_USER_SET: Final = re.compile(rb"\s*SET\s+@[A-Za-z0-9_$.]+\s*:?=[^,]*", re.IGNORECASE)
#: ``SET TRANSACTION ...`` (no ``SESSION``): for the next transaction only, which may be the
#: next statement's own (autocommit): that one runs at home.
_NEXT_TRANSACTION: Final = re.compile(rb"\s*SET\s+TRANSACTION\b", re.IGNORECASE)
#: A global variable in a ``SET`` (of several: its session ones cannot be told apart).
_GLOBAL_PART: Final = re.compile(rb"\bGLOBAL\b|\bPERSIST|@@GLOBAL\.", re.IGNORECASE)
#: A ``SET`` that turns autocommit on or off, and nothing else.
_AUTOCOMMIT_ONLY: Final = re.compile(
    rb"\s*SET\s+(?:(?:SESSION|LOCAL)\s+|@@(?:SESSION\.|LOCAL\.)?)?AUTOCOMMIT\s*(?:=|:=|\s)"
    rb"\s*[\w']+\s*;?\s*",
    re.IGNORECASE,
)
#: ``USE name`` with a plain or back-quoted name.
_USE: Final = re.compile(
    rb"\s*USE\s+(?:`([^`]{1,64})`|([A-Za-z0-9_$]{1,64}))\s*;?\s*", re.IGNORECASE
)
#: ``SET`` statements repeated at most: a session that runs more (its own per-query settings)
#: reads at home.
MAX_SETTINGS: Final = 32


def reads_anywhere(sql: bytes, verbs: list[str], backslash_escapes: bool = True) -> bool:
    """Whether the query ``sql`` (its statements' ``verbs``) may run on another node than the
    session's, given the session's settings repeated there."""
    if not verbs:
        return False
    for verb in verbs:
        if verb not in READ_ANYWHERE_VERBS:
            return False
    text = blank_literals(sql, backslash_escapes) if b"@" in sql else sql
    return _HOME_ONLY.search(text.upper()) is None


@dataclass(slots=True)
class SessionSettings:
    """What another connection must repeat to run a read of this session.

    Attributes:
        database: the session's database (``None``: none selected).
        statements: the ``SET`` statements the session ran, in order (each a COM_QUERY's SQL).
        home_only: why every read stays on the session's connection (``None``: they need not).
    """

    database: str | None = None
    statements: tuple[bytes, ...] = ()
    home_only: str | None = None
    #: What of the session cannot move to another connection even at a safe point (user
    #: variables, named locks, a LAST_INSERT_ID set by hand: their values are not
    #: tracked), if anything.
    unmovable: str | None = None
    #: Whether a backslash escapes in string literals (not in ``NO_BACKSLASH_ESCAPES`` mode,
    #: which the session's status flags say).
    backslash_escapes: bool = True
    #: A ``SET TRANSACTION`` waits for the next transaction: the next read runs at home.
    next_transaction: bool = False

    def ran_at_home(self, sql: bytes) -> None:
        """Any query the session's own connection runs: note state that would not follow
        the session to another connection (checked before the query's success is known: a
        false alarm only ends a session that a primary change would have moved)."""
        if self.unmovable is not None:
            return
        upper = sql.upper()
        if (
            b"@" in sql
            and _USER_VARIABLE.search(blank_literals(sql, self.backslash_escapes)) is not None
        ) or (
            (b"GET_LOCK" in upper or b"LAST_INSERT_ID" in upper)
            and _UNMOVABLE.search(upper) is not None
        ):
            self.unmovable = "user variables, named locks or LAST_INSERT_ID(expr)"

    def ran(self, sql: bytes, verbs: list[str]) -> None:
        """The session's own connection ran ``sql`` (statements ``verbs``) successfully:
        note what another connection would have to repeat."""
        if self.home_only is not None or not verbs:
            return
        if verbs == ["SET"]:
            self._set(sql)
            return
        if verbs == ["USE"]:
            used = _USE.fullmatch(sql)
            if used is None:
                self.home_only = "a USE whose database name is not plain"
            else:
                self.database = (used.group(1) or used.group(2)).decode("utf-8", "replace")
            return
        if "SET" in verbs or "USE" in verbs:
            self.home_only = "SET or USE in a multi-statement query"
        elif "LOCK" in verbs:
            self.home_only = "LOCK TABLES"
        elif "CREATE" in verbs and _TEMPORARY.search(sql):
            self.home_only = "a temporary table"
        elif "PREPARE" in verbs or "CALL" in verbs:
            self.home_only = "a procedure or an SQL PREPARE (what they set is not seen)"

    def _set(self, sql: bytes) -> None:
        if b"," in sql and _GLOBAL_PART.search(sql) is not None:
            self.home_only = "a SET of global and session variables together"
            return
        if _NEXT_TRANSACTION.match(sql) is not None:
            self.next_transaction = True
            return
        if _OTHER_SET.match(sql) is not None:
            return
        if _AUTOCOMMIT_ONLY.fullmatch(sql) is not None:
            return  # the status flags say whether the session is in autocommit mode
        if _USER_VARIABLE.search(blank_literals(sql, self.backslash_escapes)):
            if _USER_SET.fullmatch(sql) is None:
                self.home_only = "a SET from or with a user variable"
            return
        if _AUTOCOMMIT.search(sql):
            self.home_only = "a SET of autocommit with other settings"
            return
        if _SESSION_SET.match(sql) is None:
            self.home_only = "a SET the gateway does not repeat (SET ROLE...)"
            return
        # A repeat moves to the end: replayed in order, the last one must be the latest.
        earlier = tuple(statement for statement in self.statements if statement != sql)
        if len(earlier) >= MAX_SETTINGS:
            self.home_only = f"more than {MAX_SETTINGS} SET statements"
            return
        self.statements = (*earlier, sql)

    def select(self, database: str) -> None:
        """The session selected ``database`` (COM_INIT_DB)."""
        self.database = database

    def reset(self, database: str | None) -> None:
        """The session's state is gone (COM_RESET_CONNECTION, a new login): only
        ``database`` is left."""
        self.database = database
        self.statements = ()
        self.home_only = None
        self.unmovable = None
        self.next_transaction = False
