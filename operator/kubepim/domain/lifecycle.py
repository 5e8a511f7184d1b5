"""The AccessRequest lifecycle as a pure function: given what is, what should happen next.

    (new) ── covered ──▶ Pending ── quorum ──▶ Active ── expiresAt ──▶ Expired
      │                   │  │                   ├── unused for idleTimeout ──▶ Expired (Idle)
      │                   │  │                   └── eligibility gone ──▶ Revoked
      └─ not covered ─▶ Rejected  └─ denial / eligibility gone ──▶ Denied
                          └─ pendingTimeout ──▶ TimedOut

:func:`decide` returns the transitions to record (each becomes one history entry and one Event)
and whether the binding must exist. Time is an argument; nothing here reads a clock.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from kubepim.api import duration
from kubepim.api.common import Condition
from kubepim.api.eligibility import RoleEligibilitySpec
from kubepim.api.request import AccessRequestSpec, AccessRequestStatus, Action, Phase

from . import activity
from .quorum import Case, is_approver, person, tally
from .review import Accepted, Review, RoleKey, review

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
    review_required: bool | None = None
    reviewed_by: str | None = None
    namespace_uid: str | None = None

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


def idle_at(status: AccessRequestStatus, eligibilities: Mapping[str, RoleEligibilitySpec],
            last_used: datetime.datetime | None = None) -> datetime.datetime | None:
    """When an Active grant becomes idle under its eligibility's idleTimeout (None: never)."""
    policy = eligibilities.get(status.eligibility or "")
    if status.phase != Phase.ACTIVE or status.activated_at is None or policy is None \
            or policy.idle_timeout is None:
        return None
    uses = [t for t in (last_used, status.activity.last_use if status.activity else None)
            if t is not None]
    return activity.idle_deadline(status.activated_at, max(uses) if uses else None,
                                  duration.parse(policy.idle_timeout))


def settled(status: AccessRequestStatus) -> bool:
    """Whether nothing is left to decide on a request: final, and no break-glass review awaited.

    (The operator records it in ``status.settled`` only after the final transition's audit lines
    are out: until then the request stays in its watch, so a new leader finds and replays them.)
    """
    return status.phase is not None and status.phase.final and not (
        status.review_required and status.reviewed_by is None)


def retention_over(
    status: AccessRequestStatus, retention: datetime.timedelta, now: datetime.datetime
) -> bool:
    """Whether a finished request has been kept for ``retention`` since its last transition."""
    if status.phase is None or not status.phase.final or not status.history:
        return False
    return status.history[-1].time + retention <= now


def decide(
    spec: AccessRequestSpec,
    status: AccessRequestStatus,
    created_at: datetime.datetime,
    eligibilities: Mapping[str, RoleEligibilitySpec],
    namespace_labels: Mapping[str, str] | None,
    now: datetime.datetime,
    uid: str = "",
    privileged: Mapping[RoleKey, str] | None = None,
    case: Case = "insensitive",
    namespace_uid: str | None = None,
    access_ended_at: datetime.datetime | None = None,
    last_used: datetime.datetime | None = None,
) -> Plan:
    """Next step of one request. Final phases only keep the binding absent.

    ``last_used``: the latest use of an Active grant counted from the audit stream, written to
    status.activity or not yet (the eligibility's idleTimeout counts from it, or from the
    activation if it was never used).

    ``access_ended_at``: when the operator removed an expired grant's binding ahead of this
    decision (the Expired entry says how late access ended, not how late it was recorded).

    ``uid`` is the request's metadata.uid: approvals stamped for another request are ignored.
    ``privileged``: deny-listed roles as their rules are now (see :func:`review.review`);
    ``case``: how usernames are compared for separation of duties; ``namespace_uid``: the uid of
    the target namespace now (None: gone), recorded at activation so a namespace deleted and made
    again under the same name does not bring a grant back.
    """
    phase = status.phase
    inputs = _Inputs(eligibilities, namespace_labels, privileged or {}, case, namespace_uid,
                     access_ended_at, last_used)
    if phase is not None and phase.final:
        plan = Plan(message=status.message)
    elif phase == Phase.ACTIVE:
        plan = _decide_active(spec, status, inputs, now)
    else:
        plan = _decide_pending(spec, status, created_at, inputs, now, uid)
    return _with_review(plan, spec, status, eligibilities, uid, case)


@dataclass(frozen=True)
class _Inputs:
    """What a decision reads besides the request: the policies and the cluster's state."""

    eligibilities: Mapping[str, RoleEligibilitySpec]
    namespace_labels: Mapping[str, str] | None
    privileged: Mapping[RoleKey, str]
    case: Case
    namespace_uid: str | None
    access_ended_at: datetime.datetime | None = None
    last_used: datetime.datetime | None = None

    def review(self, spec: AccessRequestSpec, status: AccessRequestStatus,
               requested_at: datetime.datetime | None = None) -> Review:
        return review(spec, self.eligibilities, self.namespace_labels, requested_at,
                      self.privileged, prefer=status.eligibility)


def _requester(spec: AccessRequestSpec) -> str:
    return spec.requester.username if spec.requester else "unknown"


def _action(status: AccessRequestStatus, spec: AccessRequestSpec,
            kinds: tuple[str, ...]) -> tuple[str, Action] | None:
    """The first action of one of ``kinds``: End/Withdraw count only from the requester."""
    requester = _requester(spec)
    for who in sorted(status.actions):
        entry = status.actions[who]
        if entry.action not in kinds:
            continue
        if entry.action in ("End", "Withdraw") and who != requester:
            continue
        return who, entry
    return None


def _decide_active(
    spec: AccessRequestSpec, status: AccessRequestStatus, inputs: _Inputs,
    now: datetime.datetime,
) -> Plan:
    assert status.expires_at is not None  # set together with the phase
    if status.expires_at <= now:
        late = ((inputs.access_ended_at or now) - status.expires_at).total_seconds()
        note = f"; revoked {late:.0f}s late" if late >= 1 else ""
        return _final("Expired", Phase.EXPIRED, OPERATOR,
                      f"access ended at its expiry {_iso(status.expires_at)}{note}")
    idle = idle_at(status, inputs.eligibilities, inputs.last_used)
    if idle is not None and idle <= now:
        policy = inputs.eligibilities[status.eligibility or ""]
        last = inputs.last_used or (status.activity.last_use if status.activity else None)
        since = f"last used {_iso(last)}" if last is not None and status.activated_at \
            and last >= status.activated_at else "never used since its activation"
        return _final("Idle", Phase.EXPIRED, OPERATOR,
                      f"access ended: unused for its eligibility's idleTimeout "
                      f"{policy.idle_timeout} ({since})")
    taken = _action(status, spec, ("End", "Revoke"))
    if taken is not None:
        who, entry = taken
        because = f": {entry.reason}" if entry.reason else ""
        if entry.action == "End" or who == _requester(spec):
            return _final("Revoked", Phase.REVOKED, who, f"ended early by {who}{because}")
        return _final("Revoked", Phase.REVOKED, who, f"revoked by {who}{because}", warning=True)
    if spec.namespace is not None and (
            inputs.namespace_labels is None
            or (status.namespace_uid and inputs.namespace_uid is not None
                and inputs.namespace_uid != status.namespace_uid)):
        return _final("Revoked", Phase.REVOKED, OPERATOR,
                      f"namespace {spec.namespace} was deleted (or is being deleted): the grant "
                      "ends and does not carry over to a namespace made again under that name",
                      warning=True)
    verdict = inputs.review(spec, status)
    if not isinstance(verdict, Accepted):
        return _final("Revoked", Phase.REVOKED, OPERATOR,
                      f"eligibility no longer covers this grant: {verdict.message}",
                      warning=True)
    return Plan(binding="present", eligibility=status.eligibility,
                message=f"active until {_iso(status.expires_at)}")


def _decide_pending(
    spec: AccessRequestSpec,
    status: AccessRequestStatus,
    created_at: datetime.datetime,
    inputs: _Inputs,
    now: datetime.datetime,
    uid: str,
) -> Plan:
    requester = _requester(spec)
    verdict = inputs.review(spec, status, requested_at=created_at)
    steps: list[Transition] = []
    if status.phase is None:
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
    policy = inputs.eligibilities[verdict.eligibility]

    taken = _action(status, spec, ("Withdraw", "Revoke"))
    if taken is not None:
        who, entry = taken
        because = f": {entry.reason}" if entry.reason else ""
        if entry.action == "Withdraw" or who == requester:
            steps.append(Transition("Withdrawn", Phase.WITHDRAWN, who,
                                    f"withdrawn by {who}{because}"))
        else:
            steps.append(Transition("Revoked", Phase.REVOKED, who, f"revoked by {who}{because}",
                                    warning=True))
        return Plan(transitions=tuple(steps), message=steps[-1].message)

    if verdict.break_glass:
        steps.append(Transition("BreakGlass", Phase.PENDING, requester,
                                f"break-glass activation by {requester} without approval: "
                                f"{spec.justification}", warning=True))
        return _activate(steps, spec, verdict, now, inputs, review_required=True)
    if verdict.auto_approved:
        steps.append(Transition("Approved", Phase.PENDING, OPERATOR,
                                f"auto-approved under RoleEligibility {verdict.eligibility}"))
        return _activate(steps, spec, verdict, now, inputs)

    if now >= created_at + duration.parse(policy.pending_timeout):
        steps.append(Transition("TimedOut", Phase.TIMED_OUT, OPERATOR,
                                "no decision within the approval window of "
                                f"{policy.pending_timeout}"))
        return Plan(transitions=tuple(steps), message=steps[-1].message)

    assert spec.requester is not None  # review refuses requests without one
    result = tally(policy.approval, status.approvals, spec.requester, uid, inputs.case)
    if result.denied_by:
        comment = status.approvals[result.denied_by].comment
        because = f": {comment}" if comment else ""
        steps.append(Transition("Denied", Phase.DENIED, result.denied_by,
                                f"denied by {result.denied_by}{because}"))
        return Plan(transitions=tuple(steps), message=steps[-1].message)
    if result.approved:
        who = ", ".join(result.counted)
        steps.append(Transition("Approved", Phase.PENDING, who, f"approved by {who}"))
        return _activate(steps, spec, verdict, now, inputs)
    ignored = "".join(f"; ignored {who}: {why}" for who, why in result.ignored.items())
    return Plan(transitions=tuple(steps), eligibility=verdict.eligibility,
                message=f"waiting for {result.missing}{ignored}")


def _activate(
    steps: list[Transition], spec: AccessRequestSpec, verdict: Accepted,
    now: datetime.datetime, inputs: _Inputs, review_required: bool = False,
) -> Plan:
    until = expiry(now, verdict.duration)
    steps.append(Transition("Activated", Phase.ACTIVE, OPERATOR,
                            f"granted {spec.role} {_where(spec)} to {_requester(spec)} "
                            f"until {_iso(until)}"))
    return Plan(transitions=tuple(steps), binding="present", eligibility=verdict.eligibility,
                activated_at=now, expires_at=until, message=f"active until {_iso(until)}",
                review_required=review_required or None,
                namespace_uid=inputs.namespace_uid if spec.namespace else None)


def _with_review(
    plan: Plan, spec: AccessRequestSpec, status: AccessRequestStatus,
    eligibilities: Mapping[str, RoleEligibilitySpec], uid: str, case: Case,
) -> Plan:
    """Add a Reviewed step when an approver acknowledged a break-glass grant."""
    policy = eligibilities.get(status.eligibility or "")
    if not status.review_required or policy is None or spec.requester is None:
        return plan
    for who in sorted(status.approvals):
        entry = status.approvals[who]
        if entry.decision != "Acknowledge" or \
                person(who, case) == person(spec.requester.username, case):
            continue
        if uid and entry.request_uid != uid:
            continue
        if not is_approver(policy.approval, who, entry.groups):
            continue
        phase = status.phase or Phase.ACTIVE
        reviewed = Transition("Reviewed", phase, who,
                              f"break-glass use reviewed by {who}"
                              + (f": {entry.comment}" if entry.comment else ""))
        return dataclasses.replace(plan, transitions=(reviewed, *plan.transitions),
                                   review_required=False, reviewed_by=who)
    return plan


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
