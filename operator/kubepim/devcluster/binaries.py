"""Where the control-plane binaries come from.

They are built from the Go module proxy by ``tools/build-control-plane.sh`` into a cache outside
the repository (``~/.cache/kubepim/k8s-vX.Y.Z/``, ``etcd-vX.Y.Z/``, ``helm-vX.Y.Z/``,
``krew-vX.Y.Z/``), keyed by the versions pinned in ``tools/*/go.mod``. ``KUBEPIM_BIN_DIR``
overrides the lookup with one directory that holds them all.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .errors import DevClusterError

_NAMES = ("etcd", "kube-apiserver", "kube-controller-manager", "helm")
_OPTIONAL = ("krew", "validate-krew-manifest")  # only the plugin's packaging test needs them


@dataclass(frozen=True)
class Binaries:
    """Absolute paths of the executables a dev cluster runs; helm, krew for chart and plugin."""

    etcd: Path
    kube_apiserver: Path
    kube_controller_manager: Path
    helm: Path
    krew: Path | None = None
    validate_krew_manifest: Path | None = None


def repo_tools_dir() -> Path | None:
    """The checkout's ``tools/`` directory, when this package runs from a kubepim checkout."""
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "tools" / "build-control-plane.sh"
        if candidate.is_file():
            return candidate.parent
    return None


def _from_dirs(dirs: list[Path]) -> Binaries | None:
    found: dict[str, Path] = {}
    for name in _NAMES + _OPTIONAL:
        for directory in dirs:
            path = directory / name
            if path.is_file() and os.access(path, os.X_OK):
                found[name] = path
                break
    if not all(name in found for name in _NAMES):
        return None
    return Binaries(found["etcd"], found["kube-apiserver"], found["kube-controller-manager"],
                    found["helm"], found.get("krew"), found.get("validate-krew-manifest"))


def ensure(*, build: bool = True) -> Binaries:
    """Return the binaries, building missing ones first when ``build`` is true.

    Raises DevClusterError naming what to do when they are missing and cannot be built.
    """
    override = os.environ.get("KUBEPIM_BIN_DIR")
    if override:
        binaries = _from_dirs([Path(override)])
        if binaries is None:
            raise DevClusterError(
                f"KUBEPIM_BIN_DIR={override} must hold executables {', '.join(_NAMES)}; "
                "unset it to use the ones built by tools/build-control-plane.sh"
            )
        return binaries

    tools = repo_tools_dir()
    if tools is None:
        raise DevClusterError(
            "control-plane binaries not found: run this from a kubepim checkout (it builds them "
            "with tools/build-control-plane.sh), or set KUBEPIM_BIN_DIR to a directory holding "
            + ", ".join(_NAMES)
        )
    script = tools / "build-control-plane.sh"
    command = ["bash", str(script)]
    if not build:
        command.append("--check")
    result = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False)
    if result.returncode != 0:
        raise DevClusterError(
            f"{script} failed (exit {result.returncode}); its output above says why. "
            "It needs Go >= 1.26 and access to the Go module proxy."
        )
    binaries = _from_dirs([Path(line) for line in result.stdout.split()])
    if binaries is None:
        raise DevClusterError(f"{script} did not produce {', '.join(_NAMES)}")
    return binaries
