"""Which API reads the reconciler skips, and when it must not (docs/performance.md, finding 2).

A recording stand-in for the adapter: the real API server proves the outcomes in tests/e2e;
here we pin down that a stale copy is never decided on and that skipped reads are only the safe
ones.
"""

from __future__ import annotations

import asyncio
import datetime
import time
from collections.abc import Callable
from typing import Any

import pytest

from kubepim.engine.state import binding_key
from kubepim.handlers import reconcile
from kubepim.handlers.reconcile import Reconciler
from kubepim.k8s.client import Conflict

ELIGIBILITY = {"subjects": [{"kind": "User", "name": "alice"}],
               "roles": [{"kind": "Role", "name": "db-reader"}], "namespaces": ["payments"],
               "approval": {"users": ["bob"]}}
BINDING = binding_key("RoleBinding", "payments", "kubepim-r")


def body(version: str, approved: bool = False, status: dict[str, Any] | None = None
         ) -> dict[str, Any]:
    """AccessRequest r by alice at ``version``; Pending, optionally approved by bob."""
    created = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=1)
    current: dict[str, Any] = dict(status or {})
    if approved:
        current["approvals"] = {"bob": {"decision": "Approve", "groups": [], "requestUid": "u-1"}}
    return {
        "apiVersion": "pim.kubepim.dev/v1alpha1", "kind": "AccessRequest",
        "metadata": {"name": "r", "uid": "u-1", "resourceVersion": version, "generation": 1,
                     "creationTimestamp": created.isoformat().replace("+00:00", "Z")},
        "spec": {"role": {"kind": "Role", "name": "db-reader"}, "namespace": "payments",
                 "duration": "1h", "justification": "INC-1: debugging",
                 "requester": {"username": "alice", "uid": "alice-uid", "groups": []}},
        "status": current,
    }


class RecordingKube:
    """Answers like an API server holding ``stored`` and records every call by name."""

    def __init__(self, stored: dict[str, Any], binding_exists: bool = False) -> None:
        self.stored = stored
        self.binding_exists = binding_exists
        self.calls: list[str] = []
        self.version = 100
        self.existing: dict[str, Any] | None = None

    async def get_request(self, name: str) -> dict[str, Any]:
        self.calls.append("get_request")
        return self.stored

    async def list_eligibilities(self) -> list[dict[str, Any]]:
        self.calls.append("list_eligibilities")
        return [{"metadata": {"name": "e"}, "spec": ELIGIBILITY}]

    async def list_eligibilities_at(self) -> tuple[list[dict[str, Any]], int]:
        return await self.list_eligibilities(), 0

    async def namespace(self, name: str) -> tuple[str, dict[str, str]]:
        self.calls.append("namespace_labels")
        return "ns-uid", {"kubernetes.io/metadata.name": name}

    async def role_rules(self, *_: Any) -> list[dict[str, Any]]:
        self.calls.append("role_rules")
        return [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]

    async def get_binding(self, *_: Any) -> dict[str, Any] | None:
        self.calls.append("get_binding")
        return self.existing

    async def create_binding(self, manifest: dict[str, Any]) -> str:
        self.calls.append("create_binding")
        if self.binding_exists:
            self.existing = manifest  # exactly what was approved, made before a restart
            raise Conflict(409, "already exists")
        return "50"

    async def delete_binding(self, *_: Any, **__: Any) -> bool:
        self.calls.append("delete_binding")
        return True

    def sibling(self, *_: Any, **__: Any) -> RecordingKube:
        return self  # (the revokes' own connections: the same fake, its calls recorded)

    async def patch_request_status(self, name: str, status: dict[str, Any],
                                   resource_version: str, uid: str | None = None
                                   ) -> dict[str, Any]:
        self.calls.append("patch_request_status")
        self.version += 1
        return {"metadata": {"resourceVersion": str(self.version)}}

    async def post_event(self, *_: Any) -> None:
        self.calls.append("post_event")


def reconciled(kube: RecordingKube, *events: dict[str, Any] | None,
               namespaces: bool = True, bindings: set[str] | None = None) -> Reconciler:
    """A reconciler after handling ``events`` (a body as a watch delivers it, or None)."""
    async def run() -> Reconciler:
        reconciler = Reconciler(kube)  # type: ignore[arg-type]
        if namespaces:
            reconciler.observe_namespace("payments", {"kubernetes.io/metadata.name": "payments"})
        for key in bindings or set():
            reconciler.state.binding_seen(key, present=True)
        for event in events:
            await reconciler.reconcile("r", event)
        await asyncio.sleep(0)  # let the background Event posts run
        return reconciler
    return asyncio.run(run())


def test_a_watch_body_is_decided_on_without_reading_the_request_again() -> None:
    kube = RecordingKube(body("10"))
    reconciled(kube, body("10"))
    assert "get_request" not in kube.calls
    assert "patch_request_status" in kube.calls  # Pending was recorded from the event's copy


def test_a_body_older_than_what_was_written_is_not_decided_on() -> None:
    kube = RecordingKube(body("10"))
    reconciler = reconciled(kube, body("10"))  # writes version 101
    kube.calls.clear()
    # An approval event older than our own write: the newer version was decided on already,
    # and anything that changed since comes with a newer event.
    asyncio.run(reconciler.reconcile("r", body("9", approved=True)))
    assert kube.calls == []
    asyncio.run(reconciler.reconcile("r", body("101")))  # our own write coming back
    assert kube.calls == []


def test_a_binding_we_wrote_is_not_read_until_the_watch_reports_another_version() -> None:
    kube = RecordingKube(body("10", approved=True))
    reconciler = reconciled(kube, body("10", approved=True))  # creates it: version 50
    kube.calls.clear()
    asyncio.run(reconciler.reconcile("r"))  # a resync
    assert "get_binding" not in kube.calls
    reconciler.state.drop_write(BINDING)  # what the binding watch does on a foreign version
    asyncio.run(reconciler.reconcile("r"))
    assert "get_binding" in kube.calls


def test_without_a_body_the_request_is_read() -> None:
    kube = RecordingKube(body("10"))
    reconciled(kube, None)
    assert kube.calls[0] == "get_request"


def test_namespace_labels_come_from_the_watch_and_are_read_only_when_unknown() -> None:
    watched = RecordingKube(body("10"))
    reconciled(watched, body("10"))
    assert "namespace_labels" not in watched.calls
    unknown = RecordingKube(body("10"))
    reconciled(unknown, body("10"), namespaces=False)
    assert "namespace_labels" in unknown.calls


def test_a_new_grant_creates_its_binding_without_reading_it_first() -> None:
    kube = RecordingKube(body("10", approved=True))
    reconciled(kube, body("10", approved=True))
    assert "create_binding" in kube.calls
    assert "get_binding" not in kube.calls
    assert kube.calls.index("create_binding") < kube.calls.index("patch_request_status")


def test_a_binding_that_already_exists_is_read_and_compared() -> None:
    kube = RecordingKube(body("10", approved=True), binding_exists=True)
    reconciled(kube, body("10", approved=True))
    assert kube.calls.count("create_binding") == 1  # refused: it exists
    assert kube.calls.index("get_binding") == kube.calls.index("create_binding") + 1
    assert "delete_binding" not in kube.calls  # it matches: left as it is


class MadeBeforeRestart(RecordingKube):
    """The binding exists already, exactly as approved, at version 40."""

    async def create_binding(self, manifest: dict[str, Any]) -> str:
        self.calls.append("create_binding")
        self.existing = {**manifest, "metadata": {**manifest["metadata"],
                                                  "resourceVersion": "40"}}
        raise Conflict(409, "already exists")


def test_a_binding_found_as_approved_is_not_read_again_nor_checked() -> None:
    # After a restart: read once by the request's reconcile, then known like one we wrote, so
    # neither the next reconcile nor the binding watch's check of the listing reads it again.
    kube = MadeBeforeRestart(body("10", approved=True))
    reconciler = reconciled(kube, body("10", approved=True))
    assert kube.calls.count("get_binding") == 1
    assert reconciler.state.is_own_write(BINDING, "40")
    kube.calls.clear()
    asyncio.run(reconciler.reconcile("r"))  # a resync
    asyncio.run(reconciler._check_binding(BINDING))  # the listing's check
    assert "get_binding" not in kube.calls and "get_request" in kube.calls  # (the resync's)
    assert kube.calls.count("get_request") == 1


def test_a_request_never_granted_reads_its_binding_only_if_the_watch_saw_one() -> None:
    unseen = RecordingKube(body("10"))
    reconciled(unseen, body("10"))
    assert "get_binding" not in unseen.calls
    seen = RecordingKube(body("10"))
    reconciled(seen, body("10"), bindings={BINDING})
    assert "get_binding" in seen.calls


def test_a_request_that_was_granted_always_reads_its_binding_before_closing() -> None:
    expired = {"phase": "Active", "activatedAt": "2026-01-01T00:00:00Z",
               "expiresAt": "2026-01-01T01:00:00Z"}
    kube = RecordingKube(body("10", approved=True, status=expired))
    reconciled(kube, body("10", approved=True, status=expired))
    assert "get_binding" in kube.calls


class SweepKube(RecordingKube):
    """Two marked bindings: kubepim-r (its request r Active) and kubepim-gone (no request)."""

    async def list_managed_bindings(self) -> list[dict[str, Any]]:
        marks = {"labels": {"app.kubernetes.io/managed-by": "kubepim"}}
        return [{"kind": "RoleBinding", "metadata": {
                    "name": f"kubepim-{owner}", "namespace": "payments", "uid": f"b-{owner}",
                    **marks, "ownerReferences": [{"kind": "AccessRequest", "name": owner}]}}
                for owner in ("r", "gone")]

    async def get_request(self, name: str) -> dict[str, Any] | None:
        self.calls.append(f"get_request {name}")
        return self.stored if name == "r" else None


def test_the_orphan_sweep_reads_only_requests_a_listing_does_not_show_live() -> None:
    active = body("7", status={"phase": "Active"})
    from kubepim.handlers.sweep import sweep_orphans

    kube = SweepKube(active)
    removed = asyncio.run(sweep_orphans(Reconciler(kube), [active]))  # type: ignore[arg-type]
    # r's binding is spared by the listing; gone's is read (no request) and deleted.
    assert removed == 1 and kube.calls == ["get_request gone", "delete_binding"]
    kube = SweepKube(active)
    asyncio.run(sweep_orphans(Reconciler(kube), []))  # type: ignore[arg-type]
    # Without r in the listing, its request is read before anything is decided.
    assert kube.calls[:2] == ["get_request r", "get_request gone"]


async def granted() -> tuple[RecordingKube, Reconciler]:
    """Request r (uid u-1) approved and reconciled: Active, its binding written (version 50)."""
    kube = RecordingKube(body("10", approved=True))
    reconciler = Reconciler(kube)  # type: ignore[arg-type]
    reconciler.observe_namespace("payments", {"kubernetes.io/metadata.name": "payments"})
    await reconciler.reconcile("r", body("10", approved=True))
    return kube, reconciler


def test_an_expired_grant_loses_its_binding_when_its_timer_fires_before_any_worker() -> None:
    # Access first: the timer's reconcile may wait behind a burst of others in the queue; the
    # binding it wrote goes at once, and the reconcile that records Expired reads nothing more.
    async def run() -> None:
        kube, reconciler = await granted()  # Active; binding version 50
        assert reconciler.state.own_write(BINDING, "u-1") == "50"
        for _ in range(5):
            await asyncio.sleep(0)  # (the transitions' Events, posted in the background)
        kube.calls.clear()
        past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=1)
        reconciler.expires("r", "u-1", "payments", past)  # its timer, due (no worker runs)
        for _ in range(5):
            await asyncio.sleep(0)
        assert kube.calls == ["delete_binding"]
        assert reconciler.state.deleted_by_us(BINDING)
        kube.calls.clear()
        active = {"phase": "Active", "activatedAt": (past - datetime.timedelta(hours=1))
                  .isoformat().replace("+00:00", "Z"),
                  "expiresAt": past.isoformat().replace("+00:00", "Z")}
        await reconciler.reconcile("r", body("200", approved=True, status=active))
        assert "get_binding" not in kube.calls and "delete_binding" not in kube.calls
        assert "patch_request_status" in kube.calls  # Expired recorded
    asyncio.run(run())


def test_an_early_revoke_touches_nothing_it_did_not_write() -> None:
    async def run() -> None:
        kube, reconciler = await granted()
        reconciler.state.drop_write(BINDING)  # changed by someone since: judged on a read
        for _ in range(5):
            await asyncio.sleep(0)
        kube.calls.clear()
        past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=1)
        reconciler.expires("r", "u-1", "payments", past)
        for _ in range(5):
            await asyncio.sleep(0)
        assert kube.calls == []  # left to the reconcile, which reads it and judges
    asyncio.run(run())


def test_a_deleted_request_does_not_take_the_timer_of_one_made_again_under_its_name() -> None:
    async def run() -> None:
        kube, reconciler = await granted()  # u-1: Active
        assert "r" in reconciler._expiring
        gone = body("5")
        gone["metadata"]["uid"] = "u-0"  # its predecessor's deletion, handled late
        await reconciler.request_deleted(gone)
        assert "r" in reconciler._expiring  # u-1's expiry still armed
        assert reconciler.state.active_grants() == 1
        assert "delete_binding" not in kube.calls  # u-1's binding is not u-0's
        await reconciler.request_deleted(body("11", approved=True))  # u-1 itself
        assert "r" not in reconciler._expiring
    asyncio.run(run())


def test_a_late_deleted_event_of_a_predecessor_leaves_the_request_made_again_alone() -> None:
    # The path a real DELETED event takes: the queue's deleted key, then left_selection.
    async def run() -> None:
        _, reconciler = await granted()  # u-1: Active
        gone = body("5")
        gone["metadata"]["uid"] = "u-0"
        reconciler.enqueue_deletion(gone)
        await reconciler._process("deleted:u-0")
        assert "r" in reconciler._expiring and reconciler.state.active_grants() == 1
    asyncio.run(run())


def test_events_wait_while_grants_wait_in_the_queue_but_not_longer_than_the_bound(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async def run() -> None:
        reconciler = Reconciler(RecordingKube(body("10")))  # type: ignore[arg-type]
        posted: list[int] = []

        async def post(number: int) -> None:
            posted.append(number)

        pressing = [True]
        monkeypatch.setattr(reconciler.queue, "pressing", lambda: pressing[0])
        monkeypatch.setattr(reconcile, "EVENT_YIELD_SECONDS", 0.5)
        reconciler.post_later(post(1))
        reconciler.post_later(post(2))
        await asyncio.sleep(0.2)
        assert posted == []  # grants and expiries first
        pressing[0] = False
        await _until(lambda: sorted(posted) == [1, 2], 2.0)  # at once when the queue is quiet
        pressing[0] = True
        began = time.monotonic()
        reconciler.post_later(post(3))  # under pressure that does not end
        await _until(lambda: 3 in posted, 5.0)
        assert 0.45 <= time.monotonic() - began < 2.0  # after the bound, not starved
        monkeypatch.setattr(reconcile, "EVENT_YIELD_SECONDS", 30.0)
        reconciler.post_later(post(4))
        await asyncio.sleep(0.1)
        assert 4 not in posted  # waiting for grants, up to 30 s
        began = time.monotonic()
        await reconciler.flush_events(2.0)  # shutting down: posted now, while still leading
        assert 4 in posted and time.monotonic() - began < 0.5
    asyncio.run(run())


async def _until(condition: Callable[[], bool], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "not within the deadline"
        await asyncio.sleep(0.01)
