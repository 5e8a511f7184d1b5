"""Access reviews in the operator (issue 17); docs/reviews.md has the design.

Runs made on schedule, decisions recorded, outcomes applied to eligibilities.

Both kinds go through the reconciler's work queue under keys of their own (``review:NAME``,
``run:NAME``): retries with backoff, timers for the next run and each deadline, only the leader
acting. Each step is written so that doing it again after a kill changes nothing:
- a run is named after its schedule point: made twice, the second create finds it (409);
- an outcome is applied to the eligibilities first (their status.suspended, keyed by subject:
  written again, unchanged), then recorded on the run in one write (resourceVersion
  precondition) with its history entries, then one JSON line and Event per entry;
- what the history already holds is never added again (decisions are found there by reviewer
  and subject).
"""

from __future__ import annotations

import contextlib
import datetime
import logging
from collections.abc import Callable
from typing import Any

import kopf
from pydantic import ValidationError

from kubepim import audit, metrics
from kubepim.api.accessreview import (
    EligibilityReviewRun,
    EligibilityReviewRunSpec,
    EligibilityReviewRunStatus,
    EligibilityReviewSpec,
    RunHistoryEntry,
    SubjectOutcome,
)
from kubepim.api.common import GROUP, VERSION
from kubepim.api.eligibility import RoleEligibilitySpec
from kubepim.domain import recertification as rc
from kubepim.domain.lifecycle import OPERATOR
from kubepim.domain.review import selector_matches
from kubepim.k8s.client import Conflict, parse_time

from . import registry
from .reconcile import Reconciler, rfc3339, utcnow

logger = logging.getLogger(__name__)

REVIEW, RUN, RESTORE = "review:", "run:", "suspensions:"
REVIEWS, RUNS = "eligibilityreviews", "eligibilityreviewruns"
REVIEW_LABEL = f"{GROUP}/review"


class TooLarge(Exception):
    """A run would hold more than its kind allows."""


class Reviews:
    """The queue's work for EligibilityReviews and their runs."""

    def __init__(self, reconciler: Reconciler, retention: datetime.timedelta) -> None:
        self.reconciler = reconciler
        self.kube = reconciler.kube
        # How far kubepim's records of grants reach back (requests are deleted after it).
        self.retention = retention
        reconciler.keyed[REVIEW] = self.review
        reconciler.keyed[RUN] = self.run
        reconciler.keyed[RESTORE] = self.restore
        # Completed runs, the record of who is suspended (the watch keeps it; a term's first
        # listing fills it whole, and only then are suspensions restored from it).
        self._completed: dict[str, tuple[EligibilityReviewRunSpec, datetime.datetime,
                                         dict[str, SubjectOutcome], int]] = {}
        self._loaded_in_term = -1
        self._uids: dict[str, str] = {}  # eligibility name -> the uid last seen
        reconciler.on_resync.append(self.enqueue_all)
        # Lines a previous leader may have died before logging: entries recorded since this
        # (its last renewal less a margin) are logged again once per run per term.
        self.replay_since: Callable[[], datetime.datetime | None] = lambda: None
        self._replayed: dict[str, int] = {}  # run name -> the term it was replayed in
        self._open: dict[str, datetime.datetime] = {}  # open run -> its deadline (gauges)
        self._listed_in_term = -1  # the term whose takeover listed every run
        metrics.REVIEW_RUNS_OPEN.set_function(
            lambda: float(len(self._open)) if reconciler.elected() else 0.0)
        metrics.REVIEW_RUNS_OVERDUE.set_function(lambda: float(self.overdue(utcnow())))

    async def enqueue_all(self) -> None:
        """Every review, and every run not completed, into the queue.

        At a takeover (a new leader holds no timers) and each resync (an event missed while a
        watch was down).
        """
        for item in await self.kube.list_custom(REVIEWS):
            self.reconciler.enqueue_key(REVIEW + item["metadata"]["name"])
        # A term's first time, completed runs too (a Reinstate recorded while no replica led;
        # lines a dead leader did not log): a resync after it lists only open ones.
        everything = self._listed_in_term != self.reconciler.term
        runs = await self.kube.list_custom(RUNS, None if everything else
                                           "status.phase!=Completed")
        self._listed_in_term = self.reconciler.term
        if everything:
            for item in runs:  # (merged: a newer copy a watch event brought meanwhile stays)
                self.observe_run(item)
            self._loaded_in_term = self.reconciler.term
            for eligibility in sorted({s.eligibility for spec, _, _, _ in
                                       self._completed.values() for s in spec.subjects}):
                self.reconciler.enqueue_key(RESTORE + eligibility, slow=True)
        names = [item["metadata"]["name"] for item in runs
                 if (item.get("status") or {}).get("phase") != "Completed"]
        for item in runs:
            if (item.get("status") or {}).get("phase") == "Completed":
                self.reconciler.enqueue_key(RUN + item["metadata"]["name"])
        # (an entry of a run completed while another replica led would count as overdue)
        self._open = {name: at for name, at in self._open.items() if name in names}
        for name in names:
            self.reconciler.enqueue_key(RUN + name)

    def observe_run(self, body: dict[str, Any] | None, name: str | None = None) -> None:
        """Keep the record of completed runs current (``body`` None: the run was deleted).

        A copy older than the one recorded is ignored (a listing served before a watch event).
        """
        if body is None:
            self._completed.pop(name or "", None)
            return
        try:
            run = EligibilityReviewRun.model_validate(body)
        except ValidationError:
            return
        if run.status is not None and run.status.phase == "Completed":
            self._record(body["metadata"]["name"], body, run.spec,
                         run.status.completed_at or run.spec.deadline, dict(run.status.outcomes))

    def _record(self, name: str, body: dict[str, Any], spec: EligibilityReviewRunSpec,
                completed_at: datetime.datetime, outcomes: dict[str, SubjectOutcome],
                ahead: bool = False) -> None:
        """Record a completed run's outcomes.

        ``ahead``: about to be written over ``body``'s version (so newer than any event of that
        version; the written copy replaces it).
        """
        version = int(str(body["metadata"].get("resourceVersion") or 0) or 0) + int(ahead)
        held = self._completed.get(name)
        if held is not None and held[3] > version:
            return
        self._completed[name] = (spec, completed_at, outcomes, version)

    def eligibility_changed(self, name: str, uid: str) -> None:
        """An eligibility event: made again under a new uid, its suspensions are restored.

        (Its status is the operator's alone, by admission: re-creation is how they get lost.)
        """
        if self._uids.get(name) == uid:
            return
        self._uids[name] = uid
        if self._loaded_in_term == self.reconciler.term and any(
                s.eligibility == name for spec, _, _, _ in self._completed.values()
                for s in spec.subjects):
            self.reconciler.enqueue_key(RESTORE + name, slow=True)

    async def restore(self, eligibility: str) -> None:
        """Add to the eligibility's status.suspended what completed runs say it lacks.

        Only adds: a RoleEligibility deleted and made again (or a status cleared) gets its
        suspensions back; lifting is a run's alone (a Keep, a reinstatement).
        """
        if self._loaded_in_term != self.reconciler.term:
            return  # (the record is not whole yet: the term's first listing queues this again)
        record = rc.standing_suspensions(
            ((name, spec, at, outcomes) for name, (spec, at, outcomes, _) in
             self._completed.items()), eligibility)
        if not record:
            return
        async with self.reconciler.lock(f"eligibility-status:{eligibility}"):
            body = await self.kube.get_eligibility(eligibility)
            if body is None:
                return
            held = rc.suspensions_in(body.get("status"))
            present = {rc.identity(entry.subject) for entry in held}
            missing = [entry for who, entry in sorted(record.items()) if who not in present]
            if missing:
                logger.info("RoleEligibility %s: %d suspension(s) restored from completed "
                            "review runs", eligibility, len(missing))
                await self.kube.patch_custom_status(
                    "roleeligibilities", eligibility,
                    {"suspended": [entry.wire() for entry in [*held, *missing]]},
                    body["metadata"].get("resourceVersion"))

    def overdue(self, now: datetime.datetime) -> int:
        """Open runs a minute past their deadline (on the leader; the metrics thread reads)."""
        if not self.reconciler.elected():
            return 0
        late = now - datetime.timedelta(minutes=1)
        return sum(1 for deadline in list(self._open.values()) if deadline < late)

    # Reviews: a run when due, then a timer for the next.

    async def review(self, name: str) -> None:
        """Make the run that is due, if any; set the timer of the next one."""
        body = await self.kube.get_custom(REVIEWS, name)
        if body is None:
            self.reconciler.queue.cancel(REVIEW + name)
            return
        status = dict(body.get("status") or {})
        try:
            spec = EligibilityReviewSpec.model_validate(body.get("spec") or {})
        except ValidationError as error:
            await self._review_status(name, status, _ready(False, "InvalidSpec", str(error)))
            return
        created = parse_time(body["metadata"].get("creationTimestamp")) or utcnow()
        last = parse_time(status.get("lastRunAt"))
        now = utcnow()
        due = rc.due_run(spec, created, last, now)
        update: dict[str, Any] = {}
        if due is not None:
            try:
                run = await self._make_run(name, spec, due, now)
            except TooLarge as error:
                await self._review_status(name, status,
                                          _ready(False, "TooManySubjects", str(error)))
                return  # (a change of the review or its eligibilities tries again)
            last = due
            update.update(lastRun=run, lastRunAt=rfc3339(due))
        upcoming = rc.next_run(spec, created, last)
        update["nextRunAt"] = rfc3339(upcoming)
        update["observedGeneration"] = body["metadata"].get("generation", 0)
        await self._review_status(name, status, update | _ready(True, "Scheduled",
                                                                 f"next run {rfc3339(upcoming)}"))
        self.reconciler.queue.schedule(REVIEW + name, upcoming)

    async def _review_status(self, name: str, status: dict[str, Any],
                             update: dict[str, Any]) -> None:
        condition = update.pop("condition")
        old: dict[str, Any] = next(
            (c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {})
        if (old.get("status"), old.get("message")) == (condition["status"],
                                                        condition["message"]):
            condition["lastTransitionTime"] = old.get("lastTransitionTime")
        update["conditions"] = [condition]
        if any(status.get(key) != value for key, value in update.items()):
            await self.kube.patch_custom_status(REVIEWS, name, update)

    async def _make_run(self, review: str, spec: EligibilityReviewSpec,
                        scheduled: datetime.datetime, now: datetime.datetime) -> str:
        """Snapshot the covered eligibilities and make the run (found made: kept as made)."""
        name = rc.run_name(review, scheduled)
        if await self.kube.get_custom(RUNS, name) is not None:
            self.reconciler.enqueue_key(RUN + name)
            return name
        items = await self.kube.list_eligibilities()
        matches = {item["metadata"]["name"]: spec.eligibilities.selector is not None and
                   selector_matches(spec.eligibilities.selector,
                                    item["metadata"].get("labels") or {})
                   for item in items}
        covered = set(rc.covered(spec.eligibilities.names, matches))
        specs: dict[str, RoleEligibilitySpec] = {}
        suspended: dict[str, list[str]] = {}
        for item in items:
            item_name = item["metadata"]["name"]
            if item_name not in covered:
                continue
            try:
                specs[item_name] = RoleEligibilitySpec.model_validate(item.get("spec") or {})
                held = rc.suspensions_in(item.get("status"))
            except ValidationError:
                continue  # (not Ready: nobody can request under it)
            gone = {rc.identity(entry.subject) for entry in held}  # (by identity)
            suspended[item_name] = [rc.subject_id(item_name, s) for s in specs[item_name].subjects
                                    if rc.identity(s) in gone]
        grants = await self._grants()
        try:
            run = rc.snapshot(spec, review, specs, suspended, grants, now, self.reconciler.case,
                              records_since=now - self.retention)
        except ValidationError as error:  # (more subjects than one run holds)
            raise TooLarge(f"the covered eligibilities list more subjects than one run holds "
                           f"(1,000): split this review by eligibility ({error.error_count()} "
                           "error(s))") from error
        manifest = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "EligibilityReviewRun",
                    "metadata": {"name": name,
                                 "labels": {REVIEW_LABEL: review[:63].rstrip("-.")}},
                    "spec": run.wire()}
        with contextlib.suppress(Conflict):  # made by an earlier attempt whose answer was lost
            await self.kube.create_custom(RUNS, manifest)
        logger.info("EligibilityReview %s: run %s started (%d subject(s) of %d "
                    "eligibilit(ies), deadline %s)", review, name, len(run.subjects),
                    len(specs), rfc3339(run.deadline))
        self.reconciler.enqueue_key(RUN + name)
        return name

    async def _grants(self) -> list[rc.Grant]:
        """Every grant in kubepim's records (all AccessRequests, paged): for recommendations."""
        grants = []
        async for page in self.kube.request_pages(""):
            for item in page:
                status = item.get("status") or {}
                requester = (item.get("spec") or {}).get("requester") or {}
                activated = parse_time(status.get("activatedAt"))
                if activated is None or not status.get("eligibility"):
                    continue
                grants.append(rc.Grant(str(status["eligibility"]),
                                       str(requester.get("username") or ""),
                                       tuple(requester.get("groups") or ()), activated))
        return grants

    # Runs: decisions recorded, the outcome applied at the deadline, reinstatements.

    async def run(self, name: str) -> None:
        """Record what is new in one run; complete it when due; apply reinstatements."""
        body = await self.kube.get_custom(RUNS, name)
        if body is None:
            self.reconciler.queue.cancel(RUN + name)
            self._replayed.pop(name, None)
            self._open.pop(name, None)
            return
        try:
            run = EligibilityReviewRun.model_validate(body)
        except ValidationError as error:
            logger.warning("EligibilityReviewRun %s is unreadable (%s): left alone", name, error)
            return
        uid = str(body["metadata"].get("uid"))
        spec = run.spec
        status = run.status or EligibilityReviewRunStatus()
        self._replay(name, body, status)
        case = self.reconciler.case
        now = utcnow()
        entries: list[RunHistoryEntry] = []
        update: dict[str, Any] = {}
        if status.phase is None:
            update["phase"] = "Open"
            entries.append(RunHistoryEntry(
                time=now, action="Started", actor=OPERATOR,
                reason=f"review {spec.review}: {len(spec.subjects)} subject(s), decisions "
                f"until {rfc3339(spec.deadline)}, undecided: {spec.when_undecided}"))
        seen = {(e.actor, e.subject) for e in status.history if e.action in ("Decided",
                                                                              "Reinstated")}
        votes = rc.counted(spec, uid, status.decisions, case)
        for subject in sorted(votes):
            for reviewer, decision in sorted(votes[subject].items()):
                if decision == "Reinstate" or (reviewer, subject) in seen:
                    continue
                # (the comment stays in status.decisions: not copied, so the history stays
                # small enough for a run of 1,000 subjects to be written)
                entries.append(RunHistoryEntry(time=now, action="Decided", actor=reviewer,
                                               subject=subject, reason=f"{reviewer}: {decision}"))
        outcomes = dict(status.outcomes)
        if status.phase != "Completed" and rc.complete(spec, uid, status.decisions, now, case):
            outcomes = rc.outcomes(spec, uid, status.decisions, case)
            # The record first: an eligibility status event during the writes below must not
            # restore what this outcome lifts.
            self._record(name, body, spec, now, outcomes, ahead=True)
            await self._apply(name, spec, outcomes, now)
            entries += _outcome_entries(outcomes, now)
            suspended = rc.suspended(outcomes)
            summary = (f"{len(outcomes) - len(suspended)} kept, {len(suspended)} suspended "
                       f"({sum(o.outcome == 'Removed' for o in outcomes.values())} removed by "
                       "reviewers)")
            entries.append(RunHistoryEntry(time=now, action="Completed", actor=OPERATOR,
                                           reason=summary))
            update.update(phase="Completed", completedAt=rfc3339(now), message=summary,
                          outcomes={k: v.wire() for k, v in outcomes.items()},
                          conditions=[{"type": "Completed", "status": "True",
                                       "reason": "Deadline" if now >= spec.deadline
                                       else "AllDecided", "message": summary,
                                       "lastTransitionTime": rfc3339(now)}])
        elif status.phase == "Completed":
            lifted = rc.reinstated(spec, uid, status.decisions, outcomes, case)
            if lifted:
                for key, who in lifted.items():
                    outcomes[key] = outcomes[key].model_copy(update={"reinstated_by": who})
                self._record(name, body, spec, status.completed_at or now, outcomes,
                             ahead=True)
                await self._apply(name, spec, outcomes, now, set(lifted))
                for key, who in sorted(lifted.items()):
                    entries.append(RunHistoryEntry(time=now, action="Reinstated", actor=who,
                                                   subject=key, reason=f"reinstated by {who}"))
                update["outcomes"] = {k: v.wire() for k, v in outcomes.items()}
        if entries:
            first = len(status.history)
            update["history"] = [e.wire() for e in [*status.history, *entries]]
            written = await self.kube.patch_custom_status(
                RUNS, name, update, body["metadata"].get("resourceVersion"))
            for index, entry in enumerate(entries, start=first):
                self.reconciler.post_later(audit.review_record(self.kube, written, entry,
                                                               index))
            if update.get("phase") == "Completed":
                for outcome in outcomes.values():
                    metrics.REVIEW_OUTCOMES.labels(outcome.outcome).inc()
            self.observe_run(written)
        if update.get("phase", status.phase) != "Completed":
            self._open[name] = spec.deadline
            self.reconciler.queue.schedule(RUN + name, spec.deadline)
        else:
            self._open.pop(name, None)

    def _replay(self, name: str, body: dict[str, Any],
                status: EligibilityReviewRunStatus) -> None:
        """Once per run per term: log again the lines of entries a dead leader may have lost."""
        term = self.reconciler.term
        if self._replayed.get(name) == term:
            return
        self._replayed[name] = term
        since = self.replay_since()
        if since is None:
            return
        for index, entry in enumerate(status.history):
            if entry.time >= since:
                audit.review_line(body, entry, index)

    async def _apply(self, run: str, spec: EligibilityReviewRunSpec,
                     outcomes: dict[str, SubjectOutcome], now: datetime.datetime,
                     reinstated: set[str] | None = None) -> None:
        """Each covered eligibility's status.suspended as ``outcomes`` say (idempotent).

        The rule is :func:`rc.settle_suspension`, the same the record of completed runs is
        folded with: a run lifts or renames only suspensions made before it started.
        ``reinstated`` (subject ids): only these, the reinstatement path.
        """
        by_eligibility: dict[str, list[Any]] = {}
        for subject in spec.subjects:
            if subject.id in outcomes and (reinstated is None or subject.id in reinstated):
                by_eligibility.setdefault(subject.eligibility, []).append(subject)
        for eligibility, listed in sorted(by_eligibility.items()):
            async with self.reconciler.lock(f"eligibility-status:{eligibility}"):
                body = await self.kube.get_eligibility(eligibility)
                if body is None:
                    continue  # deleted: made again, it is restored from the record
                held = rc.suspensions_in(body.get("status"))
                current = {rc.identity(entry.subject): entry for entry in held}
                # A Remove before a Keep of the same identity listed twice (Remove wins).
                for subject in sorted(listed, key=lambda s: outcomes[s.id].outcome != "Kept"):
                    rc.settle_suspension(current, run, spec, subject, outcomes[subject.id], now)
                result = list(current.values())
                if result != held:
                    await self.kube.patch_custom_status(
                        "roleeligibilities", eligibility,
                        {"suspended": [entry.wire() for entry in result]},
                        body["metadata"].get("resourceVersion"))


def _outcome_entries(outcomes: dict[str, SubjectOutcome],
                     now: datetime.datetime) -> list[RunHistoryEntry]:
    entries = []
    for key, outcome in sorted(outcomes.items()):
        actor = ", ".join(outcome.by) if outcome.by else OPERATOR
        reason = {"Kept": f"kept ({'by ' + actor if outcome.by else 'nobody decided'})",
                  "Removed": f"removed by {actor}: suspended from the eligibility",
                  "Suspended": "nobody decided: suspended from the eligibility"}[outcome.outcome]
        entries.append(RunHistoryEntry(time=now, action=outcome.outcome, actor=actor,
                                       subject=key, reason=reason))
    return entries


def _ready(ok: bool, reason: str, message: str) -> dict[str, Any]:
    return {"condition": {"type": "Ready", "status": "True" if ok else "False",
                          "reason": reason, "message": message[:1024],
                          "lastTransitionTime": rfc3339(utcnow())}}


@kopf.on.event(GROUP, REVIEWS, registry=registry)
async def review_event(name: str, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    """A review was made, changed or listed: a run may be due."""
    if type != "DELETED":
        memo.reconciler.enqueue_key(REVIEW + name)


@kopf.on.event(GROUP, RUNS, registry=registry)
async def run_event(body: kopf.Body, name: str, type: str | None, memo: kopf.Memo,
                    **_: Any) -> None:
    """A run was made, decided on or listed: record what is new."""
    memo.reviews.observe_run(None if type == "DELETED" else dict(body), name)
    if type != "DELETED":
        memo.reconciler.enqueue_key(RUN + name)
