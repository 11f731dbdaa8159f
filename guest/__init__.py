"""The VM side: buddy allocator, hinting policies, the balloon driver, workloads."""
