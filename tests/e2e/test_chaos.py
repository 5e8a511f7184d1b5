"""The chaos suite's short form (``python -m bench.chaos --short``), as part of the test run.

On a control plane of its own (it kills and restarts kube-apiserver), with two operator
replicas behind a fault proxy; every invariant of bench/chaos.py must hold. The full form
(300 grants) is a benchmark, run by hand: ``python -m bench.chaos``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import IN_CLUSTER

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(IN_CLUSTER, reason="needs a local control plane it may kill")
def test_grants_under_faults_keep_every_invariant() -> None:
    result = subprocess.run([sys.executable, "-m", "bench.chaos", "--short"], cwd=REPO,
                            capture_output=True, text=True, timeout=900, check=False)
    report = REPO / "bench" / "results" / "chaos-short.json"
    summary = json.loads(report.read_text()) if report.is_file() else {}
    assert result.returncode == 0, (
        f"{summary.get('problems')}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    assert summary["problems"] == []
    assert summary["grants"] >= 50
    assert summary["over_2s_once_a_leader_is_up"] == 0
