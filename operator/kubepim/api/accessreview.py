"""EligibilityReview and EligibilityReviewRun: periodic recertification of who is eligible.

An EligibilityReview (cluster-scoped, owned by GitOps like RoleEligibility) says which
eligibilities are reviewed, how often, by whom and what happens to a subject nobody decided on.
Each time one is due the operator makes an EligibilityReviewRun: a snapshot of every covered
eligibility's subjects, who may review each, the deadline, and what kubepim's own records say of
each subject's use. The run is the auditor's record of that review as it was: its spec is the
operator's and never changes; reviewers add only their own decisions to its status (stamped and
guarded by admission exactly like approvals, docs/reviews.md); the operator records each
decision and the outcome in its history. docs/reviews.md has the design.
"""

from __future__ import annotations

import datetime
from typing import ClassVar, Literal

from pydantic import Field, model_validator

from . import duration
from .common import (
    CONTROL,
    DNS_SUBDOMAIN,
    Condition,
    LabelSelector,
    Model,
    Subject,
    cel_rules,
)

Undecided = Literal["Keep", "Suspend"]
Decision = Literal["Keep", "Remove", "Reinstate"]


class Reviewers(Model):
    """Who may review: users by name, and members of groups."""

    users: list[str] = Field(default_factory=list, max_length=100,
                             description="Usernames that may review.")
    groups: list[str] = Field(default_factory=list, max_length=100,
                              description="Members of these groups may review.")


class EligibilitySelection(Model):
    """Which RoleEligibilities a review covers: by name, by label, or both (their union)."""

    model_config = cel_rules([{
        "rule": "(has(self.names) && size(self.names) > 0) || has(self.selector)",
        "message": "name the eligibilities reviewed: names, selector, or both"}])

    names: list[str] = Field(default_factory=list, max_length=500,
                             description="RoleEligibility names.")
    selector: LabelSelector | None = Field(
        default=None, description="Also RoleEligibilities whose labels match.")


_SPEC_RULES: list[dict[str, str]] = [
    {"rule": "duration(self.every) >= duration('30s')",
     "message": "every must be at least 30s (a review runs this often, e.g. 2160h for 90 days)"},
    {"rule": "duration(self.decideWithin) >= duration('5s') && "
             "duration(self.decideWithin) <= duration(self.every)",
     "message": "decideWithin must be at least 5s and no longer than every"},
    {"rule": "!has(self.unusedAfter) || duration(self.unusedAfter) > duration('0s')",
     "message": "unusedAfter must be positive, e.g. 2160h"},
]


class EligibilityReviewSpec(Model):
    """A recurring review of who is eligible."""

    model_config = cel_rules(_SPEC_RULES)

    eligibilities: EligibilitySelection = Field(description="The RoleEligibilities reviewed.")
    every: str = Field(
        min_length=2, max_length=32, pattern=duration.PATTERN,
        description="How often a review runs, e.g. 2160h (90 days); the first runs when this "
        "is created.")
    decide_within: str = Field(
        min_length=2, max_length=32, pattern=duration.PATTERN,
        description="How long reviewers have from a run's start, e.g. 336h (14 days); at most "
        "every.")
    reviewers: Reviewers | None = Field(
        default=None,
        description="Who reviews every covered eligibility; when omitted, each eligibility's "
        "own approvers (approval.users and approval.groups). Nobody reviews themselves.")
    when_undecided: Undecided = Field(
        description="What happens to a subject nobody decided on by the deadline: Keep, or "
        "Suspend (as if removed).")
    unused_after: str = Field(
        default="2160h", min_length=2, max_length=32, pattern=duration.PATTERN,
        description="A subject with no grant under the eligibility for this long is flagged "
        "to reviewers as unused (from kubepim's records: their retention bounds how far back "
        "they reach).")

    @model_validator(mode="after")
    def _durations(self) -> EligibilityReviewSpec:
        every = duration.parse(self.every)
        if every < datetime.timedelta(seconds=30):
            raise ValueError("every must be at least 30s")
        within = duration.parse(self.decide_within)
        if not datetime.timedelta(seconds=5) <= within <= every:
            raise ValueError("decideWithin must be at least 5s and no longer than every")
        if duration.parse(self.unused_after) <= datetime.timedelta(0):
            raise ValueError("unusedAfter must be positive")
        return self


class EligibilityReviewStatus(Model):
    """Observed state of an EligibilityReview, written by the operator."""

    observed_generation: int = Field(default=0, description="Generation last reconciled.")
    conditions: list[Condition] = Field(
        default_factory=list, description="Ready: whether runs can be made, and why not.")
    last_run: str | None = Field(default=None, description="The latest EligibilityReviewRun.")
    last_run_at: datetime.datetime | None = Field(
        default=None, description="When the latest run started.")
    next_run_at: datetime.datetime | None = Field(
        default=None, description="When the next run starts.")


class EligibilityReview(Model):
    """A periodic review of who is eligible, with suspension of those nobody vouches for."""

    kind_name: ClassVar[str] = "EligibilityReview"
    plural: ClassVar[str] = "eligibilityreviews"
    spec: EligibilityReviewSpec = Field(description="What is reviewed, how often, by whom.")
    status: EligibilityReviewStatus | None = Field(default=None,
                                                   description="Set by the operator.")


class ReviewedSubject(Model):
    """One subject of one eligibility as it stood when the run started, with its use."""

    id: str = Field(min_length=1, max_length=600,
                    description="Key of this subject in decisions: eligibility/kind/name (a "
                    "ServiceAccount: eligibility/ServiceAccount/namespace/name).")
    eligibility: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN,
                             description="The RoleEligibility listing the subject.")
    subject: Subject = Field(description="The subject as the eligibility lists it.")
    suspended: bool = Field(default=False, description="Suspended by an earlier review when "
                            "this run started (a Keep decision here lifts it).")
    last_activated: datetime.datetime | None = Field(
        default=None, description="The subject's latest grant under this eligibility in "
        "kubepim's records.")
    grants: int = Field(default=0, ge=0, description="Grants under this eligibility in the "
                        "review period (every) before the run started.")
    recommendation: str = Field(default="", max_length=256,
                                description="What the records suggest, e.g. never used in "
                                "2160h.")


class EligibilityReviewers(Model):
    """Who may decide on one eligibility's subjects in a run."""

    eligibility: str = Field(min_length=1, max_length=253, description="RoleEligibility.")
    users: list[str] = Field(default_factory=list, description="Usernames that may review.")
    groups: list[str] = Field(default_factory=list,
                              description="Members of these groups may review.")


class EligibilityReviewRunSpec(Model):
    """One run as it started: written once by the operator, never changed."""

    review: str = Field(min_length=1, max_length=253, description="The EligibilityReview.")
    started_at: datetime.datetime = Field(description="When the run started.")
    deadline: datetime.datetime = Field(description="When undecided subjects get the default.")
    when_undecided: Undecided = Field(description="Keep or Suspend an undecided subject.")
    reviewers: list[EligibilityReviewers] = Field(
        default_factory=list, description="Who may decide, per eligibility.")
    subjects: list[ReviewedSubject] = Field(
        default_factory=list, max_length=1000, description="Every covered subject.")


class SubjectDecision(Model):
    """One reviewer's decision on one subject."""

    # No CEL rule on the comment: evaluated on up to 50 x 1,000 entries it exceeds the API
    # server's cost budget; the run webhook refuses control characters instead (plain_text).

    decision: Decision = Field(
        description="Keep or Remove while the run is open; Reinstate, after it, lifts a "
        "suspension this run made.")
    comment: str = Field(default="", max_length=512, description="Why.")


class ReviewerDecisions(Model):
    """A reviewer's decisions in one run; the map key is the reviewer's username."""

    subjects: dict[str, SubjectDecision] = Field(
        default_factory=dict, max_length=1000,
        description="Decisions keyed by subject id (spec.subjects[].id); each is final.")
    groups: list[str] = Field(default_factory=list,
                              description="The reviewer's groups, stamped by admission.")
    run_uid: str = Field(default="", description="metadata.uid of the run, stamped by "
                         "admission: an entry copied onto another run does not count.")


Outcome = Literal["Kept", "Removed", "Suspended"]


class SubjectOutcome(Model):
    """What the run decided for one subject."""

    outcome: Outcome = Field(description="Kept; Removed (a reviewer said so); Suspended (nobody "
                             "decided and the review suspends the undecided).")
    by: list[str] = Field(default_factory=list, description="The reviewers whose decisions "
                          "counted (empty: the default applied).")
    reinstated_by: str | None = Field(default=None,
                                      description="Who reinstated the subject afterwards.")


RunPhase = Literal["Open", "Completed"]


class RunHistoryEntry(Model):
    """One step of a run: started, a decision recorded, an outcome, completed, reinstated."""

    time: datetime.datetime = Field(description="When it happened.")
    action: str = Field(description="CamelCase action, the same as the Event reason: Started, "
                        "Decided, Kept, Removed, Suspended, Completed, Reinstated.")
    actor: str = Field(description="The reviewer, or kubepim for the operator.")
    subject: str | None = Field(default=None, description="The subject id it concerns.")
    reason: str = Field(default="", description="Human-readable detail.")


class EligibilityReviewRunStatus(Model):
    """A run's decisions (reviewers add their own) and its record (the operator's)."""

    phase: RunPhase | None = Field(default=None, description="Open, then Completed.")
    decisions: dict[str, ReviewerDecisions] = Field(
        default_factory=dict, max_length=50, description="Decisions keyed by reviewer.")
    outcomes: dict[str, SubjectOutcome] = Field(
        default_factory=dict, max_length=1000,
        description="Per subject id, once Completed.")
    completed_at: datetime.datetime | None = Field(default=None,
                                                   description="When the outcome applied.")
    conditions: list[Condition] = Field(
        default_factory=list, description="Completed: when and why (Deadline, or AllDecided: "
        "every subject had a decision — the first full answer closes the run), with counts.")
    history: list[RunHistoryEntry] = Field(
        default_factory=list, description="Every decision and outcome, in order (append-only).")
    message: str = Field(default="", description="Human-readable state.")


class EligibilityReviewRun(Model):
    """One run of an EligibilityReview: the subjects as they were, the decisions, the outcome."""

    kind_name: ClassVar[str] = "EligibilityReviewRun"
    plural: ClassVar[str] = "eligibilityreviewruns"
    spec: EligibilityReviewRunSpec = Field(description="The run as it started; never changes.")
    status: EligibilityReviewRunStatus | None = Field(default=None,
                                                      description="Decisions and record.")


def plain_text(text: str) -> bool:
    """Whether ``text`` is free of control characters (it may go into logs and Events)."""
    return CONTROL.search(text) is None
