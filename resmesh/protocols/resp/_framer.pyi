from collections.abc import Callable
from typing import TypeVar

_T = TypeVar("_T")

def frame(
    buffer: bytes,
    max_count: int,
    max_length: int,
    factory: Callable[[list[bytes], bytes], _T],
    /,
) -> tuple[list[_T], int, bool]: ...
def scan_replies(
    buffer: bytes | bytearray,
    start: int,
    limit: int,
    max_length: int,
    max_count: int,
    max_line: int,
    max_depth: int,
    resp3: bool,
    /,
) -> tuple[list[int], int]: ...
