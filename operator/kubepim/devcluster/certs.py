"""Certificates and keys for a local control plane.

Owns the PKI of one dev cluster: a CA, the kube-apiserver's serving certificate (IP SAN
127.0.0.1), an admin client certificate in ``system:masters``, and the service-account
signing key pair. Everything is written under one directory with owner-only permissions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from kubepim import tls


@dataclass(frozen=True)
class Pki:
    """Paths of the files :func:`generate` writes."""

    ca_cert: Path
    ca_key: Path
    serving_cert: Path
    serving_key: Path
    admin_cert: Path
    admin_key: Path
    sa_public: Path
    sa_private: Path


def _write(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    path.chmod(0o600)


def generate(directory: Path, *, admin_user: str = "kubepim-admin") -> Pki:
    """Write a fresh PKI for one cluster into ``directory`` and return its paths."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    pki = Pki(
        ca_cert=directory / "ca.crt",
        ca_key=directory / "ca.key",
        serving_cert=directory / "apiserver.crt",
        serving_key=directory / "apiserver.key",
        admin_cert=directory / "admin.crt",
        admin_key=directory / "admin.key",
        sa_public=directory / "sa.pub",
        sa_private=directory / "sa.key",
    )
    ca_cert, ca_key = tls.new_ca("kubepim-dev-ca")
    _write(pki.ca_cert, tls.pem_cert(ca_cert))
    _write(pki.ca_key, tls.pem_key(ca_key))

    serving, serving_key = tls.issue(
        ca_cert, ca_key, tls.name("kube-apiserver"),
        server_names=("127.0.0.1", "localhost", "kubernetes", "kubernetes.default",
                      "kubernetes.default.svc", "10.0.0.1"),
    )
    _write(pki.serving_cert, tls.pem_cert(serving))
    _write(pki.serving_key, tls.pem_key(serving_key))

    admin, admin_key = tls.issue(ca_cert, ca_key, tls.name(admin_user, ("system:masters",)),
                                 client=True)
    _write(pki.admin_cert, tls.pem_cert(admin))
    _write(pki.admin_key, tls.pem_key(admin_key))

    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    _write(pki.sa_private, tls.pem_key(sa_key))
    _write(
        pki.sa_public,
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    )
    return pki
