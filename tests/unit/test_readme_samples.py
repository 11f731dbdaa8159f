"""README.md's sample outputs: every one is marked, stamped (date, commit, the exact
command) and made by scripts/readme_samples.py, whose rewrite is idempotent. Runs
no command."""

from __future__ import annotations

from pathlib import Path

import pytest

from scripts import readme_samples as rs

ROOT = Path(__file__).resolve().parents[2]

FIXTURE = """\
# A project

Some prose.

    .venv/bin/pagehint loadtest --guests 2

<!-- sample: loadtest -->
*Not a stamp yet.*

```text
old output
```
<!-- /sample -->

More prose.

<!-- sample: demo-plot -->
![demo: host memory per guest](docs/demo.png)

<!-- /sample -->

The end.
"""

STAMP = rs.Stamp(date="2026-12-03", commit="70bb42b+dirty", cpus=2, load=0.4)


def test_every_sample_in_the_readme_is_marked_stamped_and_made_by_the_script() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert rs.problems(text) == []
    bodies = rs.blocks(text)
    assert set(bodies) == {s.name for s in rs.SAMPLES}
    for s in rs.SAMPLES:
        stamp = next(x for x in bodies[s.name].splitlines() if x.startswith("*"))
        if s.needs_docker and rs.PENDING.match(stamp):
            continue  # says it is not regenerated yet, and what it needs
        m = rs.STAMP.match(stamp)
        assert m, (s.name, stamp)
        assert m["command"] == s.command and m["date"] and m["commit"]


def test_rewrite_replaces_only_the_marked_bodies_and_is_idempotent() -> None:
    lt = rs.BY_NAME["loadtest"]
    plot = rs.BY_NAME["demo-plot"]
    bodies = {
        "loadtest": rs.render(lt, STAMP, "guests   2/2 completed\n\nerrors   none  \n"),
        "demo-plot": rs.render(plot, STAMP, ""),
    }
    once = rs.rewrite(FIXTURE, bodies)
    assert rs.rewrite(once, bodies) == once
    assert rs.rewrite(once, rs.blocks(once)) == once  # what is there, put back: no change
    assert rs.rewrite(once, {}) == once
    # Everything outside the markers is as it was.
    assert (
        once.split("<!-- sample: loadtest -->")[0] == FIXTURE.split("<!-- sample: loadtest -->")[0]
    )
    assert once.endswith("<!-- /sample -->\n\nThe end.\n")
    assert "old output" not in once
    assert (
        f"*Output of `{lt.command}`, run 2026-12-03 at commit 70bb42b+dirty on 2 CPUs (load 0.4).*"
        "\n\n```text\nguests   2/2 completed\n\nerrors   none\n```\n<!-- /sample -->" in once
    )
    assert f"![demo: host memory per guest](docs/demo.png)\n\n*Plot of `{plot.command}`" in once
    # The rewritten fixture passes the checks that README.md must pass.
    only = (lt, plot)
    assert rs.problems(once, only) == []
    assert rs.problems(FIXTURE, only) == [
        "sample loadtest: no stamp (date, commit, command): '*Not a stamp yet.*'",
        "sample demo-plot: no stamp (date, commit, command): ''",
    ]


def test_the_checks_catch_what_would_make_a_sample_unreproducible() -> None:
    lt, plot = rs.BY_NAME["loadtest"], rs.BY_NAME["demo-plot"]
    only = (lt, plot)
    good = rs.rewrite(
        FIXTURE, {"loadtest": rs.render(lt, STAMP, "x"), "demo-plot": rs.render(plot, STAMP, "")}
    )
    assert rs.problems(good, only) == []
    # A stamp naming another command than the one the script runs.
    other = good.replace(lt.command, lt.command + " --ramp 9")
    assert any("loadtest: stamped command is not" in p for p in rs.problems(other, only))
    # A sample the script makes that README does not mark, and the reverse.
    assert rs.problems(good, (lt,)) == [
        "sample demo-plot: marked in README but not one this script makes"
    ]
    assert "sample sweep: no <!-- sample: sweep --> block in README" in rs.problems(good)
    # An output block with no marker at all.
    unmarked = good + "\nIt prints:\n\n    guests               256/256 completed\n"
    assert rs.problems(unmarked, only) == [
        "unmarked output in README line 27: 'guests               256/256 completed'"
    ]
    # ...while commands, input and a fenced block with a language are not output.
    commands = "\n    make demo\n    .venv/bin/pagehint guest \\\n        --ram 1GiB\n"
    fine = good + commands + "\n```toml\nx = 1\n```\n"
    assert rs.problems(fine, only) == []
    # Markers that do not pair.
    with pytest.raises(rs.SampleError):
        rs.blocks("<!-- sample: a -->\nx\n<!-- sample: b -->\ny\n<!-- /sample -->\n")
    with pytest.raises(rs.SampleError):
        rs.rewrite(good, {"nowhere": "x\n"})


def test_only_the_trace_lines_of_the_guest_summary_are_shown() -> None:
    select = rs.BY_NAME["trace-summary"].text
    assert select is not None
    out = "data loss         0 pages\ntrace             46 events\ntrace pfns        0x1\n"
    assert select(out) == "trace             46 events\ntrace pfns        0x1"
    with pytest.raises(rs.SampleError):
        select("no trace here\n")


def test_the_sample_commands_run_without_a_shell_session_and_stay_small() -> None:
    # Each command is what a reader types in the checkout: the project's venv,
    # relative paths, no temporary folders, no --out (the script runs it in a
    # scratch folder). The lab commands are small: regenerating them all takes
    # minutes on 2 cores, not the benchmarks' hour.
    for s in rs.SAMPLES:
        assert "/tmp" not in s.command and "--out" not in s.command, s.name
        if not s.needs_docker:
            assert s.command.startswith(rs.PAGEHINT + " "), s.name
        if " --duration " in s.command:
            assert float(s.command.split(" --duration ")[1].split()[0]) <= 20, s.name
        if " --guests " in s.command:
            assert int(s.command.split(" --guests ")[1].split()[0]) <= 32, s.name
