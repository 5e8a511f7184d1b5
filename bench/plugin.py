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

import yaml

from kubepim.devcluster import cluster

from . import harness


def _timed(commands: dict[str, list[str]], env: dict[str, str],
           runs: int) -> dict[str, dict[str, float]]:
    """Each command ``runs`` times, after one warm-up run each.

    The commands take turns: a slower spell of the machine hits every command alike, so the
    ratios hold.
    """
    samples: dict[str, list[float]] = {name: [] for name in commands}
    for turn in range(runs + 1):
        for name, command in commands.items():
            start = time.perf_counter()
            subprocess.run(command, env=env, capture_output=True, check=True)
            if turn:
                samples[name].append(time.perf_counter() - start)
    return {name: harness.summary(values) for name, values in samples.items()}


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
            # The kubeconfig as kubectl writes one (YAML; the local control plane's is JSON,
            # which the plugin reads without importing PyYAML): the users' case is measured.
            kubeconfig = Path(scratch) / "kubeconfig.yaml"
            kubeconfig.write_text(yaml.safe_dump(json.loads(bench.kubeconfig.read_text())))
            env = dict(os.environ, KUBECONFIG=str(kubeconfig),
                       PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
            # As installed for a user: Python caches compiled modules (a shell or CI that sets
            # PYTHONDONTWRITEBYTECODE would recompile the plugin on every run).
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            results = _timed({
                "kubectl get accessrequests": [kubectl, "get", "accessrequests"],
                "kubectl pim ls": [kubectl, "pim", "ls"],
                "kubectl-pim ls (no kubectl in front)": [
                    str(Path(sys.executable).parent / "kubectl-pim"), "ls"],
                "kubectl pim eligible --as alice": [kubectl, "pim", "eligible", "--as", "alice"],
            }, env, args.runs)
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
