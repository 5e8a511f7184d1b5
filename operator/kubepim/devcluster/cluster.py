"""Start and stop a real control plane (etcd, kube-apiserver, kube-controller-manager) on loopback.

A cluster lives in one work directory: its PKI, etcd's data, logs, a kubeconfig and a
``cluster.json`` recording the pids it started. Every port is on 127.0.0.1 and chosen free at
start unless given. Stopping signals only the recorded pids, and only while each still runs a
command line naming this work directory (a recycled pid is never signalled), then removes the
directory so no data is left behind.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import audit, certs
from .binaries import Binaries
from .errors import DevClusterError

STATE_FILE = "cluster.json"
_STOP_GRACE_SECONDS = 10.0
# An API server posting audit events retries what it holds at shutdown (2 + 3 + 4.5 + 6.75 s
# with the dev cluster's backoff) when the operator's sink is already gone: it may take this long.
_AUDIT_STOP_GRACE_SECONDS = 25.0
_PR_SET_PDEATHSIG = 1


@dataclass
class Cluster:
    """A running dev cluster, as recorded in its work directory."""

    workdir: Path
    server: str
    kubeconfig: Path
    pids: dict[str, int] = field(default_factory=dict)
    # Where the API server posts its audit events (the operator's audit sink), if it does.
    audit_sink: audit.AuditSink | None = None

    def save(self) -> None:
        """Record this cluster in ``workdir/cluster.json``."""
        state = {"server": self.server, "kubeconfig": str(self.kubeconfig), "pids": self.pids,
                 **({"audit_sink": self.audit_sink.wire()} if self.audit_sink else {})}
        (self.workdir / STATE_FILE).write_text(json.dumps(state, indent=2))

    @classmethod
    def load(cls, workdir: Path) -> Cluster | None:
        """The cluster recorded in ``workdir``, or None when nothing is recorded there."""
        try:
            state = json.loads((workdir / STATE_FILE).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:
            raise DevClusterError(
                f"{workdir / STATE_FILE} is unreadable ({error}); stop any processes it started "
                f"and remove {workdir}"
            ) from error
        sink = state.get("audit_sink")
        return cls(workdir, state["server"], Path(state["kubeconfig"]), dict(state["pids"]),
                   audit.AuditSink.from_wire(sink) if sink else None)

    def operator_env(self) -> dict[str, str]:
        """Settings an operator for this cluster needs beyond its kubeconfig (the audit sink)."""
        return self.audit_sink.operator_env() if self.audit_sink else {}

    def running(self) -> dict[str, int]:
        """The recorded processes that are still alive and still ours."""
        return {name: pid for name, pid in self.pids.items() if _is_ours(pid, self.workdir)}


def _is_ours(pid: int, workdir: Path) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return str(workdir).encode() in cmdline


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _check_port_free(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as error:
            raise DevClusterError(
                f"port {port} on 127.0.0.1 is in use ({error.strerror}); choose another with "
                "--port, or omit --port to pick a free one"
            ) from error


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def write_kubeconfig(path: Path, server: str, pki: certs.Pki, user: str = "kubepim-admin") -> None:
    """Write a self-contained kubeconfig (certificates embedded) for the admin user."""

    def b64(p: Path) -> str:
        return base64.b64encode(p.read_bytes()).decode()

    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "kubepim-dev", "cluster": {
            "server": server, "certificate-authority-data": b64(pki.ca_cert)}}],
        "users": [{"name": user, "user": {
            "client-certificate-data": b64(pki.admin_cert),
            "client-key-data": b64(pki.admin_key)}}],
        "contexts": [{"name": "kubepim-dev", "context": {"cluster": "kubepim-dev", "user": user}}],
        "current-context": "kubepim-dev",
    }
    path.write_text(json.dumps(config, indent=2))  # JSON is valid YAML
    path.chmod(0o600)


class _Starter:
    """Launches one cluster's processes and waits for each to be healthy."""

    def __init__(self, workdir: Path, binaries: Binaries, detach: bool) -> None:
        self.workdir = workdir
        self.binaries = binaries
        self.detach = detach
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        (workdir / "logs").mkdir(parents=True, exist_ok=True)

    def launch(self, name: str, args: list[str]) -> None:
        with (self.workdir / "logs" / f"{name}.log").open("wb") as log:
            try:
                self.processes[name] = subprocess.Popen(
                    args,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=None if self.detach else _die_with_parent,
                )
            except OSError as error:
                raise DevClusterError(
                    f"cannot run {name} ({args[0]}: {error.strerror}); build it with "
                    "tools/build-control-plane.sh, or point KUBEPIM_BIN_DIR at a directory "
                    "holding it"
                ) from error

    def wait(self, name: str, probe: Callable[[], bool], deadline: float) -> None:
        process = self.processes[name]
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise DevClusterError(self._failure(name, f"exited with code {process.returncode}"))
            if probe():
                return
            time.sleep(0.1)
        raise DevClusterError(self._failure(name, "did not become healthy before the deadline"))

    def _failure(self, name: str, what: str) -> str:
        log = self.workdir / "logs" / f"{name}.log"
        text = _tail(log)
        hint = ""
        if "address already in use" in text:
            hint = " A port it needs is in use by another process: retry to pick other ports."
        return f"{name} {what}.{hint} Last lines of {log}:\n{text}"


def _http_ok(url: str, context: ssl.SSLContext | None = None) -> bool:
    try:
        # Only the loopback http(s) URLs built in this module reach here.
        with urllib.request.urlopen(url, timeout=2, context=context) as response:  # noqa: S310
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def start(
    workdir: Path,
    binaries: Binaries,
    *,
    port: int | None = None,
    detach: bool = False,
    timeout: float = 90.0,
    audit_sink: bool = True,
) -> Cluster:
    """Start a control plane in ``workdir`` and return once it serves ready.

    ``detach`` keeps the processes running after this Python process exits (``up``); otherwise
    they are signalled when it dies. ``audit_sink``: the API server posts its audit events to
    an operator's audit sink on a port chosen here (:meth:`Cluster.operator_env`); benchmarks
    that measure without it turn it off. On any failure everything started is stopped again.
    """
    workdir = workdir.resolve()
    existing = Cluster.load(workdir) if workdir.exists() else None
    if existing is not None and existing.running():
        raise DevClusterError(
            f"a dev cluster is already running from {workdir} (server {existing.server}); "
            f"use it (KUBECONFIG={existing.kubeconfig}) or stop it with "
            f"`python -m kubepim.devcluster down --dir {workdir}`"
        )
    if workdir.exists() and any(workdir.iterdir()):
        raise DevClusterError(
            f"{workdir} holds a stale dev cluster that is no longer running; remove it with "
            f"`python -m kubepim.devcluster down --dir {workdir}` and retry"
        )
    if port is not None:
        _check_port_free(port)

    workdir.mkdir(parents=True, exist_ok=True)
    pki = certs.generate(workdir / "pki")
    etcd_client, etcd_peer = free_port(), free_port()
    api_port = port if port is not None else free_port()
    kcm_port = free_port()
    server = f"https://127.0.0.1:{api_port}"
    kubeconfig = workdir / "kubeconfig"
    write_kubeconfig(kubeconfig, server, pki)
    cluster = Cluster(workdir, server, kubeconfig)
    audit_flags: list[str] = []
    if audit_sink:
        cluster.audit_sink, audit_flags = audit.prepare(workdir / "audit", free_port())

    starter = _Starter(workdir, binaries, detach)
    deadline = time.monotonic() + timeout
    try:
        starter.launch("etcd", [
            str(binaries.etcd),
            f"--data-dir={workdir / 'etcd'}",
            f"--listen-client-urls=http://127.0.0.1:{etcd_client}",
            f"--advertise-client-urls=http://127.0.0.1:{etcd_client}",
            f"--listen-peer-urls=http://127.0.0.1:{etcd_peer}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}",
            f"--initial-cluster=default=http://127.0.0.1:{etcd_peer}",
            "--listen-metrics-urls=",
            "--unsafe-no-fsync",
            "--log-level=warn",
        ])
        cluster.pids["etcd"] = starter.processes["etcd"].pid
        cluster.save()
        # The apiserver retries etcd itself, so it starts without waiting for etcd's health.
        starter.launch("kube-apiserver", [
            str(binaries.kube_apiserver),
            f"--etcd-servers=http://127.0.0.1:{etcd_client}",
            f"--cert-dir={workdir / 'apiserver'}",
            f"--tls-cert-file={pki.serving_cert}",
            f"--tls-private-key-file={pki.serving_key}",
            f"--client-ca-file={pki.ca_cert}",
            f"--secure-port={api_port}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            "--endpoint-reconciler-type=none",
            "--service-cluster-ip-range=10.0.0.0/24",
            "--allow-privileged=true",
            "--authorization-mode=RBAC",
            f"--service-account-issuer={server}/",
            f"--service-account-key-file={pki.sa_public}",
            f"--service-account-signing-key-file={pki.sa_private}",
            "--profiling=false",
            "--v=0",
            *audit_flags,
        ])
        cluster.pids["kube-apiserver"] = starter.processes["kube-apiserver"].pid
        cluster.save()
        starter.wait("etcd", lambda: _http_ok(f"http://127.0.0.1:{etcd_client}/health"), deadline)

        admin_tls = ssl.create_default_context(cafile=str(pki.ca_cert))
        admin_tls.load_cert_chain(str(pki.admin_cert), str(pki.admin_key))
        starter.wait("kube-apiserver", lambda: _http_ok(f"{server}/readyz", admin_tls), deadline)

        starter.launch("kube-controller-manager", [
            str(binaries.kube_controller_manager),
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--controllers=garbage-collector-controller,namespace-controller,"
            "clusterrole-aggregation-controller,"
            "serviceaccount-controller,serviceaccount-token-controller",
            "--leader-elect=false",
            "--use-service-account-credentials=false",
            f"--service-account-private-key-file={pki.sa_private}",
            f"--root-ca-file={pki.ca_cert}",
            "--bind-address=127.0.0.1",
            f"--secure-port={kcm_port}",
            f"--cert-dir={workdir / 'controller-manager'}",
            "--profiling=false",
        ])
        cluster.pids["kube-controller-manager"] = starter.processes["kube-controller-manager"].pid
        cluster.save()
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE  # loopback health probe of a self-signed port
        starter.wait(
            "kube-controller-manager",
            lambda: _http_ok(f"https://127.0.0.1:{kcm_port}/healthz", insecure),
            deadline,
        )
    except BaseException:
        stop(cluster)
        raise
    return cluster


def stop(cluster: Cluster, *, remove: bool = True) -> list[str]:
    """Stop the cluster's processes by pid, newest first, and remove its work directory.

    Returns the names of processes that had to be killed after the grace period.
    """
    killed: list[str] = []
    running = cluster.running()
    # One at a time: an apiserver whose etcd is already gone hangs in its shutdown.
    for name in ("kube-controller-manager", "kube-apiserver", "etcd"):
        if name not in running:
            continue
        _signal(running[name], signal.SIGTERM)
        grace = _AUDIT_STOP_GRACE_SECONDS if name == "kube-apiserver" and cluster.audit_sink \
            else _STOP_GRACE_SECONDS
        if not _wait_gone(running[name], cluster.workdir, time.monotonic() + grace):
            _signal(running[name], signal.SIGKILL)
            _wait_gone(running[name], cluster.workdir, time.monotonic() + 5)
            killed.append(name)
    if remove:
        shutil.rmtree(cluster.workdir, ignore_errors=True)
    return killed


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _wait_gone(pid: int, workdir: Path, deadline: float) -> bool:
    while time.monotonic() < deadline:
        try:
            # Reap our own children so they do not linger as zombies that look alive.
            finished, _ = os.waitpid(pid, os.WNOHANG)
            if finished == pid:
                return True
        except ChildProcessError:
            pass
        if not _is_ours(pid, workdir):
            return True
        time.sleep(0.05)
    return False
