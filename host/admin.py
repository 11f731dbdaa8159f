"""The admin calls (Balloon, Hint, Snapshot): a guest's balloon target, its free
page hinting, a snapshot of its RAM — from outside, as Firecracker's /balloon
API and QEMU's migration are driven. Where the host checks identities only its
admin may call them (a guest must not shrink, hint or copy its neighbours)."""

from __future__ import annotations

import logging
from pathlib import Path

import grpc

from host import hints
from host.balloon import set_target
from host.balloon import state as balloon_state
from host.device import BalloonDevice
from host.gatekeeper import Gatekeeper, abort
from host.migration import MAX_ROUNDS_ASKED as MAX_SNAPSHOT_ROUNDS
from host.migration import SnapshotError, run_snapshot
from host.sessions import of_guest
from pagehint.units import format_size
from virtqueue import codec
from virtqueue.contract import PAGE_SIZE, guest_id_problem

log = logging.getLogger(__name__)
Context = codec.Context


class AdminCalls:
    def __init__(self, device: BalloonDevice, gate: Gatekeeper) -> None:
        self.device = device
        self.gate = gate

    async def balloon(
        self, request: codec.BalloonRequest | codec.Malformed, context: Context
    ) -> codec.BalloonStatus:
        """Set a guest's target and read its balloon (admin only where identities are
        checked: a guest must not shrink its neighbours)."""
        guest_id, target = codec.decode_balloon_request(request)
        if not await self.gate.may_read_all(context):
            await abort(
                context, grpc.StatusCode.PERMISSION_DENIED, "the balloon needs an admin identity"
            )
        if guest_id_problem(guest_id) is not None:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "guest_id: not a guest id")
        table = self.device.table
        s = of_guest(table, guest_id)
        if s is None:
            await abort(context, grpc.StatusCode.NOT_FOUND, f"no session of guest {guest_id!r}")
        if target is not None:
            if set_target(table, guest_id, target) is None:
                await abort(
                    context,
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"guest {guest_id!r} has no balloon (an older guest)",
                )
            assert s.balloon is not None
            told = s.balloon.target_pages * PAGE_SIZE
            log.info(f"guest {guest_id}: balloon target {format_size(told)}")
        return codec.encode_balloon_status(balloon_state(s))

    async def hint(
        self, request: codec.HintRequest | codec.Malformed, context: Context
    ) -> codec.HintStatus:
        """Start, stop or read a guest's free page hinting (admin only where
        identities are checked), as Firecracker's /balloon/hinting API."""
        guest_id, action, ack = codec.decode_hint_request(request)
        if not await self.gate.may_read_all(context):
            await abort(
                context, grpc.StatusCode.PERMISSION_DENIED, "hinting needs an admin identity"
            )
        if guest_id_problem(guest_id) is not None:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "guest_id: not a guest id")
        s = of_guest(self.device.table, guest_id)
        if s is None:
            await abort(context, grpc.StatusCode.NOT_FOUND, f"no session of guest {guest_id!r}")
        if not hints.hinting(s):
            await abort(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                f"guest {guest_id!r} has no free page hinting (host without --free-page-hint, "
                "or an older guest)",
            )
        if action == codec.HINT_START:
            hints.start(s, ack)
            self.device.problems.note(
                "hint_start", f"guest {guest_id}: free page hinting run {hints.state(s).host_cmd}"
            )
        elif action == codec.HINT_STOP:
            hints.stop(s)
            log.info(f"guest {guest_id}: free page hinting done")
        return codec.encode_hint_status(hints.state(s))

    async def snapshot(
        self, request: codec.SnapshotRequest | codec.Malformed, context: Context
    ) -> codec.SnapshotReport:
        """A snapshot of a guest's RAM by pre-copy (host/migration.py); admin only
        where identities are checked."""
        opts = codec.decode_snapshot_request(request)
        if not await self.gate.may_read_all(context):
            await abort(
                context, grpc.StatusCode.PERMISSION_DENIED, "snapshots need an admin identity"
            )
        if guest_id_problem(opts.guest_id) is not None:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "guest_id: not a guest id")
        if opts.max_rounds > MAX_SNAPSHOT_ROUNDS:
            await abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"max_rounds: at most {MAX_SNAPSHOT_ROUNDS}",
            )
        s = of_guest(self.device.table, opts.guest_id)
        if s is None:
            await abort(
                context, grpc.StatusCode.NOT_FOUND, f"no session of guest {opts.guest_id!r}"
            )
        try:
            result = await run_snapshot(s, opts, Path(s.ram.shm_path).parent)
        except SnapshotError as e:
            await abort(context, grpc.StatusCode.FAILED_PRECONDITION, str(e))
        except OSError as e:
            await abort(context, grpc.StatusCode.INTERNAL, f"snapshot: {e.strerror or e}")
        log.info(
            f"guest {opts.guest_id}: snapshot in {result.rounds} rounds, "
            f"{result.pages_copied} pages copied, {result.pages_skipped} skipped, "
            f"downtime {result.downtime_us / 1000:.1f} ms, {result.pages_lost} lost"
        )
        return codec.encode_snapshot_report(result)
