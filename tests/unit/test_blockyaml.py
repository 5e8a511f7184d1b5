"""kubectl pim's reader of kubectl-written YAML agrees with PyYAML, or declines.

``blockyaml.read`` answers either exactly what PyYAML's SafeLoader answers or ``None`` (then
the plugin asks PyYAML): checked on kubeconfigs as kubectl and cloud CLIs write them, and on
thousands of generated documents and mutations of them, tricky scalars included.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
import yaml

from kubepim.cli import blockyaml

KIND = """apiVersion: v1
clusters:
- cluster:
    certificate-authority-data: LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCk1JSUM=
    server: https://127.0.0.1:39847
  name: kind-kind
contexts:
- context:
    cluster: kind-kind
    namespace: team-a
    user: kind-kind
  name: kind-kind
current-context: kind-kind
kind: Config
preferences: {}
users:
- name: kind-kind
  user:
    client-certificate-data: LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCk1JSURJVENDQWdtZ0F3SUJ=
    client-key-data: LS0tLS1CRUdJTiBSU0EgUFJJVkFURSBLRVktLS0tLQpNSUlFb3dJQkFBS0NBUUVB
"""

EKS = """apiVersion: v1
clusters:
- cluster:
    certificate-authority-data: LS0tLS1CRUdJTg==
    server: https://ABCDEF0123456789.gr7.eu-west-1.eks.amazonaws.com
  name: arn:aws:eks:eu-west-1:123456789012:cluster/prod
contexts:
- context:
    cluster: arn:aws:eks:eu-west-1:123456789012:cluster/prod
    user: arn:aws:eks:eu-west-1:123456789012:cluster/prod
  name: arn:aws:eks:eu-west-1:123456789012:cluster/prod
current-context: arn:aws:eks:eu-west-1:123456789012:cluster/prod
kind: Config
preferences: {}
users:
- name: arn:aws:eks:eu-west-1:123456789012:cluster/prod
  user:
    exec:
      apiVersion: client.authentication.k8s.io/v1beta1
      args:
      - --region
      - eu-west-1
      - eks
      - get-token
      - --cluster-name
      - prod
      command: aws
      env:
      - name: AWS_PROFILE
        value: platform-admin
      interactiveMode: IfAvailable
      provideClusterInfo: false
"""

GKE_INDENTED = """apiVersion: v1
clusters:
  - cluster:
      server: https://[2001:db8::1]:443
      insecure-skip-tls-verify: true
      tls-server-name: kubernetes.default
    name: gke_proj_europe-west1_c1
contexts:
  - context: {cluster: gke_proj_europe-west1_c1, user: gke}
    name: gke_proj_europe-west1_c1
current-context: gke_proj_europe-west1_c1
users:
  - name: gke
    user:
      exec:
        apiVersion: client.authentication.k8s.io/v1beta1
        command: gke-gcloud-auth-plugin
        installHint: 'Install gke-gcloud-auth-plugin for use with kubectl by following
          https://cloud.google.com/kubernetes-engine/docs/how-to/cluster-access-for-kubectl'
        provideClusterInfo: true
"""

COMMENTED = """# written by hand
apiVersion: v1  # the only version
clusters: []
"""


@pytest.mark.parametrize("text", [KIND, EKS])
def test_kubectl_written_kubeconfigs_are_read_without_pyyaml(text: str) -> None:
    read = blockyaml.read(text)
    assert read is not None and read == yaml.safe_load(text)


@pytest.mark.parametrize("text", [GKE_INDENTED, COMMENTED, "", "---\na: b\n", "a: &x 1\nb: *x\n",
                                  "a: |\n  text\n", 'a: "quoted\\tescape"\n', "a: 1e3\n",
                                  "a: 0755\n", "a: 2026-11-26\n", "a: yes\n" * 2, "a:\tb\n",
                                  "a: b\r\nc: d\r\n", "a: caf\u00e9\n", "- a\n  b\n"])
def test_everything_else_is_declined_or_read_as_pyyaml_reads_it(text: str) -> None:
    read = blockyaml.read(text)
    try:
        expected = yaml.safe_load(text)
    except yaml.YAMLError:
        assert read is None
        return
    assert read is None or read == expected


_ATOMS = ["name", "kind-kind", "https://127.0.0.1:6443", "https://[::1]:6443/prefix",
          "arn:aws:eks:x:1:cluster/y", "yes", "No", "on", "OFF", "true", "False", "null", "~",
          "", "0", "007", "12", "-1", "+3", "1e3", "-.inf", ".nan", "0x1F", "1:30", "2026-11-26",
          "a: b", "a:b", "a #b", "#c", "'q'", "it's", '"dq"', "- x", "-x", "--flag=1", "?", "<<",
          "=", "*ref", "&anchor", "!tag", "%", "@at", "`tick", "{}", "[]", "{a}", "[a]", "a,b",
          " lead", "trail ", "two  spaces", "tab\there", "line\nbreak", "back\\slash", "é",
          "C:\\Users\\kube", "LS0tLS1CRUdJTg==", "a" * 200]


def _value(rng: random.Random, depth: int) -> Any:
    roll = rng.random()
    if depth > 3 or roll < 0.45:
        return rng.choice([*_ATOMS, True, False, None, 1, 0, -5, 3.5])
    if roll < 0.75:
        return {rng.choice(_ATOMS[:40]): _value(rng, depth + 1) for _ in range(rng.randint(0, 4))}
    return [_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]


def _naive(value: Any, indent: int, rng: random.Random) -> list[str]:
    """Block YAML with every scalar written as is (no quoting): PyYAML decides what it means."""
    pad = " " * indent
    if isinstance(value, dict) and value:
        lines = []
        for key, item in value.items():
            if isinstance(item, (dict, list)) and item:
                nested = indent + rng.choice([0, 2]) if isinstance(item, list) else indent + 2
                lines += [f"{pad}{key}:", *_naive(item, nested, rng)]
            else:
                lines.append(f"{pad}{key}: {_plain(item)}")
        return lines
    if isinstance(value, list) and value:
        lines = []
        for item in value:
            inner = _naive(item, indent + 2, rng)
            lines.append(f"{pad}- {inner[0].lstrip(' ')}")
            lines += inner[1:]
        return lines
    return [pad + _plain(value)]


def _plain(value: Any) -> str:
    if isinstance(value, dict | list):
        return "{}" if isinstance(value, dict) else "[]"
    return {True: "true", False: "false", None: ""}.get(value, str(value)) \
        if isinstance(value, bool | None) else str(value)


def _mutate(rng: random.Random, text: str) -> str:
    lines = text.split("\n")
    for _ in range(rng.randint(1, 3)):
        at = rng.randrange(len(lines))
        line = lines[at]
        cut = rng.randint(0, len(line))
        edit = rng.choice(["  ", " ", "- ", ": ", ":", "'", "#", "", "x", "{", "-"])
        lines[at] = line[:cut] + edit + line[cut + rng.randint(0, 2):]
    return "\n".join(lines)


def test_generated_documents_and_their_mutations_agree_with_pyyaml() -> None:
    rng = random.Random(20261126)
    read_here = 0
    for case in range(3000):
        document = {"apiVersion": "v1", "clusters": _value(rng, 0), "users": _value(rng, 0)}
        text = yaml.safe_dump(document, default_flow_style=False,
                              indent=rng.choice([2, 4]), width=rng.choice([80, 10_000]))
        if case % 2:
            text = _mutate(rng, text)
        read = blockyaml.read(text)
        try:
            expected = yaml.safe_load(text)
        except yaml.YAMLError:
            assert read is None, text
            continue
        assert read is None or read == expected, text
        read_here += read is not None
    assert read_here > 600  # the fast path is taken, not declined for everything


def test_documents_with_every_scalar_plain_agree_with_pyyaml() -> None:
    """Written as a person might: ``yes``, ``007``, ``1:30`` or ``a #b`` unquoted."""
    rng = random.Random(112026)
    read_here = 0
    for _ in range(3000):
        document = {"apiVersion": "v1", "clusters": _value(rng, 0), "users": _value(rng, 0)}
        text = "\n".join(_naive(document, 0, rng)) + "\n"
        read = blockyaml.read(text)
        try:
            expected = yaml.safe_load(text)
        except yaml.YAMLError:
            assert read is None, text
            continue
        assert read is None or read == expected, text
        read_here += read is not None
    assert read_here > 300
