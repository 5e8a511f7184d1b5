"""Leader election over a coordination.k8s.io Lease: only one replica acts at a time.

Pure: given the Lease as read, what this replica has observed of it on its *own* monotonic
clock, and the time on that clock, what to do. Clocks are never compared across replicas (as in
client-go's leaderelection): a standby takes the Lease only once the holder's record (holder,
renewTime, resourceVersion) has not changed for the lease's duration as *it* measured, from when
it first saw that record; a leader acts only until ``duration - margin`` after the moment it
*sent* its last successful renewal, so it stops before any standby can have started counting.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class LeaseState:
    """The fields of a Lease that matter; None when the Lease does not exist."""

    holder: str | None
    record: str  # renewTime and resourceVersion: changes with every renewal
    duration: float  # leaseDurationSeconds
    transitions: int = 0


@dataclass(frozen=True)
class Observed:
    """A record of the Lease as this replica saw it, and since when (its monotonic seconds)."""

    holder: str | None
    record: str
    since: float


Verdict = Literal["acquire", "renew", "standby"]


def observe(previous: Observed | None, lease: LeaseState | None, now: float) -> Observed | None:
    """What is observed after reading ``lease`` at ``now``: ``since`` moves only on change."""
    if lease is None:
        return None
    if previous is not None and (previous.holder, previous.record) == (lease.holder,
                                                                         lease.record):
        return previous
    return Observed(lease.holder, lease.record, now)


def next_step(lease: LeaseState | None, me: str, seen: Observed | None, now: float) -> Verdict:
    """Take a free or expired lease, renew our own, else stand by.

    Expired means: unchanged for the lease's duration since this replica first saw it, by this
    replica's monotonic clock (``now``), whatever the holder's clock wrote in renewTime.
    """
    if lease is None or lease.holder in (None, ""):
        return "acquire"
    if lease.holder == me:
        return "renew"
    if seen is not None and now - seen.since >= lease.duration:
        return "acquire"
    return "standby"


def still_leader(sent_at: float | None, duration: float, margin: float, now: float) -> bool:
    """Whether a leader whose last successful renewal was *sent* at ``sent_at`` may still act.

    It must stop ``margin`` before the others may take over, so two never act at once.
    """
    return sent_at is not None and now < sent_at + duration - margin
