"""Approval quorum: which approvals count, and when they add up to a grant or a denial."""

from __future__ import annotations

from typing import Any

import pytest

from kubepim.api.eligibility import Approvers
from kubepim.api.request import Approval, Requester
from kubepim.domain.quorum import Tally, is_approver, tally

from .builders import approve, deny

ALICE = Requester(username="alice", groups=["dev"])
NOT_AN_APPROVER = "not an approver under the governing eligibility"
OWN_REQUEST = "the requester cannot approve their own request"


def _policy(**fields: Any) -> Approvers:
    return Approvers.model_validate({"users": ["alice", "bob", "carol"], **fields})


CASES = [
    pytest.param(_policy(), {"bob": approve()},
                 Tally(approved=True, counted=("bob",)),
                 id="one approval from a listed approver meets a quorum of one"),
    pytest.param(_policy(), {},
                 Tally(approved=False, missing="1 more approval(s) of 1"),
                 id="no approvals leave the whole quorum missing"),
    pytest.param(_policy(), {"alice": approve()},
                 Tally(approved=False, ignored={"alice": OWN_REQUEST},
                       missing="1 more approval(s) of 1"),
                 id="the requester's own approval is ignored even though she is an approver"),
    pytest.param(_policy(), {"mallory": approve("dev")},
                 Tally(approved=False, ignored={"mallory": NOT_AN_APPROVER},
                       missing="1 more approval(s) of 1"),
                 id="an approval from someone who is not an approver is ignored"),
    pytest.param(_policy(groups=["sre"]), {"dave": approve("sre")},
                 Tally(approved=True, counted=("dave",)),
                 id="a member of an approver group counts"),
    pytest.param(_policy(required=2, groups=["sre"]), {"bob": approve("sre")},
                 Tally(approved=False, counted=("bob",), missing="1 more approval(s) of 2"),
                 id="one person counts once even when listed by name and by group"),
    pytest.param(_policy(required=2), {"bob": approve(), "carol": approve()},
                 Tally(approved=True, counted=("bob", "carol")),
                 id="two distinct approvers meet a quorum of two"),
    pytest.param(_policy(required=3), {"bob": approve(), "carol": approve()},
                 Tally(approved=False, counted=("bob", "carol"), missing="1 more approval(s) of 3"),
                 id="the missing count says how many more approvals are needed"),
    pytest.param(_policy(), {"bob": deny(comment="not during the freeze")},
                 Tally(approved=False, denied_by="bob"),
                 id="a denial by an approver is final"),
    pytest.param(_policy(required=2, users=["bob", "carol", "zed"]),
                 {"bob": approve(), "carol": approve(), "zed": deny()},
                 Tally(approved=False, denied_by="zed", counted=("bob", "carol")),
                 id="a denial wins over a quorum that is already met"),
    pytest.param(_policy(users=["aaron", "bob"]), {"aaron": deny(), "bob": approve()},
                 Tally(approved=False, denied_by="aaron"),
                 id="a denial wins whatever the order of the approvers' names"),
    pytest.param(_policy(), {"mallory": deny(), "bob": approve()},
                 Tally(approved=True, counted=("bob",), ignored={"mallory": NOT_AN_APPROVER}),
                 id="a denial from someone who is not an approver is ignored"),
    pytest.param(_policy(), {"alice": deny(), "bob": approve()},
                 Tally(approved=True, counted=("bob",), ignored={"alice": OWN_REQUEST}),
                 id="the requester's own denial is ignored"),
    pytest.param(_policy(required=2, requiredFromGroup="security"),
                 {"bob": approve(), "sam": approve("security")},
                 Tally(approved=True, counted=("bob", "sam")),
                 id="a required group is satisfied by one approval from its member"),
    pytest.param(_policy(required=2, requiredFromGroup="security"),
                 {"bob": approve(), "carol": approve("dev")},
                 Tally(approved=False, counted=("bob", "carol"),
                       missing="one approval from a member of group security"),
                 id="enough approvals without one from the required group do not approve"),
    pytest.param(_policy(required=2, requiredFromGroup="security"), {"bob": approve()},
                 Tally(approved=False, counted=("bob",),
                       missing="1 more approval(s) of 2 and one approval from a member of "
                               "group security"),
                 id="a short count and a missing group are both reported"),
    pytest.param(_policy(users=[], requiredFromGroup="security"), {"sam": approve("security")},
                 Tally(approved=True, counted=("sam",)),
                 id="members of the required group count as approvers without being listed"),
]


@pytest.mark.parametrize(("policy", "approvals", "expected"), CASES)
def test_tally_counts_only_approvals_that_may_count(
    policy: Approvers, approvals: dict[str, Approval], expected: Tally,
) -> None:
    assert tally(policy, approvals, ALICE) == expected


@pytest.mark.parametrize(("username", "groups", "expected"), [
    pytest.param("bob", [], True, id="a listed user is an approver"),
    pytest.param("dave", ["sre"], True, id="a member of an approver group is an approver"),
    pytest.param("sam", ["security"], True, id="a member of the required group is an approver"),
    pytest.param("mallory", ["dev"], False, id="anyone else is not an approver"),
    pytest.param("sre", [], False, id="a user named like an approver group is not an approver"),
])
def test_is_approver_knows_users_groups_and_the_required_group(
    username: str, groups: list[str], expected: bool,
) -> None:
    policy = Approvers(users=["bob"], groups=["sre"], required_from_group="security")
    assert is_approver(policy, username, groups) is expected
