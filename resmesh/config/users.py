"""``users:``: who may log in to the gateway (Redis ``AUTH user pass``, a MySQL login), to
which clusters, and how much each may call (``limit``: on each MySQL cluster it uses, in
addition to the cluster's own limits)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from ..call import Protocol
from ..policies.limit import LimitConfig
from . import values
from .cluster import ClusterConfig
from .errors import Context, KeyPath, describe, unknown_fix
from .fields import parse_section
from .governance import check_limit

__all__ = ["UserConfig", "parse_users"]

_USER_KEYS: Final = ("password", "clusters", "limit")
_REQUIRED_KEYS: Final = ("password", "clusters")


@dataclass(frozen=True, slots=True)
class UserConfig:
    """A gateway login, the clusters it may use, and its limits on each (``None``: only
    the clusters' own)."""

    name: str
    password: str
    clusters: frozenset[str]
    limit: LimitConfig | None = None


def parse_users(
    ctx: Context, value: object, path: KeyPath, clusters: Mapping[str, ClusterConfig]
) -> dict[str, UserConfig]:
    section = values.mapping(
        ctx,
        value,
        path,
        None,
        example="{app: {password: secret, clusters: [feed-cache]}}",
        allow_null=True,
    )
    users: dict[str, UserConfig] = {}
    for name, raw in section.items():
        user_path = (*path, name)
        values.name(ctx, name, user_path, "user")
        entry = values.mapping(
            ctx,
            raw,
            user_path,
            _USER_KEYS,
            example="{password: secret, clusters: [feed-cache]}",
            required=_REQUIRED_KEYS,
        )
        password = values.string(ctx, entry["password"], (*user_path, "password"), example="secret")
        raw_clusters = entry["clusters"]
        clusters_path = (*user_path, "clusters")
        example = f"[{next(iter(clusters))}]"
        if not isinstance(raw_clusters, list):
            raise ctx.error(
                clusters_path,
                f"expected a list of cluster names, got {describe(raw_clusters)}",
                f"write it as a list, e.g. clusters: {example}",
            )
        if not raw_clusters:
            raise ctx.error(
                clusters_path,
                "the user may use no cluster at all",
                f"list the clusters this user may use, e.g. clusters: {example}",
            )
        allowed: set[str] = set()
        for index, item in enumerate(raw_clusters):
            cluster = values.string(ctx, item, (*clusters_path, index), example="feed-cache")
            if cluster not in clusters:
                otherwise = f"name a cluster defined under clusters: {', '.join(clusters)}"
                fix = unknown_fix(cluster, clusters, otherwise)
                raise ctx.error((*clusters_path, index), f"unknown cluster {cluster!r}", fix)
            allowed.add(cluster)
        limit = None
        if entry.get("limit") is not None:
            limit_path = (*user_path, "limit")
            limit = parse_section(ctx, entry["limit"], limit_path, LimitConfig, check=check_limit)
            others = sorted(c for c in allowed if clusters[c].protocol is not Protocol.MYSQL)
            if others:
                raise ctx.error(
                    limit_path,
                    f"a user's limits apply to MySQL clusters only, and {others[0]} is "
                    f"{clusters[others[0]].protocol}",
                    "give that cluster's governance a limit, or give this user only MySQL clusters",
                )
        users[name] = UserConfig(
            name=name, password=password, clusters=frozenset(allowed), limit=limit
        )
    return users
