"""benchmarks.wheels: the bundle carried to an air-gapped GPU node holds the closure of what the
session imports, never the node's own torch stack, and installs only what the node lacks."""

import json
import os
import subprocess
import sys
import zipfile

import pytest

from benchmarks import wheels

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = None


def make_wheel(folder, name: str, version: str, requires=()) -> str:
    """A minimal pure-Python wheel that pip installs: one module and its metadata."""
    dist = name.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    path = os.path.join(folder, f"{dist}-{version}-py3-none-any.whl")
    meta = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    meta += [f"Requires-Dist: {r}" for r in requires]
    files = {f"{dist}.py": "", f"{info}/METADATA": "\n".join(meta) + "\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                              "Tag: py3-none-any\n"}
    with zipfile.ZipFile(path, "w") as z:
        for file, text in files.items():
            z.writestr(file, text)
        z.writestr(f"{info}/RECORD", "".join(f"{f},,\n" for f in files) + f"{info}/RECORD,,\n")
    return path


class FakeIndex:
    """pip download, offline: the newest release inside each requirement's range."""

    def __init__(self, releases):
        self.releases = releases  # name -> {version: [requirements]}
        self.asked = []

    def __call__(self, requirements, dest):
        self.asked.append(sorted(requirements))
        for line in requirements:
            req = wheels.Requirement(line)
            versions = [v for v in self.releases[wheels.canonical(req.name)]
                        if req.specifier.contains(v)]
            if not versions:
                raise SystemExit(f"no release of {line}")
            best = max(versions, key=wheels.Version)
            make_wheel(dest, req.name, best, self.releases[wheels.canonical(req.name)][best])


INDEX = {
    "app": {"1.0": ["lib>=1", "torch>=2", "nvidia-cudnn-cu13; sys_platform == 'linux'",
                    "colorama; sys_platform == 'win32'",
                    "docs-tool; extra == 'docs'"]},
    "lib": {"1.0": [], "1.5": [], "2.0": []},
    "mid": {"1.0": ["late"]},
    "late": {"1.0": ["lib<2"]},
    "colorama": {"0.4": []},
    "docs-tool": {"1.0": []},
}


def test_the_closure_follows_requirements_and_leaves_the_node_its_own(tmp_path):
    index = FakeIndex(INDEX)
    manifest = wheels.bundle(str(tmp_path), roots={"app": "x", "mid": "y"}, download=index)
    got = {w["name"]: w["version"] for w in manifest["wheels"]}
    # lib: first 2.0 (app's lib>=1), then narrowed by late's lib<2 and fetched again.
    assert got == {"app": "1.0", "lib": "1.5", "mid": "1.0", "late": "1.0"}
    assert index.asked == [["app", "mid"], ["late", "lib>=1"], ["lib<2,>=1"]]
    assert sorted(os.listdir(tmp_path)) == sorted(
        [w["file"] for w in manifest["wheels"]] + [wheels.MANIFEST])  # the 2.0 file is gone
    lib = next(w for w in manifest["wheels"] if w["name"] == "lib")
    assert wheels.SpecifierSet(lib["requires"]) == wheels.SpecifierSet(">=1,<2")
    assert lib["wanted_by"] == ["app", "late"]
    # torch and the NVIDIA libraries stay the node's; windows-only and extras never apply.
    assert set(manifest["left_to_the_node"]) == {"torch", "nvidia-cudnn-cu13"}
    assert manifest["total_bytes"] == sum(os.path.getsize(tmp_path / w["file"])
                                          for w in manifest["wheels"])
    on_disk = json.loads((tmp_path / wheels.MANIFEST).read_text())
    assert on_disk["wheels"] == manifest["wheels"]


def test_torchattacks_pin_of_requests_is_not_followed(tmp_path):
    index = FakeIndex({"torchattacks": {"3.5.1": ["requests~=2.25.1", "scipy"]},
                       "scipy": {"1.0": []}, "requests": {"2.25.1": []}})
    manifest = wheels.bundle(str(tmp_path), roots={"torchattacks": ""}, download=index)
    assert [w["name"] for w in manifest["wheels"]] == ["scipy", "torchattacks"]


def test_excluded_packages_are_left_out(tmp_path):
    manifest = wheels.bundle(str(tmp_path), roots={"app": ""}, exclude=("Lib",),
                             download=FakeIndex(INDEX))
    assert [w["name"] for w in manifest["wheels"]] == ["app"]
    assert manifest["excluded"] == ["lib"] and "lib" in manifest["left_to_the_node"]


def test_install_keeps_what_the_node_has_and_satisfies(tmp_path):
    manifest = wheels.bundle(str(tmp_path), roots={"app": "", "mid": ""},
                             download=FakeIndex(INDEX))
    have = {"lib": "1.2", "late": "0.9"}  # lib 1.2 is inside >=1,<2; nobody constrains late
    todo, kept = wheels.plan_install(manifest, version_of=have.get)
    assert [w["name"] for w in todo] == ["app", "mid"]
    assert kept == ["late 0.9 (installed; bundle has 1.0)", "lib 1.2 (installed; bundle has 1.5)"]
    todo, _ = wheels.plan_install(manifest, version_of={"lib": "2.1"}.get)
    assert sorted(w["name"] for w in todo) == ["app", "late", "lib", "mid"]  # 2.1 is outside <2


def test_install_refuses_a_file_that_does_not_match_the_manifest(tmp_path, capsys):
    manifest = wheels.bundle(str(tmp_path), roots={"lib": ""}, download=FakeIndex(INDEX))
    path = tmp_path / manifest["wheels"][0]["file"]
    assert wheels.install(str(tmp_path), dry_run=True) == 0
    assert "install lib 2.0" in capsys.readouterr().out
    path.write_bytes(path.read_bytes() + b"tampered")
    with pytest.raises(SystemExit, match="SHA-256 differs"):
        wheels.install(str(tmp_path), dry_run=True)
    path.unlink()
    with pytest.raises(SystemExit, match="missing from the bundle"):
        wheels.install(str(tmp_path), dry_run=True)


def test_a_bundled_wheel_installs_offline(tmp_path):
    """The real pip, with no index, into a folder: what the node's session does."""
    manifest = wheels.bundle(str(tmp_path / "b"), roots={"lib": ""}, download=FakeIndex(INDEX))
    wheel = tmp_path / "b" / manifest["wheels"][0]["file"]
    target = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps",
                           "--target", str(target), str(wheel)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (target / "lib-2.0.dist-info" / "METADATA").exists()


@pytest.mark.skipif(tomllib is None, reason="tomllib needs Python 3.11")
def test_the_package_dependencies_are_all_bundled():
    """A dependency added to the package must reach the node too."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with open(os.path.join(root, "pyproject.toml"), "rb") as f:
        deps = tomllib.load(f)["project"]["dependencies"]
    bundled = {wheels.canonical(wheels.Requirement(r).name) for r in wheels.ROOTS}
    for dep in deps:
        name = wheels.canonical(wheels.Requirement(dep).name)
        assert name in bundled or wheels.NODE_OWNS.match(name), name
