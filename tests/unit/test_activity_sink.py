"""The audit sink over real TLS on 127.0.0.1: who may post, what is counted, when it answers.

The reconciler is real, the API server a recording stand-in (tests/e2e/test_activity.py has the
real control plane's audit webhook posting).
"""

from __future__ import annotations

import asyncio
import datetime
import json
import ssl
from pathlib import Path
from typing import Any

import aiohttp

from kubepim import metrics, tls
from kubepim.devcluster import audit
from kubepim.handlers.activity import ActivitySink
from kubepim.handlers.reconcile import Reconciler
from kubepim.settings import Settings

from .test_reconcile_reads import RecordingKube, body

REASON = 'RBAC: allowed by RoleBinding "kubepim-r/payments" of Role "db-reader" to User "alice"'


class WritingKube(RecordingKube):
    """Records the activity each status write carries; ``fail`` writes fail first."""

    def __init__(self, stored: dict[str, Any]) -> None:
        super().__init__(stored)
        self.activity: list[dict[str, Any]] = []
        self.fail = 0

    async def patch_request_status(self, name: str, status: dict[str, Any],
                                   resource_version: str, uid: str | None = None
                                   ) -> dict[str, Any]:
        if "activity" in status and self.fail:
            self.fail -= 1
            raise ConnectionResetError("the API server went away")
        if "activity" in status:
            self.activity.append(status["activity"])
        return await super().patch_request_status(name, status, resource_version, uid)


def _event(audit_id: str, user: str = "alice", reason: str = REASON,
           decision: str = "allow") -> dict[str, Any]:
    now = datetime.datetime.now(datetime.UTC)
    return {"auditID": audit_id, "stage": "ResponseComplete", "verb": "get",
            "user": {"username": "admin"}, "impersonatedUser": {"username": user},
            "objectRef": {"resource": "pods", "namespace": "payments"},
            "responseStatus": {"code": 200},
            "requestReceivedTimestamp": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "annotations": {"authorization.k8s.io/decision": decision,
                            "authorization.k8s.io/reason": reason}}


def _client(directory: Path, cert: Path | None = None, key: Path | None = None
            ) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(directory / "ca.crt"))
    if cert is not None and key is not None:
        context.load_cert_chain(str(cert), str(key))
    return context


def _refused(reason: str) -> float:
    return metrics.REGISTRY.get_sample_value("kubepim_audit_posts_refused_total",
                                             {"reason": reason}) or 0.0


async def _granted(tmp: Path) -> tuple[WritingKube, Reconciler, ActivitySink]:
    audit.prepare(tmp, 0)
    settings = Settings(audit_sink_port=0, audit_sink_cert_file=str(tmp / "sink.crt"),
                        audit_sink_key_file=str(tmp / "sink.key"),
                        audit_sink_client_ca_file=str(tmp / "ca.crt"),
                        audit_sink_client_names=[audit.CLIENT_NAME], activity_flush_seconds=0.05)
    kube = WritingKube(body("10", approved=True))
    reconciler = Reconciler(kube)  # type: ignore[arg-type]
    sink = ActivitySink(reconciler, settings)
    reconciler.activity = sink
    reconciler.observe_namespace("payments", {"kubernetes.io/metadata.name": "payments"})
    await reconciler.reconcile("r", body("10", approved=True))  # Active: alice's grant
    sink.track_listed([])  # (what a takeover does first: ready to count)
    await sink.start()
    return kube, reconciler, sink


async def _post(sink: ActivitySink, context: ssl.SSLContext, events: list[dict[str, Any]]
                ) -> int:
    async with aiohttp.ClientSession() as session, session.post(
            f"https://127.0.0.1:{sink.port}/audit", ssl=context,
            data=json.dumps({"kind": "EventList", "apiVersion": "audit.k8s.io/v1",
                             "items": events})) as response:
        return response.status


def test_a_post_is_answered_once_its_use_is_written_and_counted_once(tmp_path: Path) -> None:
    async def scenario() -> None:
        kube, _, sink = await _granted(tmp_path)
        client = _client(tmp_path, tmp_path / "client.crt", tmp_path / "client.key")
        try:
            batch = [_event("a-1"), _event("a-2"), _event("x-1", user="bob", reason="")]
            assert await _post(sink, client, batch) == 200
            assert len(kube.activity) == 1  # written before the answer
            written = kube.activity[0]
            assert written["requests"] == 2 and written["auditIds"] == ["a-1", "a-2"]
            assert written["operations"] == [{"verb": "get", "resource": "pods", "count": 2}]
            # The API server posting the same batch again (it got no answer): nothing twice.
            assert await _post(sink, client, batch) == 200
            assert len(kube.activity) == 1
            # A refused request by alice during the grant: counted as denied.
            assert await _post(sink, client, [_event("d-1", reason="", decision="forbid")]) \
                == 200
            assert kube.activity[-1]["denied"] == 1 and kube.activity[-1]["requests"] == 2
        finally:
            await sink.stop()

    asyncio.run(scenario())


def test_a_failed_write_is_answered_503_and_the_batch_counted_when_posted_again(
        tmp_path: Path) -> None:
    async def scenario() -> None:
        kube, _, sink = await _granted(tmp_path)
        kube.fail = 1
        client = _client(tmp_path, tmp_path / "client.crt", tmp_path / "client.key")
        try:
            assert await _post(sink, client, [_event("a-1")]) == 503  # not written
            # Posted again at once: counted before, not written yet, so the answer waits for
            # the next write (a 200 now would lose it if the operator died before that write).
            assert await _post(sink, client, [_event("a-1")]) == 200
            assert [written["requests"] for written in kube.activity] == [1]
        finally:
            await sink.stop()

    asyncio.run(scenario())


def test_posts_without_the_api_servers_certificate_are_refused_and_counted(
        tmp_path: Path) -> None:
    async def scenario() -> None:
        kube, _, sink = await _granted(tmp_path)
        try:
            before = {r: _refused(r) for r in ("no_certificate", "untrusted_certificate")}
            assert await _post(sink, _client(tmp_path), [_event("f-1")]) == 401
            # A certificate from another CA: the handshake itself is refused.
            other, other_key = tls.new_ca("someone-else")
            forged, forged_key = tls.issue(other, other_key, tls.name(audit.CLIENT_NAME),
                                           client=True)
            (tmp_path / "forged.crt").write_bytes(tls.pem_cert(forged))
            (tmp_path / "forged.key").write_bytes(tls.pem_key(forged_key))
            try:
                await _post(sink, _client(tmp_path, tmp_path / "forged.crt",
                                          tmp_path / "forged.key"), [_event("f-2")])
                raise AssertionError("a forged certificate was accepted")
            except (aiohttp.ClientError, ssl.SSLError, ConnectionError):
                pass
            await asyncio.sleep(0.05)
            assert _refused("no_certificate") == before["no_certificate"] + 1
            assert _refused("untrusted_certificate") == before["untrusted_certificate"] + 1
            assert kube.activity == []  # nothing counted from them
        finally:
            await sink.stop()

    asyncio.run(scenario())


def test_a_lease_lost_and_won_again_drops_what_was_not_written_and_counts_it_when_posted_again(
        tmp_path: Path) -> None:
    async def scenario() -> None:
        kube, reconciler, sink = await _granted(tmp_path)
        client = _client(tmp_path, tmp_path / "client.crt", tmp_path / "client.key")
        try:
            sink.flush = lambda: None  # type: ignore[method-assign]  # (nothing written)
            posting = asyncio.create_task(_post(sink, client, [_event("a-1")]))
            for _ in range(100):
                if sink._pending:
                    break
                await asyncio.sleep(0.01)
            reconciler.reset()  # the lease lost: what was counted and not written is dropped
            assert await posting == 503
            assert await _post(sink, client, [_event("a-1")]) == 503  # (not listed yet)
            del sink.flush
            active = body("12", approved=True, status={
                "phase": "Active", "activatedAt": "2026-01-01T00:00:00Z",
                "expiresAt": "2099-01-01T00:00:00Z", "eligibility": "e"})
            active["spec"]["requester"]["username"] = "alice"
            sink.track_listed([active])  # won again: the takeover lists the grant
            reconciler.state.decided("r", "12")
            assert await _post(sink, client, [_event("a-1")]) == 200
            assert [written["requests"] for written in kube.activity] == [1]
        finally:
            await sink.stop()

    asyncio.run(scenario())


def test_posts_beyond_the_pending_bound_are_refused_at_once_not_queued(tmp_path: Path) -> None:
    # Load is shed, never queued without bound: the API server retries a refused batch later.
    async def scenario() -> None:
        _, _, sink = await _granted(tmp_path)
        sink.settings = sink.settings.model_copy(update={"audit_sink_max_pending": 100})
        client = _client(tmp_path, tmp_path / "client.crt", tmp_path / "client.key")
        try:
            sink.flush = lambda: None  # type: ignore[method-assign]  # (nothing written)
            first = asyncio.create_task(_post(sink, client, [_event(f"p-{n}")
                                                             for n in range(150)]))
            for _ in range(100):
                if sink._parsed:
                    break
                await asyncio.sleep(0.01)
            before = _refused("overloaded")
            assert await _post(sink, client, [_event("q-1")]) == 503
            assert _refused("overloaded") == before + 1
            del sink.flush
            sink._wake.set()  # (the next flush)
            assert await first == 200  # written by the next flush, then answered
        finally:
            await sink.stop()

    asyncio.run(scenario())
