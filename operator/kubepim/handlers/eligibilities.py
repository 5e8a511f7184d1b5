"""Watch RoleEligibilities: report whether each is usable, and re-decide the requests under it.

The operator writes only an eligibility's status (Ready condition and observedGeneration);
spec and metadata belong to whoever applies it (GitOps).
"""

from __future__ import annotations

import datetime
from typing import Any

import kopf
from pydantic import ValidationError

from kubepim.api.common import GROUP, Condition
from kubepim.api.eligibility import RoleEligibilitySpec

from . import registry
from .reconcile import Reconciler, utcnow


async def readiness(reconciler: Reconciler, spec: dict[str, Any]) -> tuple[bool, str, str]:
    """(ready, reason, message) of an eligibility spec: valid, and its roles exist."""
    try:
        model = RoleEligibilitySpec.model_validate(spec)
    except ValidationError as error:
        return False, "InvalidSpec", str(error).replace("\n", " ")
    missing = []
    for role in model.roles:
        if role.kind == "ClusterRole":
            if not await reconciler.kube.role_exists("ClusterRole", role.name, None):
                missing.append(f"ClusterRole {role.name} does not exist")
        else:
            for namespace in model.namespaces:
                if not await reconciler.kube.role_exists("Role", role.name, namespace):
                    missing.append(f"Role {role.name} does not exist in namespace {namespace}")
    if missing:
        return False, "RoleNotFound", "; ".join(missing)
    unbindable = [str(role) for role in model.roles if not await reconciler.kube.i_may(
        "bind", "rbac.authorization.k8s.io",
        "clusterroles" if role.kind == "ClusterRole" else "roles", name=role.name)]
    if unbindable:
        return False, "OperatorCannotBind", (
            f"the operator may not bind {', '.join(unbindable)}: add it to the chart's "
            "bindableRoles")
    return True, "Valid", "eligible subjects may request these roles"


@kopf.on.event(GROUP, "roleeligibilities", registry=registry)
async def roleeligibility_event(
    body: kopf.Body, name: str, type: str | None, memo: kopf.Memo, **_: Any
) -> None:
    """Report readiness, then reconcile every unfinished request (coverage may have changed)."""
    reconciler: Reconciler = memo.reconciler
    spec = None if type == "DELETED" else dict(body.get("spec") or {})
    reconciler.observe_eligibility(name, spec)
    if not reconciler.leading():
        return  # the leader reports readiness; on takeover it reconciles everything
    if type != "DELETED":
        ready, reason, message = await readiness(reconciler, dict(body.get("spec") or {}))
        generation = body.metadata.get("generation", 0)
        old = [c for c in (body.get("status") or {}).get("conditions") or []
               if c.get("type") == "Ready"]
        unchanged = old and old[0].get("status") == str(ready) and old[0].get("message") == message
        moved_at: datetime.datetime = utcnow()
        if old and unchanged:
            moved_at = datetime.datetime.fromisoformat(
                old[0]["lastTransitionTime"].replace("Z", "+00:00"))
        condition = Condition(type="Ready", status="True" if ready else "False", reason=reason,
                              message=message, last_transition_time=moved_at,
                              observed_generation=generation)
        status = {"observedGeneration": generation, "conditions": [condition.wire()]}
        current = body.get("status") or {}
        if {k: current.get(k) for k in status} != status:
            await reconciler.kube.patch_eligibility_status(name, status)
    if type is None:
        return  # the initial listing: the requests' own listing reconciles them anyway
    for request in sorted(reconciler.governed.get(name, set())):
        await reconciler.reconcile(request)
