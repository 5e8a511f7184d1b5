"""The standing-privilege classifier (domain/standing.py): the catalogue of docs/standing.md."""

from __future__ import annotations

from typing import Any

import pytest

from kubepim.domain import standing

from .builders import eligibility


def rule(groups: list[str], resources: list[str], verbs: list[str],
         names: list[str] | None = None) -> dict[str, Any]:
    return {"apiGroups": groups, "resources": resources, "verbs": verbs,
            **({"resourceNames": names} if names else {})}


@pytest.mark.parametrize(("rules", "scope", "ids", "severity"), [
    ([rule(["*"], ["*"], ["*"])], "", ("wildcard-admin",), "critical"),
    ([rule(["*"], ["*"], ["*"])], "team-a", ("wildcard-admin",), "high"),
    ([rule([""], ["secrets"], ["list"])], "", ("secrets-read",), "critical"),
    ([rule([""], ["secrets"], ["watch"])], "team-a", ("secrets-read",), "high"),
    ([rule([""], ["secrets"], ["get"])], "kube-system", ("secrets-read",), "critical"),
    ([rule([""], ["secrets"], ["get"], names=["tls"])], "team-a", ("secrets-read",), "medium"),
    ([rule([""], ["pods/exec"], ["create"])], "team-a", ("pods-exec",), "high"),
    ([rule([""], ["*/exec"], ["create"])], "team-a", ("pods-exec",), "high"),
    ([rule([""], ["pods/*"], ["create"])], "team-a", (), None),
    ([rule(["apps"], ["deployments"], ["patch"])], "team-a", ("workload-create",), "high"),
    ([rule(["batch"], ["cronjobs"], ["create"])], "", ("workload-create",), "critical"),
    ([rule(["rbac.authorization.k8s.io"], ["clusterroles"], ["bind"])], "",
     ("rbac-bind-escalate",), "critical"),
    ([rule(["rbac.authorization.k8s.io"], ["clusterrolebindings"], ["create"]),
      rule(["rbac.authorization.k8s.io"], ["clusterroles"], ["escalate"])], "",
     ("rbac-bind-escalate", "rbac-write"), "critical"),
    ([rule([""], ["nodes/proxy", "persistentvolumes"], ["get", "create"])], "team-a", (),
     None),
    ([rule(["rbac.authorization.k8s.io"], ["clusterroles"], ["bind"])], "team-a",
     ("rbac-bind-escalate",), "high"),
    ([rule(["authentication.k8s.io"], ["uids"], ["impersonate"])], "", ("impersonate",),
     "critical"),
    ([rule([""], ["users"], ["impersonate"], names=["alice"])], "", ("impersonate",),
     "critical"),
    ([rule([""], ["nodes/proxy"], ["get"])], "", ("nodes-proxy",), "critical"),
    ([rule(["certificates.k8s.io"], ["certificatesigningrequests/approval"], ["update"])], "",
     ("csr-approve",), "high"),
    ([rule(["admissionregistration.k8s.io"], ["mutatingwebhookconfigurations"], ["patch"])],
     "", ("admission-webhooks",), "critical"),
    ([rule([""], ["persistentvolumes"], ["create"])], "", ("pv-create",), "high"),
    ([rule(["apiextensions.k8s.io"], ["customresourcedefinitions"], ["update"])], "",
     ("crd-write",), "medium"),
    ([rule([""], ["secrets"], ["create"])], "kube-system", ("kube-system-secrets-write",),
     "critical"),
    ([rule(["certificates.k8s.io"], ["certificatesigningrequests/approval"], ["update"]),
      rule(["certificates.k8s.io"], ["signers"], ["approve"])], "", ("csr-approve",),
     "critical"),
    ([rule(["storage.k8s.io"], ["*"], ["delete"])], "", ("wildcard-partial",), "medium"),
    ([rule([""], ["pods", "configmaps"], ["get", "list", "watch"])], "", (), None),
    ([rule(["apps"], ["secrets"], ["get"])], "", (), None),
    ([{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}], "", (), None),
], ids=[
    "everything everywhere is critical cluster-wide",
    "and high inside one ordinary namespace",
    "listing secrets is reading them",
    "so is watching them",
    "reading secrets in kube-system is critical even namespaced",
    "a secret named in resourceNames ranks one lower",
    "exec into pods",
    "*/exec is exec on every resource (the authorizer's subresource wildcard)",
    "pods/* is no wildcard to the authorizer",
    "patching a deployment runs code as any service account",
    "creating cronjobs cluster-wide",
    "binding any cluster role",
    "writing bindings together with escalate is critical",
    "a RoleBinding cannot grant cluster-scoped resources",
    "but bind on clusterroles in a namespace binds any ClusterRole there",
    "impersonating uids (authentication.k8s.io)",
    "impersonation limited to one user stays critical",
    "the kubelet's API through nodes/proxy",
    "approving certificate signing requests",
    "mutating admission webhooks",
    "persistent volumes",
    "custom resource definitions",
    "writing secrets in kube-system mints tokens",
    "approving CSRs with a signer issues any client certificate",
    "a wildcard no other row names still counts",
    "reading pods and configmaps is not privileged",
    "secrets in the wrong API group are not the core secrets",
    "non-resource URLs are not in the catalogue",
])
def test_the_catalogue_classifies_a_roles_rules(
        rules: list[dict[str, Any]], scope: str, ids: tuple[str, ...],
        severity: str | None) -> None:
    found, worst, _ = standing.classify(rules, scope)
    assert set(found) == set(ids) and worst == severity


def test_verb_and_resource_wildcards_match_every_rule_they_cover() -> None:
    found, worst, _ = standing.classify([rule([""], ["*"], ["get"])], "")
    assert {"secrets-read", "pods-exec", "nodes-proxy"} <= set(found) and worst == "critical"
    found, _, _ = standing.classify([rule(["rbac.authorization.k8s.io"], ["roles"], ["*"])], "")
    assert set(found) == {"rbac-bind-escalate", "rbac-write"}


def _meta(name: str, namespace: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"name": name, **({"namespace": namespace} if namespace else {}), **extra}


def test_an_aggregated_cluster_role_has_the_rules_it_selects_even_through_another() -> None:
    roles = standing.resolve_cluster_roles([
        {"metadata": _meta("top"), "aggregationRule": {"clusterRoleSelectors": [
            {"matchLabels": {"agg": "top"}}]}},
        {"metadata": _meta("middle", labels={"agg": "top"}), "aggregationRule": {
            "clusterRoleSelectors": [{"matchLabels": {"agg": "middle"}}]}},
        {"metadata": _meta("secrets", labels={"agg": "middle"}),
         "rules": [rule([""], ["secrets"], ["get"])]},
    ])
    assert roles["top"] == [rule([""], ["secrets"], ["get"])] == roles["middle"]


def test_a_scan_ranks_findings_and_leaves_out_kubepims_own_and_the_control_planes() -> None:
    cluster_roles = [{"metadata": _meta("cluster-admin"), "rules": [rule(["*"], ["*"], ["*"])]},
                     {"metadata": _meta("view"), "rules": [rule([""], ["pods"], ["get"])]}]
    roles = [{"metadata": _meta("exec", "team-a"), "rules": [rule([""], ["pods/exec"],
                                                                  ["create"])]}]
    crbs = [
        {"metadata": _meta("admins"), "roleRef": {"kind": "ClusterRole", "name": "cluster-admin"},
         "subjects": [{"kind": "User", "name": "mallory"},
                      {"kind": "Group", "name": "system:masters"},
                      {"kind": "Group", "name": "system:authenticated"}]},
        {"metadata": _meta("viewers"), "roleRef": {"kind": "ClusterRole", "name": "view"},
         "subjects": [{"kind": "User", "name": "alice"}]},
    ]
    rbs = [
        {"metadata": _meta("debug", "team-a"), "roleRef": {"kind": "Role", "name": "exec"},
         "subjects": [{"kind": "User", "name": "alice"},
                      {"kind": "ServiceAccount", "name": "deployer"}]},
        {"metadata": _meta("kubepim-alice-1", "team-a", labels={
            "app.kubernetes.io/managed-by": "kubepim"}),
         "roleRef": {"kind": "Role", "name": "exec"},
         "subjects": [{"kind": "User", "name": "bob"}]},
        {"metadata": _meta("ctrl", "kube-system"), "roleRef": {"kind": "ClusterRole",
                                                               "name": "cluster-admin"},
         "subjects": [{"kind": "ServiceAccount", "name": "x", "namespace": "kube-system"}]},
    ]
    crbs.append({"metadata": _meta("cluster-admin", labels={
        "kubernetes.io/bootstrapping": "rbac-defaults"}),  # the API server's own
        "roleRef": {"kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"kind": "Group", "name": "system:masters"}]})
    eligible = {"team-a-exec": eligibility(subjects=[{"kind": "User", "name": "alice"}],
                                           roles=[{"kind": "Role", "name": "exec"}],
                                           namespaces=["team-a"])}
    findings = standing.scan(roles, cluster_roles, rbs, crbs, eligible)
    # A system identity counts when someone else bound it (admins, ctrl); only the API
    # server's bootstrap binding of system:masters is left out.
    assert [(f.subject, f.binding, f.severity, f.eligible) for f in findings] == [
        ("Group/system:authenticated", "ClusterRoleBinding/admins", "critical", ()),
        ("Group/system:masters", "ClusterRoleBinding/admins", "critical", ()),
        ("ServiceAccount/kube-system/x", "RoleBinding/kube-system/ctrl", "critical", ()),
        ("User/mallory", "ClusterRoleBinding/admins", "critical", ()),
        ("ServiceAccount/team-a/deployer", "RoleBinding/team-a/debug", "high", ()),
        ("User/alice", "RoleBinding/team-a/debug", "high", ("team-a-exec",)),
    ]
    assert all(f.deny_listed == (f.role == "ClusterRole/cluster-admin") for f in findings)
    everything = standing.scan(roles, cluster_roles, rbs, crbs, include_system=True)
    assert ("Group/system:masters", "ClusterRoleBinding/cluster-admin") in {
        (f.subject, f.binding) for f in everything}
    assert not any(f.subject == "User/bob" for f in everything)  # a live kubepim grant


def test_an_eligibility_nobody_may_approve_covers_nothing() -> None:
    unapproved = eligibility(subjects=[{"kind": "User", "name": "alice"}],
                             roles=[{"kind": "Role", "name": "exec"}], namespaces=["team-a"],
                             approval={"users": []})
    assert standing.covered_by("User/alice", "Role", "exec", "team-a",
                               {"e": unapproved}, {}) == ()
    approved = unapproved.model_copy(update={"approval": eligibility().approval})
    assert standing.covered_by("User/alice", "Role", "exec", "team-a",
                               {"e": approved}, {}) == ("e",)


def test_one_scanner_classifies_a_cluster_role_by_where_each_binding_grants_it() -> None:
    # The scanner classifies a role once per kind of place: cluster-wide and kube-system are
    # critical for reading secrets, an ordinary namespace high; a cached answer for one place
    # must not leak into another.
    scanner = standing.Scanner(
        [], [{"metadata": _meta("secret-reader"), "rules": [rule([""], ["secrets"], ["get"])]}])
    ref = {"kind": "ClusterRole", "name": "secret-reader"}
    subjects = [{"kind": "Group", "name": "ops"}]
    seen = [
        standing.worst(scanner.binding("RoleBinding", {
            "metadata": _meta("r", "team-a"), "roleRef": ref, "subjects": subjects})),
        standing.worst(scanner.binding("RoleBinding", {
            "metadata": _meta("r", "kube-system"), "roleRef": ref, "subjects": subjects})),
        standing.worst(scanner.binding("ClusterRoleBinding", {
            "metadata": _meta("r"), "roleRef": ref, "subjects": subjects})),
        standing.worst(scanner.binding("RoleBinding", {
            "metadata": _meta("r", "team-b"), "roleRef": ref, "subjects": subjects})),
    ]
    assert seen == ["high", "critical", "critical", "high"]


def test_a_binding_to_a_role_the_scanner_was_not_given_is_no_finding() -> None:
    # (A Role created after the scan read the roles: the role watch brings a new scan.)
    scanner = standing.Scanner([], [])
    assert scanner.binding("RoleBinding", {
        "metadata": _meta("r", "team-a"), "roleRef": {"kind": "Role", "name": "later"},
        "subjects": [{"kind": "User", "name": "eve"}]}) == []
    assert standing.worst([]) is None


@pytest.mark.parametrize(("text", "valid"), [
    ("User/alice", True), ("Group/system:masters", True), ("ServiceAccount/flux/kc", True),
    ("ServiceAccount/kc", False), ("ServiceAccount/flux/kc/x", False), ("alice", False),
    ("User/", False), ("Robot/r2", False), ("ServiceAccount//kc", False),
])
def test_a_subject_to_accept_is_written_as_findings_name_it(text: str, valid: bool) -> None:
    if valid:
        assert standing.parse_subject(text) == text
    else:
        with pytest.raises(ValueError, match="ServiceAccount/NAMESPACE/NAME"):
            standing.parse_subject(text)


def test_an_accepted_subject_is_left_out_wherever_it_is_bound() -> None:
    cluster_roles = [{"metadata": _meta("cluster-admin"), "rules": [rule(["*"], ["*"], ["*"])]}]
    crbs = [{"metadata": _meta("gitops"), "roleRef": {"kind": "ClusterRole",
                                                     "name": "cluster-admin"},
             "subjects": [{"kind": "ServiceAccount", "name": "kc", "namespace": "flux"},
                          {"kind": "User", "name": "mallory"}]}]
    found = standing.scan([], cluster_roles, [], crbs, accepted=["ServiceAccount/flux/kc"])
    assert [f.subject for f in found] == ["User/mallory"]


def test_a_role_learnt_after_the_scan_classifies_its_bindings_from_then_on() -> None:
    scanner = standing.Scanner([], [{"metadata": _meta("view"),
                                     "rules": [rule([""], ["pods"], ["get"])]}])
    binding = {"metadata": _meta("r", "team-a"), "roleRef": {"kind": "Role", "name": "later"},
               "subjects": [{"kind": "User", "name": "eve"}]}
    assert not scanner.knows("Role", "later", "team-a") and scanner.binding("RoleBinding",
                                                                            binding) == []
    scanner.learn("Role", "later", "team-a", [rule([""], ["secrets"], ["list"])])
    assert scanner.knows("Role", "later", "team-a")
    assert standing.worst(scanner.binding("RoleBinding", binding)) == "high"
    # A cluster role changed since: its cached classification goes with it.
    crb = {"metadata": _meta("c"), "roleRef": {"kind": "ClusterRole", "name": "view"},
           "subjects": [{"kind": "User", "name": "eve"}]}
    assert scanner.binding("ClusterRoleBinding", crb) == []
    scanner.learn("ClusterRole", "view", None, [rule(["*"], ["*"], ["*"])])
    assert standing.worst(scanner.binding("ClusterRoleBinding", crb)) == "critical"
