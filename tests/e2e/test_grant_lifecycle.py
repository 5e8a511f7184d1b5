"""A grant from request to expiry, proven by the API server's own authorizer (can-i as alice)."""

from __future__ import annotations

import datetime

from tests.e2e import pim
from tests.e2e.support import Kubectl, OperatorProcess, poll


def _pod_reader(kubectl: Kubectl, namespace: str) -> None:
    kubectl("create", "role", "pod-reader", "--verb=get,list", "--resource=pods", "-n", namespace)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def test_approved_request_grants_the_role_until_expiry_and_then_nothing(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    _pod_reader(kubectl, namespace)
    pim.apply(kubectl, pim.eligibility(
        namespace, subjects=[{"kind": "User", "name": "alice"}],
        roles=[{"kind": "Role", "name": "pod-reader"}], namespaces=[namespace],
        maxDuration="30s", defaultDuration="10s", approval={"users": ["bob"]}))
    pim.apply(kubectl, pim.access_request(
        namespace, role={"kind": "Role", "name": "pod-reader"}, namespace=namespace,
        duration="6s", justification="INC-42: pods crash-looping"), as_user="alice")

    pim.wait_phase(kubectl, namespace, "Pending")
    assert kubectl.can_i("list", "pods", as_user="alice", namespace=namespace) is False

    pim.approve(kubectl, namespace, "bob")
    poll(lambda: kubectl.can_i("list", "pods", as_user="alice", namespace=namespace),
         timeout=2, what="alice allowed within 2 s of approval")
    active = pim.wait_phase(kubectl, namespace, "Active")
    assert kubectl.can_i("delete", "pods", as_user="alice", namespace=namespace) is False
    assert kubectl.can_i("list", "pods", as_user="alice", namespace="default") is False
    expiry = pim.expires_at(active)
    activated = datetime.datetime.fromisoformat(
        active["status"]["activatedAt"].replace("Z", "+00:00"))
    assert expiry - activated == datetime.timedelta(seconds=6)

    seconds_left = (expiry - _now()).total_seconds()
    poll(lambda: not kubectl.can_i("list", "pods", as_user="alice", namespace=namespace),
         timeout=seconds_left + 2, what="alice denied within 2 s of expiry")
    assert _now() <= expiry + datetime.timedelta(seconds=2)

    expired = pim.wait_phase(kubectl, namespace, "Expired")
    assert pim.history(expired) == [
        ("Requested", "alice"), ("Approved", "bob"), ("Activated", "kubepim"),
        ("Expired", "kubepim")]
    binding = kubectl("get", "rolebinding", f"kubepim-{namespace}", "-n", namespace, check=False)
    assert "NotFound" in binding.stderr

    table = kubectl("get", "accessrequests").stdout.splitlines()
    assert table[0].split() == ["NAME", "REQUESTER", "ROLE", "NAMESPACE", "PHASE", "EXPIRES",
                                "AGE"]
    row = next(line.split() for line in table if line.startswith(namespace + " "))
    assert row[1:5] == ["alice", "pod-reader", namespace, "Expired"]

    poll(lambda: pim.event_reasons(kubectl, namespace) == [
        "Requested", "Approved", "Activated", "Expired"], timeout=10,
        what="events Requested, Approved, Activated, Expired in order")


def test_cluster_wide_request_grants_a_cluster_role_binding_until_expiry(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    role = "kubepim-e2e-ns-reader"  # in tools/dev-values.yaml's bindableRoles
    kubectl("delete", "clusterrole", role, "--ignore-not-found")
    kubectl("create", "clusterrole", role, "--verb=get,list", "--resource=namespaces")
    pim.apply(kubectl, pim.eligibility(
        namespace, subjects=[{"kind": "Group", "name": "sre"}],
        roles=[{"kind": "ClusterRole", "name": role}], clusterWide=True,
        maxDuration="1m", approval={"users": ["bob"]}))
    pim.apply(kubectl, pim.access_request(
        namespace, role={"kind": "ClusterRole", "name": role}, duration="5s",
        justification="audit namespaces"), as_user="alice", groups=["sre"])
    pim.wait_phase(kubectl, namespace, "Pending")
    assert kubectl.can_i("list", "namespaces", as_user="alice") is False

    pim.approve(kubectl, namespace, "bob")
    poll(lambda: kubectl.can_i("list", "namespaces", as_user="alice"), timeout=2,
         what="alice allowed cluster-wide within 2 s")
    active = pim.wait_phase(kubectl, namespace, "Active")
    assert active["status"]["binding"] == {"kind": "ClusterRoleBinding",
                                           "name": f"kubepim-{namespace}"}
    crb = kubectl.json("get", "clusterrolebinding", f"kubepim-{namespace}")
    assert crb["subjects"] == [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                                "name": "alice"}]
    assert crb["metadata"]["ownerReferences"][0]["kind"] == "AccessRequest"

    seconds_left = (pim.expires_at(active) - _now()).total_seconds()
    poll(lambda: not kubectl.can_i("list", "namespaces", as_user="alice"),
         timeout=seconds_left + 2, what="alice denied cluster-wide within 2 s of expiry")
    pim.wait_phase(kubectl, namespace, "Expired")
    kubectl("delete", "clusterrole", role)
