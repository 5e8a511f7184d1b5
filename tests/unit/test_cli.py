"""kubectl pim without a cluster: kubeconfig loading (as kubectl does), output, arguments.

The commands themselves run against the real control plane in tests/e2e/test_plugin.py.
"""

from __future__ import annotations

import base64
import json
import stat
import sys
from pathlib import Path

import pytest

from kubepim.cli import main as cli
from kubepim.cli.kubeconfig import ConfigError, load


def _config(path: Path, user: dict[str, object], current: str = "dev",
            extra_contexts: list[dict[str, object]] | None = None) -> Path:
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": current,
        "clusters": [{"name": "c", "cluster": {"server": "http://127.0.0.1:6443"}}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "dev", "context": {"cluster": "c", "user": "u",
                                                 "namespace": "team-a"}},
                     *(extra_contexts or [])]}))
    return path


def test_a_token_file_relative_to_the_kubeconfig_is_read(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("s3cret\n")
    connection = load(str(_config(tmp_path / "config", {"tokenFile": "token"})))
    assert connection.headers["Authorization"] == "Bearer s3cret"
    assert connection.namespace == "team-a" and connection.server == "http://127.0.0.1:6443"


def test_an_exec_credential_plugin_is_run_as_kubectl_runs_it(tmp_path: Path) -> None:
    helper = tmp_path / "kubelogin"
    helper.write_text(
        f"#!{sys.executable}\n"
        "import json, os\n"
        "info = json.loads(os.environ['KUBERNETES_EXEC_INFO'])\n"
        "assert info['kind'] == 'ExecCredential' and os.environ['TENANT'] == 't1'\n"
        "print(json.dumps({'apiVersion': info['apiVersion'], 'kind': 'ExecCredential',\n"
        "                  'status': {'token': 'from-oidc'}}))\n")
    helper.chmod(helper.stat().st_mode | stat.S_IXUSR)
    config = _config(tmp_path / "config", {"exec": {
        "apiVersion": "client.authentication.k8s.io/v1", "command": str(helper),
        "env": [{"name": "TENANT", "value": "t1"}], "interactiveMode": "Never"}})
    assert load(str(config)).headers["Authorization"] == "Bearer from-oidc"


def test_a_failing_credential_plugin_says_which_and_why(tmp_path: Path) -> None:
    config = _config(tmp_path / "config", {"exec": {
        "apiVersion": "client.authentication.k8s.io/v1", "command": "/nonexistent/kubelogin",
        "installHint": "install kubelogin"}})
    with pytest.raises(ConfigError, match=r"kubelogin.*install kubelogin"):
        load(str(config))


def test_kubeconfig_files_merge_and_the_first_definition_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = _config(tmp_path / "a", {"token": "first"})
    second = _config(tmp_path / "b", {"token": "second"}, current="other", extra_contexts=[
        {"name": "other", "context": {"cluster": "c", "user": "u"}}])
    monkeypatch.setenv("KUBECONFIG", f"{first}:{second}")
    connection = load()
    assert connection.headers["Authorization"] == "Bearer first"  # dev, from the first file
    assert load(context="other").namespace == "default"  # a context only the second has
    with pytest.raises(ConfigError, match="context nope is not in the kubeconfig"):
        load(context="nope")


def test_basic_auth_and_a_missing_kubeconfig(tmp_path: Path) -> None:
    config = _config(tmp_path / "config", {"username": "u", "password": "p"})
    expected = "Basic " + base64.b64encode(b"u:p").decode()
    assert load(str(config)).headers["Authorization"] == expected
    with pytest.raises(ConfigError, match="no kubeconfig found"):
        load(str(tmp_path / "missing"))


@pytest.mark.parametrize("seconds, shown", [
    (45, "45s"), (119, "119s"), (600, "10m"), (3900, "1h5m"), (9 * 3600 + 60, "9h"),
    (2 * 86400 + 3 * 3600, "2d3h"), (9 * 86400, "9d")])
def test_relative_durations_read_like_kubectl(seconds: int, shown: str) -> None:
    assert cli._span(seconds) == shown


def test_kubectl_flags_may_come_before_the_command() -> None:
    commands = {"approve", "ls"}
    assert cli._commands_first(["--as", "bob", "approve", "r1"], commands) == \
        ["approve", "--as", "bob", "r1"]
    assert cli._commands_first(["ls", "--mine"], commands) == ["ls", "--mine"]
    assert cli._commands_first(["--as=bob", "-n", "x", "ls"], commands) == \
        ["ls", "--as=bob", "-n", "x"]


def test_a_bad_duration_is_refused_before_any_call(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["request", "pod-reader", "--for", "1e9h", "--reason", "x",
                  "--kubeconfig", "/nonexistent"])
    assert exit_.value.code == cli.EXIT_ERROR
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "1e9h" in err and "Traceback" not in err


def test_completion_offers_commands_and_flags_in_cobras_format(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    cli.complete(["a"])
    assert capsys.readouterr().out.splitlines() == ["ack", "approve", ":4"]
    cli.complete(["request", "--for", "10m", "--b"])
    assert capsys.readouterr().out.splitlines() == ["--break-glass", ":4"]
    # Names come from the API server; with none reachable, nothing but the directive.
    cli.complete(["approve", "--kubeconfig", str(tmp_path / "missing"), ""])
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [":4"] and captured.err == ""
