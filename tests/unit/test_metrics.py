"""The metrics module: names, documentation and bounded labels, and its three helpers."""

from __future__ import annotations

import datetime
import types
from collections.abc import Callable, Iterator

import pytest
from prometheus_client import Metric
from prometheus_client.metrics import MetricWrapperBase

from kubepim import metrics

from .builders import NOW

UNBOUNDED = {"user", "requester", "request", "name", "role", "namespace"}

FAMILIES = list(metrics.REGISTRY.collect())
WRAPPERS = [v for v in vars(metrics).values() if isinstance(v, MetricWrapperBase)]


def _value(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


# --- the metrics themselves -----------------------------------------------------------------

def test_the_registry_holds_the_operators_metrics() -> None:
    assert len(FAMILIES) >= 10
    assert {f.name for f in FAMILIES} == {m.name for w in WRAPPERS for m in w.describe()}


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_every_metric_is_named_kubepim_and_documented(family: Metric) -> None:
    assert family.name.startswith("kubepim_")
    assert family.documentation.strip()


@pytest.mark.parametrize("metric", WRAPPERS, ids=lambda m: m.describe()[0].name)
def test_no_metric_has_a_label_that_names_a_user_request_or_role(
    metric: MetricWrapperBase,
) -> None:
    # prometheus_client exposes declared label names only on this attribute.
    assert not set(metric._labelnames) & UNBOUNDED


def test_no_collected_sample_carries_an_unbounded_label() -> None:
    with metrics.admission_timer("label-check"):
        pass
    labels = {k for f in metrics.REGISTRY.collect() for s in f.samples for k in s.labels}
    assert "webhook" in labels
    assert not labels & UNBOUNDED


# --- admission_timer ------------------------------------------------------------------------

class _Refused(Exception):
    pass


def _allowed() -> None:
    pass


def _refused() -> None:
    raise _Refused("no")


@pytest.fixture
def ticks(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """perf_counter reads 10.0 then 10.25: each admission takes a quarter of a second."""
    clock = iter((10.0, 10.25))
    monkeypatch.setattr(metrics, "time", types.SimpleNamespace(perf_counter=lambda: next(clock)))
    yield


TIMED = [
    pytest.param("timer-allows", _allowed, "allowed", "denied",
                 id="a block that returns is counted as allowed"),
    pytest.param("timer-denies", _refused, "denied", "allowed",
                 id="a block that raises is counted as denied and the error propagates"),
]


@pytest.mark.usefixtures("ticks")
@pytest.mark.parametrize(("webhook", "block", "counted", "not_counted"), TIMED)
def test_admission_timer_counts_the_result_and_observes_one_duration(
    webhook: str, block: Callable[[], None], counted: str, not_counted: str,
) -> None:
    decisions = "kubepim_admission_decisions_total"
    before = {r: _value(decisions, webhook=webhook, result=r) for r in (counted, not_counted)}
    samples = _value("kubepim_admission_seconds_count", webhook=webhook)
    total = _value("kubepim_admission_seconds_sum", webhook=webhook)

    raised = None
    try:
        with metrics.admission_timer(webhook):
            block()
    except _Refused as error:
        raised = error

    assert (raised is not None) == (counted == "denied")
    assert _value(decisions, webhook=webhook, result=counted) == before[counted] + 1
    assert _value(decisions, webhook=webhook, result=not_counted) == before[not_counted]
    assert _value("kubepim_admission_seconds_count", webhook=webhook) == samples + 1
    assert _value("kubepim_admission_seconds_sum", webhook=webhook) == total + 0.25


# --- seconds_between ------------------------------------------------------------------------

BETWEEN = [
    pytest.param(None, None, id="no start gives None"),
    pytest.param(NOW - datetime.timedelta(seconds=90), 90.0,
                 id="a start before the end gives the seconds between"),
    pytest.param(NOW, 0.0, id="a start equal to the end gives zero"),
    pytest.param(NOW + datetime.timedelta(seconds=5), 0.0,
                 id="a start after the end gives zero, never a negative number"),
]


@pytest.mark.parametrize(("start", "seconds"), BETWEEN)
def test_seconds_between_is_never_negative_and_none_without_a_start(
    start: datetime.datetime | None, seconds: float | None,
) -> None:
    assert metrics.seconds_between(start, NOW) == seconds


# --- track ----------------------------------------------------------------------------------

@pytest.fixture
def gauges_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    """track() swaps how the two gauges sample; put the originals back after the test."""
    for gauge in (metrics.ACTIVE_GRANTS, metrics.OVERDUE_GRANTS):
        monkeypatch.setattr(gauge, "_child_samples", gauge._child_samples)


@pytest.mark.usefixtures("gauges_restored")
def test_track_makes_the_grant_gauges_read_the_callables_at_collection_time() -> None:
    state = {"active": 3, "overdue": 1}
    calls: list[str] = []

    def active() -> int:
        calls.append("active")
        return state["active"]

    metrics.track(active, lambda: state["overdue"])
    assert calls == []

    assert _value("kubepim_active_grants") == 3.0
    assert _value("kubepim_overdue_grants") == 1.0
    assert calls

    state.update(active=7, overdue=0)
    assert _value("kubepim_active_grants") == 7.0
    assert _value("kubepim_overdue_grants") == 0.0
