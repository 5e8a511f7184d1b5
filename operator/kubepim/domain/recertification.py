"""Access reviews of eligibilities (issue 17): the pure decisions, on a fixed clock.

When a review runs (:func:`next_run`), what a run snapshots (:func:`snapshot`, with each
subject's use from kubepim's own records, :func:`usage`), who may decide on whom
(:func:`may_review`: never a subject on themselves), whether a reviewer's status change is
admitted (:func:`check_decisions`, the webhook's rule), what counts (:func:`outcomes`: re-checked
against the stamps, a Remove wins over a Keep), when a run completes (:func:`complete`) and which
subjects end up suspended (:func:`suspended`). docs/reviews.md has the design.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from kubepim.api import duration
from kubepim.api.accessreview import (
    EligibilityReviewers,
    EligibilityReviewRunSpec,
    EligibilityReviewSpec,
    ReviewedSubject,
    ReviewerDecisions,
    SubjectOutcome,
    plain_text,
)
from kubepim.api.common import RoleRef, Subject
from kubepim.api.eligibility import RoleEligibilitySpec, RoleEligibilityStatus, Suspension

from .quorum import Case, person


def next_run(spec: EligibilityReviewSpec, created_at: datetime.datetime,
             last_scheduled: datetime.datetime | None) -> datetime.datetime:
    """When the next run is scheduled: at creation, then every ``spec.every`` after the last.

    On a fixed clock from the review's creation, so a run made late (the operator was down)
    does not shift the ones after it.
    """
    if last_scheduled is None:
        return created_at
    return last_scheduled + duration.parse(spec.every)


def due_run(spec: EligibilityReviewSpec, created_at: datetime.datetime,
            last_scheduled: datetime.datetime | None,
            now: datetime.datetime) -> datetime.datetime | None:
    """The scheduled time of the run to make now, or None if none is due.

    Runs missed while the operator was down are not made one by one: only the latest
    schedule point not after ``now`` (one review, not a backlog of them).
    """
    scheduled = next_run(spec, created_at, last_scheduled)
    if scheduled > now:
        return None
    every = duration.parse(spec.every)
    missed = (now - scheduled) // every
    return scheduled + missed * every


def run_name(review: str, scheduled: datetime.datetime) -> str:
    """The run's name: the review's and its schedule point, so making it twice finds it made."""
    stamp = scheduled.astimezone(datetime.UTC).strftime("%Y%m%d-%H%M%S")
    return f"{review[: 253 - len(stamp) - 1]}-{stamp}"


def covered(selection_names: Sequence[str], matches: Mapping[str, bool]) -> list[str]:
    """Covered eligibility names: those named that exist, and those the selector matched.

    ``matches``: every existing eligibility's name → whether the review's selector matches its
    labels (False without a selector).
    """
    return sorted({name for name in selection_names if name in matches} |
                  {name for name, matched in matches.items() if matched})


def subject_id(eligibility: str, subject: Subject) -> str:
    """The key of one eligibility's subject in a run's decisions."""
    if subject.kind == "ServiceAccount":
        return f"{eligibility}/ServiceAccount/{subject.namespace}/{subject.name}"
    return f"{eligibility}/{subject.kind}/{subject.name}"


def reviewers_for(review: EligibilityReviewSpec, eligibility: str,
                  spec: RoleEligibilitySpec) -> EligibilityReviewers:
    """Who reviews one eligibility: the review's reviewers, else the eligibility's approvers."""
    if review.reviewers is not None:
        return EligibilityReviewers(eligibility=eligibility, users=review.reviewers.users,
                                    groups=review.reviewers.groups)
    approval = spec.approval
    groups = list(approval.groups)
    if approval.required_from_group and approval.required_from_group not in groups:
        groups.append(approval.required_from_group)
    return EligibilityReviewers(eligibility=eligibility, users=approval.users, groups=groups)


@dataclass(frozen=True)
class Grant:
    """One grant in kubepim's records: who had it, under which eligibility, when it began."""

    eligibility: str
    username: str
    groups: tuple[str, ...]
    activated_at: datetime.datetime


def identity(subject: Subject) -> tuple[str, str]:
    """Who a subject entry names, however it is spelled.

    A username (a User, or a ServiceAccount's system:serviceaccount:NS:NAME), or a group.
    """
    if subject.kind == "Group":
        return "group", subject.name
    return "user", subject.username() or subject.name


def holds(subject: Subject, username: str, groups: Iterable[str], case: Case) -> bool:
    """Whether an identity is (a member of) the subject, usernames compared as ``case`` says."""
    if subject.kind == "Group":
        return subject.name in groups
    name = subject.username()
    return name is not None and person(name, case) == person(username, case)


def usage(eligibility: str, subject: Subject, grants: Iterable[Grant],
          now: datetime.datetime, period: datetime.timedelta, unused_after: datetime.timedelta,
          case: Case = "insensitive", records_since: datetime.datetime | None = None
          ) -> tuple[datetime.datetime | None, int, str]:
    """The subject's use of one eligibility: last activation, grants in ``period``, advice.

    ``records_since``: the oldest record there is (retention); "never used" says how far back
    the records reach when that is less than ``unused_after``.
    """
    last: datetime.datetime | None = None
    count = 0
    for grant in grants:
        if grant.eligibility != eligibility or not holds(subject, grant.username, grant.groups,
                                                          case):
            continue
        if last is None or grant.activated_at > last:
            last = grant.activated_at
        if grant.activated_at >= now - period:
            count += 1
    unused = duration.format_duration(unused_after)
    if last is None:
        if records_since is not None and records_since > now - unused_after:
            reach = duration.format_duration(now - records_since)
            return None, 0, f"no grant in kubepim's records (they reach back {reach})"
        return None, 0, f"never used in {unused}"
    if last < now - unused_after:
        return last, count, f"not used in {unused}"
    return last, count, f"used {count} time(s) in the review period"


def snapshot(review: EligibilityReviewSpec, review_name: str,
             eligibilities: Mapping[str, RoleEligibilitySpec],
             suspended: Mapping[str, Iterable[str]], grants: Sequence[Grant],
             now: datetime.datetime, case: Case = "insensitive",
             records_since: datetime.datetime | None = None) -> EligibilityReviewRunSpec:
    """A run's spec: every covered eligibility's subjects now, their reviewers and their use.

    ``eligibilities``: the covered ones only; ``suspended``: per eligibility, the subject ids
    suspended by earlier reviews (still listed in its spec: reviewed again, flagged).
    """
    period = duration.parse(review.every)
    unused_after = duration.parse(review.unused_after)
    subjects: list[ReviewedSubject] = []
    reviewers: list[EligibilityReviewers] = []
    for name in sorted(eligibilities):
        spec = eligibilities[name]
        reviewers.append(reviewers_for(review, name, spec))
        held = set(suspended.get(name, ()))
        seen: set[str] = set()
        for subject in spec.subjects:
            key = subject_id(name, subject)
            if key in seen:
                continue
            seen.add(key)
            last, count, advice = usage(name, subject, grants, now, period, unused_after, case,
                                        records_since)
            subjects.append(ReviewedSubject(
                id=key, eligibility=name, subject=subject, suspended=key in held,
                last_activated=last, grants=count, recommendation=advice[:256]))
    return EligibilityReviewRunSpec(
        review=review_name, started_at=now,
        deadline=now + duration.parse(review.decide_within),
        when_undecided=review.when_undecided, reviewers=reviewers, subjects=subjects)


def may_review(run: EligibilityReviewRunSpec, subject: ReviewedSubject, username: str,
               groups: Sequence[str], case: Case = "insensitive") -> str | None:
    """Why this identity may not decide on this subject, or None if it may."""
    allowed = next((r for r in run.reviewers if r.eligibility == subject.eligibility), None)
    if allowed is None or not (username in allowed.users or
                               any(group in allowed.groups for group in groups)):
        users = ", ".join(allowed.users) if allowed and allowed.users else "none"
        named = ", ".join(allowed.groups) if allowed and allowed.groups else "none"
        return (f"{username} is not a reviewer of RoleEligibility {subject.eligibility} in this "
                f"run: its reviewers are users [{users}] and members of groups [{named}]")
    if holds(subject.subject, username, groups, case):
        return (f"{username} may not review {subject.id}: nobody reviews their own "
                "eligibility (their own name, or a group they are in)")
    return None


def check_decisions(run: EligibilityReviewRunSpec, phase: str | None,
                    old: Mapping[str, ReviewerDecisions], new: Mapping[str, ReviewerDecisions],
                    username: str, groups: Sequence[str], now: datetime.datetime,
                    outcomes: Mapping[str, SubjectOutcome], case: Case = "insensitive"
                    ) -> str | None:
    """Why a reviewer's status change is refused (the webhook's rule), or None if admitted.

    Only the caller's own entry may change, only by new decisions (each is final), each on a
    subject of this run the caller may review; Keep and Remove while the run is open and before
    its deadline; Reinstate once it completed, of a subject it removed or suspended.
    (The CEL policy refuses the rest of the status and stamps the entry: docs/reviews.md.)
    """
    for reviewer in set(old) | set(new):
        if reviewer != username and old.get(reviewer) != new.get(reviewer):
            return f"only {reviewer} may change {reviewer}'s decisions"
    mine, before = new.get(username), old.get(username)
    if mine is None:
        return None if before is None else "a reviewer's decisions may not be removed"
    earlier = before.subjects if before is not None else {}
    if before is None and not mine.subjects:
        return (f"{username}'s entry holds no decision: add decisions under "
                f"status.decisions[\"{username}\"].subjects")
    for key, given in earlier.items():
        if mine.subjects.get(key) != given:
            return f"a decision is final: {username}'s decision on {key} may not change"
    subjects = {subject.id: subject for subject in run.subjects}
    for key in sorted(set(mine.subjects) - set(earlier)):
        decision = mine.subjects[key].decision
        if not plain_text(mine.subjects[key].comment):
            return (f"the comment on {key} must not contain control characters (newlines, "
                    "tabs, escapes): write it on one line")
        subject = subjects.get(key)
        if subject is None:
            return f"{key} is not a subject of this run: decide on spec.subjects[].id"
        refusal = may_review(run, subject, username, groups, case)
        if refusal is not None:
            return refusal
        if decision == "Reinstate":
            if phase != "Completed":
                return "Reinstate is for a subject this run removed, once it completed: " \
                       "decide Keep or Remove while it is open"
            outcome = outcomes.get(key)
            if outcome is None or outcome.outcome == "Kept" or outcome.reinstated_by:
                return f"{key} is not suspended by this run: nothing to reinstate"
            continue
        if phase == "Completed" or now >= run.deadline:
            return f"the run closed at its deadline {run.deadline.isoformat()}: decisions are " \
                   "closed (Reinstate lifts a suspension it made)"
    return None


def counted(run: EligibilityReviewRunSpec, uid: str,
            decisions: Mapping[str, ReviewerDecisions], case: Case = "insensitive"
            ) -> dict[str, dict[str, str]]:
    """Per subject id, reviewer → Keep/Remove/Reinstate, of the decisions that count.

    Re-checked against the stamps, as the quorum is: an entry stamped for another run, from
    someone who may not review the subject, or on themselves, is ignored.
    """
    subjects = {subject.id: subject for subject in run.subjects}
    result: dict[str, dict[str, str]] = {}
    for reviewer in sorted(decisions):
        entry = decisions[reviewer]
        if entry.run_uid != uid:
            continue
        for key, decision in entry.subjects.items():
            subject = subjects.get(key)
            if subject is None or may_review(run, subject, reviewer, entry.groups, case):
                continue
            result.setdefault(key, {})[reviewer] = decision.decision
    return result


def complete(run: EligibilityReviewRunSpec, uid: str,
             decisions: Mapping[str, ReviewerDecisions], now: datetime.datetime,
             case: Case = "insensitive") -> bool:
    """Whether the run completes now: its deadline passed, or every subject was decided."""
    if now >= run.deadline:
        return True
    votes = counted(run, uid, decisions, case)
    return all(any(d in ("Keep", "Remove") for d in votes.get(s.id, {}).values())
               for s in run.subjects)


def outcomes(run: EligibilityReviewRunSpec, uid: str,
             decisions: Mapping[str, ReviewerDecisions],
             case: Case = "insensitive") -> dict[str, SubjectOutcome]:
    """Each subject's outcome, from the decisions that count.

    Removed if any counted reviewer said Remove, Kept if one said Keep, else the review's
    default (Kept, or Suspended).
    """
    votes = counted(run, uid, decisions, case)
    result: dict[str, SubjectOutcome] = {}
    for subject in run.subjects:
        said = votes.get(subject.id, {})
        removers = sorted(r for r, d in said.items() if d == "Remove")
        keepers = sorted(r for r, d in said.items() if d == "Keep")
        if removers:
            result[subject.id] = SubjectOutcome(outcome="Removed", by=removers)
        elif keepers:
            result[subject.id] = SubjectOutcome(outcome="Kept", by=keepers)
        elif subject.suspended:  # suspended before and nobody vouched: stays suspended
            result[subject.id] = SubjectOutcome(outcome="Suspended")
        else:
            result[subject.id] = SubjectOutcome(
                outcome="Suspended" if run.when_undecided == "Suspend" else "Kept")
    return result


def reinstated(run: EligibilityReviewRunSpec, uid: str,
               decisions: Mapping[str, ReviewerDecisions], done: Mapping[str, SubjectOutcome],
               case: Case = "insensitive") -> dict[str, str]:
    """Subject id → the first reviewer (by name) who reinstated it, of those not yet recorded."""
    votes = counted(run, uid, decisions, case)
    found: dict[str, str] = {}
    for key, said in votes.items():
        outcome = done.get(key)
        if outcome is None or outcome.outcome == "Kept" or outcome.reinstated_by:
            continue
        who = sorted(r for r, d in said.items() if d == "Reinstate")
        if who:
            found[key] = who[0]
    return found


def suspended(done: Mapping[str, SubjectOutcome]) -> list[str]:
    """The subject ids a completed run suspends (removed or undecided, not reinstated)."""
    return sorted(key for key, outcome in done.items()
                  if outcome.outcome != "Kept" and not outcome.reinstated_by)


def suspension_note(suspensions: Mapping[str, Sequence[Suspension]],
                    eligibilities: Mapping[str, RoleEligibilitySpec], username: str,
                    groups: Sequence[str], role: RoleRef, case: Case = "insensitive"
                    ) -> str | None:
    """Why a refused requester is not eligible where they were, or None.

    The review runs that suspended them from eligibilities offering this role.
    """
    notes = []
    for name in sorted(suspensions):
        spec = eligibilities.get(name)
        if spec is None or role not in spec.roles:
            continue
        for entry in suspensions[name]:
            if holds(entry.subject, username, groups, case):
                who = entry.subject.name if entry.subject.kind != "Group" else \
                    f"group {entry.subject.name}"
                notes.append(f"{who} is suspended from RoleEligibility {name} by review run "
                             f"{entry.run} ({entry.outcome.lower()} "
                             f"{entry.at.isoformat(timespec='seconds')})")
    return "; ".join(notes) or None


def settle_suspension(held: dict[tuple[str, str], Suspension], run: str,
                      spec: EligibilityReviewRunSpec, subject: ReviewedSubject,
                      outcome: SubjectOutcome, at: datetime.datetime) -> None:
    """Apply one completed run's outcome for one subject to the suspensions ``held``.

    A run judges only what existed when it started: it lifts (a reviewer's Keep of a subject
    its snapshot showed suspended, or a reinstatement) or renames a suspension made before its
    start, never one a run completed after its start made (a newer Remove wins over an older
    Keep). A Removed or Suspended outcome suspends, named after this run.
    """
    who = identity(subject.subject)
    current = held.get(who)
    older = current is not None and (current.at < spec.started_at or current.run == run)
    if outcome.reinstated_by:
        if older:
            del held[who]
    elif outcome.outcome in ("Removed", "Suspended"):
        if current is None or older:
            held[who] = Suspension(subject=subject.subject, run=run, at=at,
                                   outcome=outcome.outcome)
    elif outcome.by and subject.suspended and older:
        del held[who]


def standing_suspensions(runs: Iterable[tuple[str, EligibilityReviewRunSpec,
                                              datetime.datetime, Mapping[str, SubjectOutcome]]],
                         eligibility: str) -> dict[tuple[str, str], Suspension]:
    """The suspensions completed runs leave on ``eligibility``, by identity: their record.

    ``runs``: (name, spec, completed at, outcomes) of completed runs, folded in completion order
    with :func:`settle_suspension` (the rule the operator applies live). The eligibility's
    status.suspended holds at least these: one deleted and made again gets them back
    (docs/reviews.md).
    """
    held: dict[tuple[str, str], Suspension] = {}
    for name, spec, completed_at, outcomes in sorted(runs, key=lambda r: (r[2], r[0])):
        # Per identity, a Remove over a Keep when one run lists the same one twice.
        mine = sorted((s for s in spec.subjects if s.eligibility == eligibility
                       and s.id in outcomes),
                      key=lambda s: outcomes[s.id].outcome != "Kept")
        for subject in mine:
            settle_suspension(held, name, spec, subject, outcomes[subject.id], completed_at)
    return held


def effective(spec: RoleEligibilitySpec, suspended: Iterable[Suspension]) -> RoleEligibilitySpec:
    """The eligibility as admission and the reconciler apply it.

    Its subjects less those access reviews suspended, matched by identity.
    """
    gone = {identity(entry.subject) for entry in suspended}
    if not gone:
        return spec
    return spec.model_copy(update={"subjects": [s for s in spec.subjects
                                                if identity(s) not in gone]})


def suspensions_in(status: Mapping[str, Any] | None) -> list[Suspension]:
    """The suspended subjects an eligibility's status lists.

    Unreadable: none (only the operator writes it).
    """
    try:
        return RoleEligibilityStatus.model_validate(status or {}).suspended
    except ValidationError:
        return []
