"""What a grant was used for, from the real API server's audit webhook (docs/activity.md).

The local control plane posts its audit events (batch mode) to the operator's audit sink over
TLS with its client certificate. Skipped on a cluster whose API server does not (kind, say).
"""

from __future__ import annotations

import base64
import datetime
import json
import ssl
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import pim
from tests.e2e.support import Kubectl, OperatorProcess, poll


@pytest.fixture
def sink(operator: OperatorProcess) -> OperatorProcess:
    """The operator, with the control plane's audit webhook posting to its sink."""
    if "KUBEPIM_AUDIT_SINK_PORT" not in getattr(operator, "settings", {}):
        pytest.skip("the cluster's API server does not post audit events to the operator "
                    "(only the local control plane is set up so: docs/activity.md)")
    return operator


def _logs_reader(kubectl: Kubectl, namespace: str, **spec: Any) -> None:
    kubectl("create", "role", "pod-reader", "--verb=get,list", "--resource=pods,pods/log",
            "-n", namespace)
    pim.apply(kubectl, pim.eligibility(namespace, **{
        "subjects": [{"kind": "User", "name": "alice"}, {"kind": "User", "name": "dave"}],
        "roles": [{"kind": "Role", "name": "pod-reader"}], "namespaces": [namespace],
        "approval": {"users": ["bob"]}, **spec}))


def _grant(kubectl: Kubectl, namespace: str, name: str, user: str, duration: str
           ) -> dict[str, Any]:
    pim.apply(kubectl, pim.access_request(
        name, role={"kind": "Role", "name": "pod-reader"}, namespace=namespace,
        duration=duration, justification="INC-18: looking"), as_user=user)
    pim.wait_phase(kubectl, name, "Pending")
    pim.approve(kubectl, name, "bob")
    return pim.wait_phase(kubectl, name, "Active")


def _activity(kubectl: Kubectl, name: str) -> dict[str, Any]:
    return dict((pim.get_request(kubectl, name).get("status") or {}).get("activity") or {})


def _lines(operator: OperatorProcess, request: str) -> list[dict[str, Any]]:
    return operator.json_lines("kubepim.activity", request)


def test_a_grants_use_is_counted_to_it_and_each_request_named(
    kubectl: Kubectl, sink: OperatorProcess, namespace: str
) -> None:
    _logs_reader(kubectl, namespace)
    kubectl("run", "web", "--image=nginx", "--restart=Never", "-n", namespace)  # (no node)
    name = f"{namespace}-use"
    _grant(kubectl, namespace, name, "alice", "10m")
    kubectl("get", "pods", "-n", namespace, as_user="alice")  # list pods
    kubectl("get", "pod", "web", "-n", namespace, as_user="alice")  # get pods
    # kubectl logs reads the pod (get pods), then its log (get pods/log). No node runs it: the
    # API server refuses the log after RBAC allowed it through the grant's binding, which is
    # a use of the grant all the same.
    kubectl("logs", "web", "-n", namespace, as_user="alice", check=False)
    kubectl("get", "secrets", "-n", namespace, as_user="alice", check=False)  # refused

    def counted() -> dict[str, Any] | None:
        recorded = _activity(kubectl, name)
        return recorded if recorded.get("requests", 0) >= 4 and recorded.get("denied") \
            else None

    recorded = poll(counted, timeout=30, interval=0.5, what="four uses and one denial")
    operations = {(o["verb"], o["resource"]): o["count"] for o in recorded["operations"]}
    assert operations == {("list", "pods"): 1, ("get", "pods"): 2, ("get", "pods/log"): 1}
    assert recorded["requests"] == 4 and recorded["denied"] == 1
    assert recorded.get("otherBindings", 0) == 0
    assert recorded["firstUse"] <= recorded["lastUse"]
    lines = _lines(sink, name)
    assert sorted((line["attribution"], line["verb"], line["resource"]) for line in lines) == [
        ("denied", "list", "secrets"), ("grant", "get", "pods"), ("grant", "get", "pods"),
        ("grant", "get", "pods/log"), ("grant", "list", "pods")]
    assert all(line["user"] == "alice" and line["namespace"] == namespace
               and line["impersonatedBy"] == "kubepim-admin" for line in lines)
    assert len({line["id"] for line in lines}) == 5
    # The end: the summary in the final entry, the activity kept.
    pim.act(kubectl, name, "alice", "End")
    ended = pim.wait_phase(kubectl, name, "Revoked")
    final = ended["status"]["history"][-1]
    assert final["reason"].endswith("used 4 times (get pods 2, get pods/log 1, list pods 1); "
                                    "1 denied"), final


def test_an_unused_grant_ends_idle_and_a_used_one_lasts_until_its_expiry(
    kubectl: Kubectl, sink: OperatorProcess, namespace: str
) -> None:
    _logs_reader(kubectl, namespace, idleTimeout="20s")
    unused, used = f"{namespace}-unused", f"{namespace}-used"
    _grant(kubectl, namespace, unused, "alice", "2m")
    _grant(kubectl, namespace, used, "dave", "40s")
    started = time.monotonic()
    uses = 0
    while pim.phase_of(kubectl, used) == "Active" and time.monotonic() - started < 90:
        kubectl("get", "pods", "-n", namespace, as_user="dave")
        uses += 1
        # Every 5 s: polled, so the loop also sees the unused grant end meanwhile.
        poll(_after(started + 5 * uses), timeout=6, interval=0.2, what="the next use")
    ended = pim.get_request(kubectl, unused)
    assert ended["status"]["phase"] == "Expired"
    action, actor = pim.history(ended)[-1]
    assert (action, actor) == ("Idle", "kubepim")
    idle_entry = ended["status"]["history"][-1]
    assert "idleTimeout 20s (never used since its activation)" in idle_entry["reason"]
    lived = (_parse(idle_entry["time"]) - _parse(ended["status"]["activatedAt"]))
    assert 20 <= lived.total_seconds() < 26, lived  # about 20 s: its timer, not a resync
    assert "Idle" in pim.event_reasons(kubectl, unused)
    assert kubectl.can_i("list", "pods", as_user="alice", namespace=namespace) is False
    last = pim.get_request(kubectl, used)
    assert pim.history(last)[-1] == ("Expired", "kubepim")  # not idle: used every 5 s
    assert _activity(kubectl, used)["requests"] >= 6


def test_a_forged_audit_post_is_refused_and_counted(
    kubectl: Kubectl, sink: OperatorProcess, namespace: str
) -> None:
    port = int(sink.settings["KUBEPIM_AUDIT_SINK_PORT"])
    ca = sink.settings["KUBEPIM_AUDIT_SINK_CLIENT_CA_FILE"]
    forged = json.dumps({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": []})
    before = _refusals(sink)
    context = ssl.create_default_context(cafile=ca)  # trusts the sink; presents nothing
    request = urllib.request.Request(f"https://127.0.0.1:{port}/audit", data=forged.encode(),
                                     method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, context=context, timeout=5)
    assert refused.value.code == 401
    # The cluster admin's own client certificate: another CA's, refused in the handshake.
    admin = _client_context(kubectl.kubeconfig, ca)
    with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
        urllib.request.urlopen(request, context=admin, timeout=5)
    after = poll(lambda: (lambda now: now if now.get("untrusted_certificate", 0)
                          > before.get("untrusted_certificate", 0) else None)(_refusals(sink)),
                 timeout=5, what="the refused handshake counted")
    assert after.get("no_certificate", 0) == before.get("no_certificate", 0) + 1


def test_activity_posted_while_the_operator_is_killed_is_counted_once(
    kubectl: Kubectl, sink: OperatorProcess, namespace: str
) -> None:
    _logs_reader(kubectl, namespace)
    name = f"{namespace}-chaos"
    _grant(kubectl, namespace, name, "alice", "10m")
    get = _impersonated_get(kubectl.kubeconfig, "alice",
                            f"/api/v1/namespaces/{namespace}/pods")
    for _ in range(40):
        get()
    sink.kill()  # with some of those 40 posted, some in the API server's buffer or retrying
    for _ in range(40):
        get()  # (the API server keeps them and retries its posts: backoff from 2 s)
    sink.start()
    for _ in range(20):
        get()

    def settled() -> dict[str, Any] | None:
        recorded = _activity(kubectl, name)
        return recorded if recorded.get("requests", 0) >= 100 else None

    recorded = poll(settled, timeout=60, interval=0.5, what="all 100 uses counted")
    # Stays at exactly 100: nothing counted twice (the retried batches' ids were skipped).
    poll(lambda: len(_lines(sink, name)) >= 100, timeout=10, what="the lines")
    assert _activity(kubectl, name)["requests"] == 100, recorded
    ids = [line["auditID"] for line in _lines(sink, name)]
    assert len(set(ids)) == 100


def _after(moment: float) -> Any:
    return lambda: time.monotonic() >= moment


def _parse(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


def _refusals(operator: OperatorProcess) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{operator.metrics_port}/metrics",
                                timeout=5) as response:
        text = response.read().decode()
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("kubepim_audit_posts_refused_total{"):
            reason = line.split('reason="', 1)[1].split('"', 1)[0]
            found[reason] = float(line.rsplit(" ", 1)[1])
    return found


def _client_files(kubeconfig: Path) -> tuple[Path, Path, Path]:
    config = json.loads(kubeconfig.read_text())
    user = config["users"][0]["user"]
    cluster = config["clusters"][0]["cluster"]
    directory = Path(tempfile.mkdtemp(prefix="kubepim-e2e-"))
    paths = directory / "ca.crt", directory / "client.crt", directory / "client.key"
    for path, key in zip(paths, (cluster["certificate-authority-data"],
                                 user["client-certificate-data"], user["client-key-data"]),
                         strict=True):
        path.write_bytes(base64.b64decode(key))
    return paths


def _client_context(kubeconfig: Path, cafile: str) -> ssl.SSLContext:
    _, cert, key = _client_files(kubeconfig)
    context = ssl.create_default_context(cafile=cafile)
    context.load_cert_chain(str(cert), str(key))
    return context


def _impersonated_get(kubeconfig: Path, user: str, path: str) -> Any:
    ca, cert, key = _client_files(kubeconfig)
    context = ssl.create_default_context(cafile=str(ca))
    context.load_cert_chain(str(cert), str(key))
    server = json.loads(kubeconfig.read_text())["clusters"][0]["cluster"]["server"]

    def get() -> None:
        request = urllib.request.Request(server + path, headers={"Impersonate-User": user})
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            assert response.status == 200

    return get
