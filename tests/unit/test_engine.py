"""The engine's contract with the reconciler: the queue retries, leadership fences, state is
forgotten whole (the real API server proves outcomes in tests/e2e; here a recording stand-in)."""

from __future__ import annotations

import asyncio
import datetime
import json
from typing import Any

import pytest

from kubepim.handlers.lifecycle import revoke_overdue
from kubepim.handlers.reconcile import Reconciler
from kubepim.k8s.client import ApiError, Conflict, NotLeading
from kubepim.notify.notifier import Notifier

from .test_reconcile_reads import ELIGIBILITY, RecordingKube, body


class FlakyKube(RecordingKube):
    """Fails the first ``failures`` status writes with a 503, as an API server blip would."""

    def __init__(self, stored: dict[str, Any], failures: int) -> None:
        super().__init__(stored)
        self.failures = failures

    async def patch_request_status(self, name: str, status: dict[str, Any],
                                   resource_version: str, uid: str | None = None
                                   ) -> dict[str, Any]:
        if self.failures:
            self.failures -= 1
            self.calls.append("patch_failed")
            raise ApiError(503, "the API server is restarting")
        return await super().patch_request_status(name, status, resource_version)


def test_a_failed_reconcile_is_retried_by_the_queue_within_milliseconds() -> None:
    async def scenario() -> None:
        kube = FlakyKube(body("10", approved=True), failures=2)
        reconciler = Reconciler(kube)  # type: ignore[arg-type]
        reconciler.observe_namespace("payments", {"kubernetes.io/metadata.name": "payments"})
        runner = asyncio.create_task(reconciler.queue.run())
        loop = asyncio.get_running_loop()
        started = loop.time()
        reconciler.enqueue("r", body("10", approved=True))
        while "patch_request_status" not in kube.calls:
            assert loop.time() - started < 2.0, kube.calls
            await asyncio.sleep(0.001)
        assert kube.calls.count("patch_failed") == 2
        assert loop.time() - started < 0.5  # backoff of milliseconds, not the next resync
        runner.cancel()

    asyncio.run(scenario())


def test_a_version_whose_reconcile_failed_is_decided_again_when_delivered_again() -> None:
    async def scenario() -> None:
        kube = FlakyKube(body("10", approved=True), failures=1)
        reconciler = Reconciler(kube)  # type: ignore[arg-type]
        reconciler.observe_namespace("payments", {"kubernetes.io/metadata.name": "payments"})
        with pytest.raises(ApiError):
            await reconciler.reconcile("r", body("10", approved=True))
        kube.calls.clear()
        await reconciler.reconcile("r", body("10", approved=True))  # the same version again
        assert "patch_request_status" in kube.calls

    asyncio.run(scenario())


def test_no_write_is_sent_once_the_lease_may_have_passed() -> None:
    async def scenario() -> None:
        kube = RecordingKube(body("10", approved=True))
        reconciler = Reconciler(kube)  # type: ignore[arg-type]
        reconciler.leading = lambda: False
        with pytest.raises(NotLeading):
            await reconciler.reconcile("r", body("10", approved=True))
        assert kube.calls == []

    asyncio.run(scenario())


def test_a_deleted_active_request_leaves_no_grant_behind_in_the_gauges() -> None:
    async def scenario() -> None:
        kube = RecordingKube(body("10", approved=True))
        reconciler = Reconciler(kube)  # type: ignore[arg-type]
        reconciler.observe_namespace("payments", {"kubernetes.io/metadata.name": "payments"})
        await reconciler.reconcile("r", body("10", approved=True))
        assert reconciler.state.is_active("r")
        gone = body("102", approved=True)
        gone["status"].update(phase="Active", expiresAt="2000-01-01T00:00:00Z",
                              activatedAt="1999-12-31T23:00:00Z")
        await reconciler.request_deleted(gone)
        assert not reconciler.state.is_active("r")
        assert reconciler.state.overdue(datetime.datetime.now(datetime.UTC)) == 0
        assert "r" not in reconciler.queue

    asyncio.run(scenario())


def test_losing_leadership_drops_queued_work_and_decisions() -> None:
    async def scenario() -> None:
        kube = RecordingKube(body("10", approved=True))
        reconciler = Reconciler(kube)  # type: ignore[arg-type]
        reconciler.observe_namespace("payments", {"kubernetes.io/metadata.name": "payments"})
        await reconciler.reconcile("r", body("10", approved=True))
        reconciler.enqueue("r", body("11"))
        reconciler.reset()
        assert len(reconciler.queue) == 0
        sizes = reconciler.state.sizes()
        assert sizes["versions"] == sizes["active"] == sizes["own_writes"] == 0

    asyncio.run(scenario())


class ListedAt(RecordingKube):
    """Lists eligibility e at resourceVersion 20, as a list served just before a change."""

    async def list_eligibilities_at(self) -> tuple[list[dict[str, Any]], int]:
        return [{"metadata": {"name": "e", "resourceVersion": "20"},
                 "spec": ELIGIBILITY}], 20


def test_a_relist_never_undoes_a_newer_watch_event() -> None:
    async def scenario() -> None:
        reconciler = Reconciler(ListedAt(body("10")))  # type: ignore[arg-type]
        await reconciler.refresh_eligibilities()
        assert "e" in await reconciler.eligibilities()
        reconciler.state.observe_eligibility("e", None, "25")  # deleted after the list was served
        reconciler.state.observe_eligibility("new", ELIGIBILITY, "26")  # created after it
        await reconciler.refresh_eligibilities()  # a resync's list, served at 20
        cached = await reconciler.eligibilities()
        assert "e" not in cached and "new" in cached
        reconciler.state.observe_eligibility("new", None, "24")  # a late, older event: ignored
        assert "new" in await reconciler.eligibilities()

    asyncio.run(scenario())


class LostAnswer(RecordingKube):
    """Applies the first status write, then loses its answer (a timeout), as a reset would."""

    def __init__(self, stored: dict[str, Any]) -> None:
        super().__init__(stored)
        self.lost = False

    async def patch_request_status(self, name: str, status: dict[str, Any],
                                   resource_version: str, uid: str | None = None
                                   ) -> dict[str, Any]:
        written = await super().patch_request_status(name, status, resource_version)
        self.stored = {**self.stored, "status": {**self.stored["status"], **status},
                       "metadata": {**self.stored["metadata"],
                                    "resourceVersion": written["metadata"]["resourceVersion"]}}
        if not self.lost:
            self.lost = True
            raise TimeoutError("no answer")
        return written


def test_a_status_write_whose_answer_was_lost_still_gets_its_audit_lines(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        kube = LostAnswer(body("10", approved=True))
        reconciler = Reconciler(kube)  # type: ignore[arg-type]
        reconciler.observe_namespace("payments", {"kubernetes.io/metadata.name": "payments"})
        with pytest.raises(TimeoutError):
            await reconciler.reconcile("r", body("10", approved=True))
        await reconciler.reconcile("r")  # the queue's retry: reads the request as written

    with caplog.at_level("INFO", logger="kubepim.audit"):
        asyncio.run(scenario())
    actions = [json.loads(r.getMessage())["action"] for r in caplog.records
               if r.name == "kubepim.audit"]
    assert actions == ["Requested", "Approved", "Activated"]


def test_a_binding_claiming_an_owner_that_is_not_an_object_name_names_no_request() -> None:
    from kubepim.handlers.reconcile import owning_request

    def claiming(name: str) -> dict[str, Any]:
        return {"metadata": {"ownerReferences": [{"kind": "AccessRequest", "name": name}]}}

    assert owning_request(claiming("alice-debug-1")) == "alice-debug-1"
    assert owning_request(claiming("../../../../api/v1/nodes/x")) is None
    assert owning_request({"metadata": {"labels": {"pim.kubepim.dev/request": "a/b"}}}) is None


class StoringKube(RecordingKube):
    """Stores every status write (merged, as a merge patch would be)."""

    async def patch_request_status(self, name: str, status: dict[str, Any],
                                   resource_version: str, uid: str | None = None
                                   ) -> dict[str, Any]:
        written = await super().patch_request_status(name, status, resource_version)
        self.stored = {**self.stored, "status": {**self.stored["status"], **status},
                       "metadata": {**self.stored["metadata"],
                                    "resourceVersion": written["metadata"]["resourceVersion"]}}
        return self.stored


class SettleFailsOnce(StoringKube):
    """Stores every status write; the first settle write fails as a 503 would."""

    def __init__(self, stored: dict[str, Any]) -> None:
        super().__init__(stored)
        self.settles = 0

    async def patch_request_status(self, name: str, status: dict[str, Any],
                                   resource_version: str, uid: str | None = None
                                   ) -> dict[str, Any]:
        if status.get("settled"):
            self.settles += 1
            if self.settles == 1:
                raise ApiError(503, "unavailable")
        return await super().patch_request_status(name, status, resource_version)


def test_a_failed_settle_write_is_retried_until_the_request_is_settled(
    caplog: pytest.LogCaptureFixture,
) -> None:
    over = body("10", approved=True, status={
        "phase": "Active", "eligibility": "e", "namespaceUid": "ns-uid",
        "activatedAt": "2000-01-01T00:00:00Z", "expiresAt": "2000-01-01T01:00:00Z",
        "history": [{"time": "2000-01-01T00:00:00Z", "action": "Activated",
                     "actor": "kubepim", "reason": "approved"}]})

    async def scenario() -> SettleFailsOnce:
        kube = SettleFailsOnce(over)
        reconciler = Reconciler(kube)  # type: ignore[arg-type]
        reconciler.observe_namespace("payments", {"kubernetes.io/metadata.name": "payments"})
        with pytest.raises(ApiError):  # Expired written, its line logged, the settle refused
            await reconciler.reconcile("r", over)
        assert not reconciler.state.is_active("r")  # the gauges already say so
        echo = kube.stored  # the watch event of our own Expired write: read and settled
        await reconciler.reconcile("r", {**echo, "metadata": {**echo["metadata"]}})
        return kube

    with caplog.at_level("INFO", logger="kubepim.audit"):
        kube = asyncio.run(scenario())
    assert kube.stored["status"]["phase"] == "Expired" and kube.stored["status"]["settled"]
    assert kube.settles == 2
    ids = [json.loads(r.getMessage())["id"] for r in caplog.records if r.name == "kubepim.audit"]
    assert set(ids) == {"u-1/1"}  # the Expired line, logged again before settling (same id)


def test_a_timer_or_an_ask_is_not_swallowed_by_the_echo_of_a_version_already_decided() -> None:
    # An Active request decided at version 10 (before its expiry); its expiry timer (or the
    # notifier asking for its progress to be written) comes while the watch's copy of that
    # same version still waits in the queue: the copy says nothing new, the wake-up does.
    active = body("10", approved=True, status={
        "phase": "Active", "eligibility": "e", "namespaceUid": "ns-uid",
        "activatedAt": "2000-01-01T00:00:00Z", "expiresAt": "2000-01-01T01:00:00Z",
        "history": [{"time": "2000-01-01T00:00:00Z", "action": "Activated",
                     "actor": "kubepim", "reason": "approved"}]})

    async def scenario(woken: bool) -> list[str]:
        kube = RecordingKube(active)
        reconciler = Reconciler(kube)  # type: ignore[arg-type]
        reconciler.observe_namespace("payments", {"kubernetes.io/metadata.name": "payments"})
        reconciler.state.decided("r", "10")
        reconciler.enqueue("r", active)  # the echo
        if woken:
            reconciler.enqueue("r")  # the wake-up, before a worker took the key
        runner = asyncio.create_task(reconciler.queue.run())
        assert await reconciler.queue.drain(2.0)
        runner.cancel()
        return kube.calls

    assert asyncio.run(scenario(woken=False)) == []  # an echo alone: nothing to do
    calls = asyncio.run(scenario(woken=True))
    assert calls[0] == "get_request" and "patch_request_status" in calls  # Expired written


def test_no_request_is_settled_before_the_notification_routes_were_listed() -> None:
    # A new leader that could not list the routes yet does not know what a final request is
    # owed: it writes Expired (access never waits) but settles only once the routes are known.
    expired = body("10", approved=True, status={
        "phase": "Active", "eligibility": "e", "namespaceUid": "ns-uid",
        "activatedAt": "2000-01-01T00:00:00Z", "expiresAt": "2000-01-01T01:00:00Z",
        "history": [{"time": "2000-01-01T00:00:00Z", "action": "Activated",
                     "actor": "kubepim", "reason": "approved"}]})

    async def scenario() -> list[dict[str, Any]]:
        kube = StoringKube(expired)
        reconciler = Reconciler(kube)  # type: ignore[arg-type]
        reconciler.observe_namespace("payments", {"kubernetes.io/metadata.name": "payments"})
        reconciler.notifier = Notifier("urn:kubepim:test", _no_warning, reconciler.enqueue,
                                       lambda: True)
        await reconciler.reconcile("r", expired)
        before = dict(kube.stored["status"])
        reconciler.notifier.loaded = True  # listed: none owes it anything
        await reconciler.reconcile("r")
        return [before, kube.stored["status"]]

    before, after = asyncio.run(scenario())
    assert before["phase"] == "Expired" and not before.get("settled")
    assert after["phase"] == "Expired" and after["settled"] is True


async def _no_warning(_: dict[str, Any], reason: str, message: str) -> None:
    raise AssertionError(f"no Warning expected: {reason} {message}")


def test_a_takeover_sets_every_live_grants_expiry_timer_from_its_list() -> None:
    # Before any request's own reconcile (those wait in the slow lane behind the watches'
    # listings): a grant expiring meanwhile is not late for it.
    def active(name: str, expires: datetime.datetime) -> dict[str, Any]:
        item = body("10", approved=True, status={
            "phase": "Active", "eligibility": "e", "expiresAt": expires.isoformat()})
        item["metadata"]["name"] = name
        return item

    async def scenario() -> tuple[int, bool, bool]:
        kube = RecordingKube(body("10"))
        reconciler = Reconciler(kube)  # type: ignore[arg-type]
        now = datetime.datetime.now(datetime.UTC)
        overdue = await revoke_overdue(reconciler, [
            active("past", now - datetime.timedelta(seconds=5)),
            active("soon", now + datetime.timedelta(seconds=30))])
        return overdue, "soon" in reconciler.queue, "delete_binding" in kube.calls

    assert asyncio.run(scenario()) == (1, True, True)


class RefusingStale(StoringKube):
    """Refuses a status write based on any version but the stored one (409, as the API does)."""

    async def patch_request_status(self, name: str, status: dict[str, Any],
                                   resource_version: str, uid: str | None = None
                                   ) -> dict[str, Any]:
        if resource_version != self.stored["metadata"]["resourceVersion"] or (
                uid is not None and uid != self.stored["metadata"]["uid"]):
            self.calls.append("conflict")
            raise Conflict(409, "the object has been modified")
        return await super().patch_request_status(name, status, resource_version)


def test_notification_progress_is_written_alone_on_the_version_decided_else_by_a_reconcile(
) -> None:
    async def scenario(changed_since: bool) -> tuple[list[str], dict[str, Any], bool]:
        kube = RefusingStale(body("10"))
        reconciler = Reconciler(kube)  # type: ignore[arg-type]
        reconciler.observe_namespace("payments", {"kubernetes.io/metadata.name": "payments"})
        notifier = Notifier("urn:kubepim:test", _no_warning, reconciler.enqueue, lambda: True,
                            record=reconciler.write_progress)
        reconciler.notifier = notifier
        await reconciler.reconcile("r", body("10"))  # Pending written: version 101
        if changed_since:  # an approval landed since (its event not yet handled)
            kube.stored = {**kube.stored, "metadata": {**kube.stored["metadata"],
                                                       "resourceVersion": "150"}}
        notifier.progress = lambda uid: {"ops": {"next": 1}}  # type: ignore[method-assign]
        kube.calls.clear()
        await reconciler._write_progress("r", "u-1")
        calls = [c for c in kube.calls if c != "post_event"]  # (the Pending Event, posting)
        return calls, kube.stored["status"], "r" in reconciler.queue._dirty  # (not its timer)

    calls, status, queued = asyncio.run(scenario(changed_since=False))
    assert calls == ["patch_request_status"]  # no read, no decision: the progress alone
    assert status["notifications"] == {"ops": {"next": 1}} and not queued
    calls, status, queued = asyncio.run(scenario(changed_since=True))
    assert calls == ["conflict"] and "notifications" not in status
    assert queued  # a reconcile decides the newer version and writes the progress with it


def test_caught_up_once_every_request_a_takeover_listed_is_reconciled_or_gone() -> None:
    async def scenario() -> None:
        kube = RecordingKube(body("10", approved=True))
        reconciler = Reconciler(kube)  # type: ignore[arg-type]
        reconciler.observe_namespace("payments", {"kubernetes.io/metadata.name": "payments"})
        assert not reconciler.caught_up.is_set()  # no takeover yet
        reconciler.catch_up(["r", "gone"])
        runner = asyncio.create_task(reconciler.queue.run())
        reconciler.enqueue("r", body("10", approved=True))
        loop = asyncio.get_running_loop()
        started = loop.time()
        while "r" in reconciler._catching_up:
            assert loop.time() - started < 2.0
            await asyncio.sleep(0.001)
        assert not reconciler.caught_up.is_set()  # "gone" is still owed
        reconciler.forget("gone")
        assert reconciler.caught_up.is_set()
        reconciler.reset()  # leadership lost: the next term's takeover lists again
        assert not reconciler.caught_up.is_set()
        reconciler.catch_up([])  # nothing unsettled: caught up at once
        assert reconciler.caught_up.is_set()
        runner.cancel()

    asyncio.run(scenario())


def test_a_standing_scan_waits_until_the_takeover_has_caught_up() -> None:
    from kubepim.engine.state import State
    from kubepim.handlers.standing import StandingWatch

    class Reader:
        def __init__(self) -> None:
            self.listed: list[str] = []

        async def rbac_pages(self, plural: str, selector: str | None = None
                             ) -> Any:
            self.listed.append(plural)
            yield [], "7"

    async def scenario() -> None:
        async def no_eligibilities() -> dict[str, Any]:
            return {}

        caught_up = asyncio.Event()
        reader = Reader()
        watch = StandingWatch(reader, reader, State(), no_eligibilities,  # type: ignore[arg-type]
                              lambda: True, 600, caught_up=caught_up)
        scan = asyncio.create_task(watch.scan())
        for _ in range(50):  # the loop turns; the scan stays parked
            await asyncio.sleep(0)
        assert reader.listed == []  # nothing read while the takeover's work is owed
        caught_up.set()
        versions = await asyncio.wait_for(scan, 2)
        assert reader.listed == ["roles", "clusterroles", "clusterrolebindings", "rolebindings"]
        assert versions == {"clusterrolebindings": "7", "rolebindings": "7"}

    asyncio.run(scenario())


def test_callers_waiting_for_the_first_eligibility_list_share_one_list_call() -> None:
    async def scenario() -> None:
        kube = RecordingKube(body("10"))
        reconciler = Reconciler(kube)  # type: ignore[arg-type]
        answers = await asyncio.gather(*(reconciler.eligibilities() for _ in range(20)))
        assert all("e" in answer for answer in answers)
        assert kube.calls.count("list_eligibilities") == 1
        await reconciler.refresh_eligibilities()  # (a resync relists on purpose)
        assert kube.calls.count("list_eligibilities") == 2

    asyncio.run(scenario())


def test_a_new_request_is_held_a_moment_so_its_approval_makes_one_write() -> None:
    async def scenario() -> None:
        kube = RecordingKube(body("11", approved=True))
        reconciler = Reconciler(kube)  # type: ignore[arg-type]
        reconciler.observe_namespace("payments", {"kubernetes.io/metadata.name": "payments"})
        runner = asyncio.create_task(reconciler.queue.run())
        reconciler.hold("r", body("10"))  # created: nothing decided yet
        reconciler.enqueue("r", body("11", approved=True))  # its approval, a moment later
        loop = asyncio.get_running_loop()
        started = loop.time()
        while "patch_request_status" not in kube.calls:
            assert loop.time() - started < 2.0, kube.calls
            await asyncio.sleep(0.001)
        assert loop.time() - started < 0.2  # decided at once, not after the hold
        assert kube.calls.count("patch_request_status") == 1  # Requested..Activated in one
        assert "get_request" not in kube.calls
        # The hold's timer is gone: what waits for r now is its expiry, an hour away.
        assert reconciler.queue._waiting["r"] > reconciler.queue._clock() + 3000
        runner.cancel()

    asyncio.run(scenario())


def test_a_held_request_without_an_approval_is_decided_when_the_hold_ends() -> None:
    async def scenario() -> None:
        kube = RecordingKube(body("10"))
        reconciler = Reconciler(kube)  # type: ignore[arg-type]
        reconciler.observe_namespace("payments", {"kubernetes.io/metadata.name": "payments"})
        runner = asyncio.create_task(reconciler.queue.run())
        loop = asyncio.get_running_loop()
        started = loop.time()
        reconciler.hold("r", body("10"))
        while "patch_request_status" not in kube.calls:
            assert loop.time() - started < 2.0, kube.calls
            await asyncio.sleep(0.005)
        assert loop.time() - started >= 0.2  # (HOLD_SECONDS)
        assert "get_request" not in kube.calls  # decided from the held copy
        runner.cancel()

    asyncio.run(scenario())


def test_a_predecessor_forgotten_under_the_same_name_does_not_cancel_the_hold() -> None:
    async def scenario() -> None:
        kube = RecordingKube(body("10"))
        reconciler = Reconciler(kube)  # type: ignore[arg-type]
        reconciler.observe_namespace("payments", {"kubernetes.io/metadata.name": "payments"})
        runner = asyncio.create_task(reconciler.queue.run())
        reconciler.hold("r", body("10"))
        reconciler.forget("r", "uid-of-the-deleted-predecessor")  # its DELETED, processed now
        loop = asyncio.get_running_loop()
        started = loop.time()
        while "patch_request_status" not in kube.calls:
            assert loop.time() - started < 2.0, kube.calls
            await asyncio.sleep(0.005)
        assert "get_request" not in kube.calls
        runner.cancel()

    asyncio.run(scenario())
