"""Metrics a real Prometheus scrapes, and an audit trail that survives restarts and retention."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import pim
from tests.e2e.support import Kubectl, OperatorProcess, free_port, poll

PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")
needs_prometheus = pytest.mark.skipif(
    PROMTOOL is None or PROMETHEUS is None,
    reason="promtool/prometheus missing: `make test` installs Debian's prometheus package")


def _metrics(operator: OperatorProcess) -> str:
    url = f"http://127.0.0.1:{operator.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


def _gauge(operator: OperatorProcess, name: str) -> float:
    for line in _metrics(operator).splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not exported")


def _grant(kubectl: Kubectl, namespace: str, duration: str) -> dict[str, Any]:
    pim.pod_reader_for_alice(kubectl, namespace, maxDuration="10m")
    pim.apply(kubectl, pim.access_request(
        namespace, role={"kind": "Role", "name": "pod-reader"}, namespace=namespace,
        duration=duration, justification="INC-9: disk full"), as_user="alice")
    pim.wait_phase(kubectl, namespace, "Pending")
    pim.approve(kubectl, namespace, "bob", comment="go")
    return pim.wait_phase(kubectl, namespace, "Active")


def _audit_lines(operator: OperatorProcess, request: str) -> list[dict[str, Any]]:
    return operator.json_lines("kubepim.audit", request)


@needs_prometheus
def test_metrics_output_passes_promtool_check_metrics(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    _grant(kubectl, namespace, "1m")
    text = _metrics(operator)
    assert PROMTOOL is not None
    checked = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True,
                             text=True, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    for name in ("kubepim_active_grants", "kubepim_overdue_grants", "kubepim_requests_total",
                 "kubepim_activation_seconds_bucket", "kubepim_admission_seconds_bucket",
                 "kubepim_build_info", "kubepim_reconcile_errors_total"):
        assert name in text
    assert 'kubepim_admission_decisions_total{result="allowed",webhook="accessrequest-create"}' \
        in text


@pytest.fixture
def prometheus(operator: OperatorProcess, tmp_path: Path) -> Iterator[str]:
    """A real Prometheus on 127.0.0.1 scraping the operator every second; yields its URL."""
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(json.dumps({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "kubepim", "static_configs": [
            {"targets": [f"127.0.0.1:{operator.metrics_port}"]}]}],
    }))
    assert PROMETHEUS is not None
    log = (tmp_path / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [PROMETHEUS, f"--config.file={config}", f"--web.listen-address=127.0.0.1:{port}",
         f"--storage.tsdb.path={tmp_path / 'data'}", "--storage.tsdb.retention.time=1h"],
        stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        poll(lambda: _query(url, 'up{job="kubepim"}') == 1.0, timeout=30,
             what="Prometheus scraping the operator")
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        log.close()


def _query(url: str, expression: str) -> float | None:
    try:
        with urllib.request.urlopen(
                f"{url}/api/v1/query?query={urllib.parse.quote(expression)}", timeout=2) as r:
            result = json.loads(r.read())["data"]["result"]
    except OSError:
        return None
    return float(result[0]["value"][1]) if result else None


@needs_prometheus
def test_prometheus_sees_the_active_grants_gauge_go_up_then_down(
    kubectl: Kubectl, operator: OperatorProcess, prometheus: str, namespace: str
) -> None:
    poll(lambda: _query(prometheus, "kubepim_active_grants") == 0.0, timeout=30,
         what="no active grants before the test")
    _grant(kubectl, namespace, "5s")
    poll(lambda: _query(prometheus, "kubepim_active_grants") == 1.0, timeout=10,
         what="Prometheus seeing one active grant")
    pim.wait_phase(kubectl, namespace, "Expired", timeout=15)
    poll(lambda: _query(prometheus, "kubepim_active_grants") == 0.0, timeout=10,
         what="Prometheus seeing the grant gone")
    lag = _query(prometheus, "sum(kubepim_expiry_lag_seconds_count)")
    assert lag is not None and lag >= 1


def test_audit_lines_and_history_hold_each_transition_once_across_a_restart(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    _grant(kubectl, namespace, "6s")
    operator.kill()
    operator.start()
    expired = pim.wait_phase(kubectl, namespace, "Expired", timeout=20)

    history = [h["action"] for h in expired["status"]["history"]]
    assert history == ["Requested", "Approved", "Activated", "Expired"]
    # At least once: the new leader logs again what the killed one may not have. A consumer
    # keeps the first line of each id; a repeated id repeats the same line exactly.
    shipped = _audit_lines(operator, namespace)
    lines: list[dict[str, Any]] = []
    for line in shipped:
        first = next((kept for kept in lines if kept["id"] == line["id"]), None)
        if first is None:
            lines.append(line)
        else:
            assert first == line, "a repeated id must repeat the same line"
    assert [line["action"] for line in lines] == history
    uid = expired["metadata"]["uid"]
    assert [line["id"] for line in lines] == [f"{uid}/{i}" for i in range(4)]
    activated = lines[2]
    assert activated["requester"] == "alice" and activated["role"] == "Role/pod-reader"
    assert activated["expiresAt"] is not None and activated["namespace"] == namespace


def test_compliance_export_lists_who_held_what_and_who_approved_it(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    _grant(kubectl, namespace, "1m")
    exported = subprocess.run(
        [sys.executable, "-m", "kubepim.export", "--format", "json",
         f"--kubeconfig={kubectl.kubeconfig}", "--since", "2020-01-01"],
        capture_output=True, text=True, check=True, timeout=60)
    rows = [row for row in json.loads(exported.stdout) if row["request"] == namespace]
    assert len(rows) == 1
    row = rows[0]
    assert (row["requester"], row["role"], row["namespace"]) == \
        ("alice", "Role/pod-reader", namespace)
    assert row["approved_by"] == "bob"
    assert row["justification"] == "INC-9: disk full"
    assert row["ended_at"] == "" and row["outcome"] == "Active"

    csv_out = subprocess.run(
        [sys.executable, "-m", "kubepim.export", f"--kubeconfig={kubectl.kubeconfig}",
         "--since", "2020-01-01"], capture_output=True, text=True, check=True, timeout=60)
    assert csv_out.stdout.splitlines()[0].startswith("request,requester,role,namespace,")


def test_finished_requests_are_deleted_after_the_retention_with_a_final_audit_line(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    operator.stop()
    # Retention is applied by its own periodic pass: this test is about it, so it runs it often.
    operator.settings["KUBEPIM_RETENTION"] = "3s"
    operator.settings["KUBEPIM_RETENTION_CHECK_SECONDS"] = "2"
    operator.start()
    try:
        kubectl("create", "role", "pod-reader", "--verb=get", "--resource=pods", "-n", namespace)
        pim.apply(kubectl, pim.eligibility(
            namespace, subjects=[{"kind": "User", "name": "alice"}],
            roles=[{"kind": "Role", "name": "pod-reader"}], namespaces=[namespace],
            approval={"users": ["bob"]}))
        pim.apply(kubectl, pim.access_request(
            namespace, role={"kind": "Role", "name": "pod-reader"}, namespace=namespace,
            justification="short-lived"), as_user="alice")
        pim.wait_phase(kubectl, namespace, "Pending")
        pim.act(kubectl, namespace, "alice", "Withdraw")
        pim.wait_phase(kubectl, namespace, "Withdrawn")
        poll(lambda: "NotFound" in kubectl("get", "accessrequest", namespace,
                                           check=False).stderr,
             timeout=20, what="the finished request deleted after its retention")
        final = _audit_lines(operator, namespace)[-1]
        assert final["action"] == "Deleted"
        assert [h["action"] for h in final["history"]] == ["Requested", "Withdrawn"]
    finally:
        operator.stop()
        del operator.settings["KUBEPIM_RETENTION"]
        del operator.settings["KUBEPIM_RETENTION_CHECK_SECONDS"]
