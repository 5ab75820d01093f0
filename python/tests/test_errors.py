"""Bad input gives a RuntimeError naming the operator, the argument and what was seen: never a
crash, never a silent wrong result."""
import pytest
import torch

import tasn_torch as tt
from conftest import CUDA_OK


def raises(fragment, fn, *args, **kw):
    with pytest.raises(RuntimeError) as e:
        fn(*args, **kw)
    assert fragment in str(e.value), str(e.value)
    return str(e.value)


def test_rank_dtype_and_options():
    raises("tasn::trilinear_attention: expected x to be a 4-D tensor (N, C, H, W), got a 3-D tensor of shape [2, 3, 4]",
           tt.trilinear_attention, torch.randn(2, 3, 4))
    raises("expected x to have dtype float32 or float64 on the CPU, got Half", tt.trilinear_attention,
           torch.randn(1, 2, 3, 3).half())
    raises("expected x to have dtype float32 or float64 on the CPU, got Long", tt.trilinear_attention,
           torch.ones(1, 2, 3, 3, dtype=torch.long))
    raises("beta must be finite and > 0, got -1", tt.trilinear_attention, torch.randn(1, 2, 3, 3), -1.0)
    raises("tasn::distillation_loss: reduction must be 'none', 'sum' or 'mean', got 'avg'", tt.distillation_loss,
           torch.randn(2, 3), torch.randn(2, 3), reduction="avg")
    raises("temperature must be finite and > 0", tt.distillation_loss, torch.randn(2, 3), torch.randn(2, 3), 0.0)
    raises("label_smoothing must be in [0, 1], got 1.5", tt.softmax_cross_entropy, torch.randn(2, 3),
           torch.tensor([0, 1]), label_smoothing=1.5)
    raises("mode must be 'exact' or 'official', got 'fast'", tt.sampling_grid, torch.ones(1, 3), torch.ones(1, 3),
           (2, 2), mode="fast")
    raises("Ho must be >= 1, got 0", tt.sampling_grid, torch.ones(1, 3), torch.ones(1, 3), (0, 2))


def test_shape_mismatches_name_the_argument_and_sizes():
    raises("tasn::distillation_loss: teacher has shape (2, 4) but (N, K) = (2, 3) is required", tt.distillation_loss,
           torch.randn(2, 3), torch.randn(2, 4))
    raises("expected teacher to have dtype Double, got Float", tt.distillation_loss, torch.randn(2, 3).double(),
           torch.randn(2, 3))
    msg = raises("grid", tt.sample_grid, torch.randn(2, 3, 4, 4), torch.randn(3, 2, 2, 2))
    assert "(3, 2, 2, 2)" in msg or "[3, 2, 2, 2]" in msg, msg
    raises("expected grid to be a 4-D tensor (N, Ho, Wo, 2)", tt.sample_grid, torch.randn(2, 3, 4, 4),
           torch.randn(2, 2, 2))
    raises("labels", tt.softmax_cross_entropy, torch.randn(3, 4), torch.tensor([0, 1]))
    raises("expected labels to have dtype int64 (torch.long), got Int", tt.softmax_cross_entropy, torch.randn(2, 4),
           torch.tensor([0, 1], dtype=torch.int32))
    raises("gy", tt.sample_separable, torch.randn(2, 3, 4, 4), torch.randn(1, 3), torch.randn(2, 3))
    raises("channels[1] = 9 is out of range [0, 4)", tt.detail_map, torch.randn(2, 4, 3, 3), torch.tensor([0, 9]))
    raises("first + count overflows int64", tt.synthetic_images, 2, first=2 ** 63 - 1)


def test_labels_out_of_range():
    raises("labels[2] = 11 is out of range [0, 10)", tt.softmax_cross_entropy, torch.randn(4, 10),
           torch.tensor([1, 2, 11, 3]))
    raises("labels[0] = -1", tt.topk_correct, torch.randn(2, 10), torch.tensor([-1, 3]))


def test_gradients_that_do_not_exist_are_refused():
    img = torch.randn(1, 2, 5, 5, requires_grad=True)
    att = torch.rand(1, 3, 3, requires_grad=True)
    raises("no gradient flows to attention", tt.attention_sample, img, att, (4, 4))
    with torch.no_grad():                                   # without autograd it is fine
        tt.attention_sample(img, att, (4, 4))
    gy = torch.linspace(-1, 1, 4).expand(1, 4).contiguous().requires_grad_()
    raises("no gradient flows to gy and gx", tt.sample_separable, img, gy, gy.detach())
    x = torch.randn(1, 3, 2, 2, dtype=torch.double, requires_grad=True)
    (g,) = torch.autograd.grad(tt.trilinear_attention(x).sum(), x, create_graph=False)
    assert g.shape == x.shape
    with pytest.raises(RuntimeError, match="double backward is not supported"):
        (g,) = torch.autograd.grad(tt.trilinear_attention(x).pow(2).sum(), x, create_graph=True)
        g.sum().backward()


@pytest.mark.skipif(not CUDA_OK, reason="needs a CUDA device and the CUDA kernels")
def test_device_mismatch():
    raises("expected all tensors on one device", tt.sample_grid, torch.randn(1, 2, 3, 3, device="cuda"),
           torch.zeros(1, 2, 2, 2))
    raises("expected x to have dtype float32, float16 or bfloat16 on CUDA (the kernels compute in float), got Double",
           tt.trilinear_attention, torch.randn(1, 2, 3, 3, device="cuda", dtype=torch.double))
