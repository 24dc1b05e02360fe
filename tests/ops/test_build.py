"""setup.py's CUDA toolkit probe: the CUDA kernels are built only from a complete, consistent
toolkit, and anything missing is named (fastadv/_cuda_toolkit.py; the full installs with a
fake and a mismatched toolkit run in CI, .ci/run)."""

import os
import stat

import pytest

from fastadv import _cuda_toolkit as tk


def fake_nvcc(folder, release="13.0", top=None):
    """An nvcc script answering --version (and --dryrun with TOP=..., as the real one)."""
    bin_dir = folder / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    nvcc = bin_dir / "nvcc"
    top_line = f'echo "#$ TOP={top}" >&2' if top else ""
    nvcc.write_text(
        "#!/bin/sh\n"
        f'case "$1" in --version) echo "Cuda compilation tools, release {release}, V{release}.1";;\n'
        f"  --dryrun) {top_line} ;; esac\n"
    )
    nvcc.chmod(nvcc.stat().st_mode | stat.S_IEXEC)
    return nvcc


def env_with(**values):
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_HOME", "CUDA_PATH")}
    env.update(values)
    return env


def touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def test_nvcc_without_runtime_library_is_named(tmp_path):
    # The reported failure: CUDA_HOME holds an nvcc but no libcudart to link against.
    fake_nvcc(tmp_path / "cuda")
    touch(tmp_path / "cuda" / "include" / "cuda_runtime.h")
    with pytest.raises(tk.ToolkitError, match="no libcudart.so"):
        tk.find_toolkit("13.0", env_with(CUDA_HOME=str(tmp_path / "cuda")), wheel_roots=[])


def test_runtime_from_torch_wheels_is_used_and_linkable(tmp_path):
    fake_nvcc(tmp_path / "cuda")
    wheel = tmp_path / "site" / "nvidia" / "cu13"
    touch(wheel / "include" / "cuda_runtime.h")
    cudart = touch(wheel / "lib" / "libcudart.so.13")
    found = tk.find_toolkit("13.0", env_with(CUDA_HOME=str(tmp_path / "cuda")),
                            wheel_roots=[str(wheel)])
    assert found.cudart_from_wheel == str(cudart)
    assert found.include_dirs == [str(wheel / "include")]
    shim = tk.link_shim(found, str(tmp_path / "build"))
    assert os.path.realpath(os.path.join(shim, "libcudart.so")) == str(cudart)


def test_wrapper_nvcc_is_seen_through_to_its_toolkit(tmp_path):
    # An nvcc on PATH outside its toolkit (the machine's /usr/local/bin/nvcc): torch guesses
    # its prefix as CUDA_HOME; the dry run names the real toolkit.
    real = tmp_path / "cuda-13.0"
    touch(real / "include" / "cuda_runtime.h")
    touch(real / "lib64" / "libcudart.so")
    wrapper = fake_nvcc(tmp_path / "wrapper", top=str(real / "bin" / ".."))
    found = tk.find_toolkit("13.0", env_with(PATH=str(wrapper.parent)), wheel_roots=[])
    assert found.root == str(real)
    assert found.cudart_dir == str(real / "lib64")
    assert found.include_dirs == [str(real / "include")]


def test_major_version_mismatch_is_named(tmp_path):
    fake_nvcc(tmp_path / "cuda", release="12.4")
    with pytest.raises(tk.ToolkitError, match="CUDA 12.4 but torch was built with CUDA 13.0"):
        tk.find_toolkit("13.0", env_with(CUDA_HOME=str(tmp_path / "cuda")), wheel_roots=[])


def test_cuda_home_without_nvcc_is_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(tk.ToolkitError, match=r"CUDA_HOME=.*empty has no bin/nvcc"):
        tk.find_toolkit("13.0", env_with(CUDA_HOME=str(tmp_path / "empty")), wheel_roots=[])


def test_missing_headers_are_named(tmp_path):
    fake_nvcc(tmp_path / "cuda")
    touch(tmp_path / "cuda" / "lib64" / "libcudart.so")
    with pytest.raises(tk.ToolkitError, match="no cuda_runtime.h"):
        tk.find_toolkit("13.0", env_with(CUDA_HOME=str(tmp_path / "cuda")), wheel_roots=[])


def test_cpu_torch_is_named():
    with pytest.raises(tk.ToolkitError, match="not a CUDA build"):
        tk.find_toolkit(None)


def test_no_nvcc_anywhere(tmp_path, monkeypatch):
    monkeypatch.setattr(tk.os, "access", lambda path, mode: False)
    with pytest.raises(tk.ToolkitError, match="no nvcc found"):
        tk.find_toolkit("13.0", env_with(PATH=str(tmp_path)), wheel_roots=[])


def test_install_records_what_was_built():
    # setup.py writes what it built and why; `python -m fastadv.info` reports it.
    from fastadv import backends, info

    built = info.build_info()
    if not built:
        pytest.skip("installed without setup.py's build info")
    assert built["cuda_kernels"] == backends.has_cuda_kernels()
    assert "CUDA kernels: " in info.report()
