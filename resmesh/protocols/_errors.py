"""Protocol errors shared by every sans-IO codec.

Why a split between *local* and *remote*: a ``RemoteProtocolError`` means the peer sent bytes we
cannot accept (answer with the hint, then close); a ``LocalProtocolError`` means our own code asked
the codec to emit something invalid (a bug on our side, never the peer's fault). This is h11's
taxonomy. Each error carries a *wire reply hint*: the exact error text the protocol's real server
would send, so the frontend answers the way ``redis-server`` (or MariaDB, or a Motan2 server) would.
"""

from __future__ import annotations

from typing import Final

__all__ = ["LocalProtocolError", "ProtocolError", "RemoteProtocolError"]


class ProtocolError(Exception):
    """Base class: the byte stream violated the protocol.

    Attributes:
        reply_hint: the protocol's own wording for this error, ready to be rendered by the
            frontend (for RESP: the text after ``-``, e.g. ``"ERR Protocol error: ..."``).
        close: whether the connection is unusable afterwards. Framing errors always close,
            because the parser no longer knows where the next message starts.
    """

    def __init__(self, reply_hint: str, *, close: bool = True) -> None:
        super().__init__(reply_hint)
        self.reply_hint: Final[str] = reply_hint
        self.close: Final[bool] = close


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes that break the protocol."""


class LocalProtocolError(ProtocolError):
    """We were asked to produce bytes that would break the protocol (a bug on our side)."""
