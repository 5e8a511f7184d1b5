"""Deliver what the routes owe, beside the grant and never in its way.

The reconciler hands every request it decides on to :meth:`Notifier.observe` (after its status
write): the notifier works out, from the request's history and ``status.notifications``, what
each matching route still owes it, and delivers in the background, in history order per route
and request, with retries and exponential backoff (Retry-After honoured). Nothing the
reconciler waits for: a slow or dead receiver delays no grant.

Not lost: how far each route got is written into ``status.notifications`` with the operator's
own status writes (:meth:`progress`), and a final request is settled only once its routes are
done (:meth:`owes`). After a restart or a takeover, the new leader's first reconcile of each
unsettled request finds what was not recorded and sends it again, under the same id: a receiver
sees a notification at most once more than intended. After the last retry: a Warning Event on
the request, a counted failure, and the route moves on.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime
import logging
import re
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from kubepim import metrics
from kubepim.api import duration
from kubepim.api.eligibility import RoleEligibilitySpec
from kubepim.api.notification import NotificationRouteSpec
from kubepim.api.request import AccessRequest, Phase
from kubepim.domain import notify

from .channels import Credentials, GiveUp, Retry, send

logger = logging.getLogger(__name__)

# Deliveries in flight at once, over all routes (each is one HTTP call or SMTP session).
_CONCURRENCY = 16
# A Slack message reference as Slack gives it ("1700000000.123456"); anything else a receiver
# answers is not kept (it is written into the request's status).
_THREAD = re.compile(r"[0-9]{1,12}\.[0-9]{1,9}")
# How long a drained route's progress of a request that is not final waits to ride along with
# the request's next status write before it is written on its own (one write per request for a
# grant's Requested, Approved and Activated, not three). A restart meanwhile sends those again.
_ASK_DELAY = 3.0
# While grants wait in the work queue, a delivery waits for them, polling every _YIELD_POLL s,
# at most _YIELD_MAX s: notifying never delays a grant, and is never starved by a busy queue.
_YIELD_POLL = 0.02
_YIELD_MAX = 2.0
# status.notifications holds at most 64 routes (the CRD's limit): new ones past this are not
# recorded (they are sent, and after a restart sent again).
_MAX_ROUTES = 60


@dataclass
class Route:
    """A route as the notifier uses it: its spec, when it was made, and its credentials."""

    spec: NotificationRouteSpec
    created: datetime.datetime
    credentials: Credentials


@dataclass
class _Work:
    """One route's deliveries for one request, in history order."""

    name: str  # the request's name
    queue: list[notify.Due] = field(default_factory=list)
    enqueued: int = 0  # first index not yet queued
    done: int = 0  # first index not yet delivered or given up on
    failed: int = 0
    thread: str | None = None
    recorded: int = 0  # what status.notifications says
    recorded_routes: int = 0  # how many routes status.notifications holds
    known: bool = False  # whether status.notifications holds this route
    task: asyncio.Task[None] | None = None
    final: bool = False
    snapshot: dict[str, Any] = field(default_factory=dict)  # the body the facts come from
    request: AccessRequest | None = None  # the snapshot, parsed (the reconciler's own parse)
    asking: bool = False  # a delayed ask for the progress to be written is pending
    eligibility: RoleEligibilitySpec | None = None
    reminders: int = 0  # reminders sent (Pending)
    warned: bool = False  # the expiry warning sent (Active)
    review_missing: bool = False  # the missing break-glass review told
    recorded_reminders: int = 0
    recorded_warned: bool = False
    recorded_review_missing: bool = False
    timer: asyncio.TimerHandle | None = None
    timer_for: tuple[str, int] | None = None  # (kind, sequence) the timer fires

    def unrecorded(self) -> bool:
        """Whether this work has progress the status does not hold yet."""
        return (self.done > self.recorded or self.reminders > self.recorded_reminders
                or self.warned > self.recorded_warned
                or self.review_missing > self.recorded_review_missing)

    def parsed(self) -> AccessRequest:
        """The snapshot as a model (the reconciler's own parse, handed over with it)."""
        if self.request is None:
            self.request = AccessRequest.model_validate(self.snapshot)
        return self.request

    def stop_timer(self) -> None:
        """Cancel the reminder or warning timer, if any."""
        if self.timer is not None:
            self.timer.cancel()
        self.timer, self.timer_for = None, None


class Notifier:
    """Owns deliveries: what is queued, in flight, done; one task per (route, request)."""

    def __init__(self, source: str, warn: Callable[[dict[str, Any], str, str],
                                                    Awaitable[None]],
                 settle: Callable[[str], None], leading: Callable[[], bool],
                 record: Callable[[str, str], None] | None = None,
                 pressing: Callable[[], bool] = lambda: False) -> None:
        self.source = source
        self.routes: dict[str, Route] = {}
        self._warn = warn  # posts a Warning Event on a request
        self._settle = settle  # asks the reconciler to look at a request again
        # Writes a request's progress alone (name, uid); without it, a reconcile does.
        self._record = record
        self._pressing = pressing  # whether reconciles are waiting (deliveries let them go first)
        self._leading = leading
        # Whether the routes were listed since this replica last took over: until then nothing
        # is known of what a final request is owed, so none is settled (see owes_unknown).
        self.loaded = False
        self._work: dict[str, dict[str, _Work]] = {}  # request uid → route → its work
        self._slots = asyncio.Semaphore(_CONCURRENCY)
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # SMTP (blocking smtplib) on threads of its own, not the loop's default executor.
        self._mail = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="smtp")

    # Routes (the route watch keeps them)

    def set_route(self, name: str, route: Route | None, why: str = "deleted") -> None:
        """A route was made, changed or (None) deleted or made unable to deliver (``why``).

        A route that cannot deliver gives its queued notifications up at once (counted, a
        Warning Event each, recorded as failed): a request's settling never waits for a route
        someone has to fix.
        """
        if route is not None:
            self.routes[name] = route
            return
        old = self.routes.pop(name, None)
        if old is None:
            return
        for uid in list(self._work):
            work = self._work[uid].get(name)
            if work is None:
                continue
            work.stop_timer()  # (nor reminders, warnings or missing reviews through it)
            if work.task is not None:
                work.task.cancel()
                work.task = None
            abandoned, work.queue = work.queue, []
            if abandoned:
                channel = old.spec.channel.type if old else "unknown"
                work.done = max(work.done, *(d.index + 1 for d in abandoned))
                work.failed += len(abandoned)
                metrics.NOTIFICATIONS.labels(channel, abandoned[0].entry.action,
                                             "failed").inc(len(abandoned))
                self._background(self._warn_safely(
                    work, f"route {name} was {why}: {len(abandoned)} notification(s) of this "
                    "request not sent"))
            self._ask(uid, name, work)

    # The reconciler's side

    def observe(self, body: dict[str, Any], request: AccessRequest,
                eligibility: RoleEligibilitySpec | None,
                eligibility_labels: dict[str, str] | None) -> None:
        """Queue what the routes owe this request, as its status now shows it."""
        if not self._leading() or request.status is None:
            return
        uid = str(body["metadata"].get("uid") or "")
        final = request.status.phase is not None and request.status.phase.final
        for name, route in self.routes.items():
            if not notify.matches(route.spec, request,
                                                     request.status.eligibility,
                                                     eligibility_labels):
                continue
            recorded = notify.next_index(request, name)
            works = self._work.setdefault(uid, {})
            work = works.get(name)
            if work is None:
                delivery = request.status.notifications.get(name)
                work = _Work(name=str(body["metadata"]["name"]), enqueued=recorded,
                             done=recorded, recorded=recorded,
                             failed=delivery.failed if delivery else 0,
                             thread=delivery.thread if delivery else None,
                             reminders=delivery.reminders if delivery else 0,
                             warned=delivery.warned if delivery else False,
                             review_missing=delivery.review_missing if delivery else False,
                             recorded_reminders=delivery.reminders if delivery else 0,
                             recorded_warned=delivery.warned if delivery else False,
                             recorded_review_missing=(delivery.review_missing if delivery
                                                      else False))
            work.recorded = max(work.recorded, recorded)
            work.final, work.snapshot, work.eligibility = final, body, eligibility
            work.request = request
            work.recorded_routes = len(request.status.notifications)
            work.known = name in request.status.notifications
            fresh = notify.due(name, route.spec, route.created, request,
                               max(work.enqueued, recorded))
            self._schedule(uid, name, route, work, request)
            if fresh or work.task is not None or work.unrecorded() or work.timer is not None:
                works[name] = work  # (else nothing to send, record or remind of: not kept)
            work.queue += fresh
            work.enqueued = max([work.enqueued, recorded, *(d.index + 1 for d in fresh)])
            if work.task is None and work.queue:
                work.task = asyncio.create_task(self._deliver(uid, name, work))
        if not self._work.get(uid):
            self._work.pop(uid, None)

    def busy(self) -> bool:
        """Whether any delivery is queued, in flight or unrecorded."""
        return bool(self._work)

    def owes(self, uid: str) -> bool:
        """Whether any route still has something queued or in flight for this request."""
        return any(work.queue or work.task is not None
                   for work in self._work.get(uid, {}).values())

    def owes_unknown(self, uid: str) -> bool:
        """Whether a final request may not be settled yet: owed, or the routes not yet listed."""
        return not self.loaded or self.owes(uid)

    def progress(self, uid: str) -> dict[str, dict[str, Any]]:
        """``status.notifications`` entries newer than the status's own (for the next write)."""
        return {route: {"next": work.done, "failed": work.failed,
                        "reminders": work.reminders, "warned": work.warned,
                        **({"reviewMissing": True} if work.review_missing else {}),
                        **({"thread": work.thread} if work.thread else {})}
                for route, work in self._work.get(uid, {}).items()
                if work.unrecorded() and (work.recorded_routes < _MAX_ROUTES or work.known)}

    def recorded(self, uid: str, written: dict[str, Any]) -> None:
        """A status write landed with ``written``'s notifications: forget what is done."""
        entries = (written.get("status") or {}).get("notifications") or {}
        works = self._work.get(uid, {})
        for route, work in list(works.items()):
            entry = entries.get(route) or {}
            work.recorded = max(work.recorded, int(entry.get("next", 0)))
            work.recorded_reminders = max(work.recorded_reminders,
                                          int(entry.get("reminders", 0)))
            work.recorded_warned = work.recorded_warned or bool(entry.get("warned"))
            work.recorded_review_missing = work.recorded_review_missing or bool(
                entry.get("reviewMissing"))
            if not work.unrecorded() and not work.queue and work.task is None \
                    and work.timer is None:
                del works[route]
        if not works:
            self._work.pop(uid, None)

    def forget(self, uid: str) -> None:
        """The request is gone (deleted): nothing more is sent about it."""
        for route in list(self._work.get(uid, {})):
            self._drop(uid, route)

    def forget_name(self, name: str) -> None:
        """No request of this name exists any more (its uid unknown): forget any of its work."""
        for uid in [uid for uid, works in self._work.items()
                    if any(work.name == name for work in works.values())]:
            self.forget(uid)

    def reset(self) -> None:
        """Leadership lost: stop sending; the next leader picks up from the statuses."""
        self.loaded = False
        for uid in list(self._work):
            for route in list(self._work.get(uid, {})):
                self._drop(uid, route)

    async def close(self) -> None:
        """Stop every delivery and close the HTTP session."""
        self.reset()
        for task in list(self._tasks):
            task.cancel()
        if self._session is not None:
            await self._session.close()
            self._session = None
        self._mail.shutdown(wait=False, cancel_futures=True)

    def _drop(self, uid: str, route: str) -> None:
        works = self._work.get(uid, {})
        work = works.pop(route, None)
        if not works:
            self._work.pop(uid, None)
        if work is not None:
            work.stop_timer()
            if work.task is not None:
                work.task.cancel()

    # Reminders of Pending requests, warnings before expiry, missing break-glass reviews

    def _schedule(self, uid: str, route_name: str, route: Route, work: _Work,
                  request: AccessRequest) -> None:
        """Set the route's timer for this request to the earliest one its state asks (or none).

        One timer per route and request: when it has fired and been delivered, the next is set.
        """
        if any(item.index < 0 for item in work.queue):
            return  # one fired and not yet delivered: its delivery sets the next timer
        status = request.status
        phase = status.phase if status else None
        now = datetime.datetime.now(datetime.UTC)
        due: list[tuple[datetime.datetime, str, int]] = []
        if phase == Phase.PENDING and status is not None and status.history:
            at = notify.reminder_at(route.spec, status.history[0].time, work.reminders)
            if at is not None:
                due.append((at, "Reminder", work.reminders + 1))
        if phase == Phase.ACTIVE and not work.warned and status is not None:
            at = notify.warning_at(route.spec, status.expires_at)
            if at is not None and status.expires_at is not None and status.expires_at > now:
                due.append((at, "ExpiringSoon", 0))  # (expired already: Expired says it)
        if not work.review_missing:
            at = notify.review_missing_at(route.spec, request)
            if at is not None:
                due.append((at, "ReviewMissing", 0))
        if not due:
            work.stop_timer()
            return
        at, kind, sequence = min(due)
        if work.timer is not None and work.timer_for == (kind, sequence):
            return
        work.stop_timer()
        delay = max(0.0, (at - now).total_seconds())
        work.timer_for = (kind, sequence)
        work.timer = asyncio.get_running_loop().call_later(
            delay, self._fire, uid, route_name, kind, sequence)

    def _fire(self, uid: str, route_name: str, kind: str, sequence: int) -> None:
        work = self._work.get(uid, {}).get(route_name)
        if work is None or work.timer_for != (kind, sequence):
            return
        if route_name not in self.routes:  # deleted or not Ready since: nothing to send
            work.timer, work.timer_for = None, None
            if work.unrecorded():
                self._ask(uid, route_name, work)
            elif not work.queue and work.task is None:
                self._drop(uid, route_name)
            return
        if not self._leading():
            # Renewal late: try again in a second (a lost lease resets all work, timers too).
            work.timer = asyncio.get_running_loop().call_later(
                1.0, self._fire, uid, route_name, kind, sequence)
            return
        work.timer, work.timer_for = None, None
        entry = notify.reminder(kind, datetime.datetime.now(datetime.UTC), work.parsed(),
                                sequence)
        work.queue.append(notify.Due(route_name, -1, entry, sequence))
        if work.task is None:
            work.task = asyncio.create_task(self._deliver(uid, route_name, work))

    # Delivery

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        return self._session

    async def _deliver(self, uid: str, route_name: str, work: _Work) -> None:
        try:
            while work.queue and self._leading():
                item = work.queue[0]
                route = self.routes.get(route_name)
                if route is None or not await self._one(route_name, route, work, item):
                    return
                work.queue.pop(0)
                work.done = max(work.done, item.index + 1)
                if item.index < 0:  # a reminder, warning or missing review: the next timer
                    if item.entry.action == "Reminder":
                        work.reminders = max(work.reminders, item.sequence)
                    elif item.entry.action == "ExpiringSoon":
                        work.warned = True
                    elif item.entry.action == "ReviewMissing":
                        work.review_missing = True
                    route = self.routes.get(route_name)
                    if route is not None:
                        self._schedule(uid, route_name, route, work, work.parsed())
        finally:
            work.task = None
        if self._work.get(uid, {}).get(route_name) is work:
            self._ask(uid, route_name, work)

    def _ask(self, uid: str, route_name: str, work: _Work, waited: bool = False) -> None:
        """A route's queue for a request drained: have its progress written by a reconcile.

        A final request's at once (the same write settles it); any other's after
        :data:`_ASK_DELAY`, unless a status write of the request recorded it meanwhile, and
        then by a write of the progress alone (``record``). Not left to the request's next
        transition, which may be hours away (a restart meanwhile would send again).
        """
        if waited:
            work.asking = False
            if self._work.get(uid, {}).get(route_name) is not work:
                return  # forgotten, or recorded and dropped
        if work.queue or work.task is not None or not work.unrecorded():
            return
        if waited and not work.final and self._record is not None:
            self._record(work.name, uid)
        elif work.final or waited:
            self._settle(work.name)
        elif not work.asking:
            work.asking = True
            asyncio.get_running_loop().call_later(_ASK_DELAY, self._ask, uid, route_name,
                                                  work, True)

    def _background(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _warn_safely(self, work: _Work, message: str) -> None:
        logger.warning("%s: %s", work.name, message)
        try:
            await self._warn(work.snapshot, "NotificationFailed", message)
        except Exception:
            logger.exception("could not post the NotificationFailed Event of %s", work.name)

    async def _one(self, route_name: str, route: Route, work: _Work, item: notify.Due) -> bool:
        """Deliver one, with its retries.

        True once delivered or given up on; False when this replica stopped leading (the next
        leader sends it).
        """
        request = work.parsed()
        data = notify.facts(work.snapshot, request, work.eligibility, item.index, item.entry,
                            item.sequence)
        channel = route.spec.channel.type
        try:
            first = duration.parse(route.spec.retry.first_delay)
        except ValueError:  # (the route's check refuses such a route; never a stuck queue)
            first = datetime.timedelta(seconds=1)
        for attempt in range(1, route.spec.retry.attempts + 1):
            if not self._leading():
                return False
            try:
                async with self._slots:
                    # (in the slot: at most _CONCURRENCY deliveries poll, however many wait)
                    await self._after_grants()
                    if not self._leading():
                        return False  # lost the lease meanwhile: the next leader sends it
                    thread = await send(self._http(), route.spec.channel, route.credentials,
                                        self.source, data, work.thread, self._mail)
                work.thread = thread if thread is None or _THREAD.fullmatch(thread) else None
            except Retry as error:
                if attempt == route.spec.retry.attempts:
                    await self._given_up(route_name, work, item, data, f"{error} after "
                                         f"{attempt} attempts")
                    return True
                metrics.NOTIFICATIONS.labels(channel, item.entry.action, "retried").inc()
                delay = notify.retry_delay(first, attempt, error.retry_after)
                logger.info("notification %s to route %s: %s; attempt %d in %.1f s",
                            data["id"], route_name, error, attempt + 1, delay.total_seconds())
                await asyncio.sleep(delay.total_seconds())
            except GiveUp as error:
                await self._given_up(route_name, work, item, data, str(error))
                return True
            except asyncio.CancelledError:
                raise
            except Exception as error:  # anything unforeseen: given up, never a stuck queue
                logger.exception("notification %s to route %s failed", data["id"], route_name)
                await self._given_up(route_name, work, item, data,
                                     f"{type(error).__name__}: {error}")
                return True
            else:
                metrics.NOTIFICATIONS.labels(channel, item.entry.action, "sent").inc()
                metrics.NOTIFICATION_SECONDS.labels(channel).observe(max(
                    0.0, time.time() - item.entry.time.timestamp()))
                return True
        return True

    async def _after_grants(self) -> None:
        """Wait while reconciles wait in the queue (at most :data:`_YIELD_MAX` seconds)."""
        if not self._pressing():
            return
        deadline = time.monotonic() + _YIELD_MAX
        while self._pressing() and time.monotonic() < deadline:
            await asyncio.sleep(_YIELD_POLL)

    async def _given_up(self, route_name: str, work: _Work, item: notify.Due,
                        data: dict[str, Any], why: str) -> None:
        channel = self.routes[route_name].spec.channel.type if route_name in self.routes \
            else "unknown"
        metrics.NOTIFICATIONS.labels(channel, item.entry.action, "failed").inc()
        work.failed += 1
        await self._warn_safely(work, f"could not notify route {route_name} ({channel}) of "
                                f"{item.entry.action} (id {data['id']}): "
                                f"{notify.clip(why, 300)}")
