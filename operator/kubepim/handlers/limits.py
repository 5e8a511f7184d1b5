"""Per-requester limits: which open requests and unreviewed break-glass grants each has.

Kept by every replica from the AccessRequest watch (the webhook may be served by any), holding
only requests that count: open ones, and break-glass ones not yet acknowledged. Two checks use
it. The webhook refuses a create past a limit, and counts what it admits at once (before any
await, so concurrent creates on one replica cannot slip past); such an entry lapses if no watch
event confirms it. Two replicas serve the webhook, so concurrent creates split between them can
still pass both; the leader's first reconcile of a request is the authoritative check: it counts
only the requester's requests created before this one, so exactly the first ones by creation
order survive and a request past the limit is Rejected.
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
    order: tuple[str, str] = ("~", "")  # (creationTimestamp, name); unknown sorts last


@dataclass(frozen=True)
class Counts:
    """A requester's open requests and unreviewed break-glass requests, by name."""

    open: tuple[str, ...]
    unreviewed_break_glass: tuple[str, ...]


class RequesterLimits:
    """Counts per requester, from watch events and fresh admissions."""

    def __init__(self, case: Case) -> None:
        self._case = case
        self._counted: dict[str, _Counted] = {}
        self._admitted: dict[str, tuple[_Counted, float]] = {}

    def observe(self, body: dict[str, Any]) -> None:
        """Apply one watch event's body (not for deletions: :meth:`forget`)."""
        metadata = body.get("metadata", {})
        name = str(metadata.get("name"))
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
        order = (str(metadata.get("creationTimestamp") or "~"), name)
        self._counted[name] = _Counted(person(str(username), self._case), is_open, unreviewed,
                                       order)

    def forget(self, name: str) -> None:
        """The request was deleted."""
        self._counted.pop(name, None)
        self._admitted.pop(name, None)

    def admit(self, name: str, spec: AccessRequestSpec) -> None:
        """The webhook admits this new request: count it until its watch event arrives."""
        if spec.requester is None or name in self._counted:
            return
        entry = _Counted(person(spec.requester.username, self._case), True, spec.break_glass)
        self._admitted[name] = (entry, time.monotonic() + _UNCONFIRMED_SECONDS)

    def unadmit(self, name: str) -> None:
        """A later check refused the request :meth:`admit` counted."""
        self._admitted.pop(name, None)

    def counts(self, requester: str, before: tuple[str, str] | None = None) -> Counts:
        """What ``requester`` holds.

        With ``before`` ((creationTimestamp, name) of a request), only what was created before
        that request.
        """
        now = time.monotonic()
        for name in [n for n, (_, until) in self._admitted.items() if until <= now]:
            del self._admitted[name]
        key = person(requester, self._case)
        entries = [*self._counted.items(),
                   *((name, entry) for name, (entry, _) in self._admitted.items())]
        mine = sorted((entry.order, name, entry) for name, entry in entries
                      if entry.requester == key and (before is None or entry.order < before))
        return Counts(open=tuple(name for _, name, entry in mine if entry.open),
                      unreviewed_break_glass=tuple(
                          name for _, name, entry in mine if entry.unreviewed_break_glass))
