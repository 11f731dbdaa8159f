"""The workload of the shipped rounds trace: two rounds, each touching a 512 MiB
buffer, holding it 1 s, dropping it (its pages go back to the kernel's buddy
allocator in one munmap), then idling 8 s — so a replay can show what free page
reporting returns after each free, and nothing before. 8 s is what the kernel's
own cadence needs: a pass at most 2 s after the freed blocks reach the buddy
(PAGE_REPORTING_DELAY, mm/page_reporting.c), the next 2 s after that pass ends
while its budget runs out; page_reporting_cycle lets each free list make one
report (of PAGE_REPORTING_CAPACITY = 32 blocks) more than its nr_free over 512,
rounded up — two while the zone has at most 512 free order-10 blocks — so 128
order-10 blocks (512 MiB) take two passes. With 4 s the second
pass met the next round's allocations (the first recording)."""

import time

for _round in range(2):
    buf = bytearray(512 << 20)
    for off in range(0, len(buf), 4096):
        buf[off] = 1
    time.sleep(1)
    del buf
    time.sleep(8)
