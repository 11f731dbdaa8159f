"""Hinting policies behind one small device interface: bitmap (seed), reporting (merged), none."""
