"""Access reviews of eligibilities (domain/recertification.py): cadence on a fixed clock, the
snapshot and its recommendations, who may review whom, what counts, the default outcome."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from pydantic import ValidationError

from kubepim.api.accessreview import (
    EligibilityReviewRunSpec,
    EligibilityReviewSpec,
    ReviewerDecisions,
    SubjectOutcome,
)
from kubepim.api.common import Subject
from kubepim.api.eligibility import RoleEligibilitySpec
from kubepim.domain import recertification as rc

T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
DAY = datetime.timedelta(days=1)


def review(**changes: Any) -> EligibilityReviewSpec:
    spec: dict[str, Any] = {"eligibilities": {"names": ["payments"]}, "every": "2160h",
                            "decideWithin": "336h", "whenUndecided": "Suspend"}
    spec.update(changes)
    return EligibilityReviewSpec.model_validate(spec)


def eligibility(subjects: list[dict[str, str]], users: list[str] | None = None,
                groups: list[str] | None = None) -> RoleEligibilitySpec:
    return RoleEligibilitySpec.model_validate({
        "subjects": subjects, "roles": [{"kind": "Role", "name": "admin"}],
        "namespaces": ["payments"],
        "approval": {"users": users if users is not None else ["carol"],
                     "groups": groups or []}})


SUBJECTS = [{"kind": "User", "name": "alice"}, {"kind": "User", "name": "bob"},
            {"kind": "Group", "name": "oncall"},
            {"kind": "ServiceAccount", "namespace": "ci", "name": "deployer"}]


def run(when_undecided: str = "Suspend", groups: list[str] | None = None,
        grants: list[rc.Grant] | None = None) -> EligibilityReviewRunSpec:
    return rc.snapshot(review(whenUndecided=when_undecided), "quarterly",
                       {"payments": eligibility(SUBJECTS, groups=groups)}, {}, grants or [], T0)


def decided(uid: str = "run-1", groups: list[str] | None = None,
            **subjects: str) -> ReviewerDecisions:
    return ReviewerDecisions.model_validate({
        "subjects": {f"payments/{key.replace('__', '/')}": {"decision": value}
                     for key, value in subjects.items()},
        "groups": groups or [], "runUid": uid})


@pytest.mark.parametrize(("last", "now", "due"), [
    (None, T0, T0),                                       # the first run: at creation
    (None, T0 - DAY, None),                               # (not before it exists)
    (T0, T0 + 89 * DAY, None),                            # 90 days: not yet
    (T0, T0 + 90 * DAY, T0 + 90 * DAY),                   # due on the dot
    (T0, T0 + 90 * DAY + datetime.timedelta(hours=5), T0 + 90 * DAY),  # late: same point
    (T0, T0 + 200 * DAY, T0 + 180 * DAY),                 # two missed: one run, the latest
])
def test_runs_are_due_on_a_fixed_clock_from_the_reviews_creation(
        last: datetime.datetime | None, now: datetime.datetime,
        due: datetime.datetime | None) -> None:
    assert rc.due_run(review(), T0, last, now) == due


def test_a_runs_name_is_its_schedule_point_so_making_it_twice_finds_it_made() -> None:
    assert rc.run_name("quarterly", T0 + 90 * DAY) == "quarterly-20260401-000000"
    assert len(rc.run_name("x" * 253, T0)) == 253


@pytest.mark.parametrize(("changes", "message"), [
    ({"every": "10s"}, "every must be at least 30s"),
    ({"decideWithin": "4s"}, "decideWithin must be at least 5s"),
    ({"decideWithin": "3000h"}, "no longer than every"),
    ({"whenUndecided": "Remove"}, "whenUndecided"),
])
def test_a_review_policy_out_of_bounds_is_refused_saying_what_is_allowed(
        changes: dict[str, str], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        review(**changes)


def test_covered_eligibilities_are_those_named_that_exist_and_those_selected() -> None:
    assert rc.covered(["a", "gone"], {"a": False, "b": True, "c": False}) == ["a", "b"]


def test_a_snapshot_lists_each_subject_once_with_its_reviewers_and_deadline() -> None:
    spec = run()
    assert [s.id for s in spec.subjects] == [
        "payments/User/alice", "payments/User/bob", "payments/Group/oncall",
        "payments/ServiceAccount/ci/deployer"]
    assert spec.deadline == T0 + 14 * DAY
    assert spec.reviewers[0].users == ["carol"]  # the eligibility's approvers by default
    named = rc.snapshot(review(reviewers={"groups": ["auditors"]}), "q",
                        {"payments": eligibility(SUBJECTS)}, {}, [], T0)
    assert (named.reviewers[0].users, named.reviewers[0].groups) == ([], ["auditors"])


def test_recommendations_come_from_the_records_of_grants_under_that_eligibility() -> None:
    grants = [rc.Grant("payments", "Alice", (), T0 - 10 * DAY),
              rc.Grant("payments", "alice", (), T0 - 5 * DAY),
              rc.Grant("other", "bob", (), T0 - 1 * DAY),        # another eligibility
              rc.Grant("payments", "bob", (), T0 - 100 * DAY),   # outside 90 days
              rc.Grant("payments", "dave", ("oncall",), T0 - 2 * DAY)]
    by_id = {s.id: s for s in run(grants=grants).subjects}
    alice = by_id["payments/User/alice"]
    assert (alice.last_activated, alice.grants) == (T0 - 5 * DAY, 2)
    assert alice.recommendation == "used 2 time(s) in the review period"
    bob = by_id["payments/User/bob"]
    assert (bob.grants, bob.recommendation) == (0, "not used in 2160h")
    assert by_id["payments/Group/oncall"].grants == 1  # a member's grant counts for the group
    assert by_id["payments/ServiceAccount/ci/deployer"].recommendation == "never used in 2160h"
    short = rc.usage("payments", Subject(kind="User", name="erin"), [], T0, 90 * DAY, 90 * DAY,
                     records_since=T0 - 30 * DAY)
    assert short == (None, 0, "no grant in kubepim's records (they reach back 720h)")


@pytest.mark.parametrize(("reviewer", "groups", "subject", "refusal"), [
    ("carol", [], "payments/User/alice", None),
    ("Alice", ["leads"], "payments/User/alice", "nobody reviews their own eligibility"),
    ("dave", ["oncall", "leads"], "payments/Group/oncall", "nobody reviews their own"),
    ("system:serviceaccount:ci:deployer", ["leads"], "payments/ServiceAccount/ci/deployer",
     "nobody reviews their own"),
    ("dave", ["leads"], "payments/Group/oncall", None),       # a member of a reviewer group
    ("mallory", [], "payments/User/bob",
     "mallory is not a reviewer of RoleEligibility payments in this run: its reviewers are "
     "users [carol] and members of groups [leads]"),
])
def test_who_may_review_whom(reviewer: str, groups: list[str], subject: str,
                             refusal: str | None) -> None:
    spec = run(groups=["leads"])
    found = rc.may_review(spec, next(s for s in spec.subjects if s.id == subject), reviewer,
                          groups)
    if refusal is None:
        assert found is None
    else:
        assert found is not None and refusal in found


def _check(old: dict[str, ReviewerDecisions], new: dict[str, ReviewerDecisions],
           user: str = "carol", phase: str | None = "Open", now: datetime.datetime = T0,
           outcomes: dict[str, SubjectOutcome] | None = None) -> str | None:
    return rc.check_decisions(run(groups=["leads"]), phase, old, new, user, [], now,
                              outcomes or {})


def test_a_reviewer_adds_decisions_of_their_own_one_patch_at_a_time() -> None:
    first = {"carol": decided(User__alice="Keep")}
    assert _check({}, first) is None
    assert _check(first, {"carol": decided(User__alice="Keep", User__bob="Remove")}) is None


@pytest.mark.parametrize(("old", "new", "user", "phase", "now", "refusal"), [
    ({"dan": decided(User__bob="Keep")}, {"dan": decided(User__bob="Remove")}, "carol", "Open",
     T0, "only dan may change dan's decisions"),
    ({"carol": decided(User__bob="Keep")}, {"carol": decided(User__bob="Remove")}, "carol",
     "Open", T0, "a decision is final"),
    ({"carol": decided(User__bob="Keep")}, {}, "carol", "Open", T0, "may not be removed"),
    ({}, {"carol": decided(User__zed="Keep")}, "carol", "Open", T0,
     "payments/User/zed is not a subject of this run"),
    ({}, {"carol": decided(User__bob="Keep")}, "carol", "Open", T0 + 15 * DAY,
     "decisions are closed"),
    ({}, {"carol": decided(User__bob="Reinstate")}, "carol", "Open", T0,
     "Reinstate is for a subject this run removed"),
    ({}, {"bob": decided(User__bob="Keep")}, "bob", "Open", T0, "is not a reviewer"),
])
def test_a_reviewers_change_that_is_not_theirs_to_make_is_refused_saying_why(
        old: dict[str, ReviewerDecisions], new: dict[str, ReviewerDecisions], user: str,
        phase: str, now: datetime.datetime, refusal: str) -> None:
    found = _check(old, new, user, phase, now)
    assert found is not None and refusal in found, found


def test_reinstate_lifts_only_a_suspension_the_completed_run_made() -> None:
    done = {"payments/User/bob": SubjectOutcome(outcome="Removed", by=["carol"]),
            "payments/User/alice": SubjectOutcome(outcome="Kept", by=["carol"])}
    assert _check({}, {"carol": decided(User__bob="Reinstate")}, phase="Completed",
                  now=T0 + 20 * DAY, outcomes=done) is None
    refused = _check({}, {"carol": decided(User__alice="Reinstate")}, phase="Completed",
                     outcomes=done)
    assert refused is not None and "not suspended by this run" in refused


@pytest.mark.parametrize(("when", "expected"), [
    ("Suspend", {"payments/User/alice": ("Kept", ["carol"]),
                 "payments/User/bob": ("Removed", ["dave"]),
                 "payments/Group/oncall": ("Suspended", []),
                 "payments/ServiceAccount/ci/deployer": ("Suspended", [])}),
    ("Keep", {"payments/User/alice": ("Kept", ["carol"]),
              "payments/User/bob": ("Removed", ["dave"]),
              "payments/Group/oncall": ("Kept", []),
              "payments/ServiceAccount/ci/deployer": ("Kept", [])}),
])
def test_outcomes_a_remove_wins_and_the_undecided_get_the_reviews_default(
        when: str, expected: dict[str, tuple[str, list[str]]]) -> None:
    spec = run(when, groups=["leads"])
    decisions = {"carol": decided(User__alice="Keep", User__bob="Keep"),
                 "dave": decided(groups=["leads"], User__bob="Remove"),
                 # ignored: stamped for another run; a self-review; not a reviewer
                 "erin": decided(uid="run-0", groups=["leads"], Group__oncall="Keep"),
                 "alice": decided(groups=["leads"], User__alice="Keep"),
                 "mallory": decided(ServiceAccount__ci__deployer="Keep")}
    found = rc.outcomes(spec, "run-1", decisions)
    assert {k: (v.outcome, v.by) for k, v in found.items()} == expected
    assert rc.suspended(found) == sorted(k for k, v in expected.items() if v[0] != "Kept")


def test_a_run_completes_at_its_deadline_or_once_every_subject_is_decided() -> None:
    spec = run()
    some = {"carol": decided(User__alice="Keep")}
    assert not rc.complete(spec, "run-1", some, T0 + DAY)
    assert rc.complete(spec, "run-1", some, T0 + 14 * DAY)
    every = {"carol": decided(User__alice="Keep", User__bob="Remove", Group__oncall="Keep",
                              ServiceAccount__ci__deployer="Remove")}
    assert rc.complete(spec, "run-1", every, T0 + DAY)


def test_a_reinstatement_is_found_once_and_the_subject_leaves_the_suspended() -> None:
    spec = run()
    done = {"payments/User/bob": SubjectOutcome(outcome="Removed", by=["carol"])}
    decisions = {"carol": decided(User__bob="Reinstate")}
    assert rc.reinstated(spec, "run-1", decisions, done) == {"payments/User/bob": "carol"}
    after = {"payments/User/bob": SubjectOutcome(outcome="Removed", by=["carol"],
                                                 reinstated_by="carol")}
    assert rc.reinstated(spec, "run-1", decisions, after) == {}
    assert rc.suspended(after) == []


def test_a_suspended_subject_leaves_the_eligibility_the_cache_applies_until_lifted() -> None:
    from kubepim.api.common import RoleRef
    from kubepim.engine.state import State

    spec = eligibility(SUBJECTS).wire()
    suspended = {"suspended": [{"subject": {"kind": "User", "name": "bob"},
                                "run": "quarterly-20260401-000000",
                                "at": "2026-04-15T00:00:00Z", "outcome": "Removed"}]}
    state = State()
    state.apply_eligibility_list([{"metadata": {"name": "payments", "resourceVersion": "5"},
                                   "spec": spec, "status": suspended}], 5)
    applied = (state.eligibilities or {})["payments"]
    assert [s.name for s in applied.subjects] == ["alice", "oncall", "deployer"]
    note = rc.suspension_note(state.suspensions(), state.eligibilities or {}, "Bob", [],
                              RoleRef(kind="Role", name="admin"))
    assert note == ("bob is suspended from RoleEligibility payments by review run "
                    "quarterly-20260401-000000 (removed 2026-04-15T00:00:00+00:00)")
    assert rc.suspension_note(state.suspensions(), state.eligibilities or {}, "Bob", [],
                              RoleRef(kind="Role", name="other")) is None
    state.observe_eligibility("payments", spec, "6", {}, {"suspended": []})  # reinstated
    assert len((state.eligibilities or {})["payments"].subjects) == 4
    assert state.suspensions() == {}


def test_a_comment_with_control_characters_is_refused_by_the_webhooks_rule() -> None:
    entry = ReviewerDecisions.model_validate({"subjects": {"payments/User/bob": {
        "decision": "Remove", "comment": "moved\nFAKE LOG LINE"}}})
    refusal = _check({}, {"carol": entry})
    assert refusal is not None and "must not contain control characters" in refusal


def test_the_auditors_export_has_a_row_per_subject_with_decisions_and_outcome() -> None:
    from kubepim.api.accessreview import EligibilityReviewRun
    from kubepim.domain.report import REVIEW_COLUMNS, review_rows

    spec = run()
    body = EligibilityReviewRun.model_validate({"spec": spec.wire(), "status": {
        "phase": "Completed", "completedAt": (T0 + 14 * DAY).isoformat(),
        "decisions": {"carol": {"subjects": {"payments/User/bob": {
            "decision": "Remove", "comment": "=moved"}}, "runUid": "run-1"}},
        "outcomes": {"payments/User/bob": {"outcome": "Removed", "by": ["carol"]},
                     "payments/User/alice": {"outcome": "Suspended"}}}})
    rows = review_rows({"quarterly-1": body}, T0 - DAY, T0 + DAY)
    assert [tuple(row) for row in rows] == [REVIEW_COLUMNS] * 4
    bob = next(row for row in rows if row["subject"] == "bob")
    assert (bob["outcome"], bob["decisions"]) == ("Removed", "carol: Remove (=moved)")
    deployer = next(row for row in rows if row["subject_kind"] == "ServiceAccount")
    assert (deployer["subject"], deployer["outcome"]) == ("ci/deployer", "Open")
    assert review_rows({"quarterly-1": body}, T0 + DAY, T0 + 2 * DAY) == []  # out of range


def test_a_suspended_subject_nobody_vouches_for_stays_suspended_whatever_the_default() -> None:
    spec = rc.snapshot(review(whenUndecided="Keep"), "quarterly",
                       {"payments": eligibility(SUBJECTS)},
                       {"payments": ["payments/User/bob"]}, [], T0)
    found = rc.outcomes(spec, "run-1", {})
    assert found["payments/User/bob"].outcome == "Suspended"  # not lifted by the default
    assert found["payments/User/alice"].outcome == "Kept"
    kept = rc.outcomes(spec, "run-1", {"carol": decided(User__bob="Keep")})
    assert (kept["payments/User/bob"].outcome, kept["payments/User/bob"].by) == \
        ("Kept", ["carol"])  # a reviewer's Keep lifts it


def test_an_entry_without_a_decision_is_refused_so_nobody_fills_the_reviewer_slots() -> None:
    empty = ReviewerDecisions.model_validate({"subjects": {}})
    refusal = _check({}, {"mallory": empty}, user="mallory")
    assert refusal is not None and "holds no decision" in refusal


def test_a_suspension_holds_against_the_same_identity_spelled_another_way() -> None:
    from kubepim.engine.state import State

    spec = eligibility([{"kind": "User", "name": "alice"},
                        {"kind": "User", "name": "system:serviceaccount:ci:deployer"},
                        {"kind": "User", "name": "bob", "namespace": "anything"}]).wire()
    status = {"suspended": [
        {"subject": {"kind": "ServiceAccount", "namespace": "ci", "name": "deployer"},
         "run": "r", "at": "2026-04-15T00:00:00Z", "outcome": "Removed"},
        {"subject": {"kind": "User", "name": "bob"}, "run": "r", "at": "2026-04-15T00:00:00Z",
         "outcome": "Suspended"}]}
    state = State()
    state.apply_eligibility_list([{"metadata": {"name": "payments", "resourceVersion": "5"},
                                   "spec": spec, "status": status}], 5)
    assert [s.name for s in (state.eligibilities or {})["payments"].subjects] == ["alice"]


def test_completed_runs_are_the_record_of_who_stays_suspended() -> None:
    removed = SubjectOutcome(outcome="Removed", by=["carol"])
    kept = SubjectOutcome(outcome="Kept", by=["carol"])
    default = SubjectOutcome(outcome="Kept")
    again = removed.model_copy(update={"reinstated_by": "carol"})
    bob, alice = "payments/User/bob", "payments/User/alice"

    def made(started: int, flagged: tuple[str, ...] = ()) -> EligibilityReviewRunSpec:
        return rc.snapshot(review(), "q", {"payments": eligibility(SUBJECTS)},
                           {"payments": list(flagged)}, [], T0 + started * DAY)

    def fold(*runs: tuple[str, EligibilityReviewRunSpec, int, dict[str, SubjectOutcome]]
             ) -> dict[str, str]:
        found = rc.standing_suspensions(
            [(name, spec, T0 + day * DAY, outcomes) for name, spec, day, outcomes in runs],
            "payments")
        return {who[1]: entry.run for who, entry in found.items()}

    assert fold(("q1", made(0), 1, {bob: removed})) == {"bob": "q1"}
    # A later run that saw bob suspended: a reviewer's Keep lifts, the default does not.
    assert fold(("q1", made(0), 1, {bob: removed}),
                ("q2", made(2, (bob,)), 3, {bob: kept})) == {}
    assert fold(("q1", made(0), 1, {bob: removed}),
                ("q2", made(2, (bob,)), 3, {bob: default})) == {"bob": "q1"}
    # Two runs at once: A started before B removed bob; A's older Keep does not lift it, and
    # A's Remove does not rename it.
    assert fold(("B", made(1), 2, {bob: removed}), ("A", made(0), 3, {bob: kept})) == \
        {"bob": "B"}
    assert fold(("B", made(1), 2, {bob: removed}), ("A", made(0), 3, {bob: removed})) == \
        {"bob": "B"}
    # Reinstated on its run; a run completed after it started that removed bob again holds.
    assert fold(("q1", made(0), 1, {bob: again})) == {}
    assert fold(("q1", made(0), 1, {bob: removed}), ("q2", made(2, (bob,)), 3, {bob: again})) \
        == {}
    assert fold(("B", made(1), 2, {bob: removed}), ("A", made(0), 3, {bob: again})) == \
        {"bob": "B"}
    assert fold(("q1", made(0), 1, {alice: SubjectOutcome(outcome="Suspended")})) == \
        {"alice": "q1"}
    assert rc.standing_suspensions([("q1", made(0), T0, {bob: removed})], "other") == {}


def test_an_eligibility_made_again_gets_its_suspensions_back_from_the_record() -> None:
    import asyncio

    from kubepim.handlers.reconcile import Reconciler
    from kubepim.handlers.reviews import RESTORE, Reviews

    class Kube:
        def __init__(self) -> None:
            self.status: dict[str, Any] = {}
            self.writes = 0

        async def get_eligibility(self, name: str) -> dict[str, Any]:
            return {"metadata": {"name": name, "resourceVersion": "9"}, "status": self.status}

        async def patch_custom_status(self, plural: str, name: str, status: dict[str, Any],
                                      resource_version: str | None = None) -> dict[str, Any]:
            self.writes += 1
            self.status = {**self.status, **status}
            return {}

    async def scenario() -> None:
        kube = Kube()
        reconciler = Reconciler(kube)  # type: ignore[arg-type]
        reviews = Reviews(reconciler, datetime.timedelta(days=30))
        spec = run()
        body = {"metadata": {"name": "q1", "resourceVersion": "5"}, "spec": spec.wire(),
                "status": {"phase": "Completed", "completedAt": (T0 + DAY).isoformat(),
                           "outcomes": {"payments/User/bob": {"outcome": "Removed",
                                                              "by": ["carol"]}}}}
        reviews.observe_run(body)
        reviews._loaded_in_term = reconciler.term
        reviews.eligibility_changed("payments", "uid-2")  # made (again) under a new uid
        assert RESTORE + "payments" in reconciler.queue._dirty
        await reviews.restore("payments")
        assert [e["subject"]["name"] for e in kube.status["suspended"]] == ["bob"]
        await reviews.restore("payments")  # only adds: nothing more to write
        assert kube.writes == 1
        older = {**body, "metadata": {"name": "q1", "resourceVersion": "4"},
                 "status": {**body["status"], "outcomes": {}}}
        reviews.observe_run(older)  # an older copy (a listing) never replaces the newer one
        assert reviews._completed["q1"][2]

    asyncio.run(scenario())
