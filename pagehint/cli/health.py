"""``pagehint health --host ADDR``: exit 0 when the host answers the gRPC health check."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping

from pagehint.cli.support import Subparsers, add_flag, convert, parse_address, positive_float
from pagehint.errors import UsageError
from pagehint.tls import load_tls, unreachable_hint
from pagehint.units import parse_seconds


def add_parser(sub: Subparsers, env: Mapping[str, str]) -> None:
    p = sub.add_parser(
        "health",
        help="exit 0 if the host answers the gRPC health check",
        description="Probe a host with the standard gRPC health check "
        "(for compose and orchestrators).",
    )
    add_flag(p, env, "--host", default="127.0.0.1:50051", help="HOST:PORT")
    add_flag(p, env, "--timeout", default="3", help="seconds")
    p.add_argument("--service", default="", help="service name (default: the whole server)")
    add_flag(p, env, "--tls-cert", default=None, help="mutual TLS: a client certificate (PEM)")
    add_flag(p, env, "--tls-key", default=None, help="mutual TLS: its private key (PEM)")
    add_flag(p, env, "--tls-ca", default=None, help="mutual TLS: the CA that signs the host")
    p.set_defaults(handler=run)


def run(a: argparse.Namespace, env: Mapping[str, str]) -> int:
    import grpc
    from grpc_health.v1 import health_pb2

    timeout = convert(a.timeout, lambda s: positive_float(str(parse_seconds(s))), "--timeout")
    address = parse_address(str(a.host), "--host")
    tls = load_tls(a.tls_cert, a.tls_key, a.tls_ca)
    channel = (
        grpc.secure_channel(address, tls.channel_credentials())
        if tls is not None
        else grpc.insecure_channel(address)
    )
    with channel as ch:
        # The method itself, typed (the stubs' HealthStub declares no methods).
        check = ch.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        try:
            reply = check(health_pb2.HealthCheckRequest(service=a.service), timeout=timeout)
        except grpc.RpcError as e:
            code = e.code()
            why = code.name
            if code == grpc.StatusCode.UNAVAILABLE:
                # gRPC's own detail says nothing useful when one side speaks TLS and
                # the other does not: a probe tells which.
                why += f" ({unreachable_hint(address, tls is not None, min(timeout, 1.0))})"
            raise UsageError(f"host {a.host} is not healthy: {why}") from None
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        raise UsageError(f"host {a.host} is {status}")
    sys.stdout.write(f"{a.host}: {status}\n")
    return 0
