"""The alert rules shipped in the chart are valid and fire when they should (promtool)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from kubepim import metrics

FILES = Path(__file__).resolve().parents[2] / "charts" / "kubepim" / "files"
PROMTOOL = shutil.which("promtool")

needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool missing: `make test` installs Debian's prometheus")


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], cwd=FILES, capture_output=True, text=True,
                          check=False, timeout=60)


@needs_promtool
def test_alert_rules_pass_promtool_check_rules() -> None:
    result = _promtool("check", "rules", "alerts.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 9 rules found" in result.stdout


@needs_promtool
def test_alert_rules_unit_tests_pass() -> None:
    result = _promtool("test", "rules", "alerts_test.yaml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_dashboard_queries_only_metrics_the_operator_exports() -> None:
    exported = {m.name for m in metrics.REGISTRY.collect()}
    dashboard = (FILES / "dashboard.json").read_text()
    used = set(re.findall(r"kubepim_[a-z_]+", dashboard))
    suffixes = ("_total", "_bucket", "_count", "_sum", "_info")
    names = {next((u.removesuffix(s) for s in suffixes if u.endswith(s)), u) for u in used}
    assert names, "the dashboard queries no kubepim metric"
    assert names <= exported, f"unknown metrics in the dashboard: {names - exported}"
