"""The measures of issue 7, each beside its floor (a bare client doing the same API writes).

Each function returns a dict of numbers; none asserts a time. Times are wall-clock seconds or
milliseconds as named.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kubernetes

from .harness import NAMESPACE, Bench, now, parse_time, percentile, summary, wait_until


class BindingWatcher:
    """Records when each RoleBinding in the bench namespace appears and disappears.

    A watch, re-established (after a fresh list that catches what happened in between)
    whenever the API server ends it.
    """

    def __init__(self, bench: Bench) -> None:
        self.added: dict[str, float] = {}
        self.deleted: dict[str, float] = {}
        self._bench = bench
        self._stopped = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(10)

    def _seen(self, name: str, present: bool, moment: float) -> None:
        (self.added if present else self.deleted).setdefault(name, moment)

    def _run(self) -> None:
        rbac = self._bench.rbac()
        known: set[str] = set()
        while not self._stopped.is_set():
            try:
                listing = rbac.list_namespaced_role_binding(NAMESPACE)
            except Exception:
                time.sleep(0.1)
                continue
            moment = time.time()
            current = {b.metadata.name for b in listing.items}
            for name in current - known:
                self._seen(name, True, moment)
            for name in known - current:
                self._seen(name, False, moment)
            known = current
            self._ready.set()
            watch = kubernetes.watch.Watch()
            try:
                for event in watch.stream(rbac.list_namespaced_role_binding, NAMESPACE,
                                          resource_version=listing.metadata.resource_version,
                                          timeout_seconds=60):
                    if self._stopped.is_set():
                        break
                    moment = time.time()
                    name = event["object"].metadata.name
                    present = event["type"] != "DELETED"
                    self._seen(name, present, moment)
                    (known.add if present else known.discard)(name)
            except Exception:  # noqa: S112 - the API server ended the watch: list and resume
                continue
            finally:
                watch.stop()

    def stop(self) -> None:
        """Stop watching."""
        self._stopped.set()


class ActivationWatcher:
    """Records when each AccessRequest whose name starts with ``prefix`` is first seen activated.

    A watch instead of polling lists: a burst's end is known to the event, and the API server is
    not made to list every request (history included) twice a second beside the burst it serves.
    The time is when the operator's write reached a client, the moment access shows as granted.
    """

    def __init__(self, bench: Bench, prefix: str) -> None:
        self.activated: dict[str, float] = {}
        self._bench = bench
        self._prefix = prefix
        self._changed = threading.Condition()
        self._stopped = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise TimeoutError("the AccessRequest watch did not start")

    def _seen(self, item: dict[str, Any], moment: float) -> None:
        name = item["metadata"]["name"]
        if name.startswith(self._prefix) and (item.get("status") or {}).get("activatedAt"):
            with self._changed:
                if name not in self.activated:
                    self.activated[name] = moment
                    self._changed.notify_all()

    def _run(self) -> None:
        custom = self._bench.custom()
        args = ("pim.kubepim.dev", "v1alpha1", "accessrequests")
        while not self._stopped.is_set():
            try:
                listing = custom.list_cluster_custom_object(*args)
            except Exception:
                time.sleep(0.1)
                continue
            moment = time.time()
            for item in listing["items"]:
                self._seen(item, moment)
            self._ready.set()
            watch = kubernetes.watch.Watch()
            try:
                for event in watch.stream(custom.list_cluster_custom_object, *args,
                                          resource_version=listing["metadata"]["resourceVersion"],
                                          timeout_seconds=60):
                    if self._stopped.is_set():
                        break
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self._seen(event["object"], time.time())
            except Exception:  # noqa: S112 - the API server ended the watch: list and resume
                continue
            finally:
                watch.stop()

    def wait(self, names: list[str], timeout: float) -> float:
        """Wait until every named request was seen activated; the last of those moments."""
        deadline = time.monotonic() + timeout
        with self._changed:
            missing = [n for n in names if n not in self.activated]
            while missing:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{len(missing)} of {len(names)} requests not "
                                       f"activated within {timeout:.0f} s")
                self._changed.wait(min(left, 1.0))
                missing = [n for n in missing if n not in self.activated]
            return max(self.activated[n] for n in names)

    def stop(self) -> None:
        """Stop watching."""
        self._stopped.set()


def activation(bench: Bench, count: int) -> dict[str, Any]:
    """Approval patch to a SubjectAccessReview allowing the user, one grant at a time."""
    samples, floor = [], []
    for i in range(count):
        name, user = f"act-{i}", f"act-user-{i}"
        bench.create_request(name, user, "1h")
        wait_until(lambda name=name: (bench.request(name).get("status") or {}).get(
            "phase") == "Pending", 30, f"{name} pending", interval=0.01)
        start = time.perf_counter()
        bench.approve(name)
        wait_until(lambda user=user: bench.user_allowed(user), 30, f"{user} allowed",
                   interval=0.002)
        samples.append((time.perf_counter() - start) * 1000)

        floor_user = f"floor-user-{i}"
        start = time.perf_counter()
        bench.create_floor_binding(f"floor-{i}", floor_user)
        wait_until(lambda u=floor_user: bench.user_allowed(u), 30, f"{floor_user} allowed",
                   interval=0.002)
        floor.append((time.perf_counter() - start) * 1000)
    kubepim, bare = summary(samples), summary(floor)
    return {"kubepim_ms": kubepim, "floor_ms": bare,
            "p99_ratio": kubepim["p99"] / bare["p99"], "p50_ratio": kubepim["p50"] / bare["p50"]}


def expiry(bench: Bench, count: int, window: int, rate: float, prefix: str = "exp"
           ) -> dict[str, Any]:
    """Time from expiresAt to binding gone, ``count`` grants expiring across ``window`` s."""
    watcher = BindingWatcher(bench)
    # Every grant must be Active before the first expires: twice the time the burst took.
    base = int(30 + 2 * count / rate)
    durations = [f"{base + (i * window) // count}s" for i in range(count)]
    names = bench.grant_many(f"{prefix}{count}", durations)
    expires = {n: parse_time(bench.request(n)["status"]["expiresAt"]).timestamp()
               for n in names}
    last = max(expires.values())
    wait_until(lambda: all(f"kubepim-{n}" in watcher.deleted for n in names),
               max(last - time.time(), 0) + 60, f"{count} bindings removed", interval=0.5)
    watcher.stop()
    lags = [watcher.deleted[f"kubepim-{n}"] - expires[n] for n in names]
    return {"grants": count, "window_s": window, "lag_s": summary(lags)}


def burst(bench: Bench, count: int, workers: int = 16) -> dict[str, Any]:
    """``count`` requests created and approved at once until all are Active; two floors.

    The bare floor: ``count`` RoleBindings created. The client-side floor: what a grant needs
    anyway, measured with the operator standing by (it serves admission, reconciles nothing):
    each request created and approved through the same admission, plus a bare RoleBinding.
    """
    watcher = ActivationWatcher(bench, "burst-")
    before = bench.api_requests()
    approved: dict[str, float] = {}
    start = time.time()
    try:
        names = bench.submit_many("burst", ["1h"] * count, workers=workers, approved=approved)
        submitted_s = time.time() - start
        kubepim_s = watcher.wait(names, timeout=60 + count * 0.2) - start
    finally:
        watcher.stop()
    peak = bench.rss_mib("VmHWM")
    made = bench.api_requests() - before
    activated = {i["metadata"]["name"]: parse_time(i["status"]["activatedAt"]).timestamp()
                 for i in bench.custom().list_cluster_custom_object(
                     "pim.kubepim.dev", "v1alpha1", "accessrequests")["items"]
                 if i["metadata"]["name"] in approved}
    waits = [max(0.0, activated[n] - approved[n]) for n in names]
    # Requests that change or read single objects (the bench's own polling LISTs excluded).
    calls = {verb: sum(n for kind, n in made.items() if kind.startswith(verb + " ")) / count
             for verb in ("GET", "POST", "PATCH", "PUT", "DELETE")}

    def bare(i: int) -> None:
        bench.create_floor_binding(f"burst-floor-{i}", f"burst-floor-{i}")

    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(bare, range(count)))
    floor_s = time.perf_counter() - start

    floor_names = [f"burst-client-{i}" for i in range(count)]

    def client_side(i: int) -> None:
        bench.create_request(floor_names[i], f"burst-client-user-{i}", "1h")
        bench.approve(floor_names[i])
        bench.create_floor_binding(f"burst-client-{i}", f"burst-client-user-{i}")

    try:
        bench.hold_lease()
        start = time.perf_counter()
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(client_side, range(count)))
        client_floor_s = time.perf_counter() - start
        with ThreadPoolExecutor(workers) as pool:  # gone before the operator leads again
            list(pool.map(lambda n: bench.custom().delete_cluster_custom_object(
                "pim.kubepim.dev", "v1alpha1", "accessrequests", n), floor_names))
    finally:
        bench.release_lease()
    return {"requests": count, "kubepim_s": kubepim_s, "floor_s": floor_s,
            "ratio": kubepim_s / floor_s, "client_floor_s": client_floor_s,
            "client_floor_ratio": kubepim_s / client_floor_s,
            "approval_to_active_s": summary(waits),
            "operator_peak_rss_mib": peak,
            "submitted_s": submitted_s, "after_last_approval_s": kubepim_s - submitted_s,
            "api_calls_per_grant": calls}


def memory(bench: Bench, requests: int, eligibilities: int, workers: int = 16) -> dict[str, Any]:
    """Operator RSS, idle, with ``requests`` AccessRequests and ``eligibilities`` in the cluster."""
    custom = bench.custom()

    def eligibility(i: int) -> None:
        custom.create_cluster_custom_object("pim.kubepim.dev", "v1alpha1", "roleeligibilities", {
            "apiVersion": "pim.kubepim.dev/v1alpha1", "kind": "RoleEligibility",
            "metadata": {"name": f"mem-{i}"},
            "spec": {"subjects": [{"kind": "User", "name": f"mem-user-{i}"}],
                     "roles": [{"kind": "Role", "name": "pod-reader"}],
                     "namespaces": [NAMESPACE], "approval": {"users": ["bob"]}}})

    def request(i: int) -> None:
        bench.create_request(f"mem-{i}", f"mem-requester-{i}", "1h")  # stays Pending

    # The API server sheds load (429/5xx) when 10,000 creates arrive at once: retry those.
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda i: _retrying(lambda: eligibility(i)), range(eligibilities)))
        list(pool.map(lambda i: _retrying(lambda: request(i)), range(requests)))
    names = [f"mem-{i}" for i in range(requests)]
    bench.wait_phase(names, "Pending", timeout=120 + requests * 0.05)
    samples = []
    for _ in range(60):  # idle: sampled for a minute once everything is reconciled
        samples.append(bench.rss_mib())
        time.sleep(1)
    total = len(bench.phases(""))
    return {"accessrequests_in_cluster": total, "eligibilities_added": eligibilities,
            "operator_idle_rss_mib": percentile(samples, 0.5), "idle_rss_max_mib": max(samples)}


def _retrying(call: Any, attempts: int = 6) -> None:
    """Run ``call``, retrying with backoff when the API server sheds load (429, 5xx)."""
    for attempt in range(attempts):
        try:
            call()
            return
        except kubernetes.client.exceptions.ApiException as error:
            if error.status == 409:
                return  # created by an earlier attempt whose answer was lost
            if error.status is not None and error.status != 429 and error.status < 500:
                raise
            if attempt == attempts - 1:
                raise
            time.sleep(0.5 * (attempt + 1))


def recovery(bench: Bench, count: int, overdue: int, rate: float) -> dict[str, Any]:
    """Operator restarted with ``count`` grants of which ``overdue`` expired while it was down."""
    long_names = bench.grant_many("rec-long", ["8h"] * (count - overdue))
    # Long enough that every short grant is Active before the first expires, even when the
    # cluster grants more slowly than the burst did; the operator is killed right after.
    base = int(30 + 4 * overdue / rate)
    short_names = bench.grant_many("rec-short", [f"{base}s"] * overdue)
    bench.operator.kill()
    last = max(parse_time(bench.request(n)["status"]["expiresAt"]) for n in short_names)
    wait_until(lambda: now() > last, (last - now()).total_seconds() + 10,
               "every short grant past expiry")
    still = bench.rbac().list_namespaced_role_binding(
        NAMESPACE, label_selector="app.kubernetes.io/managed-by=kubepim").items
    overdue_bindings = {b.metadata.name for b in still} & {f"kubepim-{n}" for n in short_names}

    # Deletions are seen through a watch: polling a list of 5,000 bindings would itself load
    # the API server the operator is racing.
    watcher = BindingWatcher(bench)
    start = time.time()
    bench.operator.start()
    wait_until(lambda: overdue_bindings <= watcher.deleted.keys(), 300,
               "every overdue binding removed", interval=0.1)
    watcher.stop()
    seconds = max(watcher.deleted[name] for name in overdue_bindings) - start
    remaining = {b.metadata.name for b in bench.rbac().list_namespaced_role_binding(
        NAMESPACE, label_selector="app.kubernetes.io/managed-by=kubepim").items}
    return {"grants": count, "overdue": len(overdue_bindings), "seconds_to_all_revoked": seconds,
            "long_grants_kept": len({f"kubepim-{n}" for n in long_names} & remaining)}


def flood(bench: Bench, count: int, workers: int = 16) -> dict[str, Any]:
    """The incident case: ``count`` requests created and approved at once.

    With the product's default lease (10 s) and resync (300 s); how long from each approval to
    Active.
    A grant left to the resync shows as minutes here; the target is the slowest under 10 s.
    """
    names = [f"flood-{i}" for i in range(count)]
    approved: dict[str, float] = {}

    def one(index: int) -> None:
        name = names[index]
        _retrying(lambda: bench.create_request(name, f"flood-user-{index}", "1h"))
        _retrying(lambda: bench.approve(name))
        approved[name] = time.time()

    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, range(count)))
    submitted_s = time.perf_counter() - start
    bench.wait_activated(names, timeout=120 + count * 0.1)
    activated = {i["metadata"]["name"]: parse_time(i["status"]["activatedAt"]).timestamp()
                 for i in bench.custom().list_cluster_custom_object(
                     "pim.kubepim.dev", "v1alpha1", "accessrequests")["items"]
                 if i["metadata"]["name"].startswith("flood-")}
    waits = [max(0.0, activated[n] - approved[n]) for n in names]
    return {"requests": count, "submitted_s": submitted_s,
            "approval_to_active_s": summary(waits),
            "slowest_s": max(waits), "over_10s": sum(w > 10 for w in waits),
            "over_60s_left_to_resync": sum(w > 60 for w in waits)}
