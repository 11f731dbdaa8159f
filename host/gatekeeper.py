"""Who is calling: a guest's proven identity (its client certificate with mutual
TLS, or its token from ``--tokens``), and whether a caller may read every guest's
figures (an admin certificate or token; without either check, a local caller).
Failed tokens slow their client's address down (host/peers.py ``AuthThrottle``).
Errors reach clients as a gRPC status with one plain line."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections.abc import Mapping
from typing import NoReturn

import grpc

from host.device import BalloonDevice
from host.peers import AuthThrottle, peer_address
from pagehint.config import HostConfig
from pagehint.tls import peer_identity
from virtqueue import codec

ADMIN_ID = "admin"  # the --tokens entry whose holder may read every guest's figures

Context = codec.Context


async def abort(context: Context, code: grpc.StatusCode, message: str) -> NoReturn:
    await context.abort(code, message)
    raise AssertionError("context.abort returned")


def _same(given: object, want: str) -> bool:
    """Constant-time token comparison that any header value (even non-ASCII) survives."""
    return hmac.compare_digest(str(given).encode("utf-8", "replace"), want.encode())


def _digest(token: object) -> bytes:
    return hashlib.sha256(str(token).encode("utf-8", "replace")).digest()


def _is_loopback(peer: str) -> bool:
    # gRPC writes IPv6 peers URL-encoded: "ipv6:%5B::1%5D:port".
    return peer.startswith(("ipv4:127.", "ipv6:[::1]", "ipv6:%5B::1%5D"))


class Gatekeeper:
    def __init__(
        self,
        device: BalloonDevice,
        tls: bool = False,
        tokens: Mapping[str, str] | None = None,
        auth_penalty_max: float = HostConfig.auth_penalty_max,
    ) -> None:
        self.device = device
        self.tls = tls
        self.tokens = dict(tokens or {})
        # Failed tokens slow their client's address down (host/peers.py).
        self.auth = AuthThrottle(auth_penalty_max)
        # Every known token, hashed: is a token no guest's at all (a guess)?
        self._known = {_digest(t) for t in self.tokens.values()}

    async def identity(self, context: Context, guest_id: str) -> str | None:
        """The identity the caller proved (None: the host checks none). An admin
        identity reads figures and is no guest (roles apart): it may not negotiate."""
        if self.tls:
            peer = peer_identity(context)
            if peer is None:  # cannot happen with client auth required; refuse anyway
                await abort(
                    context, grpc.StatusCode.UNAUTHENTICATED, "a client certificate is required"
                )
            if peer[1]:
                await self._admin_as_guest(context, f"admin certificate {peer[0]!r}", guest_id)
            return peer[0]
        if self.tokens:
            address = peer_address(str(context.peer() or ""))
            await self._penalty(address)
            given = dict(context.invocation_metadata() or ()).get(codec.TOKEN_KEY, "")
            want = self.tokens.get(guest_id)
            if want is None or not _same(given, want):
                self.device.refuse("bad_token", f"negotiation as {guest_id!r} with a bad token")
                # The failing answer waits out the penalty it earned.
                await asyncio.sleep(self.auth.failed(address))
                await abort(context, grpc.StatusCode.UNAUTHENTICATED, "bad or missing guest token")
            if guest_id == ADMIN_ID:
                await self._admin_as_guest(context, "the admin token", guest_id)
            return guest_id
        return None

    async def _admin_as_guest(self, context: Context, who: str, guest_id: str) -> NoReturn:
        self.device.refuse("admin_as_guest", f"{who} tried to negotiate as guest {guest_id!r}")
        await abort(
            context,
            grpc.StatusCode.PERMISSION_DENIED,
            "an admin identity reads figures; it may not negotiate as a guest",
        )

    async def _penalty(self, address: str) -> None:
        """Hold a call from an address penalised for failed tokens until its penalty
        ends; then its token is checked like any other.

        Every token is checked, a right one included, so a guesser sharing an
        address with honest guests (NAT, a node's SNAT) delays them by at most
        --auth-penalty-max, never shuts them out (turning calls away unchecked did,
        for as long as the guessing went on). Every answer waits, the right one
        too: the time of an answer tells a guesser nothing, and an impatient one
        that cancels learns nothing. A guesser gets at most --max-calls-per-peer
        guesses per penalty (528 per 10 s by default; a token is 16+ characters).
        """
        wait = self.auth.wait(address)
        if wait <= 0:
            return
        self.auth.throttled += 1
        self.device.problems.note(
            "auth_penalty",
            f"{address or 'a client'}: a call held {wait:.1f} s after "
            f"{self.auth.failures_of(address)} failed tokens from its address",
        )
        await asyncio.sleep(wait)

    async def may_read_all(self, context: Context) -> bool:
        """Every guest's figures: an admin certificate or token, or a local caller of
        a host that checks no identity (the lab commands, the metrics endpoint)."""
        if self.tls:
            peer = peer_identity(context)
            return peer is not None and peer[1]
        if self.tokens:
            address = peer_address(str(context.peer() or ""))
            await self._penalty(address)
            given = dict(context.invocation_metadata() or ()).get(codec.TOKEN_KEY, "")
            admin = self.tokens.get(ADMIN_ID)
            if admin is not None and _same(given, admin):
                return True
            if given and _digest(given) not in self._known:  # a guess at the admin token
                self.device.refuse("bad_token", f"{address}: host-wide figures with a bad token")
                self.auth.failed(address)
            return False
        return _is_loopback(str(context.peer() or ""))
