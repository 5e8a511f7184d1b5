"""Reconcile one AccessRequest: load inputs, ask the domain, write binding, status and audit.

Order matters for safety: the binding is created before status says Active, and deleted before
status says Expired/Revoked/Denied, so status never claims less access than exists. The status
write carries the resourceVersion read, so a concurrent change (an approval landing) makes it
retry from a fresh read instead of overwriting; the history is appended exactly once.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import datetime
import logging
import re
from collections.abc import Callable, Coroutine
from typing import Any

from pydantic import ValidationError

from kubepim import audit, metrics
from kubepim.api import duration
from kubepim.api.common import DNS_SUBDOMAIN, LabelSelector
from kubepim.api.eligibility import RoleEligibilitySpec
from kubepim.api.request import (
    AccessRequest,
    AccessRequestSpec,
    AccessRequestStatus,
    HistoryEntry,
    Phase,
)
from kubepim.domain import bindings
from kubepim.domain.admission import check_limits as limits_refusal
from kubepim.domain.admission import privileged
from kubepim.domain.lifecycle import OPERATOR, Plan, Transition, conditions, decide
from kubepim.domain.quorum import Case
from kubepim.domain.review import RoleKey, role_key, selector_matches
from kubepim.engine.queue import WorkQueue
from kubepim.k8s.client import Conflict, Forbidden, Kube, NotFound, NotLeading, parse_time

from .limits import RequesterLimits

logger = logging.getLogger(__name__)

_ATTEMPTS = 8


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
        # Why each deny-listed Role and ClusterRole is, as the role watch last saw its rules:
        # a role that gains privilege after its eligibility was written stops being granted.
        self.privileged: dict[RoleKey, str] = {}
        # Every reconcile goes through the queue: it owns retries (backoff on failure) and the
        # expiry and pending-timeout timers (delayed keys).
        self.queue = WorkQueue(self._process, gate=lambda: self.leading(),
                               held=(NotLeading,))
        self.scheduler = self.queue
        # Bodies delivered by watch events, newest per request, until a worker takes the key;
        # and deleted requests whose binding and final audit line are still to be done.
        self._bodies: dict[str, dict[str, Any]] = {}
        self._deleted: dict[str, dict[str, Any]] = {}
        self._locks: collections.defaultdict[str, asyncio.Lock] = collections.defaultdict(
            asyncio.Lock)
        self._eligibilities: dict[str, RoleEligibilitySpec] | None = None
        # The resourceVersion at which each eligibility was last seen, and whether it existed;
        # one relist at a time, never one older than the last applied.
        self._eligibility_versions: dict[str, tuple[int, bool]] = {}
        self._refreshing = asyncio.Lock()
        self._listed_at = 0
        # Unfinished requests by the eligibility that governs them: an eligibility's change
        # re-decides only these.
        self.governed: collections.defaultdict[str, set[str]] = collections.defaultdict(set)
        self._posting: set[asyncio.Task[None]] = set()
        # Requests (by uid) whose status write failed without an answer, and the first history
        # index it carried: their lines are logged once the history shows the write landed.
        self._unconfirmed: dict[str, tuple[int, str]] = {}
        # The request uid each of our own binding writes was made for.
        self._written_for: dict[str, str] = {}
        self._event_slots = asyncio.Semaphore(8)
        # resourceVersion of each binding as this replica last wrote it: the watch event of our
        # own write needs nothing, and the entry is dropped as soon as the watch reports another
        # version of it.
        self.own_writes: dict[str, str] = {}
        # Whether this replica may act now (leader election sets it; alone, always), and
        # whether it believes it holds the lease (keys are kept while renewal is late).
        self.leading: Callable[[], bool] = lambda: True
        self.elected: Callable[[], bool] = lambda: True
        # Active grants and their expiry, as last reconciled: the gauges read it.
        self.active: dict[str, datetime.datetime] = {}
        # Labels and uid of every namespace, kept by the namespace watch (a name not here is
        # read); and the open requests in each namespace, decided again when it changes.
        self.namespaces: dict[str, dict[str, str]] = {}
        self.namespace_uids: dict[str, str] = {}
        self.in_namespace: collections.defaultdict[str, set[str]] = collections.defaultdict(set)
        # Bindings that look like ours and exist, as the binding watch and our writes saw them:
        # a binding not here is created without a read first, and a request never activated
        # whose binding is not here has nothing to remove (a watch event would say otherwise).
        self.bindings: set[str] = set()
        # The newest resourceVersion of each request decided on or written: a watch event
        # bringing no newer one (our own status write coming back, say) needs nothing.
        self.versions: dict[str, str] = {}
        # A standby reports no grants: only the leader's view counts (and pages).
        metrics.track(lambda: len(self.active) if self.elected() else 0,
                      lambda: self._overdue() if self.elected() else 0)

    def is_own_write(self, key: str, resource_version: str | None) -> bool:
        """Whether the object at ``resource_version`` is the one this replica last wrote."""
        return resource_version is not None and self.own_writes.get(key) == resource_version

    def _overdue(self) -> int:
        now = utcnow()
        return sum(1 for expires in self.active.values() if expires <= now)

    async def eligibilities(self) -> dict[str, RoleEligibilitySpec]:
        """Every valid RoleEligibility by name (invalid ones are reported on their status).

        Served from a cache that the eligibility watch keeps current and each resync rebuilds
        (so a deletion missed while the watch restarted cannot linger); the first call lists.
        """
        if self._eligibilities is None:
            await self.refresh_eligibilities()
        assert self._eligibilities is not None
        return self._eligibilities

    async def refresh_eligibilities(self) -> None:
        """Rebuild the eligibility cache from a list call, never undoing a newer watch event.

        An eligibility the watch saw at a version newer than the list's (created, changed or
        deleted after the list was served) keeps what the watch said.
        """
        async with self._refreshing:
            await self._refresh_eligibilities()

    async def _refresh_eligibilities(self) -> None:
        items, listed_at = await self.kube.list_eligibilities_at()
        if listed_at and listed_at < self._listed_at:
            return  # an older list than the one applied
        self._listed_at = listed_at
        fresh: dict[str, RoleEligibilitySpec] = {}
        versions: dict[str, tuple[int, bool]] = {}
        for item in items:
            name = item["metadata"]["name"]
            versions[name] = (_int(item["metadata"].get("resourceVersion")), True)
            parsed = _eligibility(item.get("spec"))
            if parsed is not None:
                fresh[name] = parsed
        current = self._eligibilities or {}
        for name, (seen, present) in self._eligibility_versions.items():
            if seen > max(versions.get(name, (0, False))[0], listed_at):
                versions[name] = (seen, present)
                fresh.pop(name, None)
                if present and name in current:
                    fresh[name] = current[name]
        self._eligibility_versions = versions
        self._eligibilities = fresh

    def observe_eligibility(self, name: str, spec: dict[str, Any] | None,
                            version: str | None = None) -> None:
        """Apply one watch event to the cache (``spec`` None: deleted) at ``version``."""
        seen = _int(version)
        if seen and self._eligibility_versions.get(name, (0, False))[0] > seen:
            return  # older than what is held (a late event)
        self._eligibility_versions[name] = (seen, spec is not None)
        if self._eligibilities is None:
            return  # the first use lists everything anyway
        updated = dict(self._eligibilities)
        parsed = _eligibility(spec) if spec is not None else None
        if parsed is None:
            updated.pop(name, None)
        else:
            updated[name] = parsed
        self._eligibilities = updated  # replaced, not mutated: readers keep a stable view

    async def namespace(self, name: str) -> tuple[str, dict[str, str]] | None:
        """(uid, labels) of a namespace (None: gone or going), from the watch when it has it."""
        cached = self.namespaces.get(name)
        if cached is not None:
            return self.namespace_uids.get(name, ""), cached
        return await self.kube.namespace(name)

    async def namespace_labels(self, name: str) -> dict[str, str] | None:
        """Labels of a namespace (None: it does not exist), from the watch when it has it."""
        cached = self.namespaces.get(name)
        if cached is not None:
            return cached
        return await self.kube.namespace_labels(name)

    def observe_namespace(self, name: str, labels: dict[str, str] | None,
                          uid: str = "") -> None:
        """Apply one namespace watch event (``labels`` None: deleted or being deleted).

        If that changes what a request there is decided on (labels a selector may match, the
        namespace going or made again), its open requests are decided again.
        """
        before = (self.namespace_uids.get(name), self.namespaces.get(name))
        if labels is None:
            self.namespaces.pop(name, None)
            self.namespace_uids.pop(name, None)
        else:
            self.namespaces[name] = labels
            self.namespace_uids[name] = uid
        if before != (self.namespace_uids.get(name), self.namespaces.get(name)):
            for request in sorted(self.in_namespace.get(name, ())):
                self.enqueue(request)

    def observe_role(self, kind: str, namespace: str | None, name: str,
                     rules: list[dict[str, Any]] | None) -> bool:
        """Apply one role watch event (``rules`` None: deleted).

        True if its deny-listing changed: the requests that could be granted it must be decided
        again.
        """
        key: RoleKey = (kind, namespace or "", name)
        reason = privileged(kind, name, rules, namespace) if rules is not None else None
        if self.privileged.get(key) == reason:
            return False
        if reason is None:
            del self.privileged[key]
        else:
            self.privileged[key] = reason
        return True

    def privileged_where_selected(self, role: str, selector: LabelSelector) -> list[str]:
        """Why a Role named ``role`` is deny-listed in each namespace ``selector`` matches now.

        From the role and namespace watches (no read per namespace: a broad selector stays
        cheap); a Role made there later is judged again when it would be granted.
        """
        return [reason for (kind, namespace, name), reason in sorted(self.privileged.items())
                if kind == "Role" and name == role and namespace in self.namespaces
                and selector_matches(selector, self.namespaces[namespace])]

    def forget(self, name: str) -> None:
        """Drop the timers and version records of a deleted request.

        Its lock is kept: a lock may have waiters that ``locked()`` does not show, and a new
        lock beside it would let two reconciles of one request run at once.
        """
        self.scheduler.cancel(name)
        self.versions.pop(name, None)

    def _forget_request(self, name: str) -> None:
        """Everything remembered of a request that is gone, gauges included."""
        self.forget(name)
        self.active.pop(name, None)
        for members in [*self.governed.values(), *self.in_namespace.values()]:
            members.discard(name)

    def lock(self, name: str) -> asyncio.Lock:
        """The lock held while one request is reconciled."""
        return self._locks[name]

    # Triggers: each only adds a key to the queue.

    def enqueue(self, name: str, body: dict[str, Any] | None = None) -> None:
        """Ask for a reconcile of ``name``; ``body`` as a watch event delivered it, if any.

        A standby keeps nothing (its takeover reads everything); a leader whose renewal is late
        keeps the key until it leads again or loses the lease.
        """
        if not self.elected():
            return
        if body is not None:
            held = self._bodies.get(name)
            if held is None or _version(body) is None or _version(held) is None or \
                    int(_version(body) or 0) > int(_version(held) or 0):
                self._bodies[name] = body
        self.queue.add(name)

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

    def enqueue_binding_check(self, key: str) -> None:
        """A binding with kubepim's marks changed: remove it unless a live grant is behind it."""
        if self.elected():
            self.queue.add(f"{_BINDING}{key}")

    async def delete_binding(self, kind: str, name: str, namespace: str | None,
                             uid: str | None = None) -> bool:
        """Delete a binding outside a request's reconcile (sweep, takeover).

        Our record of having written it goes too; False if it was already gone.
        """
        key = binding_key(kind, namespace, name)
        self.own_writes.pop(key, None)
        return await self.kube.delete_binding(kind, name, namespace, uid=uid)

    async def _check_binding(self, key: str) -> None:
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
        self.versions.clear()
        self.own_writes.clear()
        self.active.clear()
        self.governed.clear()
        self.in_namespace.clear()
        self._unconfirmed.clear()  # the next leader's takeover replays those lines

    async def _process(self, key: str) -> None:
        """The queue's worker: one key; an exception makes the queue retry it with backoff."""
        if not self.leading():
            raise NotLeading(f"{key} waits: this replica is not leading")
        if key.startswith(_BINDING):
            await self._check_binding(key.removeprefix(_BINDING))
            return
        if key.startswith(_DELETED):
            body = self._deleted.get(key.removeprefix(_DELETED))
            if body is not None:
                name = body["metadata"]["name"]
                async with self._locks[name]:
                    await self.request_deleted(body)
                self._deleted.pop(key.removeprefix(_DELETED), None)
                self.forget(name)
            return
        await self.reconcile(key, self._bodies.pop(key, None))

    async def reconcile(self, name: str, body: dict[str, Any] | None = None) -> None:
        """Reconcile one request by name now, retrying on conflicting writes.

        ``body`` is the object as a watch event delivered it: decided on as delivered (saves a
        read) unless a version at least as new was already decided on or written, in which case
        there is nothing to do. Without a body (timers, resyncs) the request is read. Raises on
        failure (the queue retries); :class:`NotLeading` when this replica may not write.
        """
        if not self.leading():
            raise NotLeading(f"{name} not reconciled: this replica is not leading")
        async with self._locks[name]:
            if body is not None:
                newer = self._newer_than_decided(name, body)
                if newer is False:
                    return  # any later change comes with its own, newer event
                if newer is None:
                    body = None  # cannot tell: read it rather than decide from a stale copy
            for _ in range(_ATTEMPTS):
                if body is None:
                    body = await self.kube.get_request(name)
                if body is None:
                    # Gone without a DELETED event (a watch that listed again): forget it.
                    self._forget_request(name)
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
                self._seen(name, body["metadata"].get("resourceVersion"))
                return
            metrics.RECONCILE_ERRORS.inc()
            raise Conflict(409, f"gave up on {name} after {_ATTEMPTS} conflicting writes")

    def _newer_than_decided(self, name: str, body: dict[str, Any]) -> bool | None:
        """Whether ``body`` is newer than every version of the request decided on or written.

        resourceVersions are compared as the integers the API server issues; None when one is
        not an integer (unequal versions that cannot be ordered).
        """
        seen = self.versions.get(name)
        version = body["metadata"].get("resourceVersion")
        if seen is None or version is None:
            return True
        if seen.isdigit() and version.isdigit():
            return int(version) > int(seen)
        return False if version == seen else None

    def _seen(self, name: str, version: str | None) -> None:
        if version is None:
            return
        seen = self.versions.get(name)
        if seen is None or not (seen.isdigit() and version.isdigit()) or int(version) > int(seen):
            self.versions[name] = version

    async def _reconcile(self, body: dict[str, Any], now: datetime.datetime) -> None:
        name = body["metadata"]["name"]
        try:
            request = AccessRequest.model_validate(body)
        except ValidationError as error:
            logger.error("AccessRequest %s is malformed and is left alone: %s", name, error)
            return
        spec, status = request.spec, request.status or AccessRequestStatus()
        uid = str(body["metadata"]["uid"])
        unconfirmed = self._unconfirmed.get(uid)
        if unconfirmed is not None and body["metadata"].get("resourceVersion") != unconfirmed[1]:
            # A version other than the one the unanswered write was based on: it landed or it
            # never will. If it landed, the history holds its entries: log them now.
            del self._unconfirmed[uid]
            if len(status.history) > unconfirmed[0]:
                audit.replay(body, request, from_index=unconfirmed[0])
        created = parse_time(body["metadata"].get("creationTimestamp")) or now
        place = await self.namespace(spec.namespace) if spec.namespace else ("", {})
        labels, namespace_uid = (place[1], place[0]) if place is not None else (None, None)
        eligibilities = await self.eligibilities()
        plan = decide(spec, status, created, eligibilities, labels, now,
                      uid=body["metadata"]["uid"], privileged=self.privileged, case=self.case,
                      namespace_uid=namespace_uid)
        if plan.activated_at is not None:
            # About to grant: judge the role by its rules as they are now, not as the role
            # watch last delivered them (it may not have listed them yet).
            # (The cache is the role watch's alone: it tells which roles changed.)
            rules = await self.kube.role_rules(spec.role.kind, spec.role.name, spec.namespace)
            key = role_key(spec.role, spec.namespace)
            where = spec.namespace if spec.role.kind == "Role" else None
            reason = privileged(spec.role.kind, spec.role.name, rules, where) if rules else None
            if self.privileged.get(key) != reason:
                fresh = {k: v for k, v in self.privileged.items() if k != key}
                if reason is not None:
                    fresh[key] = reason
                plan = decide(spec, status, created, eligibilities, labels, now,
                              uid=body["metadata"]["uid"], privileged=fresh, case=self.case,
                              namespace_uid=namespace_uid)

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

        patch = self._status_patch(body, status, plan, transitions, now)
        expires_at = plan.expires_at or status.expires_at
        if patch:
            try:
                written = await self.kube.patch_request_status(
                    name, patch, body["metadata"]["resourceVersion"])
            except NotFound:
                await self.request_deleted(body, "deleted before its status could record "
                                           + ", ".join(t.action for t in transitions))
                return
            except (Conflict, NotLeading):
                raise  # not written
            except Exception:
                # Written or not, nobody knows (a timeout, a reset connection): if it was, the
                # next reconcile finds these entries in the history and logs their lines then.
                self._unconfirmed.setdefault(uid, (len(status.history),
                                                   str(body["metadata"]["resourceVersion"])))
                raise
            self._seen(name, str(written["metadata"]["resourceVersion"]))
            done = utcnow()
            first = len(status.history)
            events = [audit.record(self.kube, body, spec, transition, now, expires_at, index)
                      for index, transition in enumerate(transitions, start=first)]
            if events:  # the lines are logged at once; the Events, in order, in the background
                task = asyncio.create_task(_in_order(events, self._event_slots))
                self._posting.add(task)
                task.add_done_callback(self._posting.discard)
            self._observe(status, created, plan, transitions, done)

        if not self.leading():
            # Lost the lease while this reconcile ran: the state was reset; do not refill it.
            raise NotLeading(f"{name}: leadership lost during its reconcile")
        phase = transitions[-1].phase if transitions else status.phase
        governing = plan.eligibility or status.eligibility
        for members in self.governed.values():
            members.discard(name)
        if phase in (Phase.PENDING, Phase.ACTIVE) and governing:
            self.governed[governing].add(name)
        if spec.namespace:
            if phase in (Phase.PENDING, Phase.ACTIVE):
                self.in_namespace[spec.namespace].add(name)
            else:
                self.in_namespace[spec.namespace].discard(name)
        if phase == Phase.ACTIVE and expires_at is not None:
            self.active[name] = expires_at
            self.scheduler.schedule(name, expires_at)
        else:
            self.active.pop(name, None)
            timeout = self._timeout(created, governing) if phase == Phase.PENDING else None
            if timeout is not None:
                self.scheduler.schedule(name, timeout)  # TimedOut at the window's end
            else:
                self.scheduler.cancel(name)

    def _timeout(
        self, created: datetime.datetime, governing: str | None
    ) -> datetime.datetime | None:
        policy = (self._eligibilities or {}).get(governing or "")
        if policy is None:
            return None
        return created + duration.parse(policy.pending_timeout)

    @staticmethod
    def _observe(
        status: AccessRequestStatus, created: datetime.datetime, plan: Plan,
        transitions: list[Transition], done: datetime.datetime,
    ) -> None:
        """Metrics of the transitions just recorded; ``done`` is when status was written."""
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
            if transition.action == "Expired":
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
        self._forget_request(name)
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
        if key in self.own_writes:
            # The binding watch has reported no version but ours (a foreign change drops this
            # record and reconciles the request, which then reads and restores it).
            return False
        if key not in self.bindings:
            try:
                self.own_writes[key] = await self.kube.create_binding(desired)
                self._written_for[key] = uid
                self.bindings.add(key)
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
            return False
        if actual is not None:
            # roleRef is immutable and subjects may have been added: replace the whole object,
            # only the version just judged (a uid precondition).
            await self.kube.delete_binding(ref.kind, ref.name, ref.namespace,
                                           uid=actual["metadata"].get("uid"))
        # Conflict (someone recreated it in between) propagates: reconcile again, fresh read.
        self.own_writes[key] = await self.kube.create_binding(desired)
        self._written_for[key] = uid
        self.bindings.add(key)
        return True

    async def _remove_binding(self, name: str, request: AccessRequest,
                              uid: str | None = None) -> bool:
        """Delete the request's binding if it exists and kubepim made it; True if deleted."""
        ref = bindings.binding_ref(name, request.spec)
        status = request.status or AccessRequestStatus()
        never_granted = status.phase in (None, Phase.PENDING) and status.activated_at is None
        ended = status.phase is not None and status.phase.final
        key = binding_key(ref.kind, ref.namespace, ref.name)
        if (never_granted or ended) and key not in self.bindings:
            return False
        written = self.own_writes.get(key)
        if written is not None and uid is not None and self._written_for.get(key) == uid:
            # Exactly the version we wrote, as far as the watch has said: delete that version
            # without reading it first (an expiry is one round trip); changed since, and the
            # precondition fails: read it and judge it below.
            try:
                removed = await self.kube.delete_binding(ref.kind, ref.name, ref.namespace,
                                                         resource_version=written)
                self.own_writes.pop(key, None)
                return removed
            except Conflict:
                self.own_writes.pop(key, None)
        actual = await self.kube.get_binding(ref.kind, ref.name, ref.namespace)
        if actual is None or not bindings.made_by_kubepim(actual, uid):
            return False
        return await self.kube.delete_binding(ref.kind, ref.name, ref.namespace,
                                              uid=actual["metadata"].get("uid"))

    def _status_patch(
        self,
        body: dict[str, Any],
        status: AccessRequestStatus,
        plan: Plan,
        transitions: list[Transition],
        now: datetime.datetime,
    ) -> dict[str, Any]:
        """The merge patch for status, or {} when nothing would change."""
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
            patch["activatedAt"] = _time(plan.activated_at)
            patch["expiresAt"] = _time(plan.expires_at)
            patch["binding"] = bindings.binding_ref(
                body["metadata"]["name"], AccessRequest.model_validate(body).spec).wire()
        if plan.review_required is not None:
            patch["reviewRequired"] = plan.review_required
        if plan.reviewed_by is not None:
            patch["reviewedBy"] = plan.reviewed_by
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


def _int(version: Any) -> int:
    return int(version) if version is not None and str(version).isdigit() else 0


def _version(body: dict[str, Any]) -> str | None:
    version = body.get("metadata", {}).get("resourceVersion")
    return str(version) if version is not None and str(version).isdigit() else None


def binding_key(kind: str, namespace: str | None, name: str) -> str:
    """How the binding index and own-write records name a binding."""
    return f"{kind}/{namespace or ''}/{name}"


async def _in_order(posts: list[Coroutine[Any, Any, None]],
                    slots: asyncio.Semaphore) -> None:
    async with slots:  # a bounded share of the connections: grants and renewals come first
        for post in posts:
            await post


def _eligibility(spec: Any) -> RoleEligibilitySpec | None:
    try:
        return RoleEligibilitySpec.model_validate(spec or {})
    except ValidationError:
        return None


def _not_granted(plan: Plan, message: str) -> Plan:
    """The plan without activation, when the binding cannot be made.

    Fails closed and says why; the request waits and is tried again.
    """
    logger.warning(message)
    kept = tuple(t for t in plan.transitions if t.action not in ("Approved", "Activated",
                                                                 "BreakGlass"))
    return dataclasses.replace(plan, transitions=kept, message=message, activated_at=None,
                               expires_at=None, review_required=None)


def _time(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).isoformat().replace("+00:00", "Z")
