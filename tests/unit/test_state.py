"""The engine's memory (kubepim.engine.state): one owner, nothing kept of finished work."""

from __future__ import annotations

import asyncio
import datetime
import threading
import time

from kubepim.api.request import Phase
from kubepim.engine.state import Locks, State

NOW = datetime.datetime(2026, 11, 26, 12, 0, tzinfo=datetime.UTC)


def test_a_lock_exists_only_while_held_or_awaited() -> None:
    async def scenario() -> None:
        locks = Locks()
        order: list[str] = []
        first_in = asyncio.Event()

        async def first() -> None:
            async with locks.hold("r"):
                first_in.set()
                await asyncio.sleep(0.01)
                order.append("first")

        async def second() -> None:
            await first_in.wait()
            async with locks.hold("r"):
                order.append("second")

        await asyncio.gather(first(), second())
        assert order == ["first", "second"]  # never at once
        assert len(locks) == 0

    asyncio.run(scenario())


def test_a_waiter_cancelled_while_waiting_leaves_no_lock_behind() -> None:
    async def scenario() -> None:
        locks = Locks()
        held = asyncio.Event()
        release = asyncio.Event()

        async def holder() -> None:
            async with locks.hold("r"):
                held.set()
                await release.wait()

        task = asyncio.create_task(holder())
        await held.wait()

        async def waiter() -> None:
            async with locks.hold("r"):
                raise AssertionError("must not get the lock while it is held")

        waiting = asyncio.create_task(waiter())
        await asyncio.sleep(0)
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        assert len(locks) == 1  # the holder's
        release.set()
        await task
        assert len(locks) == 0

    asyncio.run(scenario())


def test_a_finished_request_is_held_until_settled_and_seen_leaving() -> None:
    state = State()
    state.decided("r", "10")
    state.place("r", Phase.ACTIVE, "e", "payments", NOW)
    assert state.is_active("r") and state.governed_by("e") == ["r"]
    assert state.in_namespace("payments") == ["r"]
    state.decided("r", "11")
    state.place("r", Phase.EXPIRED, "e", "payments", None)  # final, awaiting a review
    assert state.governed_by("e") == [] and state.in_namespace("payments") == []
    assert not state.is_active("r")
    assert state.newer_than_decided("r", "11") is False  # held: its own write comes back
    state.place("r", Phase.EXPIRED, "e", "payments", None, finishing=True)  # settle failed
    assert state.newer_than_decided("r", "11") is None  # read again until settled
    state.decided("r", "13")
    state.place("r", Phase.EXPIRED, "e", "payments", None, settled=True, at=5.0, uid="u1")
    assert state.newer_than_decided("r", "12") is False  # our own write coming back
    assert state.left_selection("r", "u1")  # the watch's DELETED: it left, was not deleted
    assert all(size == 0 for size in state.sizes().values())


def test_a_settled_request_whose_leave_event_was_missed_is_dropped_by_the_resync() -> None:
    state = State()
    state.decided("r", "12")
    state.place("r", Phase.DENIED, None, None, None, settled=True, at=5.0, uid="u1")
    assert state.drop_settled_before(4.0) == 0
    assert state.drop_settled_before(6.0) == 1
    assert all(size == 0 for size in state.sizes().values())
    assert not state.left_selection("r", "u1")  # a DELETED now would be read, not assumed


def test_a_request_made_again_under_a_settled_name_is_not_taken_for_the_settled_one() -> None:
    state = State()
    state.place("r", Phase.EXPIRED, None, None, None, settled=True, at=5.0, uid="old")
    state.place("r", Phase.ACTIVE, "e", None, NOW, uid="new")  # a new request named r
    assert not state.left_selection("r", "new")  # its DELETED is a deletion: read it
    state.place("r", Phase.EXPIRED, None, None, None, settled=True, at=5.0, uid="old")
    assert not state.left_selection("r", "new")  # another uid's event, whatever is held


def test_a_relisted_eligibility_that_changed_is_reported() -> None:
    state = State()
    spec = {"subjects": [{"kind": "User", "name": "alice"}],
            "roles": [{"kind": "Role", "name": "db-reader"}], "namespaces": ["payments"],
            "approval": {"users": ["bob"]}}
    assert state.apply_eligibility_list(
        [{"metadata": {"name": "e", "resourceVersion": "5"}, "spec": spec},
         {"metadata": {"name": "f", "resourceVersion": "6"}, "spec": spec}], 10) == []
    # e deleted and f changed while the watch was down: the next list says so
    changed = {**spec, "maxDuration": "2h"}
    assert state.apply_eligibility_list(
        [{"metadata": {"name": "f", "resourceVersion": "12"}, "spec": changed}], 20) == ["e", "f"]


def test_a_deleted_eligibilitys_labels_outlive_it_while_a_request_it_governed_is_held() -> None:
    # A route selecting eligibilities by label still routes the Revoked notifications of the
    # requests a deleted eligibility governed; the labels go once nothing of it is held.
    state = State()
    spec = {"subjects": [{"kind": "User", "name": "alice"}],
            "roles": [{"kind": "Role", "name": "db-reader"}], "namespaces": ["payments"],
            "approval": {"users": ["bob"]}}
    state.apply_eligibility_list([{"metadata": {"name": "e", "resourceVersion": "5",
                                                "labels": {"team": "db"}}, "spec": spec}], 10)
    state.place("r", Phase.ACTIVE, "e", "payments", NOW)
    state.observe_eligibility("e", None, "11", {"team": "db"})  # deleted
    assert state.eligibility_labels("e") == {"team": "db"}
    state.apply_eligibility_list([], 20)
    assert state.eligibility_labels("e") == {"team": "db"}  # r is still held under it
    state.place("r", Phase.REVOKED, "e", "payments", None)
    state.apply_eligibility_list([], 30)
    assert state.eligibility_labels("e") is None


def test_moving_a_request_updates_both_indexes() -> None:
    state = State()
    state.place("r", Phase.PENDING, "old", "a", None)
    state.place("r", Phase.PENDING, "new", "a", None)
    assert state.governed_by("old") == [] and state.governed_by("new") == ["r"]
    state.forget("r")
    assert state.governed_by("new") == [] and state.in_namespace("a") == []


def test_the_overdue_gauge_counts_only_grants_past_expiry() -> None:
    state = State()
    state.place("late", Phase.ACTIVE, "e", None, NOW - datetime.timedelta(seconds=1))
    state.place("fine", Phase.ACTIVE, "e", None, NOW + datetime.timedelta(seconds=1))
    assert state.overdue(NOW) == 1 and state.active_grants() == 2
    state.forget("late")
    assert state.overdue(NOW) == 0


def test_the_overdue_gauge_can_be_read_from_another_thread_while_grants_change() -> None:
    """/metrics runs the gauge's callback in its own thread while the loop changes grants.

    Iterating the dict itself failed here within a few thousand changes (a 500 on /metrics at
    5,000 live grants in the scale bench).
    """
    state = State()
    now = datetime.datetime.now(datetime.UTC)
    for i in range(5000):
        state.place(f"r{i}", Phase.ACTIVE, "e", "ns", now, at=0.0)
    errors: list[BaseException] = []
    done = threading.Event()

    def scrape() -> None:
        while not done.is_set():
            try:
                state.overdue(now)
            except RuntimeError as error:
                errors.append(error)
                return

    reader = threading.Thread(target=scrape)
    reader.start()
    try:
        deadline = time.monotonic() + 2
        i = 0
        while time.monotonic() < deadline and not errors:
            state.place(f"x{i}", Phase.ACTIVE, "e", "ns", now, at=0.0)
            i += 1
            if i % 1000 == 0:
                for j in range(i - 1000, i):
                    state.forget(f"x{j}")
    finally:
        done.set()
        reader.join()
    assert errors == []


def test_a_namespace_missing_from_a_relist_is_gone_unless_seen_after_it() -> None:
    state = State()
    state.observe_namespace("gone", {"team": "a"}, "u1", "10")
    state.observe_namespace("new", {"team": "b"}, "u2", "30")  # created after the list below
    state.place("r", Phase.ACTIVE, "e", "gone", NOW)
    changed = state.apply_namespace_list([], listed_at=20)
    assert changed == ["r"]  # its requests are decided again
    assert state.namespace("gone") is None
    assert state.namespace("new") == ("u2", {"team": "b"})


def test_a_late_namespace_event_never_overwrites_a_newer_one() -> None:
    state = State()
    state.place("r", Phase.PENDING, "e", "payments", None)
    assert state.observe_namespace("payments", {"team": "a"}, "u1", "10") == ["r"]
    assert state.observe_namespace("payments", None, "", "12") == ["r"]  # deleted
    assert state.observe_namespace("payments", {"team": "a"}, "u1", "11") == []  # late
    assert state.namespace("payments") is None


def test_a_binding_write_is_ours_only_for_the_request_it_was_written_for() -> None:
    state = State()
    state.wrote_binding("RoleBinding/a/kubepim-r", "50", "uid-1")
    assert state.own_write("RoleBinding/a/kubepim-r", "uid-1") == "50"
    assert state.own_write("RoleBinding/a/kubepim-r", "uid-2") is None
    assert state.is_own_write("RoleBinding/a/kubepim-r", "50")
    state.binding_seen("RoleBinding/a/kubepim-r", present=False)
    assert not state.binding_exists("RoleBinding/a/kubepim-r")
    assert state.own_write("RoleBinding/a/kubepim-r") is None


def test_reset_keeps_watch_facts_and_drops_leader_decisions() -> None:
    state = State()
    state.observe_namespace("payments", {"team": "a"}, "u1", "10")
    state.binding_seen("RoleBinding/payments/kubepim-r", present=True)
    state.decided("r", "10")
    state.place("r", Phase.ACTIVE, "e", "payments", NOW)
    state.wrote_binding("RoleBinding/payments/kubepim-r", "50", "uid")
    state.unconfirmed_write("uid", 2, "10")
    state.reset()
    sizes = state.sizes()
    assert sizes["versions"] == sizes["active"] == sizes["own_writes"] == 0
    assert sizes["placed"] == sizes["unconfirmed"] == 0
    assert state.namespace("payments") is not None
    assert state.binding_exists("RoleBinding/payments/kubepim-r")


def test_an_unanswered_write_is_confirmed_by_any_other_version() -> None:
    state = State()
    state.unconfirmed_write("uid", 3, "10")
    assert state.confirm("uid", "10") is None  # the version it was based on: still unknown
    assert state.confirm("uid", "12") == 3
    assert state.confirm("uid", "13") is None  # confirmed once


def test_our_own_binding_delete_is_recognised_once_and_forgotten_if_never_seen() -> None:
    state = State()
    state.wrote_binding("RoleBinding/ns/kubepim-a", "7", "uid-a")
    state.deleted_binding("RoleBinding/ns/kubepim-a", at=100.0)
    assert not state.binding_exists("RoleBinding/ns/kubepim-a")
    assert state.own_write("RoleBinding/ns/kubepim-a") is None
    assert state.was_own_delete("RoleBinding/ns/kubepim-a")
    assert not state.was_own_delete("RoleBinding/ns/kubepim-a")  # a second DELETED: not ours
    state.deleted_binding("RoleBinding/ns/kubepim-b", at=100.0)
    state.deleted_binding("RoleBinding/ns/kubepim-c", at=500.0)
    state.drop_own_deletes_before(200.0)
    assert not state.was_own_delete("RoleBinding/ns/kubepim-b")
    assert state.was_own_delete("RoleBinding/ns/kubepim-c")


def test_a_stale_own_delete_record_never_swallows_a_later_bindings_delete() -> None:
    """Our delete's event came before our record (or never): a binding made again under the
    same name, then deleted by someone else, is still reported as not ours."""
    state = State()
    state.deleted_binding("RoleBinding/ns/kubepim-a", at=1.0)  # its event already went by
    state.wrote_binding("RoleBinding/ns/kubepim-a", "20", "uid-2")  # granted again
    assert not state.was_own_delete("RoleBinding/ns/kubepim-a")
    state.deleted_binding("RoleBinding/ns/kubepim-b", at=1.0)
    state.binding_seen("RoleBinding/ns/kubepim-b", present=True)  # someone made it again
    assert not state.was_own_delete("RoleBinding/ns/kubepim-b")


def test_a_binding_changed_while_we_read_it_is_not_taken_for_ours() -> None:
    # Read at version 40 and found as approved; meanwhile someone changed it (the watch saw 41):
    # 40 is not recorded, so 41 is checked and restored or removed, not trusted.
    state = State()
    state.binding_seen("RoleBinding/payments/kubepim-r", present=True, version="41")
    assert not state.verified_binding("RoleBinding/payments/kubepim-r", "40", "u-1")
    assert not state.own_write_current("RoleBinding/payments/kubepim-r")
    assert state.verified_binding("RoleBinding/payments/kubepim-r", "41", "u-1")
    assert state.own_write_current("RoleBinding/payments/kubepim-r")
    state.binding_seen("RoleBinding/payments/kubepim-r", present=True, version="42")
    assert not state.own_write_current("RoleBinding/payments/kubepim-r")  # changed since


def test_only_a_change_decisions_read_counts_as_an_eligibility_change() -> None:
    # Its own Ready or Notified condition written by the operator is no reason to decide every
    # request it governs again; a spec edit, a suspension or its deletion is.
    state = State()
    spec = {"subjects": [{"kind": "User", "name": "alice"}, {"kind": "User", "name": "dave"}],
            "roles": [{"kind": "Role", "name": "db-reader"}], "namespaces": ["payments"],
            "approval": {"users": ["bob"]}}
    assert state.observe_eligibility("e", spec, "4")  # (nothing cached yet: not known)
    state.apply_eligibility_list([{"metadata": {"name": "e", "resourceVersion": "5"},
                                   "spec": spec}], 10)
    conditions = {"conditions": [{"type": "Notified", "status": "True"}]}
    assert not state.observe_eligibility("e", spec, "11", {}, conditions)
    assert state.observe_eligibility("e", spec, "11", {"team": "db"}, conditions)  # routing
    assert state.observe_eligibility("e", {**spec, "maxDuration": "1h"}, "12", {"team": "db"})
    suspended = {"suspended": [{"subject": {"kind": "User", "name": "dave"}, "run": "r-1",
                                "at": "2026-11-27T00:00:00Z", "outcome": "Removed"}]}
    changed = state.observe_eligibility("e", {**spec, "maxDuration": "1h"}, "13",
                                        {"team": "db"}, suspended)
    assert changed
    assert state.observe_eligibility("e", None, "14", {"team": "db"})  # deleted
    assert not state.observe_eligibility("e", spec, "9")  # an older event: ignored
