"""Periodic safety nets that catch what events missed.

Remove bindings with the operator's marks but no live grant behind them, and re-reconcile every
unfinished request (timeouts, missed events, altered bindings).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from kubepim import audit, metrics
from kubepim.api import duration
from kubepim.api.request import AccessRequest, Phase
from kubepim.domain import bindings
from kubepim.domain.lifecycle import retention_over
from kubepim.k8s.client import Gone, NotLeading

from .reconcile import Reconciler, is_live_grant, owning_request, utcnow

logger = logging.getLogger(__name__)


async def sweep_orphans(reconciler: Reconciler,
                        requests: list[dict[str, Any]] | None = None) -> int:
    """Delete every marked binding with no live grant behind it; returns how many.

    A binding whose request a listing shows Active with exactly this binding is live without
    a read (``requests``: a listing of unsettled requests the caller made; else one is made
    here, after the bindings', in pages, keeping only names and binding references). Every
    other binding is judged on its request read under its lock before it is deleted: a
    listing can only spare a binding, never condemn one.
    """
    if not reconciler.leading():
        return 0
    managed = await reconciler.kube.list_managed_bindings()
    if requests is not None:
        live = _live_refs(requests)
    else:
        live = {}
        async for page in reconciler.kube.request_pages():
            live.update(_live_refs(page))
    removed = 0
    for binding in managed:
        metadata = binding["metadata"]
        owner = owning_request(binding)
        if owner is not None and live.get(owner) == (
                binding.get("kind"), metadata.get("name"), metadata.get("namespace")):
            continue
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


def _live_refs(items: list[dict[str, Any]]) -> dict[str, tuple[str, str, str | None]]:
    """Active requests of a listing → the binding each should have (kind, name, namespace)."""
    live: dict[str, tuple[str, str, str | None]] = {}
    for item in items:
        if (item.get("status") or {}).get("phase") != Phase.ACTIVE.value:
            continue
        try:
            spec = AccessRequest.model_validate(item).spec
        except ValueError:
            continue
        name = item["metadata"]["name"]
        ref = bindings.binding_ref(name, spec)
        live[name] = (ref.kind, ref.name, ref.namespace)
    return live


async def expire_retention(reconciler: Reconciler, retention: str) -> int:
    """Delete settled requests kept past ``retention``, each with a final audit line.

    Pages through settled requests (500 at a time, none held longer than its page): the only
    periodic read of finished requests, on its own, slower interval.
    """
    if not reconciler.leading():
        return 0
    keep = duration.parse(retention)
    now = utcnow()
    deleted = 0
    for _ in range(3):
        try:
            async for page in reconciler.kube.settled_request_pages():
                deleted += await _expire_page(reconciler, page, retention, keep, now)
            return deleted
        except Gone:
            # The pass outlived its continue token (etcd compacted): list again from the start
            # (what was deleted is gone from the list).
            logger.info("retention pass: the listing expired; listing again")
    logger.warning("retention pass: the listing expired three times; the next pass goes on")
    return deleted


async def _expire_page(reconciler: Reconciler, page: list[dict[str, Any]], retention: str,
                       keep: datetime.timedelta, now: datetime.datetime) -> int:
    deleted = 0
    for item in page:
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


async def resync_once(reconciler: Reconciler) -> None:
    """Relist the watch caches, sweep orphans, reconcile every request not settled.

    Reads only what the operator is not done with: its own bindings (label selector) and the
    requests not settled (field selector), each paged; its cost does not grow with finished
    requests.
    """
    started = time.monotonic()
    await reconciler.refresh_eligibilities()
    await reconciler.refresh_namespaces()
    await sweep_orphans(reconciler)
    async for page in reconciler.kube.request_pages():
        for item in page:
            # Decided again, on the listed copy only if this replica holds the request (a
            # copy older than a version decided since is never decided on); one forgotten
            # meanwhile (ended, settled) is read: a stale copy of it must not grant again.
            name = item["metadata"]["name"]
            held = reconciler.state.is_held(name)
            reconciler.enqueue(name, item if held else None, again=True)
        # A page at a time: the listed copies held waiting are at most about two pages.
        await reconciler.queue.slow_below(_PAGE, timeout=60)
    # Settled before this list and still remembered: their leave event was missed.
    reconciler.state.drop_settled_before(started)
    reconciler.state.drop_own_deletes_before(time.monotonic() - 300)
    for hook in reconciler.on_resync:  # (access reviews: every review and open run)
        await hook()
    metrics.RESYNCS.inc()


_PAGE = 500


async def resync_forever(reconciler: Reconciler, interval: float) -> None:
    """Run :func:`resync_once` every ``interval`` seconds until cancelled."""
    await _every(interval, "periodic resync", lambda: resync_once(reconciler))


async def retention_forever(reconciler: Reconciler, interval: float, retention: str) -> None:
    """Run :func:`expire_retention` a minute after start, then every ``interval`` seconds.

    (The first pass soon: a leader that restarts more often than ``interval`` still runs it.)
    """
    await _every(interval, "retention pass", lambda: expire_retention(reconciler, retention),
                 first=min(interval, 60.0))


async def _every(interval: float, what: str,
                 work: Callable[[], Coroutine[Any, Any, Any]], first: float | None = None
                 ) -> None:
    wait = interval if first is None else first
    while True:
        await asyncio.sleep(wait)
        wait = interval
        try:
            await work()
        except Exception:
            logger.exception("%s failed; retrying in %.0f s", what, interval)
