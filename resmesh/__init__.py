"""resmesh: a resource-mesh gateway (Redis, MySQL, Motan2) with one governance pipeline."""

from __future__ import annotations

__version__ = "0.1.0"
