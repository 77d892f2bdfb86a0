"""How a degraded Redis call is answered: the RESP shape of "nothing there" and "done".

A ``miss`` switch (DESIGN §4) makes reads answer empty and writes answer as if applied, so a
cache client falls through to its source of truth instead of failing. "Empty" must have the
type the command normally returns, or clients raise on a type mismatch: ``MGET`` answers an
array of nils, ``HGETALL`` an empty map, ``EXISTS`` zero. The tables name the commands whose
reply is not the default (nil for reads, ``+OK`` for writes).
"""

from __future__ import annotations

from typing import Final

from ...policies.switch import SwitchAction, SwitchDecision
from . import redis_replies as R

__all__ = ["limit_reply", "switch_reply"]

#: Reads that answer an integer: zero for "nothing there".
_ZERO_READS: Final = frozenset(
    b"EXISTS STRLEN LLEN SCARD ZCARD HLEN HEXISTS SISMEMBER BITCOUNT GETBIT PFCOUNT XLEN "
    b"ZCOUNT ZLEXCOUNT HSTRLEN DBSIZE BITPOS SINTERCARD OBJECT".split()
)
#: Reads that answer an array: empty.
_ARRAY_READS: Final = frozenset(
    b"LRANGE HKEYS HVALS ZRANGE ZREVRANGE ZRANGEBYSCORE ZREVRANGEBYSCORE ZRANGEBYLEX "
    b"ZREVRANGEBYLEX KEYS SINTER SUNION SDIFF XRANGE XREVRANGE SRANDMEMBER ZRANDMEMBER "
    b"HRANDFIELD GEOPOS GEORADIUS_RO GEORADIUSBYMEMBER_RO GEOSEARCH SORT_RO LPOS ZDIFF "
    b"ZINTER ZUNION".split()
)
#: Reads that answer a set in RESP3.
_SET_READS: Final = frozenset(b"SMEMBERS".split())
#: Reads that answer a map in RESP3.
_MAP_READS: Final = frozenset(b"HGETALL".split())
#: Reads that answer one element per key or field (after the command name, or the key).
_PER_KEY_READS: Final = {b"MGET": 1, b"HMGET": 2, b"SMISMEMBER": 2, b"ZMSCORE": 2}
#: Cursor scans: cursor 0 (done) and no elements.
_SCANS: Final = frozenset(b"SCAN SSCAN HSCAN ZSCAN".split())
_SCAN_DONE: Final = b"*2\r\n$1\r\n0\r\n*0\r\n"
#: TTL of a missing key.
_MISSING_TTL: Final = frozenset(b"TTL PTTL EXPIRETIME PEXPIRETIME".split())
#: Writes that answer an integer (a count, a new length, a flag): zero, "nothing changed".
_COUNT_WRITES: Final = frozenset(
    b"DEL UNLINK HSET HSETNX HDEL SADD SREM ZADD ZREM LPUSH RPUSH LPUSHX RPUSHX LREM "
    b"EXPIRE PEXPIRE EXPIREAT PEXPIREAT PERSIST SETNX MSETNX INCR DECR INCRBY DECRBY HINCRBY "
    b"APPEND SETRANGE SETBIT PFADD PUBLISH SMOVE ZREMRANGEBYSCORE ZREMRANGEBYRANK "
    b"ZREMRANGEBYLEX LINSERT TOUCH COPY RENAMENX SINTERSTORE SUNIONSTORE SDIFFSTORE "
    b"ZUNIONSTORE ZINTERSTORE ZDIFFSTORE GEOADD XDEL XTRIM".split()
)
#: Writes that answer a bulk or nil (a popped element, an old value): nil.
_NIL_WRITES: Final = frozenset(
    b"GETSET GETDEL GETEX LPOP RPOP SPOP RPOPLPUSH LMOVE ZPOPMIN ZPOPMAX XADD".split()
)


def switch_reply(decision: SwitchDecision, name: bytes, args: list[bytes], resp: int) -> bytes:
    """The reply to a switched command (``name`` upper-cased)."""
    action = decision.action
    if action is SwitchAction.EMPTY:
        return _empty(name, args, resp)
    if action is SwitchAction.ACKNOWLEDGE:
        if name in _COUNT_WRITES:
            return R.integer(0)
        if name in _NIL_WRITES:
            return R.null(resp)
        return R.OK
    if action is SwitchAction.FALLBACK:
        return R.bulk(decision.value or b"")
    return R.error(f"ERR resmesh: {decision.message}")


def limit_reply(rejection: str) -> bytes:
    """A limited command's error: names the limit, so the app's log says what to raise."""
    return R.error(f"ERR resmesh: {rejection}")


def _empty(name: bytes, args: list[bytes], resp: int) -> bytes:
    per_key = _PER_KEY_READS.get(name)
    if per_key is not None:
        return R.array([R.null(resp)] * max(0, len(args) - per_key))
    if name in _ZERO_READS:
        return R.integer(0)
    if name in _MISSING_TTL:
        return R.integer(-2)
    if name in _ARRAY_READS:
        return R.array([])
    if name in _SET_READS:
        return b"~0\r\n" if resp == 3 else R.array([])
    if name in _MAP_READS:
        return R.map_reply([], resp)
    if name in _SCANS:
        return _SCAN_DONE
    if name == b"TYPE":
        return b"+none\r\n"
    return R.null(resp)
