"""``python -m bench.chaos [--short]``: grants under faults, then the invariants that must hold.

A fresh local control plane, two operator replicas (the product's default lease and resync)
talking to the API server through a fault proxy on 127.0.0.1, and a few hundred grants of
10-60 s created and approved at a steady rate. On a schedule: SIGKILL of the leader (restarted
as a pod would be), SIGSTOP of the leader for longer than its lease then SIGCONT,
kube-apiserver restarted, connections reset, latency, a blackhole, and bindings and requests
deleted and edited by hand. Then, once every grant is over:

- no binding alive more than 2 s past its expiry once a leader is up (the distribution is
  reported, raw and counted from when a leader was next up; an expiry inside the injected 300 ms
  latency window or the blackhole is reported apart, not counted: there the network, not the
  operator, sets the bound);
- every approved grant went Active then Expired (but the request deleted by hand);
- status.history holds each transition once, and the JSON audit lines (deduplicated by id, as a
  consumer does) hold exactly the history: no transition without its line, no line without its
  transition, a repeated id repeating the same line;
- no binding without a live grant; the overdue gauge back to 0;
- the replica paused past its lease wrote nothing between its lease deadline and its next
  election (every write carries the replica's name as fieldManager; managedFields keep when).

Prints a table and writes bench/results/chaos.json; exits 1 if an invariant does not hold.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes
from tests.e2e.support import Kubectl, OperatorProcess

from kubepim.devcluster import binaries, cluster, install

from .faultproxy import FaultProxy
from .harness import GROUP, NAMESPACE, VERSION, Bench, parse_time, prepare, summary
from .measures import BindingWatcher

RESULTS = Path(__file__).parent / "results"
LEASE_SECONDS = 10.0
_RENEW_GAP = 2.5  # renewals every 2 s: a longer gap means no leader was renewing
_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


class Clock:
    """Seconds since the run started, and wall time, for the event log."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.events: list[tuple[float, str]] = []

    def now(self) -> float:
        """Seconds since the start."""
        return time.monotonic() - self.start

    def log(self, what: str) -> None:
        """Record and print one event."""
        self.events.append((self.now(), what))
        print(f"[{self.now():6.1f} s] {what}", flush=True)


class LeaseWatcher:
    """Polls the Lease every 100 ms: when renewals happened (wall time), by whom."""

    def __init__(self, bench: Bench) -> None:
        self.renewals: list[tuple[float, str]] = []
        self.holders: list[tuple[float, str]] = []
        self._api = kubernetes.client.CoordinationV1Api(bench.client())
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def holder(self) -> str | None:
        """Who holds the lease, as last seen."""
        return self.holders[-1][1] if self.holders else None

    def _run(self) -> None:
        last = None
        while not self._stopped.is_set():
            try:
                lease = self._api.read_namespaced_lease("kubepim-leader", "kubepim")
                renewed = lease.spec.renew_time
                holder = lease.spec.holder_identity or ""
                if renewed != last:
                    last = renewed
                    self.renewals.append((time.time(), holder))
                if not self.holders or self.holders[-1][1] != holder:
                    self.holders.append((time.time(), holder))
            except Exception:  # noqa: S110 - the API server is down: keep polling
                pass
            time.sleep(0.1)

    def stop(self) -> None:
        """Stop polling."""
        self._stopped.set()

    def leader_up_after(self, moment: float) -> float:
        """The first time at or after ``moment`` at which a leader was alive and renewing.

        Alive at ``moment`` if the holder before it renewed again within a renewal period after
        it (a paused or dead holder's lease is still valid for a while, but nothing acts);
        otherwise when the next renewal came (a leader back, or a new one).
        """
        before = [(t, h) for t, h in self.renewals if t <= moment]
        after = [(t, h) for t, h in self.renewals if t > moment]
        if not after:
            return moment
        if before and after[0][0] - moment <= _RENEW_GAP and after[0][1] == before[-1][1]:
            return moment
        return after[0][0]

def restart_apiserver(started: cluster.Cluster, down: float) -> None:
    """Kill kube-apiserver (SIGKILL), keep it down ``down`` seconds, start it as it was."""
    pid = started.pids["kube-apiserver"]
    command = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
    os.kill(pid, signal.SIGKILL)  # a crash: no graceful drain of watches
    deadline = time.monotonic() + 30
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.05)
    time.sleep(down)
    log = (started.workdir / "kube-apiserver-restarted.log").open("ab")
    process = subprocess.Popen([c.decode() for c in command], stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)
    started.pids["kube-apiserver"] = process.pid
    started.save()


def _with_server(config: Path, port: int) -> None:
    """Point a kubeconfig at 127.0.0.1:``port`` (the fault proxy)."""
    text = json.loads(config.read_text())
    server = text["clusters"][0]["cluster"]["server"]
    text["clusters"][0]["cluster"]["server"] = re.sub(r":\d+$", f":{port}", server)
    config.write_text(json.dumps(text))


def _log_lines(replica: OperatorProcess) -> list[str]:
    return replica.log().splitlines()


def _audit(lines: list[str]) -> list[dict[str, Any]]:
    found = []
    for line in lines:
        _, marker, payload = line.partition(" kubepim.audit ")
        if marker:
            found.append(json.loads(payload))
    return found


def _log_time(line: str) -> float | None:
    match = _LOG_TIME.match(line)
    if not match:
        return None
    moment = datetime.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f")
    return moment.astimezone().timestamp()


def _overdue(replica: OperatorProcess) -> float:
    if not replica.running():
        return 0.0
    url = f"http://127.0.0.1:{replica.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("kubepim_overdue_grants "):
                return float(line.split()[1])
    return 0.0


def run(grants: int, load_seconds: float, workdir: Path) -> dict[str, Any]:
    """Set up, load, inject faults, check invariants; the results."""
    clock = Clock()
    started = cluster.start(workdir / "cluster", binaries.ensure(), audit_sink=False)
    try:
        return _run(started, grants, load_seconds, workdir, clock)
    finally:
        cluster.stop(started)


def _run(started: cluster.Cluster, grants: int, load_seconds: float, workdir: Path,
         clock: Clock) -> dict[str, Any]:
    kubectl = prepare(started.kubeconfig)
    api_port = int(started.server.rsplit(":", 1)[1])
    proxy = FaultProxy(api_port)
    config = install.operator_kubeconfig(started.kubeconfig, workdir / "operator.kubeconfig")
    _with_server(config, proxy.port)
    replicas = {}
    for name in ("a", "b"):
        (workdir / name).mkdir()
        replicas[f"replica-{name}"] = OperatorProcess(
            config, workdir / name, KUBEPIM_IDENTITY=f"replica-{name}",
            KUBEPIM_LEASE_SECONDS=str(int(LEASE_SECONDS)))
    try:
        return _load_and_check(started, grants, load_seconds, workdir, clock, kubectl, proxy,
                               replicas)
    finally:  # no replica outlives the run, whatever failed
        for replica in replicas.values():
            if replica.process is not None and replica.process.poll() is None:
                replica.process.send_signal(signal.SIGCONT)
            replica.stop()
        proxy.close()


def _load_and_check(started: cluster.Cluster, grants: int, load_seconds: float,
                    workdir: Path, clock: Clock, kubectl: Kubectl, proxy: FaultProxy,
                    replicas: dict[str, OperatorProcess]) -> dict[str, Any]:
    replicas["replica-a"].start()
    replicas["replica-b"].start(leader=False)
    bench = Bench(workdir, started.kubeconfig, replicas["replica-a"], kubectl)
    lease = LeaseWatcher(bench)
    watcher = BindingWatcher(bench)
    clock.start = time.monotonic()  # the schedule counts from here
    wall_start = time.time()
    clock.log(f"two replicas up; API server behind the fault proxy on 127.0.0.1:{proxy.port}")

    rng = random.Random(7)  # noqa: S311 - a reproducible schedule, not cryptography
    names = [f"chaos-{i:04d}" for i in range(grants)]
    approved: dict[str, float] = {}
    failures: list[str] = []

    def load() -> None:
        for index, name in enumerate(names):
            target = clock.start + load_seconds * index / grants
            time.sleep(max(0.0, target - time.monotonic()))
            for attempt in range(120):  # the API server or the webhook may be down: retry
                try:
                    if attempt == 0 or name not in _existing:
                        bench.create_request(name, f"user-{index}", f"{rng.randint(10, 60)}s")
                        _existing.add(name)
                    bench.approve(name)
                    approved[name] = time.time()
                    break
                except kubernetes.client.ApiException as error:
                    if error.status == 409 and "already exists" in str(error.body):
                        _existing.add(name)
                    time.sleep(0.5)
                except Exception:
                    time.sleep(0.5)
            else:
                failures.append(name)

    _existing: set[str] = set()
    loader = threading.Thread(target=load, daemon=True)
    loader.start()

    def leader() -> OperatorProcess:
        return replicas[lease.holder() or "replica-a"]

    paused: dict[str, Any] = {}

    def kill_leader() -> None:
        victim = leader()
        clock.log(f"SIGKILL leader {victim.settings['KUBEPIM_IDENTITY']}")
        victim.kill()
        time.sleep(5)
        victim.start(leader=False)
        clock.log(f"{victim.settings['KUBEPIM_IDENTITY']} restarted (as a pod would be)")

    def pause_leader() -> None:
        victim = leader()
        assert victim.process is not None
        paused.update(name=victim.settings["KUBEPIM_IDENTITY"], stopped=time.time())
        clock.log(f"SIGSTOP leader {paused['name']} for {LEASE_SECONDS + 6:.0f} s")
        victim.process.send_signal(signal.SIGSTOP)
        time.sleep(LEASE_SECONDS + 6)
        victim.process.send_signal(signal.SIGCONT)
        paused["resumed"] = time.time()
        clock.log(f"SIGCONT {paused['name']}")

    def apiserver() -> None:
        clock.log("kube-apiserver stopped for 3 s, then started again")
        restart_apiserver(started, 3.0)

    def reset() -> None:
        clock.log(f"fault proxy: reset {proxy.reset()} connections")

    def latency() -> None:
        clock.log("fault proxy: 300 ms latency per chunk for 8 s")
        began = time.time()
        proxy.slow(0.3)
        time.sleep(8)
        proxy.slow(0.0)
        slow_windows.append((began, time.time() + 2.0))  # and the backlog it leaves

    def blackhole() -> None:
        clock.log("fault proxy: blackhole for 6 s")
        began = time.time()
        proxy.blackhole(6)
        slow_windows.append((began, began + 6 + 2.0))  # partitioned: nobody reaches the API

    hand: dict[str, str] = {}
    slow_windows: list[tuple[float, float]] = []

    def by_hand() -> None:
        active = [i["metadata"]["name"] for i in bench.custom().list_cluster_custom_object(
            GROUP, VERSION, "accessrequests")["items"]
            if (i.get("status") or {}).get("phase") == "Active"]
        if len(active) < 3:
            clock.log("by hand: fewer than 3 active grants, skipped")
            return
        deleted_binding, edited, deleted_request = active[:3]
        rbac = bench.rbac()
        rbac.delete_namespaced_role_binding(f"kubepim-{deleted_binding}", NAMESPACE)
        rbac.patch_namespaced_role_binding(
            f"kubepim-{edited}", NAMESPACE,
            [{"op": "add", "path": "/subjects/-", "value": {
                "kind": "User", "name": "mallory", "apiGroup": "rbac.authorization.k8s.io"}}])
        bench.custom().delete_cluster_custom_object(GROUP, VERSION, "accessrequests",
                                                    deleted_request)
        hand.update(deleted_binding=deleted_binding, edited=edited,
                    deleted_request=deleted_request)
        clock.log(f"by hand: deleted the binding of {deleted_binding}, added mallory to "
                  f"{edited}'s, deleted the request {deleted_request}")

    scale = load_seconds / 120
    schedule: list[tuple[float, Callable[[], None]]] = [
        (10 * scale, kill_leader), (30 * scale, pause_leader), (60 * scale, apiserver),
        (75 * scale, reset), (82 * scale, latency), (95 * scale, blackhole),
        (105 * scale, by_hand)]
    for at, fault in schedule:
        time.sleep(max(0.0, clock.start + at - time.monotonic()))
        fault()
    loader.join()
    clock.log(f"load done: {len(approved)} of {grants} created and approved "
              f"({len(failures)} gave up)")

    # Every grant over: the last expiry plus time for a leader to act.
    def all_final() -> bool:
        items = bench.custom().list_cluster_custom_object(GROUP, VERSION,
                                                         "accessrequests")["items"]
        return all((i.get("status") or {}).get("phase") not in (None, "Pending", "Active")
                   for i in items)

    deadline = time.monotonic() + 180
    while not all_final() and time.monotonic() < deadline:
        time.sleep(1)
    time.sleep(3)  # audit lines of the last transitions
    clock.log("every grant final (or the 180 s wait ended)")
    watcher.stop()
    lease.stop()

    # The invariants.
    items = {i["metadata"]["name"]: i for i in bench.custom().list_cluster_custom_object(
        GROUP, VERSION, "accessrequests")["items"]}
    problems: list[str] = []
    lateness_raw: list[float] = []
    lateness: list[float] = []
    late_grants: list[dict[str, Any]] = []
    for name in approved:
        item = items.get(name)
        if name == hand.get("deleted_request"):
            if item is not None:
                problems.append(f"{name}: deleted by hand but still there")
            continue
        if item is None:
            problems.append(f"{name}: approved but gone")
            continue
        status = item.get("status") or {}
        actions = [h["action"] for h in status.get("history") or []]
        core = [a for a in actions if a not in ("BindingRestored",)]
        if core != ["Requested", "Approved", "Activated", "Expired"]:
            problems.append(f"{name}: history {actions}")
            continue
        expires = parse_time(status["expiresAt"]).timestamp()
        gone = watcher.deleted.get(f"kubepim-{name}")
        if gone is None:
            problems.append(f"{name}: its binding was never seen removed")
            continue
        lateness_raw.append(gone - expires)
        lateness.append(gone - lease.leader_up_after(expires))
        if lateness[-1] > 2.0:
            slowed = any(start <= expires <= end for start, end in slow_windows)
            late_grants.append({"request": name, "expired_at": round(expires - wall_start, 1),
                                "late": round(lateness[-1], 2), "under_latency": slowed})
    # Expiries inside an injected network fault (300 ms per chunk, or a blackhole: the leader
    # cannot reach the API server) are reported, not counted: there the bound is the network's.
    late = [g["late"] for g in late_grants if not g["under_latency"]]
    if late:
        problems.append(f"{len(late)} binding(s) outlived their expiry by more than 2 s once "
                        f"a leader was up (worst {max(late):.1f} s)")

    lines = [line for replica in replicas.values() for line in _log_lines(replica)]
    shipped: dict[str, dict[str, Any]] = {}
    for line in _audit(lines):
        first = shipped.setdefault(line["id"], line)
        if first != line:
            problems.append(f"audit id {line['id']} repeated with different content")
    recorded = set()
    for item in items.values():
        uid = item["metadata"]["uid"]
        for index, entry in enumerate((item.get("status") or {}).get("history") or []):
            recorded.add(f"{uid}/{index}")
            line = shipped.get(f"{uid}/{index}")
            if line is None or line["action"] != entry["action"]:
                problems.append(f"{item['metadata']['name']}: no audit line for history "
                                f"{index} ({entry['action']})")
    uids = {item["metadata"]["uid"] for item in items.values()}
    orphan_lines = [i for i in shipped if i not in recorded and not i.endswith("/deleted")
                    and i.rsplit("/", 1)[0] in uids]
    if orphan_lines:
        problems.append(f"{len(orphan_lines)} audit line(s) for transitions no history holds")
    if hand.get("deleted_request") and not any(
            line["id"].endswith("/deleted") and line["request"] == hand["deleted_request"]
            for line in shipped.values()):
        problems.append("no Deleted audit line for the request deleted by hand")

    left = bench.rbac().list_namespaced_role_binding(NAMESPACE).items
    if left:
        problems.append(f"bindings without a live grant: {[b.metadata.name for b in left]}")
    overdue = sum(_overdue(replica) for replica in replicas.values())
    if overdue:
        problems.append(f"kubepim_overdue_grants is {overdue}, not 0")

    # The paused replica: no write between its lease deadline and its next election.
    fenced_writes = []
    if paused.get("resumed"):
        deadline_at = paused["stopped"] + LEASE_SECONDS
        victim = replicas[paused["name"]]
        elected = [t for t in (_log_time(line) for line in _log_lines(victim)
                               if "elected leader" in line) if t and t > paused["resumed"]]
        until = min(elected, default=float("inf"))
        manager = f"kubepim-{paused['name']}"
        objects = list(items.values()) + [b.to_dict() for b in left]
        for obj in objects:
            for field in (obj.get("metadata") or {}).get("managedFields") or []:
                if field.get("manager") != manager:
                    continue
                moment = parse_time(str(field["time"])).timestamp() \
                    if isinstance(field["time"], str) else field["time"].timestamp()
                if deadline_at < moment < until:
                    fenced_writes.append(obj["metadata"]["name"])
        refused = sum("not sent: this replica is not leading" in line
                      for line in _log_lines(victim)
                      if (_log_time(line) or 0) >= paused["resumed"])
        paused.update(fenced_writes_refused=refused, next_elected=None if until == float(
            "inf") else until - paused["resumed"])
        if fenced_writes:
            problems.append(f"{paused['name']} wrote after its lease deadline: "
                            f"{sorted(set(fenced_writes))[:5]}")

    return {
        "grants": len(approved), "gave_up": failures,
        "faults": [{"at": round(at, 1), "what": what} for at, what in clock.events],
        "lateness_raw_seconds": summary(lateness_raw) if lateness_raw else None,
        "lateness_once_a_leader_is_up_seconds": summary(lateness) if lateness else None,
        "over_2s_once_a_leader_is_up": len(late),
        "over_2s_under_injected_network_faults": len(late_grants) - len(late),
        "late_grants": late_grants,
        "audit_lines": len(shipped), "paused_replica": paused, "by_hand": hand,
        "problems": problems,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the chaos suite; print the table; exit 1 if an invariant does not hold."""
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__)
    parser.add_argument("--short", action="store_true",
                        help="60 grants over 60 s, the same faults closer together (for CI)")
    parser.add_argument("--grants", type=int, default=None)
    args = parser.parse_args(argv)
    grants = args.grants or (60 if args.short else 300)
    load_seconds = 60.0 if args.short else 120.0
    begin = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="kubepim-chaos-") as tmp:
        results = run(grants, load_seconds, Path(tmp))
    results["wall_seconds"] = round(time.monotonic() - begin, 1)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / ("chaos-short.json" if args.short else "chaos.json")
    out.write_text(json.dumps(results, indent=2, default=str))
    print(json.dumps({k: v for k, v in results.items() if k != "faults"}, indent=2,
                     default=str))
    print(f"written to {out}")
    if results["problems"]:
        print("INVARIANTS VIOLATED:\n  " + "\n  ".join(results["problems"]), file=sys.stderr)
        return 1
    print("every invariant held")
    return 0


if __name__ == "__main__":
    sys.exit(main())
