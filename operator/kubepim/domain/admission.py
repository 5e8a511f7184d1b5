"""Admission decisions: what a user may create or add, judged from the API server's userInfo.

Pure: each function returns None to allow, or the message the user sees. The webhook handlers
gather the inputs (eligibilities, namespace labels, SubjectAccessReviews) and call these.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass, field

from kubepim.api.eligibility import Approvers, RoleEligibilitySpec
from kubepim.api.request import AccessRequestSpec, AccessRequestStatus, Phase

from .quorum import is_approver
from .review import Accepted, review, summary


@dataclass(frozen=True)
class User:
    """The authenticated caller of an admission request."""

    username: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: dict[str, list[str]] = field(default_factory=dict)


def check_new_request(
    spec: AccessRequestSpec,
    eligibilities: Mapping[str, RoleEligibilitySpec],
    namespace_labels: Mapping[str, str] | None,
    now: datetime.datetime,
) -> str | None:
    """Refuse a request no eligibility covers, saying what the requester may ask for."""
    verdict = review(spec, eligibilities, namespace_labels, requested_at=now)
    if isinstance(verdict, Accepted):
        return None
    if spec.requester is None:
        return verdict.message
    return f"{verdict.message}. {summary(spec.requester, eligibilities)}"


def _approvers(policy: Approvers) -> str:
    users = ", ".join(policy.users) or "none"
    groups = ", ".join(sorted({*policy.groups, *filter(None, [policy.required_from_group])}))
    return f"users [{users}] and members of groups [{groups or 'none'}]"


def _same_person(user: User, spec: AccessRequestSpec) -> str | None:
    requester = spec.requester
    if requester is None:
        return None
    if user.username == requester.username:
        return f"{user.username} cannot decide on their own request"
    if user.uid and user.uid == requester.uid:
        return (f"{user.username} has the same uid as the requester {requester.username}: "
                "one person cannot decide on their own request under another name")
    return None


def governing(
    spec: AccessRequestSpec,
    status: AccessRequestStatus,
    eligibilities: Mapping[str, RoleEligibilitySpec],
    namespace_labels: Mapping[str, str] | None = None,
) -> tuple[str, RoleEligibilitySpec] | None:
    """The eligibility a request is decided under: the one recorded, else the one covering it."""
    name = status.eligibility
    if name is None:
        verdict = review(spec, eligibilities, namespace_labels)
        if not isinstance(verdict, Accepted):
            return None
        name = verdict.eligibility
    policy = eligibilities.get(name)
    return (name, policy) if policy is not None else None


def check_status_change(
    user: User,
    spec: AccessRequestSpec,
    old: AccessRequestStatus,
    new: AccessRequestStatus,
    eligibilities: Mapping[str, RoleEligibilitySpec],
    may_revoke_by_rbac: bool = False,
    namespace_labels: Mapping[str, str] | None = None,
) -> str | None:
    """Judge the caller's new approval or action entry (admission policies allow no other).

    ``namespace_labels`` matter only before the operator has recorded the governing eligibility.
    """
    phase = old.phase or Phase.PENDING
    rule = governing(spec, old, eligibilities, namespace_labels)
    decision = new.approvals.get(user.username) if user.username not in old.approvals else None
    action = new.actions.get(user.username) if user.username not in old.actions else None

    if decision is not None:
        if rule is None:
            return "no RoleEligibility governs this request any more; nobody can decide on it"
        name, policy = rule
        if decision.decision == "Acknowledge":
            if not old.review_required:
                return "there is no break-glass use to review on this request"
        elif phase != Phase.PENDING:
            return f"the request is {phase.value}: approvals are closed"
        same = _same_person(user, spec)
        if same:
            return same
        if not is_approver(policy.approval, user.username, list(user.groups)):
            return (f"{user.username} is not an approver under RoleEligibility {name}: "
                    f"approvers are {_approvers(policy.approval)}")

    if action is not None:
        requester = spec.requester.username if spec.requester else None
        if action.action in ("Withdraw", "End") and user.username != requester:
            return f"only the requester ({requester}) can {action.action.lower()} this request"
        if action.action == "Withdraw" and phase != Phase.PENDING:
            return f"the request is {phase.value}: only a pending request can be withdrawn"
        if action.action == "End" and phase != Phase.ACTIVE:
            return f"the request is {phase.value}: only an active grant can be ended"
        if action.action == "Revoke":
            if phase not in (Phase.PENDING, Phase.ACTIVE):
                return f"the request is {phase.value}: there is nothing to revoke"
            if not action.reason.strip():
                return "a revocation needs a reason: set status.actions[you].reason"
            allowed = may_revoke_by_rbac or (
                rule is not None and user.username != requester
                and is_approver(rule[1].approval, user.username, list(user.groups)))
            if not allowed:
                return (f"{user.username} may not revoke this request: approvers of its "
                        "RoleEligibility, or users allowed the verb revoke on accessrequests "
                        "in pim.kubepim.dev, may")
    return None


DENY_LISTED_VERBS = {"escalate", "bind", "impersonate", "*"}


def privileged(kind: str, name: str, rules: list[dict[str, list[str]]]) -> str | None:
    """Why a role is on the deny-list (cluster-admin, escalate/bind/impersonate or '*'), or None."""
    if kind == "ClusterRole" and name == "cluster-admin":
        return f"{kind}/{name} is cluster-admin"
    for rule in rules:
        verbs = set(rule.get("verbs") or [])
        risky = sorted(verbs & DENY_LISTED_VERBS)
        if risky:
            return f"{kind}/{name} grants the verb(s) {', '.join(risky)}"
        if "*" in (rule.get("resources") or []):
            return f"{kind}/{name} grants every resource ('*')"
    return None
