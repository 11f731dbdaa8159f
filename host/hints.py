"""Free page hinting on the host (issue 25): VIRTIO_BALLOON_F_FREE_PAGE_HINT.

As Firecracker's balloon device (src/vmm/src/devices/virtio/balloon/device.rs)
runs it, for a session that negotiated the bit:

- ``start``: a new command id (the last one plus one, never 0 or 1), told to
  the guest as a config change; the guest answers with that id, then free
  blocks, then STOP (0). ``acknowledge_on_stop`` (Firecracker's default): when
  the guest sends STOP, the host sets DONE (1) at once, and the guest may use
  its hinted blocks again.
- ``stop``: DONE, whatever the guest is doing (Firecracker's stop_hinting).
- blocks are taken only while a run is on (not after STOP or DONE), and only
  under the guest's current id, which must be the host's: blocks of an old run
  are ignored (counted), as Firecracker's "Received chain from previous
  command" is. A taken block is recorded, for a snapshot to skip
  (host/migration.py), and not discarded. Departure from Firecracker, which
  discards hinted ranges (``discard_range``) and warns in docs/ballooning.md
  that "the guest is able to reclaim memory before Firecracker even receives
  the range to free": Linux's shrinker gives hinted blocks back whenever memory
  is short ("We're allowed to reuse any free pages, even if they are still to
  be processed by the host", virtballoon_probe), so a discard could wipe pages
  in use. QEMU, too, only skips hinted pages when it migrates; giving free
  memory back is free page reporting's job.
- ``status``: host_cmd and guest_cmd, as GET /balloon/hinting/status.

The host checks each block as it checks a chain: inside the guest's RAM,
aligned, of the order the driver uses (VIRTIO_BALLOON_HINT_BLOCK_ORDER =
MAX_ORDER), not twice in one message (a block may come again in a later one: the
shrinker gave it back and a run took it again); a message that breaks a rule is
refused whole (counted).
"""

from __future__ import annotations

from host.balloon_state import CMD_ID_DONE, CMD_ID_STOP, HintRuns
from host.sessions import Session
from virtqueue import codec
from virtqueue import features as F
from virtqueue.contract import MAX_ORDER

# Most blocks in one message: the driver sends one block a buffer; a batch of
# blocks is this emulation's, bounded like a chain's ranges.
MAX_HINT_BLOCKS = 512


def hinting(s: Session) -> bool:
    return s.balloon is not None and F.has(s.features, F.FREE_PAGE_HINT)


def _set(s: Session, cmd: int) -> None:
    assert s.balloon is not None
    s.balloon.hint.host_cmd = cmd
    s.wake()  # told on the guest's stream as a config change


def start(s: Session, acknowledge_on_stop: bool) -> None:
    """A new run (Firecracker's start_hinting)."""
    assert s.balloon is not None
    h = s.balloon.hint
    cmd = (h.last_cmd_id + 1) & 0xFFFFFFFF
    if cmd <= CMD_ID_DONE:
        cmd = 2  # 0 and 1 are reserved
    h.last_cmd_id = cmd
    h.acknowledge_on_stop = acknowledge_on_stop
    h.hinted_pages = 0
    h.blocks.clear()
    h.runs += 1
    _set(s, cmd)


def stop(s: Session) -> None:
    """DONE: the guest may use what it hinted (Firecracker's stop_hinting)."""
    _set(s, CMD_ID_DONE)


def block_problem(h: HintRuns, nr_pages: int, msg: codec.HintMsg) -> str:
    """What is wrong with a message of blocks ("" when nothing)."""
    if not msg.pfns:
        return "empty"
    if len(msg.pfns) > MAX_HINT_BLOCKS:
        return "too_many_blocks"
    if msg.order != MAX_ORDER:
        return "bad_order"
    size = 1 << msg.order
    if any(p % size or p < 0 or p + size > nr_pages for p in msg.pfns):
        return "out_of_range"
    if len(set(msg.pfns)) != len(msg.pfns):
        return "duplicate"
    return ""


def handle_hint(s: Session, msg: codec.HintMsg) -> str:
    """One message of the free page hint queue; "" or why it was refused."""
    if not hinting(s):
        return "no_hinting"
    assert s.balloon is not None
    h = s.balloon.hint
    if msg.cmd:
        h.guest_cmd = msg.cmd_id
        if msg.cmd_id > CMD_ID_DONE:
            h.guest_run = msg.cmd_id
            return ""
        # A run is over (DONE from a guest is taken as a stop, as Firecracker). Only
        # the host's current run is answered with DONE: the STOP of a run the host
        # already replaced must not end the new one before it starts.
        if h.acknowledge_on_stop and h.guest_run == h.host_cmd:
            _set(s, CMD_ID_DONE)
        return ""
    if h.host_cmd in (CMD_ID_STOP, CMD_ID_DONE) or h.guest_cmd != h.host_cmd:
        h.ignored += len(msg.pfns)  # no run, or an old run's blocks
        return ""
    problem = block_problem(h, s.nr_pages, msg)
    if problem:
        return problem
    new = set(msg.pfns) - h.blocks
    h.blocks.update(new)
    h.hinted_pages += len(new) << msg.order
    return ""


def state(s: Session) -> codec.HintState:
    h = s.balloon.hint if s.balloon is not None else HintRuns()
    return codec.HintState(
        guest_id=s.guest_id,
        hinting=hinting(s),
        host_cmd=h.host_cmd,
        has_guest_cmd=h.guest_cmd is not None,
        guest_cmd=h.guest_cmd or 0,
        hinted_pages=h.hinted_pages,
        runs=h.runs,
    )
