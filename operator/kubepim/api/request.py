"""AccessRequest: one person's time-bound request for one role, and its lifecycle.

Cluster-scoped, so one RBAC rule lets an engineer ask for any namespace and the bindings it leads
to (RoleBinding or ClusterRoleBinding) can name it as their owner. The spec is immutable; the
requester is stamped from the creating request's userInfo by admission; approvals are entries
of a map keyed by approver, so two approvers patching at once merge instead of overwriting.
"""

from __future__ import annotations

import datetime
import enum
from typing import ClassVar, Literal

from pydantic import Field

from . import duration
from .common import DNS_LABEL, DNS_SUBDOMAIN, Condition, Model, RoleRef, cel_rules, plain_text_rule


class Phase(enum.StrEnum):
    """Summary of where a request is in its lifecycle (printer column; Conditions carry detail)."""

    PENDING = "Pending"
    ACTIVE = "Active"
    EXPIRED = "Expired"
    DENIED = "Denied"
    REVOKED = "Revoked"
    WITHDRAWN = "Withdrawn"
    TIMED_OUT = "TimedOut"
    REJECTED = "Rejected"

    @property
    def final(self) -> bool:
        """Whether no further transition can happen."""
        return self not in (Phase.PENDING, Phase.ACTIVE)


class Requester(Model):
    """The identity that created the request, as the API server authenticated it."""

    username: str = Field(description="userInfo.username of the creating request.")
    uid: str = Field(default="", description="userInfo.uid of the creating request.")
    groups: list[str] = Field(
        default_factory=list, description="userInfo.groups of the creating request."
    )
    extra: dict[str, list[str]] = Field(
        default_factory=dict, description="userInfo.extra of the creating request."
    )


_SPEC_RULES: list[dict[str, str]] = [
    {"rule": "self == oldSelf",
     "message": "spec is immutable: withdraw this request and create a new one"},
    {"rule": "!has(self.duration) || duration(self.duration) > duration('0s')",
     "message": "duration must be positive, e.g. 30m or 1h30m"},
    {"rule": "self.role.kind == 'ClusterRole' || has(self.namespace)",
     "message": "a Role can only be granted in a namespace: set spec.namespace"},
    plain_text_rule("justification", "spec.justification"),
    plain_text_rule("ticket", "spec.ticket"),
    plain_text_rule("eligibility", "spec.eligibility"),
]


class AccessRequestSpec(Model):
    """What is asked for. Immutable after creation."""

    model_config = cel_rules(_SPEC_RULES)

    role: RoleRef = Field(description="The Role or ClusterRole requested.")
    namespace: str | None = Field(
        default=None, max_length=63, pattern=DNS_LABEL,
        description="Namespace to grant the role in; omit for cluster-wide (ClusterRole only).",
    )
    duration: str | None = Field(
        default=None, min_length=2, max_length=32, pattern=duration.PATTERN,
        description="How long access lasts once active, e.g. 30m or 1h30m; the eligibility's "
        "default when omitted. The clock starts at activation.",
    )
    justification: str = Field(
        default="", max_length=1024, description="Why the access is needed."
    )
    ticket: str | None = Field(
        default=None, max_length=128, description="Ticket or incident reference."
    )
    eligibility: str | None = Field(
        default=None, max_length=253, pattern=DNS_SUBDOMAIN,
        description="RoleEligibility to request under; the first matching one when omitted.",
    )
    break_glass: bool = Field(
        default=False,
        description="Activate without approval under the eligibility's breakGlass policy; "
        "a justification is required and the grant is marked for review.",
    )
    requester: Requester | None = Field(
        default=None,
        description="Set by admission from the creating request's userInfo; a different "
        "value given by the user is refused.",
    )


class Approval(Model):
    """One approver's decision; the map key is the approver's username."""

    model_config = cel_rules([plain_text_rule("comment", "status.approvals[].comment")])

    decision: Literal["Approve", "Deny", "Acknowledge"] = Field(
        description="Approve or Deny a pending request; Acknowledge reviews a break-glass grant."
    )
    comment: str = Field(default="", max_length=1024, description="Why.")
    groups: list[str] = Field(
        default_factory=list, description="The approver's groups, stamped by admission."
    )
    request_uid: str = Field(
        default="", description="metadata.uid of the request approved, stamped by admission: "
        "an entry copied onto another request does not count."
    )


class Action(Model):
    """A requester's or admin's action on a request; the map key is who took it."""

    model_config = cel_rules([plain_text_rule("reason", "status.actions[].reason")])

    action: Literal["Withdraw", "End", "Revoke"] = Field(
        description="Withdraw a pending request or End an active grant (the requester); "
        "Revoke it (an approver of its eligibility, or anyone allowed the RBAC verb revoke "
        "on accessrequests)."
    )
    reason: str = Field(default="", max_length=1024, description="Why; required for Revoke.")


class BindingRef(Model):
    """The RoleBinding or ClusterRoleBinding the operator made for this request."""

    kind: Literal["RoleBinding", "ClusterRoleBinding"] = Field(description="Binding kind.")
    name: str = Field(description="Binding name.")
    namespace: str | None = Field(default=None, description="Namespace of a RoleBinding.")


class HistoryEntry(Model):
    """One transition; the history is append-only."""

    time: datetime.datetime = Field(description="When it happened.")
    action: str = Field(description="CamelCase action, the same as the Event reason.")
    actor: str = Field(description="Who caused it: a username, or kubepim for the operator.")
    reason: str = Field(default="", description="Human-readable detail.")


class Delivery(Model):
    """How far one NotificationRoute has been told of this request (written by the operator)."""

    next: int = Field(default=0, ge=0, description="History entries before this index have "
                      "been delivered (or given up on) through the route.")
    failed: int = Field(default=0, ge=0, description="Deliveries given up on after the last "
                        "retry (a Warning Event says which).")
    reminders: int = Field(default=0, ge=0, description="Reminders sent of this Pending "
                           "request.")
    warned: bool = Field(default=False, description="The warning before expiry was sent.")
    review_missing: bool = Field(default=False, description="The missing break-glass review "
                                 "was told.")
    thread: str | None = Field(default=None, max_length=128, description="The channel's "
                               "reference of the first message (Slack: its ts), so later "
                               "ones edit it and reply in its thread, also after a restart.")


class Operation(Model):
    """How often the grant was used for one verb on one resource."""

    verb: str = Field(max_length=64, description="The API verb, e.g. get, list, create.")
    resource: str = Field(max_length=128, description="resource[/subresource] with its API "
                          "group (pods, pods/log, deployments.apps), or a non-resource path.")
    count: int = Field(ge=0, description="Requests attributed to the grant.")


class Activity(Model):
    """What the grant was used for, from the API server's audit stream (written by the operator).

    Attributed exactly: a request counts when the RBAC authorizer's reason names this grant's
    binding. Written at most every few seconds while the grant is used, and at its end.
    """

    requests: int = Field(default=0, ge=0, description="API requests the grant allowed.")
    first_use: datetime.datetime | None = Field(default=None, description="The first of them.")
    last_use: datetime.datetime | None = Field(default=None, description="The last of them.")
    operations: list[Operation] = Field(
        default_factory=list, max_length=32, description="The requests by verb and resource, "
        "most frequent first (at most 32; the rest are counted in otherOperations).")
    other_operations: int = Field(default=0, ge=0, description="Requests of verbs and "
                                  "resources beyond the 32 listed.")
    denied: int = Field(default=0, ge=0, description="Requests by the grant's subject during "
                        "the grant that the API server refused.")
    other_bindings: int = Field(default=0, ge=0, description="Requests by the grant's subject "
                                "during the grant allowed by some other binding (standing "
                                "access overlapping the grant).")
    audit_ids: list[str] = Field(
        default_factory=list, max_length=2048, description="Audit ids counted by the write "
        "that recorded this (an API server posting them again after an operator restart is "
        "not counted twice).")


class AccessRequestStatus(Model):
    """Observed state, written by the operator (approvers add only their own approval)."""

    phase: Phase | None = Field(default=None, description="Lifecycle summary.")
    conditions: list[Condition] = Field(
        default_factory=list, description="Approved and Granted conditions."
    )
    observed_generation: int = Field(default=0, description="Generation last reconciled.")
    eligibility: str | None = Field(default=None, description="The governing RoleEligibility.")
    approvals: dict[str, Approval] = Field(
        default_factory=dict, max_length=64, description="Decisions keyed by approver username."
    )
    actions: dict[str, Action] = Field(
        default_factory=dict, max_length=64,
        description="Withdraw, End and Revoke actions keyed by username.",
    )
    review_required: bool = Field(
        default=False, description="A break-glass grant not yet acknowledged by an approver."
    )
    reviewed_by: str | None = Field(
        default=None, description="The approver who acknowledged a break-glass grant."
    )
    activated_at: datetime.datetime | None = Field(
        default=None, description="When access was granted."
    )
    expires_at: datetime.datetime | None = Field(
        default=None, description="Absolute time access ends; set at activation."
    )
    binding: BindingRef | None = Field(default=None, description="The binding made.")
    namespace_uid: str | None = Field(
        default=None, description="metadata.uid of the target namespace at activation: a "
        "namespace deleted and made again under the same name does not inherit the grant.")
    history: list[HistoryEntry] = Field(
        default_factory=list, description="Append-only record of every transition."
    )
    message: str = Field(default="", description="Human-readable state, e.g. why rejected.")
    notifications: dict[str, Delivery] = Field(
        default_factory=dict, max_length=64,
        description="Delivery progress per NotificationRoute, written with the operator's own "
        "status writes: after a restart, what was not recorded as delivered is sent again "
        "(under the same id, so a receiver can tell).")
    activity: Activity | None = Field(
        default=None, description="What the grant was used for (the operator's audit sink, "
        "docs/activity.md).")
    settled: bool = Field(
        default=False, description="The operator has nothing left to do: the request is final, "
        "its binding gone, its audit lines logged and no break-glass review awaited. The "
        "operator watches only requests not settled (a field selector on this field).")


class AccessRequest(Model):
    """A request for time-bound access to one role in one namespace (or cluster-wide)."""

    kind_name: ClassVar[str] = "AccessRequest"
    plural: ClassVar[str] = "accessrequests"
    spec: AccessRequestSpec = Field(description="What is asked for; immutable.")
    status: AccessRequestStatus | None = Field(default=None, description="Set by the operator.")
