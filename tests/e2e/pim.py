"""Builders and readers for kubepim objects in e2e tests."""

from __future__ import annotations

import datetime
import json
import subprocess
from typing import Any

from tests.e2e.support import Kubectl, poll

API_VERSION = "pim.kubepim.dev/v1alpha1"


def eligibility(name: str, **spec: Any) -> dict[str, Any]:
    """A RoleEligibility manifest; ``spec`` in the API's camelCase."""
    return {"apiVersion": API_VERSION, "kind": "RoleEligibility", "metadata": {"name": name},
            "spec": spec}


def pod_reader_for_alice(kubectl: Kubectl, namespace: str, **spec: Any) -> None:
    """The common set-up: a Role pod-reader in ``namespace`` and a RoleEligibility (named after
    the namespace) making alice eligible for it there; ``spec`` overrides any field."""
    kubectl("create", "role", "pod-reader", "--verb=get,list", "--resource=pods", "-n", namespace)
    apply(kubectl, eligibility(namespace, **{
        "subjects": [{"kind": "User", "name": "alice"}],
        "roles": [{"kind": "Role", "name": "pod-reader"}], "namespaces": [namespace],
        "approval": {"users": ["bob"]}, **spec}))


def access_request(name: str, **spec: Any) -> dict[str, Any]:
    """An AccessRequest manifest; ``spec`` in the API's camelCase."""
    return {"apiVersion": API_VERSION, "kind": "AccessRequest", "metadata": {"name": name},
            "spec": spec}


def json_text(manifest: dict[str, Any]) -> str:
    """The manifest as kubectl reads it from stdin."""
    return json.dumps(manifest)


def apply(kubectl: Kubectl, manifest: dict[str, Any], **as_user: Any) -> None:
    """kubectl apply the manifest (as a user, with ``as_user=``/``groups=``)."""
    kubectl("apply", "-f", "-", stdin=json.dumps(manifest), **as_user)


def get_request(kubectl: Kubectl, name: str) -> dict[str, Any]:
    """The AccessRequest as the admin sees it."""
    result: dict[str, Any] = kubectl.json("get", "accessrequest", name)
    return result


def phase_of(kubectl: Kubectl, name: str) -> str | None:
    """The request's status.phase."""
    return (get_request(kubectl, name).get("status") or {}).get("phase")


def wait_phase(kubectl: Kubectl, name: str, phase: str, timeout: float = 10) -> dict[str, Any]:
    """Poll until the request reaches ``phase``; return it."""
    def reached() -> dict[str, Any] | None:
        body = get_request(kubectl, name)
        return body if (body.get("status") or {}).get("phase") == phase else None

    return poll(reached, timeout=timeout, what=f"{name} in phase {phase}")


def approve(kubectl: Kubectl, name: str, approver: str, decision: str = "Approve",
            groups: tuple[str, ...] = (), comment: str = "", key: str | None = None,
            check: bool = True, **identity: Any) -> subprocess.CompletedProcess[str]:
    """Patch a decision into the request's status as ``approver`` (under ``key``, default
    their own name); ``check=False`` returns kubectl's result instead of raising."""
    patch = {"status": {"approvals": {key or approver: {"decision": decision,
                                                        "comment": comment}}}}
    return kubectl("patch", "accessrequest", name, "--subresource=status", "--type=merge",
                   "-p", json.dumps(patch), as_user=approver, groups=groups, check=check,
                   **identity)


def act(kubectl: Kubectl, name: str, user: str, action: str, reason: str = "",
        check: bool = True, **identity: Any) -> subprocess.CompletedProcess[str]:
    """Patch an action (Withdraw, End, Revoke) into the request's status as ``user``."""
    patch = {"status": {"actions": {user: {"action": action, "reason": reason}}}}
    return kubectl("patch", "accessrequest", name, "--subresource=status", "--type=merge",
                   "-p", json.dumps(patch), as_user=user, check=check, **identity)


def history(body: dict[str, Any]) -> list[tuple[str, str]]:
    """(action, actor) of each history entry, in order."""
    return [(h["action"], h["actor"]) for h in (body.get("status") or {}).get("history", [])]


def expires_at(body: dict[str, Any]) -> datetime.datetime:
    """status.expiresAt as an aware datetime."""
    return datetime.datetime.fromisoformat(body["status"]["expiresAt"].replace("Z", "+00:00"))


def event_reasons(kubectl: Kubectl, name: str) -> list[str]:
    """Reasons of the Events about the AccessRequest, oldest first."""
    events = kubectl.json("get", "events", "-A",
                          "--field-selector", f"involvedObject.name={name},"
                          "involvedObject.kind=AccessRequest")["items"]
    events.sort(key=lambda e: (e.get("eventTime") or e.get("firstTimestamp") or "",
                               int(e["metadata"].get("resourceVersion", "0"))))
    return [e["reason"] for e in events]
