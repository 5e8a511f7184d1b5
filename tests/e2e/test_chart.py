"""The Helm chart lints, renders, is accepted by the real API server, and its RBAC is minimal."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubepim.devcluster import binaries
from tests.e2e import pim
from tests.e2e.support import Kubectl, OperatorProcess, poll

CHART = Path(__file__).resolve().parents[2] / "charts" / "kubepim"
DEV_VALUES = CHART.parents[1] / "tools" / "dev-values.yaml"


def _helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(binaries.ensure().helm), *args], capture_output=True, text=True,
                          timeout=120, check=False)


def _documents(*values: str) -> list[dict[str, Any]]:
    result = _helm("template", "kubepim", str(CHART), "--namespace", "kubepim", *values)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def test_chart_passes_helm_lint() -> None:
    result = _helm("lint", str(CHART), "--strict", "-f", str(DEV_VALUES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout


def test_values_outside_the_schema_are_refused_with_a_message() -> None:
    result = _helm("template", "kubepim", str(CHART), "--set", "replicas=0")
    assert result.returncode != 0
    assert "replicas" in result.stderr and "minimum" in result.stderr


def test_default_render_is_accepted_by_the_api_server(kubectl: Kubectl, installed: Path) -> None:
    documents = [d for d in _documents() if d["kind"] != "ValidatingWebhookConfiguration"]
    webhook = [d for d in _documents() if d["kind"] == "ValidatingWebhookConfiguration"]
    # The operator of this suite writes its own configuration named kubepim; apply would merge
    # the chart's into it, so the chart's is checked under another name.
    webhook[0]["metadata"]["name"] = "kubepim-chart-check"
    kinds = {d["kind"] for d in documents}
    assert {"Deployment", "ServiceAccount", "ClusterRole", "Service", "PodDisruptionBudget",
            "Secret", "ValidatingAdmissionPolicy", "MutatingAdmissionPolicy"} <= kinds
    for batch in (documents, webhook):
        result = kubectl("apply", "--dry-run=server", "--server-side", "--force-conflicts",
                         "--field-manager=chart-test", "-f", "-",
                         stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": batch}))
        assert result.stdout.count("(server dry run)") == len(batch), result.stdout


def test_deployment_is_hardened_and_runs_two_replicas() -> None:
    deployment = next(d for d in _documents() if d["kind"] == "Deployment")
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    container = pod["containers"][0]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"]["drop"] == ["ALL"]
    assert security["allowPrivilegeEscalation"] is False
    assert "livenessProbe" in container and "readinessProbe" in container


def test_optional_monitoring_renders_its_objects() -> None:
    kinds = {d["kind"] for d in _documents(
        "--set", "serviceMonitor.enabled=true", "--set", "prometheusRule.enabled=true",
        "--set", "grafanaDashboard.enabled=true", "--set", "certManager.enabled=true")}
    assert {"ServiceMonitor", "PrometheusRule", "ConfigMap", "Certificate", "Issuer"} <= kinds


def test_operator_role_binds_only_the_configured_roles_and_never_escalates() -> None:
    role = next(d for d in _documents("-f", str(DEV_VALUES))
                if d["kind"] == "ClusterRole" and d["metadata"]["name"].endswith(":operator"))
    verbs = {verb for rule in role["rules"] for verb in rule["verbs"]}
    assert not verbs & {"escalate", "impersonate", "*"}
    bind_rules = [rule for rule in role["rules"] if "bind" in rule["verbs"]]
    assert bind_rules and all(rule.get("resourceNames") for rule in bind_rules)
    named = {(rule["resources"][0], name) for rule in bind_rules for name in rule["resourceNames"]}
    assert ("roles", "pod-reader") in named and ("clusterroles", "view") in named
    assert ("clusterroles", "cluster-admin") not in named


def test_chart_crds_are_the_repository_crds() -> None:
    for path in (CHART / "crds").iterdir():
        assert path.read_text() == (CHART.parents[1] / "crds" / path.name).read_text()


@pytest.mark.usefixtures("installed")
def test_operator_cannot_bind_a_role_outside_its_list_and_says_so(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    kubectl("create", "role", "not-listed", "--verb=get", "--resource=pods", "-n", namespace)
    pim.apply(kubectl, pim.eligibility(
        namespace, subjects=[{"kind": "User", "name": "alice"}],
        roles=[{"kind": "Role", "name": "not-listed"}], namespaces=[namespace],
        approval={"users": ["bob"]}))

    def ready() -> dict[str, str] | None:
        conditions = (kubectl.json("get", "roleeligibility", namespace).get("status") or {}).get(
            "conditions") or []
        return conditions[0] if conditions else None

    condition = poll(ready, timeout=10, what="Ready condition")
    assert (condition["status"], condition["reason"]) == ("False", "OperatorCannotBind")
    pim.apply(kubectl, pim.access_request(
        namespace, role={"kind": "Role", "name": "not-listed"}, namespace=namespace,
        duration="5m", justification="outside the list"), as_user="alice")
    pim.wait_phase(kubectl, namespace, "Pending")
    pim.approve(kubectl, namespace, "bob")
    poll(lambda: "the operator may not bind Role/not-listed" in
         pim.get_request(kubectl, namespace)["status"]["message"], timeout=10,
         what="the request saying why it cannot be granted")
    assert pim.phase_of(kubectl, namespace) == "Pending"
    assert kubectl("get", "rolebindings", "-n", namespace, "-o", "name").stdout == ""
    assert not kubectl.can_i("get", "pods", as_user="alice", namespace=namespace)
    assert pim.history(pim.get_request(kubectl, namespace)) == [("Requested", "alice")]


def test_standing_discovery_needs_only_to_read_rbac_and_is_configured_from_values() -> None:
    documents = _documents("--set", "standing.scanSeconds=120",
                           "--set", "standing.accept[0]=ServiceAccount/flux/kc")
    role = next(d for d in documents
                if d["kind"] == "ClusterRole" and d["metadata"]["name"].endswith(":operator"))
    for plural in ("roles", "clusterroles", "rolebindings", "clusterrolebindings"):
        assert any(plural in rule["resources"]
                   and {"get", "list", "watch"} <= set(rule["verbs"])
                   and "rbac.authorization.k8s.io" in rule["apiGroups"] for rule in role["rules"])
    # Nothing more on foreign bindings than it had for its own: no new write verb came with it.
    roles = [rule for rule in role["rules"] if {"roles", "clusterroles"} & set(rule["resources"])]
    assert all(set(rule["verbs"]) <= {"get", "list", "watch", "bind"} for rule in roles)
    container = next(d for d in documents if d["kind"] == "Deployment")[
        "spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["KUBEPIM_STANDING_SCAN_SECONDS"] == "120"
    assert env["KUBEPIM_STANDING_INCLUDE_SYSTEM"] == "false"
    assert json.loads(env["KUBEPIM_STANDING_ACCEPT"]) == ["ServiceAccount/flux/kc"]
    refused = _helm("template", "kubepim", str(CHART), "--set", "standing.scanSeconds=-1")
    assert refused.returncode != 0 and "scanSeconds" in refused.stderr


def test_the_audit_sink_is_off_by_default_and_configured_from_values_with_its_secret() -> None:
    documents = _documents()
    assert not any(d["kind"] == "Service" and d["metadata"]["name"].endswith("-audit")
                   for d in documents)
    documents = _documents("--set", "auditSink.enabled=true",
                           "--set", "auditSink.tlsSecret=kubepim-audit-tls")
    pod = next(d for d in documents if d["kind"] == "Deployment")["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["KUBEPIM_AUDIT_SINK_PORT"] == "8443"
    assert env["KUBEPIM_AUDIT_SINK_CLIENT_CA_FILE"] == "/audit/ca.crt"
    assert json.loads(env["KUBEPIM_AUDIT_SINK_CLIENT_NAMES"]) == ["kube-apiserver-audit"]
    assert {"name": "audit", "secret": {"secretName": "kubepim-audit-tls"}} in pod["volumes"]
    service = next(d for d in documents
                   if d["kind"] == "Service" and d["metadata"]["name"].endswith("-audit"))
    assert service["spec"]["ports"] == [{"name": "audit", "port": 443, "targetPort": "audit"}]
    refused = _helm("template", "kubepim", str(CHART), "--set", "auditSink.enabled=true")
    assert refused.returncode != 0 and "auditSink.tlsSecret" in refused.stderr
