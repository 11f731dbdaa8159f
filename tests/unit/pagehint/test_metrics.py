from __future__ import annotations

from pagehint.stats import LatencyHistogram


def test_histogram_buckets_are_cumulative_with_inf() -> None:
    h = LatencyHistogram((0.001, 0.01))
    for s in (0.0005, 0.001, 0.005, 2.0):
        h.observe(s)
    # a value equal to a bound falls in that bound's bucket (le semantics)
    assert h.buckets() == [("0.001", 2), ("0.01", 3), ("+Inf", 4)]
    assert h.count == 4 and abs(h.sum - 2.0065) < 1e-12


def test_metrics_listen_on_a_bracketed_ipv6_address() -> None:
    # "[::]" as the README and the Kubernetes manifests write it.
    from pagehint.metrics import serve

    server, port = serve(lambda: [], 0, "[::1]")
    try:
        assert port > 0
    finally:
        server.shutdown()  # type: ignore[attr-defined]
