"""pagehint: emulate free page hinting between a guest buddy allocator and a host."""

__version__ = "0.1.0"
