"""Leader election that fences itself: only the replica holding the Lease acts.

The others serve admission and keep their caches. Renewal runs in its own task on its own HTTP
connection, so neither takeover work nor a flood of reconcile traffic can delay it. Lease time is
judged on this replica's monotonic clock (``domain/leadership.py``). The moment the lease may
have passed, ``leading()`` turns false: every write the operator makes checks it first (``Kube``'s
fence), so a replica paused past its lease writes nothing once resumed. When leadership is lost
for good (another holder, or the deadline passed without a renewal) ``on_lost`` runs: the work
queue is paused and emptied and in-memory decisions are reset. The replica stays up as a standby
(it still serves admission, and a restart would only add a gap) and does the takeover work again
if elected.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections.abc import Awaitable, Callable

from kubepim.domain.leadership import LeaseState, Observed, next_step, observe, still_leader
from kubepim.k8s.client import Conflict, Kube, NotLeading

logger = logging.getLogger(__name__)


def _micro(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    """Holds or waits for one Lease; ``leading()`` says whether this replica may act now."""

    def __init__(
        self, kube: Kube, namespace: str, name: str, identity: str, seconds: float,
        on_elected: Callable[[], Awaitable[None]],
        on_lost: Callable[[], Awaitable[None]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kube = kube  # its own connection: renewals never wait behind reconcile traffic
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.duration = seconds
        self.margin = seconds / 5
        self.on_elected = on_elected
        self.on_lost = on_lost
        self.clock = clock
        self.sent_at: float | None = None  # when the last successful renewal was sent
        self.previous_renewal: datetime.datetime | None = None  # renewTime found on takeover
        self._elected = False
        self._seen: Observed | None = None
        self._takeover: asyncio.Task[None] | None = None

    def leading(self) -> bool:
        """Whether this replica holds a lease nobody else can have taken yet."""
        return self._elected and still_leader(self.sent_at, self.duration, self.margin,
                                              self.clock())

    def remaining(self) -> float:
        """Seconds this replica may still write (0 when not leading)."""
        if not self._elected or self.sent_at is None:
            return 0.0
        return max(0.0, self.sent_at + self.duration - self.margin - self.clock())

    def elected(self) -> bool:
        """Whether this replica believes it holds the lease (leading, or renewal late)."""
        return self._elected

    async def tick(self) -> None:
        """One round: acquire or renew the Lease, or stand by; start takeover work when elected."""
        raw = await self.kube.get_lease(self.name, self.namespace)
        now = self.clock()
        state = None
        if raw is not None:
            spec = raw.get("spec") or {}
            record = f"{spec.get('renewTime')}/{raw['metadata'].get('resourceVersion')}"
            state = LeaseState(
                holder=spec.get("holderIdentity"), record=record,
                duration=float(spec.get("leaseDurationSeconds") or self.duration),
                transitions=int(spec.get("leaseTransitions") or 0))
        self._seen = observe(self._seen, state, now)
        step = next_step(state, self.identity, self._seen, now)
        if step == "standby":
            if self._elected:
                logger.warning("lost the lease to %s: standing by", state and state.holder)
                await self._lose()
            return
        if step == "acquire" and self._elected:
            # Free or expired while we believed we held it (paused past the lease; another
            # replica may have led and released it since): what we remember may be stale.
            logger.warning("the lease was free or expired while held here: a new term")
            await self._lose()
        wall = datetime.datetime.now(datetime.UTC)
        spec = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": int(self.duration),
            "renewTime": _micro(wall),
            "acquireTime": _micro(wall) if step == "acquire" else (raw or {}).get(
                "spec", {}).get("acquireTime") or _micro(wall),
            "leaseTransitions": (state.transitions if state else 0)
            + (1 if step == "acquire" and state is not None else 0),
        }
        version = (raw or {}).get("metadata", {}).get("resourceVersion")
        sent = self.clock()
        try:
            await self.kube.write_lease(self.name, self.namespace, spec, version)
        except Conflict:
            if self._elected:
                logger.warning("the lease changed under us: standing by")
                await self._lose()
            return
        self.sent_at = sent
        if not self._elected:
            renewed = (raw or {}).get("spec", {}).get("renewTime")
            self.previous_renewal = (datetime.datetime.fromisoformat(renewed.replace(
                "Z", "+00:00")) if renewed else None)
            logger.info("elected leader as %s (lease %s/%s)", self.identity, self.namespace,
                        self.name)
            self._elected = True
            # The takeover runs beside the renewals, never inside one.
            self._takeover = asyncio.create_task(self._take_over(), name="takeover")

    async def takeover_done(self, timeout: float) -> None:
        """Wait up to ``timeout`` s for the takeover work of the last election (it goes on)."""
        if self._takeover is not None:
            await asyncio.wait([self._takeover], timeout=timeout)

    async def _take_over(self) -> None:
        """The takeover work, tried again with backoff until it is done or the lease lost."""
        delay = 0.2
        while self._elected:
            try:
                await self.on_elected()
                return
            except NotLeading:
                if not self.elected():
                    return  # the lease passed: the next election takes over again
                # Fenced while a late renewal was in flight, and it landed: still leader.
                logger.warning("takeover work fenced; trying again in %.1f s", delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            except Exception as error:
                logger.warning("takeover work failed (%s: %s); trying again in %.1f s",
                               type(error).__name__, error, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _lose(self) -> None:
        self._elected = False
        if self._takeover is not None:
            self._takeover.cancel()
            self._takeover = None
        if self.on_lost is not None:
            await self.on_lost()

    async def release(self) -> None:
        """Give the Lease up on a clean shutdown, so a standby takes over at once."""
        if not self._elected:
            return
        await self._lose()
        raw = await self.kube.get_lease(self.name, self.namespace)
        spec = (raw or {}).get("spec") or {}
        if spec.get("holderIdentity") != self.identity:
            return
        version = (raw or {}).get("metadata", {}).get("resourceVersion")
        try:
            await self.kube.write_lease(self.name, self.namespace,
                                        {**spec, "holderIdentity": ""}, version)
            logger.info("released the lease")
        except Conflict:
            pass

    async def run(self) -> None:
        """Renew or retry every ``duration / 5`` until cancelled; give up leading on time."""
        while True:
            await asyncio.sleep(self.margin)
            try:
                # Bounded: a round stuck on a dead connection must not outlast the lease.
                await asyncio.wait_for(self.tick(), timeout=self.margin * 2)
            except Exception as error:
                logger.warning("leader election round failed (%s: %s); retrying",
                               type(error).__name__, error)
            if self._elected and not self.leading():
                logger.warning("could not renew the lease in time: standing by")
                await self._lose()
