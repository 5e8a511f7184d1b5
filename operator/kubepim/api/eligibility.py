"""RoleEligibility: who may request which roles, where, for how long, approved by whom.

Cluster-scoped and owned by GitOps: the operator never writes its spec or metadata, only status.
"""

from __future__ import annotations

import datetime
from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from . import duration, ticket
from .common import (
    Condition,
    LabelSelector,
    Model,
    RoleRef,
    Subject,
    cel_rules,
    plain_text_rule,
)


class Approvers(Model):
    """Who may approve, and how many distinct approvals a request needs."""

    users: list[str] = Field(default_factory=list, description="Usernames that may approve.")
    groups: list[str] = Field(
        default_factory=list, description="Members of these groups may approve."
    )
    required: int = Field(
        default=1, ge=1, le=10,
        description="Distinct approvals needed; one person counts once.",
    )
    required_from_group: str | None = Field(
        default=None,
        description="If set, at least one of the approvals must come from a member of this "
        "group (e.g. two approvals, one from security).",
    )


class RequesterConditions(Model):
    """What the requester's identity (userInfo, from the API server) must carry."""

    groups: list[str] = Field(
        default_factory=list, description="Groups the requester must all be in, e.g. mfa."
    )
    extra: dict[str, list[str]] = Field(
        default_factory=dict,
        description="userInfo.extra keys the requester must carry, each with one of these "
        "values (e.g. an OIDC claim showing MFA: {amr: [mfa]}).",
    )


class BreakGlass(Model):
    """Activation without approval, for emergencies: justified, short, loud, reviewed after."""

    max_duration: str = Field(
        default="1h", min_length=2, max_length=32, pattern=duration.PATTERN,
        description="Longest break-glass grant, e.g. 30m (shorter than maxDuration).",
    )


Day = Literal["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
_WEEKDAYS: tuple[Day, ...] = ("Mon", "Tue", "Wed", "Thu", "Fri")


class TimeWindow(Model):
    """A weekly window in UTC, e.g. Mon-Fri 09:00-17:00."""

    days: list[Day] = Field(
        default_factory=lambda: list(_WEEKDAYS),
        description="Days of the week (UTC).",
    )
    start: str = Field(default="09:00", pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$",
                       description="Start time HH:MM (UTC), inclusive.")
    end: str = Field(default="17:00", pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$",
                     description="End time HH:MM (UTC), exclusive; before start for a window "
                     "across midnight (e.g. 22:00-06:00).")

    @model_validator(mode="after")
    def _not_empty(self) -> TimeWindow:
        if self.start == self.end:
            raise ValueError("window start and end must differ")
        return self


class AutoApprove(Model):
    """Low-risk requests that are approved without an approver."""

    roles: list[RoleRef] = Field(
        default_factory=list, description="Roles auto-approved; empty means every role here."
    )
    window: TimeWindow | None = Field(
        default=None, description="Only requests created inside this window are auto-approved."
    )


class JustificationPolicy(Model):
    """What a request must say about why."""

    model_config = cel_rules([plain_text_rule("ticketPattern",
                                              "spec.justification.ticketPattern")])

    required: bool = Field(default=True, description="A justification must be given.")
    ticket_pattern: str | None = Field(
        default=None, max_length=256,
        description="If set, spec.ticket is required and must match this regular expression "
        "(RE2 syntax, matched against the whole ticket in linear time; no backreferences or "
        "lookarounds).",
    )

    @field_validator("ticket_pattern")
    @classmethod
    def _re2(cls, pattern: str | None) -> str | None:
        if pattern is not None:
            ticket.compile_pattern(pattern)  # ValueError says why
        return pattern


_DEFAULT_DURATION = datetime.timedelta(hours=1)

_SPEC_RULES: list[dict[str, str]] = [
    {"rule": "duration(self.maxDuration) > duration('0s')",
     "message": "maxDuration must be positive, e.g. 8h"},
    {"rule": "!has(self.defaultDuration) || duration(self.defaultDuration) > duration('0s')",
     "message": "defaultDuration must be positive, e.g. 1h"},
    {"rule": "!has(self.pendingTimeout) || duration(self.pendingTimeout) > duration('0s')",
     "message": "pendingTimeout must be positive, e.g. 24h"},
    {"rule": "!has(self.defaultDuration) || !has(self.maxDuration) || "
             "duration(self.defaultDuration) <= duration(self.maxDuration)",
     "message": "defaultDuration must not exceed maxDuration"},
    {"rule": "!has(self.idleTimeout) || duration(self.idleTimeout) >= duration('10s')",
     "message": "idleTimeout must be at least 10s, e.g. 15m"},
    {"rule": "self.clusterWide || size(self.namespaces) > 0 || has(self.namespaceSelector)",
     "message": "name where the roles may be granted: namespaces, namespaceSelector "
                "or clusterWide"},
]


class RoleEligibilitySpec(Model):
    """Desired state of a RoleEligibility."""

    model_config = cel_rules(_SPEC_RULES)

    subjects: list[Subject] = Field(
        min_length=1, description="Users, groups and ServiceAccounts that are eligible."
    )
    roles: list[RoleRef] = Field(
        min_length=1, description="Roles and ClusterRoles the subjects may request."
    )
    namespaces: list[str] = Field(
        default_factory=list, description="Namespaces where the roles may be granted."
    )
    namespace_selector: LabelSelector | None = Field(
        default=None, description="Also namespaces whose labels match this selector."
    )
    cluster_wide: bool = Field(
        default=False,
        description="ClusterRoles may be granted cluster-wide (ClusterRoleBinding).",
    )
    default_duration: str | None = Field(
        default=None, min_length=2, max_length=32, pattern=duration.PATTERN,
        description="Duration of a request that names none; when omitted, 1h or maxDuration "
        "if that is shorter.",
    )
    max_duration: str = Field(
        min_length=2, max_length=32, default="8h", pattern=duration.PATTERN,
        description="Longest duration a request may ask for, e.g. 8h.",
    )
    approval: Approvers = Field(description="Who approves and how many approvals are needed.")
    justification: JustificationPolicy = Field(
        default_factory=JustificationPolicy, description="What a request must say about why."
    )
    requester_conditions: RequesterConditions | None = Field(
        default=None, description="What the requester's identity must carry to request."
    )
    break_glass: BreakGlass | None = Field(
        default=None,
        description="Allow activation without approval (spec.breakGlass on the request), "
        "with a mandatory justification, a Warning Event, and a review afterwards.",
    )
    auto_approve: AutoApprove | None = Field(
        default=None, description="Requests approved without an approver (low-risk roles)."
    )
    allow_privileged_roles: bool = Field(
        default=False,
        description="Allow roles on the deny-list: cluster-admin and roles granting escalate, "
        "bind, impersonate or '*'.",
    )
    pending_timeout: str = Field(
        min_length=2, max_length=32, default="24h", pattern=duration.PATTERN,
        description="How long a request may wait for approval before it times out.",
    )

    idle_timeout: str | None = Field(
        default=None, min_length=2, max_length=32, pattern=duration.PATTERN,
        description="End a grant unused for this long (at least 10s), counted from its "
        "activation, so a grant never used ends too. Use is what the API server's audit "
        "stream attributes to the grant's binding (docs/activity.md); without the audit "
        "sink configured no use is seen and every grant ends after this long.",
    )

    @model_validator(mode="after")
    def _durations_positive(self) -> RoleEligibilitySpec:
        # ValueError says what is allowed; the CRD's CEL rules refuse the same at admission.
        duration.parse(self.max_duration)
        duration.parse(self.pending_timeout)
        if self.idle_timeout is not None and \
                duration.parse(self.idle_timeout) < datetime.timedelta(seconds=10):
            raise ValueError("idleTimeout must be at least 10s, e.g. 15m")
        if self.break_glass is not None and \
                duration.parse(self.break_glass.max_duration) > duration.parse(self.max_duration):
            raise ValueError("breakGlass.maxDuration must not exceed maxDuration")
        if self.default_duration is not None and \
                duration.parse(self.default_duration) > duration.parse(self.max_duration):
            raise ValueError("defaultDuration must not exceed maxDuration")
        return self

    def effective_default(self) -> datetime.timedelta:
        """Duration of a request that names none."""
        if self.default_duration is not None:
            return duration.parse(self.default_duration)
        return min(_DEFAULT_DURATION, duration.parse(self.max_duration))


class Suspension(Model):
    """A subject an access review suspended from this eligibility (docs/reviews.md)."""

    subject: Subject = Field(description="The subject as the eligibility listed it.")
    run: str = Field(description="The EligibilityReviewRun that suspended it.")
    at: datetime.datetime = Field(description="When the suspension applied.")
    outcome: Literal["Removed", "Suspended"] = Field(
        description="Removed by a reviewer, or Suspended because nobody decided.")


class RoleEligibilityStatus(Model):
    """Observed state of a RoleEligibility, written by the operator."""

    observed_generation: int = Field(default=0, description="Generation last reconciled.")
    conditions: list[Condition] = Field(
        default_factory=list, description="Ready tells whether the eligibility is usable."
    )
    suspended: list[Suspension] = Field(
        default_factory=list, max_length=1000,
        description="Subjects suspended by access reviews: they may not request under this "
        "eligibility (even when listed in spec.subjects again) until a later review keeps or "
        "reinstates them. Remove them from spec.subjects.")


class RoleEligibility(Model):
    """Subjects eligible to request roles, and the policy that governs their requests."""

    kind_name: ClassVar[str] = "RoleEligibility"
    plural: ClassVar[str] = "roleeligibilities"
    spec: RoleEligibilitySpec = Field(description="Who, which roles, where, how long, approvals.")
    status: RoleEligibilityStatus | None = Field(default=None, description="Set by the operator.")
