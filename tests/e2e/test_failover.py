"""Two replicas: one acts; when it is SIGKILLed the other takes over within 15 s."""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e import pim
from tests.e2e.support import Kubectl, OperatorProcess, poll


@pytest.fixture
def replicas(operator_process: OperatorProcess, tmp_path: Path) -> Iterator[list[OperatorProcess]]:
    """Replica a (leader) and replica b (standby) instead of the session's operator."""
    operator_process.stop()
    pair = [OperatorProcess(operator_process.kubeconfig, tmp_path / name,
                            KUBEPIM_IDENTITY=f"replica-{name}", KUBEPIM_RESYNC_SECONDS="5")
            for name in ("a", "b")]
    for replica in pair:
        replica.log_dir.mkdir()
    try:  # a replica that fails to start must not leave the other running
        pair[0].start()
        pair[1].start(leader=False)
        yield pair
    finally:
        for replica in pair:
            replica.stop()


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _grant(kubectl: Kubectl, namespace: str, name: str, duration: str) -> None:
    pim.apply(kubectl, pim.access_request(
        name, role={"kind": "Role", "name": "pod-reader"}, namespace=namespace,
        duration=duration, justification="failover"), as_user="alice")
    pim.wait_phase(kubectl, name, "Pending")
    pim.approve(kubectl, name, "bob")
    pim.wait_phase(kubectl, name, "Active")


def test_standby_takes_over_within_15s_and_every_grant_still_expires_on_time(
    kubectl: Kubectl, replicas: list[OperatorProcess], namespace: str
) -> None:
    active, standby = replicas
    assert "(standby)" in standby.log_path.read_text()
    kubectl("create", "role", "pod-reader", "--verb=get,list", "--resource=pods", "-n", namespace)
    pim.apply(kubectl, pim.eligibility(
        namespace, subjects=[{"kind": "User", "name": "alice"}],
        roles=[{"kind": "Role", "name": "pod-reader"}], namespaces=[namespace],
        maxDuration="10m", approval={"users": ["bob"]}))
    names = [f"{namespace}-{i}" for i in range(3)]
    for name, duration in zip(names, ("25s", "30s", "35s"), strict=True):
        _grant(kubectl, namespace, name, duration)

    active.kill()
    killed_at = _now()
    poll(lambda: "elected leader as replica-b" in standby.log_path.read_text(), timeout=15,
         what="the standby elected within 15 s")
    took = (_now() - killed_at).total_seconds()
    assert took <= 15, f"takeover took {took:.1f} s"
    print(f"takeover after SIGKILL: {took:.1f} s")

    for name in names:
        expiry = pim.expires_at(pim.get_request(kubectl, name))
        assert expiry > _now(), "the test's grants must expire after the takeover"
        bindings = kubectl.json("get", "rolebindings", "-n", namespace, "-l",
                                f"pim.kubepim.dev/request={name}")["items"]
        assert len(bindings) == 1, f"{name} has {len(bindings)} bindings"
    for name in names:
        expiry = pim.expires_at(pim.get_request(kubectl, name))
        poll(lambda name=name: pim.phase_of(kubectl, name) == "Expired",
             timeout=(expiry - _now()).total_seconds() + 2, what=f"{name} expired on time")
        assert _now() <= expiry + datetime.timedelta(seconds=2)
    assert kubectl("get", "rolebindings", "-n", namespace, "-l",
                   "app.kubernetes.io/managed-by=kubepim", "-o", "name").stdout == ""
    assert not kubectl.can_i("list", "pods", as_user="alice", namespace=namespace)
    for name in names:
        history = [a for a, _ in pim.history(pim.get_request(kubectl, name))]
        assert history == ["Requested", "Approved", "Activated", "Expired"]
