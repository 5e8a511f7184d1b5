"""The operator starts against the real control plane, reports live, and stops on SIGTERM."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from tests.e2e.support import poll


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_operator_serves_liveness_and_exits_cleanly_on_sigterm(
    kubeconfig: Path, tmp_path: Path
) -> None:
    port = _free_port()
    env = dict(os.environ, KUBECONFIG=str(kubeconfig), KUBEPIM_LIVENESS_PORT=str(port))
    log = (tmp_path / "operator.log").open("w")
    operator = subprocess.Popen([sys.executable, "-m", "kubepim"], env=env,
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        def live() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                    return bool(r.status == 200)
            except (urllib.error.URLError, OSError):
                assert operator.poll() is None, (tmp_path / "operator.log").read_text()
                return False

        assert poll(live, timeout=60, what="operator liveness")
        operator.terminate()
        assert operator.wait(timeout=30) == 0
        assert "kubepim operator started" in (tmp_path / "operator.log").read_text()
    finally:
        if operator.poll() is None:
            operator.kill()
            operator.wait()
        log.close()
