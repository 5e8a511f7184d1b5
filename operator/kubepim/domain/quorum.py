"""Approval quorum: which approvals count, and whether they add up to a grant or a denial.

One person counts once (approvals are keyed by username); the requester's own entry never
counts; an entry from someone who is not an approver is ignored; a denial by an approver is final.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from kubepim.api.eligibility import Approvers
from kubepim.api.request import Approval, Requester

Case = Literal["insensitive", "email", "sensitive"]
"""How usernames are compared for separation of duties: ``insensitive`` (the default: Alice is
alice), ``email`` (only names with an @ fold), ``sensitive`` (as Kubernetes compares them)."""


def person(username: str, case: Case = "insensitive") -> str:
    """The form of a username under which one person is recognised, whatever its spelling."""
    if case == "insensitive" or (case == "email" and "@" in username):
        return username.casefold()
    return username


@dataclass(frozen=True)
class Tally:
    """The outcome of counting approvals."""

    approved: bool
    denied_by: str | None = None
    counted: tuple[str, ...] = ()
    ignored: dict[str, str] = field(default_factory=dict)
    missing: str = ""


def is_approver(policy: Approvers, username: str, groups: list[str]) -> bool:
    """Whether this identity may approve: a listed user, or a member of an approver group.

    Members of ``required_from_group`` are approvers too.
    """
    allowed = set(policy.groups) | ({policy.required_from_group} - {None})
    return username in policy.users or any(group in allowed for group in groups)


def tally(
    policy: Approvers, approvals: Mapping[str, Approval], requester: Requester, uid: str = "",
    case: Case = "insensitive",
) -> Tally:
    """Count approvals against the policy; denials from approvers win over approvals.

    With ``uid`` (the request's metadata.uid), entries stamped for another request are ignored;
    usernames are compared as ``case`` says (one person counts once, whatever the spelling).
    """
    counted: list[str] = []
    ignored: dict[str, str] = {}
    people: set[str] = set()
    for username in sorted(approvals):
        entry = approvals[username]
        if entry.decision == "Acknowledge":
            continue
        if uid and entry.request_uid != uid:
            ignored[username] = "the approval was given for another request"
            continue
        if person(username, case) == person(requester.username, case):
            ignored[username] = "the requester cannot approve their own request"
            continue
        if not is_approver(policy, username, entry.groups):
            ignored[username] = "not an approver under the governing eligibility"
            continue
        if entry.decision == "Deny":  # final, whatever else the same person said
            return Tally(approved=False, denied_by=username, counted=tuple(counted),
                         ignored=ignored)
        if person(username, case) in people:
            ignored[username] = "the same person has approved under another spelling"
            continue
        counted.append(username)
        people.add(person(username, case))

    missing = []
    if len(counted) < policy.required:
        missing.append(f"{policy.required - len(counted)} more approval(s) of {policy.required}")
    group = policy.required_from_group
    if group and not any(group in approvals[u].groups for u in counted):
        missing.append(f"one approval from a member of group {group}")
    return Tally(approved=not missing, counted=tuple(counted), ignored=ignored,
                 missing=" and ".join(missing))
