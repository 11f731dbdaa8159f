from __future__ import annotations

import pytest

from pagehint.errors import UsageError
from pagehint.units import format_size, parse_seconds, parse_size


@pytest.mark.parametrize(
    ("text", "value"),
    [("4096", 4096), ("4GiB", 4 << 30), ("512M", 512 << 20), ("1.5KiB", 1536), ("2 gib", 2 << 30)],
)
def test_parse_size(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["3x", "", "GiB", "-1GiB", "1.3B", "four"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(UsageError):
        parse_size(text)


def test_seconds_and_format() -> None:
    assert parse_seconds("500ms") == 0.5
    assert parse_seconds("2m") == 120
    with pytest.raises(UsageError):
        parse_seconds("soon")
    assert format_size(1536) == "1.5 KiB"
    assert format_size(3 << 30) == "3.0 GiB"
