"""Attribution of audit events to grants, and the bounded activity summary (domain/activity.py)."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from kubepim.api.request import Activity, Operation
from kubepim.domain import activity
from kubepim.domain.activity import Grant, Tally

T0 = datetime.datetime(2026, 11, 27, 10, 0, tzinfo=datetime.UTC)


def event(audit_id: str = "a-1", user: str = "alice", verb: str = "get",
          resource: str = "pods", namespace: str = "team-a", stage: str = "ResponseComplete",
          reason: str | None = 'RBAC: allowed by RoleBinding "kubepim-r/team-a" of Role '
                               '"pod-reader" to User "alice"',
          decision: str = "allow", at: datetime.datetime = T0 + datetime.timedelta(minutes=1),
          impersonated: bool = True, **ref: str) -> dict[str, Any]:
    annotations = {"authorization.k8s.io/decision": decision}
    if reason is not None:
        annotations["authorization.k8s.io/reason"] = reason
    body: dict[str, Any] = {
        "auditID": audit_id, "stage": stage, "verb": verb, "level": "Metadata",
        "user": {"username": "kubernetes-admin" if impersonated else user},
        "objectRef": {"resource": resource, "namespace": namespace, **ref},
        "responseStatus": {"code": 200 if decision == "allow" else 403},
        "requestReceivedTimestamp": at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "annotations": annotations}
    if impersonated:
        body["impersonatedUser"] = {"username": user}
    return body


GRANT = Grant(request="r", uid="u-1", username="alice",
              binding=("RoleBinding", "team-a", "kubepim-r"), activated_at=T0,
              ends_at=T0 + datetime.timedelta(minutes=15))
BY_BINDING = {GRANT.binding: GRANT}
BY_USER = {"alice": [GRANT]}


@pytest.mark.parametrize(("reason", "key"), [
    ('RBAC: allowed by RoleBinding "kubepim-r/team-a" of Role "pod-reader" to User "alice"',
     ("RoleBinding", "team-a", "kubepim-r")),
    ('RBAC: allowed by ClusterRoleBinding "kubepim-c" of ClusterRole "view" to User "alice"',
     ("ClusterRoleBinding", "", "kubepim-c")),
    ('RBAC: allowed by RoleBinding "dev/team-a" of ClusterRole "edit" to ServiceAccount '
     '"ci/team-a"', ("RoleBinding", "team-a", "dev")),
    ("", None), ("internal error", None),
    ('RBAC: allowed by RoleBinding "no-namespace" of Role "x" to User "a"', None),
])
def test_the_rbac_reason_names_the_binding(reason: str, key: Any) -> None:
    assert activity.parse_reason(reason) == key


def test_a_request_allowed_by_the_grants_binding_counts_to_the_grant() -> None:
    seen = activity.reduce(event())
    assert seen is not None and seen.username == "alice"  # the impersonated user, not the admin
    assert activity.attribute(seen, BY_BINDING, BY_USER) == [(GRANT, "grant")]


def test_requests_by_the_subject_allowed_otherwise_or_refused_are_counted_apart() -> None:
    other = activity.reduce(event(reason='RBAC: allowed by ClusterRoleBinding "old-admins" of '
                                         'ClusterRole "admin" to User "alice"'))
    denied = activity.reduce(event(decision="forbid", reason=""))
    assert other is not None and denied is not None and not denied.allowed
    assert activity.attribute(other, BY_BINDING, BY_USER) == [(GRANT, "other-binding")]
    assert activity.attribute(denied, BY_BINDING, BY_USER) == [(GRANT, "denied")]
    # Outside the grant's window, or by someone else: nobody's.
    late = activity.reduce(event(decision="forbid", at=T0 + datetime.timedelta(hours=1)))
    bob = activity.reduce(event(user="bob", reason=None, decision="forbid"))
    assert late is not None and bob is not None
    assert activity.attribute(late, BY_BINDING, BY_USER) == []
    assert activity.attribute(bob, BY_BINDING, BY_USER) == []


def test_a_binding_named_for_another_user_does_not_count_to_the_grant() -> None:
    # (a binding of the same name remade by someone else for bob: not alice's grant's use)
    seen = activity.reduce(event(user="bob"))
    assert seen is not None
    assert activity.attribute(seen, BY_BINDING, BY_USER) == []


def test_only_the_stages_that_end_a_request_count_and_ill_formed_events_are_skipped() -> None:
    assert activity.reduce(event(stage="RequestReceived")) is None
    assert activity.reduce(event(audit_id="")) is None
    assert activity.reduce({"stage": "ResponseComplete", "auditID": "x"}) is None  # no time
    assert activity.reduce("not an event") is None  # type: ignore[arg-type]
    logs = activity.reduce(event(subresource="log", stage="ResponseStarted"))
    apps = activity.reduce(event(resource="deployments", apiGroup="apps"))
    assert logs is not None and logs.resource == "pods/log"
    assert apps is not None and apps.resource == "deployments.apps"


def test_the_tally_merges_into_a_bounded_summary_most_frequent_first() -> None:
    tally = Tally()
    for n in range(3):
        seen = activity.reduce(event(audit_id=f"g{n}", at=T0 + datetime.timedelta(seconds=n)))
        assert seen is not None
        tally.add(seen, "grant")
    logs = activity.reduce(event(audit_id="l", subresource="log", stage="ResponseStarted"))
    assert logs is not None
    tally.add(logs, "grant")
    tally.add(logs, "denied")
    recorded = Activity(requests=5, first_use=T0 - datetime.timedelta(minutes=1),
                        last_use=T0, operations=[Operation(verb="get", resource="pods/log",
                                                           count=5)], audit_ids=["old"])
    result = activity.merged(recorded, tally)
    assert result.requests == 9 and result.denied == 1
    assert result.first_use == T0 - datetime.timedelta(minutes=1)
    assert result.last_use == T0 + datetime.timedelta(minutes=1)
    assert [(o.verb, o.resource, o.count) for o in result.operations] == [
        ("get", "pods/log", 6), ("get", "pods", 3)]
    assert result.audit_ids == ["g0", "g1", "g2", "l", "l"]  # this write's ids only
    assert activity.summary(result) == "used 9 times (get pods/log 6, get pods 3); 1 denied"
    assert activity.summary(None) == "not used"


def test_operations_beyond_the_listed_ones_are_only_counted() -> None:
    tally = Tally()
    for n in range(activity.OPERATIONS + 3):
        seen = activity.reduce(event(audit_id=f"x{n}", resource=f"things{n:02d}"))
        assert seen is not None
        tally.add(seen, "grant")
    result = activity.merged(None, tally)
    assert len(result.operations) == activity.OPERATIONS
    assert result.other_operations == 3 and result.requests == activity.OPERATIONS + 3


def test_a_grant_never_used_is_idle_from_its_activation() -> None:
    idle = datetime.timedelta(seconds=20)
    assert activity.idle_deadline(T0, None, idle) == T0 + idle
    used = T0 + datetime.timedelta(seconds=15)
    assert activity.idle_deadline(T0, used, idle) == used + idle
    # (a use recorded before activation, by a predecessor's binding: activation counts)
    assert activity.idle_deadline(T0, T0 - idle, idle) == T0 + idle


def test_a_write_that_landed_though_its_answer_was_lost_is_not_counted_again() -> None:
    tally = Tally()
    for n in range(2):
        seen = activity.reduce(event(audit_id=f"g{n}"))
        assert seen is not None
        tally.add(seen, "grant")
    landed = activity.merged(None, tally)
    assert landed.requests == 2
    again = activity.merged(landed, tally)  # the same events, written again on its version
    assert again.requests == 2 and again.audit_ids == ["g0", "g1"]


def test_a_long_running_request_counts_once_at_its_start_not_again_at_its_end() -> None:
    # kubectl logs -f, a watch: ResponseStarted first, ResponseComplete maybe an hour later
    # (after a failover, with its id long forgotten): one request.
    assert activity.reduce(event(stage="ResponseStarted", subresource="log")) is not None
    assert activity.reduce(event(stage="ResponseComplete", subresource="log")) is None
    assert activity.reduce(event(stage="ResponseComplete", verb="watch")) is None
    assert activity.reduce(event(stage="ResponseComplete", verb="get")) is not None


def test_a_request_through_the_binding_name_before_the_activation_is_not_this_grants() -> None:
    # A request made again under its name has the same binding name as its predecessor.
    early = activity.reduce(event(at=T0 - datetime.timedelta(minutes=1)))
    skewed = activity.reduce(event(at=T0 - datetime.timedelta(seconds=2)))
    assert early is not None and skewed is not None
    assert activity.attribute(early, BY_BINDING, BY_USER) == []
    assert activity.attribute(skewed, BY_BINDING, BY_USER) == [(GRANT, "grant")]  # clock skew
