"""``kubectl pim standing`` on the real control plane: privileged RBAC held outside kubepim,
ranked, and the RoleEligibility that would replace it (issue 16)."""

from __future__ import annotations

import json

import yaml

from tests.e2e import pim
from tests.e2e.support import Kubectl, OperatorProcess
from tests.e2e.test_plugin import plugin


def test_standing_access_is_found_ranked_and_turned_into_an_eligibility(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str,
) -> None:
    mallory, dora = f"mallory-{namespace}", f"dora-{namespace}"
    kubectl("create", "role", "exec", "--verb=create", "--resource=pods/exec", "-n", namespace)
    kubectl("create", "rolebinding", "debug", "--role=exec", f"--user={dora}", "-n", namespace)
    pim.apply(kubectl, pim.eligibility(namespace, **{
        "subjects": [{"kind": "User", "name": dora}], "roles": [{"kind": "Role", "name": "exec"}],
        "namespaces": [namespace], "approval": {"users": ["bob"]}}))
    admins = f"standing-{namespace}"
    kubectl("create", "clusterrolebinding", admins, "--clusterrole=cluster-admin",
            f"--user={mallory}")
    try:
        listed = plugin(kubectl, "standing", "-o", "json")
        assert listed.returncode == 0, listed.stderr
        found = {f["subject"]: f for f in json.loads(listed.stdout)}
        assert found[f"User/{mallory}"] == {
            "subject": f"User/{mallory}", "binding": f"ClusterRoleBinding/{admins}",
            "role": "ClusterRole/cluster-admin", "scope": "cluster", "rules": ["wildcard-admin"],
            "severity": "critical", "resourceNames": [], "coveredBy": []}
        assert found[f"User/{dora}"]["rules"] == ["pods-exec"]
        assert found[f"User/{dora}"]["severity"] == "high"
        assert found[f"User/{dora}"]["coveredBy"] == [namespace]  # could simply be removed
        assert not any(s.startswith("Group/system:masters") for s in found)  # the control plane

        table = plugin(kubectl, "standing", "--min-severity", "critical")
        assert mallory in table.stdout and dora not in table.stdout
        gate = plugin(kubectl, "standing", "--subject", f"User/{dora}", "--fail-on", "critical")
        assert gate.returncode == 0  # high only: passes a gate at critical
        gate = plugin(kubectl, "standing", "--subject", f"User/{dora}", "--fail-on", "high")
        assert gate.returncode == 8 and dora in gate.stdout  # fails one at high

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
