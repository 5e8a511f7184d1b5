"""The attacks of docs' threat model (shared/guide/SECURITY.md), each run as the attacker.

Every test impersonates the attacker, asserts the refusal message, and asserts that nothing
changed: no binding, no access, status untouched. Status-field forgeries are in
test_status_guard.py; requests outside the eligibility in test_request_refusals.py; the operator
killed mid-grant in test_grant_safety.py.
"""

from __future__ import annotations

import json
from typing import Any

from tests.e2e import pim
from tests.e2e.support import Kubectl, OperatorProcess, poll


def _eligibility(kubectl: Kubectl, namespace: str, **overrides: Any) -> None:
    pim.pod_reader_for_alice(kubectl, namespace, **{
        "maxDuration": "10m", "approval": {"users": ["bob", "carol"]}, **overrides})


def _request(kubectl: Kubectl, namespace: str, **identity: Any) -> None:
    pim.apply(kubectl, pim.access_request(
        namespace, role={"kind": "Role", "name": "pod-reader"}, namespace=namespace,
        duration="5m", justification="testing"), as_user="alice", **identity)
    pim.wait_phase(kubectl, namespace, "Pending")


def _nothing_granted(kubectl: Kubectl, namespace: str, who: str = "alice") -> None:
    assert kubectl("get", "rolebindings", "-n", namespace, "-o", "name").stdout == ""
    assert kubectl.can_i("list", "pods", as_user=who, namespace=namespace) is False


def test_creating_a_request_in_someone_elses_name_is_refused(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    _eligibility(kubectl, namespace)
    forged = pim.access_request(
        namespace, role={"kind": "Role", "name": "pod-reader"}, namespace=namespace,
        duration="5m", justification="for alice, honest", requester={"username": "alice"})
    result = kubectl("create", "-f", "-", stdin=json.dumps(forged), as_user="mallory",
                     check=False)
    assert result.returncode != 0
    assert "spec.requester must be omitted (it is set from your identity) or be exactly you: " \
        "mallory" in result.stderr
    assert "NotFound" in kubectl("get", "accessrequest", namespace, check=False).stderr
    _nothing_granted(kubectl, namespace)


def test_approving_your_own_request_is_refused(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    _eligibility(kubectl, namespace, approval={"users": ["alice", "bob"]})
    _request(kubectl, namespace)
    result = pim.approve(kubectl, namespace, "alice", check=False)
    assert result.returncode != 0
    assert "alice cannot decide on their own request" in result.stderr
    assert pim.get_request(kubectl, namespace)["status"].get("approvals", {}) == {}
    assert pim.phase_of(kubectl, namespace) == "Pending"
    _nothing_granted(kubectl, namespace)


def test_approving_your_own_request_under_a_second_identity_is_refused(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    # alice's admin account alice-adm is an approver; the identity provider gives both the
    # same uid (the person's subject id), which is how the alias is recognised.
    _eligibility(kubectl, namespace, approval={"users": ["alice-adm", "bob"]})
    _request(kubectl, namespace, uid="person-7f3a")
    result = pim.approve(kubectl, namespace, "alice-adm", uid="person-7f3a", check=False)
    assert result.returncode != 0
    assert "alice-adm has the same uid as the requester alice" in result.stderr
    assert pim.get_request(kubectl, namespace)["status"].get("approvals", {}) == {}
    _nothing_granted(kubectl, namespace)


def test_approving_without_being_an_approver_is_refused(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    _eligibility(kubectl, namespace, approval={"users": ["bob"], "groups": ["security"]})
    _request(kubectl, namespace)
    result = pim.approve(kubectl, namespace, "mallory", groups=("developers",), check=False)
    assert result.returncode != 0
    assert f"mallory is not an approver under RoleEligibility {namespace}: approvers are " \
        "users [bob] and members of groups [security]" in result.stderr
    assert pim.get_request(kubectl, namespace)["status"].get("approvals", {}) == {}
    _nothing_granted(kubectl, namespace)


def test_approving_twice_to_reach_a_two_person_quorum_is_refused(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    _eligibility(kubectl, namespace, approval={"users": ["bob", "carol"], "required": 2})
    _request(kubectl, namespace)
    pim.approve(kubectl, namespace, "bob")
    second = pim.approve(kubectl, namespace, "bob", key="carol", check=False)
    assert second.returncode != 0
    assert "bob may only add their own decision, under status.approvals[\"bob\"]" in \
        second.stderr
    poll(lambda: "1 more approval(s) of 2" in
         pim.get_request(kubectl, namespace)["status"]["message"], timeout=5,
         what="the request still waiting for a second person")
    assert set(pim.get_request(kubectl, namespace)["status"]["approvals"]) == {"bob"}
    _nothing_granted(kubectl, namespace)


def test_extending_an_active_grant_by_patching_its_expiry_is_refused(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    _eligibility(kubectl, namespace)
    _request(kubectl, namespace)
    pim.approve(kubectl, namespace, "bob")
    active = pim.wait_phase(kubectl, namespace, "Active")
    patch = {"status": {"expiresAt": "2099-01-01T00:00:00Z"}}
    result = kubectl("patch", "accessrequest", namespace, "--subresource=status",
                     "--type=merge", "-p", json.dumps(patch), as_user="alice", check=False)
    assert result.returncode != 0
    assert "only the kubepim operator writes the status of an AccessRequest" in result.stderr
    assert pim.get_request(kubectl, namespace)["status"]["expiresAt"] == \
        active["status"]["expiresAt"]


def test_changing_the_role_or_namespace_after_approval_is_refused(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    _eligibility(kubectl, namespace)
    _request(kubectl, namespace)
    pim.approve(kubectl, namespace, "bob")
    pim.wait_phase(kubectl, namespace, "Active")
    for change in ({"role": {"kind": "ClusterRole", "name": "admin"}},
                   {"namespace": "kube-system"}):
        result = kubectl("patch", "accessrequest", namespace, "--type=merge",
                         "-p", json.dumps({"spec": change}), as_user="alice", check=False)
        assert result.returncode != 0
        assert 'User "alice" cannot patch resource "accessrequests"' in result.stderr
        # ... and not even the admin can: the rule is in the schema.
        admin = kubectl("patch", "accessrequest", namespace, "--type=merge",
                        "-p", json.dumps({"spec": change}), check=False)
        assert "spec is immutable: withdraw this request and create a new one" in admin.stderr
    binding = kubectl.json("get", "rolebinding", f"kubepim-{namespace}", "-n", namespace)
    assert binding["roleRef"]["name"] == "pod-reader"
    assert kubectl.can_i("list", "pods", as_user="alice", namespace="kube-system") is False


def test_creating_an_eligibility_for_cluster_admin_without_bind_rights_is_refused(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    # mallory may manage eligibilities (e.g. a GitOps robot), but cannot bind cluster-admin.
    kubectl("create", "clusterrole", f"{namespace}-elig-editor", "--verb=create,update,get",
            "--resource=roleeligibilities.pim.kubepim.dev")
    kubectl("create", "clusterrolebinding", f"{namespace}-elig-editor",
            f"--clusterrole={namespace}-elig-editor", "--user=mallory")
    grab = pim.eligibility(namespace, subjects=[{"kind": "User", "name": "mallory"}],
                           roles=[{"kind": "ClusterRole", "name": "cluster-admin"}],
                           clusterWide=True, allowPrivilegedRoles=True,
                           approval={"users": ["mallory-friend"]})
    result = kubectl("create", "-f", "-", stdin=json.dumps(grab), as_user="mallory",
                     check=False)
    try:
        assert result.returncode != 0
        assert "mallory may not make ClusterRole/cluster-admin eligible cluster-wide: they " \
            "cannot bind it themselves" in result.stderr
        assert "NotFound" in kubectl("get", "roleeligibility", namespace, check=False).stderr
    finally:
        kubectl("delete", "clusterrolebinding", f"{namespace}-elig-editor")
        kubectl("delete", "clusterrole", f"{namespace}-elig-editor")


def test_an_eligibility_for_a_deny_listed_role_needs_an_explicit_allow(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    kubectl("create", "role", "binder", "--verb=bind", "--resource=roles", "-n", namespace)
    spec: dict[str, Any] = {"subjects": [{"kind": "User", "name": "alice"}],
                            "roles": [{"kind": "Role", "name": "binder"}],
                            "namespaces": [namespace], "approval": {"users": ["bob"]}}
    refused = kubectl("create", "-f", "-", stdin=json.dumps(pim.eligibility(namespace, **spec)),
                      check=False)
    assert refused.returncode != 0
    assert f"Role/binder grants the verb(s) bind in namespace {namespace}, which is on the " \
        "deny-list: set spec.allowPrivilegedRoles: true" in refused.stderr
    spec["allowPrivilegedRoles"] = True
    kubectl("create", "-f", "-", stdin=json.dumps(pim.eligibility(namespace, **spec)))


def _binding_editor(kubectl: Kubectl, namespace: str) -> None:
    """mallory administers RoleBindings in the namespace (but holds no pod access)."""
    kubectl("create", "role", "binding-editor", "--verb=get,list,update,patch,delete,create",
            "--resource=rolebindings", "-n", namespace)
    kubectl("create", "role", "role-binder", "--verb=bind", "--resource=roles", "-n", namespace)
    for role in ("binding-editor", "role-binder"):
        kubectl("create", "rolebinding", f"mallory-{role}", f"--role={role}", "--user=mallory",
                "-n", namespace)


def _active(kubectl: Kubectl, namespace: str) -> None:
    _eligibility(kubectl, namespace)
    _request(kubectl, namespace)
    pim.approve(kubectl, namespace, "bob")
    pim.wait_phase(kubectl, namespace, "Active")


def test_adding_yourself_to_the_operators_binding_is_undone(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    _binding_editor(kubectl, namespace)
    _active(kubectl, namespace)
    patch = [{"op": "add", "path": "/subjects/-", "value": {
        "kind": "User", "name": "mallory", "apiGroup": "rbac.authorization.k8s.io"}}]
    kubectl("patch", "rolebinding", f"kubepim-{namespace}", "-n", namespace, "--type=json",
            "-p", json.dumps(patch), as_user="mallory")
    poll(lambda: not kubectl.can_i("list", "pods", as_user="mallory", namespace=namespace),
         timeout=5, what="mallory's subject removed")
    binding = kubectl.json("get", "rolebinding", f"kubepim-{namespace}", "-n", namespace)
    assert [s["name"] for s in binding["subjects"]] == ["alice"]
    poll(lambda: "BindingRestored" in pim.event_reasons(kubectl, namespace), timeout=5,
         what="a BindingRestored event")


def test_deleting_the_operators_binding_gets_it_restored(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    _binding_editor(kubectl, namespace)
    _active(kubectl, namespace)
    kubectl("delete", "rolebinding", f"kubepim-{namespace}", "-n", namespace, as_user="mallory")
    poll(lambda: kubectl.can_i("list", "pods", as_user="alice", namespace=namespace),
         timeout=5, what="alice's grant restored")
    assert pim.phase_of(kubectl, namespace) == "Active"


def test_a_binding_mimicking_the_operators_marks_is_removed_not_adopted(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    _binding_editor(kubectl, namespace)
    kubectl("create", "role", "pod-reader", "--verb=get,list", "--resource=pods", "-n", namespace)
    mimic = {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "kubepim-forged", "namespace": namespace,
                     "labels": {"app.kubernetes.io/managed-by": "kubepim",
                                "pim.kubepim.dev/request": "forged"}},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                    "name": "pod-reader"},
        "subjects": [{"kind": "User", "name": "mallory",
                      "apiGroup": "rbac.authorization.k8s.io"}],
    }
    kubectl("create", "-f", "-", stdin=json.dumps(mimic), as_user="mallory")
    poll(lambda: "NotFound" in kubectl("get", "rolebinding", "kubepim-forged", "-n", namespace,
                                       check=False).stderr,
         timeout=10, what="forged binding removed")
    assert kubectl.can_i("list", "pods", as_user="mallory", namespace=namespace) is False


def test_with_the_operator_down_nothing_can_be_requested_or_approved(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    _eligibility(kubectl, namespace)
    _request(kubectl, namespace)
    operator.stop()

    second = pim.access_request(f"{namespace}-2", role={"kind": "Role", "name": "pod-reader"},
                                namespace=namespace, duration="5m", justification="again")
    created = kubectl("create", "-f", "-", stdin=json.dumps(second), as_user="alice",
                      check=False)
    assert created.returncode != 0
    assert 'failed calling webhook "accessrequest-create.pim.kubepim.dev"' in created.stderr
    approved = pim.approve(kubectl, namespace, "bob", check=False)
    assert approved.returncode != 0
    assert 'failed calling webhook "accessrequest-decide.pim.kubepim.dev"' in approved.stderr

    assert pim.get_request(kubectl, namespace)["status"].get("approvals", {}) == {}
    assert "NotFound" in kubectl("get", "accessrequest", f"{namespace}-2", check=False).stderr
    _nothing_granted(kubectl, namespace)
