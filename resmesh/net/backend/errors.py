"""The error a backend connection raises when it cannot get an answer from its node.

These are *local-origin* failures in Envoy's sense (connect, reset, timeout): governance counts
them as ``LOCAL_ERROR`` against the node, and each frontend renders them in its protocol
(:class:`~resmesh.call.Unavailable` is what every frontend knows how to render).
"""

from __future__ import annotations

from ...call import Outcome, Unavailable

__all__ = ["BackendError"]


class BackendError(Unavailable):
    """The gateway could not get an answer from a backend node.

    Attributes:
        node: ``host:port`` of the node.
        reason: short human text (``"connection refused"``, ``"timed out after 5s"``).
    """

    node: str

    def __init__(self, node: str, reason: str) -> None:
        super().__init__(node, reason, Outcome.LOCAL_ERROR)
