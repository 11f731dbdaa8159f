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


def test_an_address_is_checked_as_the_server_would_bind_it() -> None:
    from pagehint.metrics import listen_problem

    for addr in ("127.0.0.1", "0.0.0.0", "[::1]", "localhost"):
        assert listen_problem(addr) is None, addr
    assert listen_problem("192.0.2.1") == "not an address of this machine"  # RFC 5737
    problem = listen_problem("nan")
    assert problem is not None and problem.startswith("not an address (")
    assert listen_problem("a" * 300) == "not an address"  # a label IDNA cannot encode
