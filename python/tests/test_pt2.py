"""PyTorch 2.x integration: torch.library.opcheck (schema, fake/Meta kernels, autograd
registration, AOT dispatch) for every public operator, and torch.compile through the operators.
Skipped, with the reason, on a PyTorch without them (Debian's 1.13)."""
import pytest
import torch

import tasn_torch as tt
from conftest import dtype_of

opcheck = getattr(torch.library, "opcheck", None)
needs_opcheck = pytest.mark.skipif(opcheck is None, reason="torch %s has no torch.library.opcheck (PyTorch >= 2.4)"
                                   % torch.__version__)
needs_compile = pytest.mark.skipif(not hasattr(torch, "compile"), reason="torch %s has no torch.compile"
                                   % torch.__version__)


def cases(device):
    dt = dtype_of(device)
    g = torch.Generator().manual_seed(5)

    def r(*s, grad=False, positive=False):
        t = torch.randn(*s, generator=g, dtype=torch.float64)
        t = (t.abs() + 0.1 if positive else t).to(device, dt)
        return t.requires_grad_(grad)

    ops = torch.ops.tasn
    lin = lambda n, o: torch.linspace(-1, 1, o, dtype=dt, device=device).expand(n, o).contiguous()  # noqa: E731
    return {
        "trilinear_attention": (ops.trilinear_attention.default, (r(2, 3, 4, 5, grad=True), 7.0)),
        "structure_map": (ops.structure_map.default, (r(2, 3, 4, 5), True)),
        "detail_map": (ops.detail_map.default, (r(2, 3, 4, 5), None, True, 3, 0)),
        "upsample_bilinear": (ops.upsample_bilinear.default, (r(2, 4, 5), 7, 9, True)),
        "attention_marginals": (ops.attention_marginals.default, (r(2, 4, 5, positive=True), 8, 9)),
        "sampling_grid": (ops.sampling_grid.default, (r(2, 8, positive=True), r(2, 9, positive=True), 5, 6, 4.0, 5,
                                                      "exact")),
        "sample_separable": (ops.sample_separable.default, (r(2, 3, 6, 7, grad=True), lin(2, 4), lin(2, 5))),
        "sample_grid": (ops.sample_grid.default, (r(2, 3, 6, 7, grad=True), (r(2, 4, 5, 2) * 0.5).requires_grad_())),
        "attention_sample": (ops.attention_sample.default, (r(2, 3, 8, 9, grad=True), r(2, 4, 5, positive=True), 6,
                                                            7, 4.0, 5, "exact", 0, 0, True)),
        "distillation_loss": (ops.distillation_loss.default, (r(4, 6, grad=True), r(4, 6, grad=True), 3.0, True,
                                                              False, "mean")),
        "softmax_cross_entropy": (ops.softmax_cross_entropy.default, (r(4, 6, grad=True),
                                                                      torch.tensor([0, 5, -100, 2], device=device),
                                                                      -100, 0.5, 0.1, "sum")),
        "topk_correct": (ops.topk_correct.default, (r(5, 6), torch.tensor([0, 1, 2, 3, 4], device=device), 3, -100)),
    }


OPS = list(cases(torch.device("cpu")).keys())


@needs_opcheck
@pytest.mark.parametrize("name", OPS)
def test_opcheck(device, name):
    op, args = cases(device)[name]
    opcheck(op, args)


@needs_compile
def test_compile_through_the_operators(device):
    dt = dtype_of(device)
    g = torch.Generator().manual_seed(9)
    img = torch.randn(2, 3, 12, 12, generator=g, dtype=torch.float64).to(device, dt)
    feat = torch.randn(2, 4, 6, 6, generator=g, dtype=torch.float64).to(device, dt)
    y = torch.tensor([1, 3], device=device)
    w = torch.randn(3 * 8 * 8, 5, generator=g, dtype=torch.float64).to(device, dt)

    def step(img, feat, w):
        m = tt.trilinear_attention(feat)
        att = tt.structure_map(m.detach())
        x = tt.attention_sample(img, att, (8, 8), squared=True)[0]
        logits = x.flatten(1) @ w
        return tt.softmax_cross_entropy(logits, y) + tt.distillation_loss(logits, logits.detach() * 0.5) + m.mean()

    def run(fn):
        args = [t.clone().requires_grad_() for t in (img, feat, w)]
        loss = fn(*args)
        loss.backward()
        return [loss] + [a.grad for a in args]

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    for a, b in zip(run(step), run(compiled)):
        torch.testing.assert_close(a, b)
