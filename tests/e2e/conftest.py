"""Fixtures for e2e tests on a real control plane.

The session's cluster is the one ``KUBEPIM_KUBECONFIG`` points at (a kind cluster, say: its
user must be able to impersonate), or else a local control plane started here and stopped at
the end of the session.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from kubepim.devcluster import binaries, cluster, install
from tests.e2e.support import Kubectl, OperatorProcess, kubectl_binary

_HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test under tests/e2e as ``e2e`` (deselect them with ``-m 'not e2e'``)."""
    for item in items:
        if _HERE in item.path.parents:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def kubeconfig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Kubeconfig of an admin of the session's cluster."""
    external = os.environ.get("KUBEPIM_KUBECONFIG")
    if external:
        path = Path(external).expanduser()
        if not path.is_file():
            pytest.exit(f"KUBEPIM_KUBECONFIG={external} is not a file", returncode=2)
        yield path
        return
    started = cluster.start(tmp_path_factory.mktemp("control-plane"), binaries.ensure())
    try:
        yield started.kubeconfig
    finally:
        cluster.stop(started)


@pytest.fixture(scope="session")
def kubectl(kubeconfig: Path) -> Kubectl:
    """kubectl as the cluster admin; pass ``as_user=``/``groups=`` to impersonate."""
    return Kubectl(kubeconfig=kubeconfig, binary=kubectl_binary())


# Set when the chart is installed in the cluster with the operator running there (the kind
# path, `make kind-e2e`): the suite then uses that operator and skips what needs a local one.
IN_CLUSTER = bool(os.environ.get("KUBEPIM_OPERATOR_IN_CLUSTER"))


class InClusterOperator:
    """Stands for the operator the chart runs in the cluster: it cannot be killed from here."""

    def running(self) -> bool:
        return True

    def _local_only(self, *_: object, **__: object) -> None:
        pytest.skip("needs the operator as a local process (not with KUBEPIM_OPERATOR_IN_CLUSTER)")

    start = stop = kill = _local_only

    def __getattr__(self, name: str) -> object:  # metrics_port, log, ...: local only
        pytest.skip(f"operator.{name} needs the operator as a local process")


@pytest.fixture(scope="session")
def installed(kubeconfig: Path) -> Path:
    """The cluster with kubepim's CRDs, admission policies and RBAC in force (from the chart)."""
    if not IN_CLUSTER:
        install.install(kubeconfig)
    return kubeconfig


@pytest.fixture(scope="session")
def operator_process(
    installed: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    """One operator subprocess for the session, stopped at its end."""
    if IN_CLUSTER:
        yield InClusterOperator()  # type: ignore[misc]
        return
    workdir = tmp_path_factory.mktemp("operator")
    config = install.operator_kubeconfig(installed, workdir / "operator.kubeconfig")
    # The product's default resync (300 s): the tests prove the event path, not the safety net.
    # The local control plane posts its audit events to the operator's audit sink.
    local = cluster.Cluster.load(installed.parent) if (installed.parent / cluster.STATE_FILE) \
        .is_file() else None
    process = OperatorProcess(config, workdir, **(local.operator_env() if local else {}))
    yield process
    process.stop()


@pytest.fixture
def operator(operator_process: OperatorProcess) -> OperatorProcess:
    """The operator, running (restarted if a previous test stopped or killed it)."""
    if not operator_process.running():
        operator_process.start()
    return operator_process


@pytest.fixture
def namespace(kubectl: Kubectl, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace for one test, deleted (without waiting) afterwards."""
    stem = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"{stem}-{secrets.token_hex(3)}"
    kubectl("create", "namespace", name)
    yield name
    # Tests name their cluster-scoped objects after the namespace; leave none behind, and no
    # open request that would count against its requester's limit in later tests.
    kubectl("delete", "roleeligibility", name, "--ignore-not-found", check=False)
    listed = kubectl("get", "accessrequests", "-o", "name", check=False).stdout.split()
    mine = [item for item in listed if item.split("/", 1)[-1].startswith(name)]
    if mine:
        kubectl("delete", *mine, "--ignore-not-found", "--wait=false", check=False)
    kubectl("delete", "namespace", name, "--wait=false", check=False)
