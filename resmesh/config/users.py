"""``users:``: who may log in to the gateway (Redis ``AUTH user pass``), and to which clusters."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from . import values
from .cluster import ClusterConfig
from .errors import Context, KeyPath, describe, unknown_fix

__all__ = ["UserConfig", "parse_users"]

_USER_KEYS: Final = ("password", "clusters")


@dataclass(frozen=True, slots=True)
class UserConfig:
    """A gateway login and the clusters it may use."""

    name: str
    password: str
    clusters: frozenset[str]


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
            required=_USER_KEYS,
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
        users[name] = UserConfig(name=name, password=password, clusters=frozenset(allowed))
    return users
