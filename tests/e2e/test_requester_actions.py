"""Requesters withdraw and end their own requests; approvers and RBAC-allowed admins revoke."""

from __future__ import annotations

from tests.e2e import pim
from tests.e2e.support import Kubectl, OperatorProcess, poll


def _pending(kubectl: Kubectl, namespace: str) -> None:
    pim.pod_reader_for_alice(kubectl, namespace, maxDuration="10m")
    pim.apply(kubectl, pim.access_request(
        namespace, role={"kind": "Role", "name": "pod-reader"}, namespace=namespace,
        duration="5m", justification="testing"), as_user="alice")
    pim.wait_phase(kubectl, namespace, "Pending")


def _active(kubectl: Kubectl, namespace: str) -> None:
    _pending(kubectl, namespace)
    pim.approve(kubectl, namespace, "bob")
    pim.wait_phase(kubectl, namespace, "Active")
    assert kubectl.can_i("list", "pods", as_user="alice", namespace=namespace)


def test_requester_withdraws_a_pending_request(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    _pending(kubectl, namespace)
    pim.act(kubectl, namespace, "alice", "Withdraw", "fixed it myself")
    withdrawn = pim.wait_phase(kubectl, namespace, "Withdrawn")
    assert pim.history(withdrawn)[-1] == ("Withdrawn", "alice")
    late = pim.approve(kubectl, namespace, "bob", check=False)
    assert "the request is Withdrawn: approvals are closed" in late.stderr
    assert not kubectl.can_i("list", "pods", as_user="alice", namespace=namespace)


def test_someone_else_cannot_withdraw_a_request(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    _pending(kubectl, namespace)
    result = pim.act(kubectl, namespace, "mallory", "Withdraw", check=False)
    assert result.returncode != 0
    assert "only the requester (alice) can withdraw this request" in result.stderr
    assert pim.phase_of(kubectl, namespace) == "Pending"


def test_requester_ends_an_active_grant_early(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    _active(kubectl, namespace)
    pim.act(kubectl, namespace, "alice", "End", "done")
    poll(lambda: not kubectl.can_i("list", "pods", as_user="alice", namespace=namespace),
         timeout=5, what="access gone after ending early")
    ended = pim.wait_phase(kubectl, namespace, "Revoked")
    assert ended["status"]["message"] == "ended early by alice: done"


def test_an_approver_revokes_an_active_grant_with_a_reason(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    _active(kubectl, namespace)
    no_reason = pim.act(kubectl, namespace, "bob", "Revoke", check=False)
    assert "a revocation needs a reason" in no_reason.stderr
    pim.act(kubectl, namespace, "bob", "Revoke", "suspicious activity")
    poll(lambda: not kubectl.can_i("list", "pods", as_user="alice", namespace=namespace),
         timeout=5, what="access revoked")
    revoked = pim.wait_phase(kubectl, namespace, "Revoked")
    assert pim.history(revoked)[-1] == ("Revoked", "bob")
    assert revoked["status"]["message"] == "revoked by bob: suspicious activity"


def test_revoking_needs_to_be_an_approver_or_hold_the_revoke_verb(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    _active(kubectl, namespace)
    refused = pim.act(kubectl, namespace, "mallory", "Revoke", "because", check=False)
    assert "mallory may not revoke this request" in refused.stderr
    assert pim.phase_of(kubectl, namespace) == "Active"

    role = f"{namespace}-revoker"
    kubectl("create", "clusterrole", role, "--verb=revoke",
            "--resource=accessrequests.pim.kubepim.dev")
    kubectl("create", "clusterrolebinding", role, f"--clusterrole={role}", "--user=oncall")
    try:
        pim.act(kubectl, namespace, "oncall", "Revoke", "incident closed")
        pim.wait_phase(kubectl, namespace, "Revoked")
        assert not kubectl.can_i("list", "pods", as_user="alice", namespace=namespace)
    finally:
        kubectl("delete", "clusterrolebinding", role)
        kubectl("delete", "clusterrole", role)
