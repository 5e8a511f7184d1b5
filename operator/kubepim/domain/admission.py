"""Admission decisions: what a user may create or add, judged from the API server's userInfo.

Pure: each function returns None to allow, or the message the user sees. The webhook handlers
gather the inputs (eligibilities, namespace labels, SubjectAccessReviews) and call these.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kubepim.api.common import RoleRef
from kubepim.api.eligibility import Approvers, RoleEligibilitySpec
from kubepim.api.request import AccessRequestSpec, AccessRequestStatus, Phase

from .quorum import Case, is_approver, person
from .review import Accepted, RoleKey, review, summary

MAX_NAME = 245
"""Longest AccessRequest name: ``kubepim-<name>`` must fit a binding name (253) unshortened,
so no two requests, and no request and a hashed name, can map to one binding."""


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
    privileged: Mapping[RoleKey, str] | None = None,
) -> str | None:
    """Refuse a request no eligibility covers, saying what the requester may ask for."""
    verdict = review(spec, eligibilities, namespace_labels, requested_at=now,
                     privileged=privileged)
    if isinstance(verdict, Accepted):
        return None
    if spec.requester is None:
        return verdict.message
    return f"{verdict.message}. {summary(spec.requester, eligibilities)}"


def _approvers(policy: Approvers) -> str:
    users = ", ".join(policy.users) or "none"
    groups = ", ".join(sorted({*policy.groups, *filter(None, [policy.required_from_group])}))
    return f"users [{users}] and members of groups [{groups or 'none'}]"


def _same_person(user: User, spec: AccessRequestSpec, case: Case) -> str | None:
    requester = spec.requester
    if requester is None:
        return None
    if user.username == requester.username:
        return f"{user.username} cannot decide on their own request"
    if person(user.username, case) == person(requester.username, case):
        return (f"{user.username} cannot decide on the request of {requester.username}: "
                f"usernames are compared case-insensitively (KUBEPIM_IDENTITY_CASE={case}), "
                "so these are one person")
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
    case: Case = "insensitive",
) -> str | None:
    """Judge the caller's new approval or action entry (admission policies allow no other).

    ``namespace_labels`` matter only before the operator has recorded the governing eligibility.
    Whether the requester could act as the approver is asked of the API server afterwards
    (:func:`acting_as`).
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
        same = _same_person(user, spec, case)
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


def privileged(kind: str, name: str, rules: list[dict[str, Any]],
               namespace: str | None = None) -> str | None:
    """Why a role is on the deny-list (cluster-admin, escalate/bind/impersonate or '*'), or None.

    ``namespace``: where a Role lives (named in the message, as Roles of one name differ).
    """
    where = f" in namespace {namespace}" if kind == "Role" and namespace else ""
    if kind == "ClusterRole" and name == "cluster-admin":
        return f"{kind}/{name} is cluster-admin"
    for rule in rules:
        verbs = set(rule.get("verbs") or [])
        risky = sorted(verbs & DENY_LISTED_VERBS)
        if risky:
            return f"{kind}/{name} grants the verb(s) {', '.join(risky)}{where}"
        if "*" in (rule.get("resources") or []):
            return f"{kind}/{name} grants every resource ('*'){where}"
    return None


@dataclass(frozen=True)
class BindCheck:
    """A place where an eligibility's author must hold ``bind`` on ``role`` themselves.

    ``namespace`` None: cluster-wide (a ClusterRoleBinding, or every namespace a
    namespaceSelector can ever match, including ones created later).
    """

    role: RoleRef
    namespace: str | None
    where: str


def bind_checks(spec: RoleEligibilitySpec) -> list[BindCheck]:
    """Every (role, place) an eligibility can reach: its author must be able to bind each.

    An eligibility grants no more than its author could.
    """
    checks = []
    for role in spec.roles:
        checks += [BindCheck(role, namespace, f"in namespace {namespace}")
                   for namespace in spec.namespaces]
        if spec.namespace_selector is not None:
            checks.append(BindCheck(role, None, "in the namespaces a namespaceSelector can "
                                    "match: that needs the right to bind it cluster-wide"))
        if spec.cluster_wide and role.kind == "ClusterRole":
            checks.append(BindCheck(role, None, "cluster-wide"))
    return checks


def check_metadata(name: str, metadata: Mapping[str, Any], size: int, max_bytes: int
                   ) -> str | None:
    """Refuse what a requester may not put on an AccessRequest's metadata, or a huge object.

    Finalizers and ownerReferences would let the garbage collector or a stuck deletion decide
    when a request and its record disappear; the name must give an unshortened binding name.
    """
    if metadata.get("finalizers") or metadata.get("ownerReferences"):
        return ("metadata.finalizers and metadata.ownerReferences of an AccessRequest must be "
                "empty: the operator alone decides when a request and its record go")
    if len(name) > MAX_NAME:
        return (f"the name of an AccessRequest may be at most {MAX_NAME} characters "
                f"(kubepim-<name> names its binding); this one has {len(name)}")
    if size > max_bytes:
        return (f"this AccessRequest is {size} bytes; an AccessRequest may be at most "
                f"{max_bytes} bytes (KUBEPIM_MAX_REQUEST_BYTES): drop large annotations")
    return None


def check_limits(requester: str, open_requests: Sequence[str],
                 unreviewed_break_glass: Sequence[str], break_glass: bool, max_open: int,
                 max_break_glass: int) -> str | None:
    """Refuse a new request past the requester's limits (the names exclude the new request)."""
    if len(open_requests) >= max_open:
        return (f"{requester} has {len(open_requests)} open requests (Pending or Active); at "
                f"most {max_open} are allowed (KUBEPIM_MAX_OPEN_REQUESTS): withdraw or end one "
                "first")
    if break_glass and len(unreviewed_break_glass) >= max_break_glass:
        plural = "is" if max_break_glass == 1 else "are"
        names = ", ".join(unreviewed_break_glass[:5])
        return (f"{requester} has {len(unreviewed_break_glass)} break-glass grant(s) not yet "
                f"reviewed; at most {max_break_glass} {plural} allowed "
                f"(KUBEPIM_MAX_UNREVIEWED_BREAK_GLASS): an approver must acknowledge {names} "
                "first")
    return None


@dataclass(frozen=True)
class ActingAs:
    """A right that would let the requester act as an approver.

    Asked as a SubjectAccessReview of the requester: ``(verb, group, resource, name,
    namespace)``; ``says`` is how a refusal puts it.
    """

    verb: str
    group: str
    resource: str
    name: str
    namespace: str | None
    says: str


_WORKLOADS = (("apps", "deployments"), ("apps", "replicasets"), ("apps", "statefulsets"),
              ("apps", "daemonsets"), ("batch", "jobs"), ("batch", "cronjobs"),
              ("", "replicationcontrollers"))


def acting_as(approver: str) -> list[ActingAs]:
    """The rights by which someone could authenticate as ``approver`` without being them.

    Best effort, within Kubernetes RBAC: impersonating the user, or approving a certificate
    signing request (a client certificate in any name). For a ServiceAccount also: impersonating
    it, minting its token, creating or reading a token Secret, and running code as it in its
    namespace (a pod or any workload controller that makes pods, exec or attach into its pods,
    ephemeral containers).
    """
    checks = [
        ActingAs("impersonate", "", "users", approver, None, f"impersonate users {approver}"),
        ActingAs("update", "certificates.k8s.io", "certificatesigningrequests/approval", "",
                 None, "approve certificatesigningrequests (a client certificate in any name)"),
    ]
    parts = approver.split(":")
    if len(parts) == 4 and parts[:2] == ["system", "serviceaccount"]:
        namespace, name = parts[2], parts[3]
        where = f"in namespace {namespace}"
        checks += [
            ActingAs("impersonate", "", "serviceaccounts", name, namespace,
                     f"impersonate serviceaccounts {name} {where}"),
            ActingAs("create", "", "serviceaccounts/token", name, namespace,
                     f"create serviceaccounts/token for {name} {where}"),
            ActingAs("create", "", "secrets", "", namespace,
                     f"create secrets (a token Secret for {name}) {where}"),
            ActingAs("get", "", "secrets", "", namespace,
                     f"get secrets (a token Secret of {name}) {where}"),
            ActingAs("create", "", "pods", "", namespace,
                     f"create pods (running as {name}) {where}"),
            ActingAs("create", "", "pods/exec", "", namespace,
                     f"create pods/exec (into a pod running as {name}) {where}"),
            ActingAs("create", "", "pods/attach", "", namespace,
                     f"create pods/attach (to a pod running as {name}) {where}"),
            ActingAs("update", "", "pods/ephemeralcontainers", "", namespace,
                     f"update pods/ephemeralcontainers (in a pod running as {name}) {where}"),
        ]
        checks += [ActingAs("create", group, resource, "", namespace,
                            f"create {resource} (whose pods run as {name}) {where}")
                   for group, resource in _WORKLOADS]
    return checks


def acting_as_refusal(requester: str, approver: str, how: str) -> str:
    """The message refusing an approval by an identity the requester can act as."""
    return (f"{approver}'s decision cannot count: the requester {requester} can act as "
            f"{approver} ({requester} may {how}); separation of duties needs an approver "
            "the requester cannot become")
