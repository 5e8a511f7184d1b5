"""What every measure needs: a local control plane, kubepim installed, the operator, clients.

The operator runs as a subprocess (killed and restarted by pid for the recovery measure). Clients
are the kubernetes Python client with impersonation headers: the API server then authenticates
each call as that user, exactly as for a person with kubectl.
"""

from __future__ import annotations

import datetime
import json
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kubernetes
from tests.e2e.support import Kubectl, OperatorProcess, kubectl_binary

from kubepim.devcluster import binaries, cluster, install

GROUP, VERSION = "pim.kubepim.dev", "v1alpha1"
NAMESPACE = "bench"
REQUESTERS = "bench-requesters"
OPERATOR_NAMESPACE, LEASE = "kubepim", "kubepim-leader"  # the Settings defaults


def percentile(samples: list[float], q: float) -> float:
    """The q-quantile by nearest rank (samples need not be sorted)."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def summary(samples: list[float]) -> dict[str, float]:
    """p50, p99, max and mean of the samples, in the samples' unit."""
    return {"p50": percentile(samples, 0.5), "p99": percentile(samples, 0.99),
            "max": max(samples), "mean": statistics.fmean(samples), "n": len(samples)}


def now() -> datetime.datetime:
    """Wall clock, as the operator's expiresAt uses."""
    return datetime.datetime.now(datetime.UTC)


def parse_time(text: str) -> datetime.datetime:
    """An RFC 3339 time from status."""
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


def wait_until(probe: Callable[[], bool], timeout: float, what: str,
               interval: float = 0.2) -> None:
    """Poll ``probe`` until true; fail loudly at the deadline."""
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout:.0f} s")
        time.sleep(interval)


@dataclass
class Bench:
    """A running environment for the measures."""

    workdir: Path
    kubeconfig: Path
    operator: OperatorProcess
    kubectl: Kubectl
    _clients: dict[str, kubernetes.client.ApiClient] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def client(self, user: str | None = None, groups: Iterable[str] = ()) -> Any:
        """An ApiClient as the admin, or impersonating ``user`` in ``groups``."""
        key = f"{user}|{','.join(groups)}"
        with self._lock:
            if key not in self._clients:
                configuration = kubernetes.client.Configuration()
                kubernetes.config.load_kube_config(str(self.kubeconfig),
                                                   client_configuration=configuration)
                configuration.connection_pool_maxsize = 32
                api = kubernetes.client.ApiClient(configuration)
                if user:
                    api.set_default_header("Impersonate-User", user)
                    for group in groups:
                        # urllib3 joins repeated headers; the API server accepts a list.
                        api.set_default_header("Impersonate-Group", group)
                self._clients[key] = api
            return self._clients[key]

    def custom(self, user: str | None = None, groups: Iterable[str] = ()) -> Any:
        """CustomObjectsApi as that identity."""
        return kubernetes.client.CustomObjectsApi(self.client(user, groups))

    def rbac(self) -> Any:
        """RbacAuthorizationV1Api as the admin."""
        return kubernetes.client.RbacAuthorizationV1Api(self.client())

    def authz(self) -> Any:
        """AuthorizationV1Api as the admin."""
        return kubernetes.client.AuthorizationV1Api(self.client())

    def user_allowed(self, user: str) -> bool:
        """Whether ``user`` may list pods in the bench namespace (a SubjectAccessReview)."""
        review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
                  "spec": {"user": user, "resourceAttributes": {
                      "verb": "list", "resource": "pods", "namespace": NAMESPACE}}}
        return bool(self.authz().create_subject_access_review(review).status.allowed)

    def create_request(self, name: str, user: str, duration: str) -> None:
        """Create an AccessRequest as ``user`` (a member of the requesters group)."""
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "AccessRequest",
                "metadata": {"name": name},
                "spec": {"role": {"kind": "Role", "name": "pod-reader"},
                         "namespace": NAMESPACE, "duration": duration,
                         "justification": "benchmark"}}
        # Impersonation per call on the shared client: one client per user would hold a
        # connection pool (and its sockets) for each of 10,000 users.
        self.custom().create_cluster_custom_object(
            GROUP, VERSION, "accessrequests", body,
            _headers={"Impersonate-User": user, "Impersonate-Group": REQUESTERS})

    def approve(self, name: str) -> None:
        """Bob approves ``name`` (a merge patch of his own entry)."""
        self.custom().patch_cluster_custom_object_status(
            GROUP, VERSION, "accessrequests", name,
            {"status": {"approvals": {"bob": {"decision": "Approve"}}}},
            _headers={"Impersonate-User": "bob"})

    def request(self, name: str) -> dict[str, Any]:
        """One AccessRequest as the admin reads it."""
        result: dict[str, Any] = self.custom().get_cluster_custom_object(
            GROUP, VERSION, "accessrequests", name)
        return result

    def phases(self, prefix: str) -> dict[str, str | None]:
        """Name -> phase of every request whose name starts with ``prefix``."""
        items = self.custom().list_cluster_custom_object(GROUP, VERSION, "accessrequests")
        return {i["metadata"]["name"]: (i.get("status") or {}).get("phase")
                for i in items["items"] if i["metadata"]["name"].startswith(prefix)}

    def wait_activated(self, names: list[str], timeout: float) -> None:
        """Wait until every named request has been activated (it may have expired since)."""
        wanted = set(names)
        prefix = _common_prefix(names)

        def activated() -> bool:
            items = self.custom().list_cluster_custom_object(GROUP, VERSION, "accessrequests")
            done = {i["metadata"]["name"] for i in items["items"]
                    if i["metadata"]["name"].startswith(prefix)
                    and (i.get("status") or {}).get("activatedAt")}
            return wanted <= done

        wait_until(activated, timeout, f"{len(names)} requests activated", interval=0.5)

    def wait_phase(self, names: list[str], phase: str, timeout: float) -> None:
        """Wait until every named request is in ``phase``."""
        prefix = _common_prefix(names)
        wanted = set(names)
        wait_until(lambda: all(p == phase for n, p in self.phases(prefix).items()
                               if n in wanted) and wanted <= set(self.phases(prefix)),
                   timeout, f"{len(names)} requests {phase}", interval=0.5)

    def submit_many(self, prefix: str, durations: list[str], workers: int = 16,
                    approved: dict[str, float] | None = None) -> list[str]:
        """Create and approve one request per duration, ``workers`` at a time; their names.

        ``approved``, if given, receives when each approval was accepted (epoch seconds).
        """
        names = [f"{prefix}-{i}" for i in range(len(durations))]

        def one(index: int) -> None:
            name = names[index]
            self.create_request(name, f"{prefix}-user-{index}", durations[index])
            self.approve(name)
            if approved is not None:
                approved[name] = time.time()

        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(one, range(len(durations))))
        return names

    def grant_many(self, prefix: str, durations: list[str], workers: int = 16) -> list[str]:
        """Create and approve one request per duration, in parallel; wait until all Active."""
        names = self.submit_many(prefix, durations, workers)
        self.wait_activated(names, timeout=60 + len(names) * 0.2)
        return names

    def create_floor_binding(self, name: str, user: str) -> None:
        """The floor's one write: a bare RoleBinding of pod-reader to ``user``."""
        self.rbac().create_namespaced_role_binding(NAMESPACE, {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                        "name": "pod-reader"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                          "name": user}]})

    def hold_lease(self) -> None:
        """Take the operator's Lease for an hour as another holder: the operator stands by.

        It still serves admission (every replica does) but reconciles nothing: the floor that
        goes through the same admission is measured against it.
        """
        stamp = now().strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        stood_by = self.operator.log_path.read_text().count("standing by")
        self.kubectl("patch", "lease", LEASE, "-n", OPERATOR_NAMESPACE, "--type=merge", "-p",
                     json.dumps({"spec": {"holderIdentity": "bench-floor",
                                          "leaseDurationSeconds": 3600,
                                          "renewTime": stamp}}))
        # "lost the lease to bench-floor", or "the lease changed under us" if the patch landed
        # between the operator's read and write of the Lease.
        wait_until(lambda: self.operator.log_path.read_text().count("standing by") > stood_by,
                   30, "the operator standing by")

    def release_lease(self) -> None:
        """Give the Lease back: the operator is elected again and takes over."""
        elected = self.operator.log_path.read_text().count("elected leader")
        self.kubectl("patch", "lease", LEASE, "-n", OPERATOR_NAMESPACE, "--type=merge", "-p",
                     json.dumps({"spec": {"holderIdentity": "", "leaseDurationSeconds": 1}}))
        wait_until(lambda: self.operator.log_path.read_text().count("elected leader") > elected,
                   30, "the operator elected again")

    def api_requests(self) -> Counter[str]:
        """The API server's requests so far (apiserver_request_total) by 'VERB resource[/sub]'."""
        counts: Counter[str] = Counter()
        for line in self.kubectl("get", "--raw", "/metrics").stdout.splitlines():
            if not line.startswith("apiserver_request_total{"):
                continue
            labels = dict(part.split("=", 1) for part in
                          line[line.index("{") + 1:line.rindex("}")].split(","))
            resource = labels.get("resource", '""').strip('"')
            sub = labels.get("subresource", '""').strip('"')
            verb = labels.get("verb", '""').strip('"')
            counts[f"{verb} {resource}{'/' + sub if sub else ''}"] += float(
                line.rsplit(" ", 1)[1])
        return counts

    def rss_mib(self, field_name: str = "VmRSS") -> float:
        """The operator process's resident memory (VmRSS) or peak (VmHWM), in MiB."""
        assert self.operator.process is not None
        for line in Path(f"/proc/{self.operator.process.pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024
        raise RuntimeError(f"{field_name} not in /proc status")


def _common_prefix(names: list[str]) -> str:
    first = names[0]
    return first[: first.rfind("-") + 1] if "-" in first else first


def start(workdir: Path, resync: str | None = "60", audit_sink: bool = False,
          operator_env: dict[str, str] | None = None) -> tuple[Bench, cluster.Cluster]:
    """Start the control plane, install kubepim, create the bench namespace, start the operator.

    ``resync``: the operator's resync seconds (None: the product's default); ``audit_sink``: the
    API server posts its audit events to the operator (off unless a measure is about it, so
    numbers stay comparable with runs before it existed); ``operator_env``: more settings.
    """
    started = cluster.start(workdir / "cluster", binaries.ensure(), audit_sink=audit_sink)
    kubectl = prepare(started.kubeconfig)
    (workdir / "operator").mkdir()
    operator = OperatorProcess(
        install.operator_kubeconfig(started.kubeconfig, workdir / "operator.kubeconfig"),
        workdir / "operator", **({"KUBEPIM_RESYNC_SECONDS": resync} if resync else {}),
        **started.operator_env(), **(operator_env or {}))
    operator.start()
    return Bench(workdir, started.kubeconfig, operator, kubectl), started


def prepare(kubeconfig: Path) -> Kubectl:
    """Install kubepim and what every measure grants: returns kubectl as the admin.

    The bench namespace, its Role pod-reader, and an eligibility for the requesters group,
    approved by bob.
    """
    install.install(kubeconfig)
    kubectl = Kubectl(kubeconfig, kubectl_binary())
    kubectl("create", "namespace", NAMESPACE)
    kubectl("create", "role", "pod-reader", "--verb=get,list", "--resource=pods", "-n", NAMESPACE)
    kubectl("create", "-f", "-", stdin=json.dumps({
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "RoleEligibility",
        "metadata": {"name": "bench"},
        "spec": {"subjects": [{"kind": "Group", "name": REQUESTERS}],
                 "roles": [{"kind": "Role", "name": "pod-reader"}], "namespaces": [NAMESPACE],
                 "maxDuration": "8h", "approval": {"users": ["bob"]}}}))
    return kubectl
