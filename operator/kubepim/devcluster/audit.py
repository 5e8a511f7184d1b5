"""The local control plane's audit webhook, pointed at the operator's audit sink (issue 18).

A CA of its own (not the cluster's: only the API server's audit client may post), the sink's
serving certificate for 127.0.0.1, the API server's client certificate, the webhook kubeconfig
and the chart's audit policy, all under ``<workdir>/audit``. The sink's port is chosen at start
and recorded in cluster.json; whoever starts the operator passes :func:`operator_env`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from kubepim import tls

CLIENT_NAME = "kube-apiserver-audit"
_POLICY = Path(__file__).resolve().parents[3] / "charts" / "kubepim" / "files" / "audit" \
    / "policy.yaml"


@dataclass(frozen=True)
class AuditSink:
    """Where the API server posts its audit events, and what the operator needs to listen."""

    port: int
    ca_cert: Path
    serving_cert: Path
    serving_key: Path

    def operator_env(self) -> dict[str, str]:
        """The operator's settings for this sink (``KUBEPIM_AUDIT_SINK_*``)."""
        return {"KUBEPIM_AUDIT_SINK_PORT": str(self.port),
                "KUBEPIM_AUDIT_SINK_CERT_FILE": str(self.serving_cert),
                "KUBEPIM_AUDIT_SINK_KEY_FILE": str(self.serving_key),
                "KUBEPIM_AUDIT_SINK_CLIENT_CA_FILE": str(self.ca_cert),
                "KUBEPIM_AUDIT_SINK_CLIENT_NAMES": json.dumps([CLIENT_NAME]),
                # The backend's retries span 16 s here (2 s initial backoff): see prepare.
                "KUBEPIM_ACTIVITY_TAKEOVER_GRACE_SECONDS": "20"}

    def wire(self) -> dict[str, object]:
        """As recorded in cluster.json."""
        return {"port": self.port, "ca_cert": str(self.ca_cert),
                "serving_cert": str(self.serving_cert), "serving_key": str(self.serving_key)}

    @classmethod
    def from_wire(cls, data: dict[str, object]) -> AuditSink:
        """From cluster.json."""
        return cls(int(str(data["port"])), Path(str(data["ca_cert"])),
                   Path(str(data["serving_cert"])), Path(str(data["serving_key"])))


def _write(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    path.chmod(0o600)


def prepare(directory: Path, port: int, *, max_wait: str = "1s",
            initial_backoff: str = "2s") -> tuple[AuditSink, list[str]]:
    """Write the audit PKI, kubeconfig and policy; the sink and the kube-apiserver flags.

    ``max_wait``: how long the API server's batch backend holds events before posting (the
    default is 30 s; 1 s here so tests see use promptly); ``initial_backoff``: its first retry
    delay (10 s by default; 2 s here: an operator killed in a test is back within the backend's
    five attempts, 2 + 3 + 4.5 + 6.75 s).
    """
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    ca, ca_key = tls.new_ca("kubepim-audit-ca")
    sink = AuditSink(port, directory / "ca.crt", directory / "sink.crt", directory / "sink.key")
    _write(sink.ca_cert, tls.pem_cert(ca))
    serving, serving_key = tls.issue(ca, ca_key, tls.name("kubepim-audit-sink"),
                                     server_names=("127.0.0.1",))
    _write(sink.serving_cert, tls.pem_cert(serving))
    _write(sink.serving_key, tls.pem_key(serving_key))
    client, client_key = tls.issue(ca, ca_key, tls.name(CLIENT_NAME), client=True)
    _write(directory / "client.crt", tls.pem_cert(client))
    _write(directory / "client.key", tls.pem_key(client_key))
    kubeconfig = {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "kubepim-audit-sink", "cluster": {
            "server": f"https://127.0.0.1:{port}/audit",
            "certificate-authority": str(sink.ca_cert)}}],
        "users": [{"name": "kube-apiserver", "user": {
            "client-certificate": str(directory / "client.crt"),
            "client-key": str(directory / "client.key")}}],
        "contexts": [{"name": "audit", "context": {"cluster": "kubepim-audit-sink",
                                                   "user": "kube-apiserver"}}],
        "current-context": "audit",
    }
    config = directory / "webhook.kubeconfig"
    _write(config, json.dumps(kubeconfig, indent=2).encode())
    policy = directory / "policy.yaml"
    _write(policy, _POLICY.read_bytes())
    flags = [f"--audit-policy-file={policy}", f"--audit-webhook-config-file={config}",
             "--audit-webhook-mode=batch", f"--audit-webhook-batch-max-wait={max_wait}",
             f"--audit-webhook-initial-backoff={initial_backoff}"]
    return sink, flags
