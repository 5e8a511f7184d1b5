"""Per-requester limits: how many open requests and unreviewed break-glass grants each has.

Kept by every replica from the AccessRequest watch (the webhook may be served by any), holding
only requests that count: open ones, and break-glass ones not yet acknowledged. A request the
webhook has just admitted counts at once, before its watch event arrives, so a burst of
concurrent creates cannot slip past the limit; such an entry lapses if no event confirms it
(another admission check refused the create).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from kubepim.api.request import AccessRequestSpec, Phase
from kubepim.domain.quorum import Case, person

_UNCONFIRMED_SECONDS = 30.0


@dataclass(frozen=True)
class _Counted:
    requester: str  # as :func:`person` folds it
    open: bool
    unreviewed_break_glass: bool


class RequesterLimits:
    """Counts per requester, from watch events and fresh admissions."""

    def __init__(self, case: Case) -> None:
        self._case = case
        self._counted: dict[str, _Counted] = {}
        self._admitted: dict[str, tuple[_Counted, float]] = {}

    def observe(self, body: dict[str, Any]) -> None:
        """Apply one watch event's body (not for deletions: :meth:`forget`)."""
        name = str(body.get("metadata", {}).get("name"))
        self._admitted.pop(name, None)
        spec = body.get("spec") or {}
        status = body.get("status") or {}
        username = (spec.get("requester") or {}).get("username")
        phase = status.get("phase")
        is_open = phase in (None, Phase.PENDING.value, Phase.ACTIVE.value)
        unreviewed = bool(spec.get("breakGlass")) and (
            bool(status.get("reviewRequired")) or phase in (None, Phase.PENDING.value))
        if username is None or not (is_open or unreviewed):
            self._counted.pop(name, None)
            return
        self._counted[name] = _Counted(person(str(username), self._case), is_open, unreviewed)

    def forget(self, name: str) -> None:
        """The request was deleted."""
        self._counted.pop(name, None)
        self._admitted.pop(name, None)

    def admit(self, name: str, spec: AccessRequestSpec) -> None:
        """The webhook admitted this new request: count it until its watch event arrives."""
        if spec.requester is None or name in self._counted:
            return
        entry = _Counted(person(spec.requester.username, self._case), True, spec.break_glass)
        self._admitted[name] = (entry, time.monotonic() + _UNCONFIRMED_SECONDS)

    def counts(self, requester: str) -> tuple[int, int]:
        """(open requests, unreviewed break-glass requests) of ``requester``."""
        now = time.monotonic()
        for name in [n for n, (_, until) in self._admitted.items() if until <= now]:
            del self._admitted[name]
        key = person(requester, self._case)
        entries = [*self._counted.values(), *(entry for entry, _ in self._admitted.values())]
        mine = [entry for entry in entries if entry.requester == key]
        return (sum(entry.open for entry in mine),
                sum(entry.unreviewed_break_glass for entry in mine))
