"""Leader election: the replica holding the Lease acts; the others only serve admission.

Each replica runs :class:`LeaderElector`. The holder renews the Lease every ``duration / 5``; when
it dies, another takes the Lease once ``duration`` has passed since the last renewal and, before
anything else, does the restart work (revoke what is overdue, sweep orphans, reconcile every
unfinished request). Identities are pod names, so a restarted pod takes its own Lease back at
once. Decisions are pure (``domain/leadership.py``); writes carry the resourceVersion read, so
two candidates cannot both win a round.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Awaitable, Callable

from kubepim.domain.leadership import LeaseState, next_step, still_leader
from kubepim.k8s.client import Conflict, Kube, parse_time

from .reconcile import utcnow

logger = logging.getLogger(__name__)


def _micro(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    """Holds or waits for one Lease; ``leading()`` says whether this replica may act now."""

    def __init__(
        self, kube: Kube, namespace: str, name: str, identity: str, seconds: float,
        on_elected: Callable[[], Awaitable[None]],
    ) -> None:
        self.kube = kube
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.duration = datetime.timedelta(seconds=seconds)
        self.margin = self.duration / 5
        self.on_elected = on_elected
        self.last_renewal: datetime.datetime | None = None
        self._elected = False

    def leading(self) -> bool:
        """Whether this replica holds a lease nobody else can have taken yet."""
        return self._elected and still_leader(self.last_renewal, self.duration, self.margin,
                                              utcnow())

    async def tick(self) -> None:
        """One round: acquire or renew the Lease, or stand by; run takeover work when elected."""
        now = utcnow()
        raw = await self.kube.get_lease(self.name, self.namespace)
        state = None
        if raw is not None:
            spec = raw.get("spec") or {}
            state = LeaseState(
                holder=spec.get("holderIdentity"), renewed=parse_time(spec.get("renewTime")),
                duration=datetime.timedelta(seconds=spec.get("leaseDurationSeconds") or 0),
                transitions=int(spec.get("leaseTransitions") or 0))
        step = next_step(state, self.identity, now)
        if step == "standby":
            if self._elected:
                logger.warning("lost the lease to %s: standing by", state and state.holder)
            self._elected = False
            return
        spec = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": int(self.duration.total_seconds()),
            "renewTime": _micro(now),
            "acquireTime": _micro(now) if step == "acquire" else (raw or {}).get(
                "spec", {}).get("acquireTime") or _micro(now),
            "leaseTransitions": (state.transitions if state else 0)
            + (1 if step == "acquire" and state is not None else 0),
        }
        version = (raw or {}).get("metadata", {}).get("resourceVersion")
        try:
            await self.kube.write_lease(self.name, self.namespace, spec, version)
        except Conflict:
            self._elected = False
            return
        self.last_renewal = now
        if not self._elected:
            logger.info("elected leader as %s (lease %s/%s)", self.identity, self.namespace,
                        self.name)
            self._elected = True
            await self.on_elected()

    async def release(self) -> None:
        """Give the Lease up on a clean shutdown, so a standby takes over at once."""
        if not self._elected:
            return
        self._elected = False
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
        """Renew or retry every ``duration / 5`` until cancelled."""
        while True:
            await asyncio.sleep(self.margin.total_seconds())
            try:
                await self.tick()
            except Exception:
                logger.exception("leader election round failed; retrying")
