"""Watch AccessRequests and the bindings made for them; every event asks for a reconcile."""

from __future__ import annotations

from typing import Any

import kopf

from kubepim import metrics
from kubepim.api.common import GROUP
from kubepim.domain import bindings
from kubepim.engine.state import binding_key
from kubepim.k8s.client import namespace_going

from . import registry
from .reconcile import Reconciler, owning_request


@kopf.on.event(GROUP, "accessrequests", registry=registry)
async def accessrequest_event(
    name: str, type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any
) -> None:
    """Any change of a request (creation, approval) → reconcile; not our own status writes.

    The watch is field-selected to requests not settled: DELETED also means one was settled.
    """
    reconciler: Reconciler = memo.reconciler
    metrics.WATCH_EVENTS.labels("accessrequests").inc()
    if type == "DELETED":
        reconciler.limits.forget(name)
        reconciler.enqueue_deletion(dict(body))
        return
    reconciler.limits.observe(dict(body))
    # Our own status write is skipped by its version. The watch's initial listing (type None:
    # at start-up, thousands at once) waits in the slow lane: expiry timers and real changes
    # go first.
    if type == "ADDED" and not (body.get("status") or {}).get("phase") \
            and not (body.get("spec") or {}).get("breakGlass"):
        reconciler.hold(name, dict(body))  # its approval may come with it: one write
        return
    reconciler.enqueue(name, dict(body), slow=type is None)


@kopf.on.event("", "v1", "namespaces", registry=registry)
async def namespace_event(
    name: str, type: str | None, body: kopf.Body, labels: kopf.Labels, memo: kopf.Memo,
    **_: Any,
) -> None:
    """Keep every namespace's labels and uid; one being deleted counts as gone."""
    reconciler: Reconciler = memo.reconciler
    metrics.WATCH_EVENTS.labels("namespaces").inc()
    going = type == "DELETED" or namespace_going(body)
    reconciler.observe_namespace(name, None if going else dict(labels),
                                 str(body.metadata.get("uid") or ""),
                                 body.metadata.get("resourceVersion"))


async def _binding_event(body: kopf.Body, event_type: str | None, memo: kopf.Memo) -> None:
    reconciler: Reconciler = memo.reconciler
    metrics.WATCH_EVENTS.labels(f"{str(body.get('kind')).lower()}s").inc()
    key = binding_key(str(body.get("kind")), body.metadata.namespace, str(body.metadata.name))
    owner = owning_request(dict(body))
    if owner is None and body.metadata.name.startswith("kubepim-"):
        owner = body.metadata.name.removeprefix("kubepim-")
    state = reconciler.state
    if event_type == "DELETED":
        if state.was_own_delete(key):
            return  # our own delete (an expiry, a revoke): nothing to restore or decide
        state.binding_seen(key, present=False)
    else:
        state.binding_seen(key, present=True, version=body.metadata.get("resourceVersion"))
        if owner is not None:
            # The watch can deliver our own create before the create call has returned: wait
            # for the reconcile that holds the request's lock to record what it wrote.
            async with reconciler.lock(owner):
                pass
        if state.is_own_write(key, body.metadata.get("resourceVersion")):
            return  # the binding exactly as we created it
        state.drop_write(key)  # changed by someone else: read it from now on
    listing = event_type is None  # the watch's initial listing: behind timers and changes
    if owner is not None:
        reconciler.enqueue(owner, slow=listing)  # restores the real binding if this was it
    if event_type == "DELETED":
        return
    if body.metadata.labels.get(bindings.MANAGED_BY_LABEL) == bindings.MANAGED_BY:
        # Removed unless a live grant stands behind it.
        reconciler.enqueue_binding_check(key, slow=listing)


# Both binding watches are label-selected server-side (handlers/lifecycle.py): only bindings
# carrying kubepim's label reach the operator. One whose label is stripped leaves the selection:
# the watch reports it DELETED, and its request's reconcile reads it and restores it.
@kopf.on.event("rbac.authorization.k8s.io", "v1", "rolebindings", registry=registry)
async def rolebinding_event(
    body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any
) -> None:
    """A RoleBinding that is or looks like ours changed: restore it or remove it."""
    await _binding_event(body, type, memo)


@kopf.on.event("rbac.authorization.k8s.io", "v1", "clusterrolebindings", registry=registry)
async def clusterrolebinding_event(
    body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any
) -> None:
    """A ClusterRoleBinding that is or looks like ours changed: restore it or remove it."""
    await _binding_event(body, type, memo)
