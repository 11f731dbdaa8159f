"""argparse with one-line errors, and flags whose defaults come from PAGEHINT_* env vars."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, NoReturn, TypeAlias, TypeVar

from pagehint.errors import UsageError

# What `pagehint`'s top parser hands each command's add_parser() (of any
# ArgumentParser class: the CLI's own, or RaisingParser).
Subparsers: TypeAlias = "argparse._SubParsersAction[Any]"

T = TypeVar("T")


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line and exit 2."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


class RaisingParser(Parser):
    """A Parser whose errors raise UsageError (for flags read from a file, whose
    caller names the line)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def env_name(flag: str) -> str:
    return "PAGEHINT_" + flag.lstrip("-").replace("-", "_").upper()


def from_env(env: Mapping[str, str], flag: str, default: T) -> T | str:
    """Default for ``flag``: the PAGEHINT_* variable if set, else ``default``."""
    return env.get(env_name(flag), default)


def convert(value: object, fn: Callable[[str], T], flag: str) -> T:
    """Convert a flag's value (which may come from the environment) or raise UsageError."""
    if not str(value).isascii():
        # int() and float() take any script's digits ("١٦"); a flag's number is ASCII.
        raise UsageError(f"{flag}: bad value {value!r}")
    try:
        return fn(str(value))
    except UsageError as e:
        raise UsageError(f"{flag}: {e}") from None
    except (ValueError, TypeError):
        raise UsageError(f"{flag}: bad value {value!r}") from None


def to_bool(value: object) -> bool:
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
    if len(text.strip()) > 12:  # no count pagehint takes comes near 10**12
        raise ValueError(text)
    n = int(text)
    if n <= 0:
        raise ValueError(text)
    return n


def int_in(lo: int, hi: int) -> Callable[[str], int]:
    """A whole number from ``lo`` to ``hi`` (the error names the range)."""

    def parse(text: str) -> int:
        try:
            n = int(text) if len(text.strip()) <= 20 else hi + 1
        except ValueError:
            raise UsageError(f"bad value {text!r}: expected a whole number {lo}..{hi}") from None
        if not lo <= n <= hi:
            raise UsageError(f"{text}: must be {lo}..{hi}")
        return n

    return parse


def check_writable(path: str, flag: str) -> None:
    """A file we will write later: its folder must exist and be writable now."""
    import os
    from pathlib import Path

    folder = Path(path).parent if str(Path(path).parent) else Path(".")
    if not folder.is_dir():
        raise UsageError(f"{flag} {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise UsageError(f"{flag} {path}: folder {folder} is not writable")
    if Path(path).is_dir():
        raise UsageError(f"{flag} {path}: is a folder")


def parse_address(text: str, flag: str, allow_port_zero: bool = False) -> str:
    """HOST:PORT (host a name, an IPv4 address or [IPv6]), checked before any use."""
    text = str(text).strip()
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port:
        raise UsageError(f"{flag} {text!r}: expected HOST:PORT")
    lowest = 0 if allow_port_zero else 1
    if not (port.isascii() and port.isdigit()) or len(port) > 5 or not lowest <= int(port) <= 65535:
        raise UsageError(f"{flag} {text!r}: bad port {port!r}")
    if host.startswith("["):
        if not host.endswith("]") or len(host) < 3:
            raise UsageError(f"{flag} {text!r}: bad IPv6 address {host!r}")
    elif ":" in host or any(c.isspace() for c in host) or "/" in host:
        raise UsageError(f"{flag} {text!r}: bad host {host!r} (IPv6 goes in brackets)")
    return text


def ops_rate(text: str) -> float:
    """A workload's operations per second: positive and at most MAX_RATE."""
    from pagehint.config import MAX_RATE

    x = positive_float(text)
    if x > MAX_RATE:
        raise UsageError(f"{x:g} operations per second is above the limit of {MAX_RATE:,.0f}")
    return x


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


def parse_ram(value: object, flag: str = "--ram") -> int:
    """A guest RAM size: parsed, and within the contract's limits (whole top-order
    blocks, 64 MiB to 64 GiB: virtqueue/contract.py)."""
    from pagehint.units import parse_size
    from virtqueue.contract import ram_size_problem

    ram = convert(value, lambda s: parse_size(s, "RAM size"), flag)
    problem = ram_size_problem(ram)
    if problem is not None:
        raise UsageError(f"{flag} {value}: {problem}")
    return ram


def default_of(
    config: type[Any], name: str, show: Callable[[Any], str] | None = None
) -> str | None:
    """A flag's default, as the text the flag takes, read from its config field: the
    one place a knob's default is written (``show`` renders what str would not)."""
    f = next((f for f in dataclasses.fields(config) if f.name == name), None)
    if f is None:
        raise KeyError(f"{config.__name__} has no field {name!r}")
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        raise KeyError(f"{config.__name__}.{name} has no default")
    if value is None:
        return None
    if show is not None:
        return show(value)
    return f"{value:g}" if isinstance(value, float) else str(value)


class _OldName(argparse.Action):
    """An old name of a flag, still taken: it sets the flag's value and says once
    per process that the name is old (scripts keep working, and learn the new one)."""

    warned: ClassVar[set[str]] = set()

    def __init__(self, *args: Any, new: str, **kw: Any) -> None:
        self.new = new
        super().__init__(*args, **kw)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        if option_string is not None and option_string != self.new:
            # Said once the command's flags all passed (warn_old_names): a bad value
            # given under an old name is one line, its error, as any other.
            used: dict[str, str] = namespace.__dict__.setdefault("old_names", {})
            used[option_string] = self.new
        setattr(namespace, self.dest, values)


def warn_old_names(a: argparse.Namespace, prog: str) -> None:
    """After a command checked its flags: one line per old flag name it was given,
    once per process."""
    for old, new in getattr(a, "old_names", {}).items():
        if old not in _OldName.warned:
            _OldName.warned.add(old)
            sys.stderr.write(f"{prog}: warning: {old} is an old name of {new} (it still works)\n")


def add_flag(
    parser: argparse.ArgumentParser,
    env: Mapping[str, str],
    *names: str,
    default: str | None = None,
    old: tuple[str, ...] = (),
    **kw: Any,
) -> None:
    """A flag whose default comes from PAGEHINT_<FIRST NAME> when that is set.

    Its help shows the default, "(default: VALUE)", unless the help already
    speaks of its default itself (a prose one: "default: what covers --trace").
    A flag with no built-in default (None) or an empty one shows none, even when
    a variable sets it: it may hold a secret (PAGEHINT_TOKEN). ``old``: names it
    had before, still taken; the help says so, and using one warns once.
    """
    value = from_env(env, names[0], default)
    text = kw.get("help")
    if text and default and "default" not in text:
        origin = f", from {env_name(names[0])}" if value != default else ""
        # argparse %-formats help: a % in the value must stay a %.
        text = kw["help"] = f"{text} (default: {str(value).replace('%', '%%')}{origin})"
    if old:
        kw["help"] = f"{text or ''} ({', '.join(old)}: the old name, still taken)"
        kw.update(action=_OldName, new=names[0])
    parser.add_argument(*names, *old, default=value, **kw)


def add_verbosity(parser: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
    """--quiet (no event lines) and -v/--verbose (a line per chain too)."""
    add_switch(parser, env, "--quiet", help="no event log on stderr")
    add_switch(parser, env, "--verbose", "-v", help="debug lines too: each chain sent and answered")


def verbosity(a: argparse.Namespace) -> tuple[bool, bool]:
    """(quiet, verbose) from the flags of add_verbosity."""
    if a.quiet and a.verbose:
        raise UsageError("give --quiet or --verbose, not both")
    return bool(a.quiet), bool(a.verbose)


def add_switch(
    parser: argparse.ArgumentParser, env: Mapping[str, str], name: str, *aliases: str, **kw: Any
) -> None:
    """An on/off flag, also switched on by PAGEHINT_<NAME>=true."""
    value = from_env(env, name, False)
    try:
        default = to_bool(value)
    except UsageError:
        raise UsageError(f"{env_name(name)}={value!r}: not a boolean (use true or false)") from None
    parser.add_argument(name, *aliases, action="store_true", default=default, **kw)
