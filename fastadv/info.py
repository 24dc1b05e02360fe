"""``python -m fastadv.info``: versions, and which backends this install can run where."""

import platform

import torch

from . import __version__, backends


def report() -> str:
    lines = [f"fastadv {__version__}", f"python {platform.python_version()}",
             f"torch {torch.__version__} (CUDA build: {torch.version.cuda or 'no'})"]
    try:
        import triton

        lines.append(f"triton {triton.__version__}")
    except ImportError:
        lines.append("triton: not installed")
    ext = backends.extension_error()
    lines.append("fastadv._C: " + ("loaded" if ext is None else f"not available ({ext})"))
    lines.append(f"fastadv._C CUDA kernels: {'yes' if backends.has_cuda_kernels() else 'no'}")
    triton_err = backends.triton_error()
    lines.append("Triton kernels: " + ("importable" if triton_err is None else f"no ({triton_err})"))
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices.append("cuda")
        lines.append(f"GPU: {torch.cuda.get_device_name()}")
    else:
        lines.append("GPU: none visible")
    forced = backends.forced()
    for device in devices:
        have = backends.available(device)
        lines.append(f"backends on {device}: {', '.join(have)} -> uses "
                     f"{backends.select(device) if forced in (None, *have) else 'ERROR'}")
    if forced:
        lines.append(f"FASTADV_BACKEND={forced}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(report())
