"""Watch RoleEligibilities: report whether each is usable, and re-decide the requests under it.

The operator writes only an eligibility's status (Ready condition and observedGeneration);
spec and metadata belong to whoever applies it (GitOps).
"""

from __future__ import annotations

import contextlib
import datetime
import logging
from typing import Any, Literal

import kopf
from pydantic import ValidationError

from kubepim import metrics
from kubepim.api.common import GROUP, Condition, Subject
from kubepim.api.eligibility import RoleEligibilitySpec
from kubepim.domain import admission, notify
from kubepim.domain import recertification as rc

from . import registry
from .reconcile import Reconciler, utcnow

logger = logging.getLogger(__name__)


async def readiness(reconciler: Reconciler, spec: dict[str, Any]) -> tuple[bool, str, str]:
    """(ready, reason, message) of an eligibility spec.

    Ready: valid, its roles exist, none is on the deny-list (unless allowed), and the operator
    may bind them.
    """
    try:
        model = RoleEligibilitySpec.model_validate(spec)
    except ValidationError as error:
        return False, "InvalidSpec", str(error).replace("\n", " ")
    missing, denied = [], []
    for role in model.roles:
        places: list[str | None] = [None] if role.kind == "ClusterRole" else list(model.namespaces)
        for namespace in places:
            rules = await reconciler.kube.role_rules(role.kind, role.name, namespace)
            if rules is None:
                where = f" in namespace {namespace}" if namespace else ""
                missing.append(f"{role.kind} {role.name} does not exist{where}")
                continue
            reason = admission.privileged(role.kind, role.name, rules, namespace)
            if reason:
                denied.append(reason)
        if role.kind == "Role" and model.namespace_selector is not None:
            denied += reconciler.state.privileged_where_selected(role.name,
                                                                 model.namespace_selector)
    if missing:
        return False, "RoleNotFound", "; ".join(missing)
    if denied and not model.allow_privileged_roles:
        return False, "PrivilegedRole", (
            "; ".join(sorted(set(denied))) + ", which is on the deny-list: requests for it "
            "there are refused unless spec.allowPrivilegedRoles is true")
    unbindable = [str(role) for role in model.roles if not await reconciler.kube.i_may(
        "bind", "rbac.authorization.k8s.io",
        "clusterroles" if role.kind == "ClusterRole" else "roles", name=role.name)]
    if unbindable:
        return False, "OperatorCannotBind", (
            f"the operator may not bind {', '.join(unbindable)}: add it to the chart's "
            "bindableRoles")
    return True, "Valid", "eligible subjects may request these roles"


async def report_readiness(reconciler: Reconciler, name: str, body: dict[str, Any]) -> None:
    """Write the Ready condition of one eligibility, if it changed."""
    ready, reason, message = await readiness(reconciler, dict(body.get("spec") or {}))
    generation = body.get("metadata", {}).get("generation", 0)
    old = [c for c in (body.get("status") or {}).get("conditions") or []
           if c.get("type") == "Ready"]
    unchanged = old and old[0].get("status") == str(ready) and old[0].get("message") == message
    moved_at: datetime.datetime = utcnow()
    if old and unchanged:
        moved_at = datetime.datetime.fromisoformat(
            old[0]["lastTransitionTime"].replace("Z", "+00:00"))
    condition = Condition(type="Ready", status="True" if ready else "False", reason=reason,
                          message=message, last_transition_time=moved_at,
                          observed_generation=generation)
    conditions = [condition.wire(), _notified(reconciler, name, body, generation)]
    suspended = _suspended(body, generation)
    if suspended is not None:
        conditions.append(suspended)
    status = {"observedGeneration": generation, "conditions": conditions}
    current = body.get("status") or {}
    if {k: current.get(k) for k in status} != status:
        await reconciler.kube.patch_eligibility_status(name, status)


def _notified(reconciler: Reconciler, name: str, body: dict[str, Any],
              generation: int) -> dict[str, Any]:
    """The Notified condition: which NotificationRoutes tell someone of requests under it."""
    routes = notify.routes_for(name, body.get("metadata", {}).get("labels") or {},
                               {n: r.spec for n, r in (reconciler.notifier.routes.items()
                                                       if reconciler.notifier else ())})
    state: Literal["True", "False"]
    if routes:
        state, reason, message = "True", "Routed", "notified through " + ", ".join(routes)
    else:
        state, reason, message = "False", "NoRoute", (
            "no NotificationRoute matches this eligibility: nobody is told of its requests "
            "(approvers learn of them only by looking); add a route (docs/notifications.md)")
    return _condition(body, "Notified", state, reason, message, generation)


def _suspended(body: dict[str, Any], generation: int) -> dict[str, Any] | None:
    """The SubjectsSuspended condition: access reviews suspended subjects the spec still lists.

    True tells the eligibility's GitOps owner to remove them (the operator never writes a
    spec); None when no review ever suspended anyone from it.
    """
    held = (body.get("status") or {}).get("suspended") or []
    if not held:
        return None
    listed = set()
    for subject in (body.get("spec") or {}).get("subjects") or []:
        with contextlib.suppress(ValidationError):
            listed.add(rc.identity(Subject.model_validate(subject)))
    still = []
    for entry in held:
        with contextlib.suppress(ValidationError):
            if rc.identity(Subject.model_validate(entry.get("subject") or {})) in listed:
                still.append(entry)  # (listed again in any spelling: still suspended)
    if still:
        names = ", ".join(f"{e['subject'].get('kind')} {e['subject'].get('name')} (review run "
                          f"{e.get('run')})" for e in still)
        state: Literal["True", "False"] = "True"
        reason, message = "RemoveFromSpec", (
            f"suspended by access reviews and still listed in spec.subjects: {names}; remove "
            "them (listing them again does not lift a suspension: a later review does)")
    else:
        state, reason, message = "False", "NoneListed", (
            f"{len(held)} subject(s) suspended by access reviews, none listed in spec.subjects")
    return _condition(body, "SubjectsSuspended", state, reason, message[:1024], generation)


def _condition(body: dict[str, Any], kind: str, state: Literal["True", "False"], reason: str,
               message: str, generation: int) -> dict[str, Any]:
    """A condition as written, its lastTransitionTime kept while status and message stay."""
    old = [c for c in (body.get("status") or {}).get("conditions") or []
           if c.get("type") == kind]
    moved_at = utcnow()
    if old and old[0].get("status") == state and old[0].get("message") == message:
        moved_at = datetime.datetime.fromisoformat(
            old[0]["lastTransitionTime"].replace("Z", "+00:00"))
    return Condition(type=kind, status=state, reason=reason, message=message,
                     last_transition_time=moved_at, observed_generation=generation).wire()


async def report_all(reconciler: Reconciler) -> None:
    """Every eligibility's status again (the routes changed: their Notified condition)."""
    if not reconciler.leading():
        return
    for name in sorted(await reconciler.eligibilities()):
        await _report(reconciler, name, None)


@kopf.on.event(GROUP, "roleeligibilities", registry=registry)
async def roleeligibility_event(
    body: kopf.Body, name: str, type: str | None, memo: kopf.Memo, **_: Any
) -> None:
    """Report readiness, then reconcile every unfinished request (coverage may have changed)."""
    reconciler: Reconciler = memo.reconciler
    metrics.WATCH_EVENTS.labels("roleeligibilities").inc()
    spec = None if type == "DELETED" else dict(body.get("spec") or {})
    changed = reconciler.state.observe_eligibility(
        name, spec, body.metadata.get("resourceVersion"),
        dict(body.metadata.get("labels") or {}), dict(body.get("status") or {}))
    # First the requests it governs (a listing too: an edit missed while the watch was down);
    # enqueue keeps nothing on a standby, whose takeover reconciles everything. Not for a
    # status-only change such as its own Ready or Notified condition: a NotificationRoute
    # made Ready had every Active grant under the eligibility read and decided again, right
    # when a burst began (docs/notifications.md).
    if changed:
        for request in reconciler.state.governed_by(name):
            reconciler.enqueue(request)
    if type != "DELETED" and memo.get("reviews") is not None:
        # (made again under a new uid: its suspensions come back)
        memo.reviews.eligibility_changed(name, str(body.metadata.get("uid") or ""))
    if type != "DELETED" and reconciler.leading():
        await _report(reconciler, name, dict(body))


async def _report(reconciler: Reconciler, name: str, body: dict[str, Any] | None) -> None:
    """Readiness is a status only: a failed write is logged, the next event or resync redoes it.

    ``body`` None: read the eligibility first.
    """
    try:
        body = body if body is not None else await reconciler.kube.get_eligibility(name)
        if body is not None:
            await report_readiness(reconciler, name, body)
    except Exception as error:
        logger.warning("could not report the readiness of RoleEligibility %s (%s: %s)", name,
                       type(error).__name__, error)


async def _role_event(reconciler: Reconciler, kind: str, namespace: str | None, name: str,
                      rules: list[dict[str, Any]] | None) -> None:
    """A role's rules changed: act if that put it on or off the deny-list.

    Every eligibility naming it reports readiness again and the requests it governs are decided
    again (a pending request is denied, an active grant revoked, when its role became
    privileged).
    """
    # Listings too (start-up, a watch that lists again): a role that became privileged while
    # nobody watched is acted on as soon as it is seen.
    metrics.WATCH_EVENTS.labels(f"{kind.lower()}s").inc()
    if not reconciler.state.observe_role(kind, namespace, name, rules):
        return
    naming = [eligibility for eligibility, spec in sorted((await reconciler.eligibilities()
                                                           ).items())
              if any(role.kind == kind and role.name == name for role in spec.roles)]
    for eligibility in naming:  # every request first, then the statuses
        for request in reconciler.state.governed_by(eligibility):
            reconciler.enqueue(request)
    for eligibility in naming:
        if reconciler.leading():
            await _report(reconciler, eligibility, None)


@kopf.on.event("rbac.authorization.k8s.io", "v1", "clusterroles", registry=registry)
async def clusterrole_event(
    body: kopf.Body, name: str, type: str | None, memo: kopf.Memo, **_: Any
) -> None:
    """A ClusterRole changed (aggregation included): re-check the deny-list where it matters."""
    rules = None if type == "DELETED" else list(body.get("rules") or [])
    _standing_scan(memo, type)
    await _role_event(memo.reconciler, "ClusterRole", None, name, rules)


@kopf.on.event("rbac.authorization.k8s.io", "v1", "roles", registry=registry)
async def role_event(
    body: kopf.Body, name: str, namespace: str | None, type: str | None, memo: kopf.Memo,
    **_: Any,
) -> None:
    """A Role changed: re-check the deny-list where it matters."""
    rules = None if type == "DELETED" else list(body.get("rules") or [])
    _standing_scan(memo, type)
    await _role_event(memo.reconciler, "Role", namespace, name, rules)


def _standing_scan(memo: kopf.Memo, change: str | None) -> None:
    """A role changed (not a listing: the scan reads every role itself): scan again soon."""
    watch = memo.get("standing")
    if watch is not None and change is not None:
        watch.roles_changed()
