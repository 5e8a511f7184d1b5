"""Admission round-trip latency: server-side dry-run creates through kubepim's admission chain.

    .venv/bin/python -m bench.admission [--requests 500]

Starts a local control plane and the operator, then times N dry-run creates of an AccessRequest
as an eligible user (the API server runs the mutating policy, the validating policies and the
operator's webhook), beside N dry-run creates of a ConfigMap by the same user (the floor: the same
API round trip with no kubepim admission). Prints p50/p99 of both and writes JSON to
bench/results/admission.json. A benchmark, not a test: nothing asserts a time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import kubernetes

from kubepim.devcluster import binaries, cluster, install
from tests.e2e.support import Kubectl, OperatorProcess, kubectl_binary


def _client(kubeconfig: Path, user: str) -> kubernetes.client.ApiClient:
    configuration = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(str(kubeconfig), client_configuration=configuration)
    client = kubernetes.client.ApiClient(configuration)
    client.set_default_header("Impersonate-User", user)
    return client


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _time(calls: int, call: Any) -> list[float]:
    samples = []
    for _ in range(calls):
        start = time.perf_counter()
        call()
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def main() -> None:
    """Run the measurement and print a table."""
    parser = argparse.ArgumentParser(prog="python -m bench.admission")
    parser.add_argument("--requests", type=int, default=500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        started = cluster.start(work / "cluster", binaries.ensure())
        operator = None
        try:
            install.install(started.kubeconfig)
            kubectl = Kubectl(started.kubeconfig, kubectl_binary())
            kubectl("create", "namespace", "bench")
            kubectl("create", "role", "pod-reader", "--verb=get", "--resource=pods", "-n", "bench")
            kubectl("create", "-f", "-", stdin=json.dumps({
                "apiVersion": "pim.kubepim.dev/v1alpha1", "kind": "RoleEligibility",
                "metadata": {"name": "bench"},
                "spec": {"subjects": [{"kind": "User", "name": "alice"}],
                         "roles": [{"kind": "Role", "name": "pod-reader"}],
                         "namespaces": ["bench"], "approval": {"users": ["bob"]}}}))
            kubectl("create", "rolebinding", "alice-cm", "--clusterrole=edit", "--user=alice",
                    "-n", "bench")
            operator = OperatorProcess(
                install.operator_kubeconfig(started.kubeconfig, work / "operator.kubeconfig"),
                work)
            operator.start()

            client = _client(started.kubeconfig, "alice")
            custom = kubernetes.client.CustomObjectsApi(client)
            core = kubernetes.client.CoreV1Api(client)
            request = {"apiVersion": "pim.kubepim.dev/v1alpha1", "kind": "AccessRequest",
                       "metadata": {"generateName": "bench-"},
                       "spec": {"role": {"kind": "Role", "name": "pod-reader"},
                                "namespace": "bench", "duration": "10m",
                                "justification": "benchmark"}}
            configmap = {"apiVersion": "v1", "kind": "ConfigMap",
                         "metadata": {"generateName": "bench-"}, "data": {"a": "b"}}

            def kubepim_create() -> None:
                custom.create_cluster_custom_object("pim.kubepim.dev", "v1alpha1",
                                                    "accessrequests", request, dry_run="All")

            def floor_create() -> None:
                core.create_namespaced_config_map("bench", configmap, dry_run="All")

            _time(20, kubepim_create)  # warm up connections and caches
            _time(20, floor_create)
            measured = _time(args.requests, kubepim_create)
            floor = _time(args.requests, floor_create)
        finally:
            if operator is not None:
                operator.stop()
            cluster.stop(started)

    result = {
        "requests": args.requests,
        "accessrequest_dry_run_create_ms": {"p50": _percentile(measured, 0.5),
                                            "p99": _percentile(measured, 0.99),
                                            "mean": statistics.fmean(measured)},
        "configmap_dry_run_create_ms (floor)": {"p50": _percentile(floor, 0.5),
                                                "p99": _percentile(floor, 0.99),
                                                "mean": statistics.fmean(floor)},
    }
    print(f"{'admission round trip (ms)':40} {'p50':>8} {'p99':>8} {'mean':>8}")
    for name, stats in list(result.items())[1:]:
        assert isinstance(stats, dict)
        print(f"{name:40} {stats['p50']:8.1f} {stats['p99']:8.1f} {stats['mean']:8.1f}")
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "admission.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
