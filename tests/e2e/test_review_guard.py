"""EligibilityReviewRuns are the operator's record: reviewers add only their own decisions,
stamped by the API server and final (the CEL policies of charts/kubepim/files/admission/review.yaml,
on the real control plane; docs/reviews.md)."""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterator

import pytest

from tests.e2e.support import Kubectl, OperatorProcess

OPERATOR = "system:serviceaccount:kubepim:kubepim"


def _run(name: str) -> dict[str, object]:
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    return {
        "apiVersion": "pim.kubepim.dev/v1alpha1", "kind": "EligibilityReviewRun",
        "metadata": {"name": name},
        "spec": {"review": "quarterly", "startedAt": now.isoformat(),
                 "deadline": (now + datetime.timedelta(hours=1)).isoformat(),
                 "whenUndecided": "Suspend",
                 "reviewers": [{"eligibility": "payments", "users": ["carol", "alice"]}],
                 "subjects": [
                     {"id": f"payments/User/{who}", "eligibility": "payments",
                      "subject": {"kind": "User", "name": who}}
                     for who in ("alice", "bob", "dave")]}}


@pytest.fixture
def run(kubectl: Kubectl, operator: OperatorProcess, namespace: str) -> Iterator[str]:
    """A run made as the operator (the only identity the policy lets make one); the operator
    records it (no review or eligibility of that name exists: nothing else happens)."""
    kubectl("create", "-f", "-", stdin=json.dumps(_run(namespace)), as_user=OPERATOR)
    yield namespace
    kubectl("delete", "eligibilityreviewrun", namespace, "--wait=false", check=False)


def _decide(kubectl: Kubectl, run: str, status: dict[str, object], user: str,
            groups: tuple[str, ...] = (), accepted: bool = True) -> str:
    result = kubectl("patch", "eligibilityreviewrun", run, "--subresource=status",
                     "--type=merge", "-p", json.dumps({"status": status}), as_user=user,
                     groups=groups, check=False)
    assert (result.returncode == 0) == accepted, result.stderr
    return result.stderr


def test_only_the_operator_makes_a_run_and_its_spec_never_changes(
        kubectl: Kubectl, operator: OperatorProcess, namespace: str) -> None:
    made = kubectl("create", "-f", "-", stdin=json.dumps(_run(namespace)), check=False)
    assert made.returncode != 0  # not even the cluster's admin
    assert "made by the kubepim operator when an EligibilityReview is due" in made.stderr
    kubectl("create", "-f", "-", stdin=json.dumps(_run(namespace)), as_user=OPERATOR)
    try:
        changed = kubectl("patch", "eligibilityreviewrun", namespace, "--type=merge", "-p",
                          json.dumps({"spec": {"whenUndecided": "Keep"}}), check=False)
        assert changed.returncode != 0 and "spec never changes" in changed.stderr
        stored = kubectl.json("get", "eligibilityreviewrun", namespace)
        assert stored["spec"]["whenUndecided"] == "Suspend"
    finally:
        kubectl("delete", "eligibilityreviewrun", namespace, "--wait=false", check=False)


def test_a_reviewers_decisions_are_stamped_by_the_api_server_and_final(
        kubectl: Kubectl, run: str) -> None:
    # carol claims a group she is not in: the API server writes the groups she has.
    _decide(kubectl, run, {"decisions": {"carol": {
        "subjects": {"payments/User/alice": {"decision": "Keep", "comment": "on the team"}},
        "groups": ["security"]}}}, "carol")
    stored = kubectl.json("get", "eligibilityreviewrun", run)
    entry = stored["status"]["decisions"]["carol"]
    assert entry["groups"] == ["system:authenticated"]
    assert entry["runUid"] == stored["metadata"]["uid"]

    # another subject later: accepted; the same subject changed: refused.
    _decide(kubectl, run, {"decisions": {"carol": {"subjects": {
        "payments/User/bob": {"decision": "Remove"}}}}}, "carol")
    error = _decide(kubectl, run, {"decisions": {"carol": {"subjects": {
        "payments/User/alice": {"decision": "Remove"}}}}}, "carol", accepted=False)
    assert "a decision once given is final" in error

    error = _decide(kubectl, run, {"decisions": {"carol": {"subjects": {
        "payments/User/alice": {"decision": "Remove"}}}}}, "alice", accepted=False)
    assert "alice may only add their own decisions" in error
    error = _decide(kubectl, run, {"decisions": {"carol": None}}, "carol", accepted=False)
    assert "cannot be removed" in error
    error = _decide(kubectl, run, {"message": "all fine"}, "carol", accepted=False)
    assert "only the kubepim operator writes the status of an EligibilityReviewRun" in error

    # The webhook: who may decide on whom.
    error = _decide(kubectl, run, {"decisions": {"mallory": {"subjects": {
        "payments/User/bob": {"decision": "Keep"}}}}}, "mallory", accepted=False)
    assert "mallory is not a reviewer of RoleEligibility payments in this run: its reviewers " \
        "are users [carol, alice]" in error
    error = _decide(kubectl, run, {"decisions": {"alice": {"subjects": {
        "payments/User/alice": {"decision": "Keep"}}}}}, "alice", accepted=False)
    assert "nobody reviews their own eligibility" in error
    error = _decide(kubectl, run, {"decisions": {"carol": {"subjects": {
        "payments/User/zed": {"decision": "Keep"}}}}}, "carol", accepted=False)
    assert "payments/User/zed is not a subject of this run" in error
    _decide(kubectl, run, {"decisions": {"alice": {"subjects": {
        "payments/User/bob": {"decision": "Keep"}}}}}, "alice")

    after = kubectl.json("get", "eligibilityreviewrun", run)["status"]
    assert after["decisions"]["carol"]["subjects"] == {
        "payments/User/alice": {"decision": "Keep", "comment": "on the team"},
        "payments/User/bob": {"decision": "Remove"}}
    assert after["decisions"]["alice"]["subjects"] == {"payments/User/bob": {"decision": "Keep"}}
    assert "mallory" not in after["decisions"]
    assert after.get("message") != "all fine"
    assert after["phase"] == "Open"  # (the operator's: dave is still undecided)
