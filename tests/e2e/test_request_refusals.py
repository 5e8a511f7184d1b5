"""Requests outside the eligibility are refused with a message naming what is allowed."""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e import pim
from tests.e2e.support import Kubectl, OperatorProcess


def _setup(kubectl: Kubectl, namespace: str) -> None:
    for role in ("pod-reader", "secret-reader"):
        kubectl("create", "role", role, "--verb=get", "--resource=pods", "-n", namespace)
    pim.apply(kubectl, pim.eligibility(
        namespace, subjects=[{"kind": "User", "name": "alice"}],
        roles=[{"kind": "Role", "name": "pod-reader"}], namespaces=[namespace],
        maxDuration="30m", approval={"users": ["bob"]},
        justification={"required": True, "ticketPattern": "INC-[0-9]+"}))


_GOOD: dict[str, Any] = {"role": {"kind": "Role", "name": "pod-reader"}, "duration": "10m",
                         "justification": "debugging", "ticket": "INC-7"}


@pytest.mark.parametrize(("change", "message"), [
    pytest.param({"role": {"kind": "Role", "name": "secret-reader"}},
                 "alice is not eligible for Role/secret-reader in namespace {ns}: eligible "
                 "roles there are [Role/pod-reader]",
                 id="a role outside the eligibility is refused naming the eligible roles"),
    pytest.param({"namespace": "default"},
                 "alice is not eligible for any role in namespace default",
                 id="a namespace outside the eligibility is refused"),
    pytest.param({"duration": "2h"},
                 "duration 2h exceeds the maximum 30m of RoleEligibility {ns}",
                 id="a duration over the cap is refused naming the cap"),
    pytest.param({"justification": "  "},
                 "RoleEligibility {ns} requires a justification: set spec.justification",
                 id="a missing justification is refused"),
    pytest.param({"ticket": "see slack"},
                 "RoleEligibility {ns} requires spec.ticket matching INC-[0-9]+",
                 id="a ticket not matching the pattern is refused"),
])
def test_request_outside_the_eligibility_is_refused_at_apply_and_nothing_is_created(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str, change: dict[str, Any],
    message: str,
) -> None:
    _setup(kubectl, namespace)
    spec = {**_GOOD, "namespace": namespace, **change}
    result = kubectl("apply", "-f", "-", stdin=pim.json_text(pim.access_request(namespace, **spec)),
                     as_user="alice", check=False)

    assert result.returncode != 0
    assert message.format(ns=namespace) in result.stderr
    # ... and says what alice may request instead.
    assert f"alice may request: [Role/pod-reader] in namespaces [{namespace}] for up to 30m" \
        in result.stderr
    assert "NotFound" in kubectl("get", "accessrequest", namespace, check=False).stderr
    assert kubectl("get", "rolebindings", "-n", namespace, "-o", "name").stdout == ""
    assert kubectl.can_i("get", "pods", as_user="alice", namespace=namespace) is False


@pytest.mark.parametrize(("duration", "message"), [
    pytest.param("-5m", "spec.duration in body should match", id="a negative duration"),
    pytest.param("1.5h", "spec.duration in body should match", id="a fractional duration"),
    pytest.param("10d", "spec.duration in body should match", id="days are not a unit"),
    pytest.param("0s", "duration must be positive", id="a zero duration"),
])
def test_malformed_duration_is_refused_at_admission(
    kubectl: Kubectl, namespace: str, duration: str, message: str
) -> None:
    manifest = pim.access_request(namespace, **{**_GOOD, "namespace": namespace,
                                                "duration": duration})
    result = kubectl("apply", "-f", "-", stdin=pim.json_text(manifest), as_user="alice",
                     check=False)
    assert result.returncode != 0
    assert message in result.stderr
    assert "NotFound" in kubectl("get", "accessrequest", namespace, check=False).stderr


def test_spec_cannot_change_after_creation(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    _setup(kubectl, namespace)
    pim.apply(kubectl, pim.access_request(namespace, **{**_GOOD, "namespace": namespace}),
              as_user="alice")
    pim.wait_phase(kubectl, namespace, "Pending")
    result = kubectl("patch", "accessrequest", namespace, "--type=merge",
                     "-p", '{"spec":{"duration":"30m"}}', check=False)
    assert result.returncode != 0
    assert "spec is immutable" in result.stderr
    assert pim.get_request(kubectl, namespace)["spec"]["duration"] == "10m"


def test_justification_with_control_characters_is_refused_at_admission(
    kubectl: Kubectl, namespace: str
) -> None:
    manifest = pim.access_request(namespace, **{**_GOOD, "namespace": namespace,
                                                "justification": "ok\u001b[2Jcleared"})
    result = kubectl("apply", "-f", "-", stdin=pim.json_text(manifest), as_user="alice",
                     check=False)
    assert result.returncode != 0
    assert "justification must not contain control characters" in result.stderr
    assert "NotFound" in kubectl("get", "accessrequest", namespace, check=False).stderr


def test_oversized_justification_is_refused_at_admission(kubectl: Kubectl, namespace: str) -> None:
    manifest = pim.access_request(namespace, **{**_GOOD, "namespace": namespace,
                                                "justification": "x" * 1025})
    result = kubectl("apply", "-f", "-", stdin=pim.json_text(manifest), as_user="alice",
                     check=False)
    assert result.returncode != 0
    assert "spec.justification: Too long: may not be more than 1024" in result.stderr
