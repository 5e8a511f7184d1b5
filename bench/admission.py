"""Admission round-trip latency: server-side dry-run creates through kubepim's admission chain.

    .venv/bin/python -m bench.admission [--requests 500]

Times N dry-run creates of an AccessRequest by an eligible user (the API server runs the
mutating policy, the validating policies and the operator's webhook), beside N dry-run creates of
a ConfigMap by the admin (the floor: the same API round trip with no kubepim admission).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes

from kubepim.devcluster import cluster

from . import harness


def _time(calls: int, call: Callable[[], object]) -> list[float]:
    samples = []
    for _ in range(calls):
        start = time.perf_counter()
        call()
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def measure(bench: harness.Bench, requests: int) -> dict[str, Any]:
    """p50/p99 in ms of kubepim's admission chain and of the floor."""
    custom = bench.custom("admission-user", [harness.REQUESTERS])
    core = kubernetes.client.CoreV1Api(bench.client())
    request = {"apiVersion": "pim.kubepim.dev/v1alpha1", "kind": "AccessRequest",
               "metadata": {"generateName": "adm-"},
               "spec": {"role": {"kind": "Role", "name": "pod-reader"},
                        "namespace": harness.NAMESPACE, "duration": "10m",
                        "justification": "benchmark"}}
    configmap = {"apiVersion": "v1", "kind": "ConfigMap",
                 "metadata": {"generateName": "adm-"}, "data": {"a": "b"}}

    def kubepim_create() -> None:
        custom.create_cluster_custom_object("pim.kubepim.dev", "v1alpha1", "accessrequests",
                                            request, dry_run="All")

    def floor_create() -> None:
        core.create_namespaced_config_map(harness.NAMESPACE, configmap, dry_run="All")

    _time(20, kubepim_create)  # warm connections and caches
    _time(20, floor_create)
    return {"requests": requests, "kubepim_ms": harness.summary(_time(requests, kubepim_create)),
            "floor_ms": harness.summary(_time(requests, floor_create))}


def main() -> None:
    """Measure on a fresh local control plane and print p50/p99."""
    parser = argparse.ArgumentParser(prog="python -m bench.admission")
    parser.add_argument("--requests", type=int, default=500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kubepim-bench-") as scratch:
        bench, started = harness.start(Path(scratch))
        try:
            result = measure(bench, args.requests)
        finally:
            bench.operator.stop()
            cluster.stop(started)
    print(f"{'admission round trip (ms)':40} {'p50':>8} {'p99':>8} {'mean':>8}")
    for name in ("kubepim_ms", "floor_ms"):
        stats = result[name]
        print(f"{name:40} {stats['p50']:8.1f} {stats['p99']:8.1f} {stats['mean']:8.1f}")


if __name__ == "__main__":
    main()
