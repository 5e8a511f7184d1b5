"""Command line of the dev cluster.

python -m kubepim.devcluster run     control plane + operator in the foreground; Ctrl-C stops both
python -m kubepim.devcluster up      control plane in the background
python -m kubepim.devcluster env     print the export line for the running cluster
python -m kubepim.devcluster down    stop it and remove its directory
python -m kubepim.devcluster build   build the binaries (done by run/up when missing)
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from . import binaries, cluster, install
from .errors import DevClusterError


def default_dir() -> Path:
    """The work directory of the default dev cluster, outside any checkout."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "kubepim" / "dev-cluster"


def _announce(started: cluster.Cluster, seconds: float) -> None:
    print(
        f"control plane ready in {seconds:.1f} s at {started.server}\n"
        f"  export KUBECONFIG={started.kubeconfig}\n"
        f"  logs: {started.workdir / 'logs'}",
        flush=True,
    )


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _run(args: argparse.Namespace) -> int:
    signal.signal(signal.SIGTERM, _interrupt)  # so `finally` stops the cluster on SIGTERM too
    found = binaries.ensure()
    begin = time.monotonic()
    started = cluster.start(args.dir, found, port=args.port)
    try:
        _announce(started, time.monotonic() - begin)
        install.install(started.kubeconfig)
        print("installed kubepim's CRDs, admission policies and user RBAC", flush=True)
        if args.no_operator:
            print("no operator (--no-operator); press Ctrl-C to stop", flush=True)
            try:
                while True:
                    signal.pause()
            except KeyboardInterrupt:
                return 0
        operator_config = install.operator_kubeconfig(
            started.kubeconfig, started.workdir / "operator.kubeconfig")
        # Free ports for the operator's endpoints (8000, 8080, 9443 may be taken, and two dev
        # clusters may run side by side); a port set in the environment is kept.
        ports = {name: str(cluster.free_port()) for name in (
            "KUBEPIM_METRICS_PORT", "KUBEPIM_WEBHOOK_PORT", "KUBEPIM_LIVENESS_PORT")}
        env = dict(ports, **started.operator_env(), **os.environ, KUBECONFIG=str(operator_config))
        print(f"operator endpoints: metrics http://127.0.0.1:{env['KUBEPIM_METRICS_PORT']}"
              f"/metrics, health http://127.0.0.1:{env['KUBEPIM_LIVENESS_PORT']}/healthz, "
              f"webhooks https://127.0.0.1:{env['KUBEPIM_WEBHOOK_PORT']}"
              + (f", audit sink https://127.0.0.1:{env['KUBEPIM_AUDIT_SINK_PORT']}"
                 if "KUBEPIM_AUDIT_SINK_PORT" in env else ""), flush=True)
        print("starting the operator (python -m kubepim) as ServiceAccount kubepim/kubepim; "
              "press Ctrl-C to stop", flush=True)
        operator = subprocess.Popen([sys.executable, "-m", "kubepim"], env=env)
        try:
            return operator.wait()
        except KeyboardInterrupt:
            operator.terminate()
            try:
                return operator.wait(timeout=15)
            except subprocess.TimeoutExpired:
                operator.kill()
                return operator.wait()
    finally:
        killed = cluster.stop(started)
        note = f" (killed after grace period: {', '.join(killed)})" if killed else ""
        print(f"control plane stopped, {started.workdir} removed{note}", flush=True)


def _up(args: argparse.Namespace) -> int:
    found = binaries.ensure()
    begin = time.monotonic()
    started = cluster.start(args.dir, found, port=args.port, detach=True)
    _announce(started, time.monotonic() - begin)
    install.install(started.kubeconfig)
    print("installed kubepim's CRDs, admission policies and user RBAC")
    print(f"stop it with: python -m kubepim.devcluster down --dir {started.workdir}")
    return 0


def _recorded(workdir: Path) -> cluster.Cluster:
    found = cluster.Cluster.load(workdir)
    if found is None:
        raise DevClusterError(f"no dev cluster recorded in {workdir}; start one with `up`")
    return found


def _env(args: argparse.Namespace) -> int:
    found = _recorded(args.dir)
    if not found.running():
        raise DevClusterError(
            f"the dev cluster in {args.dir} is not running; run `down`, then `up`"
        )
    print(f"export KUBECONFIG={found.kubeconfig}")
    for key, value in found.operator_env().items():  # the operator's audit sink
        print(f"export {key}={shlex.quote(value)}")
    return 0


def _down(args: argparse.Namespace) -> int:
    found = cluster.Cluster.load(args.dir)
    if found is None:
        if args.dir.exists():
            raise DevClusterError(
                f"{args.dir} records no dev cluster; remove it by hand if it is yours"
            )
        print(f"no dev cluster in {args.dir}; nothing to stop")
        return 0
    killed = cluster.stop(found)
    note = f" (killed after grace period: {', '.join(killed)})" if killed else ""
    print(f"stopped the dev cluster in {args.dir}{note}")
    return 0


def _build(_: argparse.Namespace) -> int:
    found = binaries.ensure()
    print(f"{found.etcd}\n{found.kube_apiserver}\n{found.kube_controller_manager}\n{found.helm}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run one subcommand; errors print what to do and exit 2."""
    parser = argparse.ArgumentParser(prog="python -m kubepim.devcluster", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, handler, helptext in (
        ("run", _run, "start the control plane and run the operator against it, in the foreground"),
        ("up", _up, "start the control plane in the background"),
        ("env", _env, "print the KUBECONFIG export line of the running cluster"),
        ("down", _down, "stop the background control plane and remove its directory"),
        ("build", _build, "build the control-plane binaries into the cache"),
    ):
        sub = commands.add_parser(name, help=helptext)
        sub.set_defaults(handler=handler)
        sub.add_argument("--dir", type=Path, default=default_dir(),
                         help="work directory of the cluster (default: %(default)s)")
        if name in ("run", "up"):
            sub.add_argument("--port", type=int, default=None,
                             help="kube-apiserver port on 127.0.0.1 (default: a free one)")
        if name == "run":
            sub.add_argument("--no-operator", action="store_true",
                             help="only the control plane")
    args = parser.parse_args(argv)
    args.dir = args.dir.expanduser().resolve()
    try:
        return int(args.handler(args))
    except DevClusterError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
