"""``python -m bench.activity``: the audit sink under load, and what it costs grants (issue 18).

One fresh local control plane and operator with its audit sink listening (the bench holds the
API server's client certificate and posts EventLists itself, so the rate is the bench's to
set). Side by side, in one run:

1. without audit load: a burst of ``--grants`` requests (approval → Active) and ``--expiring``
   grants expiring across ``--window`` s (expiresAt → binding gone);
1b. the same while the bench posts the same load to a receiver that only answers 200 (a
   process of its own, ``--null``): what generating and sending the load costs the machine,
   which a real API server pays too, apart from the sink's own work;
2. the same two while the sink takes ``--rate`` events/s (batches of 400, as the API server's
   batch backend sends them; 5% of them uses of live grants, the rest other traffic): how many
   it took, how long a post waited for its answer, the operator's CPU;
3. a flood: as fast as 32 posters can send, for ``--flood`` s: what the sink refused (503,
   ``overloaded``) and the operator's peak RSS against its RSS before.
"""

from __future__ import annotations

import argparse
import http.client
import json
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from kubepim.devcluster import audit, cluster

from . import harness, measures
from .cpu import cpu_seconds
from .harness import NAMESPACE, summary

BATCH = 400


class Poster:
    """Posts EventLists to the sink at a rate, from ``threads`` keep-alive connections.

    Many at once, as the API server's batch backend does (a goroutine per batch): a post
    waits for its answer until what it added is written (up to the flush interval).
    """

    def __init__(self, port: int, directory: Path, grants: list[tuple[str, str]],
                 rate: float, threads: int = 16) -> None:
        self.context = ssl.create_default_context(cafile=str(directory / "ca.crt"))
        self.context.load_cert_chain(str(directory / "client.crt"), str(directory / "client.key"))
        self.port, self.grants, self.rate, self.threads = port, grants, rate, threads
        self.sent = 0
        self.statuses: dict[int, int] = {}
        self.waits: list[float] = []
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.workers = [threading.Thread(target=self._run, args=(n,), daemon=True)
                        for n in range(threads)]

    def batch(self) -> bytes:
        """One EventList of :data:`BATCH` Metadata-level events, as the API server posts."""
        now = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())
        items = []
        for n in range(BATCH):
            used = bool(self.grants) and n % 20 == 0  # 5%: a grant's user, by its binding
            grant, user = self.grants[(n // 20) % len(self.grants)] if used else \
                ("", f"system:serviceaccount:apps:worker-{n % 50}")
            reason = (f'RBAC: allowed by RoleBinding "kubepim-{grant}/{NAMESPACE}" of Role '
                      f'"pod-reader" to User "{user}"') if used else \
                ('RBAC: allowed by ClusterRoleBinding "system:controller" of ClusterRole '
                 '"view" to ServiceAccount "worker/apps"')
            items.append({
                "kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Metadata",
                "auditID": str(uuid.uuid4()), "stage": "ResponseComplete",
                "requestURI": f"/api/v1/namespaces/{NAMESPACE}/pods?limit=500", "verb": "list",
                "user": {"username": "kubepim-admin", "groups": ["system:masters"]},
                **({"impersonatedUser": {"username": user}} if used else {}),
                "sourceIPs": ["127.0.0.1"], "userAgent": "kubectl/v1.37.2",
                "objectRef": {"resource": "pods", "namespace": NAMESPACE,
                              "apiVersion": "v1"},
                "responseStatus": {"metadata": {}, "code": 200},
                "requestReceivedTimestamp": now, "stageTimestamp": now,
                "annotations": {"authorization.k8s.io/decision": "allow",
                                "authorization.k8s.io/reason": reason}})
        return json.dumps({"kind": "EventList", "apiVersion": "audit.k8s.io/v1",
                           "metadata": {}, "items": items}).encode()

    def _run(self, index: int) -> None:
        connection = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.context,
                                                 timeout=30)
        interval = BATCH * self.threads / self.rate if self.rate else 0.0
        due = time.monotonic() + index * interval / self.threads
        while not self.stopped.is_set():
            if interval:
                pause = due - time.monotonic()
                if pause > 0:
                    self.stopped.wait(pause)
                due += interval
            body = self.batch()
            started = time.monotonic()
            try:
                connection.request("POST", "/audit", body=body,
                                   headers={"Content-Type": "application/json"})
                response = connection.getresponse()
                response.read()
                status = response.status
            except (OSError, http.client.HTTPException):
                connection.close()
                connection = http.client.HTTPSConnection("127.0.0.1", self.port,
                                                         context=self.context, timeout=30)
                status = 0
            with self.lock:
                self.statuses[status] = self.statuses.get(status, 0) + 1
                if status == 200:
                    self.sent += BATCH
                    self.waits.append(time.monotonic() - started)

    def __enter__(self) -> Poster:
        for worker in self.workers:
            worker.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stopped.set()
        for worker in self.workers:
            worker.join(timeout=35)


def _burst(bench: harness.Bench, prefix: str, count: int) -> dict[str, Any]:
    approved: dict[str, float] = {}
    names = bench.submit_many(prefix, ["1h"] * count, approved=approved)
    bench.wait_activated(names, timeout=60 + count * 0.2)
    items = bench.custom().list_cluster_custom_object(harness.GROUP, harness.VERSION,
                                                      "accessrequests")["items"]
    activated = {i["metadata"]["name"]: harness.parse_time(i["status"]["activatedAt"])
                 .timestamp() for i in items if i["metadata"]["name"] in approved}
    return summary([max(0.0, activated[n] - approved[n]) for n in names])


def _phase(bench: harness.Bench, tag: str, args: argparse.Namespace) -> dict[str, Any]:
    return {"approval_to_active_s": _burst(bench, f"burst-{tag}", args.grants),
            "expiry": measures.expiry(bench, args.expiring, args.window, 50.0,
                                      prefix=f"exp-{tag}-")}


def main() -> None:
    """Measure and print."""
    parser = argparse.ArgumentParser(prog="python -m bench.activity", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=2000.0, help="audit events per second")
    parser.add_argument("--grants", type=int, default=200, help="requests in each burst")
    parser.add_argument("--expiring", type=int, default=300, help="grants expiring")
    parser.add_argument("--window", type=int, default=30, help="seconds they expire across")
    parser.add_argument("--flood", type=float, default=15.0, help="seconds of flood")
    parser.add_argument("--null", type=Path, help="(internal) answer posts with 200 only, "
                        "with the sink's certificates in this directory; print the port")
    args = parser.parse_args()
    if args.null:
        _null_receiver(args.null)
        return
    results: dict[str, Any] = {"rate": args.rate}
    with tempfile.TemporaryDirectory(prefix="kubepim-bench-") as scratch:
        workdir = Path(scratch)
        port = cluster.free_port()
        sink, _ = audit.prepare(workdir / "audit", port)
        bench, started = harness.start(workdir, operator_env=sink.operator_env())
        try:
            pid = bench.operator.process.pid if bench.operator.process else 0
            # Grants whose users the posted events name (the 5% attributed to a grant).
            names = bench.grant_many("live", ["2h"] * 20)
            live = [(name, f"live-user-{name.rsplit('-', 1)[1]}") for name in names]
            rest = bench.rss_mib()
            results["without"] = _phase(bench, "plain", args)
            null = subprocess.Popen([sys.executable, "-m", "bench.activity", "--null",
                                     str(workdir / "audit")], stdout=subprocess.PIPE, text=True)
            try:
                assert null.stdout is not None
                null_port = int(null.stdout.readline())
                with Poster(null_port, workdir / "audit", live, args.rate) as nowhere:
                    results["null"] = _phase(bench, "null", args)
                results["null"]["posts"] = nowhere.statuses
            finally:
                null.terminate()
                null.wait(timeout=10)
            cpu = cpu_seconds(pid)
            began = time.monotonic()
            with Poster(port, workdir / "audit", live, args.rate) as poster:
                results["with"] = _phase(bench, "loaded", args)
            took = time.monotonic() - began
            results["load"] = {
                "events_accepted_per_s": poster.sent / took, "seconds": took,
                "posts": poster.statuses, "post_answer_s": summary(poster.waits),
                "operator_cpu_per_s": (cpu_seconds(pid) - cpu) / took}
            counted = sum(int((bench.request(n).get("status") or {}).get("activity", {})
                              .get("requests", 0)) for n, _ in live)
            results["load"]["attributed_written"] = counted
            before = bench.rss_mib()
            with Poster(port, workdir / "audit", live, 0.0, threads=32) as flood:
                flooded = time.monotonic()
                while time.monotonic() - flooded < args.flood:
                    time.sleep(0.5)
            results["flood"] = {
                "seconds": args.flood, "posts": flood.statuses,
                "events_accepted": flood.sent, "rss_idle_mib": rest,
                "rss_before_mib": before, "rss_peak_mib": bench.rss_mib("VmHWM"),
                "rss_after_mib": bench.rss_mib()}
        finally:
            bench.operator.stop()
            cluster.stop(started)
    for phase, what in (("without", "no audit load"), ("null", "load to a null receiver"),
                        ("with", "load to the sink")):
        lag = results[phase]["expiry"]["lag_s"]
        act = results[phase]["approval_to_active_s"]
        print(f"{what:24}: {args.grants} grants approval→Active p50 {act['p50']:.3f} "
              f"p99 {act['p99']:.3f} s; {args.expiring} expiries lag p50 {lag['p50']:.3f} "
              f"p99 {lag['p99']:.3f} s")
    load = results["load"]
    print(f"sink at {args.rate:.0f} events/s offered: {load['events_accepted_per_s']:.0f} "
          f"accepted/s, posts {load['posts']}, answer p50 {load['post_answer_s']['p50']:.3f} "
          f"p99 {load['post_answer_s']['p99']:.3f} s, operator CPU "
          f"{load['operator_cpu_per_s']:.2f} s/s; written to the 20 grants: "
          f"{load['attributed_written']}")
    flood = results["flood"]
    print(f"flood {flood['seconds']:.0f} s from 32 posters: posts {flood['posts']}, "
          f"{flood['events_accepted']} events accepted; operator RSS idle "
          f"{flood['rss_idle_mib']:.0f} MiB, before {flood['rss_before_mib']:.0f}, peak "
          f"{flood['rss_peak_mib']:.0f}, after {flood['rss_after_mib']:.0f}")
    out = Path(__file__).parent / "results" / "activity.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2))


def _null_receiver(directory: Path) -> None:
    """Answer every post with 200 at once, over TLS like the sink (the bench's ``--null``)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(directory / "sink.crt"), str(directory / "sink.key"))

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *_: Any) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.socket = context.wrap_socket(server.socket, server_side=True)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
