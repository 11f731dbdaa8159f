"""The cyclic garbage collector and the long-lived state of guests and hosts.

A guest's allocator (free lists with an entry per free block, the per-CPU lists,
per-page maps) and its driver's tables are built at boot and live to the end:
they are never garbage while the guest runs, yet each of CPython's full
(generation 2) collections walks every container in the process, with the
event loop held.
With a load test's 128 guests in one process, that was 50 full collections in
30 s, 3.6 s in all, up to 149 ms each (measured here with ``gc.callbacks``):
an acknowledgement that arrived during one waited that long.

``settle()`` after a guest has booted moves everything alive at that moment into
the permanent generation (``gc.freeze``; CPython documents it for state built
before a fork, and it serves any state that is built once and kept). The
collector still runs and still frees every cycle made afterwards; it no longer
re-walks boot's state. Objects made later (blocks, chains, messages) are
collected as before; what a workload holds while it runs (tens of thousands of
blocks a guest) is an array the collector has nothing to walk in
(``guest/workloads/held.py``: held as lists, they made each full collection of a
load test's process 40–67 ms long, and its slowest acks waited for them).
``gc.freeze`` splices lists; it costs nothing to call once per guest.

The price: a frozen object in a reference cycle is never collected while it is
frozen. So freezing is armed only around a process's own run of its guests
(``settling()``: ``pagehint guest`` and ``guest-group``), and undone when the
run ends; a library caller of ``serve_guest`` (a test, a lab) freezes nothing.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

_armed = False


@contextlib.contextmanager
def settling() -> Iterator[None]:
    """Around a process's run of its guests: ``settle()`` freezes within it, and
    everything is unfrozen (collectable again) when it ends."""
    global _armed
    _armed = True
    try:
        yield
    finally:
        _armed = False
        gc.unfreeze()


def settle() -> None:
    """Take everything alive now out of the collector's walks (see the module);
    nothing outside ``settling()``."""
    if _armed:
        gc.collect(1)  # the young garbage first: it would be frozen with the rest
        gc.freeze()
