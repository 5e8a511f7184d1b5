"""Standing privilege: who holds privileged RBAC outside kubepim, ranked (issue 16).

Pure: from the cluster's Roles, ClusterRoles (aggregation resolved), RoleBindings and
ClusterRoleBindings as the API returns them, each subject's privileged permissions, classified by
the rule catalogue of docs/standing.md (merged from rbac-police, KubiScan, krane, rbac-tool,
kubescape and CIS 5.1; each rule says where it came from). Excluded: kubepim's own bindings (a
live grant is not standing access) and, by default, the control plane's own identities.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from kubepim.api.common import LabelSelector
from kubepim.api.eligibility import RoleEligibilitySpec

from . import bindings
from .admission import privileged
from .review import selector_matches

Severity = Literal["critical", "high", "medium"]
SEVERITIES: tuple[Severity, ...] = ("critical", "high", "medium")
_RANK = {severity: rank for rank, severity in enumerate(SEVERITIES)}

_CORE, _RBAC, _APPS, _BATCH = "", "rbac.authorization.k8s.io", "apps", "batch"
_WRITE = ("create", "update", "patch")
_SENSITIVE_NAMESPACES = frozenset({"kube-system"})


@dataclass(frozen=True)
class Rule:
    """One catalogue entry: any (group, resource, verb) it lists makes a policy rule match.

    ``namespaced``: the severity when granted in an ordinary namespace (None: the same as
    cluster-wide or in kube-system). ``sources``: where the rule was read (docs/standing.md).
    """

    id: str
    groups: tuple[str, ...]
    resources: tuple[str, ...]
    verbs: tuple[str, ...]
    severity: Severity
    namespaced: Severity | None
    sources: str


CATALOGUE: tuple[Rule, ...] = (
    Rule("secrets-read", (_CORE,), ("secrets",), ("get", "list", "watch"), "critical", "high",
         "KSC C-0015/C-0186, KB, KR, RP retrieve_token_secrets, RT, CIS 5.1.2"),
    Rule("pods-exec", (_CORE,), ("pods/exec",), ("create", "get"), "critical", "high",
         "RP pods_exec, KB/KR risky-exec-pods, RT, KSC C-0002"),
    Rule("pods-attach", (_CORE,), ("pods/attach",), ("create", "get"), "critical", "high",
         "KB/KR risky-attach-pods"),
    Rule("pods-portforward", (_CORE,), ("pods/portforward",), ("create", "get"), "medium", None,
         "KSC C-0063"),
    Rule("pods-ephemeral", (_CORE,), ("pods/ephemeralcontainers",), ("update", "patch"),
         "critical", "high", "RP, RT"),
    Rule("workload-create", (_CORE, _APPS, _BATCH),
         ("pods", "deployments", "daemonsets", "statefulsets", "replicasets", "jobs",
          "cronjobs", "replicationcontrollers"), _WRITE, "critical", "high",
         "RP assign_sa, KB/KR, RT, KSC C-0188, CIS 5.1.4"),
    Rule("rbac-bind-escalate", (_RBAC,), ("roles", "clusterroles"), ("bind", "escalate"),
         "critical", "high", "RP bind_roles/escalate_roles, RT, KSC C-0191, CIS 5.1.8"),
    Rule("impersonate", (_CORE, "authentication.k8s.io"),
         ("users", "groups", "serviceaccounts", "uids", "userextras"), ("impersonate",),
         "critical", "high", "RP impersonate, KSC C-0065/C-0191, KB/KR, RT, CIS 5.1.8"),
    Rule("sa-token-create", (_CORE,), ("serviceaccounts/token",), ("create",), "critical",
         "high", "RP token_request, KSC C-0282, CIS 5.1.13"),
    Rule("nodes-proxy", (_CORE,), ("nodes/proxy",), ("get", "create", "update", "patch",
                                                     "delete", "connect"), "critical", None,
         "RP nodes_proxy, RT, KSC C-0279, CIS 5.1.10"),
    Rule("csr-approve", ("certificates.k8s.io",), ("certificatesigningrequests/approval",),
         ("update", "patch"), "high", None, "RP approve_csrs, KSC C-0280, CIS 5.1.11"),
    Rule("admission-webhooks", ("admissionregistration.k8s.io",),
         ("validatingwebhookconfigurations", "mutatingwebhookconfigurations"),
         (*_WRITE, "delete"), "critical", None, "RP control_webhooks, RT, KSC C-0281, CIS 5.1.12"),
    Rule("rbac-write", (_RBAC,), ("roles", "clusterroles", "rolebindings", "clusterrolebindings"),
         _WRITE, "high", None, "RT, KB/KR, KR subjects-with-rbac-management"),
    Rule("pv-create", (_CORE,), ("persistentvolumes",), ("create",), "high", None,
         "KSC C-0278, RT, CIS 5.1.9"),
    Rule("crd-write", ("apiextensions.k8s.io",), ("customresourcedefinitions",),
         (*_WRITE, "delete"), "medium", None, "RT"),
    Rule("kube-system-secrets-write", (_CORE,), ("secrets",), _WRITE, "critical", "medium",
         "RP issue_token_secrets (critical in kube-system: mints token Secrets)"),
)
# Catalogue rows made of two permissions: (rule, the extra (group, resource, verb)) and the
# severity when both are held.
_SIGNERS = ("certificates.k8s.io", "signers", "approve")

# The control plane's own identities: left out unless asked, and only in the API server's own
# bootstrap bindings (labelled kubernetes.io/bootstrapping=rbac-defaults): the same identity in
# any other binding (cluster-admin bound to kube-system's default ServiceAccount, to
# system:nodes) is reported. system:authenticated, system:unauthenticated and
# system:serviceaccounts are never left out: a binding to them is everyone's standing access.
BOOTSTRAP_LABEL = ("kubernetes.io/bootstrapping", "rbac-defaults")
SYSTEM_SUBJECTS: frozenset[str] = frozenset({
    "User/system:kube-controller-manager", "User/system:kube-scheduler",
    "User/system:kube-proxy", "User/system:apiserver", "User/kube-apiserver",
    "User/system:volume-scheduler", "Group/system:masters", "Group/system:nodes",
    "Group/system:bootstrappers", "Group/system:monitoring",
})
SYSTEM_NAMESPACES: frozenset[str] = frozenset({"kube-system"})

SUBJECT_FORMAT = "User/NAME, Group/NAME or ServiceAccount/NAMESPACE/NAME"


def parse_subject(text: str) -> str:
    """A subject as findings name it (``text`` itself); ValueError saying the format if not."""
    if re.fullmatch(r"(User|Group)/.+|ServiceAccount/[^/]+/[^/]+", text):  # (no newline)
        return text
    raise ValueError(f"{text!r} is not a subject: write {SUBJECT_FORMAT}")


@dataclass(frozen=True)
class Finding:
    """One subject's privileged permissions through one binding."""

    subject: str  # "User/alice", "Group/oncall", "ServiceAccount/ns/name"
    binding: str  # "ClusterRoleBinding/name" or "RoleBinding/namespace/name"
    role: str  # "ClusterRole/name" or "Role/namespace/name"
    scope: str  # a namespace, or "" for the whole cluster
    rules: tuple[str, ...]  # catalogue rule ids that matched, most severe first
    severity: Severity
    names: tuple[str, ...] = ()  # resourceNames the matching rules were limited to, if all were
    eligible: tuple[str, ...] = field(default=())  # RoleEligibilities covering it
    deny_listed: bool = False  # the role is on kubepim's deny-list (allowPrivilegedRoles)

    def wire(self) -> dict[str, Any]:
        """As ``-o json`` prints it."""
        return {"subject": self.subject, "binding": self.binding, "role": self.role,
                "scope": self.scope or "cluster", "rules": list(self.rules),
                "severity": self.severity, "resourceNames": list(self.names),
                "coveredBy": list(self.eligible)}


def _covers(values: Sequence[str], wanted: str) -> bool:
    return "*" in values or wanted in values


def _resource_covers(resources: Sequence[str], wanted: str) -> bool:
    """As the RBAC authorizer matches: "*", the exact resource, or "*/subresource".

    ("pods/*" is no wildcard to the authorizer: it matches nothing but a subresource named "*".)
    """
    if "*" in resources or wanted in resources:
        return True
    _, _, sub = wanted.partition("/")
    return bool(sub) and f"*/{sub}" in resources


# Resources a RoleBinding cannot grant (they are cluster-scoped): only a ClusterRoleBinding can.
_CLUSTER_SCOPED = frozenset({
    "nodes/proxy", "persistentvolumes", "customresourcedefinitions",
    "validatingwebhookconfigurations", "mutatingwebhookconfigurations",
    "certificatesigningrequests/approval", "clusterrolebindings", "users", "groups", "uids",
    "userextras"})
# (Not clusterroles: bind on clusterroles in a Role lets its holder bind any ClusterRole within
# that namespace, which the API server checks in the RoleBinding's namespace.)


def matched(policy: Mapping[str, Any], namespaced: bool = False) -> list[Rule]:
    """The catalogue rules one PolicyRule grants (resourceNames aside: see :func:`classify`).

    ``namespaced``: granted by a RoleBinding, which reaches namespaced resources only.
    """
    groups = list(policy.get("apiGroups") or [])
    resources = list(policy.get("resources") or [])
    verbs = list(policy.get("verbs") or [])
    if not resources or not verbs:
        return []  # nonResourceURLs only
    return [rule for rule in CATALOGUE
            if any(_covers(groups, g) for g in rule.groups)
            and any(_resource_covers(resources, r) for r in rule.resources
                    if not (namespaced and r in _CLUSTER_SCOPED))
            and any(_covers(verbs, v) for v in rule.verbs)]


def _wildcard_admin(policy: Mapping[str, Any]) -> bool:
    return all("*" in (policy.get(key) or []) for key in ("apiGroups", "resources", "verbs"))


def resolve_cluster_roles(cluster_roles: Iterable[Mapping[str, Any]]
                          ) -> dict[str, list[dict[str, Any]]]:
    """ClusterRole name → its rules, aggregated ClusterRoles given the rules they select.

    As the aggregation controller does (its result is usually already in ``rules``; computed
    here too, so a scan is right before the controller has caught up). To a fixed point, so an
    aggregated role selecting another aggregated role gets its rules as well.
    """
    roles = {str(r["metadata"]["name"]): r for r in cluster_roles}
    rules = {name: list(r.get("rules") or []) for name, r in roles.items()}
    changed = True
    while changed:
        changed = False
        for name, role in roles.items():
            selectors = (role.get("aggregationRule") or {}).get("clusterRoleSelectors") or []
            if not selectors:
                continue
            for other_name, other in roles.items():
                if other_name == name:
                    continue
                labels = other.get("metadata", {}).get("labels") or {}
                if any(_selected(selector, labels) for selector in selectors):
                    for rule in rules[other_name]:
                        if rule not in rules[name]:
                            rules[name].append(rule)
                            changed = True
    return rules


def _selected(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    if not selector.get("matchLabels") and not selector.get("matchExpressions"):
        return True  # (an empty selector selects every ClusterRole, as the controller reads it)
    return selector_matches(LabelSelector.model_validate(selector), labels)


def classify(rules: Iterable[Mapping[str, Any]], scope: str
             ) -> tuple[tuple[str, ...], Severity | None, tuple[str, ...]]:
    """(rule ids, severity, resourceNames) that a role's rules grant in ``scope``.

    ``scope`` "" is cluster-wide. A rule limited to resourceNames still counts, one severity
    lower for reading secrets, exec and attach, creating workloads (the objects are named);
    never for impersonation, bind/escalate, tokens, CSRs or webhooks (docs/standing.md).
    """
    rules = list(rules)
    found: dict[str, Severity] = {}
    names: set[str] = set()
    limited_only = True
    sensitive = scope == "" or scope in _SENSITIVE_NAMESPACES
    for policy in rules:
        limited = list(policy.get("resourceNames") or [])
        hits = matched(policy, namespaced=scope != "")
        if _wildcard_admin(policy):
            found["wildcard-admin"] = "critical" if sensitive else "high"
            limited_only = limited_only and bool(limited)
            names.update(limited)
        for rule in hits:
            severity = rule.severity if sensitive or rule.namespaced is None else rule.namespaced
            if limited and rule.id in _NAMES_LOWER:
                severity = _lower(severity)
            if rule.id not in found or _RANK[severity] < _RANK[found[rule.id]]:
                found[rule.id] = severity
            limited_only = limited_only and bool(limited)
            names.update(limited)
    if "rbac-write" in found and "rbac-bind-escalate" in found:  # together: as bind/escalate
        found["rbac-write"] = found["rbac-bind-escalate"]
    if "csr-approve" in found and any(_grants(p, *_SIGNERS) for p in rules):
        found["csr-approve"] = "critical"  # approval and a signer: any client certificate
    if not found and any(_partial_wildcard(p) for p in rules):
        found["wildcard-partial"] = "medium"
    if not found:
        return (), None, ()
    ordered = tuple(sorted(found, key=lambda rule_id: (_RANK[found[rule_id]], rule_id)))
    if "wildcard-admin" in found:  # (it holds every other rule: named alone)
        return ("wildcard-admin",), found[ordered[0]], tuple(sorted(names)) if limited_only \
            else ()
    return ordered, found[ordered[0]], tuple(sorted(names)) if limited_only else ()


def _grants(policy: Mapping[str, Any], group: str, resource: str, verb: str) -> bool:
    return (_covers(list(policy.get("apiGroups") or []), group)
            and _resource_covers(list(policy.get("resources") or []), resource)
            and _covers(list(policy.get("verbs") or []), verb))


def _partial_wildcard(policy: Mapping[str, Any]) -> bool:
    """A "*" in resources or verbs with a writing verb, that no catalogue row names."""
    resources, verbs = policy.get("resources") or [], set(policy.get("verbs") or [])
    return ("*" in resources or "*" in verbs) and bool(
        verbs & {"*", "create", "update", "patch", "delete", "deletecollection"})


_NAMES_LOWER = frozenset({"secrets-read", "pods-exec", "pods-attach", "workload-create"})


def _lower(severity: Severity) -> Severity:
    return SEVERITIES[min(_RANK[severity] + 1, len(SEVERITIES) - 1)]


def subject_id(subject: Mapping[str, Any], binding_namespace: str | None) -> str:
    """How a finding names a subject: User/alice, Group/oncall, ServiceAccount/ns/name."""
    kind, name = str(subject.get("kind")), str(subject.get("name"))
    if kind == "ServiceAccount":
        return f"ServiceAccount/{subject.get('namespace') or binding_namespace or ''}/{name}"
    return f"{kind}/{name}"


def is_system(subject: str, allowed: frozenset[str] = SYSTEM_SUBJECTS,
              namespaces: frozenset[str] = SYSTEM_NAMESPACES) -> bool:
    """Whether a subject is the control plane's own (left out by default)."""
    if subject in allowed:
        return True
    if subject.startswith("User/system:node:"):
        return True
    parts = subject.split("/")
    return parts[0] == "ServiceAccount" and len(parts) == 3 and parts[1] in namespaces


class Scanner:
    """Classifies bindings one at a time against the roles it was given.

    A paged scan keeps this and its findings, never the bindings (docs/standing.md): the
    operator's scan of 20,000 bindings holds the roles and one page. A role's classification is
    computed once per scope class (cluster-wide, a sensitive namespace, any other namespace).
    """

    def __init__(self, roles: Iterable[Mapping[str, Any]],
                 cluster_roles: Iterable[Mapping[str, Any]],
                 eligibilities: Mapping[str, RoleEligibilitySpec] | None = None,
                 namespace_labels: Mapping[str, Mapping[str, str]] | None = None,
                 include_system: bool = False, accepted: Iterable[str] = ()) -> None:
        self._cluster_rules = resolve_cluster_roles(cluster_roles)
        # Subjects whose standing access was reviewed and accepted (a GitOps controller's
        # ServiceAccount, say): left out everywhere, by the user's configuration only.
        self._accepted = frozenset(parse_subject(subject) for subject in accepted)
        self._role_rules = {(str(r["metadata"].get("namespace")), str(r["metadata"]["name"])):
                            list(r.get("rules") or []) for r in roles}
        self._eligibilities = eligibilities or {}
        self._namespace_labels = namespace_labels or {}
        self._include_system = include_system
        self._classified: dict[tuple[str, str, str], tuple[
            tuple[str, ...], Severity | None, tuple[str, ...], bool]] = {}

    def _classify(self, role_kind: str, role_name: str, namespace: str
                  ) -> tuple[tuple[str, ...], Severity | None, tuple[str, ...], bool]:
        """(rule ids, severity, resourceNames, deny-listed) of a role bound in ``namespace``."""
        if role_kind == "ClusterRole":
            place = "" if not namespace else (
                namespace if namespace in _SENSITIVE_NAMESPACES else "-")
            key = (role_kind, role_name, place)
        else:
            key = (role_kind, role_name, namespace)
        known = self._classified.get(key)
        if known is None:
            rules = (self._cluster_rules.get(role_name, []) if role_kind == "ClusterRole"
                     else self._role_rules.get((namespace, role_name), []))
            ids, severity, names = classify(rules, namespace)
            deny = severity is not None and privileged(
                role_kind, role_name, rules, namespace or None) is not None
            known = self._classified[key] = (ids, severity, names, deny)
        return known

    def knows(self, role_kind: str, role_name: str, namespace: str | None) -> bool:
        """Whether the scanner was given (or has learnt) this role."""
        if role_kind == "ClusterRole":
            return role_name in self._cluster_rules
        return (namespace or "", role_name) in self._role_rules

    def learn(self, role_kind: str, role_name: str, namespace: str | None,
              rules: list[dict[str, Any]]) -> None:
        """A role made after the scanner was built (its rules as the API server has them)."""
        if role_kind == "ClusterRole":
            self._cluster_rules[role_name] = list(rules)
        else:
            self._role_rules[(namespace or "", role_name)] = list(rules)
        for key in [k for k in self._classified if k[:2] == (role_kind, role_name)]:
            del self._classified[key]

    def binding(self, kind: str, binding: Mapping[str, Any]) -> list[Finding]:
        """The findings of one RoleBinding or ClusterRoleBinding (``kind``), any order."""
        if bindings.marked(dict(binding)):
            return []  # kubepim's: a live grant, not standing access
        metadata = binding.get("metadata", {})
        namespace = str(metadata.get("namespace") or "") if kind == "RoleBinding" else ""
        ref = binding.get("roleRef") or {}
        role_kind, role_name = str(ref.get("kind")), str(ref.get("name"))
        ids, severity, names, deny = self._classify(role_kind, role_name, namespace)
        if severity is None:
            return []
        role = (f"ClusterRole/{role_name}" if role_kind == "ClusterRole"
                else f"Role/{namespace}/{role_name}")
        where = f"{namespace}/" if namespace else ""
        labels = metadata.get("labels") or {}
        bootstrap = labels.get(BOOTSTRAP_LABEL[0]) == BOOTSTRAP_LABEL[1]
        findings = []
        for subject in binding.get("subjects") or []:
            who = subject_id(subject, namespace or None)
            if (not self._include_system and bootstrap and is_system(who)) \
                    or who in self._accepted:
                continue
            findings.append(Finding(
                who, f"{kind}/{where}{metadata.get('name')}", role, namespace, ids, severity,
                names, covered_by(who, role_kind, role_name, namespace, self._eligibilities,
                                  self._namespace_labels, deny), deny))
        return findings


def ranked(findings: Iterable[Finding]) -> list[Finding]:
    """Most severe first, then by subject and binding."""
    return sorted(findings, key=lambda f: (_RANK[f.severity], f.subject, f.binding))


def worst(findings: Iterable[Finding]) -> Severity | None:
    """The highest severity among ``findings`` (None: none)."""
    ranks = [_RANK[f.severity] for f in findings]
    return SEVERITIES[min(ranks)] if ranks else None


def scan(roles: Iterable[Mapping[str, Any]], cluster_roles: Iterable[Mapping[str, Any]],
         role_bindings: Iterable[Mapping[str, Any]],
         cluster_role_bindings: Iterable[Mapping[str, Any]],
         eligibilities: Mapping[str, RoleEligibilitySpec] | None = None,
         namespace_labels: Mapping[str, Mapping[str, str]] | None = None,
         include_system: bool = False, accepted: Iterable[str] = ()) -> list[Finding]:
    """Every privileged standing permission, most severe first."""
    scanner = Scanner(roles, cluster_roles, eligibilities, namespace_labels, include_system,
                      accepted)
    return ranked([finding for kind, items in (("ClusterRoleBinding", cluster_role_bindings),
                                               ("RoleBinding", role_bindings))
                   for binding in items for finding in scanner.binding(kind, binding)])


def covered_by(subject: str, role_kind: str, role_name: str, namespace: str,
               eligibilities: Mapping[str, RoleEligibilitySpec],
               namespace_labels: Mapping[str, Mapping[str, str]],
               deny_listed: bool = False) -> tuple[str, ...]:
    """The RoleEligibilities under which the subject could request this role where it holds it.

    Standing access they cover could simply be removed: kubepim grants it when it is needed.
    A deny-listed role is covered only by an eligibility that allows privileged roles.
    """
    kind, _, rest = subject.partition("/")
    names = []
    for name, spec in sorted(eligibilities.items()):
        if not any(s.kind == kind and (s.name if kind != "ServiceAccount"
                                       else f"{s.namespace}/{s.name}") == rest
                   for s in spec.subjects):
            continue
        if not any(r.kind == role_kind and r.name == role_name for r in spec.roles):
            continue
        if deny_listed and not spec.allow_privileged_roles:
            continue  # its requests for this role are refused
        if not (spec.approval.users or spec.approval.groups) and spec.break_glass is None:
            continue  # nobody may approve and no break-glass: nothing is ever granted
        if namespace == "":
            if not spec.cluster_wide:
                continue
        elif namespace not in spec.namespaces and not (
                spec.namespace_selector is not None and namespace in namespace_labels
                and selector_matches(spec.namespace_selector, namespace_labels[namespace])):
            continue
        names.append(name)
    return tuple(names)
