"""tasn_torch: the TASN operators of the tasn library as PyTorch operators (torch.ops.tasn).

Importing this package loads the compiled operator library (``_tasn_ops*.so`` next to this file,
or the file named by the ``TASN_TORCH_LIBRARY`` environment variable), which registers
``torch.ops.tasn.*`` for the CPU (and, when built against a CUDA PyTorch, the CUDA) dispatch keys,
with autograd; on PyTorch >= 2.4 this also registers the fake kernels torch.compile traces with. See docs/pytorch.md for the operator table.
"""
import glob
import os

import torch

__all__ = [
    "ops", "library_path", "has_fake_kernels", "trilinear_attention", "structure_map", "detail_map", "upsample_bilinear",
    "attention_marginals", "sampling_grid", "sample_separable", "sample_grid", "attention_sample",
    "distillation_loss", "softmax_cross_entropy", "topk_correct", "synthetic_images",
    "TrilinearAttention", "AttentionSampler", "DistillationLoss",
]


def _find_library():
    env = os.environ.get("TASN_TORCH_LIBRARY")
    if env:
        return env
    here = os.path.dirname(os.path.abspath(__file__))
    found = sorted(glob.glob(os.path.join(here, "_tasn_ops*.so")))
    if not found:
        raise ImportError(
            "tasn_torch: the operator library _tasn_ops*.so is not in %s; build it with CMake "
            "(it lands in <build>/python/tasn_torch) or pip install ./python (docs/pytorch.md)" % here)
    return found[0]


library_path = _find_library()
torch.ops.load_library(library_path)
ops = torch.ops.tasn

from . import _fake  # noqa: E402

has_fake_kernels = _fake.register()  # PyTorch >= 2.4: torch.compile traces through the operators

from .functional import (  # noqa: E402  (the operators must be registered first)
    attention_marginals, attention_sample, detail_map, distillation_loss, sample_grid, sample_separable,
    sampling_grid, softmax_cross_entropy, structure_map, synthetic_images, topk_correct, trilinear_attention,
    upsample_bilinear)
from .nn import AttentionSampler, DistillationLoss, TrilinearAttention  # noqa: E402
