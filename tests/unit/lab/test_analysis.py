from __future__ import annotations

from lab.analysis import drop_times, peak
from lab.table import render_table


def test_drop_times_from_peak_after_the_mark() -> None:
    rows = [
        {"t": 0.0, "host_resident_bytes": 0},
        {"t": 1.0, "host_resident_bytes": 100, "mark": "free"},
        {"t": 1.1, "host_resident_bytes": 120},  # the host figure lags the mark
        {"t": 2.0, "host_resident_bytes": 60},
        {"t": 3.0, "host_resident_bytes": 10},
        {"t": 3.5, "host_resident_bytes": 20, "mark": "idle"},  # not a free: window goes on
        {"t": 4.0, "host_resident_bytes": 0},
        {"t": 5.0, "host_resident_bytes": 50, "mark": "free-2"},
        {"t": 6.0, "host_resident_bytes": 50},
    ]
    d = drop_times(rows)
    assert d[0] == {"mark": "free", "t": 1.0, "drop_bytes": 120, "t50_s": 1.0, "t90_s": 2.0}
    assert d[1]["mark"] == "free-2" and d[1]["drop_bytes"] == 0 and d[1]["t50_s"] is None
    assert peak(rows) == 120
    assert peak([{"t": 0, "host_resident_bytes": None}]) is None


def test_render_table() -> None:
    text = render_table(["a", "bb"], [["xyz", "1"]])
    assert text.splitlines() == ["a    bb", "---  --", "xyz  1"]


def test_drop_times_land_on_acknowledgement_rows() -> None:
    from lab.analysis import drop_times

    mib = 1 << 20
    rows = [
        {"t": 0.0, "event": "sample", "host_resident_bytes": 100 * mib},
        {"t": 0.05, "event": "mark", "mark": "free", "host_resident_bytes": 100 * mib},
        {"t": 0.1, "event": "sample", "host_resident_bytes": 100 * mib},
        # acknowledgements between two samples: the drop is timed at them
        {"t": 0.137, "event": "ack", "host_resident_bytes": 40 * mib},
        {"t": 0.162, "event": "ack", "host_resident_bytes": 0},
        {"t": 0.2, "event": "sample", "host_resident_bytes": 0},
    ]
    [d] = drop_times(rows)
    assert d["drop_bytes"] == 100 * mib
    assert d["t50_s"] == round(0.137 - 0.05, 3) and d["t90_s"] == round(0.162 - 0.05, 3)
