"""The export command's arguments: bad ones exit 2 with a message, before any cluster is asked."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubepim import export

ALLOWED_FORM = "is not a date or time like 2026-11-01 or 2026-11-01T08:00:00Z"


class _Connected(AssertionError):
    """Raised by the stand-in for Kube.connect: the command got as far as the cluster."""


@pytest.fixture(autouse=True)
def no_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    def connect(kubeconfig: Path | None = None) -> None:
        raise _Connected(kubeconfig)

    monkeypatch.setattr("kubepim.export.Kube.connect", connect)


REFUSED = [
    pytest.param(["--since", "2026-11-02", "--until", "2026-11-01"],
                 "--since must be before --until", id="a since after until is refused"),
    pytest.param(["--since", "2026-11-01", "--until", "2026-11-01"],
                 "--since must be before --until", id="a since equal to until is refused"),
    pytest.param(["--since", "2026-11-01T08:00:00-02:00", "--until", "2026-11-01T09:00:00Z"],
                 "--since must be before --until",
                 id="a since whose offset puts it after until in UTC is refused"),
    pytest.param(["--since", "2026-11-01T00:30:00Z", "--until", "2026-11-01"],
                 "--since must be before --until",
                 id="a date without a time is midnight UTC, so half past midnight is after it"),
    pytest.param(["--since", "last tuesday", "--until", "2026-11-01"],
                 f"argument --since: 'last tuesday' {ALLOWED_FORM}",
                 id="an unparseable since names the allowed form"),
    pytest.param(["--since", "2026-11-01", "--until", "2026-13-01"],
                 f"argument --until: '2026-13-01' {ALLOWED_FORM}",
                 id="an impossible until date names the allowed form"),
    pytest.param(["--format", "xml"], "argument --format: invalid choice: 'xml'",
                 id="a format other than csv or json is refused"),
]


@pytest.mark.parametrize(("argv", "message"), REFUSED)
def test_bad_arguments_exit_2_with_a_message_before_connecting(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_:
        export.main(argv)
    assert exit_.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert message in err
    assert err.startswith("usage: python -m kubepim.export")


ACCEPTED = [
    pytest.param(["--since", "2026-11-01", "--until", "2026-11-02"], None,
                 id="a since date before an until date goes on to the cluster"),
    pytest.param(["--since", "2026-11-01T08:00:00+02:00", "--until", "2026-11-01T07:00:00Z"],
                 None, id="a since whose offset puts it before until in UTC goes on"),
    pytest.param(["--since", "2026-10-31T23:30:00Z", "--until", "2026-11-01"], None,
                 id="a date without a time compares with a time in UTC"),
    pytest.param(["--since", "2026-11-01", "--until", "2026-11-02", "--kubeconfig", "/tmp/kc"],
                 Path("/tmp/kc"), id="the kubeconfig given is the one connected with"),
]


@pytest.mark.parametrize(("argv", "kubeconfig"), ACCEPTED)
def test_good_arguments_get_as_far_as_connecting(
    argv: list[str], kubeconfig: Path | None,
) -> None:
    with pytest.raises(_Connected) as connected:
        export.main(argv)
    assert connected.value.args == (kubeconfig,)
