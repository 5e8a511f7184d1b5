"""Build kubectl pim's krew archives and render its krew manifest from ``.krew.yaml``.

    python tools/krew/package.py [--tag v0.1.0] [--out dist] [--base-url URL]

One archive per platform krew serves (linux and darwin, amd64 and arm64):
``kubectl-pim_<os>_<arch>.tar.gz`` holding a launcher (``kubectl-pim``, run by the python3 on
PATH), LICENSE, and ``lib/``: the plugin's own modules (kubepim.cli, .api, .domain), the pure
Python libraries they import, and one ``lib/cp3XX/`` per supported CPython with the compiled
ones (pydantic-core, google-re2, PyYAML) for that platform. Versions are the ones installed in
the interpreter that runs this script (the project's pins), downloaded as wheels from PyPI
(cached in ``~/.cache/kubepim/krew-wheels``). Archives are reproducible: sorted members, no
owners, fixed times.

The manifest is ``.krew.yaml`` rendered the way krew-release-bot renders it on a release
(``{{ .TagName }}``, ``{{addURIAndSha "URL" .TagName }}``), with each archive's sha256; with
``--base-url`` the archives' URIs point there instead (a local server, for validation).
How a release is published: docs/kubectl-pim.md, "Installing with krew".
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib.metadata
import io
import os
import re
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PLATFORMS = {
    # krew's os/arch → the wheel platform tags pip may take for it, oldest first: pip prefers
    # the earlier tag, so a package with several wheels gives the one that runs on the most
    # systems. google-re2 sets the floor: glibc 2.27 (2.26 on arm64), macOS 13.
    "linux/amd64": ["manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_27_x86_64",
                    "manylinux_2_28_x86_64"],
    "linux/arm64": ["manylinux2014_aarch64", "manylinux_2_17_aarch64",
                    "manylinux_2_26_aarch64", "manylinux_2_28_aarch64"],
    "darwin/amd64": ["macosx_10_9_x86_64", "macosx_10_12_x86_64", "macosx_10_13_x86_64",
                     "macosx_11_0_x86_64", "macosx_13_0_x86_64"],
    "darwin/arm64": ["macosx_11_0_arm64", "macosx_12_0_arm64", "macosx_13_0_arm64"],
}
# What the compiled modules of each platform's archive must be built for (checked by the test).
SUFFIXES = {"linux/amd64": "x86_64-linux-gnu.so", "linux/arm64": "aarch64-linux-gnu.so",
            "darwin/amd64": "darwin.so", "darwin/arm64": "darwin.so"}
PYTHONS = ("3.11", "3.12", "3.13", "3.14")
COMPILED = ("pydantic-core", "google-re2", "pyyaml")
PURE = ("pydantic", "annotated-types", "typing-extensions", "typing-inspection")
MODULES = ("__init__.py", "api", "domain", "cli")  # of operator/kubepim: what the plugin imports

LAUNCHER = '''#!/usr/bin/env python3
"""kubectl pim, as krew installs it: the plugin and its libraries travel in lib/."""
import os
import sys

here = os.path.dirname(os.path.realpath(__file__))
native = os.path.join(here, "lib", "cp%d%d" % sys.version_info[:2])
found = sorted(d for d in os.listdir(os.path.join(here, "lib")) if d.startswith("cp3"))
if not os.path.isdir(native) or "t" in getattr(sys, "abiflags", ""):
    sys.exit("error: kubectl pim from krew runs on CPython %s (not free-threaded); python3 on "
             "PATH is %s (%s). Put one of those first on PATH, or: pip install kubepim"
             % (", ".join("3." + d[3:] for d in found), sys.version.split()[0], sys.executable))
sys.path[:0] = [os.path.join(here, "lib"), native]
from kubepim.cli.main import main  # noqa: E402

try:
    sys.exit(main())
except ImportError as error:  # the compiled libraries are imported only by the commands using them
    sys.exit("error: kubectl pim's compiled libraries do not load on this system (%s): it "
             "needs glibc 2.27+ on Linux (not musl/Alpine) or macOS 13+; or: pip install kubepim"
             % error)
'''


def _version(distribution: str) -> str:
    return importlib.metadata.version(distribution)


def _wheels(cache: Path, packages: tuple[str, ...], platform: str | None,
            python: str | None) -> list[Path]:
    """The wheels of ``packages`` at the installed versions, downloaded once into ``cache``."""
    pins = [f"{name}=={_version(name)}" for name in packages]
    key = "-".join([platform or "any", python or "py3", *pins]).replace("/", "_")
    directory = cache / hashlib.sha256(key.encode()).hexdigest()[:16]
    found = sorted(directory.glob("*.whl")) if directory.is_dir() else []
    if len(found) == len(packages):
        return found
    directory.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
               "--no-deps", "--only-binary=:all:", "--dest", str(directory)]
    if platform:
        command += [arg for tag in PLATFORMS[platform] for arg in ("--platform", tag)]
    if python:
        command += ["--python-version", python, "--implementation", "cp",
                    "--abi", "cp" + python.replace(".", "")]
    subprocess.run(command + pins, check=True)
    found = sorted(directory.glob("*.whl"))
    if len(found) != len(packages):
        sys.exit(f"error: expected {len(packages)} wheels for {platform} {python}, got "
                 + ", ".join(p.name for p in found))
    return found


def _add(archive: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    archive.addfile(info, io.BytesIO(data))


def _members(platform: str, pythons: tuple[str, ...], cache: Path) -> dict[str, tuple[bytes, int]]:
    members: dict[str, tuple[bytes, int]] = {
        "kubectl-pim": (LAUNCHER.encode(), 0o755),
        "LICENSE": ((REPO / "LICENSE").read_bytes(), 0o644),
    }
    source = REPO / "operator" / "kubepim"
    for module in MODULES:
        paths = [source / module] if module.endswith(".py") else sorted(
            (source / module).rglob("*.py"))
        for path in paths:
            members[f"lib/kubepim/{path.relative_to(source)}"] = (path.read_bytes(), 0o644)

    def unpack(wheel: Path, into: str) -> None:
        with zipfile.ZipFile(wheel) as contents:
            for entry in contents.infolist():
                if not entry.is_dir():
                    executable = (entry.external_attr >> 16) & 0o111
                    members[f"{into}{entry.filename}"] = (contents.read(entry),
                                                          0o755 if executable else 0o644)

    for wheel in _wheels(cache, PURE, None, None):
        unpack(wheel, "lib/")
    for python in pythons:
        for wheel in _wheels(cache, COMPILED, platform, python):
            unpack(wheel, f"lib/cp{python.replace('.', '')}/")
    return members


def build(platform: str, pythons: tuple[str, ...], out: Path, cache: Path) -> Path:
    """One platform's archive (written through a temporary file)."""
    target = out / f"kubectl-pim_{platform.replace('/', '_')}.tar.gz"
    partial = target.with_suffix(".partial")
    members = _members(platform, pythons, cache)
    with partial.open("wb") as raw, \
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as compressed, \
            tarfile.open(fileobj=compressed, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name in sorted(members):
            data, mode = members[name]
            _add(archive, name, data, mode)
    partial.replace(target)
    return target


def render(template: str, tag: str, archives: dict[str, Path], base_url: str | None) -> str:
    """``.krew.yaml`` as krew-release-bot renders it, with the archives' sha256."""
    def uri_and_sha(match: re.Match[str]) -> str:
        indent, url = match.group(1), match.group(2).replace("{{ .TagName }}", tag)
        name = url.rsplit("/", 1)[-1]
        if name not in archives:
            raise SystemExit(f"error: the template names {name}, which was not built")
        digest = hashlib.sha256(archives[name].read_bytes()).hexdigest()
        if base_url:
            url = base_url.rstrip("/") + "/" + name
        return f"{indent}uri: {url}\n{indent}sha256: {digest}"

    rendered = re.sub(r'^([ \t]*)\{\{\s*addURIAndSha\s+"([^"]+)"\s+\.TagName\s*\}\}', uri_and_sha,
                      template, flags=re.MULTILINE)
    rendered = rendered.replace("{{ .TagName }}", tag)
    if "{{" in rendered:
        raise SystemExit("error: .krew.yaml holds a template action this script cannot render")
    return rendered


def main() -> None:
    """Build every archive, then the manifest beside them."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tag", default=f"v{project['version']}",
                        help="the release tag (default: v + pyproject's version)")
    parser.add_argument("--out", type=Path, default=REPO / "dist")
    parser.add_argument("--base-url", help="serve the archives from here instead of the "
                        "GitHub release (for validating the manifest against a local server)")
    parser.add_argument("--wheel-cache", type=Path, default=Path(os.environ.get(
        "XDG_CACHE_HOME", Path.home() / ".cache")) / "kubepim" / "krew-wheels")
    args = parser.parse_args()
    if not re.fullmatch(r"v\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?", args.tag):
        parser.error(f"--tag {args.tag}: krew needs a semantic version with a v, like v0.1.0")
    args.out.mkdir(parents=True, exist_ok=True)
    archives = {}
    for platform in PLATFORMS:
        built = build(platform, PYTHONS, args.out, args.wheel_cache)
        archives[built.name] = built
        print(f"{built}  {built.stat().st_size / 2**20:.1f} MiB")
    manifest = args.out / "pim.yaml"
    manifest.write_text(render((REPO / ".krew.yaml").read_text(), args.tag, archives,
                               args.base_url))
    print(manifest)


if __name__ == "__main__":
    main()
