"""Human-readable end-of-run summary of a guest."""

from __future__ import annotations

from guest.trace.replay import fill_text, fill_warning
from pagehint.schema import GuestSummary, TraceSummary
from pagehint.units import format_size


def _size(v: int | None) -> str:
    return "n/a" if v is None else format_size(v)


def _reasons(by: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(by.items())) or "none"


def _data_loss(s: GuestSummary) -> str:
    """Pages lost, where real guest memory could show it (shm); else not measured."""
    if s["data_loss_checked"]:
        skipped = s.get("final_check_skipped", 0)
        if skipped:
            return (
                f"{s['data_loss_pages']} pages at frees; the final check was skipped "
                f"({skipped} accesses still waited for the host)"
            )
        return f"{s['data_loss_pages']} pages"
    return f"not measured ({s['backend']} backend has no real guest memory; use --backend shm)"


def format_summary(s: GuestSummary) -> str:
    lat = s["ack_latency_ms"]

    def ms(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.3f} ms"

    rows = [
        (
            "guest",
            f"{s['guest_id']} ({_size(s['ram_bytes'])} RAM, policy {s['policy']}, "
            f"backend {s['backend']})",
        ),
        (
            "reported",
            f"{_size(s['reported_bytes'])} in {s['chains']} chains ({s['report_failures']} failed)",
        ),
        (
            "free now",
            f"{_size(s['free_bytes'])} ({_size(s['reportable_free_bytes'])} in reportable blocks)",
        ),
        ("isolated peak", _size(s["isolated_peak_bytes"])),
        ("failed by reason", _reasons(s.get("report_failures_by_reason") or {})),
        ("host resident", _size(s["host_resident_bytes"])),
        (
            "ack latency",
            f"p50 {ms(lat.get('p50'))}, p99 {ms(lat.get('p99'))}, max {ms(lat.get('max'))}",
        ),
        ("allocations", f"{s['alloc_ops']} ({s['alloc_failures']} failed)"),
        ("data loss", _data_loss(s)),
    ]
    if s.get("abandoned_reports"):
        rows.append(
            (
                "left isolated",
                f"{_size(s['abandoned_bytes'])} in {s['abandoned_reports']} reports the host "
                "never answered",
            )
        )
    rows.extend(_host_memory_rows(s))
    for what in s["policy_errors"]:
        rows.append(("POLICY BROKE RULES", what))
    if s["trace"] is not None:
        rows.extend(_trace_rows(s["trace"]))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _host_memory_rows(s: GuestSummary) -> list[tuple[str, str]]:
    """The host's memory model (--host-memory): shown only when it said something."""
    rows = []
    major, minor = s.get("major_faults", 0), s.get("minor_faults", 0)
    if major or minor or s.get("fault_wait_seconds"):
        rows.append(
            (
                "host faults",
                f"{major:,} major (swapped in), {minor:,} minor; the workload waited "
                f"{s.get('fault_wait_seconds', 0.0):.3f} s, {_size(s.get('swapped_bytes'))} "
                "in the host's swap",
            )
        )
    if s.get("oom_killed"):
        rows.append(("KILLED", "by the host's OOM killer (exit status 3)"))
    return rows


def _trace_rows(t: TraceSummary) -> list[tuple[str, str]]:
    speed = "as fast as possible" if t["speed"] is None else f"speed {t['speed']:g}"
    rate = "" if t["events_per_s"] is None else f", {t['events_per_s']:,} events/s"
    pfns = t["pfn_range"]
    rows = [
        (
            "trace",
            f"{t['replayed']:,} of {t['events']:,} events ({t['allocs']:,} allocs, "
            f"{t['frees']:,} frees) in {t['seconds']:.3f} s ({speed}{rate})",
        ),
        (
            "trace pfns",
            ("none" if pfns is None else f"{pfns[0]}-{pfns[1]}") + f" mapped {t['mapping']}; "
            f"{t['initially_allocated_pages']:,} pages allocated before the first event"
            + (
                f"; {fill_text(t['block_fill'])} of the pages of the 4 MiB blocks it touches"
                if "block_fill" in t
                else ""
            ),
        ),
        ("inconsistent", _reasons(t["inconsistencies"]) or "none"),
    ]
    rows += [(k, v) for k, v in _trace_notes(t) if v]
    other = [
        f"{n:,} {what}"
        for what, n in (
            ("failed allocations", t["failed_allocs_in_trace"]),
            ("lost events", t["lost_events"]),
            ("lost-event markers without a count", t["lost_markers"]),
            ("batched frees told twice", t["batched_duplicates"]),
            ("malformed lines", t["malformed_lines"]),
            ("other events", sum(t["skipped_events"].values())),
        )
        if n
    ]
    if other:
        rows.append(("trace also had", ", ".join(other)))
    return rows


def _trace_notes(t: TraceSummary) -> list[tuple[str, str]]:
    """The rows a replay shows only when they say something (empty text: left out)."""
    outside = t["inconsistencies"].get("outside_ram", 0)
    return [
        (
            "substituted",
            f"{t['substituted']:,} allocations of blocks under report took another block, "
            "as the kernel's allocator would"
            if t["substituted"]
            else "",
        ),
        (
            "untouched",
            f"{t['untouched_allocated_pages']:,} pages the trace never names allocated at the start"
            if t["untouched_allocated_pages"]
            else f"{t.get('untouched_reported_pages', 0):,} pages the trace never names "
            "reported at the start (as on a guest that has been up)"
            if t.get("untouched_reported_pages")
            else "",
        ),
        (
            "warning",
            # Not when the untouched pages were held (--trace-untouched allocated).
            fill_warning(t.get("block_fill", 1.0)) if not t["untouched_allocated_pages"] else "",
        ),
        (
            "warning",
            f"{outside:,} of {t['replayed']:,} events fell outside RAM: give a larger --ram "
            "(or none: it covers the trace), or --trace-map compact"
            if outside * 2 > t["replayed"] > 0
            else "",
        ),
        (
            "warning",
            "frees known only from mm_page_free_batched (it prints order 0 for every "
            "folio): record mm_page_free too"
            if t["batched_only"]
            else "",
        ),
    ]
