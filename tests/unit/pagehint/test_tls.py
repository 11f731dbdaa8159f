from __future__ import annotations

from pathlib import Path

import pytest

from pagehint.certs import make_certs
from pagehint.errors import UsageError
from pagehint.tls import load_tls


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("certs")
    make_certs(d, ["g1"], ["host.example"])
    return d


def test_certs_are_written_with_private_keys_0600(certs: Path) -> None:
    for stem in ("ca", "host", "guest-g1", "admin"):
        assert (certs / f"{stem}.crt").exists()
        assert (certs / f"{stem}.key").stat().st_mode & 0o777 == 0o600


def test_load_tls_reads_the_identity(certs: Path) -> None:
    tls = load_tls(str(certs / "guest-g1.crt"), str(certs / "guest-g1.key"), str(certs / "ca.crt"))
    assert tls is not None and tls.identity == "g1"
    assert load_tls(None, None, None) is None


@pytest.mark.parametrize(
    ("cert", "key", "ca", "needle"),
    [
        ("guest-g1.crt", None, "ca.crt", "missing --tls-key"),
        ("nope.crt", "guest-g1.key", "ca.crt", "cannot read"),
        ("ca.key", "guest-g1.key", "ca.crt", "not a PEM certificate"),
        ("guest-g1.crt", "host.key", "ca.crt", "does not match"),
        ("guest-g1.crt", "guest-g1.crt", "ca.crt", "not an unencrypted PEM private key"),
        ("guest-g1.crt", "guest-g1.key", "ca.key", "--tls-ca"),
    ],
)
def test_every_tls_problem_is_one_line(
    certs: Path, cert: str, key: str | None, ca: str, needle: str
) -> None:
    with pytest.raises(UsageError) as e:
        load_tls(str(certs / cert), str(certs / key) if key else None, str(certs / ca))
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_a_certificate_must_fit_its_role(certs: Path) -> None:
    ca = str(certs / "ca.crt")
    with pytest.raises(UsageError, match="is a CA certificate"):
        load_tls(ca, str(certs / "ca.key"), ca, role="server")
    with pytest.raises(UsageError, match="not made for a server"):
        load_tls(str(certs / "guest-g1.crt"), str(certs / "guest-g1.key"), ca, role="server")
    with pytest.raises(UsageError, match="not made for a client"):
        load_tls(str(certs / "host.crt"), str(certs / "host.key"), ca, role="client")
    assert load_tls(str(certs / "host.crt"), str(certs / "host.key"), ca, role="server")


def test_certs_refuse_to_replace_a_ca(certs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pagehint.cli import main

    assert main(["certs", "--out", str(certs), "--guests", "x"], env={}) == 2
    assert "already holds a CA" in capsys.readouterr().err
    assert main(["certs", "--out", str(certs / "new"), "--guests", "admin"], env={}) == 2
