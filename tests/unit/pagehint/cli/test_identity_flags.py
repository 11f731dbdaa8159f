"""The identity flags fail at once, in one line: TLS files and a token together, a
token list that is a folder (README, "Security": "Give TLS or tokens, not both")."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from pagehint.certs import make_certs
from pagehint.cli import main
from pagehint.config import GuestConfig
from pagehint.errors import UsageError
from pagehint.tls import load_tls


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("certs")
    make_certs(d, ["g1"], [])
    return d


def tls_flags(d: Path, who: str) -> list[str]:
    return ["--tls-cert", str(d / f"{who}.crt"), "--tls-key", str(d / f"{who}.key"),
            "--tls-ca", str(d / "ca.crt")]  # fmt: skip


def test_a_guest_given_tls_and_a_token_fails_at_once(
    certs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Port 1: nobody listens. Before the fix the guest tried to connect for
    # --connect-timeout (10 s) and failed on the handshake.
    argv = ["guest", "--host", "127.0.0.1:1", "--id", "g1", "--duration", "1",
            "--token", "0123456789abcdef0123", *tls_flags(certs, "guest-g1")]  # fmt: skip
    t0 = time.monotonic()
    assert main(argv, env={}) == 2
    assert time.monotonic() - t0 < 3
    err = capsys.readouterr().err
    assert err == "pagehint guest: error: give mutual TLS (--tls-*) or --token, not both\n"
    # The same from the environment (PAGEHINT_TOKEN), and before any TLS file is read.
    argv = ["guest", "--host", "127.0.0.1:1", "--duration", "1", "--tls-cert", "/nope",
            "--tls-key", "/nope", "--tls-ca", "/nope"]  # fmt: skip
    assert main(argv, env={"PAGEHINT_TOKEN": "0123456789abcdef0123"}) == 2
    assert "or --token, not both" in capsys.readouterr().err


def test_a_guest_config_with_tls_and_a_token_is_refused(certs: Path) -> None:
    tls = load_tls(*(str(certs / f) for f in ("guest-g1.crt", "guest-g1.key", "ca.crt")))
    with pytest.raises(UsageError, match="not both"):
        GuestConfig(host="127.0.0.1:1", tls=tls, token="0123456789abcdef0123")


def test_the_host_refuses_tls_and_tokens_in_one_line(
    certs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("g1 0123456789abcdef0123\n")
    argv = ["host", "--listen", "127.0.0.1:0", "--tokens", str(tokens), *tls_flags(certs, "host")]
    assert main(argv, env={}) == 2
    assert capsys.readouterr().err == (
        "pagehint host: error: give mutual TLS (--tls-*) or --tokens, not both\n"
    )


def test_a_token_list_that_is_a_folder_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["host", "--listen", "127.0.0.1:0", "--tokens", str(tmp_path)], env={}) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"pagehint host: error: --tokens {tmp_path}: ") and err.count("\n") == 1
    assert "Traceback" not in err
