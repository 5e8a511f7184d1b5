"""Eligibility policies: break-glass, conditions on the requester's identity, auto-approval."""

from __future__ import annotations

import datetime
import json
from typing import Any

from tests.e2e import pim
from tests.e2e.support import Kubectl, OperatorProcess, poll


def _eligibility(kubectl: Kubectl, namespace: str, **policy: Any) -> None:
    pim.pod_reader_for_alice(kubectl, namespace, **{"maxDuration": "1h", **policy})


def _request(namespace: str, **spec: Any) -> dict[str, Any]:
    return pim.access_request(namespace, role={"kind": "Role", "name": "pod-reader"},
                              namespace=namespace, **{"duration": "10m",
                                                      "justification": "prod down", **spec})


def test_break_glass_activates_at_once_loudly_and_stays_marked_until_reviewed(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    _eligibility(kubectl, namespace, breakGlass={"maxDuration": "15m"})
    too_long = kubectl("create", "-f", "-", as_user="alice", check=False, stdin=json.dumps(
        _request(namespace, breakGlass=True, duration="30m")))
    assert "duration 30m exceeds the break-glass maximum 15m" in too_long.stderr
    unjustified = kubectl("create", "-f", "-", as_user="alice", check=False, stdin=json.dumps(
        _request(namespace, breakGlass=True, justification="")))
    assert "a break-glass request requires a justification" in unjustified.stderr

    pim.apply(kubectl, _request(namespace, breakGlass=True), as_user="alice")
    poll(lambda: kubectl.can_i("list", "pods", as_user="alice", namespace=namespace),
         timeout=2, what="break-glass access within 2 s, no approval")
    active = pim.wait_phase(kubectl, namespace, "Active")
    assert active["status"]["reviewRequired"] is True
    assert [a for a, _ in pim.history(active)] == ["Requested", "BreakGlass", "Activated"]
    warnings = kubectl.json("get", "events", "-A", "--field-selector",
                            f"involvedObject.name={namespace},type=Warning")["items"]
    assert [e["reason"] for e in warnings] == ["BreakGlass"]

    own = pim.approve(kubectl, namespace, "alice", decision="Acknowledge", check=False)
    assert "alice cannot decide on their own request" in own.stderr
    pim.approve(kubectl, namespace, "bob", decision="Acknowledge", comment="confirmed outage")
    poll(lambda: pim.get_request(kubectl, namespace)["status"].get("reviewedBy") == "bob",
         timeout=5, what="review recorded")
    reviewed = pim.get_request(kubectl, namespace)
    assert reviewed["status"]["reviewRequired"] is False
    assert pim.history(reviewed)[-1] == ("Reviewed", "bob")


def test_break_glass_is_refused_where_the_eligibility_does_not_allow_it(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    _eligibility(kubectl, namespace)
    result = kubectl("create", "-f", "-", as_user="alice", check=False,
                     stdin=json.dumps(_request(namespace, breakGlass=True)))
    assert f"RoleEligibility {namespace} does not allow break-glass" in result.stderr
    assert not kubectl.can_i("list", "pods", as_user="alice", namespace=namespace)


def test_requester_without_the_required_identity_claim_is_refused(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    _eligibility(kubectl, namespace, requesterConditions={"extra": {"amr": ["mfa"]}})
    refused = kubectl("create", "-f", "-", as_user="alice", extra={"amr": ["pwd"]},
                      check=False, stdin=json.dumps(_request(namespace)))
    assert f"RoleEligibility {namespace} requires the requester's identity to carry amr in " \
        "['mfa']" in refused.stderr
    assert "NotFound" in kubectl("get", "accessrequest", namespace, check=False).stderr

    kubectl("create", "-f", "-", as_user="alice", extra={"amr": ["pwd", "mfa"]},
            stdin=json.dumps(_request(namespace)))
    pending = pim.wait_phase(kubectl, namespace, "Pending")
    assert pending["spec"]["requester"]["extra"] == {"amr": ["pwd", "mfa"]}


def test_low_risk_request_inside_the_window_is_auto_approved(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    today = datetime.datetime.now(datetime.UTC).strftime("%a")
    _eligibility(kubectl, namespace, autoApprove={
        "roles": [{"kind": "Role", "name": "pod-reader"}],
        "window": {"days": [today], "start": "00:00", "end": "23:59"}})
    pim.apply(kubectl, _request(namespace), as_user="alice")
    active = pim.wait_phase(kubectl, namespace, "Active")
    assert pim.history(active)[:2] == [("Requested", "alice"), ("Approved", "kubepim")]
    assert kubectl.can_i("list", "pods", as_user="alice", namespace=namespace)


def test_request_outside_the_auto_approval_window_waits_for_an_approver(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    now = datetime.datetime.now(datetime.UTC)
    other_days = [d for d in ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
                  if d != now.strftime("%a")]
    _eligibility(kubectl, namespace, autoApprove={"window": {"days": other_days}})
    pim.apply(kubectl, _request(namespace), as_user="alice")
    pending = pim.wait_phase(kubectl, namespace, "Pending")
    assert "waiting for 1 more approval(s) of 1" in pending["status"]["message"]
    assert not kubectl.can_i("list", "pods", as_user="alice", namespace=namespace)
