"""The work queue: the only code that decides *when* a request is reconciled.

In the shape of client-go's ``util/workqueue``: every trigger (a watch event, an expiry or
pending-timeout timer, the resync, a takeover) only adds a key. Keys are deduplicated (a key
added while waiting is waiting once); one worker at a time per key (a key added while it is
being processed runs again afterwards, never concurrently); a key whose processing raised is
added again after a per-key exponential backoff with jitter (milliseconds at first, capped at
``cap`` seconds, 1 by default), so a failed expiry is retried at once and not at the next
resync; timers are delayed adds. While the queue is paused (leadership in doubt) keys are kept,
not dropped, and no worker takes one. Keys added ``slow`` (the periodic resync's thousands) wait
in a second lane that workers take from only when the first is empty, and no more than
``slow_workers`` at once: an expiry timer or a watch event never waits behind a resync, nor for
the API server and the event loop to finish a flood of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import heapq
import itertools
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable

from kubepim import metrics

logger = logging.getLogger(__name__)


class WorkQueue:
    """Deduplicated keys, one worker per key, backoff on failure, delayed keys."""

    def __init__(
        self,
        process: Callable[[str], Awaitable[None]],
        workers: int = 16,
        base: float = 0.005,
        cap: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        gate: Callable[[], bool] = lambda: True,
        held: tuple[type[BaseException], ...] = (),
        woken: Callable[[str], None] = lambda key: None,
        slow_workers: int = 8,
        due: Callable[[str], None] = lambda key: None,
    ) -> None:
        self._process = process
        # Told of every key a timer or a retry adds (before it is added): not a watch event's.
        self._woken = woken
        # Told of every key whose timer fires (before it is added): what cannot wait for a
        # worker (an expired grant's binding) is done beside the queue.
        self._due = due
        # Workers take keys only while ``gate()`` holds (this replica leads); a key whose
        # processing raised one of ``held`` is put back at once, not counted as a failure.
        self._gate = gate
        self._held = held
        self._workers = workers
        self._base, self._cap = base, cap
        self._clock = clock
        self._queue: deque[str] = deque()
        self._slow: deque[str] = deque()
        self._slow_keys: set[str] = set()  # keys waiting in the slow lane (and only there)
        self._slow_workers = slow_workers
        self._slow_taken: set[str] = set()  # slow-lane keys being processed
        self._dirty: set[str] = set()
        self._processing: set[str] = set()
        self._added_at: dict[str, float] = {}
        self._failures: dict[str, int] = {}
        self._delayed: list[tuple[float, int, str]] = []
        self._waiting: dict[str, float] = {}  # key -> earliest deadline among delayed adds
        self._sequence = itertools.count()
        self._work = asyncio.Event()
        self._timer = asyncio.Event()
        self._open = asyncio.Event()
        self._open.set()
        metrics.track_queue(lambda: len(self))

    # Adding keys

    def add(self, key: str, slow: bool = False) -> None:
        """Reconcile ``key`` as soon as a worker is free (once, however often it is added).

        ``slow``: only once no other key waits (a key in the slow lane added again without
        ``slow`` moves to the first lane).
        """
        metrics.QUEUE_ADDS.inc()
        if key in self._dirty:
            if not slow and key in self._slow_keys:
                self._slow_keys.discard(key)  # its slow-lane entry is skipped when reached
                if key not in self._processing:
                    self._queue.append(key)
                    self._notify()
            return
        self._dirty.add(key)
        self._added_at.setdefault(key, self._clock())
        if slow:
            self._slow_keys.add(key)
        if key in self._processing:
            return  # requeued when its worker is done
        (self._slow if slow else self._queue).append(key)
        self._notify()

    def add_after(self, key: str, seconds: float) -> None:
        """Add ``key`` once ``seconds`` have passed (the earliest of several such adds wins)."""
        if seconds <= 0:
            self._due(key)  # (a timer all the same: due already)
            self._woken(key)
            self.add(key)
            return
        deadline = self._clock() + seconds
        if self._waiting.get(key, float("inf")) <= deadline:
            return
        self._waiting[key] = deadline
        heapq.heappush(self._delayed, (deadline, next(self._sequence), key))
        self._timer.set()

    def schedule(self, key: str, when: datetime.datetime) -> None:
        """Add ``key`` at the wall-clock time ``when`` (an expiry or a pending timeout).

        Kept as a monotonic delay; the reconcile reads the wall clock and schedules again if it
        woke early, so clock adjustments cannot make a timer fire late for good.
        """
        seconds = (when - datetime.datetime.now(datetime.UTC)).total_seconds()
        self.add_after(key, seconds + 0.005)  # a little after, not a little before

    def cancel(self, key: str) -> None:
        """Drop a delayed add of ``key``.

        Its heap entry becomes stale and is skipped; once stale entries outnumber live ones the
        heap is rebuilt, so cancelled timers (every request that finished early) hold no memory
        until their deadline.
        """
        if self._waiting.pop(key, None) is not None and \
                len(self._delayed) > 2 * len(self._waiting) + 64:
            self._delayed = [entry for entry in self._delayed
                             if self._waiting.get(entry[2]) == entry[0]]
            heapq.heapify(self._delayed)

    def forget(self, key: str) -> None:
        """Reset ``key``'s backoff (it succeeded, or it is gone)."""
        self._failures.pop(key, None)

    def retry(self, key: str) -> float:
        """Add ``key`` again after its backoff; returns the delay chosen."""
        failures = self._failures.get(key, 0)
        self._failures[key] = failures + 1
        delay = float(min(self._cap, self._base * 2.0 ** failures))
        delay *= 0.5 + random.random() / 2  # noqa: S311 - jitter, not cryptography
        metrics.QUEUE_RETRIES.inc()
        self.add_after(key, delay)
        return delay

    # Leadership

    def pause(self) -> None:
        """Stop handing out keys (kept, not dropped) until :meth:`resume`."""
        self._open.clear()

    def resume(self) -> None:
        """Hand out keys again."""
        self._open.set()
        self._notify()

    def clear(self) -> None:
        """Drop every key, waiting or delayed, and every backoff (leadership was lost)."""
        self._queue.clear()
        self._slow.clear()
        self._slow_keys.clear()
        self._dirty.clear()  # (_slow_taken empties as the keys being processed finish)
        self._added_at.clear()
        self._failures.clear()
        self._delayed.clear()
        self._waiting.clear()

    @property
    def paused(self) -> bool:
        """Whether keys are being held back."""
        return not self._open.is_set()

    def pressing(self) -> bool:
        """Whether work that is due waits or runs.

        First-lane keys (timers, watch events) waiting, or reconciles of such keys in progress
        (the slow lane's are not counted): deliveries let both go first (docs/notifications.md).
        """
        return bool(self._queue) or len(self._processing) > len(self._slow_taken)

    def __len__(self) -> int:
        return len(self._queue) + len(self._slow_keys) + len(self._waiting)

    def __contains__(self, key: str) -> bool:
        return key in self._dirty or key in self._waiting or key in self._processing

    # Running

    async def run(self) -> None:
        """Run the workers and the timer until cancelled."""
        tasks = [asyncio.create_task(self._worker(), name=f"worker-{n}")
                 for n in range(self._workers)]
        tasks.append(asyncio.create_task(self._timers(), name="queue-timers"))
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()

    async def drain(self, timeout: float) -> bool:
        """Wait until nothing is queued or processing (tests and benchmarks); False on timeout."""
        deadline = self._clock() + timeout
        while self._queue or self._slow_keys or self._processing:
            if self._clock() >= deadline:
                return False
            await asyncio.sleep(0.005)
        return True

    def idle(self) -> bool:
        """Whether no key waits in either lane."""
        return not self._queue and not self._slow_keys

    async def quiet(self, timeout: float, settle: float = 2.0) -> bool:
        """Wait until no key has waited in either lane for ``settle`` s; False on timeout.

        For background work that must never go ahead of grants, expiries or a takeover's
        listings (a standing-privilege scan): ``settle`` lets a watch's initial listing, which
        starts a moment after the takeover, fill the queue before the queue counts as quiet.
        """
        deadline = self._clock() + timeout
        since = self._clock()
        while True:
            if not self.idle():
                since = self._clock()
            elif self._clock() - since >= settle:
                return True
            if self._clock() >= deadline:
                return False
            await asyncio.sleep(min(0.1, settle))

    async def slow_below(self, count: int, timeout: float) -> bool:
        """Wait until fewer than ``count`` keys wait in the slow lane; False on timeout."""
        deadline = self._clock() + timeout
        while len(self._slow_keys) >= count:
            if self._clock() >= deadline:
                return False
            await asyncio.sleep(0.02)
        return True

    def _notify(self) -> None:
        self._work.set()

    async def _get(self) -> str:
        while True:
            await self._open.wait()
            if not self._gate():
                await asyncio.sleep(0.05)  # leadership in doubt: keys wait, workers idle
                continue
            key = None
            if self._queue:
                key = self._queue.popleft()
            while key is None and self._slow and len(self._slow_taken) < self._slow_workers:
                candidate = self._slow.popleft()
                if candidate in self._processing:
                    continue  # a stale entry: its worker re-queues it when done (_done)
                if candidate in self._slow_keys:  # else: moved to the first lane, or taken
                    self._slow_keys.discard(candidate)
                    self._slow_taken.add(candidate)
                    key = candidate
            if key is not None:
                self._processing.add(key)
                self._dirty.discard(key)
                added = self._added_at.pop(key, None)
                if added is not None:
                    metrics.QUEUE_SECONDS.observe(self._clock() - added)
                return key
            self._work.clear()
            await self._work.wait()

    def _done(self, key: str) -> None:
        self._processing.discard(key)
        if key in self._slow_taken:
            self._slow_taken.discard(key)
            self._notify()  # a slow-lane slot is free
        if key in self._dirty:
            (self._slow if key in self._slow_keys else self._queue).append(key)
            self._notify()

    async def _worker(self) -> None:
        while True:
            key = await self._get()
            started = self._clock()
            try:
                await self._process(key)
            except asyncio.CancelledError:
                raise
            except self._held:
                self._dirty.add(key)  # kept: taken again once the gate opens (see _done)
                self._added_at.setdefault(key, self._clock())
            except Exception as error:
                delay = self.retry(key)
                logger.warning("reconcile of %s failed (%s: %s); retrying in %.3f s", key,
                               type(error).__name__, error, delay)
            else:
                self.forget(key)
            finally:
                metrics.WORK_SECONDS.observe(self._clock() - started)
                self._done(key)

    async def _timers(self) -> None:
        while True:
            now = self._clock()
            while self._delayed and self._delayed[0][0] <= now:
                deadline, _, key = heapq.heappop(self._delayed)
                if self._waiting.get(key) != deadline:
                    continue  # superseded or cancelled
                del self._waiting[key]
                metrics.TIMER_LATENESS_SECONDS.observe(max(0.0, now - deadline))
                try:
                    self._due(key)
                except Exception:  # never the timers' end: the key is added all the same
                    logger.exception("the due hook failed for %s", key)
                self._woken(key)
                self.add(key)
            self._timer.clear()
            timeout = max(self._delayed[0][0] - now, 0) if self._delayed else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._timer.wait(), timeout)
