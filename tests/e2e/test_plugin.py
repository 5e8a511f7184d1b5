"""``kubectl pim`` on the real control plane, run as alice (requester), bob and carol
(approvers) through the plugin's own --as/--as-group flags (issue 14)."""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from kubepim.devcluster import binaries
from tests.e2e import pim
from tests.e2e.support import Kubectl, OperatorProcess, poll

REPO = Path(__file__).resolve().parents[2]


def _packager() -> Any:
    """tools/krew/package.py as a module (tools/ is scripts, not a package)."""
    spec = importlib.util.spec_from_file_location("krew_package",
                                                  REPO / "tools" / "krew" / "package.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def plugin(kubectl: Kubectl, *args: str, as_user: str | None = None,
           groups: tuple[str, ...] = (), kubeconfig: Path | None = None,
           timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``kubectl pim ARGS`` through kubectl's plugin lookup (the venv's bin on PATH)."""
    command = [str(kubectl.binary), "pim", *args,
               f"--kubeconfig={kubeconfig or kubectl.kubeconfig}"]
    if as_user:
        command.append(f"--as={as_user}")
    command += [f"--as-group={group}" for group in groups]
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}"
               f"{os.environ.get('PATH', '')}")
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                            env=env, check=False)
    assert "Traceback" not in result.stderr, result.stderr
    return result


def _eligible(kubectl: Kubectl, namespace: str) -> None:
    pim.pod_reader_for_alice(kubectl, namespace, approval={"users": ["bob", "carol"]})


def _pending(kubectl: Kubectl, namespace: str) -> str:
    made = plugin(kubectl, "request", "pod-reader", "-n", namespace, "--for", "10m",
                  "--reason", "INC-7: pods crash", as_user="alice")
    assert made.returncode == 0, made.stderr
    name = made.stdout.split()[0].removeprefix("accessrequest/")
    pim.wait_phase(kubectl, name, "Pending")
    return name


def test_eligible_lists_exactly_what_admission_accepts(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    _eligible(kubectl, namespace)
    listed = plugin(kubectl, "eligible", "-o", "json", as_user="alice")
    assert listed.returncode == 0, listed.stderr
    mine = [o for o in json.loads(listed.stdout) if o["eligibility"] == namespace]
    assert mine == [{
        "eligibility": namespace, "roles": ["Role/pod-reader"],
        "where": [f"in namespaces [{namespace}]"], "namespaces": [namespace],
        "clusterWide": False, "defaultDuration": "1h", "maxDuration": "8h",
        "approval": {"users": ["bob", "carol"], "groups": [], "required": 1},
        "breakGlass": None, "lacking": None}]
    table = plugin(kubectl, "eligible", as_user="alice").stdout
    assert "ELIGIBILITY" in table and "Role/pod-reader" in table and "1 of bob, carol" in table
    # What it lists, admission accepts; what it does not, admission refuses and says why.
    accepted = plugin(kubectl, "request", "pod-reader", "-n", namespace, "--reason", "x",
                      "--dry-run=server", as_user="alice")
    assert accepted.returncode == 0, accepted.stderr
    refused = plugin(kubectl, "request", "ClusterRole/edit", "-n", namespace, "--reason", "x",
                     "--dry-run=server", as_user="alice")
    assert refused.returncode == 1
    assert "alice is not eligible for ClusterRole/edit" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    nobody = json.loads(plugin(kubectl, "eligible", "-o", "json", as_user="mallory").stdout)
    assert [o for o in nobody if o["eligibility"] == namespace] == []


def test_dry_run_creates_nothing(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    _eligible(kubectl, namespace)
    done = plugin(kubectl, "request", "pod-reader", "-n", namespace, "--reason", "x",
                  "--dry-run=server", as_user="alice")
    assert done.returncode == 0 and "nothing was created" in done.stdout
    mine = plugin(kubectl, "ls", "--mine", "-o", "json", as_user="alice").stdout
    assert [i for i in json.loads(mine)["items"]
            if i["spec"].get("namespace") == namespace] == []


def test_request_wait_returns_0_once_approved_and_the_denied_code_on_denial(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    _eligible(kubectl, namespace)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}"
               f"{os.environ.get('PATH', '')}")

    def waiting() -> subprocess.Popen[str]:
        return subprocess.Popen(
            [str(kubectl.binary), "pim", "request", "pod-reader", "-n", namespace,
             "--for", "10m", "--reason", "INC-8", "--wait", "--timeout", "60s",
             f"--kubeconfig={kubectl.kubeconfig}", "--as=alice"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)

    def pending_name() -> str | None:
        listed = json.loads(plugin(kubectl, "ls", "--mine", "--phase", "Pending", "-o", "json",
                                   as_user="alice").stdout)["items"]
        names = [i["metadata"]["name"] for i in listed if i["spec"]["namespace"] == namespace]
        return names[0] if names else None

    def decided_while_waiting(*decision: str, as_user: str) -> tuple[int, str, str]:
        """Start a waiting request and decide it as ``as_user``: (exit code, stdout, stderr)."""
        process = waiting()
        try:
            name = poll(pending_name, timeout=15, what="the waiting request Pending")
            decided = plugin(kubectl, decision[0], name, *decision[1:], as_user=as_user)
            assert decided.returncode == 0, decided.stderr
            out, err = process.communicate(timeout=30)
        finally:
            process.kill()
        return process.returncode, out, err

    code, out, err = decided_while_waiting("approve", "--comment", "ok", as_user="bob")
    assert code == 0, err
    assert "Pending: 0 of 1 approvals; may still approve: bob, carol" in out
    assert "Active until" in out
    assert kubectl.can_i("list", "pods", as_user="alice", namespace=namespace)

    code, out, err = decided_while_waiting("deny", "--reason", "not now", as_user="carol")
    assert code == 3, (out, err)
    assert "Denied" in out


def test_to_approve_lists_only_what_the_caller_may_decide(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    _eligible(kubectl, namespace)
    name = _pending(kubectl, namespace)

    def listed(user: str) -> list[str]:
        out = plugin(kubectl, "ls", "--to-approve", "-o", "name", as_user=user)
        assert out.returncode == 0, out.stderr
        return out.stdout.split()

    entry = f"accessrequest.pim.kubepim.dev/{name}"
    assert entry in listed("bob") and entry in listed("carol")
    assert entry not in listed("alice")  # the requester
    assert entry not in listed("mallory")  # no approver under its eligibility
    assert plugin(kubectl, "approve", name, as_user="bob").returncode == 0
    pim.wait_phase(kubectl, name, "Active")
    assert entry not in listed("carol")  # decided: no longer to approve


def test_the_requester_cannot_approve_and_sees_admissions_message(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    _eligible(kubectl, namespace)
    name = _pending(kubectl, namespace)
    refused = plugin(kubectl, "approve", name, as_user="alice")
    assert refused.returncode == 1
    assert refused.stderr.startswith("error: ") and "alice" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert "alice" not in (pim.get_request(kubectl, name)["status"].get("approvals") or {})


def test_ls_show_withdraw_and_end(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    _eligible(kubectl, namespace)
    name = _pending(kubectl, namespace)
    table = plugin(kubectl, "ls", "--mine", as_user="alice").stdout
    row = next(line for line in table.splitlines() if line.startswith(name))
    assert "Role/pod-reader" in row and "Pending" in row and "0/1" in row
    here = plugin(kubectl, "ls", "-n", namespace, "-o", "name", as_user="alice").stdout.split()
    assert here == [f"accessrequest.pim.kubepim.dev/{name}"]  # only requests for that namespace
    assert name not in plugin(kubectl, "ls", "-n", "elsewhere", as_user="alice").stdout
    assert name in plugin(kubectl, "ls", "-A", "-n", "elsewhere", as_user="alice").stdout
    shown = plugin(kubectl, "show", name, as_user="alice").stdout
    assert "may still approve: bob, carol" in shown and "Requested" in shown
    assert plugin(kubectl, "withdraw", name, as_user="alice").returncode == 0
    pim.wait_phase(kubectl, name, "Withdrawn")

    second = _pending(kubectl, namespace)
    assert plugin(kubectl, "approve", second, as_user="carol").returncode == 0
    pim.wait_phase(kubectl, second, "Active")
    row = next(line for line in plugin(kubectl, "ls", "--mine", as_user="alice").stdout
               .splitlines() if line.startswith(second))
    assert "Active" in row and ("9m" in row or "10m" in row)  # time left
    ended = plugin(kubectl, "end", second, "--reason", "done", as_user="alice")
    assert ended.returncode == 0, ended.stderr
    pim.wait_phase(kubectl, second, "Revoked")
    assert not kubectl.can_i("list", "pods", as_user="alice", namespace=namespace)


@pytest.mark.parametrize("args, says", [
    (["request", "pod-reader", "--for", "1e9h", "--reason", "x"], "--for '1e9h' is not"),
    (["request", "pod-reader", "--for", "10m"], "the following arguments are required: --reason"),
    (["show"], "NAME is required: kubectl pim show NAME"),
])
def test_bad_input_gets_one_clear_line_and_a_non_zero_exit(
    kubectl: Kubectl, args: list[str], says: str
) -> None:
    result = plugin(kubectl, *args, as_user="alice")
    assert result.returncode != 0
    assert says in result.stderr


def _kubeconfig_with(kubectl: Kubectl, tmp_path: Path, **change: Any) -> Path:
    view = json.loads(kubectl("config", "view", "--raw", "--minify", "-o", "json").stdout)
    view["clusters"][0]["cluster"].update(change.get("cluster", {}))
    if "user" in change:
        view["users"][0]["user"] = change["user"]
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps(view))
    return path


def test_an_unreachable_api_server_and_a_refused_token_get_one_line(
    kubectl: Kubectl, tmp_path: Path
) -> None:
    gone = _kubeconfig_with(kubectl, tmp_path, cluster={"server": "https://127.0.0.1:1"})
    result = plugin(kubectl, "ls", kubeconfig=gone)
    assert result.returncode == 1
    assert result.stderr.startswith("error: cannot reach the API server at https://127.0.0.1:1")
    expired = _kubeconfig_with(kubectl, tmp_path, user={"token": "expired-or-invalid"})
    result = plugin(kubectl, "ls", kubeconfig=expired)
    assert result.returncode == 1
    assert "Unauthorized" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_tls_server_name_is_the_name_verified(kubectl: Kubectl, tmp_path: Path) -> None:
    """kubectl's tls-server-name: the serving certificate must carry that name, not the host."""
    wrong = _kubeconfig_with(kubectl, tmp_path, cluster={"tls-server-name": "elsewhere.example"})
    result = plugin(kubectl, "ls", kubeconfig=wrong)
    assert result.returncode == 1
    assert "certificate verify failed" in result.stderr, result.stderr
    right = _kubeconfig_with(kubectl, tmp_path, cluster={"tls-server-name": "kubernetes.default"})
    result = plugin(kubectl, "ls", kubeconfig=right)
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux (Debian package tmux)")
def test_an_approver_picks_the_request_from_a_list_on_a_real_terminal(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str, tmp_path: Path
) -> None:
    _eligible(kubectl, namespace)
    name = _pending(kubectl, namespace)
    session = f"kubepim-{namespace[-8:]}"
    bin_dir = Path(sys.executable).parent
    script = tmp_path / "approve.sh"
    script.write_text(f"export PATH={bin_dir}:$PATH\n"
                      f"{kubectl.binary} pim approve --comment picked "
                      f"--kubeconfig={kubectl.kubeconfig} --as=bob\n"
                      "echo EXIT=$?\nsleep 600\n")
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "200", "-y", "50",
                    f"bash {script}"], check=True)
    try:
        def screen() -> str:
            return subprocess.run(["tmux", "capture-pane", "-p", "-t", session],
                                  capture_output=True, text=True, check=True).stdout

        shown = poll(lambda: screen() if "approve which one?" in screen() else None,
                     timeout=20, what="the pick list on the terminal")
        line = next(row for row in shown.splitlines() if name in row)
        number = line.split()[0]
        subprocess.run(["tmux", "send-keys", "-t", session, number, "Enter"], check=True)
        poll(lambda: "EXIT=0" in screen(), timeout=20, what="the approval recorded")
        assert f"accessrequest/{name}: Approve recorded as bob" in screen()
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], check=False)
    pim.wait_phase(kubectl, name, "Active")
    assert pim.get_request(kubectl, name)["status"]["approvals"]["bob"]["comment"] == "picked"


def test_the_krew_manifest_validates_and_its_archive_runs_on_its_own_libraries(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str, tmp_path: Path
) -> None:
    """The release path: .krew.yaml rendered over the four archives, checked by krew's own
    validate-krew-manifest (which installs every platform from a server), then installed by
    krew for this machine and run through kubectl by a python3 with no site-packages."""
    found = binaries.ensure(build=False)
    assert found.krew and found.validate_krew_manifest, \
        "krew is not built: run tools/build-control-plane.sh (make test does)"
    dist = tmp_path / "dist"
    dist.mkdir()
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(dist))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        built = subprocess.run(
            [sys.executable, str(REPO / "tools" / "krew" / "package.py"), "--tag", "v0.1.0",
             "--out", str(dist), "--base-url", f"http://127.0.0.1:{server.server_address[1]}/"],
            capture_output=True, text=True, timeout=900, check=False)
        assert built.returncode == 0, built.stderr
        for platform, suffix in _packager().SUFFIXES.items():  # each archive its own platform's
            with tarfile.open(dist / f"kubectl-pim_{platform.replace('/', '_')}.tar.gz") as tar:
                compiled = [n for n in tar.getnames() if n.endswith(".so")]
            assert compiled and all(n.endswith(suffix) for n in compiled), (platform, compiled)
            assert {n.split("/")[1] for n in compiled} == {"cp311", "cp312", "cp313", "cp314"}
        tools = tmp_path / "bin"
        tools.mkdir()
        (tools / "kubectl").symlink_to(kubectl.binary)
        (tools / "kubectl-krew").symlink_to(found.krew)
        # Only the stdlib and the archive: site-packages of whichever python3 is first on PATH
        # cannot stand in for a library the archive lacks.
        interpreter = Path(sys.base_prefix) / "bin" / f"python{sys.version_info[0]}"
        (tools / "python3").write_text(f'#!/bin/sh\nexec {interpreter} -I -S "$@"\n')
        (tools / "python3").chmod(0o755)
        base_env = {"HOME": str(tmp_path), "PATH": f"{tools}:/usr/bin:/bin",
                     "KREW_NO_UPGRADE_CHECK": "1"}
        validated = subprocess.run([str(found.validate_krew_manifest), "-manifest",
                                    str(dist / "pim.yaml")], env=base_env, capture_output=True,
                                   text=True, timeout=300, check=False)
        assert validated.returncode == 0, validated.stderr[-3000:]
        assert "all 4 spec.platforms installed fine" in validated.stderr
        root = tmp_path / "krew"
        installed = subprocess.run([str(found.krew), "install", "--manifest",
                                    str(dist / "pim.yaml")],
                                   env={**base_env, "KREW_ROOT": str(root)},
                                   capture_output=True, text=True, timeout=300, check=False)
        assert installed.returncode == 0, installed.stderr
    finally:
        server.shutdown()
        server.server_close()
    _eligible(kubectl, namespace)
    env = {**base_env, "PATH": f"{root / 'bin'}:{base_env['PATH']}",
           "KUBECONFIG": str(kubectl.kubeconfig)}
    listed = subprocess.run([str(kubectl.binary), "pim", "eligible", "-o", "json", "--as",
                             "alice"], env=env, capture_output=True, text=True, timeout=60,
                            check=False)
    assert listed.returncode == 0, listed.stderr
    assert [o["eligibility"] for o in json.loads(listed.stdout)].count(namespace) == 1
    assert os.path.realpath(shutil.which("kubectl-pim", path=env["PATH"]) or "").startswith(
        str(root / "store" / "pim" / "v0.1.0"))
