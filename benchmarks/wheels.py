"""The wheels a lent GPU node lacks, carried to it: it has no network, so whatever the GPU
session imports beyond what the node ships must arrive as wheel files.

    python -m benchmarks.wheels bundle DIR      # here, with the registry: every wheel + manifest
    python -m benchmarks.wheels install DIR     # there, offline: only what is missing or too old

``bundle`` downloads, for the node's platform (CPython 3.12, manylinux x86_64), the packages of
:data:`ROOTS` and everything they require, read from each wheel's own metadata. It never takes
:data:`NODE_OWNS` (torch, Triton, torchvision, setuptools, the NVIDIA libraries): the node's
builds of those must stay. ``manifest.json`` lists each wheel with its version, size, SHA-256,
the combined version range its requirers ask for and who asks.

``install`` keeps every package already installed in a version inside that range and installs
the rest from their files (checked against the manifest's SHA-256), with ``--no-index
--no-deps``: pip never reaches for a network and never replaces what the node has and
satisfies. ``benchmarks.gpu_session --wheels DIR`` runs it before anything else.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from email.parser import HeaderParser

try:  # pip's own copy where packaging is not installed (a venv holding only torch)
    from packaging.markers import default_environment
    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version
except ImportError:  # pragma: no cover - depends on the environment
    from pip._vendor.packaging.markers import default_environment
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.specifiers import SpecifierSet
    from pip._vendor.packaging.version import Version

MANIFEST = "manifest.json"

# What the session imports beyond the node's own packages, and why.
ROOTS = {
    "numpy": "fastadv (package dependency)",
    "tqdm": "fastadv (package dependency): import fastadv fails without it",
    "scikit-learn": "fastadv (package dependency; the digits data set)",
    "pytest>=8": "the tests and memcheck pieces",
    "pytest-benchmark>=4": "the project's pytest addopts (--benchmark-disable)",
    "expecttest": "torch.library.opcheck in the registration tests",
    "ninja": "the build: without it torch compiles one file at a time",
    "torchattacks>=3.5": "the torchattacks.PGD baseline rows of the attack suite",
    "scipy": "torchattacks imports it",
}

# Packages the node ships in builds matched to its GPU stack: never bundled, never replaced.
NODE_OWNS = re.compile(r"^(torch|torchvision|torchaudio|triton|setuptools|pip|wheel|"
                       r"nvidia-.*|cuda-.*|cusparselt.*)$")

# Requirements that a package declares but the session never exercises, and which would
# otherwise replace a newer copy the node has.
IGNORED = {
    ("torchattacks", "requests"): "torchattacks pins requests~=2.25.1 for the robustbench "
                                  "loader it vendors; the session never imports it",
}

# The node: CPython 3.12 on manylinux x86_64 (torch 2.11's wheels need glibc 2.28).
PYTHON = "3.12"
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64",
             "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64"]
MARKER_ENV = {**default_environment(), "implementation_name": "cpython",
              "platform_python_implementation": "CPython", "python_version": PYTHON,
              "python_full_version": f"{PYTHON}.0", "sys_platform": "linux",
              "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix"}


def canonical(name: str) -> str:
    """PEP 503 name: 'Scikit_Learn' -> 'scikit-learn'."""
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_metadata(path: str) -> tuple[str, str, list[str]]:
    """(canonical name, version, Requires-Dist lines) read from a wheel's METADATA."""
    with zipfile.ZipFile(path) as z:
        name = next(n for n in z.namelist()
                    if n.endswith(".dist-info/METADATA") and n.count("/") == 1)
        meta = HeaderParser().parsestr(z.read(name).decode("utf-8", "replace"))
    return canonical(meta["Name"]), meta["Version"], meta.get_all("Requires-Dist") or []


def needed(requirement: str) -> Requirement | None:
    """The requirement when it applies on the node without extras, else None."""
    req = Requirement(requirement)
    if req.marker is not None and not req.marker.evaluate({**MARKER_ENV, "extra": ""}):
        return None
    return req


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _pip_download(requirements: list[str], dest: str) -> None:
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
           "--only-binary=:all:", "--python-version", PYTHON, "--implementation", "cp",
           "--abi", f"cp{PYTHON.replace('.', '')}", "--abi", "abi3", "--abi", "none",
           *platforms, "--dest", dest, *requirements]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"pip download failed for {' '.join(requirements)}:\n"
                         f"{done.stderr.strip()[-2000:]}")


def bundle(dest: str, roots: dict[str, str] = ROOTS, exclude: tuple[str, ...] = (),
           download=_pip_download) -> dict:
    """Downloads the closure of ``roots`` for the node into ``dest`` and writes the manifest.
    ``exclude``: names to leave out although required (the node is known to have them)."""
    os.makedirs(dest, exist_ok=True)
    excluded = {canonical(n) for n in exclude}
    specs: dict[str, SpecifierSet] = {}
    wanted_by: dict[str, set[str]] = {}
    left_to_node: dict[str, list[str]] = {}

    def want(req: Requirement, by: str):
        name = canonical(req.name)
        if NODE_OWNS.match(name) or name in excluded:
            left_to_node.setdefault(name, []).append(f"{by}: {req}")
            return
        specs[name] = specs.get(name, SpecifierSet()) & req.specifier
        wanted_by.setdefault(name, set()).add(by)

    for root in roots:
        want(Requirement(root), "the GPU session")
    got: dict[str, dict] = {}
    for _ in range(20):  # rounds: each adds what the last round's wheels require
        stale = [n for n in specs if n not in got
                 or not specs[n].contains(got[n]["version"], prereleases=True)]
        if not stale:
            break
        with tempfile.TemporaryDirectory(dir=dest) as tmp:
            download([f"{n}{specs[n]}" for n in sorted(stale)], tmp)
            for file in sorted(os.listdir(tmp)):
                name, version, requires = wheel_metadata(os.path.join(tmp, file))
                if name in got:  # a newer requirer narrowed the range: replace the file
                    os.remove(os.path.join(dest, got[name]["file"]))
                os.replace(os.path.join(tmp, file), os.path.join(dest, file))
                got[name] = {"version": version, "file": file}
                for line in requires:
                    req = needed(line)
                    if req is not None and (name, canonical(req.name)) not in IGNORED:
                        want(req, name)
    else:
        raise SystemExit("the requirements did not settle in 20 rounds: " + ", ".join(stale))
    wheels = []
    for name in sorted(got):
        path = os.path.join(dest, got[name]["file"])
        wheels.append({"name": name, "version": got[name]["version"], "file": got[name]["file"],
                       "bytes": os.path.getsize(path), "sha256": sha256(path),
                       "requires": str(specs[name]), "wanted_by": sorted(wanted_by[name])})
    manifest = {
        "made": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "target": {"python": PYTHON, "implementation": "cp", "platforms": PLATFORMS},
        "roots": roots,
        "never_bundled": NODE_OWNS.pattern,
        "excluded": sorted(excluded),
        "left_to_the_node": {k: sorted(set(v)) for k, v in sorted(left_to_node.items())},
        "ignored_requirements": {f"{a} -> {b}": why for (a, b), why in IGNORED.items()},
        "wheels": wheels,
        "total_bytes": sum(w["bytes"] for w in wheels),
    }
    with open(os.path.join(dest, MANIFEST), "w") as f:
        json.dump(manifest, f, indent=1)
    return manifest


def installed_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def plan_install(manifest: dict, version_of=installed_version) -> tuple[list[dict], list[str]]:
    """(the manifest's wheels to install, a line for each package kept as installed)."""
    install, kept = [], []
    for wheel in manifest["wheels"]:
        have = version_of(wheel["name"])
        if have is not None and SpecifierSet(wheel["requires"]).contains(Version(have),
                                                                       prereleases=True):
            kept.append(f"{wheel['name']} {have} (installed; bundle has {wheel['version']})")
        else:
            install.append(wheel)
    return install, kept


def install(src: str, dry_run: bool = False) -> int:
    """Installs what ``src``'s manifest lists and this interpreter lacks; pip's exit status."""
    with open(os.path.join(src, MANIFEST)) as f:
        manifest = json.load(f)
    todo, kept = plan_install(manifest)
    for line in kept:
        print(f"keep    {line}")
    files = []
    for wheel in todo:
        path = os.path.join(src, wheel["file"])
        if not os.path.isfile(path):
            raise SystemExit(f"{path}: listed in {MANIFEST} but missing from the bundle")
        if sha256(path) != wheel["sha256"]:
            raise SystemExit(f"{path}: SHA-256 differs from {MANIFEST}; bundle again")
        have = installed_version(wheel["name"])
        print(f"install {wheel['name']} {wheel['version']}"
              + (f" (replaces {have}: outside {wheel['requires']})" if have else ""))
        files.append(path)
    for name, why in manifest["left_to_the_node"].items():
        if installed_version(name) is None:
            print(f"missing {name}: neither bundled nor installed ({'; '.join(why)})")
    if not files or dry_run:
        print("nothing to install" if not files else "dry run: nothing installed")
        return 0
    cmd = [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--no-cache-dir",
           "--disable-pip-version-check", *files]
    return subprocess.run(cmd).returncode


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.wheels",
                                     description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("bundle", help="download the wheels and write the manifest")
    b.add_argument("dest")
    b.add_argument("--exclude", action="append", default=[], metavar="NAME",
                   help="leave out a package the node is known to have (repeatable)")
    i = sub.add_parser("install", help="install, offline, what this interpreter lacks")
    i.add_argument("src")
    i.add_argument("--dry-run", action="store_true", help="say what would be installed")
    args = parser.parse_args(argv)
    if args.command == "bundle":
        manifest = bundle(args.dest, exclude=tuple(args.exclude))
        for w in manifest["wheels"]:
            print(f"{w['name']:<20} {w['version']:<12} {w['bytes'] / 2**20:7.1f} MiB  "
                  f"{', '.join(w['wanted_by'])}")
        print(f"{len(manifest['wheels'])} wheels, {manifest['total_bytes'] / 2**20:.1f} MiB "
              f"in {args.dest} ({MANIFEST}); left to the node: "
              f"{', '.join(manifest['left_to_the_node']) or 'nothing'}")
        return 0
    return install(args.src, args.dry_run)


if __name__ == "__main__":
    sys.exit(main())
