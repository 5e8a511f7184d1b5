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
from kubepim.domain import activity
from kubepim.domain.activity import BindingKey, Grant, Seen, Tally
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
class Unwritten:
    """What is counted to one grant since its last write, and who waits for it to be written."""

    tally: Tally = field(default_factory=Tally)
    done: asyncio.Event = field(default_factory=asyncio.Event)  # set when written, or not
    written: bool = False


@dataclass
class _Held:
    """One grant the sink counts to."""

    grant: Grant
    recorded: Activity | None = None  # status.activity as last read or written
    unwritten: Unwritten = field(default_factory=Unwritten)
    ended: float | None = None  # monotonic time the grant ended (kept GRACE for late events)
    flushing: bool = False  # a flush of it is under way (waiting for the request's lock)
    writing: bool = False  # its activity is being written on its own (under the lock)


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
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._pending = 0  # events parsed whose post is not answered yet
        self._server: asyncio.Server | None = None
        self._runner: web.AppRunner | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(8)  # activity writes at once
        self.port: int | None = None

    # What the reconciler tells: which grants exist, and what its own writes carried

    def track(self, grant: Grant, recorded: Activity | None) -> None:
        """An Active grant as a reconcile found or wrote it: count its use from now on."""
        held = self._held.get(grant.request)
        if held is None or held.grant.uid != grant.uid:
            if held is not None:
                self.forget(grant.request)
            held = _Held(grant=grant, recorded=recorded)
            self._held[grant.request] = held
            for audit_id in (recorded.audit_ids if recorded else ()):
                self._remember(audit_id)
        else:
            if held.grant != grant:
                self._unindex(held.grant)
                held.grant = grant
            if recorded is not None and not held.writing:
                held.recorded = recorded
        self._index(held.grant)

    def ended(self, name: str, uid: str, at: datetime.datetime,
              recorded: Activity | None) -> None:
        """The grant ended at ``at``; late events still count for :data:`GRACE`."""
        held = self._held.get(name)
        if held is None or held.grant.uid != uid:
            return
        if recorded is not None and not held.writing:
            held.recorded = recorded
        if held.ended is None:
            held.ended = self._clock()
            self._unindex(held.grant)
            held.grant = dataclasses.replace(held.grant, ends_at=min(at, held.grant.ends_at))
            self._index(held.grant)

    def forget(self, name: str, ended_too: bool = True) -> None:
        """The request is gone, or this replica stopped leading: posts waiting are refused.

        ``ended_too``: also a grant that ended (else kept :data:`GRACE` for late events).
        """
        held = self._held.get(name)
        if held is not None and (ended_too or held.ended is None):
            del self._held[name]
            self._unindex(held.grant)
            held.unwritten.done.set()  # (not written: their posts answered 503, posted again)

    def reset(self) -> None:
        """Leadership lost: nothing is counted until grants are tracked again."""
        for name in list(self._held):
            self.forget(name)

    def last_use(self, name: str, uid: str) -> datetime.datetime | None:
        """The latest use counted to this grant, written or not."""
        held = self._held.get(name)
        if held is None or held.grant.uid != uid:
            return None
        uses = [t for t in (held.unwritten.tally.last_use,
                            held.recorded.last_use if held.recorded else None) if t is not None]
        return max(uses) if uses else None

    def take(self, name: str, uid: str) -> tuple[Activity | None, Unwritten] | None:
        """For a reconcile's status write: the recorded activity and what to write along.

        Give it back with :meth:`wrote` or :meth:`not_written`.
        """
        held = self._held.get(name)
        if held is None or held.grant.uid != uid or held.writing:
            return None
        taken, held.unwritten = held.unwritten, Unwritten()
        return held.recorded, taken

    def wrote(self, name: str, uid: str, taken: Unwritten, recorded: Activity) -> None:
        """``taken`` was written (status.activity is now ``recorded``)."""
        held = self._held.get(name)
        if held is not None and held.grant.uid == uid:
            held.recorded = recorded
        taken.written = True
        taken.done.set()
        self._gauge()

    def not_written(self, name: str, uid: str, taken: Unwritten) -> None:
        """``taken``'s write failed: counted again with the next one; its posts answered 503."""
        held = self._held.get(name)
        if held is not None and held.grant.uid == uid:
            held.unwritten.tally.absorb(taken.tally)
            self._wake.set()
        taken.done.set()

    # Receiving

    def count(self, events: list[Any]) -> list[Unwritten]:
        """Attribute one batch; what it added to (its answer waits for those writes)."""
        touched: dict[str, Unwritten] = {}
        results: dict[str, int] = {}
        for event in events:
            seen = activity.reduce(event) if isinstance(event, dict) else None
            attributions = activity.attribute(seen, self._by_binding, self._by_user) \
                if seen is not None else []
            if seen is None or not attributions:
                results["unattributed"] = results.get("unattributed", 0) + 1
                continue
            if seen.audit_id in self._seen:
                results["duplicate"] = results.get("duplicate", 0) + 1
                continue
            self._remember(seen.audit_id)
            for grant, how in attributions:
                held = self._held.get(grant.request)
                if held is None or held.grant.uid != grant.uid:
                    continue
                held.unwritten.tally.add(seen, how)
                touched[grant.request] = held.unwritten
                key = "attributed" if how == "grant" else how.replace("-", "_")
                results[key] = results.get(key, 0) + 1
                _line(seen, grant, how)
        for result, number in results.items():
            metrics.AUDIT_EVENTS.labels(result).inc(number)
        if touched:
            self._wake.set()
            self._gauge()
        return list(touched.values())

    async def _receive(self, request: web.Request) -> web.Response:
        refused = self._refuse(request)
        if refused is not None:
            return refused
        if self._pending > self.settings.audit_sink_max_pending:
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
        self._pending += len(events)
        try:
            deadline = self._clock() + _ANSWER_TIMEOUT
            for unwritten in self.count(events):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(unwritten.done.wait(),
                                           max(deadline - self._clock(), 0.001))
                if not unwritten.written:
                    # Not written yet (a failed write, a lost lease, slow): the API server posts
                    # the batch again; what was written by then is skipped by its id.
                    return web.Response(status=503, text="not recorded yet: retry\n")
        finally:
            self._pending -= len(events)
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
        if not self.reconciler.caught_up.is_set():
            # A new leader has not yet reconciled every grant it listed: a batch posted now
            # (perhaps again, after the previous leader died) would find grants it cannot
            # count to yet. Posted again shortly.
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
            try:
                await self.flush()
            except Exception:  # never the flusher's end
                logger.exception("activity flush failed")
            self._expire()
            await asyncio.sleep(max(0.0, self.settings.activity_flush_seconds
                                    - (self._clock() - started)))

    async def flush(self) -> None:
        """Write every grant's unwritten activity (each grant at most one write at a time)."""
        due = [held for held in self._held.values()
               if held.unwritten.tally and not held.flushing]
        if due:
            await asyncio.gather(*(self._write(held) for held in due))

    async def _write(self, held: _Held) -> None:
        name, uid = held.grant.request, held.grant.uid
        held.flushing = True
        try:
            async with self._slots, self.reconciler.lock(name):
                if self._held.get(name) is not held or not held.unwritten.tally \
                        or not self.reconciler.leading():
                    return  # (a reconcile took it; or posts waiting time out: 503, again)
                held.writing = True
                version = self.reconciler.state.decided_version(name)
                recorded = held.recorded
                if version is None:  # an ended grant, settled and out of the operator's watch
                    current = await self.reconciler.kube.get_request(name)
                    if current is None or current["metadata"].get("uid") != uid:
                        self.forget(name)
                        return
                    version = str(current["metadata"]["resourceVersion"])
                    found = (current.get("status") or {}).get("activity")
                    recorded = Activity.model_validate(found) if found else None
                taken, held.unwritten = held.unwritten, Unwritten()
                merged = activity.merged(recorded, taken.tally)
                try:
                    answer = await self.reconciler.kube.patch_request_status(
                        name, {"activity": dump(merged)}, version, uid=uid)
                except NotFound:
                    self.forget(name)
                    taken.done.set()
                    return
                except Exception as error:
                    logger.debug("activity of %s not written (%s: %s): its reconcile next",
                                 name, type(error).__name__, error)
                    held.writing = False
                    self.not_written(name, uid, taken)
                    self.reconciler.enqueue(name)
                    return
                self.reconciler.wrote_alone(name, answer)
                held.writing = False
                self.wrote(name, uid, taken, merged)
        finally:
            held.flushing = held.writing = False

    def _gauge(self) -> None:
        metrics.AUDIT_PENDING.set(sum(len(h.unwritten.tally.ids) for h in self._held.values()))

    def _expire(self) -> None:
        now = self._clock()
        for name, held in list(self._held.items()):
            if held.ended is not None and now - held.ended > GRACE.total_seconds() \
                    and not held.unwritten.tally:
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

    def _remember(self, audit_id: str) -> None:
        self._seen[audit_id] = None
        self._seen.move_to_end(audit_id)
        while len(self._seen) > _SEEN_IDS:
            self._seen.popitem(last=False)

    # Serving

    async def start(self) -> None:
        """Listen on the configured port (TLS; the client certificate checked per connection)."""
        settings = self.settings
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH,
                                             cafile=settings.audit_sink_client_ca_file)
        context.load_cert_chain(settings.audit_sink_cert_file, settings.audit_sink_key_file)
        context.verify_mode = ssl.CERT_OPTIONAL  # none: 401 (counted); a wrong one: below
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
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        if self._server is not None:
            self._server.close()
        if self._runner is not None:
            await self._runner.cleanup()


class _TlsGate(asyncio.Protocol):
    """Completes the TLS handshake itself, so a refused client certificate is counted.

    (A server socket with TLS refuses such a handshake deep in asyncio, logged at debug level
    and counted nowhere.) After the handshake the connection is handed to aiohttp.
    """

    def __init__(self, context: ssl.SSLContext, http: Any) -> None:
        self._context = context
        self._http = http
        self._task: asyncio.Task[None] | None = None

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
        if secured is None:
            transport.close()
            return
        protocol = self._http()
        secured.set_protocol(protocol)
        protocol.connection_made(secured)

    def data_received(self, data: bytes) -> None:  # (none before the handshake completes)
        pass


def _line(seen: Seen, grant: Grant, how: str) -> None:
    lines.info(json.dumps({
        "id": f"{grant.uid}/audit/{seen.audit_id}", "kind": "Activity", "attribution": how,
        "request": grant.request, "auditID": seen.audit_id, "user": seen.username,
        "verb": seen.verb, "resource": seen.resource, "namespace": seen.namespace or None,
        "name": seen.name or None, "code": seen.code, "time": seen.time.isoformat(),
        "binding": "/".join(p for p in (grant.binding[1], grant.binding[2]) if p),
    }, sort_keys=True))



def dump(recorded: Activity) -> dict[str, Any]:
    """status.activity as JSON."""
    return recorded.model_dump(mode="json", by_alias=True, exclude_defaults=True)
