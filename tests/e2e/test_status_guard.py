"""Only the operator writes an AccessRequest's status; approvers add only their own decision."""

from __future__ import annotations

import json

from tests.e2e import pim
from tests.e2e.support import Kubectl, OperatorProcess


def _pending_request(kubectl: Kubectl, namespace: str, **approval: object) -> None:
    pim.pod_reader_for_alice(kubectl, namespace, maxDuration="10m",
                             approval={"users": ["bob", "carol"], **approval})
    pim.apply(kubectl, pim.access_request(
        namespace, role={"kind": "Role", "name": "pod-reader"}, namespace=namespace,
        duration="5m", justification="testing"), as_user="alice")
    pim.wait_phase(kubectl, namespace, "Pending")


def _patch_status(kubectl: Kubectl, name: str, status: dict[str, object], user: str,
                  groups: tuple[str, ...] = ()) -> str:
    result = kubectl("patch", "accessrequest", name, "--subresource=status", "--type=merge",
                     "-p", json.dumps({"status": status}), as_user=user, groups=groups,
                     check=False)
    assert result.returncode != 0, f"{user}'s status patch was accepted"
    return result.stderr


def test_requester_cannot_mark_their_own_request_active(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    _pending_request(kubectl, namespace)
    before = pim.get_request(kubectl, namespace)["status"]
    error = _patch_status(kubectl, namespace, {"phase": "Active",
                                               "expiresAt": "2099-01-01T00:00:00Z"}, "alice")
    assert "only the kubepim operator writes the status of an AccessRequest" in error
    assert pim.get_request(kubectl, namespace)["status"] == before
    assert kubectl.can_i("list", "pods", as_user="alice", namespace=namespace) is False


def test_nobody_can_add_a_decision_in_someone_elses_name(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    _pending_request(kubectl, namespace)
    error = _patch_status(kubectl, namespace,
                          {"approvals": {"bob": {"decision": "Approve"}}}, "alice")
    assert "alice may only add their own decision" in error
    assert pim.get_request(kubectl, namespace)["status"].get("approvals", {}) == {}
    assert pim.phase_of(kubectl, namespace) == "Pending"


def test_a_decision_once_given_cannot_be_changed_or_removed(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    _pending_request(kubectl, namespace, required=2)
    pim.approve(kubectl, namespace, "bob")
    error = _patch_status(kubectl, namespace,
                          {"approvals": {"bob": {"decision": "Deny"}}}, "bob")
    assert "a decision" in error and "is final" in error
    error = _patch_status(kubectl, namespace, {"approvals": {"bob": None}}, "bob")
    assert "cannot be removed" in error
    assert pim.get_request(kubectl, namespace)["status"]["approvals"]["bob"]["decision"] == \
        "Approve"


def test_approval_groups_come_from_the_api_server_not_from_the_approver(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    _pending_request(kubectl, namespace, groups=["security"], requiredFromGroup="security")
    # bob claims membership of security in the entry, but is not in it.
    patch = {"status": {"approvals": {"bob": {"decision": "Approve", "groups": ["security"]}}}}
    kubectl("patch", "accessrequest", namespace, "--subresource=status", "--type=merge",
            "-p", json.dumps(patch), as_user="bob")
    entry = pim.get_request(kubectl, namespace)["status"]["approvals"]["bob"]
    assert entry["groups"] == ["system:authenticated"]
    assert pim.phase_of(kubectl, namespace) == "Pending"

    pim.approve(kubectl, namespace, "carol", groups=("security",))
    active = pim.wait_phase(kubectl, namespace, "Active")
    assert active["status"]["approvals"]["carol"]["groups"] == ["security",
                                                               "system:authenticated"]


def test_an_approver_cannot_write_a_grants_activity(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    # status.activity feeds the idle timeout and the audit record: only the operator's sink.
    _pending_request(kubectl, namespace)
    before = pim.get_request(kubectl, namespace)["status"]
    error = _patch_status(kubectl, namespace, {"activity": {
        "requests": 5, "lastUse": "2099-01-01T00:00:00Z"}}, "bob")
    assert "only the kubepim operator writes the status of an AccessRequest" in error
    assert pim.get_request(kubectl, namespace)["status"] == before
