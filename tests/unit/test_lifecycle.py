"""The AccessRequest lifecycle: what decide() does next from each phase, and the Conditions."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from pydantic import ValidationError

from kubepim.api.common import Condition
from kubepim.api.eligibility import RoleEligibilitySpec
from kubepim.api.request import AccessRequestSpec, AccessRequestStatus, Activity, Phase
from kubepim.domain.lifecycle import OPERATOR, Plan, conditions, decide, idle_at

from .builders import NOW, PAYMENTS_LABELS, approve, deny, eligibility, request

CREATED = NOW - datetime.timedelta(minutes=10)
TEAM = {"team": eligibility()}


def _decide(status: AccessRequestStatus, spec: AccessRequestSpec | None = None,
            eligibilities: dict[str, RoleEligibilitySpec] | None = None,
            created_at: datetime.datetime = CREATED,
            labels: dict[str, str] | None = PAYMENTS_LABELS) -> Plan:
    return decide(spec or request(), status, created_at,
                  TEAM if eligibilities is None else eligibilities, labels, NOW)


def _pending(**fields: Any) -> AccessRequestStatus:
    return AccessRequestStatus(phase=Phase.PENDING, eligibility="team", **fields)


def _active(expires_at: datetime.datetime) -> AccessRequestStatus:
    return AccessRequestStatus(phase=Phase.ACTIVE, eligibility="team",
                               activated_at=expires_at - datetime.timedelta(hours=1),
                               expires_at=expires_at, approvals={"bob": approve()})


def _steps(plan: Plan) -> list[tuple[str, Phase, str]]:
    return [(t.action, t.phase, t.actor) for t in plan.transitions]


# --- a new request ---------------------------------------------------------------------------

def test_new_covered_request_is_requested_and_waits_for_approval() -> None:
    plan = _decide(AccessRequestStatus())
    assert _steps(plan) == [("Requested", Phase.PENDING, "alice")]
    assert plan.transitions[0].message == (
        "alice requested Role/db-reader in namespace payments for 1h: "
        "INC-42: look at stuck payments")
    assert plan.phase == Phase.PENDING
    assert plan.binding == "absent"
    assert plan.eligibility == "team"
    assert plan.message == "waiting for 1 more approval(s) of 1"


def test_new_uncovered_request_is_rejected_by_kubepim_with_the_review_message() -> None:
    plan = _decide(AccessRequestStatus(), spec=request(role={"kind": "Role", "name": "db-admin"}))
    assert _steps(plan) == [("Rejected", Phase.REJECTED, OPERATOR)]
    assert plan.transitions[0].warning
    assert plan.binding == "absent"
    assert plan.message == ("alice is not eligible for Role/db-admin in namespace payments: "
                            "eligible roles there are [Role/db-reader]")


def test_new_request_that_already_has_its_quorum_goes_straight_to_active() -> None:
    plan = _decide(AccessRequestStatus(approvals={"bob": approve()}))
    assert [t.action for t in plan.transitions] == ["Requested", "Approved", "Activated"]
    assert plan.phase == Phase.ACTIVE
    assert plan.binding == "present"


def test_ignored_approvals_are_explained_while_waiting() -> None:
    plan = _decide(_pending(approvals={"alice": approve(), "mallory": approve()}))
    assert plan.transitions == ()
    assert plan.message == (
        "waiting for 1 more approval(s) of 1"
        "; ignored alice: the requester cannot approve their own request"
        "; ignored mallory: not an approver under the governing eligibility")


# --- pending ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("requested", "length"), [
    pytest.param(None, datetime.timedelta(hours=1),
                 id="without a duration access lasts the default hour from approval"),
    pytest.param("1h30m", datetime.timedelta(minutes=90),
                 id="with a duration access lasts exactly that long from approval"),
    pytest.param("8h", datetime.timedelta(hours=8),
                 id="with the maximum duration access lasts the maximum from approval"),
])
def test_pending_request_with_quorum_is_approved_and_activated_until_now_plus_duration(
    requested: str | None, length: datetime.timedelta,
) -> None:
    plan = _decide(_pending(approvals={"bob": approve()}), spec=request(duration=requested))
    assert _steps(plan) == [("Approved", Phase.PENDING, "bob"),
                            ("Activated", Phase.ACTIVE, OPERATOR)]
    assert plan.binding == "present"
    assert plan.eligibility == "team"
    assert plan.activated_at == NOW
    assert plan.expires_at == NOW + length
    until = (NOW + length).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert plan.message == f"active until {until}"
    assert plan.transitions[1].message == (
        f"granted Role/db-reader in namespace payments to alice until {until}")


def test_approved_transition_names_every_counted_approver() -> None:
    plan = _decide(_pending(approvals={"bob": approve(), "carol": approve()}),
                   eligibilities={"team": eligibility(
                       approval={"users": ["bob", "carol"], "required": 2})})
    assert plan.transitions[0].actor == "bob, carol"
    assert plan.transitions[0].message == "approved by bob, carol"


@pytest.mark.parametrize(("comment", "message"), [
    pytest.param("not during the freeze", "denied by carol: not during the freeze",
                 id="a denial with a comment quotes it"),
    pytest.param("", "denied by carol", id="a denial without a comment says who denied"),
])
def test_pending_request_denied_by_an_approver_is_denied_by_that_approver(
    comment: str, message: str,
) -> None:
    policy = eligibility(approval={"users": ["bob", "carol"]})
    plan = _decide(_pending(approvals={"bob": approve(), "carol": deny(comment=comment)}),
                   eligibilities={"team": policy})
    assert _steps(plan) == [("Denied", Phase.DENIED, "carol")]
    assert plan.binding == "absent"
    assert plan.message == message


@pytest.mark.parametrize(("age", "timed_out"), [
    pytest.param(datetime.timedelta(hours=24), True,
                 id="a request exactly as old as the pending timeout times out"),
    pytest.param(datetime.timedelta(days=3), True,
                 id="a request older than the pending timeout times out"),
    pytest.param(datetime.timedelta(hours=24) - datetime.timedelta(seconds=1), False,
                 id="a request one second short of the pending timeout keeps waiting"),
])
def test_pending_request_times_out_after_the_pending_timeout(
    age: datetime.timedelta, timed_out: bool,
) -> None:
    plan = _decide(_pending(), created_at=NOW - age)
    if timed_out:
        assert _steps(plan) == [("TimedOut", Phase.TIMED_OUT, OPERATOR)]
        assert plan.message == "no decision within the approval window of 24h"
    else:
        assert plan.transitions == ()
        assert plan.message == "waiting for 1 more approval(s) of 1"
    assert plan.binding == "absent"


def test_a_new_request_created_before_the_timeout_window_is_requested_then_timed_out() -> None:
    plan = _decide(AccessRequestStatus(), created_at=NOW - datetime.timedelta(hours=25))
    assert [t.action for t in plan.transitions] == ["Requested", "TimedOut"]
    assert plan.phase == Phase.TIMED_OUT


@pytest.mark.parametrize("eligibilities", [
    pytest.param({}, id="a pending request whose eligibility was deleted is denied by kubepim"),
    pytest.param({"team": eligibility(roles=[{"kind": "Role", "name": "db-writer"}])},
                 id="a pending request whose role was removed is denied by kubepim"),
])
def test_pending_request_whose_eligibility_vanished_is_denied_by_kubepim(
    eligibilities: dict[str, RoleEligibilitySpec],
) -> None:
    plan = _decide(_pending(approvals={"bob": approve()}), eligibilities=eligibilities)
    assert _steps(plan) == [("Denied", Phase.DENIED, OPERATOR)]
    assert plan.transitions[0].warning
    assert plan.binding == "absent"
    assert plan.message.startswith("eligibility no longer covers this request: ")


@pytest.mark.parametrize(("field", "value", "message"), [
    pytest.param("pendingTimeout", "0s", "is not a duration like",
                 id="a zero pending timeout is refused when the eligibility is read"),
    pytest.param("pendingTimeout", "", "at least 2 characters",
                 id="an empty pending timeout is refused when the eligibility is read"),
    pytest.param("defaultDuration", "0s", "is not a duration like",
                 id="a zero default duration is refused when the eligibility is read"),
    pytest.param("defaultDuration", "2h", "defaultDuration must not exceed maxDuration",
                 id="a default duration over the maximum is refused"),
])
def test_eligibility_with_unusable_durations_is_refused_by_the_model(
    field: str, value: str, message: str,
) -> None:
    with pytest.raises(ValidationError, match=message):
        eligibility(**{field: value, "maxDuration": "1h"})


# --- active ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("late", "message"), [
    pytest.param(datetime.timedelta(0), "access ended at its expiry 2026-11-23T12:00:00Z",
                 id="an active grant at its expiry expires without a lateness note"),
    pytest.param(datetime.timedelta(milliseconds=500),
                 "access ended at its expiry 2026-11-23T11:59:59Z",
                 id="an active grant less than a second late expires without a lateness note"),
    pytest.param(datetime.timedelta(seconds=90),
                 "access ended at its expiry 2026-11-23T11:58:30Z; revoked 90s late",
                 id="an active grant past its expiry expires and says how late"),
])
def test_active_grant_at_or_after_expiry_expires(
    late: datetime.timedelta, message: str,
) -> None:
    plan = _decide(_active(expires_at=NOW - late))
    assert _steps(plan) == [("Expired", Phase.EXPIRED, OPERATOR)]
    assert plan.binding == "absent"
    assert plan.message == message


def test_an_expiry_recorded_late_says_when_access_ended_not_when_it_was_recorded() -> None:
    # The binding went 0.2 s after expiry (beside the queue); the status write came 12 s late.
    expires = NOW - datetime.timedelta(seconds=12)
    plan = decide(request(), _active(expires_at=expires), CREATED, TEAM, PAYMENTS_LABELS, NOW,
                  access_ended_at=expires + datetime.timedelta(milliseconds=200))
    assert plan.message == "access ended at its expiry 2026-11-23T11:59:48Z"
    plan = decide(request(), _active(expires_at=expires), CREATED, TEAM, PAYMENTS_LABELS, NOW,
                  access_ended_at=expires + datetime.timedelta(seconds=3))
    assert plan.message.endswith("; revoked 3s late")


def test_active_grant_before_expiry_keeps_its_binding() -> None:
    expires = NOW + datetime.timedelta(seconds=1)
    plan = _decide(_active(expires_at=expires))
    assert plan.transitions == ()
    assert plan.binding == "present"
    assert plan.eligibility == "team"
    assert plan.message == "active until 2026-11-23T12:00:01Z"


@pytest.mark.parametrize(("eligibilities", "labels"), [
    pytest.param({}, PAYMENTS_LABELS,
                 id="an active grant whose eligibility was deleted is revoked"),
    pytest.param({"team": eligibility(subjects=[{"kind": "User", "name": "bob"}])},
                 PAYMENTS_LABELS,
                 id="an active grant whose requester was removed from the subjects is revoked"),
])
def test_active_grant_no_longer_covered_is_revoked(
    eligibilities: dict[str, RoleEligibilitySpec], labels: dict[str, str] | None,
) -> None:
    plan = _decide(_active(expires_at=NOW + datetime.timedelta(minutes=30)),
                   eligibilities=eligibilities, labels=labels)
    assert _steps(plan) == [("Revoked", Phase.REVOKED, OPERATOR)]
    assert plan.transitions[0].warning
    assert plan.binding == "absent"
    assert plan.message.startswith("eligibility no longer covers this grant: ")


# --- final phases ----------------------------------------------------------------------------

FINAL = [phase for phase in Phase if phase not in (Phase.PENDING, Phase.ACTIVE)]


@pytest.mark.parametrize("phase", FINAL, ids=[f"a {p} request stays {p} without a binding"
                                              for p in FINAL])
def test_final_phases_have_no_transitions_and_no_binding(phase: Phase) -> None:
    status = AccessRequestStatus(phase=phase, message="as it was", approvals={"bob": approve()},
                                 expires_at=NOW - datetime.timedelta(days=1))
    plan = _decide(status)
    assert plan.transitions == ()
    assert plan.phase is None
    assert plan.binding == "absent"
    assert plan.message == "as it was"


@pytest.mark.parametrize(("phase", "final"), [
    *[pytest.param(p, True, id=f"{p} is final") for p in FINAL],
    pytest.param(Phase.PENDING, False, id="Pending is not final"),
    pytest.param(Phase.ACTIVE, False, id="Active is not final"),
])
def test_only_pending_and_active_can_still_change(phase: Phase, final: bool) -> None:
    assert phase.final is final


# --- conditions ------------------------------------------------------------------------------

EARLIER = NOW - datetime.timedelta(hours=2)


def _by_type(result: list[Condition]) -> dict[str, Condition]:
    return {c.type: c for c in result}


@pytest.mark.parametrize(("phase", "approved", "granted"), [
    pytest.param(Phase.PENDING, ("False", "AwaitingApproval"), ("False", "NotApproved"),
                 id="a Pending request is awaiting approval and not granted"),
    pytest.param(Phase.ACTIVE, ("True", "Approved"), ("True", "Activated"),
                 id="an Active request is approved and granted"),
    pytest.param(Phase.EXPIRED, ("True", "Approved"), ("False", "Expired"),
                 id="an Expired request was approved and is no longer granted"),
    pytest.param(Phase.REVOKED, ("True", "Approved"), ("False", "Revoked"),
                 id="a Revoked request was approved and is no longer granted"),
    pytest.param(Phase.DENIED, ("False", "Denied"), ("False", "Denied"),
                 id="a Denied request is neither approved nor granted"),
    pytest.param(Phase.REJECTED, ("False", "Rejected"), ("False", "Rejected"),
                 id="a Rejected request is neither approved nor granted"),
    pytest.param(Phase.TIMED_OUT, ("False", "TimedOut"), ("False", "TimedOut"),
                 id="a TimedOut request is neither approved nor granted"),
    pytest.param(Phase.WITHDRAWN, ("False", "Withdrawn"), ("False", "Withdrawn"),
                 id="a Withdrawn request is neither approved nor granted"),
])
def test_conditions_summarise_each_phase_as_approved_and_granted(
    phase: Phase, approved: tuple[str, str], granted: tuple[str, str],
) -> None:
    result = _by_type(conditions(phase, "detail", [], 3, NOW))
    assert list(result) == ["Approved", "Granted"]
    assert (result["Approved"].status, result["Approved"].reason) == approved
    assert (result["Granted"].status, result["Granted"].reason) == granted
    assert all(c.message == "detail" and c.observed_generation == 3 for c in result.values())
    assert all(c.last_transition_time == NOW for c in result.values())


@pytest.mark.parametrize(("before", "after", "moved"), [
    pytest.param(Phase.PENDING, Phase.PENDING, set(),
                 id="staying Pending moves no transition time"),
    pytest.param(Phase.PENDING, Phase.ACTIVE, {"Approved", "Granted"},
                 id="Pending to Active moves both transition times"),
    pytest.param(Phase.PENDING, Phase.DENIED, set(),
                 id="Pending to Denied changes reasons but no status so no time moves"),
    pytest.param(Phase.ACTIVE, Phase.EXPIRED, {"Granted"},
                 id="Active to Expired moves only Granted"),
    pytest.param(Phase.ACTIVE, Phase.REVOKED, {"Granted"},
                 id="Active to Revoked moves only Granted"),
])
def test_last_transition_time_moves_only_when_status_changes(
    before: Phase, after: Phase, moved: set[str],
) -> None:
    previous = conditions(before, "before", [], 1, EARLIER)
    result = _by_type(conditions(after, "after", previous, 2, NOW))
    for kind, condition in result.items():
        assert condition.last_transition_time == (NOW if kind in moved else EARLIER), kind
        assert condition.message == "after"
        assert condition.observed_generation == 2


def test_an_active_grant_whose_namespace_was_deleted_ends_with_that_reason() -> None:
    plan = _decide(_active(expires_at=NOW + datetime.timedelta(minutes=30)), labels=None)
    assert _steps(plan) == [("Revoked", Phase.REVOKED, OPERATOR)]
    assert plan.binding == "absent"
    assert plan.message.startswith("namespace payments was deleted (or is being deleted)")


def test_a_namespace_made_again_under_the_same_name_does_not_bring_the_grant_back() -> None:
    active = _active(expires_at=NOW + datetime.timedelta(minutes=30))
    active = active.model_copy(update={"namespace_uid": "ns-uid-1"})
    kept = decide(request(), active, NOW, TEAM, PAYMENTS_LABELS, NOW, namespace_uid="ns-uid-1")
    assert kept.binding == "present"
    plan = decide(request(), active, NOW, TEAM, PAYMENTS_LABELS, NOW, namespace_uid="ns-uid-2")
    assert _steps(plan) == [("Revoked", Phase.REVOKED, OPERATOR)]
    assert plan.binding == "absent"


def test_an_activation_records_the_namespace_uid() -> None:
    approved = AccessRequestStatus(phase=Phase.PENDING, eligibility="team",
                                   approvals={"bob": approve()})
    plan = decide(request(), approved, NOW, TEAM, PAYMENTS_LABELS, NOW, namespace_uid="ns-uid-1")
    assert plan.binding == "present" and plan.namespace_uid == "ns-uid-1"


def test_the_recorded_governing_eligibility_is_kept_while_it_still_covers() -> None:
    pending = AccessRequestStatus(phase=Phase.PENDING, eligibility="team",
                                  approvals={"bob": approve()})
    # An eligibility created later that sorts first (and whose approvers differ).
    both = {**TEAM, "aaa-first": eligibility(approval={"users": ["carol"]})}
    plan = decide(request(), pending, NOW, both, PAYMENTS_LABELS, NOW)
    assert plan.eligibility == "team"
    assert plan.binding == "present"  # bob's approval, accepted under team, still counts


# --- idle timeout (docs/activity.md) -----------------------------------------------------------

def _idle_team() -> dict[str, RoleEligibilitySpec]:
    return {"team": eligibility(idleTimeout="15m")}


def test_a_grant_never_used_ends_idle_its_timeout_after_activation() -> None:
    status = _active(expires_at=NOW + datetime.timedelta(minutes=44))  # activated 16 min ago
    plan = decide(request(), status, CREATED, _idle_team(), PAYMENTS_LABELS, NOW)
    assert _steps(plan) == [("Idle", Phase.EXPIRED, OPERATOR)]
    assert plan.binding == "absent"
    assert plan.transitions[0].message == ("access ended: unused for its eligibility's "
                                           "idleTimeout 15m (never used since its activation)")
    assert idle_at(status, _idle_team()) == status.activated_at + datetime.timedelta(minutes=15)


def test_a_grant_used_within_its_idle_timeout_stays_and_its_timer_moves() -> None:
    status = _active(expires_at=NOW + datetime.timedelta(minutes=44))
    used = NOW - datetime.timedelta(minutes=3)
    plan = decide(request(), status, CREATED, _idle_team(), PAYMENTS_LABELS, NOW,
                  last_used=used)
    assert plan.transitions == () and plan.binding == "present"
    assert idle_at(status, _idle_team(), used) == used + datetime.timedelta(minutes=15)
    # The use as written in status.activity counts the same as one not written yet.
    recorded = status.model_copy(update={"activity": Activity(requests=1, last_use=used)})
    assert decide(request(), recorded, CREATED, _idle_team(), PAYMENTS_LABELS,
                  NOW).transitions == ()
    # Unused since: idle, naming the last use.
    later = NOW + datetime.timedelta(minutes=13)
    ended = decide(request(), recorded, CREATED, _idle_team(), PAYMENTS_LABELS, later)
    assert _steps(ended) == [("Idle", Phase.EXPIRED, OPERATOR)]
    assert "(last used 2026-11-23T11:57:00Z)" in ended.transitions[0].message


def test_without_an_idle_timeout_nothing_ends_idle_and_the_expiry_comes_first() -> None:
    status = _active(expires_at=NOW + datetime.timedelta(minutes=44))
    assert _decide(status).transitions == ()
    assert idle_at(status, TEAM) is None
    expired = _active(expires_at=NOW)  # both due: the expiry is what ended it
    plan = decide(request(), expired, CREATED, _idle_team(), PAYMENTS_LABELS, NOW)
    assert _steps(plan) == [("Expired", Phase.EXPIRED, OPERATOR)]


def test_an_idle_timeout_below_ten_seconds_is_refused_with_what_is_allowed() -> None:
    with pytest.raises(ValidationError, match="idleTimeout must be at least 10s"):
        eligibility(idleTimeout="5s")
