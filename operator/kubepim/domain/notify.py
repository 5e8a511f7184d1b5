"""What a NotificationRoute is told, and in which words: pure decisions, no I/O.

A notification is a history entry seen through a route: the entry's id (request uid / history
index, the audit id) is the notification's id in every channel, so a receiver that keeps ids
can tell a repeat (after a restart, at most once more) from a new one. Which entries a route
owes a request is a function of the request's status (history, ``status.notifications``) and
the route: nothing else is needed after a restart.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import ipaddress
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kubepim.api import duration
from kubepim.api.common import API_VERSION, LabelSelector
from kubepim.api.eligibility import RoleEligibilitySpec
from kubepim.api.notification import EVENTS, NotificationRouteSpec
from kubepim.api.request import AccessRequest, HistoryEntry, Phase

from .review import selector_matches

# Free text a requester wrote (justification, ticket) is cut to this many characters in a
# message: a notification is a pointer to the request, not a copy of it.
TEXT_LIMIT = 300
# Retry delays are capped here, whatever the route or a Retry-After asks.
MAX_DELAY = datetime.timedelta(minutes=5)
CLOUDEVENT_TYPE_PREFIX = "dev.kubepim.accessrequest."


@dataclass(frozen=True)
class Due:
    """One notification a route owes: the history entry at ``index``."""

    route: str
    index: int  # the history entry's index; -1 for a reminder or an expiry warning
    entry: HistoryEntry
    sequence: int = 0  # which reminder (1, 2, ...)


def matches(route: NotificationRouteSpec, request: AccessRequest, eligibility: str | None,
            eligibility_labels: Mapping[str, str] | None) -> bool:
    """Whether ``route`` is about ``request`` (every criterion given must hold)."""
    match, spec = route.match, request.spec
    if match.break_glass_only and not spec.break_glass:
        return False
    if match.eligibilities and eligibility not in match.eligibilities:
        return False
    if match.eligibility_selector is not None and not _selected(
            match.eligibility_selector, eligibility_labels):
        return False
    if match.roles and spec.role not in match.roles:
        return False
    return not match.namespaces or spec.namespace in match.namespaces


def _selected(selector: LabelSelector, labels: Mapping[str, str] | None) -> bool:
    return labels is not None and selector_matches(selector, labels)


def routes_for(eligibility: str, labels: Mapping[str, str] | None,
               routes: Mapping[str, NotificationRouteSpec]) -> list[str]:
    """The routes that tell someone of requests under ``eligibility``, sorted.

    All or some of them: a route narrowed to roles, namespaces or break-glass still counts.
    """
    return sorted(name for name, route in routes.items()
                  if (not route.match.eligibilities or eligibility in route.match.eligibilities)
                  and (route.match.eligibility_selector is None
                       or _selected(route.match.eligibility_selector, labels)))


def wants(route: NotificationRouteSpec, action: str) -> bool:
    """Whether ``route`` asks for transitions of this action (no list: every one it knows)."""
    return action in (route.events or EVENTS)


def due(route_name: str, route: NotificationRouteSpec, route_created: datetime.datetime,
        request: AccessRequest, sent_next: int) -> list[Due]:
    """The entries ``route`` still owes ``request``, oldest first.

    ``sent_next``: the first index not yet delivered, as far as anyone knows (the larger of the
    status's record and this replica's memory). Entries from before the route existed are not
    owed: a new route does not replay old history.
    """
    status = request.status
    if status is None:
        return []
    return [Due(route_name, index, entry) for index, entry in enumerate(status.history)
            if index >= sent_next and entry.time >= route_created and wants(route, entry.action)]


def reminder_at(route: NotificationRouteSpec, requested: datetime.datetime,
                sent: int) -> datetime.datetime | None:
    """When reminder ``sent + 1`` is due (after, then 2x and 4x that later...), or None."""
    if route.reminders is None or sent >= route.reminders.count or not wants(route, "Reminder"):
        return None
    due: datetime.datetime = requested + duration.parse(route.reminders.after) * (
        2 ** (sent + 1) - 1)
    return due


def warning_at(route: NotificationRouteSpec,
               expires: datetime.datetime | None) -> datetime.datetime | None:
    """When the warning before ``expires`` is due, or None."""
    if route.expiry_warning is None or expires is None or not wants(route, "ExpiringSoon"):
        return None
    return expires - duration.parse(route.expiry_warning)


def review_missing_at(route: NotificationRouteSpec,
                      request: AccessRequest) -> datetime.datetime | None:
    """When a break-glass grant still not reviewed is to be told of, or None.

    ``reviewMissingAfter`` after its activation, whatever its phase since (a grant that
    expired unreviewed is still owed its review).
    """
    status = request.status
    if route.review_missing_after is None or status is None or not status.review_required \
            or status.reviewed_by is not None or not wants(route, "ReviewMissing"):
        return None
    activated = status.activated_at or (status.history[0].time if status.history else None)
    if activated is None:
        return None
    due: datetime.datetime = activated + duration.parse(route.review_missing_after)
    return due


def reminder(kind: str, when: datetime.datetime, request: AccessRequest,
             sequence: int) -> HistoryEntry:
    """The entry a reminder or expiry warning is told as (never written to the history)."""
    status = request.status
    if kind == "Reminder":
        given = sum(1 for a in (status.approvals.values() if status else ())
                    if a.decision == "Approve")
        return HistoryEntry(time=when, action="Reminder", actor="kubepim",
                            reason=f"still pending (reminder {sequence}; {given} approval(s) "
                            "so far)")
    if kind == "ReviewMissing":
        activated = status.activated_at.isoformat() if status and status.activated_at else "?"
        return HistoryEntry(time=when, action="ReviewMissing", actor="kubepim",
                            reason=f"the break-glass grant activated at {activated} is not "
                            "reviewed yet")
    expires = status.expires_at.isoformat() if status and status.expires_at else "?"
    return HistoryEntry(time=when, action="ExpiringSoon", actor="kubepim",
                        reason=f"the grant expires at {expires}")


def next_index(request: AccessRequest, route_name: str) -> int:
    """The status's record of how far ``route_name`` has been told."""
    status = request.status
    delivery = status.notifications.get(route_name) if status else None
    return delivery.next if delivery else 0


def retry_delay(route_first: datetime.timedelta, attempt: int,
                retry_after: float | None = None) -> datetime.timedelta:
    """The wait before attempt ``attempt + 1`` (``attempt`` counts from 1).

    Exponential from the route's first delay, or what the receiver's Retry-After asked if
    longer; never over :data:`MAX_DELAY`.
    """
    delay: datetime.timedelta = route_first * (2 ** min(attempt - 1, 30))
    if retry_after is not None and retry_after > delay.total_seconds():
        delay = datetime.timedelta(seconds=min(retry_after, MAX_DELAY.total_seconds()))
    return min(delay, MAX_DELAY)


def endpoint_problem(url: str) -> str | None:
    """Why ``url`` may not receive notifications, or None: https, or http to loopback only."""
    try:
        parsed = urllib.parse.urlsplit(url)
        host = parsed.hostname or ""
        _ = parsed.port  # a malformed port raises
    except ValueError as error:
        return f"url {_redacted(url)} is malformed: {error}"
    if parsed.scheme == "https" and host:
        return None
    if parsed.scheme == "http" and _loopback(host):
        return None
    return (f"url {_redacted(url)} is not allowed: use https:// (http:// only to a loopback "
            "address such as 127.0.0.1, for a receiver on the same host)")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _redacted(url: str) -> str:
    """A URL fit for a status message: scheme and host only (a webhook URL may be a secret)."""
    try:
        parsed = urllib.parse.urlsplit(url)
        host = parsed.hostname or ""
    except ValueError:
        return "(not a URL)"
    return f"{parsed.scheme}://{host}/…" if parsed.scheme else "(not a URL)"


_ADDRESS = re.compile(r"[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+")
_LOCAL = re.compile(r"[A-Za-z0-9._%+-]{1,64}")


def requester_address(username: str | None, domain: str | None) -> str | None:
    """The requester's mail address from their (API-server-authenticated) username, or None.

    The username itself if it is an address, after any prefix such as ``oidc:``; else
    ``username@domain`` when a domain is given and the username is a plain local part. Never
    for system identities (service accounts, nodes).
    """
    if not username or username.startswith("system:"):
        return None
    bare = username.rsplit(":", 1)[-1]
    if _ADDRESS.fullmatch(bare):
        return bare
    if domain and _LOCAL.fullmatch(bare):
        return f"{bare}@{domain}"
    return None


def clip(text: str, limit: int = TEXT_LIMIT) -> str:
    """Text cut to ``limit`` characters (an ellipsis says it was)."""
    return text if len(text) <= limit else text[:limit - 1] + "…"


def facts(body: Mapping[str, Any], request: AccessRequest, eligibility: RoleEligibilitySpec
          | None, index: int, entry: HistoryEntry, sequence: int = 0) -> dict[str, Any]:
    """What every channel says of one transition: the CloudEvent's data, the message's fields.

    Free text is clipped (not escaped: each channel escapes for its own markup). A reminder or
    expiry warning (``index`` -1) has an id of its own: ``uid/reminder-N``, ``uid/expiring``,
    ``uid/review-missing``.
    """
    spec, status = request.spec, request.status
    name = str(body["metadata"]["name"])
    approvals = [who for who, a in (status.approvals.items() if status else ())
                 if a.decision == "Approve"]
    required = eligibility.approval.required if eligibility else None
    uid = str(body["metadata"].get("uid") or "")
    ident = f"{uid}/{index}" if index >= 0 else (
        f"{uid}/reminder-{sequence}" if entry.action == "Reminder" else
        f"{uid}/review-missing" if entry.action == "ReviewMissing" else f"{uid}/expiring")
    return {
        "id": ident,
        "request": name,
        "uid": uid,
        "action": entry.action,
        "actor": entry.actor,
        "reason": clip(entry.reason),
        "time": entry.time.isoformat(),
        "phase": _phase_after(request, index) if index >= 0 else (
            status.phase.value if status and status.phase else "Pending"),
        "requester": spec.requester.username if spec.requester else None,
        "role": str(spec.role),
        "namespace": spec.namespace,
        "duration": spec.duration,
        "justification": clip(spec.justification),
        "ticket": clip(spec.ticket) if spec.ticket else None,
        "breakGlass": spec.break_glass,
        "eligibility": status.eligibility if status else None,
        "approvals": {"given": sorted(approvals), "required": required},
        "expiresAt": status.expires_at.isoformat() if status and status.expires_at else None,
        "approve": f"kubectl pim approve {name}",
        "deny": f"kubectl pim deny {name} --reason '...'",
        "acknowledge": f"kubectl pim ack {name}",
    }


# The phase each action leaves a request in (Reviewed and Approved-but-short leave it as it was).
_PHASE_AFTER = {"Requested": Phase.PENDING, "Approved": Phase.PENDING,
                "BreakGlass": Phase.PENDING, "Activated": Phase.ACTIVE,
                "BindingRestored": Phase.ACTIVE, "Expired": Phase.EXPIRED, "Idle": Phase.EXPIRED,
                "Denied": Phase.DENIED, "Revoked": Phase.REVOKED, "Withdrawn": Phase.WITHDRAWN,
                "TimedOut": Phase.TIMED_OUT, "Rejected": Phase.REJECTED}


def _phase_after(request: AccessRequest, index: int) -> str:
    phase = Phase.PENDING
    history = request.status.history if request.status else []
    for entry in history[:index + 1]:
        phase = _PHASE_AFTER.get(entry.action, phase)
    return phase.value


def cloudevent(source: str, data: Mapping[str, Any]) -> dict[str, Any]:
    """A CloudEvents 1.0 event, structured mode: ``id`` is the audit id (uid/index)."""
    return {
        "specversion": "1.0",
        "id": str(data["id"]),
        "source": source,
        "type": CLOUDEVENT_TYPE_PREFIX + str(data["action"]).lower(),
        "subject": str(data["request"]),
        "time": str(data["time"]),
        "datacontenttype": "application/json",
        "dataschema": f"https://kubepim.dev/schemas/{API_VERSION}/notification",
        "data": dict(data),
    }


def signing_key(secret: str) -> bytes:
    """The HMAC key of a Secret's hmacKey.

    Standard Webhooks' ``whsec_`` + base64 form is decoded (as its libraries do); any other
    value is used as its UTF-8 bytes.
    """
    if secret.startswith("whsec_"):
        return base64.b64decode(secret.removeprefix("whsec_"))
    return secret.encode()


def signature(key: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    """The Standard Webhooks signature header value.

    ``v1,`` + base64 of HMAC-SHA256 over ``id.timestamp.body`` (the body exactly as sent).
    """
    signed = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def verify(key: bytes, message_id: str, timestamp: int, body: bytes, header: str) -> bool:
    """Whether ``header`` holds a valid signature (any of its space-separated ones)."""
    expected = signature(key, message_id, timestamp, body)
    return any(hmac.compare_digest(expected, candidate) for candidate in header.split())


def summary(data: Mapping[str, Any]) -> str:
    """One line for a human: who, what, where, and what happens next."""
    where = f"in {data['namespace']}" if data.get("namespace") else "cluster-wide"
    head = f"{data['requester']} → {data['role']} {where}"
    action = data["action"]
    if action == "Requested":
        given = len(data["approvals"]["given"])
        required = data["approvals"]["required"]
        wanted = f" ({given} of {required} approvals)" if required else ""
        return (f"Access requested: {head} for {data.get('duration') or 'the default time'}"
                f"{wanted}. Approve: {data['approve']}")
    if action == "BreakGlass":
        return f"BREAK-GLASS: {head}, activated without approval; review it afterwards"
    if action == "Reminder":
        return f"Still waiting for approval: {head} ({data['reason']}). Approve: {data['approve']}"
    if action == "ExpiringSoon":
        return f"Expiring soon: {head} ({data['reason']})"
    if action == "ReviewMissing":
        return (f"BREAK-GLASS NOT REVIEWED: {head} ({data['reason']}). An approver "
                f"acknowledges it: {data['acknowledge']}")
    return f"{action}: {head} ({data['reason']})"
