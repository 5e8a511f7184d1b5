"""The operator starts against the real control plane, reports live, and stops on SIGTERM."""

from __future__ import annotations

from tests.e2e.support import OperatorProcess


def test_operator_starts_and_exits_cleanly_on_sigterm(operator: OperatorProcess) -> None:
    assert operator.running()
    assert "kubepim operator started" in operator.log_path.read_text()
    assert operator.stop() == 0
