"""Review terms beyond coverage: requester conditions, break-glass, and auto-approval windows."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from pydantic import ValidationError

from kubepim.api.common import RoleRef
from kubepim.api.eligibility import RoleEligibilitySpec
from kubepim.api.request import AccessRequestSpec, Requester
from kubepim.domain.review import Accepted, Refused, auto_approves, review, unmet_conditions

from .builders import NOW, PAYMENTS_LABELS, eligibility, request

H = datetime.timedelta(hours=1)
DB_READER = RoleRef(kind="Role", name="db-reader")
MONDAY = datetime.datetime(2026, 11, 23, tzinfo=datetime.UTC)  # NOW's day, at midnight


def _requester(*groups: str, **extra: list[str]) -> Requester:
    return Requester(username="alice", groups=list(groups), extra=extra)


def _at(day_offset: int, clock: str) -> datetime.datetime:
    hours, minutes = (int(part) for part in clock.split(":"))
    return MONDAY + datetime.timedelta(days=day_offset, hours=hours, minutes=minutes)


# --- requester conditions --------------------------------------------------------------------

@pytest.mark.parametrize(("conditions", "requester", "unmet"), [
    pytest.param(None, _requester(), None, id="an eligibility without conditions has none unmet"),
    pytest.param({"groups": ["mfa"]}, _requester("dev", "mfa"), None,
                 id="a requester in every required group meets the conditions"),
    pytest.param({"groups": ["mfa", "oncall"]}, _requester("dev", "mfa"), "group oncall",
                 id="a missing group is named"),
    pytest.param({"groups": ["mfa", "oncall"]}, _requester("dev"), "group mfa, group oncall",
                 id="every missing group is named"),
    pytest.param({"extra": {"amr": ["mfa", "hwk"]}}, _requester(amr=["pwd", "hwk"]), None,
                 id="an extra key carrying one of the accepted values meets the condition"),
    pytest.param({"extra": {"amr": ["mfa", "hwk"]}}, _requester(amr=["pwd"]),
                 "amr in ['hwk', 'mfa']",
                 id="an extra key carrying none of the accepted values is named with them"),
    pytest.param({"extra": {"amr": ["mfa"]}}, _requester(), "amr in ['mfa']",
                 id="a missing extra key is named"),
    pytest.param({"groups": ["mfa"], "extra": {"idp": ["corp"], "amr": ["mfa"]}},
                 _requester(idp=["corp"]), "group mfa, amr in ['mfa']",
                 id="groups come first and extra keys follow in key order"),
])
def test_unmet_conditions_name_what_the_requesters_identity_lacks(
    conditions: dict[str, Any] | None, requester: Requester, unmet: str | None,
) -> None:
    policy = eligibility(requesterConditions=conditions)
    assert unmet_conditions(policy, requester) == unmet


def test_a_requester_lacking_the_conditions_is_refused_and_told_what_is_missing() -> None:
    policy = eligibility(requesterConditions={"groups": ["mfa"], "extra": {"amr": ["mfa"]}})
    assert review(request(), {"team": policy}, PAYMENTS_LABELS) == Refused(
        "RoleEligibility team requires the requester's identity to carry group mfa, "
        "amr in ['mfa']")


def test_a_requester_meeting_the_conditions_is_accepted() -> None:
    policy = eligibility(requesterConditions={"groups": ["dev"], "extra": {"amr": ["mfa"]}})
    spec = request(requester={"username": "alice", "groups": ["dev"], "extra": {"amr": ["mfa"]}})
    assert review(spec, {"team": policy}, PAYMENTS_LABELS) == Accepted("team", H)


def test_an_eligibility_whose_conditions_are_unmet_is_skipped_for_one_without() -> None:
    eligibilities = {"a-strict": eligibility(requesterConditions={"groups": ["mfa"]}),
                     "b-plain": eligibility()}
    assert review(request(), eligibilities, PAYMENTS_LABELS) == Accepted("b-plain", H)


# --- break-glass -----------------------------------------------------------------------------

BREAK_GLASS = {"team": eligibility(breakGlass={"maxDuration": "30m"}, maxDuration="2h")}


@pytest.mark.parametrize(("spec", "eligibilities", "message"), [
    pytest.param(request(breakGlass=True, duration="30m"), {"team": eligibility()},
                 "RoleEligibility team does not allow break-glass",
                 id="break-glass under an eligibility without a breakGlass policy is refused"),
    pytest.param(request(breakGlass=True, duration="45m"), BREAK_GLASS,
                 "duration 45m exceeds the break-glass maximum 30m of RoleEligibility team",
                 id="a break-glass duration above the break-glass maximum names that maximum"),
    pytest.param(request(breakGlass=True, duration="30m", justification=""), BREAK_GLASS,
                 "a break-glass request requires a justification",
                 id="break-glass without a justification is refused"),
    pytest.param(request(breakGlass=True, duration="30m", justification=" "),
                 {"team": eligibility(breakGlass={"maxDuration": "30m"},
                                      justification={"required": False})},
                 "a break-glass request requires a justification",
                 id="break-glass needs a justification even where the eligibility needs none"),
])
def test_break_glass_is_refused_outside_the_break_glass_terms(
    spec: AccessRequestSpec, eligibilities: dict[str, RoleEligibilitySpec], message: str,
) -> None:
    assert review(spec, eligibilities, PAYMENTS_LABELS) == Refused(message)


@pytest.mark.parametrize(("spec", "expected"), [
    pytest.param(request(breakGlass=True, duration="30m"),
                 Accepted("team", 0.5 * H, break_glass=True),
                 id="break-glass within the break-glass maximum is accepted as break-glass"),
    pytest.param(request(duration="2h"), Accepted("team", 2 * H),
                 id="an ordinary request keeps the eligibility's own maximum"),
])
def test_break_glass_within_its_terms_is_accepted_and_marked(
    spec: AccessRequestSpec, expected: Accepted,
) -> None:
    assert review(spec, BREAK_GLASS, PAYMENTS_LABELS) == expected


def test_a_break_glass_maximum_above_the_eligibility_maximum_is_refused_by_the_model() -> None:
    with pytest.raises(ValidationError,
                       match=r"breakGlass\.maxDuration must not exceed maxDuration"):
        eligibility(breakGlass={"maxDuration": "9h"})


def test_a_break_glass_request_without_a_duration_fits_the_break_glass_maximum() -> None:
    verdict = review(request(breakGlass=True), BREAK_GLASS, PAYMENTS_LABELS)
    assert isinstance(verdict, Accepted)
    assert verdict.duration <= 0.5 * H


# --- auto-approval ---------------------------------------------------------------------------

OFFICE_HOURS = {"window": {"days": ["Mon", "Tue", "Wed", "Thu", "Fri"],
                           "start": "09:00", "end": "17:00"}}


@pytest.mark.parametrize(("policy", "role", "at", "expected"), [
    pytest.param(None, DB_READER, NOW, False, id="without a policy nothing is auto-approved"),
    pytest.param({}, DB_READER, NOW, True,
                 id="a policy without roles or window approves every role at any time"),
    pytest.param({"roles": [{"kind": "Role", "name": "db-reader"}]}, DB_READER, NOW, True,
                 id="a listed role is auto-approved"),
    pytest.param({"roles": [{"kind": "Role", "name": "db-writer"}]}, DB_READER, NOW, False,
                 id="a role outside the list is not auto-approved"),
    pytest.param({"roles": [{"kind": "ClusterRole", "name": "db-reader"}]}, DB_READER, NOW,
                 False, id="a ClusterRole of the same name does not auto-approve the Role"),
    pytest.param(OFFICE_HOURS, DB_READER, _at(0, "09:00"), True,
                 id="the window's start is inside the window"),
    pytest.param(OFFICE_HOURS, DB_READER, _at(0, "08:59"), False,
                 id="a minute before the start is outside the window"),
    pytest.param(OFFICE_HOURS, DB_READER, _at(0, "16:59") + datetime.timedelta(seconds=59),
                 True, id="the last second before the end is inside the window"),
    pytest.param(OFFICE_HOURS, DB_READER, _at(0, "17:00"), False,
                 id="the window's end is outside the window"),
    pytest.param(OFFICE_HOURS, DB_READER, _at(4, "12:00"), True,
                 id="a listed day is inside the window"),
    pytest.param(OFFICE_HOURS, DB_READER, _at(5, "12:00"), False,
                 id="a day not listed is outside the window"),
    pytest.param({"window": {"days": ["Sat"], "start": "00:00", "end": "23:59"}}, DB_READER,
                 _at(5, "00:00"), True, id="a weekend window covers its day from midnight"),
    pytest.param(OFFICE_HOURS, DB_READER,
                 datetime.datetime(2026, 11, 23, 10, 30,
                                   tzinfo=datetime.timezone(datetime.timedelta(hours=2))),
                 False, id="a local 10:30 two hours east of UTC is 08:30 UTC so outside"),
    pytest.param(OFFICE_HOURS, DB_READER,
                 datetime.datetime(2026, 11, 23, 20, 0,
                                   tzinfo=datetime.timezone(datetime.timedelta(hours=-5))),
                 False, id="a Monday evening five hours west of UTC is Tuesday 01:00 UTC"),
    pytest.param(OFFICE_HOURS, DB_READER,
                 datetime.datetime(2026, 11, 29, 22, 0,
                                   tzinfo=datetime.timezone(datetime.timedelta(hours=-12))),
                 True, id="a local Sunday evening that is Monday 10:00 UTC is inside"),
    pytest.param({"roles": [{"kind": "Role", "name": "db-writer"}], **OFFICE_HOURS}, DB_READER,
                 _at(0, "12:00"), False,
                 id="a role outside the list is not auto-approved even inside the window"),
])
def test_auto_approves_listed_roles_inside_the_utc_window(
    policy: dict[str, Any] | None, role: RoleRef, at: datetime.datetime, expected: bool,
) -> None:
    assert auto_approves(eligibility(autoApprove=policy), role, at) is expected


def test_a_window_across_midnight_is_either_refused_or_honoured() -> None:
    try:
        policy = eligibility(autoApprove={"window": {"start": "22:00", "end": "06:00"}})
    except ValidationError:
        return
    assert auto_approves(policy, DB_READER, _at(0, "23:00"))


@pytest.mark.parametrize(("spec", "policy", "requested_at", "expected"), [
    pytest.param(request(), {}, NOW, Accepted("team", H, auto_approved=True),
                 id="a request under an auto-approve policy is accepted as auto-approved"),
    pytest.param(request(), OFFICE_HOURS, _at(0, "12:00"),
                 Accepted("team", H, auto_approved=True),
                 id="a request created inside the window is auto-approved"),
    pytest.param(request(), OFFICE_HOURS, _at(0, "17:00"), Accepted("team", H),
                 id="a request created at the window's end waits for an approver"),
    pytest.param(request(), OFFICE_HOURS, _at(6, "12:00"), Accepted("team", H),
                 id="a request created on a day outside the window waits for an approver"),
    pytest.param(request(), {}, None, Accepted("team", H),
                 id="without a creation time nothing is auto-approved"),
    pytest.param(request(), None, NOW, Accepted("team", H),
                 id="without an auto-approve policy the request waits for an approver"),
    pytest.param(request(breakGlass=True), {}, NOW, Accepted("team", H, break_glass=True),
                 id="a break-glass request is never auto-approved"),
])
def test_review_marks_auto_approval_only_inside_the_window_and_never_for_break_glass(
    spec: AccessRequestSpec, policy: dict[str, Any] | None,
    requested_at: datetime.datetime | None, expected: Accepted,
) -> None:
    eligibilities = {"team": eligibility(autoApprove=policy, breakGlass={})}
    assert review(spec, eligibilities, PAYMENTS_LABELS, requested_at=requested_at) == expected
