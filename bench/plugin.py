"""``python -m bench.plugin``: how long ``kubectl pim`` takes to start, beside kubectl.

A fresh local control plane with the operator and 50 AccessRequests; each command is run
``--runs`` times (after one warm-up run) and its wall time reported: ``kubectl pim ls`` (through
kubectl's plugin lookup, as users run it), ``kubectl get accessrequests``, ``kubectl pim
eligible`` (which imports the domain), and ``kubectl-pim ls`` run directly (what kubectl's plugin
lookup adds). Target (issue 14): ``ls`` under 2x kubectl's and under 0.5 s warm.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kubepim.devcluster import cluster

from . import harness


def _timed(command: list[str], env: dict[str, str], runs: int) -> dict[str, float]:
    subprocess.run(command, env=env, capture_output=True, check=True)  # warm-up
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(command, env=env, capture_output=True, check=True)
        samples.append(time.perf_counter() - start)
    return harness.summary(samples)


def main() -> None:
    """Measure and print."""
    parser = argparse.ArgumentParser(prog="python -m bench.plugin", description=__doc__)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kubepim-bench-") as scratch:
        bench, started = harness.start(Path(scratch))
        try:
            bench.submit_many("plugin", ["1h"] * 50)
            kubectl = str(harness.kubectl_binary())
            env = dict(os.environ, KUBECONFIG=str(bench.kubeconfig),
                       PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
            # As installed for a user: Python caches compiled modules (a shell or CI that sets
            # PYTHONDONTWRITEBYTECODE would recompile the plugin on every run).
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            results = {
                "kubectl get accessrequests": _timed([kubectl, "get", "accessrequests"], env,
                                                     args.runs),
                "kubectl pim ls": _timed([kubectl, "pim", "ls"], env, args.runs),
                "kubectl-pim ls (no kubectl in front)": _timed(
                    [str(Path(sys.executable).parent / "kubectl-pim"), "ls"], env, args.runs),
                "kubectl pim eligible --as alice": _timed(
                    [kubectl, "pim", "eligible", "--as", "alice"], env, args.runs),
            }
        finally:
            bench.operator.stop()
            cluster.stop(started)
    base = results["kubectl get accessrequests"]["p50"]
    for name, stats in results.items():
        print(f"{name:36} p50 {stats['p50']:.3f} s  max {stats['max']:.3f} s  "
              f"({stats['p50'] / base:.2f}x kubectl)")
    out = Path(__file__).parent / "results" / "plugin.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
