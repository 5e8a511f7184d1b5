"""``python -m bench --only scale``: kubepim in a whole organisation's cluster (issue 13).

A fresh control plane seeded with 45,000 finished AccessRequests (full history, as the operator
writes them), 1,000 RoleEligibilities, 2,000 namespaces and 50,000 RoleBindings kubepim did not
make, then 5,000 live grants made through the operator. Reported: the operator's idle RSS (and,
on a second fresh control plane, its RSS with only the 5,000 live grants), the takeover time to a
fully reconciled state, the API requests of one periodic resync, the expiry lag of the 5,000
live grants, and the bytes etcd stores per finished request.

Seeding (docs/scale.md): straight to the API over aiohttp, 32 requests in flight, with the
operator stopped: namespaces, bindings, eligibilities and requests are created as the admin;
each finished request's status is then written as the operator's ServiceAccount (the only
identity the status policy lets write a phase), copied from a request the operator itself
finished in this run, so each seeded request is byte-for-byte what the operator stores.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import urllib.request
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp

from kubepim.devcluster import cluster
from kubepim.k8s.client import ApiError, Conflict, Kube

from . import harness
from .cpu import control_plane_pids, cpu_seconds
from .harness import Bench, percentile, summary, wait_until
from .measures import BindingWatcher, _retrying

_CUSTOM = "/apis/pim.kubepim.dev/v1alpha1"
_RBAC = "/apis/rbac.authorization.k8s.io/v1"


def _operator_metrics(bench: Bench) -> str:
    """The operator's /metrics, as text."""
    url = f"http://127.0.0.1:{bench.operator.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


def _metric(bench: Bench, name: str) -> float:
    """One unlabelled sample of the operator's /metrics."""
    for line in _operator_metrics(bench).splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def _labelled(bench: Bench, name: str) -> dict[str, float]:
    """A counter's samples by their (first) label value, from the operator's /metrics."""
    return {line.split('"')[1]: float(line.rsplit(" ", 1)[1])
            for line in _operator_metrics(bench).splitlines() if line.startswith(name + "{")}


def _buckets(bench: Bench, name: str) -> dict[str, float]:
    """A histogram's cumulative bucket counts by ``le``, from the operator's /metrics."""
    found = _histograms(_operator_metrics(bench), name, {}, "").get("", {})
    return {slot[3:]: count for slot, count in found.items() if slot.startswith("le=")}


# Across the expiry window, where a revoke's time goes on the server's side: the API server's
# own latency of binding DELETEs, the priority level the operator's ServiceAccount is queued in
# (API Priority and Fairness), and etcd's latency for bindings, by operation.
_SERVER_HISTOGRAMS = (
    ("apiserver_request_duration_seconds", {"verb": "DELETE", "resource": "rolebindings"}, ""),
    ("apiserver_flowcontrol_request_wait_duration_seconds", {"flow_schema": "service-accounts"},
     "execute"),
    ("etcd_request_duration_seconds",
     {"group": "rbac.authorization.k8s.io", "resource": "rolebindings"},
     "operation"),
)
_SERVER_SCALARS = ("go_gc_duration_seconds_sum", "go_gc_duration_seconds_count",
                   "go_memstats_heap_inuse_bytes", "process_cpu_seconds_total")


def _labels(line: str) -> dict[str, str]:
    inner = line[line.index("{") + 1:line.rindex("}")]
    return {k: v.strip('"') for k, v in (part.split("=", 1) for part in inner.split('",'))}


def _histograms(text: str, name: str, match: dict[str, str], by: str
                ) -> dict[str, dict[str, float]]:
    """A histogram's cumulative buckets, sum and count from a /metrics text.

    Summed over the series that carry ``match``, grouped by the label ``by`` ("" for one group).
    """
    found: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        if not line.startswith(name + "_"):
            continue
        kind = line[len(name) + 1:].split("{", 1)[0].split(" ", 1)[0]
        if kind not in ("bucket", "sum", "count") or "{" not in line:
            continue
        labels = _labels(line)
        if any(labels.get(k) != v for k, v in match.items()):
            continue
        group = found.setdefault(labels.get(by, "") if by else "", {})
        slot = f"le={labels['le']}" if kind == "bucket" else kind
        group[slot] = group.get(slot, 0.0) + float(line.rsplit(" ", 1)[1])
    return found


def _quantiles(delta: dict[str, float]) -> dict[str, float | None]:
    """p50/p99 (upper bound of the bucket they fall in), mean and count of a histogram delta."""
    count = delta.get("count", 0.0)
    bounds = sorted((float(k[3:]), v) for k, v in delta.items() if k.startswith("le="))
    result: dict[str, float | None] = {"count": count,
                                       "mean": delta.get("sum", 0.0) / count if count else None}
    for label, q in (("p50_le", 0.5), ("p99_le", 0.99)):
        result[label] = next((le for le, n in bounds if count and n >= q * count), None)
    return result


def _pids(bench: Bench, workdir: Path) -> dict[str, int]:
    """The control plane's processes under ``workdir`` and the operator's."""
    assert bench.operator.process is not None
    return {**control_plane_pids(workdir), "operator": bench.operator.process.pid}


def _window_probe(bench: Bench, pids: dict[str, int]) -> dict[str, Any]:
    """What the window's differences are taken from.

    The API server's and the operator's histograms, the API server's Go runtime and every
    process's CPU seconds.
    """
    server = bench.kubectl("get", "--raw", "/metrics").stdout
    operator = _operator_metrics(bench)
    probe: dict[str, Any] = {"at": time.monotonic()}
    for name, match, by in _SERVER_HISTOGRAMS:
        probe[name] = _histograms(server, name, match, by)
    probe["kubepim_expiry_revoke_stage_seconds"] = _histograms(
        operator, "kubepim_expiry_revoke_stage_seconds", {}, "stage")
    probe["apiserver_runtime"] = {
        line.split(" ")[0]: float(line.rsplit(" ", 1)[1]) for line in server.splitlines()
        if line.split(" ")[0] in _SERVER_SCALARS}
    probe["cpu_s"] = {}
    for process, pid in pids.items():
        with contextlib.suppress(OSError):  # (a process that has gone)
            probe["cpu_s"][process] = cpu_seconds(pid)
    return probe


def _window_difference(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """The window between two probes: latencies by series, CPU per process, the GC's share."""
    result: dict[str, Any] = {"seconds": after["at"] - before["at"]}
    for name in [n for n, _, _ in _SERVER_HISTOGRAMS] + ["kubepim_expiry_revoke_stage_seconds"]:
        result[name] = {
            group: _quantiles({k: v - before[name].get(group, {}).get(k, 0.0)
                               for k, v in slots.items()})
            for group, slots in after[name].items()}
    result["cpu_s"] = {p: round(after["cpu_s"][p] - before["cpu_s"].get(p, 0.0), 2)
                       for p in after["cpu_s"]}
    runtime = {k: after["apiserver_runtime"].get(k, 0.0) - before["apiserver_runtime"].get(k, 0.0)
               for k in _SERVER_SCALARS}
    result["apiserver_gc"] = {"pauses": runtime["go_gc_duration_seconds_count"],
                              "pause_s": runtime["go_gc_duration_seconds_sum"],
                              "heap_inuse_mib": after["apiserver_runtime"].get(
                                  "go_memstats_heap_inuse_bytes", 0.0) / 2**20}
    return result


async def _in_flight(count: int, job: Callable[[int], Awaitable[None]],
                     concurrency: int = 32) -> None:
    """Run ``job(i)`` for every i < count, ``concurrency`` at a time, retrying load shedding."""
    numbers = iter(range(count))

    async def worker() -> None:
        for i in numbers:
            for attempt in range(8):
                try:
                    await job(i)
                    break
                except ApiError as error:
                    if error.status == 409:
                        break  # made by an attempt whose answer was lost
                    if (error.status != 429 and error.status < 500) or attempt == 7:
                        raise
                    await asyncio.sleep(0.2 * (attempt + 1))
                except (TimeoutError, aiohttp.ClientError):
                    if attempt == 7:  # an overloaded API server: slow down and try again
                        raise
                    await asyncio.sleep(0.5 * (attempt + 1))

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def _seed(admin: Kube, operator: Kube, template: dict[str, Any], sizes: dict[str, int]
                ) -> dict[str, float]:
    """Create the organisation's cluster; seconds per kind."""
    post = admin._request
    took: dict[str, float] = {}
    namespaces = sizes["namespaces"]

    async def namespace(i: int) -> None:
        await post("POST", "/api/v1/namespaces", {"metadata": {"name": f"org-{i}"}})

    async def binding(i: int) -> None:
        await post("POST", f"{_RBAC}/namespaces/org-{i % namespaces}/rolebindings", {
                       "metadata": {"name": f"team-{i}"},
                       "roleRef": {"apiGroup": "rbac.authorization.k8s.io",
                                   "kind": "ClusterRole", "name": "view"},
                       "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                                     "name": f"engineer-{i % 3000}"}]})

    async def eligibility(i: int) -> None:
        await post("POST", f"{_CUSTOM}/roleeligibilities", {
            "apiVersion": "pim.kubepim.dev/v1alpha1", "kind": "RoleEligibility",
            "metadata": {"name": f"org-{i}"},
            "spec": {"subjects": [{"kind": "User", "name": f"engineer-{i}"}],
                     "roles": [{"kind": "Role", "name": "pod-reader"}],
                     "namespaces": [f"org-{i % namespaces}"],
                     "approval": {"users": ["bob"]}}})

    status = {k: v for k, v in template["status"].items() if k != "kopf"}
    # The requester is stamped by the API server from the creating identity (the admin here).
    spec = {k: v for k, v in template["spec"].items() if k != "requester"}

    async def finished(i: int) -> None:
        name = f"old-{i}"
        try:
            created = await post("POST", f"{_CUSTOM}/accessrequests", {
                "apiVersion": "pim.kubepim.dev/v1alpha1", "kind": "AccessRequest",
                "metadata": {"name": name}, "spec": spec})
        except Conflict:  # made by an attempt whose answer was lost: finish it
            created = await post("GET", f"{_CUSTOM}/accessrequests/{name}")
            if (created.get("status") or {}).get("settled"):
                return
        await operator.patch_request_status(name, status,
                                            created["metadata"]["resourceVersion"])

    for kind, count, job in (("namespaces", namespaces, namespace),
                             ("rolebindings", sizes["rolebindings"], binding),
                             ("eligibilities", sizes["eligibilities"], eligibility),
                             ("finished_requests", sizes["finished"], finished)):
        started = time.perf_counter()
        await _in_flight(count, job)
        took[kind] = time.perf_counter() - started
    return took


def _stored_bytes(bench: Bench, names: list[str]) -> dict[str, Any]:
    """Median bytes of a finished request as stored (JSON, managedFields included), by part."""
    sizes: dict[str, list[float]] = {"total": [], "history": [], "conditions": [],
                                     "managedFields": [], "approvals": [], "spec": []}
    for name in names:
        body = bench.kubectl("get", "accessrequest", name, "-o", "json",
                             "--show-managed-fields").stdout
        item = json.loads(body)
        compact = len(json.dumps(item, separators=(",", ":")))
        sizes["total"].append(compact)
        status = item.get("status") or {}
        for part, value in (("history", status.get("history")),
                            ("conditions", status.get("conditions")),
                            ("approvals", status.get("approvals")),
                            ("managedFields", item["metadata"].get("managedFields")),
                            ("spec", item.get("spec"))):
            sizes[part].append(len(json.dumps(value, separators=(",", ":"))))
    return {part: percentile(values, 0.5) for part, values in sizes.items()}


def _storage_bytes(bench: Bench) -> float:
    """The API server's view of etcd's database size (apiserver_storage_size_bytes)."""
    for line in bench.kubectl("get", "--raw", "/metrics").stdout.splitlines():
        if line.startswith("apiserver_storage_size_bytes"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _idle_rss(bench: Bench, seconds: int = 60) -> dict[str, float]:
    samples = []
    for _ in range(seconds):
        samples.append(bench.rss_mib())
        time.sleep(1)
    return {"median_mib": percentile(samples, 0.5), "max_mib": max(samples)}


def _live_grants(bench: Bench, count: int, expire_in: float, window: float) -> list[str]:
    """``count`` grants made through the operator; they expire ``expire_in`` s from now on.

    Spread across ``window`` seconds.
    """
    target = time.time() + expire_in
    names = [f"live-{i}" for i in range(count)]

    def one(i: int) -> None:
        left = int(target + i * window / count - time.time())
        _retrying(lambda: bench.create_request(names[i], f"live-user-{i}", f"{max(left, 60)}s"))
        _retrying(lambda: bench.approve(names[i]))

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(one, range(count)))
    bench.wait_activated(names, timeout=120 + count * 0.2)
    return names


def _counters(bench: Bench) -> tuple[Any, tuple[float, float], tuple[float, float]]:
    """API requests so far; the operator's reconcile and queue-wait (sum, count)."""
    def pair(name: str) -> tuple[float, float]:
        prefix = f"kubepim_workqueue_{name}_duration_seconds"
        return _metric(bench, f"{prefix}_sum"), _metric(bench, f"{prefix}_count")
    return bench.api_requests(), pair("work"), pair("queue")


def _expired_at(bench: Bench, name: str) -> float | None:
    """When the operator recorded the request's expiry (its Expired history entry), if it did."""
    history = (bench.request(name).get("status") or {}).get("history") or []
    times = [harness.parse_time(e["time"]).timestamp() for e in history
             if e.get("action") == "Expired"]
    return times[0] if times else None


def _reconciled(bench: Bench, live: int) -> bool:
    """Every live grant reconciled since the operator started.

    (Not the queue's depth: it counts each grant's expiry timer.)
    """
    return _metric(bench, "kubepim_active_grants") >= live


def _one_resync(bench: Bench) -> dict[str, Any]:
    """API requests made from the end of one resync to the end of the next.

    Lease traffic is left out (renewals, not resync work).
    """
    seen = _metric(bench, "kubepim_resyncs_total")
    wait_until(lambda: _metric(bench, "kubepim_resyncs_total") > seen, 200, "a resync")
    before = bench.api_requests()
    seen = _metric(bench, "kubepim_resyncs_total")
    wait_until(lambda: _metric(bench, "kubepim_resyncs_total") > seen, 200, "the next resync")
    made = bench.api_requests() - before
    calls = {kind: n for kind, n in made.items() if "leases" not in kind and n}
    return {"requests": sum(calls.values()), "by_kind": dict(sorted(calls.items()))}


def scale(workdir: Path, sizes: dict[str, int], result: dict[str, Any]) -> dict[str, Any]:
    """The whole measure (two fresh control planes), filling ``result`` as it goes.

    What was measured survives a later failure; see the module docstring.
    """
    result["sizes"] = sizes
    live = sizes["live"]
    bench, started = harness.start(workdir / "org", resync="60")
    try:
        # A few requests the operator itself takes through their whole life: their stored
        # form is the template of the seeded ones, and what etcd holds per finished request.
        sample = bench.grant_many("sample", ["3s"] * 20)
        wait_until(lambda: all((bench.request(n).get("status") or {}).get("settled")
                               for n in sample), 60, "the sample settled")
        result["stored_bytes_per_finished_request"] = _stored_bytes(bench, sample)
        template = bench.request(sample[0])
        bench.operator.stop()
        # Its admission webhook would refuse creates while it is down: the seed goes around it
        # (the operator writes the configuration again when it starts).
        for config in bench.kubectl("get", "validatingwebhookconfigurations",
                                    "-o", "name").stdout.split():
            if "kubepim" in config:
                bench.kubectl("delete", config)

        storage_before = _storage_bytes(bench)
        admin = Kube.connect(bench.kubeconfig)
        operator = Kube.connect(bench.operator.kubeconfig)

        async def seed() -> dict[str, float]:
            try:
                return await _seed(admin, operator, template, sizes)
            finally:
                await admin.close()
                await operator.close()

        result["seed_seconds"] = asyncio.run(seed())
        result["etcd_bytes_added_by_seed"] = _storage_bytes(bench) - storage_before

        start = time.perf_counter()
        bench.operator.start(timeout=300)
        wait_until(lambda: "took over" in bench.operator.log_path.read_text(), 300,
                   "the takeover", interval=0.2)
        result["takeover_without_live_s"] = time.perf_counter() - start

        # Expiring after the measures below: making them takes about 0.06 s each (5,000: ~5
        # minutes, which a fixed 360 s left too little of; the full run's resync measure then
        # counted their expiries).
        names = _live_grants(bench, live, expire_in=360 + live * 0.1, window=60)
        wait_until(lambda: _reconciled(bench, live), 120, "reconciled", interval=0.5)
        result["idle_rss"] = _idle_rss(bench)
        result["resync"] = _one_resync(bench)

        measured = time.time()
        watcher = BindingWatcher(bench)  # before the restart: no expiry goes unseen
        bench.operator.stop()
        start = time.perf_counter()
        bench.operator.start(timeout=300)
        wait_until(lambda: _reconciled(bench, live), 300, "every live grant reconciled",
                   interval=0.2)
        result["takeover_s"] = time.perf_counter() - start
        if sizes.get("stop_after_takeover"):  # (a takeover-only run: the expiries not awaited)
            return result
        reconciled_at = time.time()

        expires = {n: harness.parse_time(bench.request(n)["status"]["expiresAt"]).timestamp()
                   for n in names}
        first, last = min(expires.values()), max(expires.values())
        # (a few seconds early: the probes below take a moment on a busy machine)
        wait_until(lambda: time.time() >= first - 5, max(first - time.time(), 0) + 5,
                   "the expiry window", interval=0.5)
        pids = _pids(bench, workdir / "org")
        before, probe = _counters(bench), _window_probe(bench, pids)
        wait_until(lambda: all(f"kubepim-{n}" in watcher.deleted for n in names),
                   max(last - time.time(), 0) + 120, f"{live} bindings removed", interval=0.5)
        after = _counters(bench)
        result["expiry_window_server"] = _window_difference(probe, _window_probe(bench, pids))
        result["early_revokes"] = _labelled(bench, "kubepim_expiry_early_revokes_total")
        # Where an expiry's lag goes: the timer firing late (the operator's event loop), or the
        # revoke's DELETE (the API server): the operator's own histograms, cumulative by le.
        result["timer_lateness_buckets"] = _buckets(
            bench, "kubepim_workqueue_timer_lateness_seconds")
        result["operator_expiry_lag_buckets"] = _buckets(bench, "kubepim_expiry_lag_seconds")
        watcher.stop()
        result["expiry_lag_s"] = summary(
            [watcher.deleted[f"kubepim-{n}"] - expires[n] for n in names])
        result["expired_before_measures_ended"] = sum(
            1 for n in names if expires[n] < measured)
        # Where the expiry window fell, and what the operator did in it: the lag as the
        # requests record it (the Expired entry's time), independent of the watcher above.
        result["expiry_window"] = {
            "first_expiry_after_takeover_s": first - reconciled_at,
            "api_requests": {k: v for k, v in sorted((after[0] - before[0]).items())
                             if "leases" not in k and v},
            "reconciles": after[1][1] - before[1][1],
            "reconcile_mean_s": (after[1][0] - before[1][0]) / max(after[1][1] - before[1][1], 1),
            "queue_wait_mean_s": (after[2][0] - before[2][0]) / max(after[2][1] - before[2][1], 1),
        }
        with ThreadPoolExecutor(16) as pool:
            recorded = list(pool.map(lambda n: _expired_at(bench, n), names))
        result["expiry_lag_recorded_s"] = summary(
            [at - expires[n] for n, at in zip(names, recorded, strict=True) if at is not None])
    finally:
        bench.operator.stop()
        cluster.stop(started)

    # The same operator with only the live grants: the baseline its RSS is compared with, and
    # the expiry lag of the same 5,000 grants with nothing else in the cluster.
    bench, started = harness.start(workdir / "baseline", resync="60")
    try:
        watcher = BindingWatcher(bench)
        names = _live_grants(bench, live, expire_in=360 + live * 0.1, window=60)
        wait_until(lambda: _reconciled(bench, live), 120, "reconciled", interval=0.5)
        result["baseline_idle_rss"] = _idle_rss(bench)
        expires = {n: harness.parse_time(bench.request(n)["status"]["expiresAt"]).timestamp()
                   for n in names}
        first, last = min(expires.values()), max(expires.values())
        # (a few seconds early: the probes below take a moment on a busy machine)
        wait_until(lambda: time.time() >= first - 5, max(first - time.time(), 0) + 5,
                   "the expiry window", interval=0.5)
        pids = _pids(bench, workdir / "baseline")
        probe = _window_probe(bench, pids)
        wait_until(lambda: all(f"kubepim-{n}" in watcher.deleted for n in names),
                   max(last - time.time(), 0) + 120, f"{live} bindings removed", interval=0.5)
        result["baseline_expiry_window_server"] = _window_difference(
            probe, _window_probe(bench, pids))
        watcher.stop()
        result["baseline_early_revokes"] = _labelled(bench, "kubepim_expiry_early_revokes_total")
        result["baseline_expiry_lag_s"] = summary(
            [watcher.deleted[f"kubepim-{n}"] - expires[n] for n in names])
    finally:
        bench.operator.stop()
        cluster.stop(started)
    result["rss_over_baseline"] = (result["idle_rss"]["median_mib"]
                                   / result["baseline_idle_rss"]["median_mib"])
    return result

