"""The audit sink: the API server's audit webhook posts here; use is counted to each grant.

The API server's audit webhook backend (batch mode) posts ``audit.k8s.io/v1`` EventLists over
TLS, authenticating with a client certificate that must chain to the configured CA (and carry
an allowed common name, if any are configured); a handshake with any other certificate is
refused and counted, a post without one is answered 401 and counted. Each event is reduced and
attributed (domain/activity.py) to the grants this leader holds Active (or ended less than
:data:`GRACE` ago: batches arrive up to the backend's max-wait late), one JSON line per
attributed request on the ``kubepim.activity`` logger.

What is counted is written to the grant's ``status.activity`` at most every
``activity_flush_seconds``, and a post is answered only once everything it added is written:
if the operator dies first, the API server gets no answer and posts the batch again (to the
next leader). The ids a write counted go with it (``status.activity.auditIds``), so a batch
posted again after the write is not counted twice. A replica that does not lead answers 503
(and closes the connection, so the retry may reach the leader); so does a leader with more than
``audit_sink_max_pending`` events waiting (the API server retries with backoff, then drops the
batch and counts it in ``apiserver_audit_error_total``: it never waits for kubepim).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import json
import logging
import ssl
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web
from cryptography import x509
from cryptography.x509.oid import NameOID

from kubepim import metrics
from kubepim.api.request import Activity
from kubepim.domain import activity, bindings
from kubepim.domain.activity import AUDIT_IDS, BindingKey, Grant, Seen, Tally
from kubepim.k8s.client import NotFound

if TYPE_CHECKING:
    from kubepim.settings import Settings

    from .reconcile import Reconciler

logger = logging.getLogger(__name__)
lines = logging.getLogger("kubepim.activity")  # one JSON line per attributed request

GRACE = datetime.timedelta(minutes=2)  # an ended grant still collects late events this long
_ANSWER_TIMEOUT = 20.0  # a post waits this long for its writes (the backend gives up at 30 s)
_SEEN_IDS = 50_000  # attributed audit ids remembered (the backend's retries span ~2 minutes)
_MAX_BODY = 32 * 1024 * 1024


@dataclass
class _Waiter:
    """One post waiting for the ids it added to be written."""

    remaining: set[str]
    done: asyncio.Event = field(default_factory=asyncio.Event)
    failed: bool = False


@dataclass
class _Held:
    """One grant the sink counts to."""

    grant: Grant
    recorded: Activity | None = None  # status.activity as last read or written
    tally: Tally = field(default_factory=Tally)  # counted, not yet written
    in_flight: Tally | None = None  # being written
    ended: float | None = None  # monotonic time the grant ended (kept GRACE for late events)
    idle_not_before: datetime.datetime | None = None  # a takeover's grace: track_listed
    flushing: bool = False  # a write of it is queued or under way


class ActivitySink:
    """Counts audit events to grants and writes each grant's activity (docs/activity.md)."""

    def __init__(self, reconciler: Reconciler, settings: Settings,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.reconciler = reconciler
        self.settings = settings
        self._clock = clock
        self._held: dict[str, _Held] = {}  # request name -> held grant
        self._by_binding: dict[BindingKey, Grant] = {}
        self._by_user: dict[str, list[Grant]] = {}
        self._written: OrderedDict[str, None] = OrderedDict()  # ids written (bounded)
        self._pending: dict[str, str] = {}  # id counted, not yet written -> request name
        self._waiters: dict[str, list[_Waiter]] = {}
        self._parsed = 0  # events parsed whose post is not answered yet
        self._ready = False  # this leader's takeover listed its grants (see track_listed)
        self._idle_hold: datetime.datetime | None = None  # posts refused for load: no Idle
        self._server: asyncio.Server | None = None
        self._runner: web.AppRunner | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._writes: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(8)  # activity writes at once
        self.port: int | None = None

    # What the reconciler tells: which grants exist, and what its own writes carried

    def track_listed(self, requests: list[dict[str, Any]]) -> None:
        """A takeover's listing: count to its Active grants at once (before their reconciles).

        Uses the previous leader counted but did not write come again (the API server posts
        them again), maybe only after its retry backoff: until ``activity_takeover_grace``
        has passed, those grants are taken as used at the takeover, so none ends Idle for
        want of a use that is on its way.
        """
        now = datetime.datetime.now(datetime.UTC)
        grace = datetime.timedelta(seconds=self.settings.activity_takeover_grace_seconds)
        for item in requests:
            grant, recorded = _listed_grant(item)
            if grant is None:
                continue
            held = self._held.get(grant.request)
            if held is None or held.grant.uid != grant.uid:
                self.track(grant, recorded)  # (one already held is newer than a listing)
            self._held[grant.request].idle_not_before = now + grace
        self._ready = True

    def track(self, grant: Grant, recorded: Activity | None) -> None:
        """An Active grant as a reconcile found or wrote it: count its use from now on."""
        held = self._held.get(grant.request)
        if held is None or held.grant.uid != grant.uid:
            if held is not None:
                self.forget(grant.request)
            held = _Held(grant=grant, recorded=recorded)
            self._held[grant.request] = held
            for audit_id in (recorded.audit_ids if recorded else ()):
                self._mark_written(audit_id)
        else:
            if held.grant != grant:
                self._unindex(held.grant)
                held.grant = grant
            if recorded is not None and held.in_flight is None:
                held.recorded = recorded
                for audit_id in recorded.audit_ids:
                    self._mark_written(audit_id)
        self._index(held.grant)

    def ended(self, name: str, uid: str, at: datetime.datetime,
              recorded: Activity | None) -> None:
        """The grant ended at ``at``; late events still count for :data:`GRACE`."""
        held = self._held.get(name)
        if held is None or held.grant.uid != uid:
            return
        if recorded is not None and held.in_flight is None:
            held.recorded = recorded
        if held.ended is None:
            held.ended = self._clock()
            self._unindex(held.grant)
            held.grant = dataclasses.replace(held.grant, ends_at=min(at, held.grant.ends_at))
            self._index(held.grant)

    def forget(self, name: str, ended_too: bool = True) -> None:
        """The request is gone, or this replica stopped leading: what it counted is dropped.

        ``ended_too``: also a grant that ended (else kept :data:`GRACE` for late events).
        Posts waiting for it are answered 503: the API server posts them again (to the next
        leader, which counts them).
        """
        held = self._held.get(name)
        if held is None or not (ended_too or held.ended is None):
            return
        del self._held[name]
        self._unindex(held.grant)
        for tally in (held.tally, held.in_flight):
            if tally:
                self._settle(tally.ids(), written=False)
        self._gauge()

    def reset(self) -> None:
        """Leadership lost: nothing is counted until a takeover lists the grants again."""
        self._ready = False
        for name in list(self._held):
            self.forget(name)

    def last_use(self, name: str, uid: str) -> datetime.datetime | None:
        """The latest use counted to this grant, written or not."""
        held = self._held.get(name)
        if held is None or held.grant.uid != uid:
            return None
        uses = [t for t in (held.tally.last_use(),
                            held.in_flight.last_use() if held.in_flight else None,
                            held.recorded.last_use if held.recorded else None)
                if t is not None]
        return max(uses) if uses else None

    def idle_not_before(self, name: str, uid: str) -> datetime.datetime | None:
        """Until when a grant may not end Idle (after a takeover, or posts refused for load)."""
        held = self._held.get(name)
        if held is None or held.grant.uid != uid:
            return None
        holds = [t for t in (held.idle_not_before, self._idle_hold) if t is not None]
        return max(holds) if holds else None

    def take(self, name: str, uid: str) -> tuple[Activity | None, Tally] | None:
        """For a reconcile's status write (under the request's lock): what to write along.

        Give it back with :meth:`wrote` or :meth:`not_written`.
        """
        held = self._held.get(name)
        if held is None or held.grant.uid != uid or held.in_flight is not None \
                or not held.tally:
            return None
        held.in_flight = held.tally.split(AUDIT_IDS)
        return held.recorded, held.in_flight

    def wrote(self, name: str, uid: str, tally: Tally, recorded: Activity) -> None:
        """``tally`` was written (status.activity is now ``recorded``)."""
        held = self._held.get(name)
        if held is not None and held.grant.uid == uid:
            held.recorded = recorded
            if held.in_flight is tally:
                held.in_flight = None
        self._settle(tally.ids(), written=True)
        self._gauge()

    def not_written(self, name: str, uid: str, tally: Tally) -> None:
        """``tally``'s write failed (or its outcome is unknown): it goes with the next one."""
        held = self._held.get(name)
        back = held is not None and held.grant.uid == uid and held.in_flight is tally
        if back:
            assert held is not None
            held.in_flight = None
            held.tally.put_back(tally)
            self._wake.set()
        self._settle(tally.ids(), written=False, pending=back)  # (else dropped for good)
        self._gauge()

    # Receiving

    def count(self, events: list[Any]) -> _Waiter | None:
        """Attribute one batch; what its answer waits for (None: nothing, answer at once)."""
        waiting: set[str] = set()
        results: dict[str, int] = {}
        for event in events:
            seen = activity.reduce(event) if isinstance(event, dict) else None
            attributions = activity.attribute(seen, self._by_binding, self._by_user) \
                if seen is not None else []
            if seen is None or not attributions:
                results["unattributed"] = results.get("unattributed", 0) + 1
                continue
            if seen.audit_id in self._written:
                results["duplicate"] = results.get("duplicate", 0) + 1
                continue
            if seen.audit_id in self._pending:  # counted, not written yet: wait for it
                results["duplicate"] = results.get("duplicate", 0) + 1
                waiting.add(seen.audit_id)
                continue
            for grant, how in attributions:
                held = self._held.get(grant.request)
                if held is None or held.grant.uid != grant.uid:
                    continue
                held.tally.add(seen, how)
                self._pending[seen.audit_id] = grant.request
                waiting.add(seen.audit_id)
                key = "attributed" if how == "grant" else how.replace("-", "_")
                results[key] = results.get(key, 0) + 1
                _line(seen, grant, how)
                break  # (one grant per event: the first live one of its user)
        for result, number in results.items():
            metrics.AUDIT_EVENTS.labels(result).inc(number)
        if not waiting:
            return None
        waiter = _Waiter(remaining=waiting)
        for audit_id in waiting:
            self._waiters.setdefault(audit_id, []).append(waiter)
        self._wake.set()
        self._gauge()
        return waiter

    async def _receive(self, request: web.Request) -> web.Response:
        refused = self._refuse(request)
        if refused is not None:
            return refused
        if self._parsed > self.settings.audit_sink_max_pending:
            # Uses in the refused batch are unknown until it comes again: no grant ends Idle
            # meanwhile (for the same grace as after a takeover).
            self._idle_hold = datetime.datetime.now(datetime.UTC) + datetime.timedelta(
                seconds=self.settings.activity_takeover_grace_seconds)
            metrics.AUDIT_POSTS_REFUSED.labels("overloaded").inc()
            return web.Response(status=503, text="overloaded: retry later\n")
        body = await request.read()
        try:
            parsed = json.loads(body)
            events = parsed.get("items") if isinstance(parsed, dict) else None
            if not isinstance(events, list):
                raise ValueError("no items")
        except ValueError as error:
            metrics.AUDIT_POSTS_REFUSED.labels("bad_request").inc()
            return web.Response(status=400, text="expected an audit.k8s.io/v1 EventList "
                                f"({error})\n")
        if not self._ready or not self.reconciler.leading():  # (lost while the body was read)
            metrics.AUDIT_POSTS_REFUSED.labels("not_leader").inc()
            return web.Response(status=503, text="not the leader: retry\n",
                                headers={"Connection": "close"})
        self._parsed += len(events)
        try:
            waiter = self.count(events)
            if waiter is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(waiter.done.wait(), _ANSWER_TIMEOUT)
                if waiter.failed or waiter.remaining:
                    # Not all written (a failed write, a lost lease, slow): the API server
                    # posts the batch again; what is written by then is skipped by its id.
                    self._drop_waiter(waiter)
                    return web.Response(status=503, text="not recorded yet: retry\n")
        finally:
            self._parsed -= len(events)
        return web.Response(status=200)

    def _refuse(self, request: web.Request) -> web.Response | None:
        transport = request.transport
        secured = transport.get_extra_info("ssl_object") if transport is not None else None
        der = secured.getpeercert(binary_form=True) if secured is not None else None
        if not der:
            metrics.AUDIT_POSTS_REFUSED.labels("no_certificate").inc()
            return web.Response(status=401, text="a client certificate is required\n")
        names = self.settings.audit_sink_client_names
        if names:
            subject = x509.load_der_x509_certificate(der).subject
            common = [str(a.value) for a in subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
            if not set(common) & set(names):
                metrics.AUDIT_POSTS_REFUSED.labels("wrong_identity").inc()
                return web.Response(status=403, text=f"certificate {common} may not post\n")
        if not self.reconciler.leading():
            metrics.AUDIT_POSTS_REFUSED.labels("not_leader").inc()
            return web.Response(status=503, text="not the leader: retry\n",
                                headers={"Connection": "close"})
        if not self._ready:
            # A new leader that has not listed the grants yet cannot count to them. Posted
            # again shortly (the takeover lists them first thing).
            metrics.AUDIT_POSTS_REFUSED.labels("catching_up").inc()
            return web.Response(status=503, text="taking over: retry\n")
        return None

    # Writing

    async def _flush_forever(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), GRACE.total_seconds() / 4)
            self._wake.clear()
            started = self._clock()
            self.flush()
            self._expire()
            await asyncio.sleep(max(0.0, self.settings.activity_flush_seconds
                                    - (self._clock() - started)))

    def flush(self) -> None:
        """Start a write of every grant's unwritten activity (one at a time per grant)."""
        for held in list(self._held.values()):
            if held.tally and not held.flushing:
                held.flushing = True
                task = asyncio.create_task(self._write(held), name="activity-write")
                self._writes.add(task)
                task.add_done_callback(self._writes.discard)

    async def _write(self, held: _Held) -> None:
        name, uid = held.grant.request, held.grant.uid
        try:
            # (a slot first: no request's lock is held while writes of others are queued)
            async with self._slots, self.reconciler.lock(name):
                chunks = -(-len(held.tally) // AUDIT_IDS)  # what is here now, not what comes
                for _ in range(chunks):
                    if self._held.get(name) is not held or not held.tally or \
                            not self.reconciler.leading() or held.in_flight is not None:
                        return
                    if not await self._write_one(held, name, uid):
                        return
        except Exception:  # never the flusher's end; what was taken went back (_write_one)
            logger.exception("activity write of %s failed", name)
        finally:
            held.flushing = False

    async def _write_one(self, held: _Held, name: str, uid: str) -> bool:
        """Write at most :data:`AUDIT_IDS` events of the grant's tally; False: stop."""
        version = self.reconciler.state.decided_version(name)
        recorded = held.recorded
        if version is None:  # an ended grant, settled and out of the operator's watch
            current = await self.reconciler.kube.get_request(name)
            if current is None or current["metadata"].get("uid") != uid:
                self.forget(name)
                return False
            version = str(current["metadata"]["resourceVersion"])
            found = (current.get("status") or {}).get("activity")
            recorded = Activity.model_validate(found) if found else None
        chunk = held.in_flight = held.tally.split(AUDIT_IDS)
        try:
            merged = activity.merged(recorded, chunk)
            answer = await self.reconciler.kube.patch_request_status(
                name, {"activity": dump(merged)}, version, uid=uid)
        except NotFound:
            held.in_flight = None
            self.forget(name)
            self._settle(chunk.ids(), written=False)
            return False
        except BaseException as error:
            self.not_written(name, uid, chunk)
            if isinstance(error, Exception):
                logger.debug("activity of %s not written (%s: %s): its reconcile next",
                             name, type(error).__name__, error)
                self.reconciler.enqueue(name)  # (reads it: the next write is on its version)
                return False
            raise
        self.wrote(name, uid, chunk, merged)
        self.reconciler.wrote_alone(name, answer)
        return True

    # Bookkeeping

    def _settle(self, ids: list[str], written: bool, pending: bool = False) -> None:
        """These ids were written (or not): their waiters are told."""
        for audit_id in ids:
            if written:
                self._pending.pop(audit_id, None)
                self._mark_written(audit_id)
            elif not pending:
                self._pending.pop(audit_id, None)
            for waiter in self._waiters.pop(audit_id, ()):
                if written:
                    waiter.remaining.discard(audit_id)
                    if not waiter.remaining:
                        waiter.done.set()
                else:
                    waiter.failed = True
                    waiter.done.set()

    def _drop_waiter(self, waiter: _Waiter) -> None:
        for audit_id in waiter.remaining:
            waiters = self._waiters.get(audit_id)
            if waiters is not None and waiter in waiters:
                waiters.remove(waiter)
                if not waiters:
                    del self._waiters[audit_id]

    def _mark_written(self, audit_id: str) -> None:
        self._written[audit_id] = None
        self._written.move_to_end(audit_id)
        while len(self._written) > _SEEN_IDS:
            self._written.popitem(last=False)

    def _gauge(self) -> None:
        metrics.AUDIT_PENDING.set(len(self._pending))

    def _expire(self) -> None:
        now = self._clock()
        for name, held in list(self._held.items()):
            if held.ended is not None and now - held.ended > GRACE.total_seconds() \
                    and not held.tally and held.in_flight is None:
                self.forget(name)

    def _index(self, grant: Grant) -> None:
        self._by_binding[grant.binding] = grant
        users = self._by_user.setdefault(grant.username, [])
        if grant not in users:
            users.append(grant)

    def _unindex(self, grant: Grant) -> None:
        if self._by_binding.get(grant.binding) == grant:
            del self._by_binding[grant.binding]
        users = self._by_user.get(grant.username)
        if users is not None:
            with contextlib.suppress(ValueError):
                users.remove(grant)
            if not users:
                del self._by_user[grant.username]

    # Serving

    async def start(self) -> None:
        """Listen on the configured port (TLS; the client certificate checked per connection)."""
        settings = self.settings
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH,
                                             cafile=settings.audit_sink_client_ca_file)
        context.load_cert_chain(settings.audit_sink_cert_file, settings.audit_sink_key_file)
        context.verify_mode = ssl.CERT_OPTIONAL  # none: 401 (counted); a wrong one: _TlsGate
        app = web.Application(client_max_size=_MAX_BODY)
        app.router.add_post("/{tail:.*}", self._receive)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        http = self._runner.server
        assert http is not None
        loop = asyncio.get_running_loop()

        def gate() -> asyncio.Protocol:
            return _TlsGate(context, http)

        self._server = await loop.create_server(gate, settings.audit_sink_listen,
                                                settings.audit_sink_port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        self._flusher = asyncio.create_task(self._flush_forever(), name="activity-flush")
        logger.info("audit sink listening on https://%s:%d", settings.audit_sink_listen,
                    self.port)

    async def stop(self) -> None:
        """Stop listening and writing."""
        for task in [*([self._flusher] if self._flusher else []), *self._writes]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._server is not None:
            self._server.close()
        if self._runner is not None:
            await self._runner.cleanup()


def _listed_grant(item: dict[str, Any]) -> tuple[Grant | None, Activity | None]:
    """An Active grant as a takeover listed it (None: not one)."""
    status = item.get("status") or {}
    spec = item.get("spec") or {}
    requester = (spec.get("requester") or {}).get("username")
    if status.get("phase") != "Active" or not requester:
        return None, None
    try:
        activated = datetime.datetime.fromisoformat(str(status["activatedAt"])
                                                    .replace("Z", "+00:00"))
        expires = datetime.datetime.fromisoformat(str(status["expiresAt"])
                                                  .replace("Z", "+00:00"))
        recorded = Activity.model_validate(status["activity"]) if status.get("activity") \
            else None
    except (KeyError, ValueError):
        return None, None
    name = str(item["metadata"]["name"])
    ref = bindings.binding_ref_in(name, spec.get("namespace"))
    return Grant(request=name, uid=str(item["metadata"].get("uid") or ""), username=requester,
                 binding=(ref.kind, ref.namespace or "", ref.name), activated_at=activated,
                 ends_at=expires), recorded


class _TlsGate(asyncio.Protocol):
    """Completes the TLS handshake itself, so a refused client certificate is counted.

    (A server socket with TLS refuses such a handshake deep in asyncio, logged at debug level
    and counted nowhere.) After the handshake the connection is handed to aiohttp, with what
    arrived in between (a TLS 1.3 client sends its request right behind its Finished).
    """

    def __init__(self, context: ssl.SSLContext, http: Any) -> None:
        self._context = context
        self._http = http
        self._task: asyncio.Task[None] | None = None
        self._early: list[bytes] = []
        self._eof = False
        self._lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._task = asyncio.create_task(self._upgrade(transport))

    async def _upgrade(self, transport: asyncio.Transport) -> None:
        loop = asyncio.get_running_loop()
        try:
            secured = await loop.start_tls(transport, self, self._context, server_side=True,
                                           ssl_handshake_timeout=10)
        except (ssl.SSLError, OSError, TimeoutError, ConnectionError) as error:
            reason = "untrusted_certificate" if "CERTIFICATE" in str(error).upper() \
                else "tls_handshake"
            metrics.AUDIT_POSTS_REFUSED.labels(reason).inc()
            logger.info("audit sink: TLS handshake refused (%s)", error)
            transport.close()
            return
        if secured is None or self._lost:
            transport.close()
            return
        protocol = self._http()
        secured.set_protocol(protocol)
        protocol.connection_made(secured)
        for data in self._early:
            protocol.data_received(data)
        self._early.clear()
        if self._eof:
            protocol.eof_received()

    def data_received(self, data: bytes) -> None:
        self._early.append(data)  # (only before the hand-over: then aiohttp's)

    def eof_received(self) -> bool | None:
        self._eof = True
        return None  # (over TLS the transport closes; connection_lost then ends the gate)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True


def _line(seen: Seen, grant: Grant, how: str) -> None:
    lines.info(json.dumps({
        "id": f"{grant.uid}/audit/{seen.audit_id}", "kind": "Activity", "attribution": how,
        "request": grant.request, "auditID": seen.audit_id, "user": seen.username,
        "impersonatedBy": seen.impersonator or None,
        "verb": seen.verb, "resource": seen.resource, "namespace": seen.namespace or None,
        "name": seen.name or None, "code": seen.code, "time": seen.time.isoformat(),
        "binding": "/".join(p for p in (grant.binding[1], grant.binding[2]) if p),
    }, sort_keys=True))



def dump(recorded: Activity) -> dict[str, Any]:
    """status.activity as JSON."""
    return recorded.model_dump(mode="json", by_alias=True, exclude_defaults=True)
