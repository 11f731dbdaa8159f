"""Telling a TLS mismatch from the rest: the probe behind "the host speaks TLS" and
"the host does not speak TLS" (gRPC itself says only UNAVAILABLE)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from pagehint.certs import make_certs
from pagehint.tls import load_tls, speaks_tls, unreachable_hint


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(a plain-text gRPC server's address, a mutual-TLS one's)."""
    d = tmp_path_factory.mktemp("certs")
    make_certs(d, ["g1"], [])
    tls = load_tls(str(d / "host.crt"), str(d / "host.key"), str(d / "ca.crt"), role="server")
    assert tls is not None
    plain = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    secure = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    plain_port = plain.add_insecure_port("127.0.0.1:0")
    secure_port = secure.add_secure_port("127.0.0.1:0", tls.server_credentials())
    plain.start()
    secure.start()
    try:
        yield f"127.0.0.1:{plain_port}", f"127.0.0.1:{secure_port}"
    finally:
        plain.stop(None)
        secure.stop(None)


def closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"  # nobody listens once it is closed


def test_the_probe_tells_tls_from_plain_text(servers: tuple[str, str]) -> None:
    plain, secure = servers
    assert speaks_tls(secure) is True
    assert speaks_tls(plain) is False
    assert speaks_tls(closed_port()) is None
    assert speaks_tls("no-port") is None


def test_a_server_that_says_nothing_is_unknown() -> None:
    with socket.socket() as quiet:
        quiet.bind(("127.0.0.1", 0))
        quiet.listen()
        assert speaks_tls(f"127.0.0.1:{quiet.getsockname()[1]}", timeout=0.2) is None


def test_a_server_that_answers_in_another_protocol_is_not_tls() -> None:
    with socket.socket() as http:
        http.bind(("127.0.0.1", 0))
        http.listen()

        def answer() -> None:
            conn, _ = http.accept()
            with conn:
                conn.recv(4096)
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

        t = threading.Thread(target=answer)
        t.start()
        assert speaks_tls(f"127.0.0.1:{http.getsockname()[1]}") is False
        t.join(5)


def test_the_hints(servers: tuple[str, str]) -> None:
    plain, secure = servers
    assert unreachable_hint(plain, tls=True) == (
        "the host does not speak TLS: drop --tls-cert, --tls-key and --tls-ca, "
        "or start the host with TLS"
    )
    assert unreachable_hint(secure, tls=False) == (
        "the host speaks TLS: give --tls-cert, --tls-key and --tls-ca"
    )
    # Both speak TLS, and it still failed: the certificates.
    assert "check --tls-ca" in unreachable_hint(secure, tls=True)
    assert unreachable_hint(closed_port(), tls=False) == "is it running? does it require TLS?"


def test_the_health_probe_says_which_side_lacks_tls(
    servers: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pagehint.cli import main

    plain, secure = servers
    assert main(["health", "--host", secure, "--timeout", "2"], env={}) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "UNAVAILABLE (the host speaks TLS: give --tls-cert" in err
    make_certs(tmp_path, ["g1"], [])
    tls = ["--tls-cert", str(tmp_path / "admin.crt"), "--tls-key", str(tmp_path / "admin.key"),
           "--tls-ca", str(tmp_path / "ca.crt")]  # fmt: skip
    assert main(["health", "--host", plain, "--timeout", "2", *tls], env={}) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "UNAVAILABLE (the host does not speak TLS" in err
