from __future__ import annotations

from pagehint.stats import LatencyHistogram


def test_histogram_buckets_are_cumulative_with_inf() -> None:
    h = LatencyHistogram((0.001, 0.01))
    for s in (0.0005, 0.001, 0.005, 2.0):
        h.observe(s)
    # a value equal to a bound falls in that bound's bucket (le semantics)
    assert h.buckets() == [("0.001", 2), ("0.01", 3), ("+Inf", 4)]
    assert h.count == 4 and abs(h.sum - 2.0065) < 1e-12
