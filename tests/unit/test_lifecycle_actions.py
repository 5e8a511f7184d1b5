"""The lifecycle's newer paths: withdraw/end/revoke actions, break-glass, auto-approval, reviews."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from kubepim.api.eligibility import RoleEligibilitySpec
from kubepim.api.request import AccessRequestSpec, AccessRequestStatus, Action, Approval, Phase
from kubepim.domain.lifecycle import OPERATOR, Plan, decide

from .builders import NOW, PAYMENTS_LABELS, acknowledge, act, approve, eligibility, request

CREATED = NOW - datetime.timedelta(minutes=10)
EXPIRES = NOW + datetime.timedelta(minutes=30)
TEAM = {"team": eligibility(approval={"users": ["bob"], "groups": ["sre"]})}
BREAK_GLASS = {"team": eligibility(approval={"users": ["bob"]}, breakGlass={})}
UID = "3f0c-this-request"


def _decide(status: AccessRequestStatus, spec: AccessRequestSpec | None = None,
            eligibilities: dict[str, RoleEligibilitySpec] | None = None,
            uid: str = "") -> Plan:
    return decide(spec or request(), status, CREATED,
                  TEAM if eligibilities is None else eligibilities, PAYMENTS_LABELS, NOW, uid=uid)


def _pending(**fields: Any) -> AccessRequestStatus:
    return AccessRequestStatus(phase=Phase.PENDING, eligibility="team", **fields)


def _active(**fields: Any) -> AccessRequestStatus:
    return AccessRequestStatus(phase=Phase.ACTIVE, eligibility="team",
                               activated_at=NOW - datetime.timedelta(minutes=30),
                               expires_at=EXPIRES, **fields)


def _steps(plan: Plan) -> list[tuple[str, Phase, str]]:
    return [(t.action, t.phase, t.actor) for t in plan.transitions]


# --- actions ---------------------------------------------------------------------------------

TAKEN = [
    pytest.param(_pending(), {"alice": act("Withdraw")},
                 ("Withdrawn", Phase.WITHDRAWN, "alice"), "withdrawn by alice", False,
                 id="the requester's Withdraw on a pending request withdraws it"),
    pytest.param(_pending(), {"alice": act("Withdraw", "fixed it myself")},
                 ("Withdrawn", Phase.WITHDRAWN, "alice"), "withdrawn by alice: fixed it myself",
                 False, id="a Withdraw's reason is quoted"),
    pytest.param(AccessRequestStatus(), {"alice": act("Withdraw")},
                 ("Withdrawn", Phase.WITHDRAWN, "alice"), "withdrawn by alice", False,
                 id="a Withdraw already on a new request withdraws it after it is requested"),
    pytest.param(_active(), {"alice": act("End", "done")},
                 ("Revoked", Phase.REVOKED, "alice"), "ended early by alice: done", False,
                 id="the requester's End on an active grant ends it early without a warning"),
    pytest.param(_active(), {"bob": act("Revoke", "reason")},
                 ("Revoked", Phase.REVOKED, "bob"), "revoked by bob: reason", True,
                 id="an approver's Revoke on an active grant revokes it with a warning"),
    pytest.param(_pending(), {"bob": act("Revoke", "not now")},
                 ("Revoked", Phase.REVOKED, "bob"), "revoked by bob: not now", True,
                 id="an approver's Revoke on a pending request revokes it with a warning"),
    pytest.param(_active(), {"alice": act("Revoke", "done")},
                 ("Revoked", Phase.REVOKED, "alice"), "ended early by alice: done", False,
                 id="the requester's own Revoke of an active grant reads as ending it early"),
    pytest.param(_pending(), {"alice": act("Revoke")},
                 ("Withdrawn", Phase.WITHDRAWN, "alice"), "withdrawn by alice", False,
                 id="the requester's own Revoke of a pending request reads as a withdrawal"),
]


@pytest.mark.parametrize(("status", "actions", "step", "message", "warning"), TAKEN)
def test_actions_end_the_request_in_the_name_of_who_took_them(
    status: AccessRequestStatus, actions: dict[str, Action], step: tuple[str, Phase, str],
    message: str, warning: bool,
) -> None:
    plan = _decide(status.model_copy(update={"actions": actions}))
    assert _steps(plan)[-1] == step
    assert plan.transitions[-1].message == message
    assert plan.transitions[-1].warning is warning
    assert plan.message == message
    assert plan.binding == "absent"


IGNORED = [
    pytest.param(_pending(actions={"bob": act("Withdraw")}), "waiting for 1 more approval(s) of 1",
                 "absent", id="a Withdraw by someone other than the requester is ignored"),
    pytest.param(_active(actions={"bob": act("End", "enough")}),
                 "active until 2026-11-23T12:30:00Z", "present",
                 id="an End by someone other than the requester is ignored"),
    pytest.param(_active(actions={"alice": act("Withdraw")}),
                 "active until 2026-11-23T12:30:00Z", "present",
                 id="a Withdraw on an active grant is ignored"),
    pytest.param(_pending(actions={"alice": act("End")}), "waiting for 1 more approval(s) of 1",
                 "absent", id="an End on a pending request is ignored"),
]


@pytest.mark.parametrize(("status", "message", "binding"), IGNORED)
def test_actions_that_do_not_apply_change_nothing(
    status: AccessRequestStatus, message: str, binding: str,
) -> None:
    plan = _decide(status)
    assert plan.transitions == ()
    assert plan.message == message
    assert plan.binding == binding


def test_an_action_on_a_final_request_changes_nothing() -> None:
    status = AccessRequestStatus(phase=Phase.EXPIRED, eligibility="team", message="as it was",
                                 actions={"bob": act("Revoke", "late")})
    plan = _decide(status)
    assert plan.transitions == ()
    assert plan.binding == "absent"
    assert plan.message == "as it was"


# --- break-glass and auto-approval -----------------------------------------------------------

def test_a_new_break_glass_request_activates_at_once_with_a_warning_and_a_review_due() -> None:
    plan = _decide(AccessRequestStatus(), spec=request(breakGlass=True),
                   eligibilities=BREAK_GLASS)
    assert _steps(plan) == [("Requested", Phase.PENDING, "alice"),
                            ("BreakGlass", Phase.PENDING, "alice"),
                            ("Activated", Phase.ACTIVE, OPERATOR)]
    assert [t.warning for t in plan.transitions] == [False, True, False]
    assert plan.transitions[1].message == (
        "break-glass activation by alice without approval: INC-42: look at stuck payments")
    assert plan.review_required is True
    assert plan.binding == "present"
    assert plan.activated_at == NOW
    assert plan.expires_at == NOW + datetime.timedelta(hours=1)


def test_a_break_glass_request_under_an_eligibility_without_break_glass_is_rejected() -> None:
    plan = _decide(AccessRequestStatus(), spec=request(breakGlass=True))
    assert _steps(plan) == [("Rejected", Phase.REJECTED, OPERATOR)]
    assert plan.binding == "absent"
    assert plan.message == "RoleEligibility team does not allow break-glass"


def test_a_new_auto_approved_request_is_approved_by_kubepim_and_activated() -> None:
    plan = _decide(AccessRequestStatus(),
                   eligibilities={"team": eligibility(autoApprove={})})
    assert _steps(plan) == [("Requested", Phase.PENDING, "alice"),
                            ("Approved", Phase.PENDING, OPERATOR),
                            ("Activated", Phase.ACTIVE, OPERATOR)]
    assert plan.transitions[1].message == "auto-approved under RoleEligibility team"
    assert plan.binding == "present"
    assert plan.review_required is None


REQUESTED = ("Requested", Phase.PENDING, "alice")


@pytest.mark.parametrize(("window", "steps"), [
    pytest.param({"start": "11:00", "end": "12:00"},
                 [REQUESTED, ("Approved", Phase.PENDING, OPERATOR),
                  ("Activated", Phase.ACTIVE, OPERATOR)],
                 id="a request created inside the window is auto-approved although now is not"),
    pytest.param({"start": "12:00", "end": "13:00"}, [REQUESTED],
                 id="a request created before the window opens waits although now is inside"),
])
def test_auto_approval_is_judged_at_the_request_creation_time(
    window: dict[str, str], steps: list[tuple[str, Phase, str]],
) -> None:
    plan = _decide(AccessRequestStatus(),
                   eligibilities={"team": eligibility(autoApprove={"window": window})})
    assert _steps(plan) == steps


# --- reviewing break-glass use ---------------------------------------------------------------

def _break_glass_used(phase: Phase, **approvals: Approval) -> AccessRequestStatus:
    expires = EXPIRES if phase == Phase.ACTIVE else NOW - datetime.timedelta(minutes=5)
    return AccessRequestStatus(phase=phase, eligibility="team", review_required=True,
                               activated_at=expires - datetime.timedelta(hours=1),
                               expires_at=expires, approvals=approvals, message="as it was")


@pytest.mark.parametrize(("phase", "binding"), [
    pytest.param(Phase.ACTIVE, "present",
                 id="an approver's acknowledgment reviews an active break-glass grant"),
    pytest.param(Phase.EXPIRED, "absent",
                 id="an approver's acknowledgment reviews a break-glass grant after it expired"),
])
def test_an_acknowledgment_by_an_approver_reviews_the_break_glass_use(
    phase: Phase, binding: str,
) -> None:
    status = _break_glass_used(phase, bob=acknowledge(comment="justified, INC-42"))
    plan = _decide(status, spec=request(breakGlass=True), eligibilities=BREAK_GLASS)
    assert _steps(plan)[0] == ("Reviewed", phase, "bob")
    assert plan.transitions[0].message == "break-glass use reviewed by bob: justified, INC-42"
    assert plan.review_required is False
    assert plan.reviewed_by == "bob"
    assert plan.binding == binding


@pytest.mark.parametrize("approvals", [
    pytest.param({"alice": acknowledge()},
                 id="the requester's own acknowledgment is ignored"),
    pytest.param({"mallory": acknowledge("dev")},
                 id="an acknowledgment by a non-approver is ignored"),
    pytest.param({"bob": approve()},
                 id="an approval is not an acknowledgment"),
])
def test_acknowledgments_that_may_not_count_leave_the_review_due(
    approvals: dict[str, Approval],
) -> None:
    plan = _decide(_break_glass_used(Phase.ACTIVE, **approvals), spec=request(breakGlass=True),
                   eligibilities=BREAK_GLASS)
    assert plan.transitions == ()
    assert plan.review_required is None
    assert plan.reviewed_by is None
    assert plan.binding == "present"


def test_an_acknowledgment_by_a_member_of_an_approver_group_reviews() -> None:
    policy = {"team": eligibility(approval={"groups": ["sre"]}, breakGlass={})}
    plan = _decide(_break_glass_used(Phase.ACTIVE, dave=acknowledge("sre")),
                   spec=request(breakGlass=True), eligibilities=policy)
    assert _steps(plan) == [("Reviewed", Phase.ACTIVE, "dave")]
    assert plan.transitions[0].message == "break-glass use reviewed by dave"


def test_an_acknowledgment_on_a_grant_that_needs_no_review_changes_nothing() -> None:
    status = _active(approvals={"bob": acknowledge()})
    plan = _decide(status, eligibilities=BREAK_GLASS)
    assert plan.transitions == ()
    assert plan.reviewed_by is None


def test_an_acknowledgment_given_for_another_request_does_not_review_this_one() -> None:
    entry = acknowledge().model_copy(update={"request_uid": "another-request"})
    plan = _decide(_break_glass_used(Phase.ACTIVE, bob=entry), spec=request(breakGlass=True),
                   eligibilities=BREAK_GLASS, uid=UID)
    assert plan.reviewed_by is None


# --- approvals tied to the request's uid -----------------------------------------------------

def _for(request_uid: str) -> Approval:
    return approve().model_copy(update={"request_uid": request_uid})


@pytest.mark.parametrize(("approvals", "uid", "approved", "message"), [
    pytest.param({"bob": _for("another-request")}, UID, False,
                 "waiting for 1 more approval(s) of 1"
                 "; ignored bob: the approval was given for another request",
                 id="an approval stamped for another request is ignored and explained"),
    pytest.param({"bob": _for("")}, UID, False,
                 "waiting for 1 more approval(s) of 1"
                 "; ignored bob: the approval was given for another request",
                 id="an approval without a stamp is ignored once the uid is known"),
    pytest.param({"bob": _for(UID)}, UID, True, "active until 2026-11-23T13:00:00Z",
                 id="an approval stamped for this request counts"),
    pytest.param({"bob": _for("another-request")}, "", True,
                 "active until 2026-11-23T13:00:00Z",
                 id="without the request's uid the stamp is not checked"),
])
def test_only_approvals_given_for_this_request_count(
    approvals: dict[str, Approval], uid: str, approved: bool, message: str,
) -> None:
    plan = _decide(_pending(approvals=approvals), uid=uid)
    assert (plan.phase == Phase.ACTIVE) is approved
    assert plan.message == message
    assert plan.binding == ("present" if approved else "absent")
