"""The workload of the shipped trace: a Python process that grows and shrinks.

Two rounds of: build a dict and a list of 60,000 strings, allocate and touch a 24 MiB
buffer, sort, then drop everything (the pages go back to the kernel's buddy
allocator when the process's heap and mappings shrink).
"""

import gc

for _round in range(2):
    table = {i: str(i) for i in range(60_000)}
    buf = bytearray(24 << 20)
    for off in range(0, len(buf), 4096):
        buf[off] = 1
    order = sorted(table.values())
    del table, buf, order
    gc.collect()
