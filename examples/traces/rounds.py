"""The workload of the shipped rounds trace: two rounds, each touching a 512 MiB
buffer, holding it 1 s, dropping it (its pages go back to the kernel's buddy
allocator in one munmap), then idling 4 s — so a replay can show what free page
reporting returns after each free, 2 s after it, and nothing before."""

import time

for _round in range(2):
    buf = bytearray(512 << 20)
    for off in range(0, len(buf), 4096):
        buf[off] = 1
    time.sleep(1)
    del buf
    time.sleep(4)
