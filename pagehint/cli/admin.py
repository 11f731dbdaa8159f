"""What `pagehint balloon` and `pagehint hint` share: the host's admin calls —
the flags that reach the host (address, timeout, token, mutual TLS), the channel,
and a failed call as one line."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, TypeVar

from pagehint.cli.support import add_flag, convert, parse_address, positive_float
from pagehint.errors import UsageError
from pagehint.tls import load_tls, unreachable_hint
from pagehint.units import parse_seconds

if TYPE_CHECKING:
    from virtqueue import codec

T = TypeVar("T")


def add_host_flags(p: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
    add_flag(p, env, "--host", default="127.0.0.1:50051", help="HOST:PORT of the host")
    add_flag(p, env, "--guest", default=None, help="the guest's id (required)")
    add_flag(p, env, "--timeout", default="5", help="seconds")
    add_flag(p, env, "--token", default=None, help="the host's admin token (--tokens)")
    add_flag(p, env, "--tls-cert", default=None, help="mutual TLS: a client certificate (PEM)")
    add_flag(p, env, "--tls-key", default=None, help="mutual TLS: its private key (PEM)")
    add_flag(p, env, "--tls-ca", default=None, help="mutual TLS: the CA that signs the host")


def call_host(
    a: argparse.Namespace,
    call: Callable[[codec.BalloonStub, float, tuple[tuple[str, str], ...]], T],
) -> T:
    """``call(stub, timeout, metadata)`` on a channel to --host; a failure is one line."""
    import grpc

    from virtqueue import codec

    if not a.guest:
        raise UsageError("give --guest ID")
    timeout = convert(a.timeout, lambda s: positive_float(str(parse_seconds(s))), "--timeout")
    address = parse_address(str(a.host), "--host")
    tls = load_tls(a.tls_cert, a.tls_key, a.tls_ca)
    metadata = ((codec.TOKEN_KEY, str(a.token)),) if a.token else ()
    channel = (
        grpc.secure_channel(address, tls.channel_credentials())
        if tls is not None
        else grpc.insecure_channel(address)
    )
    with channel as ch:
        try:
            return call(codec.stub(ch), timeout, metadata)
        except grpc.RpcError as e:
            code = e.code()
            why = f"{code.name}: {e.details()}" if e.details() else code.name
            if code == grpc.StatusCode.UNAVAILABLE:
                why += f" ({unreachable_hint(address, tls is not None, min(timeout, 1.0))})"
            raise UsageError(f"host {a.host}: {why}") from None
