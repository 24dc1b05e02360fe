"""The package reports its backends and still works without the extension or Triton."""

import os
import subprocess
import sys

import pytest
import torch

import fastadv
from fastadv import backends

SCRIPT = """
import sys
for blocked in {blocked!r}:
    sys.modules[blocked] = None  # makes `import blocked` raise ImportError
import torch, fastadv
from fastadv import backends
print("BACKENDS", ",".join(backends.available("cpu")))
print("SELECTED", backends.select("cpu", "linf_step"))
x_nat = torch.rand(2, 3, 4, 4)
x = fastadv.random_init_(torch.empty_like(x_nat), x_nat, eps=0.1)
fastadv.pgd_(x, torch.randn_like(x), x_nat, eps=0.1, alpha=0.05)
assert ((x - x_nat).abs() <= 0.1 + 1e-7).all()
print("OK")
"""


def _run(code, **env):
    full_env = {**os.environ, **env}
    full_env.pop("FASTADV_BACKEND", None)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=full_env, timeout=300)


@pytest.mark.parametrize("blocked, expected", [
    ((), "cpp" if backends.has_extension() else "torch"),
    (("fastadv._C",), "torch"),
    (("fastadv._C", "triton"), "torch"),
], ids=["everything", "no-extension", "no-extension-no-triton"])
def test_works_with_what_is_installed(blocked, expected):
    result = _run(SCRIPT.format(blocked=blocked), TRITON_INTERPRET="0")
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines() if " " in line)
    assert lines["BACKENDS"].split(",")[0] == expected
    assert lines["SELECTED"] == expected


def test_info_reports_backends():
    result = _run("import runpy; runpy.run_module('fastadv.info', run_name='__main__')")
    assert result.returncode == 0, result.stderr
    assert f"torch {torch.__version__}" in result.stdout
    assert "backends on cpu:" in result.stdout
    ext = "loaded" if backends.has_extension() else "not available"
    assert f"fastadv._C: {ext}" in result.stdout


def test_public_api():
    for name in ("pgd_", "pgd_step", "random_init_", "keep_best_"):
        assert callable(getattr(fastadv, name)) and getattr(fastadv, name).__doc__
    for op in ("pgd_", "pgd_step", "random_init_", "keep_best_"):
        assert hasattr(torch.ops.fastadv, op)
