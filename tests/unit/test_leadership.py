"""Leadership decisions on this replica's monotonic clock: remote clocks never decide."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from kubepim.domain.leadership import LeaseState, next_step, observe, still_leader
from kubepim.engine.leadership import LeaderElector
from kubepim.k8s.client import Conflict


def lease(holder: str | None, record: str = "r1", duration: float = 10.0) -> LeaseState:
    return LeaseState(holder=holder, record=record, duration=duration)


def test_a_free_or_missing_lease_is_taken_and_our_own_is_renewed() -> None:
    assert next_step(None, "me", None, 0.0) == "acquire"
    assert next_step(lease(""), "me", None, 0.0) == "acquire"
    assert next_step(lease("me"), "me", None, 0.0) == "renew"


def test_another_holders_lease_is_taken_only_after_it_stood_still_for_its_duration_here() -> None:
    seen = observe(None, lease("other"), now=100.0)
    assert next_step(lease("other"), "me", seen, 109.9) == "standby"
    assert next_step(lease("other"), "me", seen, 110.0) == "acquire"


def test_a_renewal_restarts_the_count_whatever_time_it_claims() -> None:
    seen = observe(None, lease("other", "2020-01-01T00:00:00Z/5"), now=100.0)
    # The holder's clock is years behind; it still renews: the record changes, we wait again.
    seen = observe(seen, lease("other", "2020-01-01T00:00:02Z/6"), now=108.0)
    assert seen is not None and seen.since == 108.0
    assert next_step(lease("other", "2020-01-01T00:00:02Z/6"), "me", seen, 115.0) == "standby"


@pytest.mark.parametrize("claimed", ["2099-01-01T00:00:00Z/7", "1999-01-01T00:00:00Z/7"],
                         ids=["holder clock far ahead", "holder clock far behind"])
def test_a_skewed_remote_clock_neither_delays_nor_hastens_a_takeover(claimed: str) -> None:
    seen = observe(None, lease("other", claimed), now=50.0)
    assert next_step(lease("other", claimed), "me", seen, 59.0) == "standby"
    assert next_step(lease("other", claimed), "me", seen, 60.0) == "acquire"


def test_a_leader_stops_acting_a_margin_before_anyone_may_take_over() -> None:
    assert still_leader(sent_at=100.0, duration=10.0, margin=2.0, now=107.9)
    assert not still_leader(sent_at=100.0, duration=10.0, margin=2.0, now=108.0)
    assert not still_leader(sent_at=None, duration=10.0, margin=2.0, now=0.0)


class FakeLeases:
    """A Lease store like the API server's: writes need the version read."""

    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.version = 0
        self.fail = False

    async def get_lease(self, name: str, namespace: str) -> dict[str, Any] | None:
        if self.fail:
            raise ConnectionError("API server unreachable")
        return self.lease

    async def write_lease(self, name: str, namespace: str, spec: dict[str, Any],
                          version: str | None) -> None:
        if self.fail:
            raise ConnectionError("API server unreachable")
        current = self.lease["metadata"]["resourceVersion"] if self.lease else None
        if version != current:
            raise Conflict(409, "changed")
        self.version += 1
        self.lease = {"metadata": {"resourceVersion": str(self.version)}, "spec": spec}


def test_an_elector_that_cannot_renew_stops_leading_at_its_deadline_and_resets() -> None:
    async def scenario() -> None:
        clock = [0.0]
        events: list[str] = []

        async def elected() -> None:
            events.append("elected")

        async def lost() -> None:
            events.append("lost")

        store = FakeLeases()
        elector = LeaderElector(store, "ns", "lease", "me", 10.0, elected, lost,  # type: ignore[arg-type]
                                clock=lambda: clock[0])
        await elector.tick()
        await elector.takeover_done(timeout=5)
        assert elector.leading() and events == ["elected"]
        store.fail = True
        clock[0] = 7.9
        assert elector.leading()
        clock[0] = 8.0  # sent_at 0 + 10 s - 2 s margin: others may start counting soon
        assert not elector.leading()
        assert elector.elected()  # in doubt, not yet given up: keys are kept
        # run() gives up after a failed round past the deadline
        runner = asyncio.create_task(elector.run())
        for _ in range(400):
            if "lost" in events:
                break
            await asyncio.sleep(0.01)
        runner.cancel()
        assert events == ["elected", "lost"] and not elector.elected()

    asyncio.run(scenario())


def test_a_standby_takes_the_lease_after_the_holder_stops_renewing() -> None:
    async def scenario() -> None:
        clock = [0.0]
        store = FakeLeases()
        store.lease = {"metadata": {"resourceVersion": "1"},
                       "spec": {"holderIdentity": "other", "leaseDurationSeconds": 10,
                                "renewTime": "2099-01-01T00:00:00.000000Z"}}

        async def nothing() -> None:
            return None

        elector = LeaderElector(store, "ns", "lease", "me", 10.0, nothing,  # type: ignore[arg-type]
                                clock=lambda: clock[0])
        await elector.tick()
        assert not elector.elected()
        clock[0] = 9.0
        await elector.tick()
        assert not elector.elected()
        clock[0] = 10.0
        await elector.tick()
        assert elector.leading()
        assert store.lease is not None and store.lease["spec"]["holderIdentity"] == "me"
        assert store.lease["spec"]["leaseTransitions"] == 1

    asyncio.run(scenario())


def test_a_leader_paused_past_its_lease_that_finds_it_released_starts_a_new_term() -> None:
    async def scenario() -> list[str]:
        events: list[str] = []

        async def elected() -> None:
            events.append("elected")

        async def lost() -> None:
            events.append("lost")

        store = FakeLeases()
        elector = LeaderElector(store, "ns", "lease", "me", 10.0, elected, lost,  # type: ignore[arg-type]
                                clock=lambda: 0.0)
        await elector.tick()
        await elector.takeover_done(timeout=5)
        # Paused: meanwhile another replica took the lease, led, and released it on shutdown.
        assert store.lease is not None
        store.version += 1
        store.lease = {"metadata": {"resourceVersion": str(store.version)},
                       "spec": {**store.lease["spec"], "holderIdentity": ""}}
        await elector.tick()  # resumed: the lease is free, and taken again
        await elector.takeover_done(timeout=5)
        assert elector.leading()
        return events

    # Not a renewal of the old term: what it remembered is dropped and the takeover runs again.
    assert asyncio.run(scenario()) == ["elected", "lost", "elected"]
