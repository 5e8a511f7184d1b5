"""The compliance report: who held which role where and when, who approved it and why.

Pure: built from AccessRequests (their status.history is the record), for a time range.
"""

from __future__ import annotations

import datetime
from dataclasses import asdict, dataclass
from typing import Any

from kubepim.api.accessreview import EligibilityReviewRun
from kubepim.api.request import AccessRequest, Activity

COLUMNS = ("request", "requester", "role", "namespace", "activated_at", "ended_at", "ended_by",
           "outcome", "approved_by", "justification", "ticket", "break_glass", "reviewed_by",
           "used", "last_used", "operations", "denied", "other_bindings")
_ENDINGS = ("Expired", "Idle", "Revoked")


@dataclass(frozen=True)
class GrantRow:
    """One grant: a request that became Active."""

    request: str
    requester: str
    role: str
    namespace: str
    activated_at: str
    ended_at: str
    ended_by: str
    outcome: str
    approved_by: str
    justification: str
    ticket: str
    break_glass: bool
    reviewed_by: str
    # What the grant was used for (status.activity, from the audit stream: docs/activity.md).
    used: int = 0
    last_used: str = ""
    operations: str = ""
    denied: int = 0
    other_bindings: int = 0

    def as_dict(self) -> dict[str, object]:
        """The row as a JSON-ready mapping."""
        return asdict(self)


_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(row: dict[str, object]) -> dict[str, object]:
    """The row for a CSV a spreadsheet will open, no cell readable as a formula.

    A text cell starting with = + - @, a tab or a carriage return gets a leading ' (OWASP's CSV
    injection guidance), so it shows as the text it is.
    """
    return {key: f"'{value}" if isinstance(value, str) and value.startswith(_FORMULA_STARTS)
            else value for key, value in row.items()}


def _iso(moment: datetime.datetime | None) -> str:
    return moment.astimezone(datetime.UTC).isoformat().replace("+00:00", "Z") if moment else ""


def grants(
    requests: dict[str, AccessRequest],
    since: datetime.datetime,
    until: datetime.datetime,
    now: datetime.datetime,
) -> list[GrantRow]:
    """Grants whose access overlapped [since, until), oldest first; ``now`` ends live ones."""
    rows: list[tuple[datetime.datetime, GrantRow]] = []
    for name, request in requests.items():
        status = request.status
        if status is None or status.activated_at is None:
            continue
        ending = next((h for h in reversed(status.history) if h.action in _ENDINGS), None)
        ended = ending.time if ending else None
        if status.activated_at >= until or (ended <= since if ended else now < since):
            continue
        approvals = [h.actor for h in status.history if h.action in ("Approved", "BreakGlass")]
        spec = request.spec
        rows.append((status.activated_at, GrantRow(
            request=name,
            requester=spec.requester.username if spec.requester else "",
            role=str(spec.role),
            namespace=spec.namespace or "(cluster-wide)",
            activated_at=_iso(status.activated_at),
            ended_at=_iso(ended),
            ended_by=ending.actor if ending else "",
            outcome=status.phase.value if status.phase else "",
            approved_by="; ".join(approvals),
            justification=spec.justification,
            ticket=spec.ticket or "",
            break_glass=spec.break_glass,
            reviewed_by=status.reviewed_by or "",
            **_activity(status.activity),
        )))
    return [row for _, row in sorted(rows, key=lambda pair: (pair[0], pair[1].request))]


def _activity(activity: Activity | None) -> dict[str, Any]:
    if activity is None:
        return {}
    listed = [f"{o.verb} {o.resource} {o.count}" for o in activity.operations]
    if activity.other_operations:
        listed.append(f"other {activity.other_operations}")
    return {"used": activity.requests, "last_used": _iso(activity.last_use),
            "operations": "; ".join(listed), "denied": activity.denied,
            "other_bindings": activity.other_bindings}


REVIEW_COLUMNS = ("run", "review", "started_at", "deadline", "completed_at", "eligibility",
                  "subject_kind", "subject", "last_activated", "grants", "recommendation",
                  "outcome", "decisions", "reinstated_by")


def review_rows(runs: dict[str, EligibilityReviewRun], since: datetime.datetime,
                until: datetime.datetime) -> list[dict[str, object]]:
    """One row per subject of every access review run started in [since, until), for auditors.

    ``decisions``: every reviewer's decision on the subject with its comment, as recorded
    (those the outcome did not count too: the run's history says which counted).
    """
    rows: list[dict[str, object]] = []
    for name in sorted(runs, key=lambda n: (runs[n].spec.started_at, n)):
        run = runs[name]
        if not since <= run.spec.started_at < until:
            continue
        status = run.status
        for subject in run.spec.subjects:
            said = []
            outcome = None
            if status is not None:
                for reviewer in sorted(status.decisions):
                    decision = status.decisions[reviewer].subjects.get(subject.id)
                    if decision is not None:
                        said.append(f"{reviewer}: {decision.decision}" +
                                    (f" ({decision.comment})" if decision.comment else ""))
                outcome = status.outcomes.get(subject.id)
            who = subject.subject.name if subject.subject.kind != "ServiceAccount" else \
                f"{subject.subject.namespace}/{subject.subject.name}"
            rows.append({
                "run": name, "review": run.spec.review, "started_at": _iso(run.spec.started_at),
                "deadline": _iso(run.spec.deadline),
                "completed_at": _iso(status.completed_at if status else None),
                "eligibility": subject.eligibility, "subject_kind": subject.subject.kind,
                "subject": who, "last_activated": _iso(subject.last_activated),
                "grants": subject.grants, "recommendation": subject.recommendation,
                "outcome": outcome.outcome if outcome else "Open",
                "decisions": "; ".join(said),
                "reinstated_by": (outcome.reinstated_by or "") if outcome else ""})
    return rows
