"""Grants never outlive their expiry or eligibility, and tampered bindings are put right."""

from __future__ import annotations

import datetime
import re
import threading

from tests.e2e import pim
from tests.e2e.support import Kubectl, OperatorProcess, poll


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _eligible_alice(kubectl: Kubectl, namespace: str, **policy: object) -> None:
    pim.pod_reader_for_alice(kubectl, namespace, **{
        "maxDuration": "10m", "approval": {"users": ["bob", "carol"]}, **policy})


def _request(kubectl: Kubectl, namespace: str, duration: str = "5m") -> None:
    pim.apply(kubectl, pim.access_request(
        namespace, role={"kind": "Role", "name": "pod-reader"}, namespace=namespace,
        duration=duration, justification="testing"), as_user="alice")
    pim.wait_phase(kubectl, namespace, "Pending")


def _active_grant(kubectl: Kubectl, namespace: str, duration: str = "5m") -> dict[str, object]:
    _eligible_alice(kubectl, namespace)
    _request(kubectl, namespace, duration)
    pim.approve(kubectl, namespace, "bob")
    return pim.wait_phase(kubectl, namespace, "Active")


def _alice_can_list(kubectl: Kubectl, namespace: str) -> bool:
    return kubectl.can_i("list", "pods", as_user="alice", namespace=namespace)


def test_grant_expired_while_the_operator_was_killed_is_revoked_within_5s_of_restart(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    active = _active_grant(kubectl, namespace, duration="4s")
    assert _alice_can_list(kubectl, namespace)
    operator.kill()
    expiry = pim.expires_at(active)
    poll(lambda: _now() > expiry + datetime.timedelta(seconds=1), timeout=10,
         what="the grant's expiry to pass")
    assert _alice_can_list(kubectl, namespace), "nobody revoked it while the operator was away"

    restarted_at = _now()
    operator.start()
    poll(lambda: not _alice_can_list(kubectl, namespace), timeout=5,
         what="revocation within 5 s of restart")
    assert _now() - restarted_at <= datetime.timedelta(seconds=5)
    expired = pim.wait_phase(kubectl, namespace, "Expired")
    action, actor = pim.history(expired)[-1]
    assert (action, actor) == ("Expired", "kubepim")
    reason = expired["status"]["history"][-1]["reason"]
    stamp = expiry.strftime("%Y-%m-%dT%H:%M:%SZ")
    # (then, with the audit sink configured, what the grant was used for: docs/activity.md)
    assert re.fullmatch(rf"access ended at its expiry {stamp}; revoked \d+s late(; .+)?",
                        reason), reason


def test_deleted_binding_is_restored_while_the_grant_is_live(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    _active_grant(kubectl, namespace)
    kubectl("delete", "rolebinding", f"kubepim-{namespace}", "-n", namespace)
    poll(lambda: kubectl("get", "rolebinding", f"kubepim-{namespace}", "-n", namespace,
                         check=False).returncode == 0, timeout=5, what="binding restored")
    assert _alice_can_list(kubectl, namespace)
    poll(lambda: "BindingRestored" in pim.event_reasons(kubectl, namespace), timeout=5,
         what="a BindingRestored event")
    assert ("BindingRestored", "kubepim") in pim.history(pim.get_request(kubectl, namespace))


def test_deleting_the_eligibility_revokes_active_grants_and_denies_pending_requests(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    _active_grant(kubectl, namespace)
    pending = f"{namespace}-2"
    pim.apply(kubectl, pim.access_request(
        pending, role={"kind": "Role", "name": "pod-reader"}, namespace=namespace,
        duration="5m", justification="second"), as_user="alice")
    pim.wait_phase(kubectl, pending, "Pending")

    kubectl("delete", "roleeligibility", namespace)
    revoked = pim.wait_phase(kubectl, namespace, "Revoked")
    assert not _alice_can_list(kubectl, namespace)
    assert revoked["status"]["message"].startswith("eligibility no longer covers this grant")
    denied = pim.wait_phase(kubectl, pending, "Denied")
    assert pim.history(denied)[-1] == ("Denied", "kubepim")


def test_pending_request_times_out_after_the_approval_window(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    _eligible_alice(kubectl, namespace, pendingTimeout="3s")
    _request(kubectl, namespace)
    timed_out = pim.wait_phase(kubectl, namespace, "TimedOut", timeout=15)
    assert timed_out["status"]["message"] == "no decision within the approval window of 3s"
    late = pim.approve(kubectl, namespace, "bob", check=False)
    assert late.returncode != 0
    assert "the request is TimedOut: approvals are closed" in late.stderr
    assert pim.phase_of(kubectl, namespace) == "TimedOut"
    assert not _alice_can_list(kubectl, namespace)


def test_two_approvers_patching_at_the_same_moment_both_count(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    _eligible_alice(kubectl, namespace, approval={"users": ["bob", "carol"], "required": 2})
    _request(kubectl, namespace)
    barrier = threading.Barrier(2)

    def approve(who: str) -> None:
        barrier.wait()
        pim.approve(kubectl, namespace, who)

    threads = [threading.Thread(target=approve, args=(who,)) for who in ("bob", "carol")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    active = pim.wait_phase(kubectl, namespace, "Active")
    assert set(active["status"]["approvals"]) == {"bob", "carol"}
    assert ("Approved", "bob, carol") in pim.history(active)


def test_eligibility_naming_a_missing_role_reports_not_ready(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    pim.apply(kubectl, pim.eligibility(
        namespace, subjects=[{"kind": "User", "name": "alice"}],
        roles=[{"kind": "Role", "name": "no-such-role"}], namespaces=[namespace],
        approval={"users": ["bob"]}))

    def ready_condition() -> dict[str, str] | None:
        body = kubectl.json("get", "roleeligibility", namespace)
        conditions = (body.get("status") or {}).get("conditions") or []
        return conditions[0] if conditions else None

    condition = poll(ready_condition, timeout=10, what="Ready condition")
    assert condition["status"] == "False"
    assert condition["reason"] == "RoleNotFound"
    assert condition["message"] == f"Role no-such-role does not exist in namespace {namespace}"
