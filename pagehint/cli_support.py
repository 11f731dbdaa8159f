"""argparse with one-line errors, and flags whose defaults come from PAGEHINT_* env vars."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping
from typing import Any, NoReturn, TypeVar

from pagehint.errors import UsageError

T = TypeVar("T")


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line and exit 2."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


def env_name(flag: str) -> str:
    return "PAGEHINT_" + flag.lstrip("-").replace("-", "_").upper()


def from_env(env: Mapping[str, str], flag: str, default: T) -> T | str:
    """Default for ``flag``: the PAGEHINT_* variable if set, else ``default``."""
    return env.get(env_name(flag), default)


def convert(value: Any, fn: Callable[[str], T], flag: str) -> T:
    """Convert a flag's value (which may come from the environment) or raise UsageError."""
    try:
        return fn(str(value))
    except UsageError as e:
        raise UsageError(f"{flag}: {e}") from None
    except (ValueError, TypeError):
        raise UsageError(f"{flag}: bad value {value!r}") from None


def to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    v = str(value).strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off", ""):
        return False
    raise UsageError(f"bad boolean {value!r} (use true or false)")


def choice(value: str, choices: tuple[str, ...], flag: str) -> str:
    if value not in choices:
        raise UsageError(f"{flag}: unknown value {value!r} (choose from {', '.join(choices)})")
    return value


def positive_int(text: str) -> int:
    n = int(text)
    if n <= 0:
        raise ValueError(text)
    return n


def nonneg_float(text: str) -> float:
    x = float(text)
    if not x >= 0 or x == float("inf"):
        raise ValueError(text)
    return x


def positive_float(text: str) -> float:
    x = nonneg_float(text)
    if x <= 0:
        raise ValueError(text)
    return x


def parse_ram(value: Any, flag: str = "--ram") -> int:
    """A guest RAM size: parsed, and within the allocator's limits."""
    from guest.mm.buddy import AllocatorError, check_ram_size
    from pagehint.units import parse_size

    ram = convert(value, lambda s: parse_size(s, "RAM size"), flag)
    try:
        check_ram_size(ram)
    except AllocatorError as err:
        raise UsageError(f"{flag} {value}: {err}") from None
    return ram


def parse_policies(value: Any, flag: str = "--policy") -> tuple[str, ...]:
    """A policy or a comma list of policies, each one known."""
    from pagehint.config import POLICIES

    policies = tuple(x.strip() for x in str(value).split(",") if x.strip())
    if not policies:
        raise UsageError(f"{flag}: give at least one policy")
    for pol in policies:
        choice(pol, POLICIES, flag)
    return policies


def add_flag(
    parser: Any, env: Mapping[str, str], *names: str, default: Any = None, **kw: Any
) -> None:
    """A flag whose default comes from PAGEHINT_<FIRST NAME> when that is set."""
    parser.add_argument(*names, default=from_env(env, names[0], default), **kw)


def add_switch(parser: Any, env: Mapping[str, str], name: str, **kw: Any) -> None:
    """An on/off flag, also switched on by PAGEHINT_<NAME>=true."""
    parser.add_argument(
        name, action="store_true", default=to_bool(from_env(env, name, False)), **kw
    )
