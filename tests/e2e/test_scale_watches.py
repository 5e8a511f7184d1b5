"""Only the operator's own work reaches it (issue 13): label-selected binding watches and a
field-selected request watch, counted through the operator's metrics, not timed."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

from tests.e2e import pim
from tests.e2e.support import Kubectl, OperatorProcess, poll


def _counted(operator: OperatorProcess, resource: str) -> float:
    url = f"http://127.0.0.1:{operator.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    prefix = f'kubepim_watch_events_total{{resource="{resource}"}} '
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(prefix))


def _active(kubectl: Kubectl, namespace: str, duration: str = "10m") -> dict[str, Any]:
    pim.pod_reader_for_alice(kubectl, namespace)
    pim.apply(kubectl, pim.access_request(
        namespace, role={"kind": "Role", "name": "pod-reader"}, namespace=namespace,
        duration=duration, justification="scale: watched"), as_user="alice")
    pim.wait_phase(kubectl, namespace, "Pending")
    pim.approve(kubectl, namespace, "bob")
    return pim.wait_phase(kubectl, namespace, "Active")


def test_a_binding_whose_labels_are_stripped_leaves_the_watch_and_is_restored(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    binding = _active(kubectl, namespace)["status"]["binding"]["name"]
    kubectl("label", "rolebinding", binding, "-n", namespace,
            "app.kubernetes.io/managed-by-", "pim.kubepim.dev/request-")

    def restored() -> dict[str, Any] | None:
        found = kubectl("get", "rolebinding", binding, "-n", namespace, "-o", "json",
                        check=False)
        if found.returncode != 0:
            return None
        body: dict[str, Any] = json.loads(found.stdout)
        labels = body["metadata"].get("labels") or {}
        return body if labels.get("app.kubernetes.io/managed-by") == "kubepim" else None

    poll(restored, timeout=10, what="the stripped binding restored with its labels")
    actions = [action for action, _ in pim.history(pim.get_request(kubectl, namespace))]
    assert actions[-1] == "BindingRestored"
    assert kubectl.can_i("list", "pods", as_user="alice", namespace=namespace)


def test_foreign_rolebinding_changes_never_reach_the_operator(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    before = _counted(operator, "rolebindings")
    for n in range(20):  # created, changed and deleted: 60 changes kubepim has no part in
        kubectl("create", "rolebinding", f"team-{n}", "--clusterrole=view", f"--user=u{n}",
                "-n", namespace)
        kubectl("label", "rolebinding", f"team-{n}", "-n", namespace, "edited=yes")
        kubectl("delete", "rolebinding", f"team-{n}", "-n", namespace)
    # A binding with kubepim's label after them: once its event is counted, every earlier change
    # would have been delivered too (a watch delivers in resourceVersion order).
    kubectl("create", "rolebinding", "mimic", "--clusterrole=view", "--user=mallory",
            "-n", namespace)
    kubectl("label", "rolebinding", "mimic", "-n", namespace,
            "app.kubernetes.io/managed-by=kubepim")
    poll(lambda: _counted(operator, "rolebindings") > before, timeout=10,
         what="the labelled binding's watch event")
    # The mimic is removed (no live grant behind it): its DELETED may be counted too.
    poll(lambda: kubectl("get", "rolebinding", "mimic", "-n", namespace,
                         check=False).returncode != 0, timeout=10, what="the mimic removed")
    assert _counted(operator, "rolebindings") - before <= 2  # never the 60 foreign changes


def test_a_finished_request_is_settled_and_leaves_the_operators_watch(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    _active(kubectl, namespace)
    pim.act(kubectl, namespace, "alice", "End", "done")
    poll(lambda: pim.get_request(kubectl, namespace)["status"].get("settled") is True,
         timeout=10, what="the ended request settled")
    body = pim.get_request(kubectl, namespace)
    assert body["status"]["phase"] == "Revoked"
    assert [action for action, _ in pim.history(body)][-1] == "Revoked"  # one entry, no other
    unsettled = kubectl("get", "accessrequests", "--field-selector", "status.settled!=true",
                        "-o", "name").stdout.split()
    assert f"accessrequest.pim.kubepim.dev/{namespace}" not in unsettled
    settled = kubectl("get", "accessrequests", "--field-selector", "status.settled=true",
                      "-o", "name").stdout.split()
    assert f"accessrequest.pim.kubepim.dev/{namespace}" in settled
    # A user's own filters work too (the CRD's other selectable fields).
    mine = kubectl("get", "accessrequests", "--field-selector",
                   "spec.requester.username=alice,status.phase=Revoked", "-o", "name").stdout
    assert f"accessrequest.pim.kubepim.dev/{namespace}" in mine
