"""The dev cluster refuses bad starting points with messages that say what to do."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from kubepim.devcluster import binaries, certs, cluster
from kubepim.devcluster.__main__ import main
from kubepim.devcluster.errors import DevClusterError

_NO_BINARIES = binaries.Binaries(Path("/nonexistent/etcd"), Path("/nonexistent/kube-apiserver"),
                                 Path("/nonexistent/kube-controller-manager"),
                                 Path("/nonexistent/helm"))


def test_stale_directory_is_refused_with_the_command_that_removes_it(tmp_path: Path) -> None:
    workdir = tmp_path / "cluster"
    workdir.mkdir()
    dead = {"server": "https://127.0.0.1:1", "kubeconfig": str(workdir / "kubeconfig"),
            "pids": {"etcd": 2**22 + 1}}
    (workdir / cluster.STATE_FILE).write_text(json.dumps(dead))

    with pytest.raises(DevClusterError, match=r"stale dev cluster .* down --dir"):
        cluster.start(workdir, _NO_BINARIES)
    assert (workdir / cluster.STATE_FILE).exists()  # nothing was changed


def test_port_in_use_is_refused_with_a_way_out(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(DevClusterError, match=rf"port {port} on 127.0.0.1 is in use.*--port"):
            cluster.start(tmp_path / "cluster", _NO_BINARIES, port=port)
    assert not (tmp_path / "cluster").exists()


def test_bin_dir_without_the_binaries_names_what_it_must_hold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBEPIM_BIN_DIR", str(tmp_path))
    with pytest.raises(DevClusterError, match="must hold executables etcd, kube-apiserver"):
        binaries.ensure()


def test_missing_binary_fails_start_with_the_process_named(tmp_path: Path) -> None:
    with pytest.raises(DevClusterError, match=r"cannot run etcd \(/nonexistent/etcd: .*build it"):
        cluster.start(tmp_path / "cluster", _NO_BINARIES)
    assert not (tmp_path / "cluster").exists()  # cleaned up after the failure


def test_down_without_a_cluster_says_there_is_nothing_to_stop(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["down", "--dir", str(tmp_path / "none")]) == 0
    assert "nothing to stop" in capsys.readouterr().out


def test_env_without_a_cluster_exits_2_and_says_how_to_start_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["env", "--dir", str(tmp_path / "none")]) == 2
    assert "start one with `up`" in capsys.readouterr().err


def test_pki_serves_loopback_and_makes_the_admin_a_system_master(tmp_path: Path) -> None:
    pki = certs.generate(tmp_path / "pki")
    ca = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    serving = x509.load_pem_x509_certificate(pki.serving_cert.read_bytes())
    admin = x509.load_pem_x509_certificate(pki.admin_cert.read_bytes())

    serving.verify_directly_issued_by(ca)
    admin.verify_directly_issued_by(ca)
    sans = serving.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "127.0.0.1" in [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)]
    organizations = admin.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    assert [o.value for o in organizations] == ["system:masters"]
    assert oct(pki.admin_key.stat().st_mode & 0o777) == "0o600"
