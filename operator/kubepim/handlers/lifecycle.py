"""Operator start-up and shutdown: kopf settings, login, and the work that must come first.

On start, before any watch begins: every grant that expired while the operator was away is
revoked, then bindings carrying the operator's marks with no live grant behind them are removed,
and the audit lines a dying leader may not have logged are logged again from status.history.
Only then do the work queue and the periodic resync start.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import kopf

from kubepim import audit, memory, tls
from kubepim.api import duration
from kubepim.api.common import GROUP
from kubepim.api.request import AccessRequest, Phase
from kubepim.domain import bindings
from kubepim.engine.leadership import LeaderElector
from kubepim.k8s.client import (
    MANAGED_SELECTOR,
    UNSETTLED,
    BadRequest,
    Kube,
    NotLeading,
    parse_time,
)
from kubepim.notify.notifier import Notifier
from kubepim.settings import Settings

from . import admission, notifications, registry
from .activity import ActivitySink
from .reconcile import Reconciler, utcnow
from .reviews import Reviews
from .standing import StandingWatch
from .sweep import resync_forever, resync_once, retention_forever, sweep_orphans

logger = logging.getLogger(__name__)

# How far before the previous leader's last renewal its unlogged transitions can lie: a lease
# (10 s) plus the longest a status write may take (the client's 60 s timeout), with room.
_REPLAY_WINDOW = datetime.timedelta(seconds=120)


class NoDiffBase(kopf.DiffBaseStorage):
    """No diff-base: kubepim's handlers are all ``on.event``, which never look at one.

    kopf builds an object's essence (a deep copy of its whole body, status and history
    included) on every watch event for its change-detecting handlers (on.create, on.update,
    on.delete, daemons); kubepim registers none (tests/unit/test_kopf_settings.py holds it to
    that).
    """

    def build(self, *, body: Any, extra_fields: Any = None) -> Any:
        """An empty essence (not a copy of the body)."""
        return {}

    def fetch(self, *, body: Any) -> Any:
        """Nothing was stored."""
        return None

    def store(self, *, body: Any, patch: Any, essence: Any) -> None:
        """Nothing to store."""
        return None


@kopf.on.startup(registry=registry)
async def operator_startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """Configure kopf, revoke what is overdue, sweep orphans, start background work."""
    # GitOps tools own the objects' metadata: kopf's progress and diff-base go in status.
    settings.persistence.progress_storage = kopf.StatusProgressStorage()
    settings.persistence.diffbase_storage = NoDiffBase()
    settings.posting.level = logging.INFO
    # List in pages: 10,000 requests listed at once held 80 MiB while kopf worked through them.
    settings.watching.chunk_size = 500
    # Only what the operator still has work on: requests not settled (a server-side field
    # selector on a CRD selectable field) and bindings it made (a label selector). Finished
    # requests and foreign bindings never reach this process (docs/scale.md).
    settings.watching.field_selectors[GROUP, "accessrequests"] = UNSETTLED
    for plural in ("rolebindings", "clusterrolebindings"):
        settings.watching.label_selectors["rbac.authorization.k8s.io", plural] = \
            MANAGED_SELECTOR
    config: Settings = memo.settings
    kube = _connect(settings)
    try:
        await kube.check_selectable_fields()
    except BadRequest as error:
        await kube.close()
        raise kopf.PermanentError(
            "the API server refuses the field selector status.settled on AccessRequests "
            f"({error}): the CRD in the cluster is older than this operator (apply the CRDs "
            "of this version first: kubectl apply --server-side -f crds/; Helm installs crds/ "
            "but never upgrades them), or Kubernetes is older than 1.32 (CRD selectableFields)"
        ) from error
    except BaseException:
        await kube.close()
        raise
    reconciler = Reconciler(kube, config.identity_case, config.max_open_requests,
                            config.max_unreviewed_break_glass)
    memo.reconciler = reconciler
    memo.reviews = Reviews(reconciler, duration.parse(config.retention))
    if config.audit_sink_port:
        missing = [f"KUBEPIM_{key.upper()}={getattr(config, key) or '(unset)'}" for key in (
            "audit_sink_cert_file", "audit_sink_key_file", "audit_sink_client_ca_file")
            if not getattr(config, key) or not Path(getattr(config, key)).is_file()]
        if missing:
            await kube.close()
            raise kopf.PermanentError(
                f"the audit sink (KUBEPIM_AUDIT_SINK_PORT={config.audit_sink_port}) needs its "
                f"serving certificate, key and the client CA as files: {', '.join(missing)} "
                "(docs/activity.md)")
        reconciler.activity = ActivitySink(reconciler, config)

    async def warn(body: dict[str, Any], reason: str, message: str) -> None:
        history = len((body.get("status") or {}).get("history") or [])
        await kube.post_event(body, "Warning", reason, message, utcnow(), history,
                              generate_name=True)

    reconciler.notifier = Notifier(f"urn:kubepim:{config.cluster_name}", warn,
                                   reconciler.enqueue, lambda: reconciler.leading(),
                                   record=reconciler.write_progress,
                                   pressing=reconciler.queue.pressing)

    async def take_over() -> None:
        """What a new leader does before anything else: the restart work."""
        # One list of unsettled requests for both passes below (a final transition's lines are
        # logged before its request is settled: what a kill lost is among these).
        requests = await reconciler.kube.list_requests(unsettled=True)
        reconciler.catch_up(item["metadata"]["name"] for item in requests)
        if reconciler.activity is not None:  # the audit sink counts to them from now on
            reconciler.activity.track_listed(requests)
        # Each listed request reconciled from its listed copy, in the slow lane (the queue
        # resumes below): the watch's own listing repeats the same versions, then skipped as
        # decided. Queued with no await since the list: a DELETED event that comes later drops
        # the copy (enqueue_deletion), so a deleted request is never decided from it.
        for item in requests:
            reconciler.enqueue(item["metadata"]["name"], item, slow=True)
        # Access first: every overdue binding goes before anything else competes for the API
        # server (a fenced delete raises NotLeading: the takeover is tried again while elected).
        overdue = await revoke_overdue(reconciler, requests)
        # Lines before the queue: a reconcile that settled one of these requests before its
        # lines were replayed would take it out of a retried takeover's list.
        replay_audit_lines(requests, elector.previous_renewal)
        # The routes before any reconcile: settling waits for what they are owed. Never in
        # the way of the takeover: until they are listed, grants and expiry go on and final
        # requests wait unsettled (listed again in the background, then a resync).
        try:
            await notifications.load(reconciler, config.namespace)
        except Exception as error:
            logger.warning("could not list NotificationRoutes at takeover (%s: %s); final "
                           "requests stay unsettled until they are", type(error).__name__, error)
            loader = memo.get("route_loader")
            if loader is None or loader.done():  # (a takeover tried again: one is enough)
                memo.route_loader = asyncio.create_task(notifications.load_until_done(
                    reconciler, config.namespace, lambda: resync_once(reconciler)))
        reconciler.queue.resume()
        try:
            for hook in reconciler.on_resync:  # access reviews: their timers start again
                await hook()
        except Exception as error:
            logger.warning("could not list access reviews at takeover (%s: %s); the next "
                           "resync does", type(error).__name__, error)
        removed = await sweep_orphans(reconciler, requests)
        logger.info("took over: revoked %d overdue grant(s), removed %d orphan binding(s)",
                    overdue, removed)
        if memo.get("started"):
            await resync_once(reconciler)

    async def lose() -> None:
        reconciler.queue.pause()
        reconciler.reset()

    # Renewals on a connection of their own: reconcile traffic never delays them.
    elector = LeaderElector(kube.sibling(), config.namespace, config.lease_name,
                            config.identity, config.lease_seconds, take_over, lose)
    reconciler.leading = elector.leading
    memo.reviews.replay_since = lambda: elector.previous_renewal and \
        elector.previous_renewal - _REPLAY_WINDOW
    reconciler.elected = elector.elected
    kube.fence = elector.remaining  # no write once the lease may have passed
    kube.field_manager = f"kubepim-{config.identity}"[:128]
    reconciler.queue.pause()  # until elected
    memo.elector = elector
    await elector.tick()  # a replica that wins here revokes what is overdue before watching
    renewals = asyncio.create_task(elector.run(), name="leader-election")  # beside the takeover
    try:
        # Overdue grants go before watching starts; a takeover that keeps failing goes on
        # retrying in the background rather than hold up everything else.
        await elector.takeover_done(timeout=30)
        if config.webhook_port:
            await _serve_webhooks(settings, config, kube, memo)
        if reconciler.activity is not None:
            await reconciler.activity.start()
    except BaseException:
        renewals.cancel()  # kopf runs start-up again: no second elector beside a new one
        raise
    memo.started = True
    logger.info("kubepim operator started as %s (%s)", config.identity,
                "leader" if elector.leading() else "standby")
    memo.background = [
        renewals,
        asyncio.create_task(reconciler.queue.run(), name="work-queue"),
        asyncio.create_task(resync_forever(reconciler, config.resync_seconds), name="resync"),
        asyncio.create_task(retention_forever(reconciler, config.retention_check_seconds,
                                              config.retention), name="retention"),
        asyncio.create_task(memory.trim_forever(30), name="memory-trim"),
        asyncio.create_task(notifications.recheck_forever(reconciler, config.namespace),
                            name="notification-routes"),
    ]
    if config.standing_scan_seconds > 0:
        memo.standing = StandingWatch(kube.sibling(), kube, reconciler.state,
                                      reconciler.eligibilities, elector.leading,
                                      config.standing_scan_seconds,
                                      config.standing_include_system, config.standing_accept,
                                      reconciler.queue, reconciler.caught_up)
        memo.background.append(asyncio.create_task(memo.standing.run(), name="standing"))


async def _serve_webhooks(
    settings: kopf.OperatorSettings, config: Settings, kube: Kube, memo: kopf.Memo
) -> None:
    """Serve the admission webhooks over TLS and write their configuration."""
    if config.webhook_cert_dir:
        cert_dir = Path(config.webhook_cert_dir)
    else:
        cert_dir = Path(tempfile.mkdtemp(prefix="kubepim-webhook-"))
        memo.temporary_cert_dir = cert_dir
    ca, cert, key = tls.serving_pair(cert_dir, (config.webhook_host,))
    settings.admission.server = kopf.WebhookServer(
        addr=config.webhook_listen, port=config.webhook_port, certfile=str(cert),
        pkeyfile=str(key))
    if config.manage_webhook_configuration:
        # Every replica serves admission, leader or not: this write is not fenced.
        setup = kube.sibling()
        try:
            await setup.apply_validating_webhooks(
                admission.webhook_configuration(config, ca, admission.HANDLER_IDS))
        finally:
            await setup.close()


@kopf.on.cleanup(registry=registry)
async def operator_cleanup(memo: kopf.Memo, **_: Any) -> None:
    """Stop background tasks, hand the lease over, remove temporary certificates."""
    reconciler = getattr(memo, "reconciler", None)
    elector = getattr(memo, "elector", None)
    if reconciler is not None:
        # Events still waiting for grants to go first, posted while this replica leads (they
        # are fenced writes) and its queue still runs; briefly: the standby waits for the lease.
        left = elector.remaining() if elector is not None else 0.0
        await reconciler.flush_events(max(0.0, min(2.0, left - 1.0)))
    loader = getattr(memo, "route_loader", None)
    for task in [*getattr(memo, "background", []), *([loader] if loader else [])]:
        task.cancel()
    if elector is not None:
        await elector.release()
        await elector.kube.close()
    watch = getattr(memo, "standing", None)
    if watch is not None:
        await watch.close()
    if reconciler is not None:
        if reconciler.activity is not None:
            await reconciler.activity.stop()
        if reconciler.notifier is not None:
            await reconciler.notifier.close()
        await reconciler.close()
    cert_dir = getattr(memo, "temporary_cert_dir", None)
    if cert_dir is not None:
        shutil.rmtree(cert_dir, ignore_errors=True)


@kopf.on.login(registry=registry)
def operator_login(settings: kopf.OperatorSettings, **_: Any) -> kopf.ConnectionInfo | None:
    """Authenticate as the pod's ServiceAccount in a cluster, else from the kubeconfig."""
    return _credentials(settings)


def _credentials(settings: kopf.OperatorSettings) -> kopf.ConnectionInfo | None:
    return (kopf.login_with_service_account(settings=settings)
            or kopf.login_with_kubeconfig(settings=settings))


def _connect(settings: kopf.OperatorSettings) -> Kube:
    """The operator's own API client, with the credentials of its kopf login."""
    info = _credentials(settings)
    if info is None:
        raise kopf.PermanentError(
            "no credentials: not in a pod with a ServiceAccount, and no kubeconfig "
            "($KUBECONFIG or ~/.kube/config)")
    tls = info.as_ssl_context() if info.server.startswith("https") else False

    def authorization() -> str | None:
        # The token file of a pod's ServiceAccount is rotated: read it again.
        fresh = _credentials(settings) or info
        header: str | None = fresh.as_http_headers().get("Authorization")
        return header

    return Kube.from_credentials(info.server, tls, authorization)


async def revoke_overdue(reconciler: Reconciler, requests: list[dict[str, Any]]) -> int:
    """Remove the binding of every Active request past its expiry, then record each Expired.

    Access goes first, all bindings at once (bounded); the status writes, history and audit
    lines follow through the ordinary reconcile, which finds the binding already gone. Every
    other Active request's expiry timer is set from the list. ``requests``: every unsettled
    AccessRequest, as just listed. Returns how many grants were overdue.
    """
    now = utcnow()
    overdue = []
    for item in requests:
        status = item.get("status") or {}
        expires = parse_time(status.get("expiresAt"))
        if status.get("phase") == Phase.ACTIVE.value and expires is not None:
            if expires <= now:
                overdue.append(item)
            else:
                # Its expiry timer now, from the list: a grant expiring while the watches'
                # listings are still being worked through (the slow lane) is not late for it.
                # (From the listed dict: no model parse of 5,000 grants on the loop that
                # renews the lease.)
                reconciler.expires(item["metadata"]["name"], str(item["metadata"]["uid"]),
                                   (item.get("spec") or {}).get("namespace"), expires)
    gate = asyncio.Semaphore(32)

    async def unbind(item: dict[str, Any]) -> None:
        try:
            request = AccessRequest.model_validate(item)
        except ValueError:
            return  # reconcile reports it
        ref = bindings.binding_ref(item["metadata"]["name"], request.spec)
        async with gate:
            try:
                await reconciler.delete_binding(ref.kind, ref.name, ref.namespace)
            except NotLeading:
                raise
            except Exception:
                logger.exception("could not remove the overdue binding of %s; its reconcile "
                                 "retries", item["metadata"]["name"])

    await asyncio.gather(*(unbind(item) for item in overdue))
    for item in overdue:  # the Expired records, through the queue (it retries)
        reconciler.enqueue(item["metadata"]["name"])
    return len(overdue)


def replay_audit_lines(
    requests: list[dict[str, Any]], previous_renewal: datetime.datetime | None
) -> int:
    """Log again the JSON lines of transitions a previous leader may have died before logging.

    The line of a transition is logged after the status write that records it; a kill in
    between loses the line but not the history entry. A new leader logs again every entry
    recorded since shortly before the previous holder's last renewal (it cannot have written
    much earlier than that and died before logging). Each line carries the id it had (request
    uid / history index): a consumer keeps the first line of each id.
    """
    if previous_renewal is None:
        return 0
    since = previous_renewal - _REPLAY_WINDOW
    replayed = 0
    for item in requests:
        try:
            request = AccessRequest.model_validate(item)
        except ValueError:
            continue
        replayed += audit.replay(item, request, since)
    if replayed:
        logger.info("logged %d audit line(s) again from status.history (since %s)", replayed,
                    since.isoformat())
    return replayed
