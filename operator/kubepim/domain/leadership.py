"""Leader election over a coordination.k8s.io Lease: only one replica acts at a time.

Pure: given the Lease as read, who we are and the time, what to do. The holder renews every
``renew`` seconds; a lease not renewed for ``duration`` seconds is free for anyone. A leader that
cannot renew steps down before its lease can have expired for the others (``margin``).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class LeaseState:
    """The fields of a Lease that matter; None when the Lease does not exist."""

    holder: str | None
    renewed: datetime.datetime | None
    duration: datetime.timedelta
    transitions: int = 0


Verdict = Literal["acquire", "renew", "standby"]


def next_step(lease: LeaseState | None, me: str, now: datetime.datetime) -> Verdict:
    """Take a free or expired lease, renew our own, else stand by."""
    if lease is None or lease.holder in (None, ""):
        return "acquire"
    if lease.holder == me:
        return "renew"
    if lease.renewed is None or lease.renewed + lease.duration <= now:
        return "acquire"
    return "standby"


def still_leader(
    last_renewal: datetime.datetime | None, duration: datetime.timedelta,
    margin: datetime.timedelta, now: datetime.datetime,
) -> bool:
    """Whether a leader whose last successful renewal was at ``last_renewal`` may still act.

    It must stop ``margin`` before the others may take over, so two never act at once.
    """
    return last_renewal is not None and now < last_renewal + duration - margin
