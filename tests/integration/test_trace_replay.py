"""The shipped kernel trace replayed by real guests against a real shm host."""

from __future__ import annotations

from pathlib import Path

from tests.integration.procs import Procs, run_cli

ROOT = Path(__file__).resolve().parents[2]
TRACE = ROOT / "examples" / "traces" / "python-grow-shrink.trace.gz"


def test_each_policy_replays_the_shipped_trace_without_data_loss(
    procs: Procs, tmp_path: Path
) -> None:
    # The host's own folder in /dev/shm (tmpfs): a 15 GiB RAM file on the disk
    # that holds /tmp would have its stamps written back and its holes punched
    # through the filesystem's journal (acks of a second per chain).
    addr, _ = procs.host("--backend", "shm")
    runs = (
        ("bitmap", "compact", "max"),
        ("reporting", "identity", "1"),
        ("none", "compact", "max"),
    )
    # One at a time: on two cores, a guest replaying as fast as it can starves
    # the others' acknowledgements, and a replay waits for blocks under report.
    for policy, mapping, speed in runs:
        g = procs.guest(
            "--host", addr, "--id", f"replay-{policy}-{mapping}", "--policy", policy,
            "--trace", str(TRACE), "--trace-map", mapping, "--speed", speed,
            "--delay", "0.5", "--duration", "8", "--check", "--json",
        )  # fmt: skip
        s = procs.finish(g, timeout=120)
        t = s["trace"]
        assert t["replayed"] == t["events"] > 40_000, (policy, t, s["ack_latency_ms"])
        assert s["alloc_ops"] == t["allocs"] > 20_000
        assert s["data_loss_checked"] and s["data_loss_pages"] == 0, policy
        assert s["pages_checked"] > 0 and s["invariants"] == "ok", policy
        assert s["backend"] == "shm" and s["report_failures"] == 0
        # what the recording could not see (frees in other contexts) is counted
        assert set(t["inconsistencies"]) <= {"alloc_not_free", "free_not_allocated"}
        if policy == "none":
            assert s["reported_bytes"] == 0
        else:
            assert s["reported_bytes"] > 0 and s["host_reported_bytes"] == s["reported_bytes"]
        if mapping == "identity":  # RAM covers the traced machine's highest pfn
            assert s["ram_bytes"] >= 0x3B75C0 * 4096


def test_bad_trace_flags_are_one_line_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.trace"
    bad.write_text("# tracer: nop\nnot a trace line\n")
    cases = [
        (["--trace", str(bad)], f"{bad}:2: not an ftrace event line"),
        (["--trace", str(tmp_path / "none")], "No such file"),
        (["--trace", str(TRACE), "--speed", "fast"], "--speed"),
        (["--trace", str(TRACE), "--trace-map", "sideways"], "--trace-map"),
        (["--trace", str(TRACE), "--workload", "memhog"], "one of --workload"),
        (["--speed", "2", "--workload", "memhog"], "--speed is for --trace"),
    ]
    for args, message in cases:
        r = run_cli(["guest", *args])
        assert r.returncode == 2, (args, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (args, r.stderr)
    ok = run_cli(["guest", "--trace", str(bad), "--trace-lenient", "--json"])
    assert ok.returncode == 2 and "no mm_page_alloc/mm_page_free events" in ok.stderr


def test_frees_of_another_shape_keep_every_page_on_a_real_host(
    procs: Procs, tmp_path: Path
) -> None:
    """An order-1 allocation freed page by page, two pages freed as one block: the
    shm backend's page checker must follow the new shapes (no false data loss)."""

    def ev(t: float, event: str, pfn: int, order: int) -> str:
        extra = " migratetype=0 gfp_flags=GFP_KERNEL" if event == "mm_page_alloc" else ""
        page = "page=00000000deadbeef"
        return f"  a-1 [000] ..... {t:.6f}: {event}: {page} pfn={pfn:#x} order={order}{extra}\n"

    trace = tmp_path / "shapes.trace"
    trace.write_text(
        ev(1.0, "mm_page_alloc", 0x1000, 1)
        + ev(1.1, "mm_page_free", 0x1000, 0)
        + ev(1.2, "mm_page_free", 0x1001, 0)
        + ev(1.3, "mm_page_alloc", 0x2000, 0)
        + ev(1.3, "mm_page_alloc", 0x2001, 0)
        + ev(1.4, "mm_page_free", 0x2000, 1)
    )
    shm = str(tmp_path / "shm")
    addr, _ = procs.host("--backend", "shm", "--shm-dir", shm)
    trace_flags = ("--trace", str(trace), "--speed", "max", "--check")
    s = procs.finish(procs.guest("--host", addr, "--shm-dir", shm, *trace_flags))
    assert s["trace"]["inconsistencies"] == {"free_reshaped": 2}
    assert s["data_loss_checked"] and s["data_loss_pages"] == 0 and s["pages_checked"] >= 4
