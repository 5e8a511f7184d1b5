"""Watch NotificationRoutes: check each can deliver, say so in its status, hand it to the notifier.

A route is Ready when its spec is valid, its Secret exists in the operator's namespace with the
keys its channel needs, and its endpoint is allowed (https; http only to loopback). A route
that is not Ready delivers nothing and says why; nothing else changes. Secrets are read again
on every check (each route event and every 30 s), so a Secret made or rotated after its route
is picked up without a restart.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import kopf
from pydantic import ValidationError

from kubepim import metrics
from kubepim.api import duration
from kubepim.api.common import GROUP, Condition
from kubepim.api.notification import NotificationRouteSpec
from kubepim.domain import notify
from kubepim.k8s.client import NotFound
from kubepim.notify.channels import Credentials, endpoint
from kubepim.notify.notifier import Route

from . import eligibilities, registry
from .reconcile import Reconciler, utcnow

logger = logging.getLogger(__name__)

# The Secret keys each channel type needs (besides what the spec gives).
_NEEDS: dict[str, tuple[str, ...]] = {"Webhook": ("hmacKey",), "Slack": ("token",),
                                      "SlackWebhook": ("url",), "Teams": (), "Email": ()}

RECHECK_SECONDS = 30.0


async def check(reconciler: Reconciler, namespace: str, spec: dict[str, Any]
                ) -> tuple[NotificationRouteSpec | None, Credentials, str, str]:
    """(the parsed spec, its credentials, reason, message); reason "Valid" when Ready."""
    try:
        model = NotificationRouteSpec.model_validate(spec)
        first = duration.parse(model.retry.first_delay)
    except (ValidationError, ValueError) as error:
        return None, Credentials({}), "InvalidSpec", str(error).replace("\n", " ")
    if first > notify.MAX_DELAY:
        return None, Credentials({}), "InvalidSpec", (
            f"retry.firstDelay {model.retry.first_delay} is longer than the longest retry "
            f"delay ({notify.MAX_DELAY}): give one between 1s and 5m")
    channel = model.channel
    values: dict[str, str] = {}
    if channel.secret_ref is not None:
        found = await reconciler.kube.get_secret(namespace, channel.secret_ref.name)
        if found is None:
            return model, Credentials({}), "SecretMissing", (
                f"Secret {channel.secret_ref.name} does not exist in namespace {namespace} "
                "(the operator's namespace, the only one it reads Secrets in)")
        values = found
    missing = [key for key in _NEEDS[channel.type] if not values.get(key)]
    if missing:
        return model, Credentials({}), "SecretKeyMissing", (
            f"Secret {channel.secret_ref.name if channel.secret_ref else '(none)'} in namespace "
            f"{namespace} has no {', '.join(missing)}: a {channel.type} channel needs "
            f"{', '.join(_NEEDS[channel.type])}")
    credentials = Credentials(values)
    key = credentials.get("hmacKey")
    if channel.type == "Webhook" and key is not None:
        try:
            notify.signing_key(key)
        except ValueError:
            return model, Credentials({}), "SecretKeyMissing", (
                f"Secret {channel.secret_ref.name if channel.secret_ref else ''}'s hmacKey "
                "starts with whsec_ but the rest is not base64 (Standard Webhooks' form), or "
                "give any other string")
    url = endpoint(channel, credentials)
    if channel.type != "Email":
        problem = notify.endpoint_problem(url or "")
        if problem:
            return model, credentials, "InvalidURL", problem
    elif channel.smtp is not None and not channel.smtp.starttls and notify.endpoint_problem(
            f"http://{channel.smtp.host}/") is not None:
        return model, credentials, "InsecureSMTP", (
            "smtp.starttls may be false only for a loopback host: credentials and messages "
            "would cross the network in clear text")
    return model, credentials, "Valid", f"delivers {channel.type} notifications"


async def report(reconciler: Reconciler, namespace: str, name: str, body: dict[str, Any]
                 ) -> None:
    """Check one route; hand it to the notifier (or take it away); write Ready if it changed."""
    model, credentials, reason, message = await check(reconciler, namespace,
                                                      dict(body.get("spec") or {}))
    version = body.get("metadata", {}).get("resourceVersion")
    current = reconciler.routes.get(name)
    if current is None or current.get("metadata", {}).get("resourceVersion") != version:
        return  # deleted or changed while its Secret was read: the newer event decides
    ready = reason == "Valid"
    notifier = reconciler.notifier
    created = _time(body.get("metadata", {}).get("creationTimestamp")) or utcnow()
    if notifier is not None:
        before = notifier.routes.get(name)
        if ready and model is not None:
            notifier.set_route(name, Route(model, created, credentials))
        else:
            notifier.set_route(name, None, why=f"not Ready ({reason})")
        after = notifier.routes.get(name)
        if (before.spec if before else None) != (after.spec if after else None):
            _eligibilities_again(reconciler)
            if after is not None:
                _requests_again(reconciler)
    if not reconciler.leading():
        return
    generation = body.get("metadata", {}).get("generation", 0)
    old = [c for c in (body.get("status") or {}).get("conditions") or []
           if c.get("type") == "Ready"]
    unchanged = bool(old) and old[0].get("status") == str(ready) \
        and old[0].get("message") == message
    moved_at = _time(old[0].get("lastTransitionTime")) if old and unchanged else None
    condition = Condition(type="Ready", status="True" if ready else "False", reason=reason,
                          message=message, last_transition_time=moved_at or utcnow(),
                          observed_generation=generation)
    status = {"observedGeneration": generation, "conditions": [condition.wire()]}
    current = body.get("status") or {}
    if {k: current.get(k) for k in status} != status:
        try:
            await reconciler.kube.patch_route_status(name, status)
        except Exception as error:  # the route was checked and handed over: only this failed
            logger.warning("could not write NotificationRoute %s's status (%s: %s)", name,
                           type_name(error), error)


def _time(text: str | None) -> datetime.datetime | None:
    if not text:
        return None
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


@kopf.on.event(GROUP, "notificationroutes", registry=registry)
async def notificationroute_event(
    body: kopf.Body, name: str, type: str | None, memo: kopf.Memo, **_: Any
) -> None:
    """A route was made, changed or deleted."""
    reconciler: Reconciler = memo.reconciler
    metrics.WATCH_EVENTS.labels("notificationroutes").inc()
    if type == "DELETED":
        reconciler.routes.pop(name, None)
        if reconciler.notifier is not None and name in reconciler.notifier.routes:
            reconciler.notifier.set_route(name, None)
            _eligibilities_again(reconciler)
        return
    reconciler.routes[name] = dict(body)
    try:
        await report(reconciler, memo.settings.namespace, name, dict(body))
    except Exception as error:
        logger.warning("could not check NotificationRoute %s (%s: %s)", name,
                       type_name(error), error)


_AGAIN: set[asyncio.Task[None]] = set()


def _requests_again(reconciler: Reconciler) -> None:
    """A route now delivers (new or changed): every open request is looked at again.

    So the route's timers for requests that already exist are set (a reminder of a Pending
    one, the warning before an Active one expires). In the slow lane: behind every grant and
    expiry, never a storm in front of a burst (docs/notifications.md).
    """
    for eligibility in sorted(reconciler.state.eligibilities or {}):
        for request in reconciler.state.governed_by(eligibility):
            reconciler.enqueue(request, slow=True)


def _eligibilities_again(reconciler: Reconciler) -> None:
    """The routes that deliver changed: every eligibility's Notified condition again.

    In the background; each change starts a pass of its own.
    """
    task = asyncio.get_running_loop().create_task(eligibilities.report_all(reconciler))
    _AGAIN.add(task)
    task.add_done_callback(_AGAIN.discard)


def type_name(error: BaseException) -> str:
    """The exception's class name (for one-line logs)."""
    return type(error).__name__


async def check_all(reconciler: Reconciler, namespace: str) -> bool:
    """Check every route known (each failure logged, none stops the others); True if none."""
    failed = False
    for name, body in list(reconciler.routes.items()):
        try:
            await report(reconciler, namespace, name, body)
        except Exception as error:
            failed = True
            logger.warning("could not check NotificationRoute %s (%s: %s)", name,
                           type_name(error), error)
    return not failed


async def load(reconciler: Reconciler, namespace: str) -> None:
    """List and check every route, so a new leader knows them before it settles anything.

    A final request is settled only once what its routes are owed is sent: until every route
    was listed and checked, none is (grants and expiry do not wait). Raises if the list or a
    check failed (:func:`load_until_done` tries again).
    """
    try:
        items = await reconciler.kube.list_routes()
    except NotFound:
        # The kind is not installed (CRDs of an older chart): no route can exist.
        logger.warning("the NotificationRoute kind is not installed: nothing is notified "
                       "(install the chart's CRDs)")
        items = []
    for item in items:
        reconciler.routes.setdefault(item["metadata"]["name"], item)
    if not await check_all(reconciler, namespace):
        raise RuntimeError("a NotificationRoute could not be checked")
    if reconciler.notifier is not None:
        reconciler.notifier.loaded = True  # (a lost lease clears it: reset)


async def load_until_done(reconciler: Reconciler, namespace: str,
                          then: Callable[[], Awaitable[None]]) -> None:
    """Try :func:`load` again with backoff while this replica holds the lease; then ``then``.

    1 s doubling to 30 s; waiting while the lease's renewal is late. ``then``: the resync,
    which reconciles the final requests whose settling waited.
    """
    delay = 1.0
    while reconciler.elected() and reconciler.notifier is not None \
            and not reconciler.notifier.loaded:
        await asyncio.sleep(delay)
        if not reconciler.leading():
            continue  # renewal late: the lease decides, not this loop
        delay = min(30.0, delay * 2)
        try:
            await load(reconciler, namespace)
        except Exception as error:
            logger.warning("could not list NotificationRoutes (%s: %s); trying again in %.0f s",
                           type_name(error), error, delay)
    if reconciler.elected() and reconciler.notifier is not None and reconciler.notifier.loaded:
        try:
            await then()
        except Exception as error:  # the periodic resync settles them in any case
            logger.warning("resync after listing NotificationRoutes failed (%s: %s)",
                           type_name(error), error)


async def recheck_forever(reconciler: Reconciler, namespace: str,
                          seconds: float = RECHECK_SECONDS) -> None:
    """Check every route again on a schedule: Secrets made, fixed or rotated since."""
    while True:
        await asyncio.sleep(seconds)
        await check_all(reconciler, namespace)
