"""Periodic safety nets that catch what events missed.

Remove bindings with the operator's marks but no live grant behind them, and re-reconcile every
unfinished request (timeouts, missed events, altered bindings).
"""

from __future__ import annotations

import asyncio
import logging

from kubepim import audit
from kubepim.api import duration
from kubepim.api.request import AccessRequest, Phase
from kubepim.domain.lifecycle import retention_over
from kubepim.k8s.client import NotLeading

from .reconcile import Reconciler, is_live_grant, utcnow

logger = logging.getLogger(__name__)


async def sweep_orphans(reconciler: Reconciler) -> int:
    """Delete every marked binding with no live grant behind it; returns how many."""
    if not reconciler.leading():
        return 0
    removed = 0
    for binding in await reconciler.kube.list_managed_bindings():
        metadata = binding["metadata"]
        try:
            if await is_live_grant(reconciler, binding):
                continue
            deleted = await reconciler.delete_binding(
                binding["kind"], metadata["name"], metadata.get("namespace"),
                metadata.get("uid"))
        except NotLeading:
            raise
        except Exception as error:  # one binding must not stop the sweep (or a takeover)
            logger.warning("could not check %s %s/%s (%s: %s); the next sweep tries again",
                           binding["kind"], metadata.get("namespace") or "", metadata["name"],
                           type(error).__name__, error)
            continue
        if deleted:
            removed += 1
            logger.warning("removed %s %s/%s: it carries kubepim's marks but no live grant",
                           binding["kind"], metadata.get("namespace") or "", metadata["name"])
    return removed


async def expire_retention(reconciler: Reconciler, retention: str) -> int:
    """Delete finished requests kept past ``retention``, each with a final audit line."""
    if not reconciler.leading():
        return 0
    keep = duration.parse(retention)
    now = utcnow()
    deleted = 0
    for item in await reconciler.kube.list_requests():
        try:
            request = AccessRequest.model_validate(item)
        except ValueError:
            continue
        if request.status is None or not retention_over(request.status, keep, now):
            continue
        if item["metadata"].get("deletionTimestamp"):
            continue  # already being deleted: its line was logged when that began
        # The line first: a crash after it repeats it (same id), never loses it.
        audit.deleted(item, request.spec, now,
                      f"retention of {retention} after the request finished is over")
        if await reconciler.kube.delete_request(item["metadata"]["name"],
                                                item["metadata"]["uid"]):
            deleted += 1
    return deleted


async def resync_once(reconciler: Reconciler, retention: str) -> None:
    """Sweep orphans, reconcile every unfinished request, apply the retention."""
    await reconciler.refresh_eligibilities()
    await reconciler.refresh_namespaces()
    await sweep_orphans(reconciler)
    names = [
        item["metadata"]["name"] for item in await reconciler.kube.list_requests()
        if (item.get("status") or {}).get("phase") in (None, Phase.PENDING.value,
                                                        Phase.ACTIVE.value)
    ]
    for name in names:
        reconciler.enqueue(name)
    await expire_retention(reconciler, retention)


async def resync_forever(reconciler: Reconciler, interval: float, retention: str) -> None:
    """Run :func:`resync_once` every ``interval`` seconds until cancelled."""
    while True:
        await asyncio.sleep(interval)
        try:
            await resync_once(reconciler, retention)
        except Exception:
            logger.exception("periodic resync failed; retrying in %.0f s", interval)
