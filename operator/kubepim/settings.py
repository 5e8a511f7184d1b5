"""The operator's configuration: one pydantic-settings class, the only reader of os.environ."""

from __future__ import annotations

import socket
from typing import Annotated, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

# A subject as standing-privilege findings name it (domain/standing.py parse_subject).
_SUBJECT = r"^((User|Group)/.+|ServiceAccount/[^/]+/[^/]+)$"


class Settings(BaseSettings):
    """Operator settings, read from ``KUBEPIM_*`` environment variables."""

    model_config = SettingsConfigDict(env_prefix="KUBEPIM_", frozen=True)

    liveness_host: str = Field(
        default="127.0.0.1", description="Address the liveness endpoint listens on."
    )
    liveness_port: int = Field(
        default=8080, ge=0, le=65535,
        description="Port of the liveness endpoint (/healthz); 0 disables it.",
    )
    metrics_host: str = Field(
        default="127.0.0.1", description="Address the Prometheus /metrics endpoint listens on."
    )
    metrics_port: int = Field(
        default=8000, ge=0, le=65535, description="Port of /metrics; 0 disables it."
    )
    retention: str = Field(
        default="720h", min_length=2, pattern=r"^([0-9]+h)?([0-9]+m)?([0-9]+s)?$",
        description="How long finished AccessRequests are kept before they are deleted "
        "(with a final audit line), e.g. 720h for 30 days.",
    )
    resync_seconds: float = Field(
        default=300.0, gt=0,
        description="Interval of the safety-net resync: orphan bindings, timeouts, drift. "
        "It reads only requests not settled.",
    )
    retention_check_seconds: float = Field(
        default=3600.0, gt=0,
        description="Interval of the retention pass, which pages through settled requests "
        "(the only periodic read of finished ones).",
    )
    standing_scan_seconds: float = Field(
        default=600.0, ge=0,
        description="Interval of the full standing-privilege scan (every role and binding, "
        "paged; a watch keeps it current between scans, a role change brings it forward); "
        "0 turns standing-privilege discovery off in the operator (docs/standing.md).",
    )
    standing_accept: list[Annotated[str, Field(pattern=_SUBJECT)]] = Field(
        default_factory=list,
        description="Subjects whose standing access was reviewed and accepted, left out of "
        "discovery everywhere: a JSON list such as [\"ServiceAccount/flux-system/"
        "kustomize-controller\"] (User/NAME, Group/NAME or ServiceAccount/NAMESPACE/NAME).",
    )
    standing_include_system: bool = Field(
        default=False,
        description="Count the control plane's own identities in their bootstrap bindings as "
        "standing access too (left out by default: docs/standing.md lists them).",
    )
    namespace: str = Field(
        default="kubepim", description="Namespace of the operator (its leader-election Lease)."
    )
    identity: str = Field(
        default_factory=socket.gethostname,
        description="This replica's name in the Lease; the pod name in a cluster, so a "
        "restarted pod takes its own lease back at once.",
    )
    cluster_name: str = Field(
        default="kubernetes", min_length=1, max_length=63,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        description="This cluster's name in notifications (the CloudEvents source "
        "urn:kubepim:NAME), so receivers that hear from several clusters can tell them apart.",
    )
    lease_name: str = Field(default="kubepim-leader", description="Name of the Lease.")
    lease_seconds: float = Field(
        default=10.0, ge=2, le=120,
        description="A leader not renewing for this long is replaced (renewals every 1/5).",
    )
    operator_username: str = Field(
        default="system:serviceaccount:kubepim:kubepim",
        description="The operator's own identity; the webhooks do not apply to its writes.",
    )
    webhook_port: int = Field(
        default=9443, ge=0, le=65535,
        description="Port of the admission webhook server; 0 disables admission.",
    )
    webhook_listen: str = Field(
        default="127.0.0.1", description="Address the webhook server listens on."
    )
    webhook_host: str = Field(
        default="127.0.0.1",
        description="Host the API server calls the webhooks at (certificate SAN and URL).",
    )
    webhook_cert_dir: str = Field(
        default="", description="Where the webhook's certificates are written; empty: a "
        "temporary directory, removed on exit.",
    )
    manage_webhook_configuration: bool = Field(
        default=True,
        description="Write the ValidatingWebhookConfiguration at start-up (off when a chart "
        "installs it).",
    )
    audit_sink_port: int = Field(
        default=0, ge=0, le=65535,
        description="Port of the audit sink, where the API server's audit webhook backend "
        "posts (TLS, client certificate required; docs/activity.md); 0 disables it.",
    )
    audit_sink_listen: str = Field(
        default="127.0.0.1", description="Address the audit sink listens on."
    )
    audit_sink_cert_file: str = Field(
        default="", description="The audit sink's serving certificate (PEM); the API server's "
        "audit webhook kubeconfig trusts its CA.",
    )
    audit_sink_key_file: str = Field(default="", description="Its private key (PEM).")
    audit_sink_client_ca_file: str = Field(
        default="", description="CA bundle the API server's client certificate must chain to; "
        "nothing else may post.",
    )
    audit_sink_client_names: list[str] = Field(
        default_factory=list,
        description="Common names the client certificate may carry (empty: any the CA "
        "signed; use a CA only for this).",
    )
    activity_flush_seconds: float = Field(
        default=2.0, gt=0, le=60,
        description="How often a used grant's status.activity is written at most.",
    )
    activity_takeover_grace_seconds: float = Field(
        default=90.0, ge=0,
        description="After a takeover, no grant ends Idle for this long: uses the previous "
        "leader counted but did not write come again only when the API server posts them "
        "again, after its retry backoff (about 80 s with the default 10 s initial backoff).",
    )
    audit_sink_max_pending: int = Field(
        default=20000, ge=100,
        description="Events parsed and not yet answered beyond which a post is refused with 503 "
        "(the API server retries it with backoff, then drops it: the API server never waits).",
    )
    max_open_requests: int = Field(
        default=20, ge=1,
        description="Open (Pending or Active) AccessRequests one requester may have at once.",
    )
    max_unreviewed_break_glass: int = Field(
        default=1, ge=1,
        description="Break-glass requests of one requester not yet acknowledged by an approver "
        "(pending, active or ended) before another is refused: no chaining without review.",
    )
    max_request_bytes: int = Field(
        default=32768, ge=4096,
        description="Largest AccessRequest admitted, as JSON (annotations included).",
    )
    identity_case: Literal["insensitive", "email", "sensitive"] = Field(
        default="insensitive",
        description="How usernames are compared for separation of duties: insensitive (Alice "
        "is alice), email (only names with an @ fold) or sensitive (as Kubernetes does).",
    )
    log_level: str = Field(
        default="INFO", pattern="^(DEBUG|INFO|WARNING|ERROR)$", description="Python log level."
    )
