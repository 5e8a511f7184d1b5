"""One place for the audit trail: a Kubernetes Event and one JSON log line per transition.

Events expire (an hour by default); the AccessRequest's status.history and the JSON lines on the
operator's log are the durable record. Both are written here, beside each other.
"""

from __future__ import annotations

import datetime
import json
import logging
from collections.abc import Coroutine
from typing import Any

from kubepim.api.request import AccessRequest, AccessRequestSpec, Phase
from kubepim.domain.lifecycle import Transition
from kubepim.k8s.client import Conflict, Kube, NotLeading

logger = logging.getLogger("kubepim.audit")  # the JSON lines, and nothing else
events_logger = logging.getLogger("kubepim.events")


def record(
    kube: Kube,
    body: dict[str, Any],
    spec: AccessRequestSpec,
    transition: Transition,
    when: datetime.datetime,
    expires_at: datetime.datetime | None,
    index: int,
) -> Coroutine[Any, Any, None]:
    """Log the JSON line now; return the coroutine that posts the Event of one transition.

    Called once the transition is in status.history at ``index``; the line's ``id`` (request
    uid / history index) is unique per transition, so a consumer can tell a repeat from a new
    one. The log line cannot fail; a failed Event is logged and not retried (the status history
    is the durable record).
    """
    line = _line(body, spec, index, when, transition.action, transition.actor,
                 transition.phase, transition.message, expires_at)
    logger.info(json.dumps(line, sort_keys=True))
    return _post(kube, involved(body), transition, when, str(line["request"]), index)


def involved(body: dict[str, Any]) -> dict[str, Any]:
    """What an Event needs of its object: a waiting post holds this, not the whole request."""
    metadata = body.get("metadata") or {}
    return {"apiVersion": body.get("apiVersion"), "kind": body.get("kind"),
            "metadata": {k: metadata[k] for k in ("name", "uid", "namespace") if k in metadata}}


def _line(body: dict[str, Any], spec: AccessRequestSpec, index: int, when: datetime.datetime,
          action: str, actor: str, phase: Phase, reason: str,
          expires_at: datetime.datetime | None) -> dict[str, Any]:
    return {
        "id": f"{body.get('metadata', {}).get('uid')}/{index}",
        "time": when.isoformat(),
        "action": action,
        "request": body.get("metadata", {}).get("name"),
        "requester": spec.requester.username if spec.requester else None,
        "actor": actor,
        "role": str(spec.role),
        "namespace": spec.namespace,
        "expiresAt": expires_at.isoformat() if expires_at else None,
        "phase": phase.value,
        "reason": reason,
    }


# The phase each action leaves a request in (Reviewed leaves it where it was).
_PHASE_AFTER = {"Requested": Phase.PENDING, "Approved": Phase.PENDING,
                "BreakGlass": Phase.PENDING, "Activated": Phase.ACTIVE,
                "BindingRestored": Phase.ACTIVE, "Expired": Phase.EXPIRED, "Idle": Phase.EXPIRED,
                "Denied": Phase.DENIED, "Revoked": Phase.REVOKED, "Withdrawn": Phase.WITHDRAWN,
                "TimedOut": Phase.TIMED_OUT, "Rejected": Phase.REJECTED}


def replay(body: dict[str, Any], request: AccessRequest, since: datetime.datetime | None = None,
           from_index: int = 0) -> int:
    """Log again the lines of history entries: recorded at or after ``since``, from ``from_index``.

    Each line is rebuilt from the entry as the original was (same id, time, action, actor,
    phase, reason, expiry), so a consumer that keeps the first line of each id sees every
    transition exactly once. Returns how many lines were logged.
    """
    status = request.status
    if status is None:
        return 0
    # The original line carried the expiry known once its status write was done: entries
    # written with the activation (same time) or later carry it.
    activated = next((e.time for e in status.history if e.action == "Activated"), None)
    phase = Phase.PENDING
    logged = 0
    for index, entry in enumerate(status.history):
        phase = _PHASE_AFTER.get(entry.action, phase)
        expires_at = status.expires_at if activated is not None and entry.time >= activated \
            else None
        if index >= from_index and (since is None or entry.time >= since):
            line = _line(body, request.spec, index, entry.time, entry.action, entry.actor,
                         phase, entry.reason, expires_at)
            logger.info(json.dumps(line, sort_keys=True))
            logged += 1
    return logged


async def _post(kube: Kube, body: dict[str, Any], transition: Transition,
                when: datetime.datetime, request: str, index: int) -> None:
    message = transition.message
    if transition.actor not in message:
        message += f" (by {transition.actor})"
    kind = "Warning" if transition.warning else "Normal"
    try:
        await post_event(kube, body, kind, transition.action, message, when, index,
                         f"{request}'s {transition.action}")
    except NotLeading:  # (the lease was lost while it waited: the history holds the transition)
        events_logger.debug("the %s Event of %s was not posted: not leading", transition.action,
                            request)
    except Exception:
        events_logger.exception("could not post the %s Event of %s", transition.action,
                                request)


async def post_event(kube: Kube, body: dict[str, Any], kind: str, reason: str, message: str,
                     when: datetime.datetime, index: int, what: str) -> None:
    """Post an Event under kubepim's name for it (``index``), once.

    A 409 means posted before (a repeat after a restart) or pre-claimed by someone else: only an
    Event saying exactly this stands in for ours; otherwise ours goes under a name the API
    server makes up, so a squatter cannot suppress it.
    """
    try:
        await kube.post_event(body, kind, reason, message, when, index)
    except Conflict:
        namespace = body.get("metadata", {}).get("namespace") or "default"
        existing = await kube.get_event(kube.event_name(body, index), namespace) or {}
        if not _says(existing, body, kind, reason, message):
            events_logger.warning("the Event name of %s was taken by another Event; posting "
                                  "under a generated name", what)
            await kube.post_event(body, kind, reason, message, when, index,
                                  generate_name=True)


def _says(event: dict[str, Any], body: dict[str, Any], kind: str, reason: str,
          message: str) -> bool:
    """Whether an existing Event says what ours would, about the same object, from kubepim."""
    metadata = body.get("metadata", {})
    involved = event.get("involvedObject") or {}
    return (involved.get("uid") == metadata.get("uid")
            and involved.get("name") == metadata.get("name")
            and involved.get("kind") == body.get("kind")
            and involved.get("apiVersion") == body.get("apiVersion")
            and (event.get("source") or {}).get("component") == "kubepim"
            and event.get("reportingComponent") == "kubepim"
            and event.get("type") == kind and event.get("reason") == reason
            and event.get("message") == message[:1024])


def deleted(body: dict[str, Any], spec: AccessRequestSpec, when: datetime.datetime,
            reason: str) -> None:
    """The final audit line of a deleted request: it carries the whole history."""
    status = body.get("status") or {}
    line = {
        "id": f"{body.get('metadata', {}).get('uid')}/deleted",
        "time": when.isoformat(),
        "action": "Deleted",
        "request": body.get("metadata", {}).get("name"),
        "requester": spec.requester.username if spec.requester else None,
        "actor": "kubepim",
        "role": str(spec.role),
        "namespace": spec.namespace,
        "expiresAt": status.get("expiresAt"),
        "phase": status.get("phase"),
        "reason": reason,
        "history": status.get("history") or [],
    }
    logger.info(json.dumps(line, sort_keys=True))


def review_record(kube: Kube, body: dict[str, Any], entry: Any, index: int
                  ) -> Coroutine[Any, Any, None]:
    """Log the JSON line of one EligibilityReviewRun history entry; return its Event's post.

    ``entry``: an api.accessreview.RunHistoryEntry, at ``index`` in the run's history. The id
    (run uid / index) repeats when a takeover replays the line (docs/reviews.md).
    """
    review_line(body, entry, index)
    warning = entry.action in ("Removed", "Suspended")
    message = f"{entry.subject}: {entry.reason}" if entry.subject else entry.reason
    return _post_review(kube, involved(body), "Warning" if warning else "Normal", entry.action,
                        message, entry.time, index)


async def _post_review(kube: Kube, body: dict[str, Any], kind: str, reason: str, message: str,
                       when: datetime.datetime, index: int) -> None:
    run = body.get("metadata", {}).get("name")
    try:
        await post_event(kube, body, kind, reason, message, when, index, f"{run}'s {reason}")
    except NotLeading:
        events_logger.debug("the %s Event of %s was not posted: not leading", reason, run)
    except Exception:
        events_logger.exception("could not post the %s Event of %s", reason, run)


def review_line(body: dict[str, Any], entry: Any, index: int) -> None:
    """Log the JSON line of one EligibilityReviewRun history entry (the same again on replay)."""
    metadata = body.get("metadata", {})
    spec = body.get("spec") or {}
    line = {"id": f"{metadata.get('uid')}/{index}", "time": entry.time.isoformat(),
            "action": entry.action, "request": None, "run": metadata.get("name"),
            "review": spec.get("review"), "actor": entry.actor, "subject": entry.subject,
            "reason": entry.reason}
    logger.info(json.dumps(line, sort_keys=True))
