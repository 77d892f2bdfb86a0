"""A short run of the Motan2 codec fuzzer in the test suite (the long runs: ``fuzz/``).

Every property of ``fuzz/fuzz_motan2_codec.py`` (frame streams, valid frames, gunzip, Simple
bodies and values, ``M_e`` parsing) runs for a few hundred examples, derandomized so the suite is
reproducible; ``python fuzz/fuzz_motan2_codec.py --examples 20000`` explores. A property that
fails, or an example over the time bound, fails its test with hypothesis' minimal example. The
last two tests check that the harness can fail at all: a codec with a bug in it, and examples
over a time bound of zero, are caught.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from fuzz.fuzz_motan2_codec import SlowExamples, SlowLog, build
from resmesh.protocols.motan2.frames import DEFAULT_MAX_BODY, gunzip

EXAMPLES = 200

TARGETS = build(EXAMPLES, derandomize=True)


@pytest.mark.parametrize("target", TARGETS, ids=[target.__name__ for target in TARGETS])
def test_property(target: Callable[[], None]) -> None:
    target()


def _target(name: str, examples: int, **options: object) -> Callable[[], None]:
    targets = build(examples, derandomize=True, **options)  # type: ignore[arg-type]
    return next(target for target in targets if target.__name__ == name)


def test_a_codec_bug_fails_its_property(monkeypatch: pytest.MonkeyPatch) -> None:
    def without_cap(data: bytes, max_size: int = DEFAULT_MAX_BODY) -> bytes:
        return gunzip(data, 1 << 30)

    monkeypatch.setattr("fuzz.fuzz_motan2_codec.gunzip", without_cap)
    with pytest.raises((AssertionError, ExceptionGroup)):  # one failure, or several distinct
        _target("fuzz_gunzip", 30)()


def test_slow_examples_fail_their_property() -> None:
    with pytest.raises(SlowExamples, match=r"example\(s\) over 0.0 s"):
        _target("fuzz_error_info", 20, slow=SlowLog(limit=0.0))()
