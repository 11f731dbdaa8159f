"""Which policy a guest runs: the built-ins by name, one's own by FILE.py:CLASS or
MODULE:CLASS (guarded: guest/hinting/plugin.py). Apart from the policies' base,
which knows none of its subclasses."""

from __future__ import annotations

from guest.hinting.base import DeviceTooSmall, NonePolicy, Policy
from guest.hinting.bitmap import BitmapPolicy
from guest.hinting.device import ReportingDevice
from guest.hinting.plugin import GuardedPolicy, load_policy_class
from guest.hinting.reporting import ReportingPolicy
from guest.mm.buddy import BuddyAllocator
from pagehint.config import HintingConfig
from pagehint.errors import UsageError


def make_policy(cfg: HintingConfig, mm: BuddyAllocator, device: ReportingDevice | None) -> Policy:
    """The configured policy; UsageError (one line) if the device cannot take its reports."""
    try:
        if cfg.policy == "none" or device is None:
            return NonePolicy(cfg, mm, None)
        if ":" in cfg.policy:
            return GuardedPolicy(load_policy_class(cfg.policy), cfg, mm, device)
        if cfg.policy == "bitmap":
            return BitmapPolicy(cfg, mm, device)
        if cfg.policy == "reporting":
            return ReportingPolicy(cfg, mm, device)
    except DeviceTooSmall as e:
        raise UsageError(str(e)) from None
    raise ValueError(f"unknown policy {cfg.policy!r}")
