"""How a degraded Redis call is answered: the RESP shape of "nothing there" and "done".

A ``miss`` degrade switch makes reads answer empty and writes answer as if applied, so a cache
client falls through to its source of truth instead of failing. "Empty" must have the type the
command normally returns, or clients raise on a type mismatch: ``MGET`` answers an array of
nils, ``HGETALL`` an empty map, ``EXISTS`` zero, a blocking pop what it answers when its block
time runs out. The tables name the commands whose reply is not the default (nil for reads,
``+OK`` for writes); the reply shapes are those of the Redis command reference (redis.io).
"""

from __future__ import annotations

from typing import Final

from . import replies as R

__all__ = ["acknowledged", "empty", "timed_out"]

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


def acknowledged(name: bytes, resp: int) -> bytes:
    """A write (``name`` upper-cased) answered as if it was applied and changed nothing."""
    if name in _COUNT_WRITES:
        return R.integer(0)
    if name in _NIL_WRITES:
        return R.null(resp)
    return R.OK


#: Blocking commands whose timeout reply is a null *bulk*; the others answer a null array.
_NULL_BULK_ON_TIMEOUT: Final = frozenset(b"BLMOVE BRPOPLPUSH".split())


def timed_out(name: bytes, resp: int) -> bytes:
    """What a blocking command (``name`` upper-cased) answers when its block time ran out with
    nothing to take: a null array (``BLPOP``, ``BZPOPMIN``, ``XREAD``...) or a null bulk
    (``BLMOVE``, ``BRPOPLPUSH``); RESP3 has one null for both."""
    if resp == 3:
        return b"_\r\n"
    return b"$-1\r\n" if name in _NULL_BULK_ON_TIMEOUT else b"*-1\r\n"


def empty(name: bytes, args: list[bytes], resp: int) -> bytes:
    """A read (``name`` upper-cased) answered as if nothing were there."""
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
