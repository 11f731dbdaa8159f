"""The config types check themselves, however they are built: each bad value is a
ConfigError of one line naming the flag that sets it."""

from __future__ import annotations

import dataclasses

import pytest

from pagehint.config import (
    ConfigError,
    GuestConfig,
    HintingConfig,
    HostConfig,
    TraceConfig,
)
from pagehint.errors import UsageError


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: HintingConfig(order=11), "--hinting-order 11: must be 0..10"),
        (lambda: HintingConfig(capacity=513), "--capacity 513: must be 1..512"),
        (lambda: HintingConfig(capacity=0), "--capacity 0: must be 1..512"),
        (lambda: HintingConfig(threshold=0), "--threshold 0: must be 1..1000000000"),
        (lambda: HintingConfig(delay=-1.0), "--delay -1: must be at least 0"),
        (lambda: HintingConfig(backoff_min=2.0, backoff_max=1.0), "backoff 1: must be at least 2"),
        (lambda: TraceConfig("t", speed=1e7), "--speed 1e+07: must be 0.001..1e+06"),
        (lambda: TraceConfig("t", mapping="random"), "--trace-map random: unknown value"),
        (
            lambda: GuestConfig(ram_bytes=102 << 20),
            "--ram 102.0 MiB: RAM size 106954752 bytes is not",
        ),
        (lambda: GuestConfig(rate=0.0), "--rate 0: must be above 0"),
        (lambda: GuestConfig(rate=float("nan")), "--rate nan: must be above 0"),
        (lambda: GuestConfig(duration=0.0), "--duration 0: must be above 0"),
        (lambda: GuestConfig(poison=256), "--poison 256: must be 0..255"),
        (lambda: GuestConfig(loop="trio"), "--loop trio: unknown value (choose from auto"),
        (lambda: GuestConfig(connect_timeout=float("inf")), "--connect-timeout inf: must be"),
        (lambda: GuestConfig(workload="churn", scenario="s.toml"), "give one of --workload"),
        (lambda: GuestConfig(reports="r.jsonl"), "--reports logs the host's answers"),
        (lambda: GuestConfig(token="é" * 3, host="h:1"), "--token: must be printable ASCII"),
        (lambda: GuestConfig(token="abc"), "--tls-* and --token are for a host connection"),
        (lambda: HostConfig(queue_size=0), "--queue-size 0: must be 1..32768"),
        (lambda: HostConfig(backend="ram"), "--backend ram: unknown value (choose from sim, shm)"),
        (lambda: HostConfig(inject_refuse=1.5), "--inject-refuse 1.5: must be 0..1"),
        (lambda: HostConfig(capacity_bytes=0), "--memory-limit 0: must be at least 1"),
        (lambda: HostConfig(min_order=11), "--min-order 11: must be 0..10"),
        (lambda: HostConfig(max_sessions=0), "--max-sessions 0: must be 1..1000000"),
        (lambda: HintingConfig(policy="spiral"), "--policy spiral: unknown policy"),
        (lambda: HintingConfig(timer_hz=1), "--timer-hz 1: must be one of 0, 100, 250"),
        (lambda: HintingConfig(timer_hz=True), "--timer-hz True: must be one of"),
        (lambda: GuestConfig(workload="hog"), "--workload hog: unknown value"),
        (lambda: GuestConfig(guest_id=""), "--id : must be 1..128 printable"),
        (lambda: GuestConfig(guest_id="g" * 129), "--id " + "g" * 129 + ": must be 1..128"),
        # Counts are whole numbers: not a bool, not a float, and not without end.
        (lambda: HintingConfig(order=True), "--hinting-order True: must be a whole number"),
        (lambda: HintingConfig(capacity=9.5), "--capacity 9.5: must be a whole number 1..512"),
        (lambda: HintingConfig(threshold=10**30), "--threshold 1000000000000000000000000000000"),
        (lambda: HostConfig(queue_size=2.0), "--queue-size 2: must be a whole number"),
        (lambda: GuestConfig(ram_bytes="1GiB"), "--ram '1GiB': must be a whole number of bytes"),
        (lambda: GuestConfig(queue_socket="/run/q"), "--queue-socket carries the stream of a"),
        (lambda: HostConfig(queue_socket=""), "--queue-socket '': give a path"),
        (
            lambda: HostConfig(queue_socket="/" + "d" * 107),
            "--queue-socket '/" + "d" * 107 + "': longer than a Unix socket's path",
        ),
        (lambda: GuestConfig(host="h:1", queue_socket="a\0b"), "--queue-socket 'a\\x00b': give"),
    ],
)
def test_a_bad_value_is_one_line_naming_its_flag(build: object, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        build()  # type: ignore[operator]
    assert str(e.value).startswith(message), str(e.value)
    assert "\n" not in str(e.value)
    assert isinstance(e.value, UsageError)  # the CLI's one-line, exit-2 path


def test_the_configs_vocabulary_is_the_guests() -> None:
    from guest.hinting.device import LoopbackDevice
    from guest.hinting.registry import make_policy
    from guest.mm.buddy import BuddyAllocator
    from guest.workloads.builtin import BUILTINS
    from pagehint.config import BUILTIN_POLICIES, WORKLOADS

    assert set(WORKLOADS) == set(BUILTINS)
    for name in BUILTIN_POLICIES:  # each one the guest builds
        policy = make_policy(HintingConfig(policy=name), BuddyAllocator(64 << 20), LoopbackDevice())
        assert policy.name == name
    HintingConfig(policy="my_policies:Idle")  # a plugin's form passes; the guest loads it


def test_defaults_and_edges_are_valid() -> None:
    GuestConfig()
    HostConfig()
    HintingConfig(order=0, capacity=512, delay=0.0)
    TraceConfig("t", speed=None)
    GuestConfig(poison=0, metrics_port=0, host="h:1", token="t" * 256, reports="r")


def test_a_replaced_config_is_checked_again() -> None:
    # dataclasses.replace builds a new instance: the check runs there too.
    with pytest.raises(ConfigError, match="--duration -1"):
        dataclasses.replace(GuestConfig(), duration=-1.0)
