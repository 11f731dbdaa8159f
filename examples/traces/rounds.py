"""The workload of the shipped rounds trace: two rounds, each touching a 512 MiB
buffer, holding it 1 s, dropping it (its pages go back to the kernel's buddy
allocator in one munmap), then idling 8 s — so a replay can show what free page
reporting returns after each free, and nothing before. 8 s is what the kernel's
own cadence needs: a pass at most 2 s after the free (PAGE_REPORTING_DELAY,
mm/page_reporting.c) and then every 2 s while its budget runs out, and the budget
in a ~1 GiB guest is 64 order-10 blocks a pass (two calls of
PAGE_REPORTING_CAPACITY = 32), so 512 MiB takes two passes; with 4 s the second
pass met the next round's allocations (the first recording)."""

import time

for _round in range(2):
    buf = bytearray(512 << 20)
    for off in range(0, len(buf), 4096):
        buf[off] = 1
    time.sleep(1)
    del buf
    time.sleep(8)
