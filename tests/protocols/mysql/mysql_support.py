"""Shared by the MySQL codec tests: the golden vectors, their JSON value forms, stream helpers.

Not a test module. The vectors (``protocols/mysql-vectors.json``) were recorded between real
clients (PyMySQL, MariaDB Connector/C through its Python binding, the Node.js MariaDB connector,
the ``mariadb`` CLI) and MariaDB 10.11 by a TCP relay; their ``decoded`` objects were written
from the SQL that was run and by small readers independent of the codec.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

from resmesh.protocols.mysql.binary import BinaryValue, DateTimeValue, TimeValue
from resmesh.protocols.mysql.constants import Capability, ColumnType

VECTORS_PATH = Path(__file__).resolve().parents[3] / "protocols" / "mysql-vectors.json"
DOCUMENT: dict[str, Any] = json.loads(VECTORS_PATH.read_text(encoding="utf-8"))
PACKETS: list[dict[str, Any]] = DOCUMENT["packets"]
CONVERSATIONS: list[dict[str, Any]] = DOCUMENT["conversations"]
BY_NAME = {v["name"]: v for v in PACKETS}


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [v for v in PACKETS if v["kind"] == kind]


def ids(vectors: list[dict[str, Any]]) -> list[str]:
    return [v["name"] for v in vectors]


def payload_of(vector: dict[str, Any]) -> bytes:
    """The vector's payload (its hex holds one whole packet, header included)."""
    wire = bytes.fromhex(vector["hex"])
    assert int.from_bytes(wire[:3], "little") == len(wire) - 4
    assert wire[3] == vector["seq"]
    return wire[4:]


def capabilities_of(vector: dict[str, Any], default: Capability) -> Capability:
    """The capabilities a vector was captured under (its ``capabilities`` names)."""
    names = vector.get("capabilities")
    if names is None:
        return default
    value = Capability(0)
    for name in names:
        value |= Capability[name]
    return value


def capability_names(value: int) -> list[str]:
    return [flag.name or "" for flag in Capability if value & flag]


def json_value(value: BinaryValue, column_type: int) -> Any:
    """A binary value in the vectors' JSON form: text as str, dates and times as tagged
    lists (``{"date": [y, m, d]}`` for DATE columns, ``{"datetime": [...]}`` otherwise)."""
    if isinstance(value, DateTimeValue):
        if column_type == ColumnType.DATE:
            return {"date": [value.year, value.month, value.day]}
        return {
            "datetime": [
                value.year,
                value.month,
                value.day,
                value.hour,
                value.minute,
                value.second,
                value.microsecond,
            ]
        }
    if isinstance(value, TimeValue):
        return {
            "time": [
                value.negative,
                value.days,
                value.hours,
                value.minutes,
                value.seconds,
                value.microseconds,
            ]
        }
    return value


def compare_value(got: BinaryValue, want: Any, column_type: int) -> bool:
    """Whether a decoded value is the vector's (blobs are hex there, other bytes text)."""
    if isinstance(got, bytes):
        if column_type in (0xF9, 0xFA, 0xFB, 0xFC):
            return got.hex() == want
        return got.decode("utf-8") == want
    return bool(json_value(got, column_type) == want)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at the given offsets (modulo its length, sorted, deduplicated)."""
    if not data:
        return [data]
    points = sorted({cut % (len(data) + 1) for cut in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def frame(payload: bytes, seq: int) -> bytes:
    """One packet, built here independently of the codec (payload < 16 MiB)."""
    return len(payload).to_bytes(3, "little") + bytes((seq,)) + payload
