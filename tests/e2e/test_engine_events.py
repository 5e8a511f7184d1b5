"""The event path alone keeps grants right (issue 12): the suite's operator runs with the
product's 300 s resync, so none of these can be repaired by the safety net in time."""

from __future__ import annotations

import json
from typing import Any

from tests.e2e import pim
from tests.e2e.support import Kubectl, OperatorProcess, poll


def _selector_eligibility(kubectl: Kubectl, namespace: str) -> None:
    kubectl("label", "namespace", namespace, f"kubepim-e2e/{namespace[-6:]}=yes")
    kubectl("create", "role", "pod-reader", "--verb=get,list", "--resource=pods", "-n", namespace)
    pim.apply(kubectl, pim.eligibility(
        namespace, subjects=[{"kind": "User", "name": "alice"}],
        roles=[{"kind": "Role", "name": "pod-reader"}],
        namespaceSelector={"matchLabels": {f"kubepim-e2e/{namespace[-6:]}": "yes"}},
        approval={"users": ["bob"]}))


def _active(kubectl: Kubectl, namespace: str) -> dict[str, Any]:
    pim.apply(kubectl, pim.access_request(
        namespace, role={"kind": "Role", "name": "pod-reader"}, namespace=namespace,
        duration="10m", justification="debugging"), as_user="alice")
    pim.wait_phase(kubectl, namespace, "Pending")
    pim.approve(kubectl, namespace, "bob")
    return pim.wait_phase(kubectl, namespace, "Active")


def test_a_namespace_relabelled_out_of_the_selector_ends_the_grant_in_it(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    _selector_eligibility(kubectl, namespace)
    _active(kubectl, namespace)
    assert kubectl.can_i("list", "pods", as_user="alice", namespace=namespace)
    kubectl("label", "namespace", namespace, f"kubepim-e2e/{namespace[-6:]}-")
    revoked = pim.wait_phase(kubectl, namespace, "Revoked", timeout=5)
    assert "eligibility no longer covers this grant" in revoked["status"]["message"]
    assert not kubectl.can_i("list", "pods", as_user="alice", namespace=namespace)


def test_a_grant_ends_with_its_namespace_and_never_returns_in_one_made_again(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    pim.pod_reader_for_alice(kubectl, namespace)
    _active(kubectl, namespace)
    kubectl("delete", "namespace", namespace, "--wait=false")
    revoked = pim.wait_phase(kubectl, namespace, "Revoked", timeout=5)
    assert f"namespace {namespace} was deleted" in revoked["status"]["message"]
    assert "the operator may not bind" not in json.dumps(revoked["status"])
    poll(lambda: "NotFound" in kubectl("get", "namespace", namespace, check=False).stderr,
         timeout=60, what="the namespace gone")
    kubectl("create", "namespace", namespace)
    kubectl("create", "role", "pod-reader", "--verb=get,list", "--resource=pods", "-n", namespace)
    # The request is final: nothing is granted in the namespace of the same name.
    assert pim.phase_of(kubectl, namespace) == "Revoked"
    assert kubectl("get", "rolebindings", "-n", namespace, "-o", "name").stdout == ""
    assert not kubectl.can_i("list", "pods", as_user="alice", namespace=namespace)
