"""What a COM_QUERY is, for governance: the verb of each of its statements; and the request id
an app may put in its comment, for the access log.

Only the first word of each statement is read: comments, string literals and quoted names are
skipped so that a ``;`` inside them does not split a statement, and MySQL's executable comments
(``/*! ... */``, ``/*M! ... */``) are read as SQL, since the server runs them. MariaDB's ``SET
STATEMENT ... FOR <statement>`` is read as its statement's verb (it runs that statement).
Nothing else of the SQL is parsed; the server remains the judge of what a statement does.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["blank_literals", "leads_to_write", "request_id_of", "statement_verbs"]

_SPACE: Final = frozenset(b" \t\r\n\f\v")
_WORD: Final = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_")
#: Verbs longer than this are not verbs (the operation name comes from a client: bounded).
_MAX_VERB: Final = 32
#: Statements looked at in one query at most; a longer multi-statement query is judged by
#: these (and counted as a write if it has more).
_MAX_STATEMENTS: Final = 64


def statement_verbs(sql: bytes, *, backslash_escapes: bool = True) -> tuple[list[str], bool]:
    """The upper-cased verb of each statement of ``sql`` (``""`` for one that starts with no
    word), and whether statements were left unread (over :data:`_MAX_STATEMENTS`).
    ``backslash_escapes``: a backslash escapes the next character in a string literal (not in
    the ``NO_BACKSLASH_ESCAPES`` SQL mode, which the server's status flags say)."""
    verbs: list[str] = []
    n = len(sql)
    i = 0
    at_start = True
    while i < n:
        c = sql[i]
        if c in _SPACE:
            i += 1
        elif c == 0x2D and sql[i + 1 : i + 2] == b"-" and (i + 2 >= n or sql[i + 2] in _SPACE):
            i = _line_end(sql, i)  # "-- " comment
        elif c == 0x23:  # "#" comment
            i = _line_end(sql, i)
        elif c == 0x2F and sql[i + 1 : i + 2] == b"*":
            if sql[i + 2 : i + 3] == b"!" or sql[i + 2 : i + 4] == b"M!":
                # Executable comment: its contents run; skip the marker and version digits.
                i += 3 if sql[i + 2] == 0x21 else 4
                while i < n and 0x30 <= sql[i] <= 0x39:
                    i += 1
            else:
                end = sql.find(b"*/", i + 2)
                i = n if end < 0 else end + 2
        elif c == 0x2A and sql[i + 1 : i + 2] == b"/":
            i += 2  # the end of an executable comment
        elif c == 0x3B:  # ";"
            at_start = True  # (an empty statement has no verb)
            i += 1
        elif c == 0x28 and at_start:  # "(SELECT ...)"
            i += 1
        elif c in (0x27, 0x22, 0x60):  # quotes
            i = _quote_end(sql, i, c, backslash_escapes)
            if at_start:
                verbs.append("")
                at_start = False
        elif at_start:
            start = i
            while i < n and sql[i] in _WORD:
                i += 1
            word = sql[start:i]
            verb = word.decode("ascii").upper() if 0 < len(word) <= _MAX_VERB else ""
            if verb == "SET" and _SET_STATEMENT.match(sql, i):
                # MariaDB's SET STATEMENT var = value FOR <statement>: the statement's verb
                # (a FOR inside a value's quotes is not it: they are blanked, same length).
                inner = _FOR_VERB.search(blank_literals(sql, backslash_escapes), i)
                verb = inner.group(1).decode("ascii").upper() if inner is not None else ""
                i = inner.end() if inner is not None else n
            verbs.append(verb)
            if not word:
                i += 1
            at_start = False
            if len(verbs) >= _MAX_STATEMENTS:
                return verbs, _rest_has_statements(sql, i, backslash_escapes)
        else:
            i += 1
    return verbs, False


#: Quoted string literals, with and without backslash escapes.
_LITERAL: Final = re.compile(rb"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"", re.DOTALL)
_PLAIN_LITERAL: Final = re.compile(rb"'[^']*'|\"[^\"]*\"")


def blank_literals(sql: bytes, backslash_escapes: bool = True) -> bytes:
    """``sql`` with every quoted string's contents replaced by spaces (same offsets): what a
    word search must not look into (an ``@`` in an e-mail address, a ``FOR`` in a value)."""
    literal = _LITERAL if backslash_escapes else _PLAIN_LITERAL
    return literal.sub(lambda found: b"'" + b" " * (len(found[0]) - 2) + b"'", sql)


_SET_STATEMENT: Final = re.compile(rb"\s+STATEMENT\b", re.IGNORECASE)
_FOR_VERB: Final = re.compile(rb"\bFOR\s+([A-Za-z_]{1,32})", re.IGNORECASE)


#: Verbs whose statement may lead into a write: MySQL 8's ``WITH ... UPDATE``/``DELETE`` (the
#: main statement comes after the expressions) and ``EXPLAIN ANALYZE UPDATE`` (which runs it).
_LEADING: Final = frozenset({"WITH", "EXPLAIN", "DESCRIBE", "DESC"})
_WRITE_WORD: Final = re.compile(rb"\b(?:UPDATE|DELETE|INSERT|REPLACE)\b", re.IGNORECASE)


def leads_to_write(verbs: list[str], sql: bytes) -> bool:
    """Whether a query whose ``verbs`` include one that may lead into another statement
    (``WITH``, ``EXPLAIN``) names a write: the statements are not parsed here, so any such
    word counts, on the safe side."""
    return not _LEADING.isdisjoint(verbs) and _WRITE_WORD.search(sql) is not None


def _line_end(sql: bytes, i: int) -> int:
    end = sql.find(b"\n", i)
    return len(sql) if end < 0 else end + 1


def _quote_end(sql: bytes, i: int, quote: int, backslash_escapes: bool = True) -> int:
    n = len(sql)
    i += 1
    while i < n:
        c = sql[i]
        if c == 0x5C and quote != 0x60 and backslash_escapes:  # not in `names`
            i += 2
        elif c == quote:
            if sql[i + 1 : i + 2] == bytes((quote,)):
                i += 2  # doubled quote
            else:
                return i + 1
        else:
            i += 1
    return n


def _rest_has_statements(sql: bytes, i: int, backslash_escapes: bool) -> bool:
    rest = sql[i:]
    if b";" not in rest:
        return False
    verbs, _ = statement_verbs(rest.split(b";", 1)[1], backslash_escapes=backslash_escapes)
    return bool(verbs)


#: A request id in a comment: ``/* rid=abc-123 */``, or sqlcommenter's key='value' form
#: (https://google.github.io/sqlcommenter/spec/), ``/*request_id='abc-123'*/``.
_REQUEST_ID: Final = re.compile(rb"/\*[^*]*?\b(?:rid|request_id)\s*=\s*'?([A-Za-z0-9._:-]{1,128})")


def request_id_of(sql: bytes) -> str | None:
    """The request id an app put in a comment of ``sql`` (looked for in its first 4 KiB)."""
    found = _REQUEST_ID.search(sql, 0, 4096)
    return found.group(1).decode() if found is not None else None
