"""Eligibility review: whether some RoleEligibility covers a request, and on what terms.

Pure: takes the request, the requester, the eligibilities and the target namespace's labels, and
returns either the terms of the grant (governing eligibility, duration) or a refusal whose
message says what the requester may ask for instead.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass

from kubepim.api import duration, ticket
from kubepim.api.common import LabelSelector, RoleRef
from kubepim.api.eligibility import RoleEligibilitySpec
from kubepim.api.request import AccessRequestSpec, Requester


@dataclass(frozen=True)
class Accepted:
    """The request is covered: granted under ``eligibility`` for ``duration`` once approved.

    ``break_glass``: activates without approval; ``auto_approved``: the eligibility approves it.
    """

    eligibility: str
    duration: datetime.timedelta
    break_glass: bool = False
    auto_approved: bool = False


@dataclass(frozen=True)
class Refused:
    """The request is not covered; ``message`` says what is allowed instead."""

    message: str


Review = Accepted | Refused

RoleKey = tuple[str, str, str]
"""(kind, namespace or "" for a ClusterRole, name): where a role's rules live."""


def role_key(role: RoleRef, namespace: str | None) -> RoleKey:
    """Key of the rules a grant of ``role`` in ``namespace`` would bind."""
    return (role.kind, (namespace or "") if role.kind == "Role" else "", role.name)


def selector_matches(selector: LabelSelector, labels: Mapping[str, str]) -> bool:
    """Kubernetes label-selector semantics; an empty selector matches nothing here."""
    if not selector.match_labels and not selector.match_expressions:
        return False
    if any(labels.get(key) != value for key, value in selector.match_labels.items()):
        return False
    for requirement in selector.match_expressions:
        present = requirement.key in labels
        value = labels.get(requirement.key)
        if requirement.operator == "In" and value not in requirement.values:
            return False
        if requirement.operator == "NotIn" and present and value in requirement.values:
            return False
        if requirement.operator == "Exists" and not present:
            return False
        if requirement.operator == "DoesNotExist" and present:
            return False
    return True


def covers_subject(spec: RoleEligibilitySpec, requester: Requester) -> bool:
    """Whether the requester is one of the eligibility's subjects (by name or group)."""
    for subject in spec.subjects:
        if subject.kind == "Group" and subject.name in requester.groups:
            return True
        if subject.username() == requester.username:
            return True
    return False


def covers_place(
    spec: RoleEligibilitySpec, namespace: str | None, labels: Mapping[str, str] | None
) -> bool:
    """Whether the eligibility allows granting in ``namespace`` (None: cluster-wide)."""
    if namespace is None:
        return spec.cluster_wide
    if labels is None:  # the namespace does not exist
        return False
    if namespace in spec.namespaces:
        return True
    return spec.namespace_selector is not None and selector_matches(spec.namespace_selector, labels)


def unmet_conditions(spec: RoleEligibilitySpec, requester: Requester) -> str | None:
    """What the requester's identity lacks under the eligibility's conditions, or None."""
    conditions = spec.requester_conditions
    if conditions is None:
        return None
    missing = [f"group {g}" for g in conditions.groups if g not in requester.groups]
    for key, values in sorted(conditions.extra.items()):
        if not set(values) & set(requester.extra.get(key, [])):
            missing.append(f"{key} in {sorted(values)}")
    return ", ".join(missing) or None


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


def auto_approves(spec: RoleEligibilitySpec, role: RoleRef, at: datetime.datetime) -> bool:
    """Whether the eligibility approves a request for ``role`` created at ``at`` by itself."""
    policy = spec.auto_approve
    if policy is None or (policy.roles and role not in policy.roles):
        return False
    if policy.window is None:
        return True
    moment = at.astimezone(datetime.UTC)
    clock = moment.strftime("%H:%M")
    window = policy.window
    if window.start < window.end:
        inside = window.start <= clock < window.end
    else:  # across midnight, e.g. 22:00-06:00: the days are those the window starts on
        inside = clock >= window.start or clock < window.end
        if clock < window.end:
            moment -= datetime.timedelta(days=1)
    return inside and _DAYS[moment.weekday()] in window.days


@dataclass(frozen=True)
class Option:
    """What one eligibility lets a requester ask for (``lacking``: not yet, and why)."""

    eligibility: str
    spec: RoleEligibilitySpec
    lacking: str | None

    def places(self, name: str) -> list[str]:
        """Where it grants, in words (``name``: the eligibility, for a selector)."""
        places = []
        if self.spec.namespaces:
            places.append("in namespaces [" + ", ".join(self.spec.namespaces) + "]")
        if self.spec.namespace_selector is not None:
            places.append("in namespaces matching the selector of " + name)
        if self.spec.cluster_wide:
            places.append("cluster-wide")
        return places


def options(requester: Requester, eligibilities: Mapping[str, RoleEligibilitySpec]
            ) -> list[Option]:
    """Every eligibility naming this requester, in the order admission tries them.

    The one answer to "what may I request": admission's refusal message and ``kubectl pim
    eligible`` are both built from it.
    """
    return [Option(name, eligibilities[name], unmet_conditions(eligibilities[name], requester))
            for name in sorted(eligibilities) if covers_subject(eligibilities[name], requester)]


def summary(requester: Requester, eligibilities: Mapping[str, RoleEligibilitySpec]) -> str:
    """What this requester may ask for, for messages: roles and where, per eligibility."""
    parts = []
    for option in options(requester, eligibilities):
        name, spec = option.eligibility, option.spec
        if option.lacking:
            parts.append(f"{_roles(spec.roles)} under {name} once the identity carries "
                         f"{option.lacking}")
            continue
        parts.append(f"{_roles(spec.roles)} {' or '.join(option.places(name))} for up to "
                     f"{spec.max_duration} ({name})")
    if not parts:
        return f"{requester.username} may request nothing: no RoleEligibility names them"
    return f"{requester.username} may request: " + "; ".join(parts)


def _where(namespace: str | None) -> str:
    return f"in namespace {namespace}" if namespace else "cluster-wide"


def _roles(roles: list[RoleRef]) -> str:
    return "[" + ", ".join(sorted({str(r) for r in roles})) + "]" if roles else "none"


def review(
    spec: AccessRequestSpec,
    eligibilities: Mapping[str, RoleEligibilitySpec],
    namespace_labels: Mapping[str, str] | None,
    requested_at: datetime.datetime | None = None,
    privileged: Mapping[RoleKey, str] | None = None,
    prefer: str | None = None,
) -> Review:
    """Decide whether the request is covered; eligibilities are tried in name order.

    ``namespace_labels`` are the target namespace's labels, or None if it does not exist;
    ``requested_at`` (the request's creation) decides auto-approval windows; ``privileged``
    says why a role is on the deny-list as its rules are now (a role that gained privilege after
    its eligibility was written is granted only where the eligibility allows privileged roles).
    ``prefer``: the eligibility recorded as governing; it keeps governing while it covers the
    request (an eligibility created later that sorts first does not take the request over).
    """
    requester = spec.requester
    if requester is None:
        return Refused("the request has no requester: the kubepim admission policy is not "
                       "installed (charts/kubepim/files/admission)")
    if spec.namespace is not None and namespace_labels is None:
        return Refused(f"namespace {spec.namespace} does not exist")
    names = [spec.eligibility] if spec.eligibility else sorted(eligibilities)
    if spec.eligibility and spec.eligibility not in eligibilities:
        return Refused(f"RoleEligibility {spec.eligibility} does not exist")
    if prefer in names:
        # The governing eligibility alone first: when it still accepts, the answer is its own
        # (it comes first below too), without scanning every eligibility's subjects — a
        # takeover decides thousands of Active grants among a thousand eligibilities.
        alone = _review_among([prefer], spec, requester, eligibilities, namespace_labels,
                              requested_at, privileged)
        if isinstance(alone, Accepted):
            return alone
        names = [prefer, *(n for n in names if n != prefer)]
    return _review_among(names, spec, requester, eligibilities, namespace_labels, requested_at,
                         privileged)


def _review_among(
    names: list[str], spec: AccessRequestSpec, requester: Requester,
    eligibilities: Mapping[str, RoleEligibilitySpec], namespace_labels: Mapping[str, str] | None,
    requested_at: datetime.datetime | None, privileged: Mapping[RoleKey, str] | None,
) -> Review:
    """:func:`review` among ``names``, tried in that order."""
    mine = {n: eligibilities[n] for n in names if covers_subject(eligibilities[n], requester)}
    if not mine:
        scope = f"RoleEligibility {spec.eligibility}" if spec.eligibility else "any RoleEligibility"
        return Refused(f"{requester.username} is not a subject of {scope}")
    here = {n: e for n, e in mine.items() if covers_place(e, spec.namespace, namespace_labels)}
    if not here:
        return Refused(f"{requester.username} is not eligible for any role "
                       f"{_where(spec.namespace)}")
    fitting = {n: e for n, e in here.items() if spec.role in e.roles}
    if not fitting:
        allowed = [role for e in here.values() for role in e.roles]
        return Refused(f"{requester.username} is not eligible for {spec.role} "
                       f"{_where(spec.namespace)}: eligible roles there are {_roles(allowed)}")

    refusals = []
    for name, eligibility in fitting.items():
        lacking = unmet_conditions(eligibility, requester)
        if lacking:
            refusals.append(f"RoleEligibility {name} requires the requester's identity to "
                            f"carry {lacking}")
            continue
        terms = _terms(spec, name, eligibility, requested_at, privileged or {})
        if isinstance(terms, Accepted):
            return terms
        refusals.append(terms.message)
    return Refused("; ".join(refusals))


def _terms(
    spec: AccessRequestSpec, name: str, eligibility: RoleEligibilitySpec,
    requested_at: datetime.datetime | None, privileged: Mapping[RoleKey, str],
) -> Review:
    deny = privileged.get(role_key(spec.role, spec.namespace))
    if deny and not eligibility.allow_privileged_roles:
        return Refused(f"{deny}, which is on the deny-list: RoleEligibility {name} does not "
                       "set allowPrivilegedRoles")
    maximum = duration.parse(eligibility.max_duration)
    if spec.break_glass:
        if eligibility.break_glass is None:
            return Refused(f"RoleEligibility {name} does not allow break-glass")
        maximum = duration.parse(eligibility.break_glass.max_duration)
        if not spec.justification.strip():
            return Refused("a break-glass request requires a justification")
    try:
        wanted = duration.parse(spec.duration) if spec.duration else \
            eligibility.effective_default()
    except ValueError as error:
        return Refused(str(error))
    if spec.break_glass and not spec.duration:
        wanted = min(wanted, maximum)  # the default never exceeds the break-glass cap
    if wanted > maximum:
        asked = spec.duration or duration.format_duration(wanted)
        if spec.break_glass and eligibility.break_glass is not None:
            return Refused(f"duration {asked} exceeds the break-glass maximum "
                           f"{eligibility.break_glass.max_duration} of RoleEligibility {name}")
        return Refused(f"duration {asked} exceeds the maximum "
                       f"{eligibility.max_duration} of RoleEligibility {name}")
    policy = eligibility.justification
    if policy.required and not spec.justification.strip():
        return Refused(f"RoleEligibility {name} requires a justification: set spec.justification")
    if policy.ticket_pattern:
        try:
            ok = ticket.matches(policy.ticket_pattern, spec.ticket or "")
        except ValueError:
            return Refused(f"RoleEligibility {name} has an invalid ticketPattern")
        if not ok:
            return Refused(f"RoleEligibility {name} requires spec.ticket matching "
                           f"{policy.ticket_pattern}")
    auto = requested_at is not None and auto_approves(eligibility, spec.role, requested_at)
    return Accepted(eligibility=name, duration=wanted, break_glass=spec.break_glass,
                    auto_approved=auto and not spec.break_glass)
