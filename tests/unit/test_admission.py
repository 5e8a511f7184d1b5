"""Admission decisions: which requests may be created, and who may add which approval or action."""

from __future__ import annotations

from typing import Any

import pytest

from kubepim.api.eligibility import RoleEligibilitySpec
from kubepim.api.request import AccessRequestSpec, AccessRequestStatus, Action, Approval, Phase
from kubepim.domain.admission import User, check_new_request, check_status_change, privileged

from .builders import (
    NOW,
    PAYMENTS_LABELS,
    acknowledge,
    act,
    approve,
    deny,
    eligibility,
    request,
)

TEAM = {"team": eligibility(approval={"users": ["bob"], "groups": ["sre"],
                                      "requiredFromGroup": "security"})}
SPEC = request(requester={"username": "alice", "uid": "u-alice", "groups": ["dev"]})
SPEC_WITHOUT_UID = request(requester={"username": "alice", "groups": ["dev"]})

ALICE = User("alice", uid="u-alice", groups=("dev",))
BOB = User("bob", uid="u-bob", groups=("dev",))
DAVE = User("dave", uid="u-dave", groups=("sre",))
MALLORY = User("mallory", uid="u-mallory", groups=("dev",))
ALICE_ALIAS = User("alice-admin", uid="u-alice", groups=("sre",))

NOT_AN_APPROVER = ("mallory is not an approver under RoleEligibility team: approvers are "
                   "users [bob] and members of groups [security, sre]")
MAY_NOT_REVOKE = ("mallory may not revoke this request: approvers of its RoleEligibility, or "
                  "users allowed the verb revoke on accessrequests in pim.kubepim.dev, may")


# --- creating a request ----------------------------------------------------------------------

def test_a_covered_request_may_be_created() -> None:
    assert check_new_request(request(), {"team": eligibility()}, PAYMENTS_LABELS, NOW) is None


@pytest.mark.parametrize(("spec", "eligibilities", "message"), [
    pytest.param(request(role={"kind": "Role", "name": "db-admin"}), {"team": eligibility()},
                 "alice is not eligible for Role/db-admin in namespace payments: eligible roles "
                 "there are [Role/db-reader]. alice may request: [Role/db-reader] in namespaces "
                 "[payments] for up to 8h (team)",
                 id="an uncovered request is refused with the review's reason and what alice "
                    "may request"),
    pytest.param(request(role={"kind": "Role", "name": "db-admin"}),
                 {"team": eligibility(),
                  "ops": eligibility(roles=[{"kind": "ClusterRole", "name": "view"}],
                                     namespaces=["orders"], clusterWide=True, maxDuration="2h",
                                     namespaceSelector={"matchLabels": {"tier": "prod"}})},
                 "alice is not eligible for Role/db-admin in namespace payments: eligible roles "
                 "there are [ClusterRole/view, Role/db-reader]. alice may request: "
                 "[ClusterRole/view] in namespaces [orders] or in namespaces matching the "
                 "selector of ops or cluster-wide for up to 2h (ops); "
                 "[Role/db-reader] in namespaces [payments] for up to 8h (team)",
                 id="the summary lists every eligibility naming alice by name with every place"),
    pytest.param(request(), {},
                 "alice is not a subject of any RoleEligibility. "
                 "alice may request nothing: no RoleEligibility names them",
                 id="with no eligibility at all the refusal says alice may request nothing"),
    pytest.param(request(), {"ops": eligibility(subjects=[{"kind": "User", "name": "bob"}])},
                 "alice is not a subject of any RoleEligibility. "
                 "alice may request nothing: no RoleEligibility names them",
                 id="eligibilities naming only others leave alice nothing to request"),
    pytest.param(request(requester=None), {"team": eligibility()},
                 "the request has no requester: the kubepim admission policy is not installed "
                 "(charts/kubepim/files/admission)",
                 id="a request without a requester is refused without a summary"),
])
def test_an_uncovered_request_is_refused_with_what_the_requester_may_ask_for(
    spec: AccessRequestSpec, eligibilities: dict[str, RoleEligibilitySpec], message: str,
) -> None:
    assert check_new_request(spec, eligibilities, PAYMENTS_LABELS, NOW) == message


def test_a_requester_lacking_conditions_is_not_told_that_no_eligibility_names_her() -> None:
    policy = eligibility(requesterConditions={"groups": ["mfa"]})
    message = check_new_request(request(), {"team": policy}, PAYMENTS_LABELS, NOW)
    assert message is not None
    assert message.startswith(
        "RoleEligibility team requires the requester's identity to carry group mfa. ")
    assert "no RoleEligibility names them" not in message


# --- adding an approval ----------------------------------------------------------------------

def _status(phase: Phase | None, review_required: bool = False,
            **entries: Approval | Action) -> AccessRequestStatus:
    return AccessRequestStatus(
        phase=phase, eligibility="team", review_required=review_required,
        approvals={who: e for who, e in entries.items() if isinstance(e, Approval)},
        actions={who: e for who, e in entries.items() if isinstance(e, Action)})


def _judge(user: User, old: AccessRequestStatus, entry: Approval | Action,
           spec: AccessRequestSpec = SPEC,
           eligibilities: dict[str, RoleEligibilitySpec] | None = None,
           may_revoke_by_rbac: bool = False,
           labels: dict[str, str] | None = PAYMENTS_LABELS) -> str | None:
    """Judge ``user`` adding ``entry`` under their own name to the ``old`` status."""
    if isinstance(entry, Approval):
        new = old.model_copy(update={"approvals": {**old.approvals, user.username: entry}})
    else:
        new = old.model_copy(update={"actions": {**old.actions, user.username: entry}})
    return check_status_change(user, spec, old, new, TEAM if eligibilities is None else
                               eligibilities, may_revoke_by_rbac=may_revoke_by_rbac,
                               namespace_labels=labels)


APPROVALS = [
    pytest.param(BOB, _status(Phase.PENDING), approve("dev"), SPEC, None,
                 id="a listed approver may approve a pending request"),
    pytest.param(BOB, _status(Phase.PENDING), deny("dev"), SPEC, None,
                 id="a listed approver may deny a pending request"),
    pytest.param(DAVE, _status(Phase.PENDING), approve("sre"), SPEC, None,
                 id="a member of an approver group may approve a pending request"),
    pytest.param(BOB, _status(None), approve("dev"), SPEC, None,
                 id="a request the operator has not seen yet counts as pending"),
    pytest.param(ALICE, _status(Phase.PENDING), approve("dev"), SPEC,
                 "alice cannot decide on their own request",
                 id="the requester may not approve her own request"),
    pytest.param(ALICE, _status(Phase.PENDING), deny("dev"), SPEC,
                 "alice cannot decide on their own request",
                 id="the requester may not deny her own request"),
    pytest.param(ALICE_ALIAS, _status(Phase.PENDING), approve("sre"), SPEC,
                 "alice-admin has the same uid as the requester alice: one person cannot "
                 "decide on their own request under another name",
                 id="an approver with the requester's uid under another name is refused"),
    pytest.param(User("dave", groups=("sre",)), _status(Phase.PENDING), approve("sre"),
                 SPEC_WITHOUT_UID, None,
                 id="an empty uid on both sides never makes two users the same person"),
    pytest.param(MALLORY, _status(Phase.PENDING), approve("dev"), SPEC, NOT_AN_APPROVER,
                 id="a non-approver is refused and told who the approvers are"),
    pytest.param(BOB, _status(Phase.ACTIVE), approve("dev"), SPEC,
                 "the request is Active: approvals are closed",
                 id="approving an active request is refused as approvals are closed"),
    pytest.param(BOB, _status(Phase.EXPIRED), approve("dev"), SPEC,
                 "the request is Expired: approvals are closed",
                 id="approving an expired request is refused as approvals are closed"),
    pytest.param(BOB, _status(Phase.TIMED_OUT), deny("dev"), SPEC,
                 "the request is TimedOut: approvals are closed",
                 id="denying a timed-out request is refused as approvals are closed"),
    pytest.param(BOB, _status(Phase.ACTIVE), acknowledge("dev"), SPEC,
                 "there is no break-glass use to review on this request",
                 id="acknowledging a request that needs no review is refused"),
    pytest.param(BOB, _status(Phase.ACTIVE, review_required=True), acknowledge("dev"), SPEC,
                 None, id="an approver may acknowledge an active break-glass grant"),
    pytest.param(BOB, _status(Phase.EXPIRED, review_required=True), acknowledge("dev"), SPEC,
                 None, id="an approver may acknowledge a break-glass grant after it expired"),
    pytest.param(ALICE, _status(Phase.ACTIVE, review_required=True), acknowledge("dev"), SPEC,
                 "alice cannot decide on their own request",
                 id="the requester may not acknowledge her own break-glass grant"),
    pytest.param(MALLORY, _status(Phase.ACTIVE, review_required=True), acknowledge("dev"),
                 SPEC, NOT_AN_APPROVER,
                 id="a non-approver may not acknowledge a break-glass grant"),
]


@pytest.mark.parametrize(("user", "old", "entry", "spec", "message"), APPROVALS)
def test_only_an_approver_other_than_the_requester_may_decide_while_decisions_are_open(
    user: User, old: AccessRequestStatus, entry: Approval, spec: AccessRequestSpec,
    message: str | None,
) -> None:
    assert _judge(user, old, entry, spec=spec) == message


def test_nobody_may_decide_once_no_eligibility_governs_the_request() -> None:
    assert _judge(BOB, _status(Phase.PENDING), approve("dev"), eligibilities={}) == (
        "no RoleEligibility governs this request any more; nobody can decide on it")


UNRECORDED = AccessRequestStatus(phase=Phase.PENDING)
SELECTED = {"team": eligibility(namespaces=[], approval={"users": ["bob"]},
                                namespaceSelector={"matchLabels": {"team": "payments"}})}


@pytest.mark.parametrize(("user", "eligibilities", "labels", "message"), [
    pytest.param(BOB, TEAM, PAYMENTS_LABELS, None,
                 id="before the operator records the eligibility an approver of the covering "
                    "one may approve"),
    pytest.param(MALLORY, TEAM, PAYMENTS_LABELS, NOT_AN_APPROVER,
                 id="before the operator records the eligibility a non-approver is refused"),
    pytest.param(BOB, SELECTED, PAYMENTS_LABELS, None,
                 id="an eligibility that selects the namespace by its labels is found"),
    pytest.param(BOB, SELECTED, {"kubernetes.io/metadata.name": "payments"},
                 "no RoleEligibility governs this request any more; nobody can decide on it",
                 id="an eligibility whose selector no longer matches the labels is not found"),
    pytest.param(BOB, TEAM, None,
                 "no RoleEligibility governs this request any more; nobody can decide on it",
                 id="without the namespace's labels no eligibility is found"),
])
def test_the_governing_eligibility_is_found_by_review_until_the_operator_records_it(
    user: User, eligibilities: dict[str, RoleEligibilitySpec], labels: dict[str, str] | None,
    message: str | None,
) -> None:
    assert _judge(user, UNRECORDED, approve("dev"), eligibilities=eligibilities,
                  labels=labels) == message


def test_a_recorded_eligibility_governs_whatever_the_namespace_labels() -> None:
    assert _judge(BOB, _status(Phase.PENDING), approve("dev"), labels=None) is None


# --- adding an action ------------------------------------------------------------------------

ACTIONS = [
    pytest.param(ALICE, _status(Phase.PENDING), act("Withdraw"), None,
                 id="the requester may withdraw her pending request"),
    pytest.param(BOB, _status(Phase.PENDING), act("Withdraw"),
                 "only the requester (alice) can withdraw this request",
                 id="an approver may not withdraw someone else's request"),
    pytest.param(ALICE, _status(Phase.ACTIVE), act("Withdraw"),
                 "the request is Active: only a pending request can be withdrawn",
                 id="an active grant cannot be withdrawn"),
    pytest.param(ALICE, _status(Phase.ACTIVE), act("End", "done early"), None,
                 id="the requester may end her active grant"),
    pytest.param(ALICE, _status(Phase.PENDING), act("End"),
                 "the request is Pending: only an active grant can be ended",
                 id="a pending request cannot be ended"),
    pytest.param(BOB, _status(Phase.ACTIVE), act("End"),
                 "only the requester (alice) can end this request",
                 id="an approver may not end someone else's grant"),
    pytest.param(BOB, _status(Phase.ACTIVE), act("Revoke"),
                 "a revocation needs a reason: set status.actions[you].reason",
                 id="a revocation without a reason is refused"),
    pytest.param(BOB, _status(Phase.ACTIVE), act("Revoke", "   "),
                 "a revocation needs a reason: set status.actions[you].reason",
                 id="a blank reason counts as none"),
    pytest.param(BOB, _status(Phase.ACTIVE), act("Revoke", "leaving the team"), None,
                 id="a listed approver may revoke an active grant with a reason"),
    pytest.param(BOB, _status(Phase.PENDING), act("Revoke", "not needed"), None,
                 id="a listed approver may revoke a pending request with a reason"),
    pytest.param(DAVE, _status(Phase.ACTIVE), act("Revoke", "leaving the team"), None,
                 id="a member of an approver group may revoke with a reason"),
    pytest.param(MALLORY, _status(Phase.ACTIVE), act("Revoke", "because"), MAY_NOT_REVOKE,
                 id="a non-approver may not revoke and is told who may"),
    pytest.param(User("alice", uid="u-alice", groups=("sre",)), _status(Phase.ACTIVE),
                 act("Revoke", "done"),
                 "alice may not revoke this request: approvers of its RoleEligibility, or "
                 "users allowed the verb revoke on accessrequests in pim.kubepim.dev, may",
                 id="a requester who is also an approver may not revoke her own request"),
    *[pytest.param(BOB, _status(phase), act("Revoke", "too late"),
                   f"the request is {phase.value}: there is nothing to revoke",
                   id=f"a {phase.value} request has nothing to revoke")
      for phase in (Phase.EXPIRED, Phase.REVOKED, Phase.WITHDRAWN, Phase.DENIED)],
]


@pytest.mark.parametrize(("user", "old", "entry", "message"), ACTIONS)
def test_actions_are_allowed_only_to_whom_and_when_they_apply(
    user: User, old: AccessRequestStatus, entry: Action, message: str | None,
) -> None:
    assert _judge(user, old, entry) == message


@pytest.mark.parametrize(("phase", "reason", "message"), [
    pytest.param(Phase.ACTIVE, "incident over", None,
                 id="a user allowed the revoke verb may revoke without being an approver"),
    pytest.param(Phase.ACTIVE, "", "a revocation needs a reason: set status.actions[you].reason",
                 id="a user allowed the revoke verb still needs a reason"),
    pytest.param(Phase.EXPIRED, "incident over", "the request is Expired: there is nothing to "
                 "revoke", id="a user allowed the revoke verb cannot revoke a final request"),
])
def test_the_rbac_revoke_verb_stands_in_for_being_an_approver(
    phase: Phase, reason: str, message: str | None,
) -> None:
    assert _judge(MALLORY, _status(phase), act("Revoke", reason),
                  may_revoke_by_rbac=True) == message


@pytest.mark.parametrize(("user", "old", "new"), [
    pytest.param(MALLORY, _status(Phase.ACTIVE, mallory=approve("dev")),
                 _status(Phase.ACTIVE, mallory=approve("dev")),
                 id="an approval already in the old status is not judged again"),
    pytest.param(ALICE, _status(Phase.ACTIVE, alice=act("Withdraw")),
                 _status(Phase.ACTIVE, alice=act("Withdraw")),
                 id="an action already in the old status is not judged again"),
    pytest.param(BOB, _status(Phase.PENDING, mallory=approve("dev")),
                 _status(Phase.PENDING, mallory=approve("dev"), bob=approve("dev")),
                 id="only the caller's new entry is judged, not others' earlier entries"),
])
def test_entries_already_present_in_the_old_status_are_not_judged_again(
    user: User, old: AccessRequestStatus, new: AccessRequestStatus,
) -> None:
    assert check_status_change(user, SPEC, old, new, TEAM) is None


def test_a_new_entry_is_judged_even_when_the_old_status_holds_others() -> None:
    old = _status(Phase.PENDING, bob=approve("dev"))
    assert _judge(MALLORY, old, approve("dev")) == NOT_AN_APPROVER


# --- privileged roles ------------------------------------------------------------------------

def _rule(verbs: list[str], resources: list[str] | None = None) -> dict[str, list[str]]:
    return {"apiGroups": [""], "resources": resources or ["pods"], "verbs": verbs}


@pytest.mark.parametrize(("kind", "name", "rules", "reason"), [
    pytest.param("ClusterRole", "cluster-admin", [], "ClusterRole/cluster-admin is cluster-admin",
                 id="cluster-admin is privileged by its name alone"),
    pytest.param("ClusterRole", "rbac-manager", [_rule(["escalate"], ["roles"])],
                 "ClusterRole/rbac-manager grants the verb(s) escalate",
                 id="a role granting escalate is privileged"),
    pytest.param("Role", "binder", [_rule(["bind"], ["rolebindings"])],
                 "Role/binder grants the verb(s) bind", id="a role granting bind is privileged"),
    pytest.param("ClusterRole", "sudo", [_rule(["impersonate"], ["users"])],
                 "ClusterRole/sudo grants the verb(s) impersonate",
                 id="a role granting impersonate is privileged"),
    pytest.param("Role", "pod-god", [_rule(["*"])], "Role/pod-god grants the verb(s) *",
                 id="a role granting every verb is privileged"),
    pytest.param("Role", "many", [_rule(["get"]), _rule(["bind", "impersonate", "list"])],
                 "Role/many grants the verb(s) bind, impersonate",
                 id="every deny-listed verb of a later rule is named in order"),
    pytest.param("Role", "reader-of-all", [_rule(["get", "list"], ["*"])],
                 "Role/reader-of-all grants every resource ('*')",
                 id="a role granting every resource is privileged"),
])
def test_privileged_roles_are_named_with_the_reason(
    kind: str, name: str, rules: list[dict[str, Any]], reason: str,
) -> None:
    assert privileged(kind, name, rules) == reason


@pytest.mark.parametrize(("kind", "name", "rules"), [
    pytest.param("Role", "db-reader", [_rule(["get", "list", "watch"], ["pods", "services"])],
                 id="a plain get and list role is not privileged"),
    pytest.param("Role", "cluster-admin", [_rule(["get"])],
                 id="a namespaced Role merely named cluster-admin is judged by its rules"),
    pytest.param("ClusterRole", "empty", [{}], id="a rule without verbs or resources is harmless"),
])
def test_ordinary_roles_are_not_privileged(
    kind: str, name: str, rules: list[dict[str, Any]],
) -> None:
    assert privileged(kind, name, rules) is None
