"""Replaying a real kernel's page allocator trace (ftrace kmem events)."""
