"""Motan2 over Trio sockets: a multiplexing client (:mod:`.client`) and a small server for async
handlers (:mod:`.service`). The wire codecs are sans-IO, in :mod:`resmesh.protocols.motan2`;
``protocols/motan2.md`` describes the protocol."""

from __future__ import annotations

from .client import (
    Motan2Client,
    Motan2ConnectionError,
    Motan2Error,
    Motan2Timeout,
    open_client,
)
from .service import Motan2Service

__all__ = [
    "Motan2Client",
    "Motan2ConnectionError",
    "Motan2Error",
    "Motan2Service",
    "Motan2Timeout",
    "open_client",
]
