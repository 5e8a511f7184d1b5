"""Every Prometheus metric of the operator, in one place (documented in the README).

Labels are bounded: outcomes, webhook names and phases, never a user, role or request name.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

REGISTRY = CollectorRegistry(auto_describe=True)

# Seconds from about ten milliseconds to a day: decisions take minutes, activations milliseconds.
_LATENCY = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 14400,
            86400)

BUILD_INFO = Info("kubepim_build", "Version of the running operator.", registry=REGISTRY)

REQUESTS = Counter(
    "kubepim_requests", "AccessRequests that reached an outcome, by outcome (the phase "
    "entered: Pending, Active, Expired, Denied, Revoked, Withdrawn, TimedOut, Rejected).",
    ["outcome"], registry=REGISTRY)

TRANSITIONS = Counter(
    "kubepim_transitions", "Recorded transitions by action (the Event reason).",
    ["action"], registry=REGISTRY)

ACTIVE_GRANTS = Gauge(
    "kubepim_active_grants", "Grants currently Active.", registry=REGISTRY)

OVERDUE_GRANTS = Gauge(
    "kubepim_overdue_grants", "Active grants past their expiresAt whose binding is not yet "
    "removed (should be 0; alert when it is not).", registry=REGISTRY)

BREAK_GLASS = Counter(
    "kubepim_break_glass_activations", "Grants activated through break-glass.",
    registry=REGISTRY)

DECISION_SECONDS = Histogram(
    "kubepim_decision_seconds", "Time from a request's creation to its decision (approved, "
    "denied, withdrawn or timed out).", ["outcome"], buckets=_LATENCY, registry=REGISTRY)

ACTIVATION_SECONDS = Histogram(
    "kubepim_activation_seconds", "Time from the last approval landing to the binding created.",
    buckets=_LATENCY, registry=REGISTRY)

EARLY_REVOKES = Counter(
    "kubepim_expiry_early_revokes",
    "Expired grants' bindings handled when their timer fired, beside the queue, by result: "
    "removed; gone (already); decided (the request's reconcile got there first); unverified "
    "(not a version this replica wrote or verified: left to the reconcile); failed (likewise).",
    ["result"], registry=REGISTRY)

EXPIRY_LAG_SECONDS = Histogram(
    "kubepim_expiry_lag_seconds", "Time from a grant's expiresAt to its binding removed.",
    buckets=_LATENCY, registry=REGISTRY)

GRANT_SECONDS = Histogram(
    "kubepim_grant_duration_seconds", "Length of granted access (activation to expiry).",
    buckets=_LATENCY, registry=REGISTRY)

ADMISSION = Counter(
    "kubepim_admission_decisions", "Admission webhook decisions by webhook and result.",
    ["webhook", "result"], registry=REGISTRY)

ADMISSION_SECONDS = Histogram(
    "kubepim_admission_seconds", "Time the operator spends deciding one admission review.",
    ["webhook"], buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
    registry=REGISTRY)

WATCH_EVENTS = Counter(
    "kubepim_watch_events", "Watch events that reached the operator, by resource (the watches "
    "are selected server-side: finished requests and foreign bindings never arrive).",
    ["resource"], registry=REGISTRY)

RESYNCS = Counter(
    "kubepim_resyncs", "Periodic resyncs completed (each lists only requests not settled).",
    registry=REGISTRY)

RECONCILE_ERRORS = Counter(
    "kubepim_reconcile_errors", "Reconciles that failed with an error (they are retried).",
    registry=REGISTRY)


_QUEUE_LATENCY = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 60)

QUEUE_DEPTH = Gauge(
    "kubepim_workqueue_depth", "Keys waiting in the work queue (ready or delayed).",
    registry=REGISTRY)

QUEUE_ADDS = Counter(
    "kubepim_workqueue_adds", "Keys added to the work queue (watch events, timers, resyncs).",
    registry=REGISTRY)

QUEUE_RETRIES = Counter(
    "kubepim_workqueue_retries", "Keys added again after their reconcile failed (backoff).",
    registry=REGISTRY)

QUEUE_SECONDS = Histogram(
    "kubepim_workqueue_queue_duration_seconds", "Time a key waited before a worker took it.",
    buckets=_QUEUE_LATENCY, registry=REGISTRY)

TIMER_LATENESS_SECONDS = Histogram(
    "kubepim_workqueue_timer_lateness_seconds", "How late a timer (an expiry, a pending "
    "timeout) fired after its deadline: the event loop's own delay, before any API call.",
    buckets=_QUEUE_LATENCY, registry=REGISTRY)

REVOKE_STAGE_SECONDS = Histogram(
    "kubepim_expiry_revoke_stage_seconds", "An expiry's early revoke by stage: wait (for one of "
    "its slots and the request's lock), delete (the DELETE's round trip, as the operator saw it).",
    ["stage"], buckets=_QUEUE_LATENCY, registry=REGISTRY)

WORK_SECONDS = Histogram(
    "kubepim_workqueue_work_duration_seconds", "Time one reconcile took.",
    buckets=_QUEUE_LATENCY, registry=REGISTRY)


def track_queue(depth: Callable[[], int]) -> None:
    """Read the queue depth at scrape time."""
    QUEUE_DEPTH.set_function(lambda: float(depth()))


def seconds_between(start: datetime.datetime | None, end: datetime.datetime) -> float | None:
    """Non-negative seconds from ``start`` to ``end``, or None without a start."""
    if start is None:
        return None
    return max((end - start).total_seconds(), 0.0)


@contextmanager
def admission_timer(webhook: str) -> Iterator[None]:
    """Time and count one admission review; an exception counts as a denial."""
    start = time.perf_counter()
    result = "denied"
    try:
        yield
        result = "allowed"
    finally:
        ADMISSION_SECONDS.labels(webhook).observe(time.perf_counter() - start)
        ADMISSION.labels(webhook, result).inc()


def track(active_count: Callable[[], int], overdue_count: Callable[[], int]) -> None:
    """Read the two gauges from the reconciler's state at scrape time."""
    ACTIVE_GRANTS.set_function(lambda: float(active_count()))
    OVERDUE_GRANTS.set_function(lambda: float(overdue_count()))


NOTIFICATIONS = Counter(
    "kubepim_notifications",
    "Notification deliveries by channel type, event (the transition) and result: sent, "
    "retried (an attempt failed, another follows), failed (given up after the last retry).",
    ["channel_type", "event", "result"], registry=REGISTRY)
NOTIFICATION_SECONDS = Histogram(
    "kubepim_notification_seconds",
    "From a transition to its notification delivered, per channel type.",
    ["channel_type"], buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
    registry=REGISTRY)

STANDING_BINDINGS = Gauge(
    "kubepim_standing_privileged_bindings",
    "RoleBindings and ClusterRoleBindings kubepim did not make that grant privileged access, "
    "by their most severe finding (critical, high, medium; docs/standing.md). The leader's "
    "count, kept current by a watch between scans; a standby exports none.",
    ["severity"], registry=REGISTRY)
STANDING_CRITICAL_APPEARED = Counter(
    "kubepim_standing_critical_appeared",
    "Bindings that became critical standing access (new, or someone added to one) while the "
    "leader watched, after its first scan (what was there before is in the gauge).",
    registry=REGISTRY)
STANDING_SCANS = Counter(
    "kubepim_standing_scans",
    "Full standing-privilege scans by result (ok; failed: the scan or the watch after it, "
    "tried again with backoff).",
    ["result"], registry=REGISTRY)
STANDING_SCAN_SECONDS = Gauge(
    "kubepim_standing_scan_seconds",
    "How long the last full standing-privilege scan took (every role and binding, paged).",
    registry=REGISTRY)

REVIEW_RUNS_OPEN = Gauge(
    "kubepim_review_runs_open",
    "EligibilityReviewRuns open for decisions (the leader's count; a standby exports 0).",
    registry=REGISTRY)
REVIEW_RUNS_OVERDUE = Gauge(
    "kubepim_review_runs_overdue",
    "EligibilityReviewRuns still open a minute past their deadline: their outcome was not "
    "applied (the operator cannot write the run or an eligibility; docs/reviews.md).",
    registry=REGISTRY)
REVIEW_OUTCOMES = Counter(
    "kubepim_review_outcomes",
    "Subjects decided by completed access reviews, by outcome: Kept, Removed (a reviewer "
    "said so), Suspended (nobody decided and the review suspends the undecided).",
    ["outcome"], registry=REGISTRY)

# Per-grant activity from the API server's audit stream (docs/activity.md)

AUDIT_EVENTS = Counter(
    "kubepim_audit_events", "Audit events the sink received, by result: attributed (to a "
    "grant's binding), other_binding (the subject of a live grant, allowed by another binding), "
    "denied (the subject of a live grant, refused), duplicate (an audit id counted before), "
    "unattributed (anything else).", ["result"], registry=REGISTRY)

AUDIT_POSTS_REFUSED = Counter(
    "kubepim_audit_posts_refused", "Posts to the audit sink refused, by reason: "
    "untrusted_certificate (TLS handshake refused), no_certificate, wrong_identity, "
    "not_leader, catching_up, bad_request, overloaded, tls_handshake.", ["reason"],
    registry=REGISTRY)

AUDIT_PENDING = Gauge(
    "kubepim_audit_pending_events", "Attributed audit events counted but not yet written to "
    "their grants' status.", registry=REGISTRY)
