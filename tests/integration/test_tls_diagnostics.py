"""A guest and a host that disagree about TLS are told which side lacks it, in one
line (gRPC itself says only UNAVAILABLE, and the guest used to blame --tls-ca)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pagehint.certs import make_certs
from tests.integration.procs import Procs, run_cli


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("certs")
    make_certs(d, ["g1"], [])
    return d


def tls_flags(d: Path, who: str) -> list[str]:
    return ["--tls-cert", str(d / f"{who}.crt"), "--tls-key", str(d / f"{who}.key"),
            "--tls-ca", str(d / "ca.crt")]  # fmt: skip


def guest_error(addr: str, *flags: str) -> str:
    r = run_cli(["guest", "--host", addr, "--id", "g1", "--duration", "1",
                 "--connect-timeout", "1", *flags])  # fmt: skip
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    return lines[0]


def test_a_tls_guest_at_a_plain_host_is_told_the_host_does_not_speak_tls(
    procs: Procs, certs: Path
) -> None:
    addr, _ = procs.host()
    line = guest_error(addr, *tls_flags(certs, "guest-g1"))
    assert f"cannot reach host {addr}" in line
    assert line.endswith(
        "(the host does not speak TLS: drop --tls-cert, --tls-key and --tls-ca, "
        "or start the host with TLS)"
    ), line
    assert "check --tls-ca" not in line


def test_a_plain_guest_at_a_tls_host_is_told_the_host_speaks_tls(procs: Procs, certs: Path) -> None:
    addr, _ = procs.host(*tls_flags(certs, "host"))
    line = guest_error(addr)
    assert line.endswith("(the host speaks TLS: give --tls-cert, --tls-key and --tls-ca)"), line
    # A certificate the host does not trust is still a certificate problem.
    other = certs / "other"
    make_certs(other, ["g1"], [])
    line = guest_error(addr, *tls_flags(other, "guest-g1"))
    assert "check --tls-ca and that the host trusts this certificate" in line, line
