"""``python -m bench [--quick]``: every benchmark of kubepim, a table and bench/results/*.json.

Runs on local control planes started for the run (nothing else should load the machine):
one for admission, activation, burst and expiry, a fresh one each for recovery and memory. The
full run uses the sizes of the targets (200 activations, 1,000 and 5,000 expiring grants, a
1,000-request burst, 10,000 requests with 1,000 eligibilities, recovery of 5,000 grants of which
2,000 are overdue); --quick scales them down to finish in a few minutes. Benchmarks, not tests:
nothing here asserts a time; the table shows the targets beside the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

from kubepim.devcluster import cluster

from . import admission, harness, measures, scale, standing

FULL: dict[str, Any] = {"activations": 200, "expiry": [1000, 5000], "window": 60, "burst": 1000,
        "memory_requests": 10000, "memory_eligibilities": 1000, "recovery": 5000,
        "recovery_overdue": 2000, "admission": 1000, "flood": 3000,
        "scale": {"namespaces": 2000, "rolebindings": 50000, "eligibilities": 1000,
                  "finished": 45000, "live": 5000},
        "standing": {"namespaces": 500, "roles": 2500, "cluster_roles": 500,
                     "rolebindings": 20000, "clusterrolebindings": 300}}
MEASURES = ("admission", "activation", "burst", "expiry", "recovery", "memory", "flood",
            "scale", "standing")
QUICK: dict[str, Any] = {"activations": 200, "expiry": [200], "window": 20, "burst": 200,
         "memory_requests": 1000, "memory_eligibilities": 100, "recovery": 500,
         "recovery_overdue": 200, "admission": 300, "flood": 500,
         "scale": {"namespaces": 200, "rolebindings": 5000, "eligibilities": 100,
                   "finished": 4500, "live": 500},
         "standing": {"namespaces": 50, "roles": 250, "cluster_roles": 50,
                      "rolebindings": 2000, "clusterrolebindings": 30}}


def _scale_rows(s: dict[str, Any]) -> list[tuple[str, str, str]]:
    sizes = s["sizes"]
    stored = s["stored_bytes_per_finished_request"]
    return [
        (f"scale: idle RSS, {sizes['finished']} finished + {sizes['live']} live (MiB)",
         f"{s['idle_rss']['median_mib']:.0f}  (live only {s['baseline_idle_rss']['median_mib']:.0f}"
         f", {100 * (s['rss_over_baseline'] - 1):+.0f}%)", "< 200 MiB, within 20%"),
        ("scale: takeover to all reconciled (s)", f"{s['takeover_s']:.1f}", "< 30 s"),
        ("scale: API requests per resync", f"{s['resync']['requests']:.0f}  "
         f"({sizes['live']} live requests)", "proportional to live only"),
        ("scale: expiry lag of the live grants (s)",
         f"p50 {s['expiry_lag_s']['p50']:.2f}  p99 {s['expiry_lag_s']['p99']:.2f}  "
         f"max {s['expiry_lag_s']['max']:.2f}", "p99 < 1 s"),
        *([("scale: expiry lag as the requests record it (s)",
            f"p50 {s['expiry_lag_recorded_s']['p50']:.2f}  p99 "
            f"{s['expiry_lag_recorded_s']['p99']:.2f}  (window began "
            f"{s['expiry_window']['first_expiry_after_takeover_s']:.0f} s after the takeover)",
            "")] if "expiry_lag_recorded_s" in s else []),
        *([("scale: expiry lag, the same grants alone (s)",
            f"p50 {s['baseline_expiry_lag_s']['p50']:.2f}  p99 "
            f"{s['baseline_expiry_lag_s']['p99']:.2f}  max {s['baseline_expiry_lag_s']['max']:.2f}",
            "")] if "baseline_expiry_lag_s" in s else []),
        ("scale: bytes stored per finished request", f"{stored['total']:.0f}  (history "
         f"{stored['history']:.0f}, managedFields {stored['managedFields']:.0f})", ""),
    ]


def _rows(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    rows = []
    if "activation" in results:
        a = results["activation"]
        rows.append(("activation p50 / p99 (ms)",
                     f"{a['kubepim_ms']['p50']:.0f} / {a['kubepim_ms']['p99']:.0f}  "
                     f"(floor {a['floor_ms']['p50']:.0f} / {a['floor_ms']['p99']:.0f}, "
                     f"p99 ratio {a['p99_ratio']:.1f}x)", "p99 < 250 ms and < 3x floor"))
    for e in results.get("expiry", []):
        lag = e["lag_s"]
        rows.append((f"expiry lag, {e['grants']} grants (s)",
                     f"p50 {lag['p50']:.2f}  p99 {lag['p99']:.2f}  max {lag['max']:.2f}",
                     "p99 < 1 s at 5,000"))
    b = results.get("burst")
    if b:
        rows.append((f"burst of {b['requests']} to all Active (s)",
                     f"{b['kubepim_s']:.1f}  (floor {b['floor_s']:.1f}, ratio {b['ratio']:.1f}x)",
                     "< 2x floor"))
        if "client_floor_s" in b:
            rows.append(("  beside the client-side floor (s)",
                         f"{b['client_floor_s']:.1f}  (ratio {b['client_floor_ratio']:.2f}x)",
                         "< 1.5x"))
            wait = b["approval_to_active_s"]
            rows.append(("  approval to Active during the burst (s)",
                         f"p50 {wait['p50']:.2f}  p99 {wait['p99']:.2f}", "p99 < 1 s"))
        if "submitted_s" in b:
            calls = b["api_calls_per_grant"]
            rows.append(("  of which: submitting / after last approval (s)",
                         f"{b['submitted_s']:.1f} / {b['after_last_approval_s']:.1f}  "
                         f"({sum(calls.values()):.1f} API calls per grant, floor 1)", ""))
    m = results.get("memory")
    if m:
        peak = f"  (peak in burst {b['operator_peak_rss_mib']:.0f})" if b else ""
        rows.append((f"operator RSS idle, {m['accessrequests_in_cluster']} requests (MiB)",
                     f"{m['operator_idle_rss_mib']:.0f}{peak}", "< 200 MiB at 10,000"))
    r = results.get("recovery")
    if r:
        rows.append((f"recovery, {r['grants']} grants / {r['overdue']} overdue (s)",
                     f"{r['seconds_to_all_revoked']:.1f}  ({r['long_grants_kept']} live kept)",
                     "< 10 s"))
    f = results.get("flood")
    if f:
        wait = f["approval_to_active_s"]
        rows.append((f"flood of {f['requests']}: approval to Active (s)",
                     f"p50 {wait['p50']:.1f}  p99 {wait['p99']:.1f}  slowest {f['slowest_s']:.1f}"
                     f"  ({f['over_60s_left_to_resync']} left to the resync)",
                     "slowest < 10 s"))
    s = results.get("scale")
    if s and "baseline_idle_rss" in s:
        rows += _scale_rows(s)
    ad = results.get("admission")
    if ad:
        rows.append(("admission p50 / p99 (ms)",
                     f"{ad['kubepim_ms']['p50']:.1f} / {ad['kubepim_ms']['p99']:.1f}  "
                     f"(floor {ad['floor_ms']['p50']:.1f} / {ad['floor_ms']['p99']:.1f})",
                     "p99 < 20 ms"))
    rows += standing.rows(results.get("standing") or {})
    return rows


def main() -> None:
    """Run every measure, print the table, write the JSON."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, a few minutes")
    parser.add_argument("--only", default=",".join(MEASURES),
                        help=f"comma-separated subset of {','.join(MEASURES)}")
    args = parser.parse_args()
    only = set(args.only.split(","))
    if not only <= set(MEASURES):
        parser.error(f"--only takes {', '.join(MEASURES)}; got {args.only}")
    sizes = QUICK if args.quick else FULL
    results: dict[str, Any] = {"mode": "quick" if args.quick else "full", "sizes": sizes,
                               "machine": {"cpus": os.cpu_count(),
                                           "python": platform.python_version()}}
    suffix = "" if only == set(MEASURES) else "-" + "-".join(sorted(only))
    began = time.monotonic()
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    result_file = out / f"bench-{results['mode']}{suffix}.json"

    def run(bench: harness.Bench, key: str, measure: Any) -> None:
        # One failing measure is reported, not allowed to lose the others.
        if key not in only:
            return
        try:
            results[key] = measure(bench)
        except Exception as error:
            results.setdefault("errors", {})[key] = repr(error)
        result_file.write_text(json.dumps(results, indent=2))

    def rate() -> float:
        """Grants per second the burst reached (sizes the waits of the later measures)."""
        return sizes["burst"] / results["burst"]["kubepim_s"] if "burst" in results else 40.0

    # Recovery and memory each get a fresh control plane: they are defined by what is in the
    # cluster (5,000 grants; 10,000 requests), not by what the earlier measures left behind.
    environments = [
        [("admission", lambda b: admission.measure(b, sizes["admission"])),
         ("activation", lambda b: measures.activation(b, sizes["activations"])),
         ("burst", lambda b: measures.burst(b, sizes["burst"])),
         ("expiry", lambda b: [measures.expiry(b, n, sizes["window"], rate())
                               for n in sizes["expiry"]])],
        [("recovery", lambda b: measures.recovery(b, sizes["recovery"],
                                                  sizes["recovery_overdue"], rate()))],
        [("memory", lambda b: measures.memory(b, sizes["memory_requests"],
                                              sizes["memory_eligibilities"]))],
        # The flood: the product's default lease and resync, so nothing is left to a resync.
        [("flood", lambda b: measures.flood(b, sizes["flood"]))],
    ]
    for steps in environments:
        if not only & {key for key, _ in steps}:
            continue
        with tempfile.TemporaryDirectory(prefix="kubepim-bench-") as scratch:
            flood = {key for key, _ in steps} == {"flood"}
            bench, started = harness.start(Path(scratch), resync=None if flood else "60")
            try:
                for key, measure in steps:
                    run(bench, key, measure)
            finally:
                bench.operator.stop()
                cluster.stop(started)
    if "scale" in only:  # its own control planes: the seeded cluster and the baseline
        with tempfile.TemporaryDirectory(prefix="kubepim-bench-") as scratch:
            try:
                scale.scale(Path(scratch), sizes["scale"], results.setdefault("scale", {}))
            except Exception as error:
                results.setdefault("errors", {})["scale"] = repr(error)
            result_file.write_text(json.dumps(results, indent=2))
    if "standing" in only:  # its own control plane, seeded with RBAC
        with tempfile.TemporaryDirectory(prefix="kubepim-bench-") as scratch:
            try:
                standing.standing(Path(scratch), sizes["standing"],
                                  results.setdefault("standing", {}))
            except Exception as error:
                results.setdefault("errors", {})["standing"] = repr(error)
            result_file.write_text(json.dumps(results, indent=2))
    results["seconds"] = time.monotonic() - began
    result_file.write_text(json.dumps(results, indent=2))
    print(f"{'measure':48} {'result':58} target")
    for name, value, target in _rows(results):
        print(f"{name:48} {value:58} {target}")
    for key, error in results.get("errors", {}).items():
        print(f"{key}: failed: {error}")
    print(f"({results['mode']} run, {results['seconds']:.0f} s; JSON in {out})")


if __name__ == "__main__":
    main()
