"""``python -m bench.notify``: notifications beside a burst of grants, and what they cost it.

One fresh local control plane and operator. First ``--requests`` requests created and approved
at once with no NotificationRoute (activation latency: approval accepted → activatedAt); then a
Webhook route to a receiver on 127.0.0.1 (it checks every signature) and the same burst again:
activation latency with the route beside the one without, the time from the burst's start until
every CloudEvent of it (Requested, Approved, Activated: three per request) was received, and
each event's latency from its transition to its receipt. Target (issue 15): notifying never
delays a grant (activation p99 unchanged within noise).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from kubepim.devcluster import cluster
from kubepim.domain import notify

from . import harness
from .cpu import cpu_seconds
from .harness import GROUP, VERSION, parse_time, summary, wait_until

_KEY = "bench-signing-key"


class _Receiver(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.received: dict[str, float] = {}  # event id → when received (epoch s)
        self.event_time: dict[str, float] = {}
        self.bad = 0
        self.lock = threading.Lock()
        threading.Thread(target=self.serve_forever, daemon=True).start()


class _Handler(BaseHTTPRequestHandler):
    server: _Receiver
    protocol_version = "HTTP/1.1"

    def log_message(self, *_: Any) -> None:
        pass

    def do_GET(self) -> None:
        """What was received so far (the bench process asks; the receiver is a process apart)."""
        with self.server.lock:
            body = json.dumps({"received": self.server.received, "bad": self.server.bad,
                               "event_time": self.server.event_time}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        now = time.time()
        good = notify.verify(_KEY.encode(), self.headers.get("webhook-id", ""),
                             int(self.headers.get("webhook-timestamp") or 0), body,
                             self.headers.get("webhook-signature", ""))
        event = json.loads(body)
        with self.server.lock:
            if not good:
                self.server.bad += 1
            self.server.received.setdefault(event["id"], now)
            self.server.event_time[event["id"]] = parse_time(event["time"]).timestamp()
        self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()


class _Remote:
    """The receiver in a process of its own: its CPU is not the load generator's GIL."""

    def __init__(self) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "bench.notify", "--receiver"],
                                        stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        self.port = int(self.process.stdout.readline())
        self.server_address = ("127.0.0.1", self.port)
        self.received: dict[str, float] = {}
        self.event_time: dict[str, float] = {}
        self.bad = 0

    def refresh(self) -> None:
        """Fetch what the receiver has."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/", timeout=10) as answer:
            state = json.loads(answer.read())
        self.received, self.event_time, self.bad = (state["received"], state["event_time"],
                                                    state["bad"])

    def shutdown(self) -> None:
        """Stop the receiver process (ours, by pid)."""
        self.process.terminate()
        self.process.wait(timeout=10)


def _burst(bench: harness.Bench, prefix: str, count: int, receiver: int = 0
           ) -> tuple[list[str], dict[str, Any]]:
    approved: dict[str, float] = {}
    operator = bench.operator.process.pid if bench.operator.process else 0
    cpu = {"operator": cpu_seconds(operator), "receiver": cpu_seconds(receiver)
           if receiver else 0.0}
    start = time.perf_counter()
    names = bench.submit_many(prefix, ["1h"] * count, approved=approved)
    bench.wait_activated(names, timeout=60 + count * 0.2)
    took = time.perf_counter() - start
    items = bench.custom().list_cluster_custom_object(GROUP, VERSION, "accessrequests")["items"]
    activated = {i["metadata"]["name"]: parse_time(i["status"]["activatedAt"]).timestamp()
                 for i in items if i["metadata"]["name"] in approved}
    waits = [max(0.0, activated[n] - approved[n]) for n in names]
    return names, {"requests": count, "all_active_s": took,
                   "approval_to_active_s": summary(waits),
                   "operator_cpu_s": cpu_seconds(operator) - cpu["operator"],
                   "receiver_cpu_s": (cpu_seconds(receiver) - cpu["receiver"]) if receiver
                   else 0.0}


def main() -> None:
    """Measure and print."""
    parser = argparse.ArgumentParser(prog="python -m bench.notify", description=__doc__)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--receiver", action="store_true",
                        help="(internal) run only the receiver, print its port")
    args = parser.parse_args()
    if args.receiver:
        # Lowest priority: it stands for a receiver elsewhere (a SIEM, a chat), whose CPU is
        # not the cluster's; on these two cores it takes only what the cluster leaves.
        os.nice(19)
        alone = _Receiver()
        print(alone.server_address[1], flush=True)
        threading.Event().wait()
    receiver = _Remote()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="kubepim-bench-") as scratch:
        bench, started = harness.start(Path(scratch))
        try:
            _, results["without_route"] = _burst(bench, "plain", args.requests)
            kubectl = bench.kubectl
            kubectl("apply", "-f", "-", stdin=json.dumps({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "bench-hook", "namespace": "kubepim"},
                "data": {"hmacKey": base64.b64encode(_KEY.encode()).decode()}}))
            kubectl("apply", "-f", "-", stdin=json.dumps({
                "apiVersion": f"{GROUP}/{VERSION}", "kind": "NotificationRoute",
                "metadata": {"name": "bench-hook"},
                "spec": {"channel": {"type": "Webhook",
                                     "url": f"http://127.0.0.1:{receiver.server_address[1]}/",
                                     "secretRef": {"name": "bench-hook"}}}}))
            wait_until(lambda: "True" in kubectl(
                "get", "notificationroute", "bench-hook", "-o",
                "jsonpath={.status.conditions[?(@.type=='Ready')].status}").stdout,
                30, "the route Ready")
            start = time.time()
            names, results["with_route"] = _burst(bench, "routed", args.requests,
                                                  receiver.process.pid)
            uids = {i["metadata"]["uid"] for i in bench.custom().list_cluster_custom_object(
                GROUP, VERSION, "accessrequests")["items"] if i["metadata"]["name"] in names}
            wanted = {f"{uid}/{n}" for uid in uids for n in range(3)}
            def all_received() -> bool:
                receiver.refresh()
                return wanted <= set(receiver.received)

            wait_until(all_received, 300, f"{len(wanted)} CloudEvents received", interval=0.5)
            results["events"] = {
                "received": len(wanted), "bad_signatures": receiver.bad,
                "burst_start_to_last_received_s": max(receiver.received[i] for i in wanted)
                - start,
                "transition_to_received_s": summary(
                    [receiver.received[i] - receiver.event_time[i] for i in wanted])}
        finally:
            bench.operator.stop()
            cluster.stop(started)
            receiver.shutdown()
    for phase in ("without_route", "with_route"):
        waits = results[phase]["approval_to_active_s"]
        print(f"{phase:14} {args.requests} grants: all Active in "
              f"{results[phase]['all_active_s']:.1f} s; approval→Active p50 "
              f"{waits['p50']:.3f} s p99 {waits['p99']:.3f} s max {waits['max']:.3f} s; "
              f"operator {results[phase]['operator_cpu_s']:.1f} CPU s, receiver "
              f"{results[phase]['receiver_cpu_s']:.1f} CPU s")
    events = results["events"]
    print(f"CloudEvents: {events['received']} received ({events['bad_signatures']} bad "
          f"signatures); the last {events['burst_start_to_last_received_s']:.1f} s after the "
          f"burst began; transition→received p50 "
          f"{events['transition_to_received_s']['p50']:.3f} s p99 "
          f"{events['transition_to_received_s']['p99']:.3f} s")
    out = Path(__file__).parent / "results" / "notify.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
