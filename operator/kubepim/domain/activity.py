"""What a grant was used for: audit events attributed to grants, and the bounded summary.

The API server's audit events carry the RBAC authorizer's reason for every request it allowed,
naming the binding that allowed it (``RBAC: allowed by RoleBinding "kubepim-r/team-a" of Role
"pod-reader" to User "alice"``): a request is counted to the grant whose binding that is,
exactly. Requests by a grant's subject during the grant that some other binding allowed, or
that were refused, are counted apart (standing access overlapping the grant; denied attempts).
Nothing here reads a clock or the network (docs/activity.md).
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from kubepim.api.request import Activity, Operation

# rbac.go: "RBAC: allowed by %s"; the RoleBinding's %q is name + "/" + namespace.
_REASON = re.compile(r'^RBAC: allowed by (RoleBinding|ClusterRoleBinding) "([^"]+)" of ')
# Stages that end a request's processing: the first of them counts (a watch or a log stream
# reports ResponseStarted first and ResponseComplete when it ends: one request, one count).
_COUNTED_STAGES = frozenset({"ResponseStarted", "ResponseComplete", "Panic"})
# The API server's long-running requests (its ResponseStarted always comes first): their
# ResponseComplete, maybe an hour later and after a failover, is not a second request.
_LONG_RUNNING = frozenset({"log", "exec", "attach", "portforward", "proxy"})
SKEW = datetime.timedelta(seconds=5)  # clocks of the API server and the operator
OPERATIONS = 32  # listed in status.activity.operations; the rest only counted
AUDIT_IDS = 2048  # at most this many ids per write (a flush writes again when more are waiting)

BindingKey = tuple[str, str, str]  # (kind, namespace or "", name)
Attribution = Literal["grant", "other-binding", "denied"]


@dataclass(frozen=True)
class Seen:
    """One audit event, reduced to what activity needs."""

    audit_id: str
    username: str  # who the request acted as: the impersonated user if any
    verb: str
    resource: str  # "pods", "pods/log", "deployments.apps", or a non-resource path
    namespace: str
    name: str
    allowed: bool
    binding: BindingKey | None  # the binding the RBAC reason names
    time: datetime.datetime
    code: int | None
    impersonator: str = ""  # who authenticated, when the request acted as ``username``


@dataclass(frozen=True)
class Grant:
    """An Active grant as attribution needs it."""

    request: str
    uid: str
    username: str
    binding: BindingKey
    activated_at: datetime.datetime
    ends_at: datetime.datetime  # expiry (or when it ended)


def reduce(event: Mapping[str, Any]) -> Seen | None:
    """The parts of one audit.k8s.io/v1 Event that count; None for an event that does not.

    (A RequestReceived stage, an event without an id or time, or one that is not a dict.)
    """
    if not isinstance(event, Mapping) or event.get("stage") not in _COUNTED_STAGES:
        return None
    ref_ = event.get("objectRef") or {}
    if event.get("stage") == "ResponseComplete" and (
            event.get("verb") in ("watch", "proxy")
            or (isinstance(ref_, Mapping) and ref_.get("subresource") in _LONG_RUNNING)):
        return None  # (counted at its ResponseStarted)
    audit_id = event.get("auditID")
    when = _time(event.get("requestReceivedTimestamp") or event.get("stageTimestamp"))
    if not isinstance(audit_id, str) or not audit_id or when is None:
        return None
    authenticated = event.get("user") or {}
    user = event.get("impersonatedUser") or authenticated
    annotations = event.get("annotations") or {}
    decision = annotations.get("authorization.k8s.io/decision")
    reason = annotations.get("authorization.k8s.io/reason") or ""
    status = event.get("responseStatus") or {}
    code = status.get("code") if isinstance(status, Mapping) else None
    ref = event.get("objectRef") or {}
    allowed = decision == "allow" if decision is not None else code not in (401, 403)
    return Seen(
        audit_id=audit_id, username=str(user.get("username") or ""),
        verb=str(event.get("verb") or ""), resource=_resource(ref, event),
        namespace=str(ref.get("namespace") or ""), name=str(ref.get("name") or ""),
        allowed=allowed, binding=parse_reason(reason) if allowed else None, time=when,
        code=code if isinstance(code, int) else None,
        impersonator=str(authenticated.get("username") or "")
        if event.get("impersonatedUser") else "")


def parse_reason(reason: str) -> BindingKey | None:
    """The binding an RBAC ``allowed by`` reason names: (kind, namespace or "", name)."""
    match = _REASON.match(reason)
    if match is None:
        return None
    kind, named = match.group(1), match.group(2)
    if kind == "RoleBinding":
        name, _, namespace = named.rpartition("/")
        return (kind, namespace, name) if name and namespace else None
    return kind, "", named


def attribute(seen: Seen, by_binding: Mapping[BindingKey, Grant],
              by_user: Mapping[str, Iterable[Grant]]) -> list[tuple[Grant, Attribution]]:
    """The grants one request counts to, and how.

    To the grant whose binding allowed it (from its activation on: the binding exists only for
    the grant, and a request it allowed after the expiry, before the binding was gone, is the
    grant's too);
    else, to each grant of the same user live at the time: as allowed by another binding, or
    as denied.
    """
    if seen.binding is not None:
        grant = by_binding.get(seen.binding)
        # (not before the activation: a predecessor of the same name had the same binding name)
        if grant is not None and grant.username == seen.username \
                and seen.time >= grant.activated_at - SKEW:
            return [(grant, "grant")]
    how: Attribution = "other-binding" if seen.allowed else "denied"
    return [(grant, how) for grant in by_user.get(seen.username, ()) if _during(seen, grant)]


@dataclass
class Tally:
    """Requests counted to one grant and not yet written to its status, in arrival order."""

    events: list[tuple[Seen, Attribution]] = field(default_factory=list)

    def add(self, seen: Seen, how: Attribution) -> None:
        """Count one request (the caller has already dropped ids it counted before)."""
        self.events.append((seen, how))

    def ids(self) -> list[str]:
        """The audit ids counted, in order."""
        return [seen.audit_id for seen, _ in self.events]

    def last_use(self) -> datetime.datetime | None:
        """The latest request counted to the grant itself."""
        uses = [seen.time for seen, how in self.events if how == "grant"]
        return max(uses) if uses else None

    def split(self, limit: int) -> Tally:
        """The first ``limit`` events, taken out of this tally."""
        taken, self.events = self.events[:limit], self.events[limit:]
        return Tally(taken)

    def put_back(self, other: Tally) -> None:
        """``other``'s events (a write that failed) in front of what was counted since."""
        self.events[:0] = other.events

    def __bool__(self) -> bool:
        return bool(self.events)

    def __len__(self) -> int:
        return len(self.events)


def merged(recorded: Activity | None, tally: Tally) -> Activity:
    """The activity to write: what status recorded plus ``tally`` (its ids replace the ids).

    Events whose id the recorded activity already lists are not counted again (a write whose
    outcome was unknown, that landed after all).
    """
    before = recorded or Activity()
    already = set(before.audit_ids)
    fresh = [(seen, how) for seen, how in tally.events if seen.audit_id not in already]
    counts: dict[tuple[str, str], int] = {(o.verb, o.resource): o.count
                                          for o in before.operations}
    used = [seen for seen, how in fresh if how == "grant"]
    for seen in used:
        key = (seen.verb, seen.resource)
        counts[key] = counts.get(key, 0) + 1
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    listed, rest = ranked[:OPERATIONS], ranked[OPERATIONS:]
    firsts = [t for t in (before.first_use, *(s.time for s in used)) if t is not None]
    lasts = [t for t in (before.last_use, *(s.time for s in used)) if t is not None]
    return Activity(
        requests=before.requests + len(used),
        first_use=min(firsts) if firsts else None, last_use=max(lasts) if lasts else None,
        operations=[Operation(verb=verb, resource=resource, count=count)
                    for (verb, resource), count in listed],
        other_operations=before.other_operations + sum(count for _, count in rest),
        denied=before.denied + sum(1 for _, how in fresh if how == "denied"),
        other_bindings=before.other_bindings + sum(1 for _, how in fresh
                                                   if how == "other-binding"),
        audit_ids=tally.ids()[-AUDIT_IDS:])


def summary(activity: Activity | None) -> str:
    """One line for the final history entry and the export: ``used 3 times (get pods 2, …)``."""
    if activity is None or not (activity.requests or activity.denied or activity.other_bindings):
        return "not used"
    parts = [f"used {activity.requests} time{'s' if activity.requests != 1 else ''}"]
    if activity.operations:
        listed = ", ".join(f"{o.verb} {o.resource} {o.count}" for o in activity.operations[:5])
        more = len(activity.operations) - 5 + (1 if activity.other_operations else 0)
        parts[0] += f" ({listed}{', …' if more > 0 else ''})"
    if activity.denied:
        parts.append(f"{activity.denied} denied")
    if activity.other_bindings:
        parts.append(f"{activity.other_bindings} allowed by other bindings")
    return "; ".join(parts)


def idle_deadline(activated_at: datetime.datetime, last_use: datetime.datetime | None,
                  idle: datetime.timedelta) -> datetime.datetime:
    """When a grant unused since ``last_use`` (never used: since activation) becomes idle."""
    return max(activated_at, last_use or activated_at) + idle


def _during(seen: Seen, grant: Grant) -> bool:
    return grant.activated_at <= seen.time <= grant.ends_at


def _resource(ref: Mapping[str, Any], event: Mapping[str, Any]) -> str:
    resource = str(ref.get("resource") or "")
    if not resource:  # a non-resource request (/healthz, /apis): its path
        return str(event.get("requestURI") or "").split("?", 1)[0][:128]
    group = str(ref.get("apiGroup") or "")
    if group:
        resource = f"{resource}.{group}"
    subresource = ref.get("subresource")
    return (f"{resource}/{subresource}" if subresource else resource)[:128]


def _time(text: Any) -> datetime.datetime | None:
    if not isinstance(text, str):
        return None
    try:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
