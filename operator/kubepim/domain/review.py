"""Eligibility review: whether some RoleEligibility covers a request, and on what terms.

Pure: takes the request, the requester, the eligibilities and the target namespace's labels, and
returns either the terms of the grant (governing eligibility, duration) or a refusal whose
message says what the requester may ask for instead.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Mapping
from dataclasses import dataclass

from kubepim.api import duration
from kubepim.api.common import LabelSelector, RoleRef
from kubepim.api.eligibility import RoleEligibilitySpec
from kubepim.api.request import AccessRequestSpec, Requester


@dataclass(frozen=True)
class Accepted:
    """The request is covered: granted under ``eligibility`` for ``duration`` once approved."""

    eligibility: str
    duration: datetime.timedelta


@dataclass(frozen=True)
class Refused:
    """The request is not covered; ``message`` says what is allowed instead."""

    message: str


Review = Accepted | Refused


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


def _where(namespace: str | None) -> str:
    return f"in namespace {namespace}" if namespace else "cluster-wide"


def _roles(roles: list[RoleRef]) -> str:
    return "[" + ", ".join(sorted({str(r) for r in roles})) + "]" if roles else "none"


def review(
    spec: AccessRequestSpec,
    eligibilities: Mapping[str, RoleEligibilitySpec],
    namespace_labels: Mapping[str, str] | None,
) -> Review:
    """Decide whether the request is covered; eligibilities are tried in name order.

    ``namespace_labels`` are the target namespace's labels, or None if it does not exist.
    """
    requester = spec.requester
    if requester is None:
        return Refused("the request has no requester: the kubepim admission policy is not "
                       "installed (deploy/admission)")
    if spec.namespace is not None and namespace_labels is None:
        return Refused(f"namespace {spec.namespace} does not exist")
    names = [spec.eligibility] if spec.eligibility else sorted(eligibilities)
    if spec.eligibility and spec.eligibility not in eligibilities:
        return Refused(f"RoleEligibility {spec.eligibility} does not exist")

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
        terms = _terms(spec, name, eligibility)
        if isinstance(terms, Accepted):
            return terms
        refusals.append(terms.message)
    return Refused("; ".join(refusals))


def _terms(spec: AccessRequestSpec, name: str, eligibility: RoleEligibilitySpec) -> Review:
    maximum = duration.parse(eligibility.max_duration)
    try:
        wanted = duration.parse(spec.duration) if spec.duration else \
            eligibility.effective_default()
    except ValueError as error:
        return Refused(str(error))
    if wanted > maximum:
        return Refused(f"duration {spec.duration} exceeds the maximum "
                       f"{eligibility.max_duration} of RoleEligibility {name}")
    policy = eligibility.justification
    if policy.required and not spec.justification.strip():
        return Refused(f"RoleEligibility {name} requires a justification: set spec.justification")
    if policy.ticket_pattern:
        ticket = spec.ticket or ""
        try:
            ok = re.fullmatch(policy.ticket_pattern, ticket) is not None
        except re.error:
            return Refused(f"RoleEligibility {name} has an invalid ticketPattern")
        if not ok:
            return Refused(f"RoleEligibility {name} requires spec.ticket matching "
                           f"{policy.ticket_pattern}")
    return Accepted(eligibility=name, duration=wanted)
