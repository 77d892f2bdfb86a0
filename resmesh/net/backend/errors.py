"""Errors raised by backend connections, each carrying the text a client should see.

These are *local-origin* failures in Envoy's sense (connect, reset, timeout): the gateway could not
get an answer from the node. Governance classifies them as ``LOCAL_ERROR``.
"""

from __future__ import annotations

__all__ = ["BackendError"]


class BackendError(Exception):
    """The gateway could not get an answer from a backend node.

    Attributes:
        node: ``host:port`` of the node.
        reason: short human text (``"connection refused"``, ``"timed out after 5s"``).
    """

    def __init__(self, node: str, reason: str) -> None:
        super().__init__(f"backend {node}: {reason}")
        self.node = node
        self.reason = reason

    @property
    def reply_text(self) -> str:
        """The RESP error text (without ``-``) the frontend sends for this failure."""
        return f"ERR resmesh: backend {self.node} unavailable: {self.reason}"
