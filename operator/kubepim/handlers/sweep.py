"""Periodic safety nets that catch what events missed.

Remove bindings with the operator's marks but no live grant behind them, and re-reconcile every
unfinished request (timeouts, missed events, altered bindings).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from kubepim.api.request import AccessRequest, Phase
from kubepim.domain import bindings

from .reconcile import Reconciler

logger = logging.getLogger(__name__)


def owning_request(binding: dict[str, Any]) -> str | None:
    """The AccessRequest a binding claims to belong to (owner reference, else label)."""
    metadata = binding.get("metadata", {})
    for owner in metadata.get("ownerReferences") or []:
        if owner.get("kind") == "AccessRequest":
            return str(owner.get("name"))
    label = (metadata.get("labels") or {}).get(bindings.REQUEST_LABEL)
    return str(label) if label else None


async def is_live_grant(reconciler: Reconciler, binding: dict[str, Any]) -> bool:
    """Whether the binding is exactly the one an Active request should have."""
    name = owning_request(binding)
    if name is None:
        return False
    async with reconciler.lock(name):  # not while an activation is half-written
        body = await reconciler.kube.get_request(name)
    if body is None or (body.get("status") or {}).get("phase") != Phase.ACTIVE.value:
        return False
    try:
        spec = AccessRequest.model_validate(body).spec
    except ValueError:
        return False
    ref = bindings.binding_ref(name, spec)
    metadata = binding.get("metadata", {})
    return (binding.get("kind") == ref.kind and metadata.get("name") == ref.name
            and metadata.get("namespace") == ref.namespace)


async def sweep_orphans(reconciler: Reconciler) -> int:
    """Delete every marked binding with no live grant behind it; returns how many."""
    removed = 0
    for binding in await reconciler.kube.list_managed_bindings():
        if await is_live_grant(reconciler, binding):
            continue
        metadata = binding["metadata"]
        if await reconciler.kube.delete_binding(
                binding["kind"], metadata["name"], metadata.get("namespace")):
            removed += 1
            logger.warning("removed %s %s/%s: it carries kubepim's marks but no live grant",
                           binding["kind"], metadata.get("namespace") or "", metadata["name"])
    return removed


async def resync_once(reconciler: Reconciler) -> None:
    """Sweep orphans and reconcile every unfinished request."""
    await sweep_orphans(reconciler)
    names = [
        item["metadata"]["name"] for item in await reconciler.kube.list_requests()
        if (item.get("status") or {}).get("phase") in (None, Phase.PENDING.value,
                                                        Phase.ACTIVE.value)
    ]
    for name in names:
        await reconciler.reconcile(name)


async def resync_forever(reconciler: Reconciler, interval: float) -> None:
    """Run :func:`resync_once` every ``interval`` seconds until cancelled."""
    while True:
        await asyncio.sleep(interval)
        try:
            await resync_once(reconciler)
        except Exception:
            logger.exception("periodic resync failed; retrying in %.0f s", interval)
