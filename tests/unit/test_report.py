"""The compliance report: which requests count as grants in a range, and what each row says."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from kubepim.api.request import AccessRequest, AccessRequestSpec, HistoryEntry, Phase
from kubepim.domain.report import COLUMNS, GrantRow, grants

from .builders import NOW, access_request, approve, entry, request

SINCE = datetime.datetime(2026, 11, 1, tzinfo=datetime.UTC)
UNTIL = datetime.datetime(2026, 11, 15, tzinfo=datetime.UTC)
DAY = datetime.timedelta(days=1)
HOUR = datetime.timedelta(hours=1)


def _granted(activated: datetime.datetime, ended: datetime.datetime | None = None,
             **status: Any) -> AccessRequest:
    """alice's request approved by bob at ``activated``; Expired at ``ended`` unless None."""
    history = [
        entry("Requested", activated - HOUR, "alice"),
        entry("Approved", activated, "bob"),
        entry("Activated", activated),
    ]
    if ended is not None:
        history.append(entry("Expired", ended))
    fields: dict[str, Any] = {
        "phase": Phase.EXPIRED if ended else Phase.ACTIVE,
        "eligibility": "team",
        "approvals": {"bob": approve()},
        "activatedAt": activated,
        "expiresAt": activated + HOUR,
        "history": history,
    }
    return access_request(**{**fields, **status})


def _with_history(*extra: HistoryEntry, activated: datetime.datetime = SINCE + DAY,
                  **status: Any) -> AccessRequest:
    """A grant activated inside the range whose history is Requested, ``extra``."""
    return access_request(phase=Phase.EXPIRED, activatedAt=activated,
                          history=[entry("Requested", activated - HOUR, "alice"), *extra],
                          **status)


def _only(grant: AccessRequest, now: datetime.datetime = NOW) -> GrantRow:
    rows = grants({"r": grant}, SINCE, UNTIL, now)
    assert len(rows) == 1
    return rows[0]


# --- which requests are grants in the range -------------------------------------------------

NEVER_ACTIVE = access_request(phase=Phase.DENIED, history=[
    entry("Requested", SINCE + DAY, "alice"), entry("Denied", SINCE + DAY + HOUR, "bob")])

IN_RANGE = [
    pytest.param(access_request(), SINCE, UNTIL, NOW, False,
                 id="a request never reconciled is left out"),
    pytest.param(NEVER_ACTIVE, SINCE, UNTIL, NOW, False,
                 id="a request denied before it was ever activated is left out"),
    pytest.param(_granted(SINCE - 3 * DAY, SINCE - 2 * DAY), SINCE, UNTIL, NOW, False,
                 id="a grant that ended before since is left out"),
    pytest.param(_granted(UNTIL, UNTIL + HOUR), SINCE, UNTIL, NOW, False,
                 id="a grant activated exactly at until is left out"),
    pytest.param(_granted(UNTIL + DAY, UNTIL + 2 * DAY), SINCE, UNTIL, NOW, False,
                 id="a grant activated after until is left out"),
    pytest.param(_granted(SINCE - HOUR, SINCE + HOUR), SINCE, UNTIL, NOW, True,
                 id="a grant that started before since and ended inside the range is included"),
    pytest.param(_granted(UNTIL - HOUR, UNTIL + HOUR), SINCE, UNTIL, NOW, True,
                 id="a grant that started inside the range and ended after until is included"),
    pytest.param(_granted(SINCE - DAY, UNTIL + DAY), SINCE, UNTIL, NOW, True,
                 id="a grant that spans the whole range is included"),
    pytest.param(_granted(SINCE + DAY, SINCE + DAY + HOUR), SINCE, UNTIL, NOW, True,
                 id="a grant entirely inside the range is included"),
    pytest.param(_granted(SINCE, SINCE + HOUR), SINCE, UNTIL, NOW, True,
                 id="a grant activated exactly at since is included"),
    pytest.param(_granted(UNTIL - datetime.timedelta(seconds=1)), SINCE, UNTIL, NOW, True,
                 id="a grant activated one second before until is included"),
    pytest.param(_granted(SINCE - DAY), SINCE, UNTIL, NOW, True,
                 id="a still-active grant that started before since runs until now and is "
                    "included"),
    pytest.param(_granted(NOW - DAY), NOW + DAY, NOW + 2 * DAY, NOW, False,
                 id="a still-active grant runs only until now, so a range after now leaves it "
                    "out"),
    pytest.param(_granted(NOW - DAY), NOW, NOW + DAY, NOW, True,
                 id="a still-active grant is included in a range that starts at now"),
    pytest.param(
        _granted(SINCE - DAY, SINCE - HOUR, history=[
            entry("Activated", SINCE - DAY), entry("Revoked", SINCE - HOUR, "bob")]),
        SINCE, UNTIL, NOW, False,
        id="a grant revoked before since is left out"),
    pytest.param(
        _granted(SINCE - DAY, None, history=[entry("Activated", SINCE - DAY),
                                             entry("Reviewed", SINCE - HOUR, "carol")]),
        SINCE, UNTIL, NOW, True,
        id="a grant whose history has no Expired or Revoked entry is still running"),
    pytest.param(
        _granted(SINCE - DAY, SINCE), SINCE, UNTIL, NOW, False,
        id="a grant that ended exactly at since held no access in the range and is left out"),
]


@pytest.mark.parametrize(("grant", "since", "until", "now", "included"), IN_RANGE)
def test_a_request_is_reported_only_if_its_access_overlapped_the_range(
    grant: AccessRequest, since: datetime.datetime, until: datetime.datetime,
    now: datetime.datetime, included: bool,
) -> None:
    rows = grants({"alice-db-reader": grant}, since, until, now)
    assert [r.request for r in rows] == (["alice-db-reader"] if included else [])


# --- what a row says ------------------------------------------------------------------------

def test_a_finished_grant_row_carries_who_what_where_when_and_why() -> None:
    grant = _granted(
        SINCE + DAY, SINCE + DAY + HOUR,
        reviewedBy="carol",
    ).model_copy(update={"spec": request(ticket="INC-42")})
    assert _only(grant) == GrantRow(
        request="r",
        requester="alice",
        role="Role/db-reader",
        namespace="payments",
        activated_at="2026-11-02T00:00:00Z",
        ended_at="2026-11-02T01:00:00Z",
        ended_by="kubepim",
        outcome="Expired",
        approved_by="bob",
        justification="INC-42: look at stuck payments",
        ticket="INC-42",
        break_glass=False,
        reviewed_by="carol",
    )


def test_a_still_active_grant_has_no_end_and_reads_active() -> None:
    row = _only(_granted(SINCE + DAY))
    assert (row.ended_at, row.ended_by, row.outcome) == ("", "", "Active")


def test_a_time_with_an_offset_is_reported_in_utc_with_a_z() -> None:
    activated = datetime.datetime(2026, 11, 2, 10, 0, tzinfo=datetime.timezone(
        datetime.timedelta(hours=2)))
    assert _only(_granted(activated)).activated_at == "2026-11-02T08:00:00Z"


T1 = SINCE + DAY
T2 = T1 + HOUR

ENDINGS = [
    pytest.param([entry("Activated", T1), entry("Expired", T2)],
                 ("2026-11-02T01:00:00Z", "kubepim"),
                 id="an expired grant ended at its Expired entry, by kubepim"),
    pytest.param([entry("Activated", T1), entry("Revoked", T2, "bob")],
                 ("2026-11-02T01:00:00Z", "bob"),
                 id="a revoked grant ended at its Revoked entry, by the revoker"),
    pytest.param([entry("Activated", T1), entry("Expired", T2),
                  entry("Reviewed", T2 + HOUR, "carol")],
                 ("2026-11-02T01:00:00Z", "kubepim"),
                 id="a Reviewed entry after the end does not move the end"),
    pytest.param([entry("Activated", T1), entry("Revoked", T2, "bob"),
                  entry("Expired", T2 + HOUR)],
                 ("2026-11-02T02:00:00Z", "kubepim"),
                 id="of two ending entries the last one counts"),
    pytest.param([entry("Activated", T1), entry("Expired", T2),
                  entry("Revoked", T2 + HOUR, "dave")],
                 ("2026-11-02T02:00:00Z", "dave"),
                 id="a Revoked entry after an Expired one counts, being the last"),
]


@pytest.mark.parametrize(("history", "end"), ENDINGS)
def test_the_end_of_a_grant_comes_from_its_last_expired_or_revoked_entry(
    history: list[HistoryEntry], end: tuple[str, str],
) -> None:
    row = _only(_with_history(*history, activated=T1))
    assert (row.ended_at, row.ended_by) == end


APPROVERS = [
    pytest.param([entry("Approved", T1, "bob")], "bob", id="a single approver is listed"),
    pytest.param([entry("Approved", T1, "bob"), entry("Approved", T1, "carol")], "bob; carol",
                 id="the approvers of several Approved entries are joined with semicolons"),
    pytest.param([entry("Approved", T1)], "kubepim",
                 id="an auto-approved grant lists kubepim as its approver"),
    pytest.param([entry("BreakGlass", T1, "alice")], "alice",
                 id="a break-glass grant lists who broke the glass"),
    pytest.param([entry("BreakGlass", T1, "alice"), entry("Reviewed", T2, "carol")], "alice",
                 id="the reviewer of a break-glass grant is not listed as an approver"),
    pytest.param([], "", id="a grant with no Approved or BreakGlass entry lists nobody"),
]


@pytest.mark.parametrize(("history", "approved_by"), APPROVERS)
def test_approved_by_lists_the_actors_of_approved_and_break_glass_entries(
    history: list[HistoryEntry], approved_by: str,
) -> None:
    grant = _with_history(*history, entry("Activated", T1), entry("Expired", T2), activated=T1)
    assert _only(grant).approved_by == approved_by


WHERE = [
    pytest.param(request(), "payments", id="a namespaced grant shows its namespace"),
    pytest.param(request(role={"kind": "ClusterRole", "name": "view"}, namespace=None),
                 "(cluster-wide)", id="a cluster-wide grant shows (cluster-wide)"),
]


@pytest.mark.parametrize(("spec", "namespace"), WHERE)
def test_the_namespace_column_names_where_the_grant_applied(
    spec: AccessRequestSpec, namespace: str,
) -> None:
    grant = _granted(T1).model_copy(update={"spec": spec})
    assert _only(grant).namespace == namespace


def test_rows_are_sorted_by_activation_time_then_by_name() -> None:
    requests = {
        "c-late": _granted(SINCE + 3 * DAY),
        "b-tie": _granted(SINCE + DAY),
        "z-first": _granted(SINCE - DAY),
        "a-tie": _granted(SINCE + DAY),
    }
    rows = grants(requests, SINCE, UNTIL, NOW)
    assert [r.request for r in rows] == ["z-first", "a-tie", "b-tie", "c-late"]


def test_rows_are_sorted_chronologically_even_when_only_some_times_have_fractions() -> None:
    whole = SINCE + 8 * HOUR
    requests = {
        "a-later": _granted(whole + datetime.timedelta(milliseconds=500)),
        "b-earlier": _granted(whole),
    }
    rows = grants(requests, SINCE, UNTIL, NOW)
    assert [r.request for r in rows] == ["b-earlier", "a-later"]


def test_a_row_as_a_mapping_has_exactly_the_columns_in_order() -> None:
    row = _only(_granted(T1, T2))
    assert tuple(row.as_dict()) == COLUMNS
    assert row.as_dict()["request"] == "r"


def test_a_grant_ended_idle_ends_there_and_its_row_says_what_it_was_used_for() -> None:
    grant = _granted(SINCE + DAY, None, phase=Phase.EXPIRED, history=[
        entry("Activated", SINCE + DAY), entry("Idle", SINCE + DAY + HOUR)],
        activity={"requests": 14, "lastUse": SINCE + DAY + datetime.timedelta(minutes=5),
                  "operations": [{"verb": "get", "resource": "pods", "count": 12},
                                 {"verb": "get", "resource": "pods/log", "count": 2}],
                  "otherOperations": 3, "denied": 1})
    row = _only(grant)
    assert (row.ended_at, row.ended_by) == ("2026-11-02T01:00:00Z", "kubepim")
    assert (row.used, row.last_used, row.denied, row.other_bindings) == (
        14, "2026-11-02T00:05:00Z", 1, 0)
    assert row.operations == "get pods 12; get pods/log 2; other 3"
    unused = _only(_granted(SINCE + DAY, SINCE + DAY + HOUR))  # no audit sink: columns empty
    assert (unused.used, unused.operations, unused.last_used) == (0, "", "")
