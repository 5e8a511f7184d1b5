"""The AccessRequest lifecycle as a pure function: given what is, what should happen next.

    (new) ── covered ──▶ Pending ── quorum ──▶ Active ── expiresAt ──▶ Expired
      │                   │  │                   └── eligibility gone ──▶ Revoked
      └─ not covered ─▶ Rejected  └─ denial / eligibility gone ──▶ Denied
                          └─ pendingTimeout ──▶ TimedOut

:func:`decide` returns the transitions to record (each becomes one history entry and one Event)
and whether the binding must exist. Time is an argument; nothing here reads a clock.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from kubepim.api import duration
from kubepim.api.common import Condition
from kubepim.api.eligibility import RoleEligibilitySpec
from kubepim.api.request import AccessRequestSpec, AccessRequestStatus, Phase

from .quorum import tally
from .review import Accepted, review

OPERATOR = "kubepim"


@dataclass(frozen=True)
class Transition:
    """One step: recorded in status.history and posted as an Event with ``action`` as reason."""

    action: str
    phase: Phase
    actor: str
    message: str
    warning: bool = False


@dataclass(frozen=True)
class Plan:
    """What the handler must write: transitions, new status fields, the binding's presence."""

    transitions: tuple[Transition, ...] = ()
    binding: Literal["present", "absent"] = "absent"
    eligibility: str | None = None
    activated_at: datetime.datetime | None = None
    expires_at: datetime.datetime | None = None
    message: str = ""

    @property
    def phase(self) -> Phase | None:
        """The phase after this plan, if it changes it."""
        return self.transitions[-1].phase if self.transitions else None


def expiry(activated_at: datetime.datetime, length: datetime.timedelta) -> datetime.datetime:
    """Absolute end of a grant: the clock starts at activation."""
    return activated_at + length


def overdue(status: AccessRequestStatus, now: datetime.datetime) -> bool:
    """Whether an active grant has reached its expiry."""
    return (status.phase == Phase.ACTIVE and status.expires_at is not None
            and status.expires_at <= now)


def decide(
    spec: AccessRequestSpec,
    status: AccessRequestStatus,
    created_at: datetime.datetime,
    eligibilities: Mapping[str, RoleEligibilitySpec],
    namespace_labels: Mapping[str, str] | None,
    now: datetime.datetime,
) -> Plan:
    """Next step of one request. Final phases only keep the binding absent."""
    phase = status.phase
    requester = spec.requester.username if spec.requester else "unknown"
    if phase is not None and phase.final:
        return Plan(message=status.message)

    if phase == Phase.ACTIVE:
        assert status.expires_at is not None  # set together with the phase
        if status.expires_at <= now:
            late = (now - status.expires_at).total_seconds()
            note = f"; revoked {late:.0f}s late" if late >= 1 else ""
            return _final("Expired", Phase.EXPIRED, OPERATOR,
                          f"access ended at its expiry {_iso(status.expires_at)}{note}")
        verdict = review(spec, eligibilities, namespace_labels)
        if not isinstance(verdict, Accepted):
            return _final("Revoked", Phase.REVOKED, OPERATOR,
                          f"eligibility no longer covers this grant: {verdict.message}",
                          warning=True)
        return Plan(binding="present", eligibility=status.eligibility,
                    message=f"active until {_iso(status.expires_at)}")

    verdict = review(spec, eligibilities, namespace_labels)
    steps: list[Transition] = []
    if phase is None:
        if not isinstance(verdict, Accepted):
            return _final("Rejected", Phase.REJECTED, OPERATOR, verdict.message, warning=True)
        steps.append(Transition("Requested", Phase.PENDING, requester,
                                f"{requester} requested {spec.role} {_where(spec)} for "
                                f"{duration.format_duration(verdict.duration)}: "
                                f"{spec.justification}"))
    elif not isinstance(verdict, Accepted):
        return _final("Denied", Phase.DENIED, OPERATOR,
                      f"eligibility no longer covers this request: {verdict.message}",
                      warning=True)
    policy = eligibilities[verdict.eligibility]

    timeout = duration.parse(policy.pending_timeout)
    if now >= created_at + timeout:
        window = policy.pending_timeout
        steps.append(Transition("TimedOut", Phase.TIMED_OUT, OPERATOR,
                                f"no decision within the approval window of {window}"))
        return Plan(transitions=tuple(steps), message=steps[-1].message)

    assert spec.requester is not None  # review refuses requests without one
    result = tally(policy.approval, status.approvals, spec.requester)
    if result.denied_by:
        comment = status.approvals[result.denied_by].comment
        because = f": {comment}" if comment else ""
        steps.append(Transition("Denied", Phase.DENIED, result.denied_by,
                                f"denied by {result.denied_by}{because}"))
        return Plan(transitions=tuple(steps), message=steps[-1].message)
    if result.approved:
        until = expiry(now, verdict.duration)
        who = ", ".join(result.counted)
        steps.append(Transition("Approved", Phase.PENDING, who, f"approved by {who}"))
        steps.append(Transition("Activated", Phase.ACTIVE, OPERATOR,
                                f"granted {spec.role} {_where(spec)} to {requester} "
                                f"until {_iso(until)}"))
        return Plan(transitions=tuple(steps), binding="present", eligibility=verdict.eligibility,
                    activated_at=now, expires_at=until, message=f"active until {_iso(until)}")
    ignored = "".join(f"; ignored {who}: {why}" for who, why in result.ignored.items())
    return Plan(transitions=tuple(steps), eligibility=verdict.eligibility,
                message=f"waiting for {result.missing}{ignored}")


def _final(action: str, phase: Phase, actor: str, message: str, warning: bool = False) -> Plan:
    return Plan(transitions=(Transition(action, phase, actor, message, warning),), message=message)


def _where(spec: AccessRequestSpec) -> str:
    return f"in namespace {spec.namespace}" if spec.namespace else "cluster-wide"


def _iso(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


_CONDITIONS: dict[Phase, tuple[tuple[str, str], tuple[str, str]]] = {
    # phase: ((Approved status, reason), (Granted status, reason))
    Phase.PENDING: (("False", "AwaitingApproval"), ("False", "NotApproved")),
    Phase.ACTIVE: (("True", "Approved"), ("True", "Activated")),
    Phase.EXPIRED: (("True", "Approved"), ("False", "Expired")),
    Phase.REVOKED: (("True", "Approved"), ("False", "Revoked")),
    Phase.DENIED: (("False", "Denied"), ("False", "Denied")),
    Phase.WITHDRAWN: (("False", "Withdrawn"), ("False", "Withdrawn")),
    Phase.TIMED_OUT: (("False", "TimedOut"), ("False", "TimedOut")),
    Phase.REJECTED: (("False", "Rejected"), ("False", "Rejected")),
}


def conditions(
    phase: Phase, message: str, previous: list[Condition], generation: int,
    now: datetime.datetime,
) -> list[Condition]:
    """Approved and Granted conditions for a phase; lastTransitionTime moves only on change."""
    old = {c.type: c for c in previous}
    result = []
    for kind, (status, reason) in zip(("Approved", "Granted"), _CONDITIONS[phase], strict=True):
        before = old.get(kind)
        moved = before is None or before.status != status
        result.append(Condition(
            type=kind, status=status, reason=reason, message=message,  # type: ignore[arg-type]
            last_transition_time=now if moved or before is None else before.last_transition_time,
            observed_generation=generation,
        ))
    return result
