"""``python -m bench --only standing``: standing-privilege discovery at scale (issue 16).

A fresh control plane seeded with 3,000 Roles and ClusterRoles (some aggregated) and 20,000
RoleBindings (plus a few hundred ClusterRoleBindings) kubepim did not make, across 500
namespaces, of every kind the catalogue ranks and many it does not. Reported: the operator's
full scan (its own ``kubepim_standing_scan_seconds``), its RSS over its first 40 s (peak, and
settled: the last 10 s) beside the same operator with discovery turned off, how soon a new
critical binding is counted (the watch between scans), ``kubectl pim standing -A -o json`` (the
same domain code, client side), and beside them ``kubectl get rolebindings -A -o json`` on the
same cluster.

Seeding: straight to the API over aiohttp as the admin, 32 requests in flight (bench/scale.py's
``_in_flight``), with the operator stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from kubepim.devcluster import cluster
from kubepim.k8s.client import Kube

from . import harness
from .harness import Bench, percentile, summary, wait_until
from .scale import _in_flight

_RBAC = "/apis/rbac.authorization.k8s.io/v1"
_API = "rbac.authorization.k8s.io"

# What the seeded Roles grant, in turn: harmless most of the time, as in a real cluster.
_ROLE_RULES: list[list[dict[str, Any]]] = [
    [{"apiGroups": [""], "resources": ["pods", "services"], "verbs": ["get", "list", "watch"]}],
    [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "update"]}],
    [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list"]}],
    [{"apiGroups": [""], "resources": ["pods/exec", "pods/log"], "verbs": ["create", "get"]}],
    [{"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get", "patch"]}],
    [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"],
      "resourceNames": ["tls"]}],
]


def _metrics(bench: Bench) -> dict[str, float]:
    """The operator's /metrics, name{labels} → value."""
    url = f"http://127.0.0.1:{bench.operator.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        samples = {}
        for line in response.read().decode().splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                samples[name] = float(value)
        return samples


async def _seed(admin: Kube, sizes: dict[str, int]) -> dict[str, float]:
    """The cluster of the issue; seconds per kind."""
    post = admin._request
    namespaces, roles = sizes["namespaces"], sizes["roles"]
    cluster_roles = sizes["cluster_roles"]
    took: dict[str, float] = {}

    async def namespace(i: int) -> None:
        await post("POST", "/api/v1/namespaces", {"metadata": {"name": f"std-{i}"}})

    async def role(i: int) -> None:
        await post("POST", f"{_RBAC}/namespaces/std-{i % namespaces}/roles", {
            "metadata": {"name": f"role-{i // namespaces}"},
            "rules": _ROLE_RULES[i % len(_ROLE_RULES)]})

    async def cluster_role(i: int) -> None:
        # Every tenth aggregates the ones labelled for it (their rules resolved by the scan).
        if i % 10 == 0:
            body: dict[str, Any] = {"metadata": {"name": f"std-agg-{i}"}, "aggregationRule": {
                "clusterRoleSelectors": [{"matchLabels": {"std/aggregate-to": f"agg-{i}"}}]}}
        else:
            body = {"metadata": {"name": f"std-{i}",
                                 "labels": {"std/aggregate-to": f"agg-{i - i % 10}"}},
                    "rules": _ROLE_RULES[i % len(_ROLE_RULES)]}
        await post("POST", f"{_RBAC}/clusterroles", body)

    def subject(i: int) -> dict[str, Any]:
        if i % 3 == 0:
            return {"kind": "ServiceAccount", "name": f"sa-{i % 50}",
                    "namespace": f"std-{i % namespaces}"}
        return {"apiGroup": _API, "kind": "Group" if i % 3 == 1 else "User",
                "name": f"engineer-{i % 3000}"}

    def role_ref(i: int) -> dict[str, str]:
        pick = i % 4
        if pick == 0:
            return {"apiGroup": _API, "kind": "Role",
                    "name": f"role-{i % max(1, roles // namespaces)}"}
        if pick == 1:
            return {"apiGroup": _API, "kind": "ClusterRole",
                    "name": ("view", "edit", "admin")[i % 3]}
        return {"apiGroup": _API, "kind": "ClusterRole", "name": (
            f"std-agg-{(i % cluster_roles) - (i % cluster_roles) % 10}" if pick == 2
            else f"std-{(i % cluster_roles) | 1}")}

    async def binding(i: int) -> None:
        await post("POST", f"{_RBAC}/namespaces/std-{i % namespaces}/rolebindings", {
            "metadata": {"name": f"binding-{i}"}, "roleRef": role_ref(i),
            "subjects": [subject(i), subject(i + 1)]})

    async def cluster_binding(i: int) -> None:
        await post("POST", f"{_RBAC}/clusterrolebindings", {
            "metadata": {"name": f"std-{i}"}, "roleRef": role_ref(4 * i + 1 + i % 3),  # a CR
            "subjects": [subject(i)]})

    for kind, count, job in (("namespaces", namespaces, namespace),
                             ("roles", roles, role),
                             ("cluster_roles", cluster_roles, cluster_role),
                             ("rolebindings", sizes["rolebindings"], binding),
                             ("clusterrolebindings", sizes["clusterrolebindings"],
                              cluster_binding)):
        started = time.perf_counter()
        await _in_flight(count, job)
        took[kind] = time.perf_counter() - started
    return took


def _window(bench: Bench, seconds: float = 40) -> dict[str, float]:
    """Start the operator; its RSS every 0.1 s for ``seconds``: peak, and settled (last 10 s)."""
    bench.operator.start(timeout=300)
    samples: list[tuple[float, float]] = []
    began = time.monotonic()
    while time.monotonic() - began < seconds:
        with contextlib.suppress(OSError):
            samples.append((time.monotonic() - began, bench.rss_mib()))
        time.sleep(0.1)
    settled = [rss for at, rss in samples if at >= seconds - 10]
    return {"peak": max(rss for _, rss in samples), "settled": percentile(settled, 0.5)}


def _timed(command: list[str], kubeconfig: Path, runs: int = 3) -> dict[str, float]:
    took = []
    env = dict(os.environ, KUBECONFIG=str(kubeconfig))
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env=env)
        took.append(time.perf_counter() - started)
    return summary(took) | {"min": min(took)}


def standing(workdir: Path, sizes: dict[str, int], result: dict[str, Any]) -> dict[str, Any]:
    """The whole measure on a fresh control plane, filling ``result`` as it goes."""
    result["sizes"] = sizes
    bench, started = harness.start(workdir / "std", resync=None)
    try:
        bench.operator.stop()
        # Its admission webhook would refuse nothing here (RBAC objects), but the operator is
        # stopped: the seed does not compete with it.
        admin = Kube.connect(bench.kubeconfig)

        async def seed() -> dict[str, float]:
            try:
                return await _seed(admin, sizes)
            finally:
                await admin.close()

        result["seed_seconds"] = asyncio.run(seed())

        # The same operator with discovery off, then on: RSS sampled from start for the same
        # window (the first scan runs at start, beside kopf's own initial listings).
        bench.operator.settings["KUBEPIM_STANDING_SCAN_SECONDS"] = "0"
        result["rss_without_discovery_mib"] = _window(bench)
        bench.operator.stop()
        del bench.operator.settings["KUBEPIM_STANDING_SCAN_SECONDS"]
        result["rss_with_discovery_mib"] = _window(bench)
        found = _metrics(bench)
        if found.get('kubepim_standing_scans_total{result="ok"}', 0) < 1:
            raise RuntimeError("no standing scan within the window")
        result["scan_s"] = found["kubepim_standing_scan_seconds"]
        result["found"] = {severity: found.get(
            f'kubepim_standing_privileged_bindings{{severity="{severity}"}}', 0)
            for severity in ("critical", "high", "medium")}

        # A new critical binding: counted by the watch, not the next scan.
        counted = []
        for i in range(10):
            before = _metrics(bench)['kubepim_standing_privileged_bindings{severity="critical"}']
            began = time.perf_counter()
            bench.kubectl("create", "clusterrolebinding", f"new-admin-{i}",
                          "--clusterrole=cluster-admin", f"--user=new-admin-{i}")
            wait_until(lambda before=before: _metrics(bench)[
                'kubepim_standing_privileged_bindings{severity="critical"}'] > before, 30,
                "the new binding counted", interval=0.02)
            counted.append(time.perf_counter() - began)
        result["new_critical_counted_s"] = summary(counted)

        result["kubectl_get_rolebindings_s"] = _timed(
            [str(bench.kubectl.binary), "get", "rolebindings", "-A", "-o", "json"],
            bench.kubeconfig)
        result["kubectl_pim_standing_s"] = _timed(
            [str(Path(sys.executable).parent / "kubectl-pim"), "standing", "-A", "-o", "json"],
            bench.kubeconfig)
    finally:
        bench.operator.stop()
        cluster.stop(started)
    return result


def rows(s: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The table's lines for this measure."""
    sizes = s.get("sizes", {})
    if "scan_s" not in s:
        return []
    found = s["found"]
    return [
        (f"standing scan, {sizes['rolebindings']:,} RoleBindings + "
         f"{sizes['roles'] + sizes['cluster_roles']:,} roles (s)",
         f"{s['scan_s']:.2f}  (kubectl get rolebindings -A -o json "
         f"{s['kubectl_get_rolebindings_s']['p50']:.2f}; kubectl pim standing "
         f"{s['kubectl_pim_standing_s']['p50']:.2f})", "beside kubectl get"),
        ("standing: operator RSS, first 40 s (MiB)",
         f"peak {s['rss_with_discovery_mib']['peak']:.0f}, settled "
         f"{s['rss_with_discovery_mib']['settled']:.0f}  (discovery off: "
         f"{s['rss_without_discovery_mib']['peak']:.0f}, "
         f"{s['rss_without_discovery_mib']['settled']:.0f})", "flat"),
        ("standing: found critical / high / medium",
         f"{found['critical']:.0f} / {found['high']:.0f} / {found['medium']:.0f}", ""),
        ("standing: new critical binding counted (s)",
         f"p50 {s['new_critical_counted_s']['p50']:.3f} / max "
         f"{s['new_critical_counted_s']['max']:.3f}", "the watch, not the next scan"),
    ]
