"""Connect as kubectl would: the kubeconfig's current (or named) context, its credentials.

Read with the standard library, and PyYAML only for a file that is neither JSON nor the plain
block YAML kubectl writes (its import is a sixth of the start-up): the official client's models
(35 MiB, most of a second to import) would make every ``kubectl pim`` slower than ``kubectl``
itself. Supported like kubectl: several files in $KUBECONFIG (the first definition of a name
wins), client certificates and keys (files or data), bearer tokens (inline or tokenFile), basic
auth, exec credential plugins (client.authentication.k8s.io v1 and v1beta1: OIDC helpers such
as kubelogin, cloud CLIs) and the legacy oidc auth-provider's id-token; CA bundles,
insecure-skip-tls-verify and tls-server-name; the context's namespace.
"""

from __future__ import annotations

import binascii
import json
import os
import ssl

from . import blockyaml

# Not ``from typing import ...`` at run time: importing typing is a twentieth of the start-up.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class ConfigError(Exception):
    """The kubeconfig cannot be used; the message says why and what to do."""


class Connection:
    """Where the API server is and how to authenticate to it.

    A plain class, not a dataclass: ``dataclasses`` imports ``inspect``, a tenth of the
    plugin's start-up.
    """

    def __init__(self, server: str, context: ssl.SSLContext | None, namespace: str = "default",
                 server_name: str | None = None) -> None:
        self.server = server
        self.context = context
        self.headers: dict[str, str] = {}
        self.namespace = namespace
        self.server_name = server_name  # the kubeconfig's tls-server-name: SNI and verification


def _paths(explicit: str | None) -> list[str]:
    if explicit:
        return [os.path.expanduser(explicit)]
    env = os.environ.get("KUBECONFIG")
    if env:
        return [os.path.expanduser(p) for p in env.split(os.pathsep) if p]
    return [os.path.join(os.path.expanduser("~"), ".kube", "config")]


def _parse(text: str) -> Any:
    """A kubeconfig's content, as PyYAML would read it.

    JSON (a subset of YAML) by json, the plain block YAML kubectl writes by :mod:`.blockyaml`,
    anything else by PyYAML.
    """
    if text.lstrip().startswith("{") and _json_as_yaml(text):
        try:
            return json.loads(text, parse_float=_not_here, parse_constant=_not_here)
        except (ValueError, RecursionError):
            pass  # not JSON (YAML's flow style), or JSON PyYAML may read otherwise: it decides
    else:
        read = blockyaml.read(text)
        if read is not None:
            return read
    import yaml

    try:
        # The C safe loader when PyYAML has it (a kubeconfig can be large): still safe.
        return yaml.load(text, Loader=getattr(  # noqa: S506
            yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as error:
        raise ConfigError(str(error)) from error


def _json_as_yaml(text: str) -> bool:
    """Whether json reads ``text`` as PyYAML would.

    Only printable characters, raw (PyYAML refuses some others and reads NEL and U+2028 as line
    breaks), and no backslash-u-D escapes (surrogates: json pairs them, PyYAML's C reader
    refuses them).
    """
    return text.replace("\n", "").replace("\t", "").replace("\r", "").isprintable() \
        and "\\ud" not in text.lower()


def _not_here(text: str) -> Any:
    """Numbers with a fraction or exponent, NaN and Infinity: YAML 1.1 reads them its own way."""
    raise ValueError(f"{text}: left to PyYAML")


def _merged(paths: list[str]) -> tuple[dict[str, Any], str]:
    merged: dict[str, Any] = {"clusters": {}, "users": {}, "contexts": {},
                              "current-context": None}
    base: str | None = None
    for path in paths:
        if not os.path.isfile(path):
            continue
        try:
            with open(path, encoding="utf-8") as file:
                loaded = _parse(file.read()) or {}
        except (OSError, ValueError, ConfigError) as error:
            raise ConfigError(f"cannot read kubeconfig {path}: {error}") from error
        if not isinstance(loaded, dict):
            raise ConfigError(f"cannot read kubeconfig {path}: not a mapping of clusters, "
                              "users and contexts")
        base = base or path
        directory = os.path.dirname(os.path.abspath(path))
        for kind in ("clusters", "users", "contexts"):
            for entry in loaded.get(kind) or []:
                if isinstance(entry, dict) and entry.get("name") not in merged[kind]:
                    merged[kind][entry.get("name")] = (entry.get(kind[:-1]) or {}, directory)
        merged["current-context"] = merged["current-context"] or loaded.get("current-context")
    if base is None:
        raise ConfigError("no kubeconfig found (" + ", ".join(paths)
                          + "): pass --kubeconfig or set KUBECONFIG")
    return merged, base


def _file(value: str, relative_to: str) -> str:
    path = os.path.expanduser(value)
    return path if os.path.isabs(path) else os.path.join(relative_to, path)


def _read(path: str) -> bytes:
    with open(path, "rb") as file:
        return file.read()


def _b64(value: str) -> bytes:
    try:
        return binascii.a2b_base64(value)
    except (binascii.Error, ValueError) as error:
        raise ConfigError(f"the kubeconfig holds invalid base64 data: {error}") from error


def load(kubeconfig: str | None = None, context: str | None = None) -> Connection:
    """The connection of ``context`` (default: the current context)."""
    merged, _ = _merged(_paths(kubeconfig))
    name = context or merged["current-context"]
    if not name:
        raise ConfigError("the kubeconfig has no current context: pass --context")
    if name not in merged["contexts"]:
        raise ConfigError(f"context {name} is not in the kubeconfig (contexts: "
                          + ", ".join(sorted(map(str, merged["contexts"]))) + ")")
    ctx, _ = merged["contexts"][name]
    cluster, cluster_dir = merged["clusters"].get(ctx.get("cluster"), (None, None))
    if cluster is None or not cluster.get("server"):
        raise ConfigError(f"context {name} names cluster {ctx.get('cluster')}, which has no "
                          "server in the kubeconfig")
    user, user_dir = merged["users"].get(ctx.get("user"), ({}, cluster_dir))
    server = str(cluster["server"]).rstrip("/")
    tls = None
    if server.startswith("https://"):
        # Verifying, with hostname checks; the system's CAs only when the kubeconfig names
        # none (loading them costs more than the rest of the start-up).
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        # As Go (kubectl) verifies: a CA bundle may hold an intermediate as the trust anchor.
        tls.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        if cluster.get("insecure-skip-tls-verify"):
            tls.check_hostname = False
            tls.verify_mode = ssl.CERT_NONE
        elif cluster.get("certificate-authority-data"):
            tls.load_verify_locations(cadata=_b64(
                cluster["certificate-authority-data"]).decode())
        elif cluster.get("certificate-authority"):
            tls.load_verify_locations(_file(cluster["certificate-authority"], cluster_dir))
        else:
            tls.load_default_certs()
    connection = Connection(server=server, context=tls, namespace=ctx.get("namespace")
                            or "default", server_name=cluster.get("tls-server-name"))
    _authenticate(connection, user or {}, user_dir or cluster_dir, cluster)
    return connection


def _authenticate(connection: Connection, user: dict[str, Any], directory: str,
                  cluster: dict[str, Any]) -> None:
    cert = user.get("client-certificate-data"), user.get("client-key-data")
    if user.get("client-certificate") and user.get("client-key"):
        _client_cert(connection, _read(_file(user["client-certificate"], directory)),
                     _read(_file(user["client-key"], directory)))
    elif cert[0] and cert[1]:
        _client_cert(connection, _b64(cert[0]), _b64(cert[1]))
    token = user.get("token")
    if not token and user.get("tokenFile"):
        token = _read(_file(user["tokenFile"], directory)).decode().strip()
    if not token and user.get("exec"):
        token = _exec(connection, user["exec"], cluster)
    provider = user.get("auth-provider") or {}
    if not token and provider.get("name") == "oidc":
        token = (provider.get("config") or {}).get("id-token")
        if not token:
            raise ConfigError("the oidc auth-provider has no id-token yet: run kubectl once "
                              "(or use an exec plugin such as kubelogin)")
    if token:
        connection.headers["Authorization"] = f"Bearer {token}"
    elif user.get("username") and user.get("password"):
        pair = f"{user['username']}:{user['password']}".encode()
        connection.headers["Authorization"] = "Basic " + binascii.b2a_base64(
            pair, newline=False).decode()


def _client_cert(connection: Connection, cert: bytes, key: bytes) -> None:
    if connection.context is None:
        return
    # ssl loads a chain only from files. On Linux: anonymous in-memory files (memfd), never on
    # a disk and gone with the process; elsewhere a private directory, removed at once.
    if hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd"):
        fds: list[int] = []
        try:
            for name in ("kubectl-pim-cert", "kubectl-pim-key"):
                fds.append(os.memfd_create(name))
        except OSError:  # an old kernel, or a seccomp policy: the private directory below
            pass
        else:
            for fd, data in zip(fds, (cert, key), strict=True):
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            connection.context.load_cert_chain(*(f"/proc/self/fd/{fd}" for fd in fds))
            return
        finally:
            for fd in fds:
                os.close(fd)
    import tempfile  # only where memfd is missing: start-up time

    with tempfile.TemporaryDirectory(prefix="kubectl-pim-") as scratch:
        cert_file, key_file = os.path.join(scratch, "cert"), os.path.join(scratch, "key")
        for path, data in ((cert_file, cert), (key_file, key)):
            with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL
                             | getattr(os, "O_BINARY", 0), 0o600), "wb") as out:
                out.write(data)
        connection.context.load_cert_chain(cert_file, key_file)


def _exec(connection: Connection, spec: dict[str, Any], cluster: dict[str, Any]) -> str | None:
    """Run an exec credential plugin, as kubectl does; its token (or client certificate)."""
    api_version = spec.get("apiVersion") or "client.authentication.k8s.io/v1"
    info: dict[str, Any] = {"apiVersion": api_version, "kind": "ExecCredential",
                            "spec": {"interactive": False}}
    if spec.get("provideClusterInfo"):
        info["spec"]["cluster"] = {"server": cluster.get("server"),
                                   "certificate-authority-data":
                                   cluster.get("certificate-authority-data")}
    env = dict(os.environ, KUBERNETES_EXEC_INFO=json.dumps(info))
    for pair in spec.get("env") or []:
        env[str(pair.get("name"))] = str(pair.get("value"))
    command = [str(spec.get("command")), *map(str, spec.get("args") or [])]
    import subprocess  # imported only for exec plugins: start-up time

    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60,
                              check=False)
    except OSError as error:
        hint = f" ({spec['installHint'].strip()})" if spec.get("installHint") else ""
        raise ConfigError(f"cannot run the credential plugin {command[0]}: {error}{hint}"
                          ) from error
    if done.returncode != 0:
        raise ConfigError(f"the credential plugin {command[0]} failed: "
                          + (done.stderr.strip().splitlines() or ["no message"])[-1])
    try:
        status = json.loads(done.stdout).get("status") or {}
    except json.JSONDecodeError as error:
        raise ConfigError(f"the credential plugin {command[0]} printed no ExecCredential"
                          ) from error
    if status.get("clientCertificateData") and status.get("clientKeyData"):
        _client_cert(connection, status["clientCertificateData"].encode(),
                     status["clientKeyData"].encode())
    token = status.get("token")
    return str(token) if token else None
