"""One expiry scheduler for all grants: a heap of (expiresAt, request) and one sleeping task.

Driven by the objects: every reconcile of an Active request (re)schedules it, so a restart
rebuilds the heap from the watch's initial listing. Firing only asks for a reconcile, which
re-reads the request and decides from its status, so stale or duplicate entries are harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import heapq
import logging
from collections.abc import Awaitable, Callable

logger = logging.getLogger(__name__)

# Wake a little after the deadline rather than a little before it (timer granularity).
_MARGIN = datetime.timedelta(milliseconds=5)


class ExpiryScheduler:
    """Calls ``fire(name)`` once the wall clock passes each scheduled time."""

    def __init__(self, fire: Callable[[str], Awaitable[None]]) -> None:
        self._fire = fire
        self._heap: list[tuple[datetime.datetime, str]] = []
        self._due: dict[str, datetime.datetime] = {}
        self._wake = asyncio.Event()
        self._running: set[asyncio.Task[None]] = set()

    def schedule(self, name: str, when: datetime.datetime) -> None:
        """Fire for ``name`` at ``when``; replaces an earlier schedule of the same name."""
        if self._due.get(name) == when:
            return
        self._due[name] = when
        heapq.heappush(self._heap, (when, name))
        self._wake.set()

    def cancel(self, name: str) -> None:
        """Forget ``name``; its heap entry becomes stale and is skipped."""
        self._due.pop(name, None)

    def __len__(self) -> int:
        return len(self._due)

    async def run(self) -> None:
        """Sleep until the next deadline, fire everything due, repeat; runs until cancelled."""
        while True:
            now = datetime.datetime.now(datetime.UTC)
            while self._heap and self._heap[0][0] <= now:
                when, name = heapq.heappop(self._heap)
                if self._due.get(name) != when:
                    continue
                del self._due[name]
                task = asyncio.create_task(self._fire_one(name))
                self._running.add(task)
                task.add_done_callback(self._running.discard)
            self._wake.clear()
            timeout = None
            if self._heap:
                timeout = max((self._heap[0][0] + _MARGIN - now).total_seconds(), 0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    async def _fire_one(self, name: str) -> None:
        try:
            await self._fire(name)
        except Exception:
            logger.exception("expiry of %s failed; the periodic resync will retry", name)
