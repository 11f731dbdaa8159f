"""pagehint.schema: the records a guest writes are the records the schema names."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from guest.runtime import GuestRuntime
from guest.workloads.scenario import parse_scenario
from pagehint.config import GuestConfig, HintingConfig
from pagehint.errors import UsageError
from pagehint.schema import (
    GuestSummary,
    ReportRecord,
    TimelineRow,
    check,
    decode,
    encode,
    field_names,
    read_lines,
)
from tests.records import guest_summary, timeline_row


def _keys(kind: type) -> tuple[set[str], set[str]]:
    return set(vars(kind)["__required_keys__"]), set(vars(kind)["__optional_keys__"])


def test_optional_fields_are_optional() -> None:
    # NotRequired survives only evaluated annotations: this is what decode relies on.
    required, optional = _keys(TimelineRow)
    host_memory = {"major_faults", "minor_faults", "fault_wait_seconds", "swapped_bytes"}
    balloon = {"balloon_target_bytes", "balloon_bytes"}
    # pcp_bytes: written in every row since 2026-12-05; optional so older files read.
    assert optional == {"mark", "chain", "oom_killed", "pcp_bytes"} | host_memory | balloon
    assert "t" in required
    required, optional = _keys(GuestSummary)
    assert {"backend", "host_chains", "drops"} <= optional and "guest_id" in required


async def test_a_real_run_writes_exactly_the_schema(tmp_path: Path) -> None:
    timeline = tmp_path / "t.jsonl"
    steps = '[[steps]]\nop = "alloc"\nsize = "8MiB"\nname = "a"\n'
    steps += '[[steps]]\nop = "mark"\nlabel = "free"\n[[steps]]\nop = "free"\nname = "a"\n'
    cfg = GuestConfig(
        ram_bytes=64 << 20,
        duration=0.5,
        timeline=str(timeline),
        hinting=HintingConfig(policy="reporting"),
    )
    summary = await GuestRuntime(cfg, scenario=parse_scenario(steps)).run()
    required, _ = _keys(GuestSummary)
    # The runtime writes every required field and none that the schema lacks; the
    # optional ones are the service's and the lab's additions.
    assert set(summary) == required
    rows = read_lines(TimelineRow, timeline)
    assert {r["event"] for r in rows} >= {"sample", "mark", "end"}
    names = set(field_names(TimelineRow))
    for r in rows:
        assert set(r) <= names
    assert decode(GuestSummary, encode(summary)) == summary


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "not a guest summary: invalid JSON"),
        ("[1, 2]", "not a guest summary: a JSON list, not an object"),
        ('{"guest_id": "g"}', "not a guest summary: missing abandoned_bytes, "),
    ],
)
def test_what_is_not_a_summary_is_one_plain_line(text: str, message: str) -> None:
    with pytest.raises(UsageError, match="^" + message.replace("[", r"\[")) as e:
        decode(GuestSummary, text)
    assert "\n" not in str(e.value)


def test_report_records_and_rows_check_their_own_fields() -> None:
    with pytest.raises(UsageError, match="not a report record: missing bytes, chain"):
        check(ReportRecord, {"t_sent": 0.0, "t_answered": 0.1, "ranges": [], "status": "done",
                             "reason": "", "host_resident_bytes": None})  # fmt: skip
    with pytest.raises(UsageError, match="not a timeline row: missing"):
        check(TimelineRow, {"t": 1.0})


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("host_resident_bytes", "x", 'host_resident_bytes is "x", not int | None'),
        ("event", "bogus", 'event is "bogus", not Literal'),
        ("t", True, "t is true, not float"),
        ("free_bytes", 1.5, "free_bytes is 1.5, not int"),
    ],
)
def test_a_field_of_the_wrong_kind_is_refused(field: str, value: object, message: str) -> None:
    row = dict(timeline_row(1.0, 0))
    row[field] = value
    with pytest.raises(UsageError, match="^not a timeline row: " + re.escape(message)):
        decode(TimelineRow, json.dumps(row))


def test_what_no_guest_writes_is_refused() -> None:
    with pytest.raises(UsageError, match="NaN is not a number a guest writes"):
        decode(TimelineRow, json.dumps(dict(timeline_row(float("nan"), 0))))
    with pytest.raises(UsageError, match="nested too deeply"):
        decode(TimelineRow, "[" * 100_000 + "]" * 100_000)
    bad = dict(guest_summary())
    bad["ack_latency_ms"] = {"p50": "fast", "p99": None, "max": None}
    with pytest.raises(UsageError, match="ack_latency_ms is"):
        check(GuestSummary, bad)


def test_a_bad_line_names_its_file_and_line(tmp_path: Path) -> None:
    p = tmp_path / "t.jsonl"
    good = json.dumps(dict(timeline_row(1.0, 0)))
    p.write_bytes(f"{good}\n\n{good}\n".encode() + b'{"t": \xff}\n')
    with pytest.raises(UsageError, match=r"t\.jsonl:4: not UTF-8 text$"):
        read_lines(TimelineRow, p)
    p.write_text(f"{good}\n" + '{"t": 2, "free_')
    with pytest.raises(UsageError, match=r"t\.jsonl:2: not a timeline row: invalid JSON"):
        read_lines(TimelineRow, p)
