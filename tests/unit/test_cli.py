"""kubectl pim without a cluster: kubeconfig loading (as kubectl does), output, arguments.

The commands themselves run against the real control plane in tests/e2e/test_plugin.py.
"""

from __future__ import annotations

import base64
import json
import socket
import ssl
import stat
import sys
import threading
import urllib.parse
from pathlib import Path

import pytest
import yaml

from kubepim.cli import api as api_module
from kubepim.cli import main as cli
from kubepim.cli.api import Api
from kubepim.cli.kubeconfig import ConfigError, Connection, load
from kubepim.devcluster import certs


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


def test_a_yaml_kubeconfig_reads_as_its_json_twin(tmp_path: Path) -> None:
    """JSON files skip PyYAML (start-up time); YAML, flow style included, reads the same."""
    as_json = _config(tmp_path / "json", {"token": "t"})
    document = json.loads(as_json.read_text())
    as_yaml = tmp_path / "yaml"
    as_yaml.write_text(yaml.safe_dump(document))
    flow = tmp_path / "flow"  # YAML's flow style: starts like JSON, is not JSON
    flow.write_text("{apiVersion: v1, current-context: dev, clusters: [{name: c, cluster: "
                    "{server: 'http://127.0.0.1:6443'}}], users: [{name: u, user: {token: t}}],"
                    " contexts: [{name: dev, context: {cluster: c, user: u, namespace: team-a}}]}")
    seen = [load(str(path)) for path in (as_json, as_yaml, flow)]
    assert {(c.server, c.namespace, c.headers["Authorization"]) for c in seen} == \
        {("http://127.0.0.1:6443", "team-a", "Bearer t")}
    broken = tmp_path / "broken"
    broken.write_text("clusters: [unclosed\n")
    with pytest.raises(ConfigError, match=f"cannot read kubeconfig {broken}"):
        load(str(broken))
    broken.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="not a mapping"):
        load(str(broken))


@pytest.mark.parametrize("server, expected", [
    ("https://api.example.com", (True, "api.example.com", 443, "")),
    ("https://10.0.0.1:6443/", (True, "10.0.0.1", 6443, "")),
    ("http://[::1]:8080/k8s/clusters/c-1/", (False, "::1", 8080, "/k8s/clusters/c-1")),
    ("HTTPS://[fe80::1]", (True, "fe80::1", 443, "")),
    ("https://user@host:1/p?x=1#f", (True, "host", 1, "/p")),
    # An "@" after the authority's end is not userinfo: the host is good, never evil.
    ("https://good.example#@evil.example", (True, "good.example", 443, "")),
    ("https://good.example?@evil.example:443/x", (True, "good.example", 443, "")),
    ("https://host:6443?x=1", (True, "host", 6443, "")),
])
def test_the_server_url_splits_as_urllib_would(server: str,
                                               expected: tuple[bool, str, int, str]) -> None:
    assert api_module._split(server) == expected
    parsed = urllib.parse.urlsplit(server)
    assert (parsed.hostname, parsed.port or expected[2]) == (expected[1].lower(), expected[2])


@pytest.mark.parametrize("server", ["127.0.0.1:6443", "ftp://h", "https://h:0",
                                    "https://h:99999", "https://h:x1", "https://[::1",
                                    "https://h\t:6443", "https://a b"])
def test_a_malformed_server_url_is_refused_saying_what_is_allowed(server: str) -> None:
    with pytest.raises(ConfigError, match=r"http\(s\)://|IPv6|1-65535|control character"):
        api_module._split(server)


@pytest.mark.parametrize("text", ["/apis/x/a b?c", "/ünï/çødé", "/a%2Fb", "/~user/x;y=1",
                                  "/\r\n/\x00", "key=a&b c+d/é"])
def test_percent_encoding_matches_urllib(text: str) -> None:
    assert api_module._quote(text, api_module._PATH) == \
        urllib.parse.quote(text, safe="/:@!$&'()*+,;=-._~")
    assert api_module._quote(text, api_module._QUERY) == urllib.parse.quote(text, safe="-._~")


def test_json_is_read_by_json_only_where_pyyaml_would_read_it_alike(tmp_path: Path) -> None:
    """Exponents, NaN, raw control characters, surrogate escapes and deep nesting go to PyYAML,
    whose answer (or refusal) is the kubeconfig's meaning."""
    from kubepim.cli import kubeconfig

    for text in ('{"a": 1e5}', '{"a": 1.5}', '{"a": NaN}', '{"a": "x\u0085y"}',
                 '{"a": "\\ud83d\\ude00"}', '{"a": "\x7f"}',
                 "{" * 3000 + "}" * 3000, "a:\n" + "".join(" " * i + "b:\n"
                                                          for i in range(1, 700))):
        try:
            expected = yaml.load(text, Loader=getattr(
                yaml, "CSafeLoader", yaml.SafeLoader))
        except (yaml.YAMLError, RecursionError):
            with pytest.raises((ConfigError, RecursionError)):
                kubeconfig._parse(text)
            continue
        assert kubeconfig._parse(text) == expected, text[:40]


def test_a_key_yaml_refuses_as_too_long_is_not_read() -> None:
    text = "a" * 1025 + ": b\n"
    with pytest.raises(yaml.YAMLError):
        yaml.safe_load(text)
    from kubepim.cli import blockyaml
    assert blockyaml.read(text) is None


def test_query_values_are_sent_as_text_percent_encoded() -> None:
    api = Api(Connection("http://127.0.0.1:1", None))
    sent = api._request_bytes("GET", "/x", {"limit": 500, "fieldSelector": "a=b c"}, None,
                              "", keep=True)
    assert sent.startswith(b"GET /x?limit=500&fieldSelector=a%3Db%20c HTTP/1.1\r\n")


def test_a_client_certificate_authenticates_a_real_tls_handshake(tmp_path: Path) -> None:
    """Certificate and key (data, as kubectl writes them) reach the TLS handshake: a server
    that requires a client certificate from the CA sees the kubeconfig's user."""
    pki = certs.generate(tmp_path / "pki", admin_user="carol")
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(pki.serving_cert, pki.serving_key)
    server_context.load_verify_locations(pki.ca_cert)
    server_context.verify_mode = ssl.CERT_REQUIRED
    seen: list[str] = []
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        raw, _ = listener.accept()
        with server_context.wrap_socket(raw, server_side=True) as conn:
            subject = dict(pair[0] for pair in conn.getpeercert()["subject"])
            seen.append(subject["commonName"])
            conn.recv(65536)
            body = json.dumps({"user": seen[0]}).encode()
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    data = {path.name: base64.b64encode(path.read_bytes()).decode()
            for path in (pki.ca_cert, pki.admin_cert, pki.admin_key)}
    config = tmp_path / "config"
    config.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "dev",
        "clusters": [{"name": "c", "cluster": {
            "server": f"https://127.0.0.1:{listener.getsockname()[1]}",
            "certificate-authority-data": data["ca.crt"]}}],
        "users": [{"name": "u", "user": {"client-certificate-data": data["admin.crt"],
                                         "client-key-data": data["admin.key"]}}],
        "contexts": [{"name": "dev", "context": {"cluster": "c", "user": "u"}}]}))
    try:
        assert Api(load(str(config)), timeout=10).call("GET", "/whoami") == {"user": "carol"}
    finally:
        thread.join(10)
        listener.close()
    assert seen == ["carol"]
    # A key that does not match the certificate is refused when the kubeconfig is loaded.
    other = certs.generate(tmp_path / "other")
    config.write_text(config.read_text().replace(
        data["admin.key"], base64.b64encode(other.admin_key.read_bytes()).decode()))
    with pytest.raises(ssl.SSLError):
        load(str(config))


def test_names_are_printed_with_control_and_bidi_characters_escaped() -> None:
    from kubepim.cli.main import _visible

    # A subject name can hold anything: it must not break a table or escape a YAML comment.
    assert _visible("x\n---\nkind: RoleEligibility") == "x\\x0a---\\x0akind: RoleEligibility"
    assert _visible("evil\u202etxt.exe") == "evil\\u202etxt.exe"
