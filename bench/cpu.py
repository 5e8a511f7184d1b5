"""``python -m bench.cpu [--requests N] [--py-spy FILE]``: where a burst's CPU goes.

Runs the burst (N requests created and approved by 16 clients, until all Active) and, in the same
control plane, its floors (N RoleBindings created by a bare client; the client-side floor: each
request created and approved through the same admission plus a bare RoleBinding, the operator
serving admission but not leading), and prints for each the wall
time, the CPU seconds of every process (etcd, kube-apiserver, kube-controller-manager, the
operator, this load generator) read from /proc, and the API requests per item by verb and
resource from the API server's own apiserver_request_total. With --py-spy FILE the operator is
sampled (py-spy, only while it holds the GIL) during the burst into FILE as collapsed stacks.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import kubernetes

from kubepim.devcluster import cluster

from . import harness
from .measures import ActivationWatcher

_TICKS = os.sysconf("SC_CLK_TCK")
_CONTROL_PLANE = ("etcd", "kube-apiserver", "kube-controller-manager")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def control_plane_pids(workdir: Path) -> dict[str, int]:
    """The pids of the control-plane processes whose command line names ``workdir``."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_text().split("\0")
        except OSError:
            continue
        program = Path(argv[0]).name
        if program in _CONTROL_PLANE and any(str(workdir) in arg for arg in argv):
            found[program] = int(entry.name)
    return found


def webhook_calls(bench: harness.Bench) -> Counter[str]:
    """The operator's admission reviews so far, by webhook (kubepim_admission_decisions_total)."""
    url = f"http://127.0.0.1:{bench.operator.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    found: Counter[str] = Counter()
    for line in text.splitlines():
        if line.startswith("kubepim_admission_decisions_total{"):
            webhook = line.split('webhook="', 1)[1].split('"', 1)[0]
            found[webhook] += int(float(line.rsplit(" ", 1)[1]))
    return found


def measured(bench: harness.Bench, pids: dict[str, int], label: str, items: int,
             work: Callable[[], float | None]) -> None:
    """Run ``work``; print its wall time, CPU per process, API requests and webhook runs per item.

    The wall time ends when ``work`` returns, or at the moment (epoch seconds) it returns: the
    burst's last activation as a watch saw it.

    Webhook runs per item tell the API server's own retries apart: a PATCH that conflicts with a
    concurrent write is applied again and admitted again (each approval's run asks two
    SubjectAccessReviews).
    """
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    calls = bench.api_requests()
    reviews = webhook_calls(bench)
    start = time.time()
    ended = work()
    wall = (ended if ended is not None else time.time()) - start
    spent = {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}
    made = bench.api_requests() - calls
    admitted = webhook_calls(bench) - reviews
    print(f"{label}: {items} items in {wall:.2f} s wall, {sum(spent.values()):.2f} CPU s")
    for name, seconds in sorted(spent.items(), key=lambda kv: -kv[1]):
        print(f"  {name:26} {seconds:6.2f} CPU s  {seconds / items * 1000:6.2f} ms per item")
    per_item = {kind: n / items for kind, n in made.items()
                if n / items >= 0.05 and not kind.startswith(("LIST", "WATCH"))}
    print(f"  API requests per item: {sum(per_item.values()):.1f} (LIST/WATCH polling left out)")
    for kind, n in sorted(per_item.items(), key=lambda kv: -kv[1]):
        print(f"    {n:5.2f}  {kind}")
    if admitted:
        print("  webhook runs per item: " + ", ".join(
            f"{webhook} {n / items:.2f}" for webhook, n in sorted(admitted.items())))


def main() -> None:
    """Start a control plane, run the floor and the burst, print where the CPU went."""
    parser = argparse.ArgumentParser(prog="python -m bench.cpu", description=__doc__)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--py-spy", type=Path, default=None, dest="py_spy",
                        help="write the operator's collapsed stacks here (needs py-spy)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kubepim-bench-") as scratch:
        bench, started = harness.start(Path(scratch))
        try:
            assert bench.operator.process is not None
            pids = {**control_plane_pids(Path(scratch)), "operator": bench.operator.process.pid,
                    "load generator (bench)": os.getpid()}
            bench.grant_many("warm", ["1h"] * 20)  # connections and caches warm

            def floor() -> None:
                def bare(i: int) -> None:
                    bench.create_floor_binding(f"cpu-floor-{i}", f"cpu-floor-{i}")
                with ThreadPoolExecutor(16) as pool:
                    list(pool.map(bare, range(args.requests)))

            began: list[float] = []
            watcher: list[ActivationWatcher] = []

            def burst() -> float:
                began.append(time.time())
                names = bench.submit_many("cpu", ["1h"] * args.requests)
                return watcher[0].wait(names, timeout=60 + args.requests * 0.2)

            def client_side() -> None:
                def one(i: int) -> None:
                    bench.create_request(f"cpu-client-{i}", f"cpu-client-user-{i}", "1h")
                    bench.approve(f"cpu-client-{i}")
                    bench.create_floor_binding(f"cpu-client-{i}", f"cpu-client-user-{i}")
                with ThreadPoolExecutor(16) as pool:
                    list(pool.map(one, range(args.requests)))

            measured(bench, pids, "floor (bare RoleBinding creates)", args.requests, floor)
            bench.hold_lease()
            try:
                measured(bench, pids, "client-side floor (create + approve + RoleBinding)",
                         args.requests, client_side)
                with ThreadPoolExecutor(16) as pool:  # gone before the operator leads again
                    list(pool.map(lambda i: bench.custom().delete_cluster_custom_object(
                        "pim.kubepim.dev", "v1alpha1", "accessrequests", f"cpu-client-{i}"),
                        range(args.requests)))
            finally:
                bench.release_lease()
            spy = None
            if args.py_spy:
                spy = subprocess.Popen(
                    [str(Path(sys.executable).parent / "py-spy"), "record", "--gil", "-f", "raw",
                     "-r", "250", "-o", str(args.py_spy), "-p", str(bench.operator.process.pid)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(1)  # attached before the burst starts
            # Watching from here on (its listing before the clock starts): the floors above
            # were measured without its load.
            watcher.append(ActivationWatcher(bench, "cpu-"))
            before = {name: cpu_seconds(pid) for name, pid in pids.items()}
            try:
                measured(bench, pids, "burst (create + approve until Active)", args.requests,
                         burst)
            finally:
                watcher[0].stop()
            # The burst's Events (three per grant) wait while grants go first: when the last
            # was posted, counted after the measure (polling would have loaded it).
            wanted = 3 * args.requests

            def events() -> int:
                listed = kubernetes.client.CoreV1Api(bench.client()).list_namespaced_event(
                    "default", field_selector="involvedObject.kind=AccessRequest")
                return sum(1 for e in listed.items
                           if (e.involved_object.name or "").startswith("cpu-")
                           and not e.involved_object.name.startswith("cpu-client-"))
            harness.wait_until(lambda: events() >= wanted, 120, f"{wanted} Events posted")
            spent = sum(cpu_seconds(pid) - before[name] for name, pid in pids.items())
            print(f"  Events: all {wanted} posted {time.time() - began[0]:.2f} s after the "
                  f"burst began (polled every 0.2 s); {spent:.2f} CPU s in all until then")
            if spy is not None:
                spy.send_signal(2)
                spy.wait(60)
                print(f"operator stacks: {args.py_spy}")
        finally:
            bench.operator.stop()
            cluster.stop(started)


if __name__ == "__main__":
    main()
