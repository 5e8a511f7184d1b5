"""retention_over(): when a finished AccessRequest has been kept long enough to be deleted."""

from __future__ import annotations

import datetime

import pytest

from kubepim.api.request import AccessRequestStatus, HistoryEntry, Phase
from kubepim.domain.lifecycle import retention_over

from .builders import NOW, entry

RETENTION = datetime.timedelta(days=7)
SECOND = datetime.timedelta(seconds=1)
LONG_AGO = NOW - 30 * RETENTION


def _status(phase: Phase | None, *history: HistoryEntry) -> AccessRequestStatus:
    return AccessRequestStatus(phase=phase, history=list(history))


CASES = [
    pytest.param(_status(None, entry("Requested", LONG_AGO, "alice")), False,
                 id="a request without a phase is not over retention"),
    pytest.param(_status(Phase.PENDING, entry("Requested", LONG_AGO, "alice")), False,
                 id="a request pending for longer than retention is not over retention"),
    pytest.param(_status(Phase.ACTIVE, entry("Activated", LONG_AGO)), False,
                 id="a grant active for longer than retention is not over retention"),
    pytest.param(_status(Phase.EXPIRED, entry("Expired", NOW - RETENTION + SECOND)), False,
                 id="a finished request one second short of retention is kept"),
    pytest.param(_status(Phase.EXPIRED, entry("Expired", NOW - RETENTION)), True,
                 id="a finished request exactly at retention is over"),
    pytest.param(_status(Phase.DENIED, entry("Denied", NOW - RETENTION - SECOND, "bob")), True,
                 id="a finished request past retention is over"),
    pytest.param(_status(Phase.REVOKED, entry("Activated", LONG_AGO),
                         entry("Revoked", NOW - RETENTION + SECOND, "bob")), False,
                 id="retention counts from the last history entry, not the first"),
    pytest.param(_status(Phase.EXPIRED, entry("Activated", LONG_AGO),
                         entry("Expired", LONG_AGO + SECOND),
                         entry("Reviewed", NOW - SECOND, "carol")), False,
                 id="a review after the end restarts retention"),
    pytest.param(_status(Phase.EXPIRED), False,
                 id="a finished request without history is not over retention"),
]


@pytest.mark.parametrize(("status", "over"), CASES)
def test_only_a_finished_request_kept_for_retention_since_its_last_entry_is_over(
    status: AccessRequestStatus, over: bool,
) -> None:
    assert retention_over(status, RETENTION, NOW) is over


@pytest.mark.parametrize("phase", list(Phase), ids=lambda p: f"phase {p.value}")
def test_every_final_phase_and_no_other_can_be_over_retention(phase: Phase) -> None:
    status = _status(phase, entry(phase.value, LONG_AGO))
    assert retention_over(status, RETENTION, NOW) is phase.final
