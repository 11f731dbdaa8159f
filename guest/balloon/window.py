"""The chain window: every chain from the moment it is sent until the host answers it.

A chain is outstanding until one of two things happens: the host answers it
(DONE, REFUSED or DISCARD_FAILED), or the host *can no longer act on it* — the
guest has reconnected and the new session's fence says the old session is
over. Nothing else resolves it: no timer, no broken stream. While it is
outstanding its blocks stay isolated in the guest, because the host may still
be about to discard them (the kernel's virtio-balloon driver likewise waits
for the used buffer with no timeout).

Chain ids are unique over the driver's life, across sessions, so a fence's
list of DONE ids is unambiguous.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass

from guest.hinting.device import Block
from virtqueue import codec
from virtqueue.codec import Fence, UsedMsg
from virtqueue.contract import BLOCK_PAGES


@dataclass
class Outstanding:
    id: int
    batch: Sequence[Block]
    session: str
    sent_at: float
    future: asyncio.Future[UsedMsg]
    pages: int
    warned: bool = False


@dataclass
class WindowStats:
    answered: int = 0
    fenced_done: int = 0  # answered by a fence: the host had finished them
    fenced_not_done: int = 0  # answered by a fence: never discarded


class ChainWindow:
    def __init__(self, size: int = 1) -> None:
        self.chains: dict[int, Outstanding] = {}
        self._ids = itertools.count(1)
        self.slots = asyncio.Semaphore(size)
        self.stats = WindowStats()

    def resize(self, size: int) -> None:
        """A new session's queue size. Only called while nothing is waiting for a slot."""
        self.slots = asyncio.Semaphore(max(1, size - len(self.chains)))

    def open(self, batch: Sequence[Block], orders: Sequence[int], session: str) -> Outstanding:
        chain = Outstanding(
            id=next(self._ids),
            batch=batch,
            session=session,
            sent_at=time.monotonic(),
            future=asyncio.get_running_loop().create_future(),
            pages=sum(map(BLOCK_PAGES.__getitem__, orders)),
        )
        self.chains[chain.id] = chain
        return chain

    def close(self, chain: Outstanding) -> None:
        self.chains.pop(chain.id, None)

    def answer(self, used: UsedMsg) -> bool:
        """The host used a chain. False if no such chain is outstanding (ignored)."""
        chain = self.chains.get(used.id)
        if chain is None or chain.future.done():
            return False
        self.stats.answered += 1
        chain.future.set_result(used)
        return True

    def fence(self, session: str, fence: Fence | None) -> int:
        """The host fenced ``session``: settle its unanswered chains. Returns how many."""
        settled = 0
        for chain in list(self.chains.values()):
            if chain.session != session or chain.future.done():
                continue
            done = fence is not None and fence.known and chain.id in fence.done_ids
            if done:
                self.stats.fenced_done += 1
                used = UsedMsg(chain.id, status=codec.DONE, reason="fenced_done")
            else:
                self.stats.fenced_not_done += 1
                used = UsedMsg(
                    chain.id,
                    status=codec.REFUSED,
                    reason="cancelled",
                    detail="the stream broke before the host answered it; the fence did not "
                    "list it as done, so it counts as not reported",
                )
            chain.future.set_result(used)
            settled += 1
        return settled

    def unanswered_sessions(self) -> set[str]:
        return {c.session for c in self.chains.values() if not c.future.done()}

    def oldest_age(self, now: float | None = None) -> float:
        """Seconds the oldest unanswered chain has been out (0 when none)."""
        now = time.monotonic() if now is None else now
        ages = [now - c.sent_at for c in self.chains.values() if not c.future.done()]
        return max(ages, default=0.0)

    @property
    def outstanding_pages(self) -> int:
        return sum(c.pages for c in self.chains.values() if not c.future.done())
