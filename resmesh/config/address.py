"""``host:port``, the one way the configuration names a TCP endpoint."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Final

__all__ = ["Address"]

_HOSTNAME_RE: Final = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,251}[A-Za-z0-9_.])?$")
_PORT_RE: Final = re.compile(r"^[0-9]{1,5}$")


@dataclass(frozen=True, slots=True)
class Address:
    """A TCP endpoint, ``host:port``.

    IPv6 hosts are stored without brackets and written with them (``[::1]:6380``), because
    that is the only spelling that is not ambiguous about where the port starts. Port 0 is
    allowed here (it means "any free port" when listening, which tests use); the config
    loader rejects it for backend nodes, where it means nothing.

    Raises:
        ValueError: on construction, if the host is empty or the port is outside 0..65535,
            so that code building addresses by hand cannot create one that cannot be bound.
    """

    host: str
    port: int

    def __post_init__(self) -> None:
        if not self.host:
            raise ValueError("empty host")
        if isinstance(self.port, bool) or not 0 <= self.port <= 65535:
            raise ValueError(f"port {self.port!r} is outside 0..65535")

    @classmethod
    def parse(cls, text: str) -> Address:
        """Parse ``"127.0.0.1:6380"``, ``"[::1]:6380"`` or ``"localhost:6379"``.

        Raises:
            ValueError: with a short reason (no port, bad port, bare IPv6, bad host name); the
                config loader wraps it into a :class:`ConfigError` that says where.
        """
        if text.startswith("["):
            end = text.find("]")
            if end < 0:
                raise ValueError("missing ']' after the IPv6 address")
            host, rest = text[1:end], text[end + 1 :]
            if not rest.startswith(":"):
                raise ValueError("missing ':port' after ']'")
            port_text = rest[1:]
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                raise ValueError(f"{host!r} is not an IPv6 address") from None
        else:
            host, sep, port_text = text.rpartition(":")
            if not sep:
                raise ValueError("missing ':port'")
            if ":" in host:
                raise ValueError("an IPv6 address needs brackets, like [::1]:6380")
            if not host:
                raise ValueError("missing host")
            if not _HOSTNAME_RE.match(host):
                raise ValueError(f"{host!r} is not a host name or IP address")
            if any(not 0 < len(label) < 64 for label in host.split(".")):
                # The resolver refuses these (an empty label, or one over 63 characters).
                raise ValueError(f"{host!r} has an empty label or one over 63 characters")
            if all(label.isdigit() for label in host.split(".")):
                try:
                    ipaddress.IPv4Address(host)
                except ValueError:
                    raise ValueError(f"{host!r} is not an IPv4 address") from None
        if not _PORT_RE.match(port_text) or int(port_text) > 65535:
            raise ValueError(f"port {port_text!r} is not a number in 0..65535")
        return cls(host, int(port_text))

    def __str__(self) -> str:
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"
