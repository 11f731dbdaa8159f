"""Every bad input found from outside: one line on stderr, exit 2, never a traceback."""

from __future__ import annotations

import gzip
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from pagehint.cli import main
from pagehint.errors import UsageError
from pagehint.units import parse_seconds, parse_size

DIGITS = "9" * 400


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def one_line(argv: list[str], capsys: pytest.CaptureFixture[str], env: dict[str, str]) -> str:
    assert main(argv, env=env) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["guest", "--ram", DIGITS, "--duration", "1"], "too large"),
        (["guest", "--duration", DIGITS], "too long"),
        (["guest", "--duration", "1e9"], "--duration"),
        (["guest", "--host", "", "--duration", "1"], "--host ''"),
        (["guest", "--host", "127.0.0.1:abc", "--duration", "1"], "bad port"),
        (["guest", "--host", ":99999", "--duration", "1"], "--host"),
        (["guest", "--host", "127.0.0.1:99999", "--duration", "1"], "bad port"),
        (["guest", "--timeline", "/no/such/folder/t.jsonl", "--duration", "1"], "does not exist"),
        (["guest", "--ack-log", "/no/such/folder/a.log", "--duration", "1"], "does not exist"),
        (["guest", "--tls-cert", "x.crt", "--duration", "1"], "TLS needs"),
        (["host", "--queue-size", "4294967296"], "--queue-size"),
        (["host", "--max-chain-ranges", "99999999999999999999999"], "--max-chain-ranges"),
        (["host", "--listen", "127.0.0.1:abc"], "bad port"),
        (["host", "--memory-limit", DIGITS], "too large"),
        (["host", "--latency", DIGITS], "too long"),
        (["host", "--ready-file", "/no/such/folder/ready"], "does not exist"),
        (["host", "--max-sessions", "0"], "--max-sessions"),
        (["loadtest", "--transport", "ring"], "--transport ring: grpc or queue-socket"),
        (["host", "--queue-socket", ""], "--queue-socket '': give a path"),
        (["guest", "--queue-socket", "/run/q.sock", "--duration", "1"], "give --host too"),
        (["host", "--tokens", "/no/such/tokens"], "cannot read"),
        (["certs", "--guests", "a b"], "not a usable id"),
        (["host", "--listen", "127.0.0.1:\u00b2"], "bad port"),
        (["host", "--tokens", "t", "--tls-cert", "c"], "not both"),
        (["guest", "--host", "127.0.0.1:1", "--token", "t\u00e9st", "--duration", "1"], "ASCII"),
        # An empty value is a value: refused before any process starts.
        (["compare", "--workload", "", "--duration", "1"], "--workload: unknown value ''"),
        # Port 0 for the virtqueue: a host is bound before its metrics address is
        # tried, and the default port may be a running host's (tests/unit/conftest.py).
        (
            ["host", "--listen", "127.0.0.1:0", "--metrics-port", "0", "--metrics-addr", "nan"],
            "--metrics-addr nan",
        ),
    ],
)
def test_bad_flags(argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert needle in one_line(argv, capsys, {})


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"PAGEHINT_QUIET": "maybe"}, "PAGEHINT_QUIET='maybe'"),
        ({"PAGEHINT_RETRY_FAILED": "nope"}, "PAGEHINT_RETRY_FAILED"),
        ({"PAGEHINT_CHECK": "perhaps"}, "PAGEHINT_CHECK"),
    ],
)
def test_bad_boolean_env_vars(
    env: dict[str, str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert needle in one_line(["--version"], capsys, env)


def test_a_scenario_nested_5000_deep(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    deep = "steps = [" * 5000 + "]" * 5000
    f = tmp_path / "deep.toml"
    f.write_text(f'[[steps]]\nop = "repeat"\ncount = 1\n{deep}\n')
    assert "deep" in one_line(["guest", "--scenario", str(f)], capsys, {})


def test_a_scenario_size_with_400_digits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "big.toml"
    f.write_text(f'[[steps]]\nop = "alloc"\nname = "a"\nsize = "{DIGITS}"\n')
    assert "too large" in one_line(["guest", "--scenario", str(f)], capsys, {})


def test_a_busy_guest_metrics_port(busy_port: int, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["guest", "--metrics-port", str(busy_port), "--duration", "1", "--quiet"]
    assert "cannot listen" in one_line(argv, capsys, {})


def test_tokens_file_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "tokens"
    f.write_text("g1 short\n")
    assert "16+ ASCII characters" in one_line(["host", "--tokens", str(f)], capsys, {})
    f.write_text("g1 0123456789abcdef\ng1 0123456789abcdef\n")
    assert "given twice" in one_line(["host", "--tokens", str(f)], capsys, {})
    f.write_text("g1 0123456789abcdef\u00e9\n", encoding="utf-8")
    assert "ASCII" in one_line(["host", "--tokens", str(f)], capsys, {})


def test_sizes_and_durations_have_upper_bounds() -> None:
    with pytest.raises(UsageError):
        parse_size("2EiB")
    with pytest.raises(UsageError):
        parse_size("1" + "0" * 30)
    assert parse_size("64GiB") == 64 << 30
    with pytest.raises(UsageError):
        parse_seconds("31d".replace("d", "") + "0000000")
    assert parse_seconds("30m") == 1800.0


def test_a_scenario_file_over_1mib(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "huge.toml"
    f.write_text('[[steps]]\nop = "mark"\nlabel = "m"\n' * 40_000)
    assert "larger than 1 MiB" in one_line(["guest", "--scenario", str(f)], capsys, {})


# Issue 21: inputs that traced back, or passed unseen with exit 0.


def test_a_folder_named_as_a_scenario_or_token_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = one_line(["guest", "--scenario", str(tmp_path)], capsys, {})
    assert f"scenario {tmp_path}: a folder, not a file" in err
    err = one_line(["host", "--listen", "127.0.0.1:0", "--tokens", str(tmp_path)], capsys, {})
    assert f"--tokens {tmp_path}: a folder, not a file" in err


def test_a_gzip_trace_with_damaged_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = b"  a-1 [000] ..... 1.000000: mm_page_free: page=00000000deadbeef pfn=0x10 order=0\n"
    data = bytearray(gzip.compress(line * 2000, mtime=0))
    for i in range(20, 60):  # inside the deflate stream: zlib's own error, not a short file
        data[i] ^= 0xFF
    f = tmp_path / "t.trace.gz"
    f.write_bytes(bytes(data))
    err = one_line(["guest", "--trace", str(f), "--duration", "1"], capsys, {})
    assert f"--trace {f}: cannot read past line" in err


def test_a_trace_too_large_for_a_guest_says_what_would_fit_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # 16,385 distinct 4 MiB blocks: 64 GiB and one block, even packed.
    lines = "".join(
        f"  a-1 [000] ..... 1.000000: mm_page_free: page=00000000deadbeef pfn={b << 12:#x} "
        "order=0\n"
        for b in range(16385)
    )
    f = tmp_path / "t.trace"
    f.write_text(lines)
    argv = ["guest", "--trace", str(f), "--duration", "1"]
    assert "above the 64 GiB a guest can have; use --trace-map compact" in one_line(
        argv, capsys, {}
    )
    packed = one_line([*argv, "--trace-map", "compact"], capsys, {})
    assert "even packed, its 4 MiB blocks are too many for one guest" in packed


def test_compare_out_where_no_folder_can_be(capsys: pytest.CaptureFixture[str]) -> None:
    err = one_line(["compare", "--out", "/proc/pagehint-test/run", "--duration", "1"], capsys, {})
    assert "--out /proc/pagehint-test/run" in err


def test_a_scenario_that_allocates_one_name_twice(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "dup.toml"
    f.write_text('[[steps]]\nop = "alloc"\nname = "a"\nsize = "1MiB"\n' * 2)
    err = one_line(["guest", "--scenario", str(f), "--duration", "1"], capsys, {})
    assert "step[2] (alloc): allocates 'a' again while step[1] (alloc) still holds it" in err


@pytest.mark.parametrize("command", ["guest", "compare", "demo"])
def test_a_scenario_larger_than_ram(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    # compare and demo refuse it before they start any process, as the guest does
    f = tmp_path / "big.toml"
    f.write_text('[[steps]]\nop = "alloc"\nname = "a"\nsize = "1GiB"\n')
    argv = [command, "--scenario", str(f), "--ram", "256MiB", "--duration", "1"]
    if command != "guest":
        argv += ["--out", str(tmp_path / "out")]
    err = one_line(argv, capsys, {})
    assert "holds 1.0 GiB at step[1] (alloc), more than the guest's 256.0 MiB of RAM" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["host", "--listen", "127.0.0.1:0"],
        ["guest", "--duration", "1"],
        ["guest", "--duration", "1", "--metrics-port", "0"],
    ],
)
def test_a_metrics_address_of_another_machine(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    # 192.0.2.1: TEST-NET-1 (RFC 5737), no machine's. Without --metrics-port the
    # address was never tried, and the host or guest ran on.
    err = one_line([*argv, "--metrics-addr", "192.0.2.1"], capsys, {})
    assert "--metrics-addr 192.0.2.1: not an address of this machine" in err


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("bad name", "label 'bad name': only letters, digits and inner hyphens"),
        ("a_b.example", "label 'a_b'"),
        ("a..b", "an empty label"),
        ("x" * 70, "longer than 63 characters"),  # was a traceback (common name > 64)
        ("\u00e9" * 70 + ".example", "IDNA"),  # was a traceback (not an A-label)
        ("a." * 130 + "b", "longer than 253 characters"),
    ],
)
def test_certs_host_names_no_certificate_can_hold(
    name: str, why: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "certs"
    err = one_line(["certs", "--out", str(out), "--host-name", name], capsys, {})
    assert f"--host-name {name!r}: not a DNS name or IP address: " in err and why in err
    assert not out.exists()  # refused before anything was written
