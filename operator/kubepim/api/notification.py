"""NotificationRoute: who is told of which requests, through which channel.

Cluster-scoped and owned by GitOps like RoleEligibility: the operator writes only its status
(Ready: whether it can deliver, and why not). The channel's secrets (a Slack token, an SMTP
password, a webhook's signing key) live in a Secret in the operator's namespace, named here;
their values never appear in a spec, a status, an Event or a log line.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from . import duration
from .common import DNS_SUBDOMAIN, Condition, LabelSelector, Model, RoleRef, cel_rules

ChannelType = Literal["Webhook", "Email", "Slack", "SlackWebhook", "Teams"]

# What a route may ask to be told of: the history's actions (one per transition), and the
# notifier's own reminders.
NotificationEvent = Literal[
    "Requested", "Approved", "Denied", "Activated", "Expired", "Idle", "Revoked", "Withdrawn",
    "TimedOut", "Rejected", "BreakGlass", "Reviewed", "BindingRestored",
    "Reminder", "ExpiringSoon", "ReviewMissing",
]
EVENTS: tuple[str, ...] = NotificationEvent.__args__  # type: ignore[attr-defined]


class SecretRef(Model):
    """A Secret in the operator's namespace (the only namespace it may read Secrets in)."""

    name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN,
                      description="Name of the Secret in the operator's namespace.")


class Smtp(Model):
    """An SMTP server that takes mail for the recipients (STARTTLS unless on loopback)."""

    model_config = cel_rules([
        {"rule": "(has(self.to) && size(self.to) > 0) || "
                 "(has(self.toRequester) && self.toRequester)",
         "message": "smtp needs recipients: to (addresses), toRequester: true, or both"}])

    host: str = Field(min_length=1, max_length=253, description="SMTP server host name.")
    port: int = Field(default=587, ge=1, le=65535, description="SMTP port (submission: 587).")
    starttls: bool = Field(
        default=True, description="Upgrade with STARTTLS before authenticating (required "
        "unless the host is a loopback address).")
    sender: str = Field(min_length=3, max_length=254, alias="from",
                        description="The From address, e.g. kubepim@example.com.")
    to: list[str] = Field(default_factory=list, max_length=50,
                          description="Recipients, e.g. the approvers' list address.")
    to_requester: bool = Field(
        default=False, description="Also mail the requester: their username when it is an "
        "email address (after any prefix such as oidc:), else username@requesterDomain.")
    requester_domain: str | None = Field(
        default=None, max_length=253, pattern=r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$",
        description="The mail domain of usernames that are not addresses, e.g. example.com.")


_CHANNEL_RULES: list[dict[str, str]] = [
    {"rule": "self.type == 'Email' ? has(self.smtp) : true",
     "message": "an Email channel needs smtp (host, port, from, to)"},
    {"rule": "self.type in ['Webhook', 'Teams'] ? (has(self.url) || has(self.secretRef)) : true",
     "message": "a Webhook or Teams channel needs url (or a Secret holding it under the key "
                "url)"},
    {"rule": "self.type == 'Webhook' ? has(self.secretRef) : true",
     "message": "a Webhook channel needs secretRef: its Secret's key hmacKey signs every event"},
    {"rule": "self.type == 'Slack' ? (has(self.slackChannel) && has(self.secretRef)) : true",
     "message": "a Slack channel needs slackChannel and secretRef (the bot token under the key "
                "token)"},
    {"rule": "self.type == 'SlackWebhook' ? has(self.secretRef) : true",
     "message": "a SlackWebhook channel needs secretRef (the incoming-webhook URL under the key "
                "url)"},
]


class Channel(Model):
    """Where notifications go."""

    model_config = cel_rules(_CHANNEL_RULES)

    type: ChannelType = Field(
        description="Webhook: CloudEvents 1.0 (structured JSON) signed per Standard Webhooks "
        "(HMAC-SHA256, Secret key hmacKey). Email: SMTP (Secret keys username, password). "
        "Slack: the Web API with a bot token (Secret key token). SlackWebhook: an incoming "
        "webhook (Secret key url). Teams: a workflow webhook taking an Adaptive Card.")
    url: str | None = Field(
        default=None, max_length=2048, pattern=r"^https?://[^\s]+$",
        description="Endpoint (https; http only to a loopback address). For Slack, the Web "
        "API's base URL (default https://slack.com/api). A Secret's url key overrides it.")
    slack_channel: str | None = Field(default=None, max_length=80,
                                      description="Slack channel id or name (Slack only).")
    smtp: Smtp | None = Field(default=None, description="The SMTP server (Email only).")
    secret_ref: SecretRef | None = Field(
        default=None, description="The Secret holding this channel's credentials.")


class RouteMatch(Model):
    """Which requests a route is about; every field given must match (empty: everything)."""

    eligibilities: list[str] = Field(
        default_factory=list, description="RoleEligibility names the request is governed by.")
    eligibility_selector: LabelSelector | None = Field(
        default=None, description="Labels of the governing RoleEligibility.")
    roles: list[RoleRef] = Field(default_factory=list, description="Roles requested.")
    namespaces: list[str] = Field(
        default_factory=list, description="Namespaces of the requests (cluster-wide requests "
        "match only when this is empty).")
    break_glass_only: bool = Field(
        default=False, description="Only break-glass requests (a security team's route).")


class Retry(Model):
    """How long a failing receiver is retried (timeouts, 5xx and 429; Retry-After honoured)."""

    model_config = cel_rules([
        {"rule": "!has(self.firstDelay) || (duration(self.firstDelay) >= duration('1s') && "
                 "duration(self.firstDelay) <= duration('5m'))",
         "message": "retry.firstDelay must be between 1s and 5m"}])

    attempts: int = Field(default=6, ge=1, le=20, description="Attempts in all.")
    first_delay: str = Field(
        default="1s", min_length=2, max_length=32, pattern=duration.PATTERN,
        description="Delay after the first failure; doubled after each (capped at 5m).")


class Reminders(Model):
    """Re-notify of a request still Pending: ``after`` it was made, then at doubling intervals."""

    after: str = Field(default="1h", min_length=2, max_length=32, pattern=duration.PATTERN,
                       description="First reminder this long after the request (then 2x, 4x "
                       "that later), e.g. 30m.")
    count: int = Field(default=3, ge=1, le=10, description="Reminders at most.")


_SPEC_RULES: list[dict[str, str]] = [
    {"rule": "!has(self.reminders) || duration(self.reminders.after) >= duration('1m')",
     "message": "reminders.after must be at least 1m"},
    {"rule": "!has(self.expiryWarning) || duration(self.expiryWarning) >= duration('1m')",
     "message": "expiryWarning must be at least 1m"},
    {"rule": "!has(self.reviewMissingAfter) || "
             "duration(self.reviewMissingAfter) >= duration('1m')",
     "message": "reviewMissingAfter must be at least 1m"},
]


class NotificationRouteSpec(Model):
    """Desired state of a NotificationRoute."""

    model_config = cel_rules(_SPEC_RULES)

    channel: Channel = Field(description="Where notifications go.")
    match: RouteMatch = Field(default_factory=RouteMatch, description="Which requests.")
    events: list[NotificationEvent] = Field(
        default_factory=list, description="Which transitions to send (empty: all).")
    retry: Retry = Field(default_factory=Retry, description="Retries of a failed delivery.")
    reminders: Reminders | None = Field(
        default=None, description="Remind of requests still Pending (event Reminder), e.g. "
        "{after: 30m, count: 3}: after 30m, 1h30m and 3h30m.")
    expiry_warning: str | None = Field(
        default=None, min_length=2, max_length=32, pattern=duration.PATTERN,
        description="Warn this long before a grant expires (event ExpiringSoon), e.g. 10m.")
    review_missing_after: str | None = Field(
        default=None, min_length=2, max_length=32, pattern=duration.PATTERN,
        description="Tell when a break-glass grant is still not reviewed (acknowledged by an "
        "approver) this long after it was activated (event ReviewMissing), e.g. 24h: for a "
        "security team's route.")


class NotificationRouteStatus(Model):
    """Observed state of a NotificationRoute, written by the operator."""

    observed_generation: int = Field(default=0, description="Generation last checked.")
    conditions: list[Condition] = Field(
        default_factory=list, description="Ready tells whether the route can deliver.")


class NotificationRoute(Model):
    """A channel (Slack, Teams, email, a signed CloudEvents webhook) and what it is told."""

    kind_name: ClassVar[str] = "NotificationRoute"
    plural: ClassVar[str] = "notificationroutes"
    spec: NotificationRouteSpec = Field(description="The channel, the requests, the events.")
    status: NotificationRouteStatus | None = Field(default=None,
                                                   description="Set by the operator.")
