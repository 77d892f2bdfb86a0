"""The registry: the live state of every cluster (nodes, route weights, degrade switches),
shared by every gateway that watches it and changed by ``resmesh ctl``.

:mod:`~resmesh.registry.state` is what it holds, :mod:`~resmesh.registry.base` the interface a
backend implements, :mod:`~resmesh.registry.file` and :mod:`~resmesh.registry.etcd` the two
backends, :func:`open_registry` picks one from the configuration.
"""

from __future__ import annotations

from ..config.registry import RegistryConfig, RegistryKind
from .base import Registry, RegistryUnavailable

__all__ = ["Registry", "RegistryUnavailable", "open_registry"]


def open_registry(config: RegistryConfig) -> Registry:
    """The backend ``config`` names."""
    if config.kind is RegistryKind.ETCD:
        from .etcd import EtcdRegistry  # httpx is imported only by gateways that use etcd

        return EtcdRegistry(config.endpoints, config.prefix, config.timeout)
    from .file import FileRegistry

    return FileRegistry(config.path, config.timeout)
