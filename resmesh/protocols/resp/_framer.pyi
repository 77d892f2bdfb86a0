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
