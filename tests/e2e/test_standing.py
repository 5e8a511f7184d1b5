"""``kubectl pim standing`` on the real control plane: privileged RBAC held outside kubepim,
ranked, and the RoleEligibility that would replace it (issue 16)."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import yaml

from tests.e2e import pim
from tests.e2e.support import Kubectl, OperatorProcess, poll
from tests.e2e.test_plugin import plugin


def test_standing_access_is_found_ranked_and_turned_into_an_eligibility(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str,
) -> None:
    # Seeded: cluster-admin for a user, secrets read for a group, pods/exec for a
    # ServiceAccount, and a kubepim grant of that same exec role in progress.
    mallory, ops = f"mallory-{namespace}", f"ops-{namespace}"
    kubectl("create", "role", "secret-reader", "--verb=get,list", "--resource=secrets",
            "-n", namespace)
    kubectl("create", "rolebinding", "secrets", "--role=secret-reader", f"--group={ops}",
            "-n", namespace)
    kubectl("create", "role", "pod-exec", "--verb=create", "--resource=pods/exec", "-n", namespace)
    kubectl("create", "serviceaccount", "deployer", "-n", namespace)
    kubectl("create", "rolebinding", "debug", "--role=pod-exec",
            f"--serviceaccount={namespace}:deployer", "-n", namespace)
    pim.apply(kubectl, pim.eligibility(namespace, **{
        "subjects": [{"kind": "User", "name": "alice"}, {"kind": "Group", "name": ops}],
        "roles": [{"kind": "Role", "name": "pod-exec"}, {"kind": "Role", "name": "secret-reader"}],
        "namespaces": [namespace], "approval": {"users": ["bob"]}}))
    pim.apply(kubectl, pim.access_request(
        namespace, role={"kind": "Role", "name": "pod-exec"}, namespace=namespace, duration="10m",
        justification="INC-7: debug a stuck pod"), as_user="alice")
    pim.approve(kubectl, namespace, "bob")
    grant = pim.wait_phase(kubectl, namespace, "Active")
    granted = grant["status"]["binding"]["name"]
    admins = f"standing-{namespace}"
    kubectl("create", "clusterrolebinding", admins, "--clusterrole=cluster-admin",
            f"--user={mallory}")
    # Counted (its Event follows the count): the count this test leaves behind is one less.
    poll(lambda: _warnings(kubectl, admins), timeout=10, what="the operator's Event")
    counted = _critical(operator)
    try:
        listed = plugin(kubectl, "standing", "-o", "json")
        assert listed.returncode == 0, listed.stderr
        mine = [f for f in json.loads(listed.stdout)
                if f["binding"].startswith(f"RoleBinding/{namespace}/")
                or f["subject"] == f"User/{mallory}"]
        assert [(f["subject"], f["binding"], f["severity"], f["rules"]) for f in mine] == [
            (f"User/{mallory}", f"ClusterRoleBinding/{admins}", "critical", ["wildcard-admin"]),
            (f"Group/{ops}", f"RoleBinding/{namespace}/secrets", "high", ["secrets-read"]),
            (f"ServiceAccount/{namespace}/deployer", f"RoleBinding/{namespace}/debug", "high",
             ["pods-exec"]),
        ]  # ranked; the live grant (its binding below) is not standing access
        assert not any(granted in f["binding"] for f in json.loads(listed.stdout))
        found = {f["subject"]: f for f in mine}
        assert found[f"User/{mallory}"] == {
            "subject": f"User/{mallory}", "binding": f"ClusterRoleBinding/{admins}",
            "role": "ClusterRole/cluster-admin", "scope": "cluster", "rules": ["wildcard-admin"],
            "severity": "critical", "resourceNames": [], "coveredBy": []}
        assert found[f"Group/{ops}"]["coveredBy"] == [namespace]  # could simply be removed
        assert found[f"ServiceAccount/{namespace}/deployer"]["coveredBy"] == []
        assert not any(s.startswith("Group/system:masters") for s in found)  # the control plane

        accepted = plugin(kubectl, "standing", "--accept", f"User/{mallory}", "-o", "json")
        assert accepted.returncode == 0, accepted.stderr
        assert not any(mallory in f["subject"] for f in json.loads(accepted.stdout))
        bad = plugin(kubectl, "standing", "--accept", mallory)
        assert bad.returncode == 2 and "User/NAME" in bad.stderr  # says what is allowed

        table = plugin(kubectl, "standing", "--min-severity", "critical")
        assert mallory in table.stdout and ops not in table.stdout
        gate = plugin(kubectl, "standing", "--subject", f"Group/{ops}", "--fail-on", "critical")
        assert gate.returncode == 0  # high only: passes a gate at critical
        gate = plugin(kubectl, "standing", "--subject", f"Group/{ops}", "--fail-on", "high")
        assert gate.returncode == 8 and ops in gate.stdout  # fails one at high

        manifest = plugin(kubectl, "standing", "--subject", f"User/{mallory}",
                          "-o", "eligibility")
        assert manifest.returncode == 0, manifest.stderr
        assert f"#   ClusterRoleBinding/{admins}" in manifest.stdout
        document = yaml.safe_load(manifest.stdout)
        assert document["spec"]["subjects"] == [{"kind": "User", "name": mallory}]
        assert document["spec"]["roles"] == [{"kind": "ClusterRole", "name": "cluster-admin"}]
        assert document["spec"]["clusterWide"] is True
        assert document["spec"]["allowPrivilegedRoles"] is True  # cluster-admin: deny-listed
        assert document["spec"]["approval"] == {"users": [], "groups": []}  # to fill in
        document["spec"]["approval"]["users"] = ["bob"]
        kubectl("apply", "--dry-run=server", "-f", "-", stdin=json.dumps(document))

        bad = plugin(kubectl, "standing", "--min-severity", "severe")
        assert bad.returncode == 2 and "critical" in bad.stderr  # says what is allowed
    finally:
        kubectl("delete", "clusterrolebinding", admins, "--ignore-not-found", check=False)
    assert counted is not None
    poll(lambda: _critical(operator) == counted - 1, timeout=10, what="the count back down")


def _warnings(kubectl: Kubectl, binding: str) -> list[dict[str, Any]] | None:
    """The StandingPrivilege Events about a ClusterRoleBinding (None: none yet)."""
    events = kubectl.json("get", "events", "-n", "default", "--field-selector",
                          f"involvedObject.name={binding},reason=StandingPrivilege")
    return list(events["items"]) or None


def _sample(operator: OperatorProcess, series: str) -> float | None:
    url = f"http://127.0.0.1:{operator.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(series + " "):
                return float(line.split()[1])
    return None


def _critical(operator: OperatorProcess) -> float | None:
    return _sample(operator, 'kubepim_standing_privileged_bindings{severity="critical"}')


def test_the_operator_counts_a_new_critical_binding_warns_once_and_counts_its_removal(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str,
) -> None:
    before = poll(lambda: _critical(operator), timeout=30, what="the first standing scan")
    appeared = _sample(operator, "kubepim_standing_critical_appeared_total")
    admins = f"standing-{namespace}"
    kubectl("create", "clusterrolebinding", admins, "--clusterrole=cluster-admin",
            f"--user=eve-{namespace}")
    try:
        # Seen by the operator's watch of foreign bindings, not the 10-minute scan.
        poll(lambda: _critical(operator) == before + 1, timeout=10,
             what="the critical count to rise by one")

        events = poll(lambda: _warnings(kubectl, admins), timeout=10,
                      what="the StandingPrivilege Warning Event")
        assert [e["type"] for e in events] == ["Warning"]
        assert f"User/eve-{namespace} holds ClusterRole/cluster-admin cluster-wide" in \
            events[0]["message"]
        lines = [json.loads(line.partition(" kubepim.audit ")[2])
                 for line in operator.log().splitlines() if " kubepim.audit " in line]
        told = [line for line in lines if line.get("binding") == f"ClusterRoleBinding/{admins}"]
        assert [(t["action"], t["subjects"]) for t in told] == [
            ("StandingPrivilege", [f"User/eve-{namespace}"])]
        assert appeared is not None  # new while the leader watched: the alert's counter
        assert _sample(operator, "kubepim_standing_critical_appeared_total") == appeared + 1

        # A change that does not touch who holds what is not told again.
        kubectl("label", "clusterrolebinding", admins, "team=platform")
        kubectl("delete", "clusterrolebinding", admins)
        poll(lambda: _critical(operator) == before, timeout=10,
             what="the critical count back where it was")
        assert len(_warnings(kubectl, admins) or []) == 1
    finally:
        kubectl("delete", "clusterrolebinding", admins, "--ignore-not-found", check=False)
