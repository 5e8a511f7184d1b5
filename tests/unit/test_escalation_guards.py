"""The pure guards of security round 2 (issue 11); the attacks themselves run in tests/e2e."""

from __future__ import annotations

import datetime
import logging

import pytest

from kubepim import logs
from kubepim.api.request import AccessRequestSpec, AccessRequestStatus, Phase, Requester
from kubepim.domain.admission import (
    acting_as,
    bind_checks,
    check_limits,
    check_metadata,
    privileged,
)
from kubepim.domain.lifecycle import decide
from kubepim.domain.quorum import person, tally
from kubepim.domain.report import spreadsheet_safe
from kubepim.domain.review import Accepted, Refused, review, role_key
from kubepim.handlers.limits import RequesterLimits

from .builders import NOW, PAYMENTS_LABELS, approve, deny, eligibility, request

# 1. Where an eligibility's author must be able to bind.


def test_a_namespace_selector_is_checked_as_cluster_wide_bind_rights() -> None:
    spec = eligibility(namespaces=[], namespaceSelector={"matchLabels": {"team": "payments"}})
    [check] = bind_checks(spec)
    assert check.namespace is None
    assert "namespaceSelector" in check.where


def test_every_listed_namespace_is_a_place_to_check_for_every_role() -> None:
    spec = eligibility(namespaces=["a", "b"], roles=[{"kind": "Role", "name": "x"},
                                                     {"kind": "ClusterRole", "name": "y"}])
    assert [(c.role.name, c.namespace) for c in bind_checks(spec)] == [
        ("x", "a"), ("x", "b"), ("y", "a"), ("y", "b")]


def test_cluster_wide_reaches_only_cluster_roles() -> None:
    spec = eligibility(namespaces=[], clusterWide=True,
                       roles=[{"kind": "ClusterRole", "name": "view"}])
    assert [(c.role.name, c.namespace, c.where) for c in bind_checks(spec)] == [
        ("view", None, "cluster-wide")]


def test_a_role_is_named_with_its_namespace_when_it_is_privileged() -> None:
    rules = [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]
    assert privileged("Role", "pod-reader", rules, "team-c") == \
        "Role/pod-reader grants the verb(s) * in namespace team-c"


# 10. A role that is privileged now is not granted without an explicit allow.

def test_a_role_privileged_now_is_refused_unless_the_eligibility_allows_it() -> None:
    spec = request()
    deny = {role_key(spec.role, spec.namespace): "Role/db-reader grants the verb(s) bind"}
    verdict = review(spec, {"team": eligibility()}, PAYMENTS_LABELS, privileged=deny)
    assert isinstance(verdict, Refused)
    assert verdict.message == ("Role/db-reader grants the verb(s) bind, which is on the "
                               "deny-list: RoleEligibility team does not set allowPrivilegedRoles")
    allowed = review(spec, {"team": eligibility(allowPrivilegedRoles=True)}, PAYMENTS_LABELS,
                     privileged=deny)
    assert isinstance(allowed, Accepted)


def test_a_privileged_role_elsewhere_does_not_refuse_this_one() -> None:
    spec = request()
    deny = {("Role", "other", "db-reader"): "Role/db-reader grants the verb(s) *"}
    assert isinstance(review(spec, {"team": eligibility()}, PAYMENTS_LABELS, privileged=deny),
                      Accepted)


def test_an_active_grant_whose_role_became_privileged_is_revoked() -> None:
    spec = request()
    deny = {role_key(spec.role, spec.namespace): "Role/db-reader grants the verb(s) escalate"}
    active = AccessRequestStatus(phase=Phase.ACTIVE, eligibility="team", activated_at=NOW,
                                 expires_at=NOW + datetime.timedelta(hours=1))
    plan = decide(spec, active, NOW, {"team": eligibility()}, PAYMENTS_LABELS, NOW,
                  privileged=deny)
    assert plan.phase is not None and plan.phase.value == "Revoked"
    assert "on the deny-list" in plan.transitions[0].message
    assert plan.binding == "absent"


# 2, 5, 8, 9. What a request may carry.

@pytest.mark.parametrize(("metadata", "name", "size", "message"), [
    pytest.param({"finalizers": ["orphan"]}, "r", 100, "metadata.finalizers",
                 id="a finalizer is refused"),
    pytest.param({"ownerReferences": [{"kind": "ConfigMap"}]}, "r", 100, "ownerReferences",
                 id="an owner reference is refused"),
    pytest.param({}, "r" * 246, 100, "at most 245 characters",
                 id="a name too long for an unshortened binding name is refused"),
    pytest.param({}, "r", 40_000, "may be at most 32768 bytes", id="a huge request is refused"),
])
def test_request_metadata_that_could_outlive_its_record_is_refused(
    metadata: dict[str, object], name: str, size: int, message: str
) -> None:
    refusal = check_metadata(name, metadata, size, 32768)
    assert refusal is not None and message in refusal


def test_plain_request_metadata_is_allowed() -> None:
    assert check_metadata("r" * 245, {"labels": {"a": "b"}}, 32768, 32768) is None


@pytest.mark.parametrize(("open_requests", "unreviewed", "break_glass", "message"), [
    pytest.param(20, 0, False, "alice has 20 open requests (Pending or Active); at most 20",
                 id="the open-request limit is reached"),
    pytest.param(3, 1, True, "alice has 1 break-glass grant(s) not yet reviewed; at most 1 is",
                 id="an unreviewed break-glass grant blocks another"),
    pytest.param(3, 1, False, None, id="an unreviewed break-glass grant does not block a request"),
    pytest.param(19, 0, True, None, id="below both limits"),
])
def test_limits_per_requester(open_requests: int, unreviewed: int, break_glass: bool,
                              message: str | None) -> None:
    refusal = check_limits("alice", [f"o{i}" for i in range(open_requests)],
                           [f"b{i}" for i in range(unreviewed)], break_glass, 20, 1)
    assert refusal == message or (message is not None and refusal is not None
                                  and message in refusal)


def _body(name: str, username: str, phase: str | None = None, break_glass: bool = False,
          review_required: bool = False) -> dict[str, object]:
    status: dict[str, object] = {"reviewRequired": review_required}
    if phase:
        status["phase"] = phase
    return {"metadata": {"name": name},
            "spec": {"breakGlass": break_glass, "requester": {"username": username}},
            "status": status}


def test_the_limits_index_counts_open_and_unreviewed_requests_whatever_the_spelling() -> None:
    limits = RequesterLimits("insensitive")
    limits.observe(_body("a", "alice", "Active"))
    limits.observe(_body("b", "Alice", "Pending"))
    limits.observe(_body("c", "alice", "Expired", break_glass=True, review_required=True))
    limits.observe(_body("d", "alice", "Expired"))
    counts = limits.counts("ALICE")
    assert (counts.open, counts.unreviewed_break_glass) == (("a", "b"), ("c",))
    limits.observe(_body("c", "alice", "Expired", break_glass=True, review_required=False))
    limits.forget("a")
    counts = limits.counts("alice")
    assert (counts.open, counts.unreviewed_break_glass) == (("b",), ())


def test_an_admitted_request_counts_before_its_watch_event() -> None:
    limits = RequesterLimits("sensitive")
    limits.admit("x", AccessRequestSpec.model_validate(
        {"role": {"kind": "Role", "name": "r"}, "namespace": "n", "breakGlass": True,
         "requester": {"username": "alice"}}))
    counts = limits.counts("alice")
    assert (counts.open, counts.unreviewed_break_glass) == (("x",), ("x",))
    limits.observe(_body("x", "alice", "Denied", break_glass=True))
    counts = limits.counts("alice")
    assert (counts.open, counts.unreviewed_break_glass) == ((), ())


def test_only_requests_created_earlier_count_against_a_new_one() -> None:
    limits = RequesterLimits("insensitive")
    for name, created in (("late", "2026-11-26T10:00:02Z"), ("early", "2026-11-26T10:00:01Z"),
                          ("same-b", "2026-11-26T10:00:03Z"), ("same-a", "2026-11-26T10:00:03Z")):
        body = _body(name, "alice")
        body["metadata"] = {"name": name, "creationTimestamp": created}
        limits.observe(body)
    assert limits.counts("alice", before=("2026-11-26T10:00:03Z", "same-b")).open == (
        "early", "late", "same-a")


# 12, 13. Who the requester could act as; one person under several spellings.

def test_acting_as_a_user_is_impersonating_them_or_approving_a_certificate() -> None:
    assert [c.says for c in acting_as("bob")] == [
        "impersonate users bob",
        "approve certificatesigningrequests (a client certificate in any name)"]


def test_acting_as_a_service_account_includes_its_tokens_and_its_pods() -> None:
    says = [c.says for c in acting_as("system:serviceaccount:ops:bot")]
    assert "create serviceaccounts/token for bot in namespace ops" in says
    assert "create pods (running as bot) in namespace ops" in says
    assert "create secrets (a token Secret for bot) in namespace ops" in says
    assert "impersonate serviceaccounts bot in namespace ops" in says
    assert "create deployments (whose pods run as bot) in namespace ops" in says
    assert "create pods/exec (into a pod running as bot) in namespace ops" in says


def test_a_denial_is_final_even_beside_an_approval_under_another_spelling() -> None:
    policy = eligibility(approval={"groups": ["sre"]}).approval
    approvals = {"Bob": approve("sre"), "bob": deny("sre")}
    result = tally(policy, approvals, Requester(username="alice"))
    assert result.denied_by == "bob"
    assert not result.approved


@pytest.mark.parametrize(("case", "name", "folded"), [
    ("insensitive", "Alice", "alice"),
    ("email", "Alice", "Alice"),
    ("email", "Alice@Example.com", "alice@example.com"),
    ("sensitive", "Alice@Example.com", "Alice@Example.com"),
])
def test_usernames_fold_as_configured(case: str, name: str, folded: str) -> None:
    assert person(name, case) == folded  # type: ignore[arg-type]


def test_one_person_counts_once_and_never_for_their_own_request_whatever_the_spelling() -> None:
    policy = eligibility(approval={"users": ["bob", "Bob", "ALICE"], "required": 2}).approval
    approvals = {"bob": approve(), "Bob": approve(), "ALICE": approve()}
    result = tally(policy, approvals, Requester(username="alice"))
    assert result.counted == ("Bob",)  # sorted: "Bob" before "bob"
    assert not result.approved
    assert set(result.ignored) == {"bob", "ALICE"}
    sensitive = tally(policy, approvals, Requester(username="alice"), case="sensitive")
    assert sensitive.approved


# 3, 7. One record, one line.

def test_a_log_record_never_spans_lines() -> None:
    formatter = logs.OneLineFormatter(logs.FORMAT)
    record = logging.LogRecord("kopf", logging.ERROR, __file__, 1,
                               'refused: x\n{"action": "Approved"}\x1b[2K\u202e', None, None)
    line = formatter.format(record)
    assert "\n" not in line and "\x1b" not in line and "\u202e" not in line
    assert line.endswith('refused: x\\n{"action": "Approved"}\\x1b[2K\\u202e')


# 11. CSV cells are text, never formulas.

@pytest.mark.parametrize(("value", "cell"), [
    ("=HYPERLINK(\"x\")", "'=HYPERLINK(\"x\")"), ("+1", "'+1"), ("-2", "'-2"),
    ("@SUM(1)", "'@SUM(1)"), ("\tx", "'\tx"), ("INC-1", "INC-1"), (True, True),
])
def test_spreadsheet_formula_starts_are_neutralised(value: object, cell: object) -> None:
    assert spreadsheet_safe({"c": value}) == {"c": cell}


def test_a_webhook_refusal_is_not_logged_as_an_error_by_kopf() -> None:
    refusals = logs.AdmissionRefusals(frozenset({"accessrequest-create"}))
    refusal = logging.LogRecord("kopf.objects", logging.ERROR, __file__, 1,
                                "Handler 'accessrequest-create' failed permanently: no", None,
                                None)
    failure = logging.LogRecord("kopf.objects", logging.ERROR, __file__, 1,
                                "Handler 'accessrequest-event' failed permanently: boom", None,
                                None)
    assert not refusals.filter(refusal)
    assert refusals.filter(failure)
