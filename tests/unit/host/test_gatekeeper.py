from __future__ import annotations

import pytest

from host.gatekeeper import _is_loopback


@pytest.mark.parametrize(
    ("peer", "local"),
    [
        ("ipv4:127.0.0.1:5000", True),
        ("ipv4:127.3.2.1:5000", True),
        ("ipv6:%5B::1%5D:5000", True),  # how gRPC 1.85 writes it
        ("ipv6:[::1]:5000", True),
        ("ipv4:10.0.0.1:5000", False),
        ("ipv6:%5B::ffff:10.0.0.1%5D:5000", False),
        ("", False),
    ],
)
def test_loopback_peers(peer: str, local: bool) -> None:
    assert _is_loopback(peer) is local


def test_token_comparison_survives_any_header() -> None:
    from host.gatekeeper import _same

    assert _same("0123456789abcdef", "0123456789abcdef")
    assert not _same("é" * 20, "0123456789abcdef")
    assert not _same("", "0123456789abcdef")
