"""Reconcile one AccessRequest: load inputs, ask the domain, write binding, status and audit.

Order matters for safety: the binding is created before status says Active, and deleted before
status says Expired/Revoked/Denied, so status never claims less access than exists. The status
write carries the resourceVersion read, so a concurrent change (an approval landing) makes it
retry from a fresh read instead of overwriting; the history is appended exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import logging
import re
import time
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

from pydantic import ValidationError

from kubepim import audit, metrics
from kubepim.api import duration
from kubepim.api.common import DNS_SUBDOMAIN
from kubepim.api.eligibility import RoleEligibilitySpec
from kubepim.api.request import (
    AccessRequest,
    AccessRequestSpec,
    AccessRequestStatus,
    Activity,
    HistoryEntry,
    Phase,
)
from kubepim.domain import activity, bindings
from kubepim.domain.admission import check_limits as limits_refusal
from kubepim.domain.admission import privileged
from kubepim.domain.lifecycle import OPERATOR, Plan, Transition, conditions, decide, settled
from kubepim.domain.quorum import Case
from kubepim.domain.review import role_key
from kubepim.engine.queue import WorkQueue
from kubepim.engine.state import State, binding_key
from kubepim.k8s.client import (
    Conflict,
    Forbidden,
    Kube,
    NotFound,
    NotLeading,
    namespace_going,
    parse_time,
)
from kubepim.notify.notifier import Notifier

from .activity import ActivitySink
from .activity import dump as dump_activity
from .limits import RequesterLimits

logger = logging.getLogger(__name__)

_ATTEMPTS = 8


# How long a new request waits for an approval that comes with it (Reconciler.hold), and the
# prefix of the key whose timer ends the wait.
HOLD_SECONDS = 0.25
_HOLD = "hold:"

# Expiries whose bindings are being deleted at once, beside the queue (Reconciler._revoke).
REVOKE_SLOTS = 64

# How long an Event waits at most for the grants and expiries in the queue to go first, and how
# often that wait looks at the queue (Reconciler._after_grants).
EVENT_YIELD_SECONDS = 30.0
_EVENT_YIELD_POLL = 0.05


def utcnow() -> datetime.datetime:
    """The operator's clock (the only place handlers read one)."""
    return datetime.datetime.now(datetime.UTC)


class BindingTaken(Exception):
    """A binding of the grant's name exists that kubepim did not make: it is never touched."""


class Reconciler:
    """Brings AccessRequests and their bindings to what the domain decides."""

    def __init__(self, kube: Kube, case: Case = "insensitive", max_open: int = 20,
                 max_break_glass: int = 1) -> None:
        self.kube = kube
        self.case: Case = case
        # Open requests and unreviewed break-glass grants per requester, and their limits.
        self.limits = RequesterLimits(case)
        self.max_open, self.max_break_glass = max_open, max_break_glass
        # Everything remembered between reconciles: one owner, a method per change.
        self.state = State()
        # Every reconcile goes through the queue: it owns retries (backoff on failure) and the
        # expiry and pending-timeout timers (delayed keys).
        self.queue = WorkQueue(self._process, gate=lambda: self.leading(),
                               held=(NotLeading,), woken=lambda key: self._woken.add(key),
                               due=self._due)
        # Active grants by request name: (expiresAt, binding key, request uid). When the expiry
        # timer fires, the binding goes at once, beside the queue (access first, as at a
        # takeover); the Expired record follows through the queue's reconcile, which finds the
        # binding gone. Under a burst of expiries the queue's wait is then bookkeeping's alone.
        self._expiring: dict[str, tuple[datetime.datetime, str, str]] = {}
        self._revoking: set[asyncio.Task[None]] = set()
        # Connections of their own: a revoke never waits for one behind reconciles and Events,
        # and enough of them that a stall of the API server does not leave revokes queued
        # here behind a few slots when it ends (docs/scale.md, run O).
        self._revoke_slots = asyncio.Semaphore(REVOKE_SLOTS)
        self._revoker: Kube | None = None
        # When the early revoke removed a grant's binding (its lag observed then; the Expired
        # entry says how late access ended by it).
        self._revoked_at: dict[str, tuple[str, datetime.datetime]] = {}  # name -> (uid, when)
        # Bodies delivered by watch events, newest per request, until a worker takes the key;
        # and deleted requests whose binding and final audit line are still to be done.
        self._bodies: dict[str, dict[str, Any]] = {}
        self._deleted: dict[str, dict[str, Any]] = {}
        self._again: set[str] = set()
        # Keys added by something other than a watch event since a worker last took them (a
        # timer, a retry, the notifier, a binding): a held body that is no newer than the
        # version decided cannot answer those, so the request is read instead of skipped.
        self._woken: set[str] = set()
        # New requests held a moment for their approval (see hold).
        self._held: set[str] = set()
        # Leadership terms ended on this replica (see reset): a reconcile started in one that
        # ended records nothing, even if the replica leads again by the time it finishes.
        self.term = 0
        # The unsettled requests a takeover listed that no reconcile of this term has finished
        # yet: work that is not urgent (a standing-privilege scan) waits for ``caught_up``.
        self._catching_up: set[str] = set()
        self._took_over_at = 0.0
        self.caught_up = asyncio.Event()
        self._refreshing = asyncio.Lock()  # one relist at a time
        self._posting: set[asyncio.Task[None]] = set()
        self._event_slots = asyncio.Semaphore(8)
        # Events wait while grants and expiries wait or run in the queue (see _after_grants):
        # one shared wait, not a poll per Event.
        self._quiet: asyncio.Task[None] | None = None
        self._flushing = False  # shutting down: Events wait no more
        # Queue keys of other kinds, by prefix (``review:NAME``, ``run:NAME``): their worker.
        self.keyed: dict[str, Callable[[str], Coroutine[Any, Any, None]]] = {}
        # What the resync (and a takeover) also asks of those kinds: their keys queued again.
        self.on_resync: list[Callable[[], Coroutine[Any, Any, None]]] = []
        self.keyed[_HOLD] = self._release
        # Deliveries to NotificationRoutes (the operator's start-up makes it); never waited on.
        self.notifier: Notifier | None = None
        # The audit sink (issue 18), when configured: told which grants are Active; its
        # counted use rides along with the final status write (docs/activity.md).
        self.activity: ActivitySink | None = None
        # NotificationRoutes as the route watch last delivered them (by name).
        self.routes: dict[str, dict[str, Any]] = {}
        # Whether this replica may act now (leader election sets it; alone, always), and
        # whether it believes it holds the lease (keys are kept while renewal is late).
        self.leading: Callable[[], bool] = lambda: True
        self.elected: Callable[[], bool] = lambda: True
        # A standby reports no grants: only the leader's view counts (and pages).
        metrics.track(lambda: self.state.active_grants() if self.elected() else 0,
                      lambda: self.state.overdue(utcnow()) if self.elected() else 0)

    async def eligibilities(self) -> dict[str, RoleEligibilitySpec]:
        """Every valid RoleEligibility by name (invalid ones are reported on their status).

        Served from a cache that the eligibility watch keeps current and each resync rebuilds
        (so a deletion missed while the watch restarted cannot linger); the first call lists.
        """
        cached = self.state.eligibilities
        if cached is None:
            # One list for all who ask at once (at a takeover: thousands of reconciles and
            # every role's listing event), not one each after the other.
            async with self._refreshing:
                if self.state.eligibilities is None:
                    await self._relist_eligibilities()
            cached = self.state.eligibilities
        assert cached is not None
        return cached

    async def refresh_eligibilities(self) -> None:
        """Rebuild the eligibility cache from a list call, never undoing a newer watch event."""
        async with self._refreshing:
            await self._relist_eligibilities()

    async def _relist_eligibilities(self) -> None:
        changed = self.state.apply_eligibility_list(*await self.kube.list_eligibilities_at())
        for eligibility in changed:
            for request in self.state.governed_by(eligibility):
                self.enqueue(request)

    async def refresh_namespaces(self) -> None:
        """Rebuild the namespace cache from a list call (a relisting watch reports no deletion).

        Requests in a namespace found changed or gone are decided again.
        """
        items, listed_at = await self.kube.list_namespaces_at()
        changed = self.state.apply_namespace_list(
            ((item["metadata"]["name"], None if namespace_going(item) else
              dict(item["metadata"].get("labels") or {}), str(item["metadata"].get("uid") or ""),
              item["metadata"].get("resourceVersion")) for item in items), listed_at)
        for request in changed:
            self.enqueue(request)

    def observe_namespace(self, name: str, labels: dict[str, str] | None, uid: str = "",
                          version: str | None = None) -> None:
        """Apply one namespace watch event (``labels`` None: deleted or being deleted).

        Its open requests are decided again if that changed what they are decided on.
        """
        for request in self.state.observe_namespace(name, labels, uid, version):
            self.enqueue(request)

    async def namespace(self, name: str) -> tuple[str, dict[str, str]] | None:
        """(uid, labels) of a namespace (None: gone or going), from the watch when it has it."""
        cached = self.state.namespace(name)
        if cached is not None:
            return cached
        return await self.kube.namespace(name)

    async def namespace_labels(self, name: str) -> dict[str, str] | None:
        """Labels of a namespace (None: it does not exist), from the watch when it has it."""
        found = await self.namespace(name)
        return found[1] if found is not None else None

    def forget(self, name: str, uid: str = "") -> None:
        """Everything remembered of a request that is gone: timers, records, gauges.

        ``uid``: of the request that is gone; if another request is held under its name (made
        again since), that one is kept (its expiry timer above all) and read again instead.
        """
        if self.state.holds_another(name, uid):
            self.enqueue(name)
            return
        self.queue.cancel(name)
        self.state.forget(name)
        self._expiring.pop(name, None)
        self._revoked_at.pop(name, None)
        if self.activity is not None:
            self.activity.forget(name, ended_too=False)  # (late events of an ended grant count)
        self._reconciled(name)

    def catch_up(self, names: Iterable[str]) -> None:
        """A takeover listed these unsettled requests: ``caught_up`` once each is reconciled."""
        self._catching_up = set(names)
        self._took_over_at = time.monotonic()
        self.caught_up.clear()
        self._reconciled(None)

    def _reconciled(self, name: str | None) -> None:
        """A reconcile of ``name`` finished (or it is gone): the takeover's work shrinks."""
        if name is not None:
            self._catching_up.discard(name)
        if not self._catching_up and self._took_over_at and not self.caught_up.is_set():
            self.caught_up.set()
            logger.info("caught up: every request listed at the takeover reconciled %.1f s "
                        "after it", time.monotonic() - self._took_over_at)

    def expires(self, name: str, uid: str, namespace: str | None,
                expires_at: datetime.datetime) -> None:
        """An Active grant: its timer, and its binding revoked the moment the timer fires.

        ``namespace``: where the grant is (None: cluster-wide), which says where its binding is.
        """
        ref = bindings.binding_ref_in(name, namespace)
        self._expiring[name] = (expires_at, binding_key(ref.kind, ref.namespace, ref.name),
                                uid)
        self.queue.schedule(name, expires_at)

    def _access_ended(self, name: str, uid: str | None) -> datetime.datetime | None:
        """When the early revoke removed this request's binding (None: it did not)."""
        ended = self._revoked_at.get(name)
        return ended[1] if ended is not None and ended[0] == uid else None

    def _due(self, name: str) -> None:
        """A timer fired: an Active grant past its expiry loses its binding now, beside the queue.

        The reconcile the timer also queues records Expired (and deletes the binding itself if
        this did not: a failure here is only a lost head start).
        """
        held = self._expiring.get(name)
        if held is None or held[0] > utcnow() or not self.leading():
            return  # (not an Active grant's expiry: a pending timeout, a retry)
        task = asyncio.create_task(self._revoke(name, *held), name=f"revoke-{name}")
        self._revoking.add(task)
        task.add_done_callback(self._revoking.discard)

    async def _revoke(self, name: str, expires: datetime.datetime, key: str, uid: str) -> None:
        asked = time.monotonic()
        async with self._revoke_slots, self.lock(name):  # (locks are not held while queued)
            sent = time.monotonic()
            metrics.REVOKE_STAGE_SECONDS.labels("wait").observe(sent - asked)
            if self._expiring.get(name) != (expires, key, uid) or not self.leading():
                metrics.EARLY_REVOKES.labels("decided").inc()
                return  # decided since (ended, expired, forgotten) or no longer leading
            written = self.state.own_write(key, uid)
            if written is None:
                metrics.EARLY_REVOKES.labels("unverified").inc()
                return  # not a version we wrote or verified: the reconcile reads and judges it
            kind, namespace, binding = key.split("/", 2)
            self.state.drop_write(key)
            if self._revoker is None:
                self._revoker = self.kube.sibling(REVOKE_SLOTS, fenced=True)
            try:
                # Only the version we wrote or verified (changed since: the reconcile judges).
                removed = await self._revoker.delete_binding(kind, binding, namespace or None,
                                                             resource_version=written)
            except Exception as error:  # (NotLeading, Conflict, a timeout: the reconcile's)
                metrics.EARLY_REVOKES.labels("failed").inc()
                logger.debug("early revoke of %s left to its reconcile (%s: %s)", name,
                             type(error).__name__, error)
                return
            metrics.REVOKE_STAGE_SECONDS.labels("delete").observe(time.monotonic() - sent)
            metrics.EARLY_REVOKES.labels("removed" if removed else "gone").inc()
            self._deleted_binding(key, removed)
            if removed:
                ended = utcnow()
                metrics.EXPIRY_LAG_SECONDS.observe(metrics.seconds_between(expires, ended) or 0.0)
                self._revoked_at[name] = (uid, ended)

    async def close(self) -> None:
        """Close the connections of the client and of the revokes."""
        if self._revoker is not None:
            await self._revoker.close()
        await self.kube.close()

    def lock(self, name: str) -> contextlib.AbstractAsyncContextManager[None]:
        """The lock held while one request is reconciled (``async with``)."""
        return self.state.locks.hold(name)

    # Triggers: each only adds a key to the queue.

    def enqueue(self, name: str, body: dict[str, Any] | None = None, again: bool = False,
                slow: bool = False) -> None:
        """Ask for a reconcile of ``name``; ``body`` as a watch event delivered it, if any.

        ``again``: decide even if this very version was decided before (the resync: an event
        the request does not carry, such as a binding deleted while the watch was down, may
        have been missed). A standby keeps nothing (its takeover reads everything); a leader
        whose renewal is late keeps the key until it leads again or loses the lease. ``slow``:
        in the queue's slow lane, behind timers and changes (a watch's initial listing).
        """
        if not self.elected():
            return
        was_held = name in self._held
        if was_held:  # (its approval, most often: decided now, the hold dropped)
            self._held.discard(name)
            self.queue.cancel(_HOLD + name)
        if again:
            self._again.add(name)
        elif body is None:
            self._woken.add(name)
        self._keep_body(name, body)
        # Listings never hold up timers and events; a new request stays in the first lane.
        self.queue.add(name, slow=(again or slow) and not was_held)

    def _keep_body(self, name: str, body: dict[str, Any] | None) -> None:
        """Hold ``body`` for the next reconcile of ``name`` unless a newer copy is held."""
        if body is not None:
            held = self._bodies.get(name)
            if held is None or _version(body) is None or _version(held) is None or \
                    int(_version(body) or 0) > int(_version(held) or 0):
                self._bodies[name] = body

    def hold(self, name: str, body: dict[str, Any]) -> None:
        """Decide a new request ``HOLD_SECONDS`` from now, unless a change of it comes first.

        Its approval, most often: decided at once, the hold dropped. A client that creates and
        approves at once (automation, a burst) then gets one status write with Requested,
        Approved and Activated instead of a Pending write racing the approval, which the API
        server answers by admitting the approval again (two SubjectAccessReviews each time;
        docs/performance.md). Break-glass is never held.
        """
        if not self.elected():
            return
        self._keep_body(name, body)
        self._held.add(name)
        # A timer of its own key: a predecessor under the same name, finishing or forgotten
        # meanwhile, cancels its own timers (the request's key), never this one.
        self.queue.add_after(_HOLD + name, HOLD_SECONDS)

    async def _release(self, name: str) -> None:
        """The hold ended with no change: decide the request from the held copy now."""
        if name in self._held:
            self._held.discard(name)
            self.queue.add(name)

    def enqueue_key(self, key: str, slow: bool = False) -> None:
        """Ask for the work of a key of another kind (see ``keyed``); a standby keeps none."""
        if self.elected():
            self.queue.add(key, slow=slow)

    def post_later(self, post: Coroutine[Any, Any, None]) -> None:
        """Post an Event in the background, a bounded share of connections (never waited on)."""
        self._post_in_order([post])

    def _post_in_order(self, posts: list[Coroutine[Any, Any, None]]) -> None:
        """Post Events in order, in the background, once grants have gone first."""
        async def post() -> None:
            await self._after_grants()
            await _in_order(posts, self._event_slots)
        task = asyncio.create_task(post())
        self._posting.add(task)
        task.add_done_callback(self._posting.discard)

    async def _after_grants(self) -> None:
        """Wait while first-lane work waits or runs in the queue, at most EVENT_YIELD_SECONDS.

        An Event records a transition the status history already holds; under a burst of
        grants or expiries it goes after them rather than beside them (docs/performance.md).
        Every waiting Event shares one wait, so a sustained burst releases them in batches.
        """
        if self._flushing or not self.queue.pressing():
            return
        if self._quiet is None or self._quiet.done():
            self._quiet = task = asyncio.create_task(self._until_quiet())
            self._posting.add(task)
            task.add_done_callback(self._posting.discard)
        await asyncio.shield(self._quiet)

    async def _until_quiet(self) -> None:
        deadline = time.monotonic() + EVENT_YIELD_SECONDS
        while self.queue.pressing() and time.monotonic() < deadline and not self._flushing:
            await asyncio.sleep(_EVENT_YIELD_POLL)

    async def flush_events(self, seconds: float) -> None:
        """Shutting down: post the Events still waiting, for at most ``seconds``."""
        self._flushing = True
        pending = list(self._posting)
        if pending:
            await asyncio.wait(pending, timeout=seconds)

    def enqueue_deletion(self, body: dict[str, Any]) -> None:
        """A request is gone: remove its binding and log its final line (through the queue)."""
        name = body["metadata"]["name"]
        self._bodies.pop(name, None)
        if not self.elected():
            self.forget(name)
            return
        uid = str(body["metadata"].get("uid"))
        self._deleted[uid] = body
        self.queue.add(f"{_DELETED}{uid}")

    def enqueue_binding_check(self, key: str, slow: bool = False) -> None:
        """A binding with kubepim's marks changed: remove it unless a live grant is behind it."""
        if self.elected():
            self.queue.add(f"{_BINDING}{key}", slow=slow)

    async def delete_binding(self, kind: str, name: str, namespace: str | None,
                             uid: str | None = None) -> bool:
        """Delete a binding outside a request's reconcile (sweep, takeover).

        Our record of having written it goes too; False if it was already gone.
        """
        key = binding_key(kind, namespace, name)
        self.state.drop_write(key)
        removed = await self.kube.delete_binding(kind, name, namespace, uid=uid)
        self._deleted_binding(key, removed)
        return removed

    def _deleted_binding(self, key: str, removed: bool) -> None:
        if removed:  # its DELETED event is ours: no reconcile of the request for it
            self.state.deleted_binding(key, time.monotonic())
        else:
            self.state.binding_seen(key, present=False)

    async def _check_binding(self, key: str) -> None:
        if self.state.own_write_current(key):
            return  # a live grant's, as written or verified, and the watch saw nothing newer
        kind, namespace, name = key.split("/", 2)
        binding = await self.kube.get_binding(kind, name, namespace or None)
        if binding is None or not bindings.marked(binding):
            return
        binding["kind"] = kind
        if not await is_live_grant(self, binding):
            await self.delete_binding(kind, name, namespace or None,
                                      binding["metadata"].get("uid"))
            logger.warning("removed %s %s/%s: it carries kubepim's marks but no live grant",
                           kind, namespace, name)

    def reset(self) -> None:
        """Leadership was lost: drop queued work and every decision made as leader."""
        self.queue.clear()
        self._bodies.clear()
        self._deleted.clear()
        self._again.clear()
        self._woken.clear()
        self._held.clear()
        self._expiring.clear()
        self._revoked_at.clear()
        for task in self._revoking:
            task.cancel()  # (its writes are fenced: a cancelled one was not sent or is moot)
        self._catching_up.clear()
        self._took_over_at = 0.0
        self.caught_up.clear()  # (the next term's takeover lists again)
        self.term += 1  # a reconcile of the term that ended must not refill the state
        self.state.reset()
        if self.notifier is not None:
            self.notifier.reset()
        if self.activity is not None:
            self.activity.reset()

    async def _process(self, key: str) -> None:
        """The queue's worker: one key; an exception makes the queue retry it with backoff."""
        if not self.leading():
            raise NotLeading(f"{key} waits: this replica is not leading")
        woken = key in self._woken
        self._woken.discard(key)
        for prefix, work in self.keyed.items():
            if key.startswith(prefix):
                await work(key.removeprefix(prefix))
                return
        if key.startswith(_BINDING):
            await self._check_binding(key.removeprefix(_BINDING))
            return
        if key.startswith(_DELETED):
            body = self._deleted.get(key.removeprefix(_DELETED))
            if body is not None:
                name = body["metadata"]["name"]
                async with self.lock(name):
                    await self._deleted_or_settled(body)
                self._deleted.pop(key.removeprefix(_DELETED), None)
                self.forget(name, str(body["metadata"].get("uid") or ""))
            return
        again = key in self._again
        self._again.discard(key)
        self._held.discard(key)
        try:
            await self.reconcile(key, self._bodies.pop(key, None), again=again, woken=woken)
        except NotLeading:
            if woken:
                self._woken.add(key)  # held back, taken again later: still a wake-up
            raise
        self._reconciled(key)

    async def _deleted_or_settled(self, body: dict[str, Any]) -> None:
        """A DELETED event: the request was deleted, or it left the watch's selection (settled).

        The event carries the object as it last matched, so it cannot tell which: a request this
        replica settled left the selection; any other is read.
        """
        name = body["metadata"]["name"]
        if self.state.left_selection(name, str(body["metadata"].get("uid") or "")):
            if self.notifier is not None:
                self.notifier.forget(str(body["metadata"].get("uid") or ""))
            return
        current = await self.kube.get_request(name)
        if current is None or current["metadata"].get("uid") != body["metadata"].get("uid"):
            await self.request_deleted(body)
        elif not (current.get("status") or {}).get("settled"):
            self.enqueue(name, current)  # still ours to finish

    async def reconcile(self, name: str, body: dict[str, Any] | None = None,
                        again: bool = False, woken: bool = False) -> None:
        """Reconcile one request by name now, retrying on conflicting writes.

        ``body`` is the object as a watch event delivered it: decided on as delivered (saves a
        read) unless a version at least as new was already decided on or written, in which case
        there is nothing to do (``again``: unless it is exactly the version decided, which is
        decided again). Without a body (timers) the request is read; ``woken`` (a timer, a retry
        or the notifier asked too): a body no newer than the version decided is read instead of
        skipped. Raises on failure (the queue retries); :class:`NotLeading` when this replica
        may not write.
        """
        if not self.leading():
            raise NotLeading(f"{name} not reconciled: this replica is not leading")
        async with self.lock(name):
            if body is not None:
                version = body["metadata"].get("resourceVersion")
                newer = self.state.newer_than_decided(name, version)
                if newer is False and again and self.state.is_decided(name, version):
                    newer = True  # (an older copy: a newer version was decided just now)
                if newer is False and woken:
                    newer = None  # an expiry or a drained notification queue: read, decide
                if newer is False:
                    return  # any later change comes with its own, newer event
                if newer is None:
                    body = None  # cannot tell: read it rather than decide from a stale copy
            for _ in range(_ATTEMPTS):
                if body is None:
                    body = await self.kube.get_request(name)
                if body is None:
                    # Gone without a DELETED event (a watch that listed again): forget it.
                    self.forget(name)
                    if self.notifier is not None:
                        self.notifier.forget_name(name)
                    return
                try:
                    await self._reconcile(body, utcnow())
                except Conflict:
                    body = None
                    continue
                except NotLeading:
                    raise
                except Exception:
                    metrics.RECONCILE_ERRORS.inc()
                    raise
                # Decided only once it succeeded: a failed version is decided again.
                if self.state.is_held(name):  # (a forgotten request keeps no record)
                    self.state.decided(name, body["metadata"].get("resourceVersion"))
                return
            metrics.RECONCILE_ERRORS.inc()
            raise Conflict(409, f"gave up on {name} after {_ATTEMPTS} conflicting writes")

    async def _reconcile(self, body: dict[str, Any], now: datetime.datetime) -> None:
        name = body["metadata"]["name"]
        term = self.term
        try:
            request = AccessRequest.model_validate(body)
        except ValidationError as error:
            logger.error("AccessRequest %s is malformed and is left alone: %s", name, error)
            return
        spec, status = request.spec, request.status or AccessRequestStatus()
        uid = str(body["metadata"]["uid"])
        unconfirmed = self.state.confirm(uid, body["metadata"].get("resourceVersion"))
        if unconfirmed is not None and len(status.history) > unconfirmed:
            # A version other than the one the unanswered write was based on: it landed or it
            # never will. If it landed, the history holds its entries: log them now.
            audit.replay(body, request, from_index=unconfirmed)
        created = parse_time(body["metadata"].get("creationTimestamp")) or now
        place = await self.namespace(spec.namespace) if spec.namespace else ("", {})
        labels, namespace_uid = (place[1], place[0]) if place is not None else (None, None)
        eligibilities = await self.eligibilities()
        plan = decide(spec, status, created, eligibilities, labels, now,
                      uid=body["metadata"]["uid"], privileged=self.state.privileged,
                      case=self.case,
                      namespace_uid=namespace_uid, access_ended_at=self._access_ended(name, uid),
                      last_used=self._last_used(name, uid, status, eligibilities))
        if plan.activated_at is not None:
            # About to grant: judge the role by its rules as they are now, not as the role
            # watch last delivered them (it may not have listed them yet).
            # (The cache is the role watch's alone: it tells which roles changed.)
            rules = await self.kube.role_rules(spec.role.kind, spec.role.name, spec.namespace)
            key = role_key(spec.role, spec.namespace)
            where = spec.namespace if spec.role.kind == "Role" else None
            reason = privileged(spec.role.kind, spec.role.name, rules, where) if rules else None
            if self.state.privileged.get(key) != reason:
                fresh = {k: v for k, v in self.state.privileged.items() if k != key}
                if reason is not None:
                    fresh[key] = reason
                plan = decide(spec, status, created, eligibilities, labels, now,
                              uid=body["metadata"]["uid"], privileged=fresh, case=self.case,
                              namespace_uid=namespace_uid,
                              access_ended_at=self._access_ended(name, uid))

        if status.phase is None:
            plan = self._within_limits(plan, body, spec)
        transitions = list(plan.transitions)
        if plan.binding == "present":
            try:
                restored = await self._ensure_binding(name, body["metadata"]["uid"], request)
            except Forbidden:
                # Fail closed and say why; retried on every resync until RBAC allows it.
                plan = _not_granted(plan, f"the operator may not bind {spec.role}: add it to "
                                    "the chart's bindableRoles (its RBAC bind rule); the "
                                    "request waits until then")
                transitions = list(plan.transitions)
                restored = False
            except BindingTaken as taken:
                plan = _not_granted(plan, str(taken))
                transitions = list(plan.transitions)
                restored = False
            if restored and status.phase == Phase.ACTIVE:
                transitions.append(Transition(
                    "BindingRestored", Phase.ACTIVE, OPERATOR,
                    "the binding was deleted or altered and has been restored to what was "
                    "approved", warning=True))
        else:
            await self._remove_binding(name, request, body["metadata"].get("uid"))

        # A grant that ends: its counted use goes with the final write, and in its entry.
        used: tuple[Activity, activity.Tally] | None = None
        if self.activity is not None and transitions and transitions[-1].phase.final \
                and status.activated_at is not None:
            counted = self.activity.take(name, uid)
            if counted is not None:
                try:
                    used = (activity.merged(status.activity, counted[1]), counted[1])
                except BaseException:
                    self.activity.not_written(name, uid, counted[1])
                    raise
            final = used[0] if used is not None else status.activity
            transitions[-1] = dataclasses.replace(
                transitions[-1], message=f"{transitions[-1].message}; {activity.summary(final)}")
        try:
            # What the routes owe as the request stood before this write: queued first, so the
            # settling below waits for it (after a restart, nothing is owed until observed).
            self._notify(body, eligibilities, request)
            patch = self._status_patch(body, status, plan, transitions, now,
                                       self.notifier.progress(uid) if self.notifier else {},
                                       self._owes(uid))
            if used is not None:
                patch["activity"] = dump_activity(used[0])
            expires_at = plan.expires_at or status.expires_at
            unsettled: Exception | None = None
            if patch.get("settled") and not transitions and not status.settled \
                    and not self.state.final_lines_logged(name, uid):
                # Settling a request whose final write this replica did not follow through (a kill
                # in between, a failed settle): its last write's lines once more first (same ids).
                last = status.history[-1].time if status.history else None
                first = next((i for i, entry in enumerate(status.history) if entry.time == last),
                             len(status.history))
                audit.replay(body, request, from_index=first)
        except BaseException:
            if used is not None and self.activity is not None:
                self.activity.not_written(name, uid, used[1])  # (taken: given back)
            raise
        if used is not None and not patch and self.activity is not None:
            self.activity.not_written(name, uid, used[1])  # (nothing to write it with)
        if patch:
            try:
                try:
                    written = await self.kube.patch_request_status(
                        name, patch, body["metadata"]["resourceVersion"])
                except BaseException:
                    if used is not None and self.activity is not None:
                        self.activity.not_written(name, uid, used[1])
                    raise
                if used is not None and self.activity is not None:
                    self.activity.wrote(name, uid, used[1], used[0])
            except NotFound:
                await self.request_deleted(body, "deleted before its status could record "
                                           + ", ".join(t.action for t in transitions))
                return
            except (Conflict, NotLeading):
                raise  # not written
            except Exception:
                # Written or not, nobody knows (a timeout, a reset connection): if it was, the
                # next reconcile finds these entries in the history and logs their lines then.
                self.state.unconfirmed_write(uid, len(status.history),
                                             str(body["metadata"]["resourceVersion"]))
                raise
            self.state.decided(name, str(written["metadata"]["resourceVersion"]))
            self._notify(written, eligibilities)
            if transitions and transitions[-1].phase.final:
                self.state.logged_final_lines(name, uid)  # (just below)
            done = utcnow()
            first = len(status.history)
            events = [audit.record(self.kube, body, spec, transition, now, expires_at, index)
                      for index, transition in enumerate(transitions, start=first)]
            if events:  # the lines are logged at once; the Events, in order, in the background
                self._post_in_order(events)
            self._observe(status, created, plan, transitions, done,
                          lag_observed=self._access_ended(name, uid) is not None)
            done_with = bool((written.get("status") or {}).get("settled"))
            if not done_with and transitions and transitions[-1].phase.final:
                done_with, unsettled = await self._settle(name, written)
        else:
            done_with = status.settled

        if not self.leading() or self.term != term:
            # Lost the lease while this reconcile ran (perhaps won again since): the state was
            # reset; do not refill it.
            raise NotLeading(f"{name}: leadership lost during its reconcile")
        phase = transitions[-1].phase if transitions else status.phase
        governing = plan.eligibility or status.eligibility
        self.state.place(name, phase, governing, spec.namespace,
                         expires_at if phase == Phase.ACTIVE else None, settled=done_with,
                         at=time.monotonic(), uid=uid, finishing=unsettled is not None)
        if phase != Phase.ACTIVE:
            self._expiring.pop(name, None)
            if phase is not None and phase.final:
                self._revoked_at.pop(name, None)
        if self.activity is not None:
            self._track_use(name, uid, spec, status, plan, phase,
                            used[0] if used is not None else None, now)
        if phase == Phase.ACTIVE and expires_at is not None:
            self.expires(name, uid, spec.namespace, expires_at)
            idle = self._idle_at(name, uid, status, plan, governing, eligibilities)
            if idle is not None and idle < expires_at:
                self.queue.schedule(name, idle)  # (the earlier of the two timers fires)
        else:
            timeout = self._timeout(created, governing) if phase == Phase.PENDING else None
            if timeout is not None:
                self.queue.schedule(name, timeout)  # TimedOut at the window's end
            else:
                self.queue.cancel(name)
        if unsettled is not None:
            raise unsettled  # the queue retries (with backoff); the next reconcile settles it

    def _last_used(self, name: str, uid: str, status: AccessRequestStatus,
                   eligibilities: dict[str, RoleEligibilitySpec]) -> datetime.datetime | None:
        """The grant's latest use the sink counted; after a takeover, presumed for a while.

        (A use the previous leader counted and did not write comes again only once the API
        server posts its batch again: until the takeover's grace is over the grant is taken as
        used just so long ago that it cannot end Idle before then.)
        """
        if self.activity is None:
            return None
        used = self.activity.last_use(name, uid)
        hold = self.activity.idle_not_before(name, uid)
        policy = eligibilities.get(status.eligibility or "")
        if hold is not None and hold > utcnow() and policy is not None \
                and policy.idle_timeout is not None:
            presumed = hold - duration.parse(policy.idle_timeout)
            used = max(used, presumed) if used is not None else presumed
        return used

    def _idle_at(self, name: str, uid: str, status: AccessRequestStatus, plan: Plan,
                 governing: str | None, eligibilities: dict[str, RoleEligibilitySpec]
                 ) -> datetime.datetime | None:
        """When the Active grant becomes idle (its eligibility's idleTimeout; None: never)."""
        policy = eligibilities.get(governing or "")
        activated = plan.activated_at or status.activated_at
        if policy is None or policy.idle_timeout is None or activated is None:
            return None
        uses = [t for t in (self._last_used(name, uid, status, eligibilities),
                            status.activity.last_use if status.activity else None)
                if t is not None]
        return activity.idle_deadline(activated, max(uses) if uses else None,
                                      duration.parse(policy.idle_timeout))

    def _track_use(self, name: str, uid: str, spec: AccessRequestSpec,
                   status: AccessRequestStatus, plan: Plan, phase: Phase | None,
                   written: Activity | None, now: datetime.datetime) -> None:
        """Tell the audit sink which grant this is now: Active (counted to) or ended."""
        assert self.activity is not None
        activated = plan.activated_at or status.activated_at
        expires = plan.expires_at or status.expires_at
        if phase == Phase.ACTIVE and activated is not None and expires is not None \
                and spec.requester is not None:
            ref = bindings.binding_ref_in(name, spec.namespace)
            self.activity.track(activity.Grant(
                request=name, uid=uid, username=spec.requester.username,
                binding=(ref.kind, ref.namespace or "", ref.name), activated_at=activated,
                ends_at=expires), status.activity)
        elif phase is not None and phase.final and activated is not None:
            self.activity.ended(name, uid, now, written or status.activity)

    async def _settle(self, name: str, written: dict[str, Any]
                      ) -> tuple[bool, Exception | None]:
        """Record that nothing is left to do, once the final transition's lines are out.

        A separate write, after the lines: until it lands the request stays in the operator's
        watch and in every takeover's listing, which replays lines a kill may have lost.
        (written, error): the error of a failed write, raised once the reconcile has recorded
        where the request stands, so the queue retries it.
        """
        if not settled(AccessRequestStatus.model_validate(written.get("status") or {})):
            return False, None  # a break-glass review is awaited
        uid = str(written["metadata"].get("uid") or "")
        if self._owes(uid):
            return False, None  # the notifier asks again once its routes are listed and done
        progress = self.notifier.progress(uid) if self.notifier else {}
        try:
            answer = await self.kube.patch_request_status(
                name, {"settled": True, **({"notifications": progress} if progress else {})},
                str(written["metadata"]["resourceVersion"]))
        except NotLeading:
            raise
        except Exception as error:
            return False, error
        self.state.decided(name, str(answer["metadata"]["resourceVersion"]))
        if self.notifier is not None:
            self.notifier.recorded(uid, answer)
        return True, None

    def write_progress(self, name: str, uid: str) -> None:
        """The notifier's progress of a request that is not final, written alone (background).

        A merge patch of ``status.notifications`` only, on the version last decided on or
        written (so nothing the request gained since goes undecided); if the request changed
        since, or the write fails, a reconcile writes it instead (the queue retries).
        """
        task = asyncio.get_running_loop().create_task(self._write_progress(name, uid))
        self._posting.add(task)
        task.add_done_callback(self._posting.discard)

    async def _write_progress(self, name: str, uid: str) -> None:
        if self.notifier is None:
            return
        if not self.leading():
            self.enqueue(name)  # kept while the renewal is late; nothing on a standby
            return
        async with self.lock(name):
            version = self.state.decided_version(name)
            progress = self.notifier.progress(uid)
            if not progress:
                return  # recorded meanwhile
            if version is None:
                self.enqueue(name)
                return
            try:
                # (uid: a request made again under this name since is refused, not written)
                answer = await self.kube.patch_request_status(
                    name, {"notifications": progress}, version, uid=uid)
            except NotFound:
                return  # deleted: its DELETED event forgets it
            except Exception:  # changed since, renewal late, or a failure: a reconcile does it
                self.enqueue(name)  # (kept while the renewal is late; nothing on a standby)
                return
            self.wrote_alone(name, answer)
            self.notifier.recorded(uid, answer)

    def wrote_alone(self, name: str, answer: dict[str, Any]) -> None:
        """A status field written on its own (no decision): its version counts as decided.

        (Notification progress, activity: merge patches on the version last decided.)
        """
        if self.state.is_held(name):
            self.state.decided(name, str(answer["metadata"]["resourceVersion"]))
            if name in self._again or name in self._bodies:
                # A resync's or a watch's copy waits: older now than the version just
                # "decided", it would be skipped undecided. Read and decided instead.
                self._woken.add(name)

    def _owes(self, uid: str) -> bool:
        return self.notifier is not None and self.notifier.owes_unknown(uid)

    def _notify(self, body: dict[str, Any], eligibilities: dict[str, RoleEligibilitySpec],
                request: AccessRequest | None = None) -> None:
        """Hand the request as it now stands to the notifier (which never fails a reconcile).

        Nothing at all when there are no routes (no cost on the grant's path).
        """
        if self.notifier is None or not (self.notifier.routes or self.notifier.busy()):
            return
        try:
            request = request or AccessRequest.model_validate(body)
            self.notifier.recorded(str(body["metadata"].get("uid") or ""), body)
            governing = request.status.eligibility if request.status else None
            self.notifier.observe(body, request, eligibilities.get(governing or ""),
                                  self.state.eligibility_labels(governing))
        except Exception:
            logger.exception("could not hand %s to the notifier", body["metadata"].get("name"))

    def _timeout(
        self, created: datetime.datetime, governing: str | None
    ) -> datetime.datetime | None:
        policy = (self.state.eligibilities or {}).get(governing or "")
        if policy is None:
            return None
        return created + duration.parse(policy.pending_timeout)

    @staticmethod
    def _observe(
        status: AccessRequestStatus, created: datetime.datetime, plan: Plan,
        transitions: list[Transition], done: datetime.datetime, lag_observed: bool = False,
    ) -> None:
        """Metrics of the transitions just recorded; ``done`` is when status was written.

        ``lag_observed``: the expiry lag was observed when the binding went, before this write.
        """
        phase = status.phase
        for transition in transitions:
            metrics.TRANSITIONS.labels(transition.action).inc()
            if transition.phase != phase:
                metrics.REQUESTS.labels(transition.phase.value).inc()
                if phase in (None, Phase.PENDING) and transition.phase != Phase.PENDING:
                    metrics.DECISION_SECONDS.labels(transition.phase.value).observe(
                        metrics.seconds_between(created, done) or 0.0)
                phase = transition.phase
            if transition.action == "BreakGlass":
                metrics.BREAK_GLASS.inc()
            if transition.action == "Activated" and plan.activated_at and plan.expires_at:
                metrics.ACTIVATION_SECONDS.observe(
                    metrics.seconds_between(plan.activated_at, done) or 0.0)
                metrics.GRANT_SECONDS.observe(
                    (plan.expires_at - plan.activated_at).total_seconds())
            if transition.action == "Expired" and not lag_observed:
                metrics.EXPIRY_LAG_SECONDS.observe(
                    metrics.seconds_between(status.expires_at, done) or 0.0)

    def _within_limits(self, plan: Plan, body: dict[str, Any],
                       spec: AccessRequestSpec) -> Plan:
        """The plan, or a rejection if the requester's earlier requests already reach a limit.

        Authoritative: admission counts per replica, this counts what the watch has seen of
        every request created before this one.
        """
        if spec.requester is None or plan.phase == Phase.REJECTED:
            return plan
        metadata = body["metadata"]
        held = self.limits.counts(spec.requester.username, before=(
            str(metadata.get("creationTimestamp") or "~"), metadata["name"]))
        refusal = limits_refusal(spec.requester.username, held.open,
                                 held.unreviewed_break_glass, spec.break_glass, self.max_open,
                                 self.max_break_glass)
        if refusal is None:
            return plan
        return Plan(transitions=(Transition("Rejected", Phase.REJECTED, OPERATOR, refusal,
                                            warning=True),), message=refusal)

    async def request_deleted(self, body: dict[str, Any], why: str = "deleted") -> None:
        """A request is gone: its binding goes at once, with a final audit line (leader only).

        The garbage collector would remove the binding through its ownerReference, but not when
        the request was deleted with propagationPolicy Orphan; and the request's history must
        outlive it in the log.
        """
        name = body["metadata"]["name"]
        self.forget(name, str(body["metadata"].get("uid") or ""))
        self.state.drop_unconfirmed(str(body["metadata"].get("uid") or ""))
        if self.notifier is not None:
            self.notifier.forget(str(body["metadata"].get("uid") or ""))
        try:
            request = AccessRequest.model_validate(body)
        except ValidationError:
            return
        status = request.status or AccessRequestStatus()
        removed = await self._remove_binding(name, request, body["metadata"].get("uid"))
        if removed or status.phase not in (Phase.EXPIRED, Phase.DENIED, Phase.REVOKED,
                                           Phase.WITHDRAWN, Phase.TIMED_OUT, Phase.REJECTED):
            reason = f"the request was {why}"
            if removed:
                reason += "; its binding removed"
            elif status.phase == Phase.ACTIVE:
                reason += "; its binding already gone"
            audit.deleted(body, request.spec, utcnow(), reason)

    async def _ensure_binding(self, name: str, uid: str, request: AccessRequest) -> bool:
        """Make the binding exactly what was approved; True if it had to be (re)made.

        A binding of that name that kubepim did not make (no ownerReference to this request,
        no kubepim label) is never replaced: :class:`BindingTaken`.
        """
        desired = bindings.desired_binding(name, uid, request.spec)
        ref = bindings.binding_ref(name, request.spec)
        key = binding_key(ref.kind, ref.namespace, ref.name)
        if self.state.own_write(key, uid) is not None:
            # The binding watch has reported no version but ours (a foreign change drops this
            # record and reconciles the request, which then reads and restores it).
            return False
        if not self.state.binding_exists(key):
            try:
                self.state.wrote_binding(key, await self.kube.create_binding(desired), uid)
                return True
            except Conflict:
                pass  # it exists after all: compare it with what was approved
        actual = await self.kube.get_binding(ref.kind, ref.name, ref.namespace)
        if actual is not None and not (bindings.marked(actual)
                                       or bindings.made_by_kubepim(actual, uid)):
            # (A marked binding is kubepim's to replace: a predecessor's of the same name, or a
            # mimic the sweep would remove anyway.)
            where = f" in namespace {ref.namespace}" if ref.namespace else ""
            raise BindingTaken(
                f"{ref.kind} {ref.name} already exists{where} and was not made by kubepim, "
                "which leaves it alone: this grant cannot be made until it is removed or "
                "renamed (or request again under another name)")
        if actual is not None and bindings.matches(actual, desired):
            # Exactly what was approved (made before a restart, or by a predecessor): from now
            # on as ours as one we wrote, so neither its watch event nor a later reconcile
            # reads it again (another version drops the record).
            version = actual["metadata"].get("resourceVersion")
            if version is not None:
                self.state.verified_binding(key, str(version), uid)
            return False
        if actual is not None:
            # roleRef is immutable and subjects may have been added: replace the whole object,
            # only the version just judged (a uid precondition).
            await self.kube.delete_binding(ref.kind, ref.name, ref.namespace,
                                           uid=actual["metadata"].get("uid"))
        # Conflict (someone recreated it in between) propagates: reconcile again, fresh read.
        self.state.wrote_binding(key, await self.kube.create_binding(desired), uid)
        return True

    async def _remove_binding(self, name: str, request: AccessRequest,
                              uid: str | None = None) -> bool:
        """Delete the request's binding if it exists and kubepim made it; True if deleted."""
        ref = bindings.binding_ref(name, request.spec)
        status = request.status or AccessRequestStatus()
        never_granted = status.phase in (None, Phase.PENDING) and status.activated_at is None
        ended = status.phase is not None and status.phase.final
        key = binding_key(ref.kind, ref.namespace, ref.name)
        if not self.state.binding_exists(key) and (
                never_granted or ended or self._access_ended(name, uid) is not None
                or self.state.deleted_by_us(key)):
            return False  # (deleted by us: at its expiry, beside the queue)
        written = self.state.own_write(key, uid) if uid is not None else None
        if written is not None:
            # Exactly the version we wrote, as far as the watch has said: delete that version
            # without reading it first (an expiry is one round trip); changed since, and the
            # precondition fails: read it and judge it below.
            try:
                removed = await self.kube.delete_binding(ref.kind, ref.name, ref.namespace,
                                                         resource_version=written)
                self._deleted_binding(key, removed)
                return removed
            except Conflict:
                self.state.drop_write(key)
        actual = await self.kube.get_binding(ref.kind, ref.name, ref.namespace)
        if actual is None or not bindings.made_by_kubepim(actual, uid):
            return False
        removed = await self.kube.delete_binding(ref.kind, ref.name, ref.namespace,
                                                 uid=actual["metadata"].get("uid"))
        self._deleted_binding(key, removed)
        return removed

    def _status_patch(
        self,
        body: dict[str, Any],
        status: AccessRequestStatus,
        plan: Plan,
        transitions: list[Transition],
        now: datetime.datetime,
        notified: dict[str, dict[str, Any]] | None = None,
        owes: bool = False,
    ) -> dict[str, Any]:
        """The merge patch for status, or {} when nothing would change.

        ``notified``: the notifier's progress not yet recorded (merged into
        status.notifications); ``owes``: a route still has something to send, so the request is
        not settled yet.
        """
        phase = transitions[-1].phase if transitions else status.phase
        if phase is None:
            return {}
        generation = body["metadata"].get("generation", 0)
        current = body.get("status") or {}
        patch: dict[str, Any] = {
            "phase": phase.value,
            "observedGeneration": generation,
            "message": plan.message,
            "conditions": [c.wire() for c in conditions(
                phase, plan.message, status.conditions, generation, now)],
        }
        if plan.eligibility:
            patch["eligibility"] = plan.eligibility
        if plan.namespace_uid:
            patch["namespaceUid"] = plan.namespace_uid
        if plan.activated_at is not None and plan.expires_at is not None:
            patch["activatedAt"] = rfc3339(plan.activated_at)
            patch["expiresAt"] = rfc3339(plan.expires_at)
            patch["binding"] = bindings.binding_ref(
                body["metadata"]["name"], AccessRequest.model_validate(body).spec).wire()
        if plan.review_required is not None:
            patch["reviewRequired"] = plan.review_required
        if plan.reviewed_by is not None:
            patch["reviewedBy"] = plan.reviewed_by
        if notified:
            patch["notifications"] = notified  # a merge patch: other routes' entries stay
        if not transitions and settled(status) and not owes:
            patch["settled"] = True  # (after a final transition: a write of its own, see _settle)
        if transitions:
            history = list(current.get("history") or [])
            history += [HistoryEntry(time=now, action=t.action, actor=t.actor,
                                     reason=t.message).wire() for t in transitions]
            patch["history"] = history
        changed = {k: v for k, v in patch.items() if current.get(k) != v}
        return patch if changed else {}


_NAME = re.compile(DNS_SUBDOMAIN)

# Queue keys besides request names (no request name holds a colon).
_DELETED = "deleted:"  # a deleted request, by uid
_BINDING = "binding:"  # a marked binding to check, by binding key


def owning_request(binding: dict[str, Any]) -> str | None:
    """The AccessRequest a binding claims to belong to (owner reference, else label)."""
    metadata = binding.get("metadata", {})
    claimed = next((str(owner.get("name")) for owner in metadata.get("ownerReferences") or []
                    if owner.get("kind") == "AccessRequest"), None)
    if claimed is None:
        claimed = (metadata.get("labels") or {}).get(bindings.REQUEST_LABEL)
    # Anyone who can write a binding writes these: only an object name is ever looked up
    # (never a path such as ../../api/v1/nodes/x).
    return str(claimed) if claimed and _NAME.fullmatch(str(claimed)) else None


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




def _version(body: dict[str, Any]) -> str | None:
    version = body.get("metadata", {}).get("resourceVersion")
    return str(version) if version is not None and str(version).isdigit() else None


async def _in_order(posts: list[Coroutine[Any, Any, None]],
                    slots: asyncio.Semaphore) -> None:
    async with slots:  # a bounded share of the connections: grants and renewals come first
        for post in posts:
            await post


def _not_granted(plan: Plan, message: str) -> Plan:
    """The plan without activation, when the binding cannot be made.

    Fails closed and says why; the request waits and is tried again.
    """
    logger.warning(message)
    kept = tuple(t for t in plan.transitions if t.action not in ("Approved", "Activated",
                                                                 "BreakGlass"))
    return dataclasses.replace(plan, transitions=kept, message=message, activated_at=None,
                               expires_at=None, review_required=None)


def rfc3339(moment: datetime.datetime) -> str:
    """A time as the API server writes it (UTC, Z)."""
    return moment.astimezone(datetime.UTC).isoformat().replace("+00:00", "Z")
