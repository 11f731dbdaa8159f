"""The cyclic garbage collector and the long-lived state of guests and hosts.

A guest's allocator (free lists with an entry per free block, the per-CPU lists,
per-page maps) and its driver's tables are built at boot and live to the end;
they hold no reference cycles, yet each of CPython's full (generation 2)
collections walks every container in the process, with the event loop held.
With a load test's 128 guests in one process, that was 50 full collections in
30 s, 3.6 s in all, up to 149 ms each (measured here with ``gc.callbacks``):
an acknowledgement that arrived during one waited that long.

``settle()`` after a guest has booted moves everything alive at that moment into
the permanent generation (``gc.freeze``, which CPython's documentation suggests
for long-lived state built before a server's work starts). The collector still
runs and still frees every cycle made afterwards; it no longer re-walks boot's
state. Objects made later (blocks, chains, messages) are collected as before.
``gc.freeze`` splices lists; it costs nothing to call once per guest.

The price: a frozen object in a reference cycle is never collected, so a
guest's state that becomes cyclic garbage when it ends stays until the process
exits. Only the processes whose guests live as long as they do call this
(``pagehint guest`` and ``guest-group``, through guest/service.py).
"""

from __future__ import annotations

import gc


def settle() -> None:
    """Take everything alive now out of the collector's walks (see the module)."""
    gc.freeze()
