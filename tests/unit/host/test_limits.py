"""The session limit follows the descriptor limit."""

from __future__ import annotations

import resource

import pytest

from host import limits


@pytest.mark.parametrize(
    ("soft", "expected"),
    [
        (resource.RLIM_INFINITY, 1024),
        (1_000_000, 1024),  # capped
        (128 + 3 * 100, 100),  # what the descriptors leave room for
        (64, 1),  # at least one
    ],
)
def test_default_max_sessions(monkeypatch: pytest.MonkeyPatch, soft: int, expected: int) -> None:
    monkeypatch.setattr(limits.resource, "getrlimit", lambda _which: (soft, soft))
    assert limits.default_max_sessions() == expected
