"""`up` and `down` leave nothing behind: no process, no directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kubepim.devcluster import cluster


def _devcluster(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kubepim.devcluster", *args],
        capture_output=True, text=True, timeout=180, check=False,
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    return state != "Z"


@pytest.mark.skipif(bool(os.environ.get("KUBEPIM_KUBECONFIG")), reason="uses the local build")
def test_up_then_down_stops_every_process_and_removes_the_directory(tmp_path: Path) -> None:
    workdir = tmp_path / "dev"
    up = _devcluster("up", "--dir", str(workdir))
    assert up.returncode == 0, up.stderr
    assert f"export KUBECONFIG={workdir / 'kubeconfig'}" in up.stdout
    recorded = cluster.Cluster.load(workdir)
    assert recorded is not None
    pids = recorded.pids
    assert set(pids) == {"etcd", "kube-apiserver", "kube-controller-manager"}
    assert all(_alive(pid) for pid in pids.values())

    again = _devcluster("up", "--dir", str(workdir))
    assert again.returncode == 2
    assert "already running" in again.stderr and "down --dir" in again.stderr

    down = _devcluster("down", "--dir", str(workdir))
    assert down.returncode == 0, down.stderr
    assert not any(_alive(pid) for pid in pids.values())
    assert not workdir.exists()
