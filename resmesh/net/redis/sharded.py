"""Forwarding a run in a sharded cluster: each command to the node of its keys, multi-key
commands split across nodes and their replies merged (:mod:`resmesh.protocols.resp.sharding`
plans and merges; this module only sends). Every node's share of the run goes out in one write,
all nodes at once, through the HA engine's split runs (no failover: a key lives on one node)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...call import Run, Unavailable
from ...protocols._errors import ProtocolError
from ...protocols.resp import replies as R
from ...protocols.resp import sharding
from ...protocols.resp.framing import split_replies
from ...protocols.resp.requests import Command, encode_command
from ...protocols.resp.sharding import Plan

if TYPE_CHECKING:
    from .runtime import RedisRuntime

__all__ = ["forward_sharded"]


async def forward_sharded(
    runtime: RedisRuntime,
    commands: list[Command],
    slots: list[int],
    out: list[bytes],
    shape: tuple[int, int],
    deadline: float,
) -> None:
    """Send ``commands`` to their nodes and put each reply in ``out`` at its slot."""
    shards = runtime.shards
    assert shards is not None
    nodes = shards.shards
    per_node: dict[int, tuple[list[Command], list[bytes]]] = {}
    # Where each node's replies go: a slot, or (slot, part index) of a split command.
    routes: dict[int, list[int | tuple[int, int]]] = {}
    splits: dict[int, tuple[Plan, list[bytes]]] = {}
    for slot, command in zip(slots, commands, strict=True):
        planned = sharding.plan(command.args, shards.shard_of, len(nodes))
        if isinstance(planned, sharding.RefusedPlan):
            out[slot] = planned.reply
        elif not planned.parts:
            share = per_node.setdefault(planned.shard, ([], []))
            share[0].append(command)
            share[1].append(command.raw)
            routes.setdefault(planned.shard, []).append(slot)
        else:
            splits[slot] = (planned, [b""] * len(planned.parts))
            for index, part in enumerate(planned.parts):
                share = per_node.setdefault(part.shard, ([], []))
                share[0].append(command)
                share[1].append(encode_command(part.args))
                routes.setdefault(part.shard, []).append((slot, index))
    parts = {
        nodes[index]: Run(
            calls, b"".join(payloads), idempotent=False, deadline=deadline, shape=shape
        )
        for index, (calls, payloads) in per_node.items()
    }
    results = await runtime.engine.execute_split(parts)
    for index, targets in routes.items():
        result = results[nodes[index]]
        if isinstance(result, Unavailable):
            replies = [R.unavailable(result.node, result.reason)] * len(targets)
        else:
            replies = split_replies(b"".join(result.replies), len(targets))
        for target, reply in zip(targets, replies, strict=True):
            if isinstance(target, int):
                out[target] = reply
            else:
                splits[target[0]][1][target[1]] = reply
    for slot, (planned, part_replies) in splits.items():
        try:
            out[slot] = sharding.merge(planned, part_replies)
        except ProtocolError as exc:
            out[slot] = R.error(exc.reply_hint)
