"""Shared fixtures of the torch.ops.tasn tests: the devices to run on, and their tolerances."""
import pytest
import torch

import tasn_torch  # noqa: F401  (registers torch.ops.tasn)


def _has_cuda_kernels():
    if not torch.cuda.is_available():
        return False, "no CUDA device (torch.cuda.is_available() is False)"
    try:
        has = torch._C._dispatch_has_kernel_for_dispatch_key("tasn::trilinear_attention", "CUDA")
    except Exception as e:  # pragma: no cover - very old torch
        return False, "cannot query the dispatcher: %s" % e
    if not has:
        return False, "tasn_torch was built without its CUDA kernels (a CPU-only torch or no nvcc)"
    return True, ""


CUDA_OK, CUDA_WHY = _has_cuda_kernels()


@pytest.fixture(params=["cpu", "cuda"])
def device(request):
    if request.param == "cuda" and not CUDA_OK:
        pytest.skip("CUDA: " + CUDA_WHY)
    return torch.device(request.param)


def dtype_of(device):
    """The dtype the composite comparisons run in: double on the CPU, float on CUDA (float math there)."""
    return torch.float64 if device.type == "cpu" else torch.float32


def tol(device):
    return dict(rtol=1e-9, atol=1e-11) if device.type == "cpu" else dict(rtol=2e-5, atol=2e-6)
