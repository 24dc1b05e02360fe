import os

import torch

# Without a GPU, the Triton kernels run on CPU tensors through Triton's interpreter; it must
# be switched on before triton is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from fastadv import backends  # noqa: E402


def _backend_cases():
    cases = [("cpu", b) for b in backends.available("cpu")]
    if torch.cuda.is_available():
        cases += [("cuda", b) for b in backends.available("cuda")]
    return cases


BACKEND_CASES = _backend_cases()


@pytest.fixture(params=BACKEND_CASES, ids=[f"{d}-{b}" for d, b in BACKEND_CASES])
def device_backend(request, monkeypatch):
    """(device, backend) for every backend that can run here, forced via FASTADV_BACKEND."""
    device, backend = request.param
    monkeypatch.setenv("FASTADV_BACKEND", backend)
    return torch.device(device), backend

