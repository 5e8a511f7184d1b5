"""Eligibility review: who is covered, where, for which role, how long, and on what terms."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from kubepim.api.common import LabelSelector
from kubepim.api.eligibility import RoleEligibilitySpec
from kubepim.api.request import AccessRequestSpec
from kubepim.domain.review import Accepted, Refused, review, selector_matches

from .builders import PAYMENTS_LABELS, eligibility, request

H = datetime.timedelta(hours=1)
SA_DEPLOYER = "system:serviceaccount:ci:deployer"


def _as(username: str, *groups: str) -> dict[str, Any]:
    return {"username": username, "groups": list(groups)}


def _selector(**fields: Any) -> dict[str, Any]:
    return {"namespaces": [], "namespaceSelector": fields}


ACCEPTED = [
    pytest.param(request(), {"team": eligibility()}, PAYMENTS_LABELS, Accepted("team", H),
                 id="a user named as a subject is accepted for the default duration"),
    pytest.param(request(requester=_as("carol", "dba")),
                 {"team": eligibility(subjects=[{"kind": "Group", "name": "dba"}])},
                 PAYMENTS_LABELS, Accepted("team", H),
                 id="a member of a group named as a subject is accepted"),
    pytest.param(request(requester=_as(SA_DEPLOYER, "system:serviceaccounts")),
                 {"team": eligibility(subjects=[
                     {"kind": "ServiceAccount", "name": "deployer", "namespace": "ci"}])},
                 PAYMENTS_LABELS, Accepted("team", H),
                 id="a ServiceAccount named as a subject is accepted under its username"),
    pytest.param(request(), {"team": eligibility(**_selector(matchLabels={"team": "payments"}))},
                 PAYMENTS_LABELS, Accepted("team", H),
                 id="a namespace outside the list is accepted when its labels match the selector"),
    pytest.param(request(namespace=None, role={"kind": "ClusterRole", "name": "view"}),
                 {"team": eligibility(clusterWide=True,
                                      roles=[{"kind": "ClusterRole", "name": "view"}])},
                 None, Accepted("team", H),
                 id="a cluster-wide request is accepted when the eligibility is clusterWide"),
    pytest.param(request(), {"team": eligibility(defaultDuration="2h")}, PAYMENTS_LABELS,
                 Accepted("team", 2 * H),
                 id="a request without a duration gets the eligibility's default duration"),
    pytest.param(request(duration="1h30m"), {"team": eligibility()}, PAYMENTS_LABELS,
                 Accepted("team", 1.5 * H),
                 id="a request's own duration within the maximum is kept"),
    pytest.param(request(duration="8h"), {"team": eligibility()}, PAYMENTS_LABELS,
                 Accepted("team", 8 * H), id="a duration equal to the maximum is accepted"),
    pytest.param(request(justification=""),
                 {"team": eligibility(justification={"required": False})}, PAYMENTS_LABELS,
                 Accepted("team", H),
                 id="an empty justification is accepted when the policy does not require one"),
    pytest.param(request(ticket="INC-42"),
                 {"team": eligibility(justification={"ticketPattern": "INC-[0-9]+"})},
                 PAYMENTS_LABELS, Accepted("team", H),
                 id="a ticket matching the ticket pattern is accepted"),
    pytest.param(request(), {"b-team": eligibility(), "a-team": eligibility()}, PAYMENTS_LABELS,
                 Accepted("a-team", H),
                 id="of two covering eligibilities the first by name governs"),
    pytest.param(request(eligibility="b-team"), {"b-team": eligibility(), "a-team": eligibility()},
                 PAYMENTS_LABELS, Accepted("b-team", H),
                 id="an explicitly named eligibility governs even when another comes first"),
    pytest.param(request(duration="4h"),
                 {"a-short": eligibility(maxDuration="1h"), "b-long": eligibility()},
                 PAYMENTS_LABELS, Accepted("b-long", 4 * H),
                 id="an eligibility whose terms refuse is skipped for one whose terms accept"),
]


@pytest.mark.parametrize(("spec", "eligibilities", "labels", "expected"), ACCEPTED)
def test_covered_requests_are_accepted_on_the_governing_terms(
    spec: AccessRequestSpec, eligibilities: dict[str, RoleEligibilitySpec],
    labels: dict[str, str] | None, expected: Accepted,
) -> None:
    assert review(spec, eligibilities, labels) == expected


REFUSED = [
    pytest.param(request(requester=None), {"team": eligibility()}, PAYMENTS_LABELS,
                 "the request has no requester: the kubepim admission policy is not installed "
                 "(charts/kubepim/files/admission)",
                 id="a request without a requester is refused and names the missing admission"),
    pytest.param(request(), {"team": eligibility()}, None,
                 "namespace payments does not exist",
                 id="a request for a namespace that does not exist is refused"),
    pytest.param(request(eligibility="other"), {"team": eligibility()}, PAYMENTS_LABELS,
                 "RoleEligibility other does not exist",
                 id="an explicitly named eligibility that does not exist is refused"),
    pytest.param(request(requester=_as("mallory", "dev")), {"team": eligibility()},
                 PAYMENTS_LABELS, "mallory is not a subject of any RoleEligibility",
                 id="a user named nowhere is refused"),
    pytest.param(request(requester=_as("carol", "dev")),
                 {"team": eligibility(subjects=[{"kind": "Group", "name": "dba"}])},
                 PAYMENTS_LABELS, "carol is not a subject of any RoleEligibility",
                 id="a user outside the eligible group is refused"),
    pytest.param(request(requester=_as("dba")),
                 {"team": eligibility(subjects=[{"kind": "Group", "name": "dba"}])},
                 PAYMENTS_LABELS, "dba is not a subject of any RoleEligibility",
                 id="a user whose name equals an eligible group's name is refused"),
    pytest.param(request(requester=_as("system:serviceaccount:other:deployer")),
                 {"team": eligibility(subjects=[
                     {"kind": "ServiceAccount", "name": "deployer", "namespace": "ci"}])},
                 PAYMENTS_LABELS,
                 "system:serviceaccount:other:deployer is not a subject of any RoleEligibility",
                 id="a ServiceAccount of the same name in another namespace is refused"),
    pytest.param(request(requester=_as("deployer")),
                 {"team": eligibility(subjects=[
                     {"kind": "ServiceAccount", "name": "deployer", "namespace": "ci"}])},
                 PAYMENTS_LABELS, "deployer is not a subject of any RoleEligibility",
                 id="a user named like an eligible ServiceAccount is refused"),
    pytest.param(request(eligibility="ops"),
                 {"team": eligibility(),
                  "ops": eligibility(subjects=[{"kind": "User", "name": "bob"}])},
                 PAYMENTS_LABELS, "alice is not a subject of RoleEligibility ops",
                 id="an explicitly named eligibility that does not name the requester is refused"),
    pytest.param(request(namespace="staging"), {"team": eligibility()},
                 {"kubernetes.io/metadata.name": "staging"},
                 "alice is not eligible for any role in namespace staging",
                 id="a namespace neither listed nor selected is refused"),
    pytest.param(request(), {"team": eligibility(**_selector(matchLabels={"team": "orders"}))},
                 PAYMENTS_LABELS, "alice is not eligible for any role in namespace payments",
                 id="a namespace whose labels do not match the selector is refused"),
    pytest.param(request(), {"team": eligibility(**_selector())},
                 PAYMENTS_LABELS, "alice is not eligible for any role in namespace payments",
                 id="an empty namespace selector selects no namespace"),
    pytest.param(request(namespace=None, role={"kind": "ClusterRole", "name": "view"}),
                 {"team": eligibility(roles=[{"kind": "ClusterRole", "name": "view"}])}, None,
                 "alice is not eligible for any role cluster-wide",
                 id="a cluster-wide request is refused unless the eligibility is clusterWide"),
    pytest.param(request(role={"kind": "Role", "name": "db-admin"}),
                 {"team": eligibility(roles=[{"kind": "Role", "name": "db-reader"},
                                             {"kind": "ClusterRole", "name": "view"}])},
                 PAYMENTS_LABELS,
                 "alice is not eligible for Role/db-admin in namespace payments: "
                 "eligible roles there are [ClusterRole/view, Role/db-reader]",
                 id="a role outside the eligibility is refused and the eligible roles are named"),
    pytest.param(request(role={"kind": "ClusterRole", "name": "db-reader"}),
                 {"team": eligibility()}, PAYMENTS_LABELS,
                 "alice is not eligible for ClusterRole/db-reader in namespace payments: "
                 "eligible roles there are [Role/db-reader]",
                 id="a ClusterRole is not the Role of the same name"),
    pytest.param(request(duration="9h"), {"team": eligibility()}, PAYMENTS_LABELS,
                 "duration 9h exceeds the maximum 8h of RoleEligibility team",
                 id="a duration over the maximum is refused and the maximum is named"),
    pytest.param(request(duration="8h0m1s"), {"team": eligibility()}, PAYMENTS_LABELS,
                 "duration 8h0m1s exceeds the maximum 8h of RoleEligibility team",
                 id="one second over the maximum is refused"),
    pytest.param(request(justification=""), {"team": eligibility()}, PAYMENTS_LABELS,
                 "RoleEligibility team requires a justification: set spec.justification",
                 id="an empty justification is refused when one is required"),
    pytest.param(request(justification="   "), {"team": eligibility()}, PAYMENTS_LABELS,
                 "RoleEligibility team requires a justification: set spec.justification",
                 id="a blank justification counts as none"),
    pytest.param(request(), {"team": eligibility(justification={"ticketPattern": "INC-[0-9]+"})},
                 PAYMENTS_LABELS,
                 "RoleEligibility team requires spec.ticket matching INC-[0-9]+",
                 id="a missing ticket is refused when the eligibility has a ticket pattern"),
    pytest.param(request(ticket="see INC-42"),
                 {"team": eligibility(justification={"ticketPattern": "INC-[0-9]+"})},
                 PAYMENTS_LABELS,
                 "RoleEligibility team requires spec.ticket matching INC-[0-9]+",
                 id="a ticket that only contains a match is refused as the whole must match"),
    pytest.param(request(ticket="INC-" + "1" * 64 + "x"),
                 {"team": eligibility(justification={"ticketPattern": r"INC-(\d+,?)+"})},
                 PAYMENTS_LABELS,
                 r"RoleEligibility team requires spec.ticket matching INC-(\d+,?)+",
                 id="a pattern that backtracks in Python's re is matched in linear time by RE2"),
    pytest.param(request(duration="9h", justification=""),
                 {"a": eligibility(), "b": eligibility(maxDuration="10h")}, PAYMENTS_LABELS,
                 "duration 9h exceeds the maximum 8h of RoleEligibility a; "
                 "RoleEligibility b requires a justification: set spec.justification",
                 id="when every fitting eligibility refuses all their reasons are given"),
]


@pytest.mark.parametrize(("spec", "eligibilities", "labels", "message"), REFUSED)
def test_uncovered_requests_are_refused_with_a_message_that_says_why(
    spec: AccessRequestSpec, eligibilities: dict[str, RoleEligibilitySpec],
    labels: dict[str, str] | None, message: str,
) -> None:
    assert review(spec, eligibilities, labels) == Refused(message)


EXPRESSIONS = [
    pytest.param({"key": "tier", "operator": "In", "values": ["prod", "stage"]}, True,
                 id="In matches when the value is one of the values"),
    pytest.param({"key": "tier", "operator": "In", "values": ["dev"]}, False,
                 id="In does not match another value"),
    pytest.param({"key": "owner", "operator": "In", "values": ["payments"]}, False,
                 id="In does not match when the key is absent"),
    pytest.param({"key": "tier", "operator": "NotIn", "values": ["prod"]}, False,
                 id="NotIn does not match when the value is one of the values"),
    pytest.param({"key": "tier", "operator": "NotIn", "values": ["dev"]}, True,
                 id="NotIn matches another value"),
    pytest.param({"key": "owner", "operator": "NotIn", "values": ["payments"]}, True,
                 id="NotIn matches when the key is absent"),
    pytest.param({"key": "tier", "operator": "Exists"}, True,
                 id="Exists matches when the key is present"),
    pytest.param({"key": "owner", "operator": "Exists"}, False,
                 id="Exists does not match when the key is absent"),
    pytest.param({"key": "owner", "operator": "DoesNotExist"}, True,
                 id="DoesNotExist matches when the key is absent"),
    pytest.param({"key": "tier", "operator": "DoesNotExist"}, False,
                 id="DoesNotExist does not match when the key is present"),
]


@pytest.mark.parametrize(("requirement", "expected"), EXPRESSIONS)
def test_match_expressions_follow_kubernetes_semantics(
    requirement: dict[str, Any], expected: bool,
) -> None:
    selector = LabelSelector.model_validate({"matchExpressions": [requirement]})
    assert selector_matches(selector, PAYMENTS_LABELS) is expected


@pytest.mark.parametrize(("selector", "expected"), [
    pytest.param({}, False, id="an empty selector matches nothing"),
    pytest.param({"matchLabels": {"team": "payments", "tier": "prod"}}, True,
                 id="matchLabels match when every label has its value"),
    pytest.param({"matchLabels": {"team": "payments", "tier": "dev"}}, False,
                 id="matchLabels do not match when one label differs"),
    pytest.param({"matchLabels": {"team": "payments"},
                  "matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["prod"]}]},
                 False, id="matchLabels and matchExpressions must both hold"),
    pytest.param({"matchExpressions": [{"key": "tier", "operator": "Exists"},
                                       {"key": "team", "operator": "In", "values": ["payments"]}]},
                 True, id="several matchExpressions match when all hold"),
])
def test_selectors_combine_their_requirements_with_and(
    selector: dict[str, Any], expected: bool,
) -> None:
    assert selector_matches(LabelSelector.model_validate(selector), PAYMENTS_LABELS) is expected


@pytest.mark.parametrize(("expression", "accepted"), [
    pytest.param({"key": "tier", "operator": "In", "values": ["prod"]}, True,
                 id="a namespace selected by an In expression is covered"),
    pytest.param({"key": "tier", "operator": "NotIn", "values": ["prod"]}, False,
                 id="a namespace excluded by a NotIn expression is not covered"),
    pytest.param({"key": "team", "operator": "Exists"}, True,
                 id="a namespace selected by an Exists expression is covered"),
    pytest.param({"key": "team", "operator": "DoesNotExist"}, False,
                 id="a namespace excluded by a DoesNotExist expression is not covered"),
])
def test_namespace_selector_expressions_decide_coverage(
    expression: dict[str, Any], accepted: bool,
) -> None:
    policy = eligibility(**_selector(matchExpressions=[expression]))
    verdict = review(request(), {"team": policy}, PAYMENTS_LABELS)
    assert isinstance(verdict, Accepted) is accepted


class _Reads(dict[str, RoleEligibilitySpec]):
    """Eligibilities that remember which were read."""

    def __init__(self, items: dict[str, RoleEligibilitySpec]) -> None:
        super().__init__(items)
        self.read: set[str] = set()

    def __getitem__(self, name: str) -> RoleEligibilitySpec:
        self.read.add(name)
        return super().__getitem__(name)


def test_the_governing_eligibility_is_tried_alone_first_with_the_same_answer() -> None:
    many = {f"e{i:04d}": eligibility(subjects=[{"kind": "User", "name": f"user-{i}"}])
            for i in range(50)}
    many["payments"] = eligibility()
    reads = _Reads(many)
    verdict = review(request(), reads, PAYMENTS_LABELS, prefer="payments")
    assert isinstance(verdict, Accepted) and verdict.eligibility == "payments"
    assert reads.read == {"payments"}  # no other eligibility's subjects scanned
    assert verdict == review(request(), many, PAYMENTS_LABELS)  # the same as the full scan
    # The governing one no longer accepts: every eligibility is considered, as before.
    many["payments"] = eligibility(roles=[{"kind": "Role", "name": "other"}])
    many["z-later"] = eligibility()
    reads = _Reads(many)
    moved = review(request(), reads, PAYMENTS_LABELS, prefer="payments")
    assert isinstance(moved, Accepted) and moved.eligibility == "z-later"
    assert len(reads.read) == len(many)
