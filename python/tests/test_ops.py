"""torch.ops.tasn against independent oracles: PyTorch composites (softmax + bmm, F.grid_sample,
F.interpolate, F.cross_entropy, KL), a NumPy-free double reference of the sampling grid written
from SPEC 3, and torch.autograd.gradcheck (finite differences) in double."""
import math

import pytest
import torch
import torch.nn.functional as F

import tasn_torch as tt
from conftest import dtype_of, tol

gen = torch.Generator().manual_seed(1234)


def rand(*shape, device, dtype, scale=1.0):
    return (torch.randn(tuple(shape), generator=gen, dtype=torch.float64) * scale).to(device=device, dtype=dtype)


# ---- composites (the second, independent implementation of SPEC.md) ----------------------------

def trilinear_composite(x, beta):
    n, c, h, w = x.shape
    xv = x.reshape(n, c, h * w)
    s = torch.softmax(beta * xv, dim=2)
    a = torch.softmax(torch.bmm(s, xv.transpose(1, 2)), dim=2)
    return torch.bmm(a, xv).reshape(n, c, h, w)


def separable_grid(gy, gx):
    """(N, Ho, Wo, 2) in grid_sample's (x, y) order from a separable grid."""
    n, ho, wo = gy.shape[0], gy.shape[1], gx.shape[1]
    return torch.stack([gx[:, None, :].expand(n, ho, wo), gy[:, :, None].expand(n, ho, wo)], dim=3)


def grid_reference(my, mx, ho, wo, dense, iters):
    """SPEC 3b + 3c (exact mode) for one sample, in Python floats: magnification limit, then the
    inverse of the piecewise-linear knot CDF."""
    hs, ws = len(my), len(mx)
    ty = [max(v, 0.0) for v in my]
    tx = [max(v, 0.0) for v in mx]
    sy, sx = sum(ty), sum(tx)
    ty = [v / sy * ho for v in ty]
    tx = [v / sx * wo for v in tx]
    t0y, t0x = dense * ho / hs, dense * wo / ws
    for it in range(iters):
        t = min(max(ty), max(tx))
        cy, cx = (min(t, t0y), min(t, t0x)) if it == 0 else (t, t)
        ty = [min(v, cy) for v in ty]
        tx = [min(v, cx) for v in tx]
        ay, ax = (ho - sum(ty)) / hs, (wo - sum(tx)) / ws
        ty = [v + ay for v in ty]
        tx = [v + ax for v in tx]

    def invert(t, o):
        s = len(t)
        c = [0.0]
        for k in range(1, s):
            c.append(c[-1] + 0.5 * (t[k - 1] + t[k]))
        out = []
        for i in range(o):
            if o == 1:
                out.append(0.0)
                continue
            target = i / (o - 1) * c[-1]
            k = next(k for k in range(s) if c[k] >= target or k == s - 1)
            u = 0.0 if k == 0 else (k - 1) + (target - c[k - 1]) / (c[k] - c[k - 1])
            out.append(2.0 * u / (s - 1) - 1.0)
        return out

    return invert(ty, ho), invert(tx, wo)


def distillation_composite(s, t, temperature, kl, t_squared, reduction):
    p = torch.softmax(t / temperature, dim=1)
    logq = torch.log_softmax(s / temperature, dim=1)
    rows = -(p * logq).sum(1)
    if kl:
        rows = rows + (p * torch.log_softmax(t / temperature, dim=1)).sum(1)
    if t_squared:
        rows = rows * temperature ** 2
    return {"none": rows, "sum": rows.sum(), "mean": rows.mean()}[reduction]


# ---- trilinear attention -----------------------------------------------------------------------

@pytest.mark.parametrize("shape,beta", [((2, 3, 4, 5), 7.0), ((1, 8, 3, 3), 1.0), ((3, 5, 1, 7), 0.3)])
def test_trilinear_matches_composite(device, shape, beta):
    dt = dtype_of(device)
    x = rand(*shape, device=device, dtype=dt).requires_grad_()
    xr = x.detach().clone().requires_grad_()
    m, mr = tt.trilinear_attention(x, beta), trilinear_composite(xr, beta)
    torch.testing.assert_close(m, mr, **tol(device))
    dm = rand(*shape, device=device, dtype=dt)
    m.backward(dm)
    mr.backward(dm)
    torch.testing.assert_close(x.grad, xr.grad, **tol(device))


def test_trilinear_gradcheck():
    x = rand(2, 4, 3, 5, device="cpu", dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda v: tt.trilinear_attention(v, 2.0), (x,))


def test_trilinear_without_grad_saves_nothing_and_matches(device):
    dt = dtype_of(device)
    x = rand(2, 3, 4, 5, device=device, dtype=dt).requires_grad_()
    with torch.no_grad():
        m0 = tt.trilinear_attention(x, 3.0)
    m1 = tt.trilinear_attention(x, 3.0)
    assert m0.grad_fn is None and m1.grad_fn is not None
    torch.testing.assert_close(m0, m1, rtol=0, atol=0)


def test_trilinear_empty_batch(device):
    x = torch.empty(0, 3, 4, 5, device=device, dtype=dtype_of(device), requires_grad=True)
    m = tt.trilinear_attention(x)
    assert m.shape == x.shape
    m.sum().backward()
    assert x.grad.shape == x.shape


# ---- maps, marginals, grid ---------------------------------------------------------------------

def test_structure_map_counts_equal_channels_once(device):
    dt = dtype_of(device)
    m = rand(2, 5, 4, 6, device=device, dtype=dt).abs()
    m[:, 3] = m[:, 1]                      # a duplicate of channel 1 (the same spatial sum)
    m[:, 4] = 0.0
    m[:, 2] = 0.0                          # two dead channels: equal sums, counted once
    want = m[:, [0, 1, 2]].sum(1)
    torch.testing.assert_close(tt.structure_map(m), want, **tol(device))
    torch.testing.assert_close(tt.structure_map(m, distinct=False), m.sum(1), **tol(device))


def test_detail_map_channels_and_evaluation(device):
    dt = dtype_of(device)
    m = rand(3, 4, 5, 6, device=device, dtype=dt)
    ch = torch.tensor([2, 0, 3], device=device)
    out, chosen = tt.detail_map(m, ch)
    torch.testing.assert_close(out, m[torch.arange(3, device=device), ch], **tol(device))
    assert chosen.tolist() == [2, 0, 3]
    out, chosen = tt.detail_map(m, training=False)
    torch.testing.assert_close(out, m.sum(1), **tol(device))
    assert chosen.tolist() == [-1, -1, -1]                  # no single channel in evaluation
    # the seeded pick: a channel of the sample, the same for the same (seed, first_sample + n)
    out1, c1 = tt.detail_map(m, seed=7)
    out2, c2 = tt.detail_map(m[1:], seed=7, first_sample=1)
    assert c1[1:].tolist() == c2.tolist()
    torch.testing.assert_close(out1[1:], out2)
    torch.testing.assert_close(out1, m[torch.arange(3, device=device), c1], **tol(device))


@pytest.mark.parametrize("squared", [False, True])
def test_upsample_matches_interpolate(device, squared):
    dt = dtype_of(device)
    a = rand(2, 5, 7, device=device, dtype=dt)
    want = F.interpolate(a[:, None], size=(11, 9), mode="bilinear", align_corners=True)[:, 0]
    if squared:
        want = want * want
    torch.testing.assert_close(tt.upsample_bilinear(a, (11, 9), squared=squared), want, **tol(device))


def test_marginals_match_composite(device):
    dt = dtype_of(device)
    a = rand(3, 6, 5, device=device, dtype=dt)
    a[2] = -1.0                                          # no positive mass: uniform, reported
    my, mx, fallback = tt.attention_marginals(a, (13, 11))
    up = F.interpolate(a[:, None], size=(13, 11), mode="bilinear", align_corners=True)[:, 0].clamp(min=0)
    ry, rx = up.amax(2), up.amax(1)
    ry, rx = ry / ry.sum(1, keepdim=True), rx / rx.sum(1, keepdim=True)
    torch.testing.assert_close(my[:2], ry[:2], **tol(device))
    torch.testing.assert_close(mx[:2], rx[:2], **tol(device))
    torch.testing.assert_close(my[2], torch.full_like(my[2], 1 / 13))
    assert fallback.tolist() == [False, False, True] and fallback.dtype == torch.bool


@pytest.mark.parametrize("ho,wo,dense,iters", [(7, 9, 4.0, 5), (12, 5, 2.0, 0), (1, 6, 4.0, 3)])
def test_grid_matches_spec_reference(device, ho, wo, dense, iters):
    dt = dtype_of(device)
    my = rand(3, 8, device=device, dtype=dt).abs() + 0.01
    mx = rand(3, 10, device=device, dtype=dt).abs() + 0.01
    my[1, 2] = 5.0                                       # a strong peak: the limit acts
    gy, gx = tt.sampling_grid(my, mx, (ho, wo), dense=dense, iters=iters)
    for n in range(3):
        ry, rx = grid_reference(my[n].tolist(), mx[n].tolist(), ho, wo, dense, iters)
        torch.testing.assert_close(gy[n].cpu().double(), torch.tensor(ry, dtype=torch.float64), rtol=0, atol=1e-9 if dt == torch.float64 else 2e-6)
        torch.testing.assert_close(gx[n].cpu().double(), torch.tensor(rx, dtype=torch.float64), rtol=0, atol=1e-9 if dt == torch.float64 else 2e-6)


def test_grid_uniform_is_linspace_and_official_mode_runs(device):
    dt = dtype_of(device)
    my, mx = torch.ones(2, 6, device=device, dtype=dt), torch.ones(2, 4, device=device, dtype=dt)
    gy, gx = tt.sampling_grid(my, mx, (5, 3))
    torch.testing.assert_close(gy, torch.linspace(-1, 1, 5, device=device, dtype=dt).expand(2, 5), **tol(device))
    torch.testing.assert_close(gx, torch.linspace(-1, 1, 3, device=device, dtype=dt).expand(2, 3), **tol(device))
    gy, gx = tt.sampling_grid(my, mx, (5, 3), mode="official")
    assert gy.shape == (2, 5) and torch.isfinite(gy).all() and (gy[:, 1:] >= gy[:, :-1]).all()


# ---- sampling ----------------------------------------------------------------------------------

def test_sample_grid_matches_grid_sample(device):
    dt = dtype_of(device)
    img = rand(2, 3, 6, 7, device=device, dtype=dt).requires_grad_()
    grid = (torch.rand(2, 4, 5, 2, generator=gen, dtype=torch.float64) * 2.4 - 1.2).to(device, dt).requires_grad_()
    img2, grid2 = img.detach().clone().requires_grad_(), grid.detach().clone().requires_grad_()
    out = tt.sample_grid(img, grid)
    ref = F.grid_sample(img2, grid2, mode="bilinear", padding_mode="zeros", align_corners=True)
    torch.testing.assert_close(out, ref, **tol(device))
    d = rand(*out.shape, device=device, dtype=dt)
    out.backward(d)
    ref.backward(d)
    torch.testing.assert_close(img.grad, img2.grad, **tol(device))
    torch.testing.assert_close(grid.grad, grid2.grad, **tol(device))


def test_sample_separable_matches_grid_sample(device):
    dt = dtype_of(device)
    img = rand(2, 3, 8, 9, device=device, dtype=dt).requires_grad_()
    gy = torch.sort(torch.rand(2, 5, generator=gen, dtype=torch.float64) * 2 - 1, dim=1).values.to(device, dt)
    gx = torch.sort(torch.rand(2, 6, generator=gen, dtype=torch.float64) * 2 - 1, dim=1).values.to(device, dt)
    img2 = img.detach().clone().requires_grad_()
    out = tt.sample_separable(img, gy, gx)
    ref = F.grid_sample(img2, separable_grid(gy, gx), mode="bilinear", align_corners=True)
    torch.testing.assert_close(out, ref, **tol(device))
    d = rand(*out.shape, device=device, dtype=dt)
    out.backward(d)
    ref.backward(d)
    torch.testing.assert_close(img.grad, img2.grad, **tol(device))


@pytest.mark.parametrize("squared,upsample", [(False, None), (True, (10, 12))])
def test_attention_sample_is_marginals_grid_and_sampling(device, squared, upsample):
    dt = dtype_of(device)
    img = rand(2, 3, 10, 12, device=device, dtype=dt).requires_grad_()
    att = rand(2, 4, 5, device=device, dtype=dt).abs()
    out, gy, gx, fallback = tt.attention_sample(img, att, (7, 8), upsample=upsample, squared=squared)
    # the same pipeline from the pieces: upsample (squared), marginals, grid, sampling
    hs, ws = upsample or (10, 12)
    a = tt.upsample_bilinear(att, (hs, ws), squared=squared) if squared else att
    my, mx, fb = tt.attention_marginals(a, (hs, ws))
    ry, rx = tt.sampling_grid(my, mx, (7, 8))
    torch.testing.assert_close(gy, ry, **tol(device))
    torch.testing.assert_close(gx, rx, **tol(device))
    assert fallback.tolist() == fb.tolist()
    img2 = img.detach().clone().requires_grad_()
    ref = F.grid_sample(img2, separable_grid(gy, gx), mode="bilinear", align_corners=True)
    torch.testing.assert_close(out, ref, **tol(device))
    d = rand(*out.shape, device=device, dtype=dt)
    out.backward(d)
    ref.backward(d)
    torch.testing.assert_close(img.grad, img2.grad, **tol(device))


def test_sampler_gradchecks():
    dt = torch.float64
    img = rand(2, 2, 5, 6, device="cpu", dtype=dt).requires_grad_()
    grid = (torch.rand(2, 3, 4, 2, generator=gen, dtype=dt) * 2.2 - 1.1).requires_grad_()
    assert torch.autograd.gradcheck(tt.sample_grid, (img, grid))
    gy = torch.linspace(-0.9, 0.8, 4, dtype=dt).expand(2, 4).contiguous()
    gx = torch.linspace(-1.0, 1.0, 3, dtype=dt).expand(2, 3).contiguous()
    assert torch.autograd.gradcheck(lambda i: tt.sample_separable(i, gy, gx), (img,))
    att = rand(2, 3, 3, device="cpu", dtype=dt).abs()
    assert torch.autograd.gradcheck(lambda i: tt.attention_sample(i, att, (4, 5))[0], (img,))


# ---- losses ------------------------------------------------------------------------------------

@pytest.mark.parametrize("kl,t_squared,reduction,temperature",
                         [(False, False, "mean", 10.0), (True, False, "sum", 2.0), (False, True, "none", 3.0),
                          (True, True, "mean", 0.5)])
def test_distillation_matches_composite(device, kl, t_squared, reduction, temperature):
    dt = dtype_of(device)
    s = rand(5, 7, device=device, dtype=dt, scale=3).requires_grad_()
    t = rand(5, 7, device=device, dtype=dt, scale=3).requires_grad_()
    s2, t2 = s.detach().clone().requires_grad_(), t.detach().clone().requires_grad_()
    loss = tt.distillation_loss(s, t, temperature, kl=kl, t_squared=t_squared, reduction=reduction)
    ref = distillation_composite(s2, t2, temperature, kl, t_squared, reduction)
    assert loss.shape == ref.shape
    torch.testing.assert_close(loss, ref, **tol(device))
    g = rand(*ref.shape, device=device, dtype=dt)
    loss.backward(g)
    ref.backward(g)
    torch.testing.assert_close(s.grad, s2.grad, **tol(device))
    torch.testing.assert_close(t.grad, t2.grad, **tol(device))


def test_distillation_detached_teacher_and_gradcheck():
    s = rand(3, 4, device="cpu", dtype=torch.float64).requires_grad_()
    t = rand(3, 4, device="cpu", dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: tt.distillation_loss(a, b, 2.0, kl=True, reduction="none"), (s, t))
    tt.distillation_loss(s, t.detach()).backward()
    assert s.grad is not None and t.grad is None


@pytest.mark.parametrize("reduction,smoothing,scale", [("mean", 0.0, 1.0), ("sum", 0.1, 0.5), ("none", 0.3, 2.0)])
def test_cross_entropy_matches_torch(device, reduction, smoothing, scale):
    dt = dtype_of(device)
    z = rand(6, 5, device=device, dtype=dt, scale=2).requires_grad_()
    y = torch.tensor([0, 4, -100, 2, 2, 1], device=device)
    z2 = z.detach().clone().requires_grad_()
    loss = tt.softmax_cross_entropy(z, y, grad_scale=scale, label_smoothing=smoothing, reduction=reduction)
    ref = scale * F.cross_entropy(z2, y, ignore_index=-100, label_smoothing=smoothing, reduction=reduction)
    torch.testing.assert_close(loss, ref, **tol(device))
    g = rand(*ref.shape, device=device, dtype=dt)
    loss.backward(g)
    ref.backward(g)
    torch.testing.assert_close(z.grad, z2.grad, **tol(device))


def test_cross_entropy_gradcheck():
    z = rand(4, 6, device="cpu", dtype=torch.float64).requires_grad_()
    y = torch.tensor([5, 0, -100, 3])
    assert torch.autograd.gradcheck(lambda v: tt.softmax_cross_entropy(v, y, label_smoothing=0.2, grad_scale=0.5), (z,))


def test_topk_correct_matches_topk(device):
    dt = dtype_of(device)
    z = rand(40, 9, device=device, dtype=dt)
    y = torch.randint(0, 9, (40,), generator=gen).to(device)
    y[3] = -100
    got = tt.topk_correct(z, y, max_k=4)
    top = z.topk(4, dim=1).indices
    keep = y != -100
    want = [int(((top[:, :k + 1] == y[:, None]).any(1) & keep).sum()) for k in range(4)]
    assert got.tolist() == want and got.dtype == torch.int64


# ---- modules -----------------------------------------------------------------------------------

def test_modules_equal_functional(device):
    dt = dtype_of(device)
    x = rand(2, 3, 4, 4, device=device, dtype=dt)
    torch.testing.assert_close(tt.TrilinearAttention(beta=2.0)(x), tt.trilinear_attention(x, 2.0))
    img = rand(2, 3, 8, 8, device=device, dtype=dt).requires_grad_()
    att = rand(2, 4, 4, device=device, dtype=dt).abs().requires_grad_()   # detached by the module
    sampler = tt.AttentionSampler((6, 6), squared=True, upsample=(8, 8))
    out = sampler(img, att)
    torch.testing.assert_close(out, tt.attention_sample(img, att.detach(), (6, 6), upsample=(8, 8), squared=True)[0])
    out.sum().backward()
    assert img.grad is not None and att.grad is None
    s, t = rand(3, 5, device=device, dtype=dt), rand(3, 5, device=device, dtype=dt)
    torch.testing.assert_close(tt.DistillationLoss(4.0, kl=True)(s, t), tt.distillation_loss(s, t, 4.0, kl=True))
    assert "beta=2" in repr(tt.TrilinearAttention(beta=2.0))


def test_non_contiguous_inputs_and_expanded_gradients(device):
    dt = dtype_of(device)
    x = rand(2, 5, 4, 3, device=device, dtype=dt).transpose(2, 3).requires_grad_()   # not contiguous
    assert not x.is_contiguous()
    m = tt.trilinear_attention(x)
    torch.testing.assert_close(m, trilinear_composite(x.detach().contiguous(), 7.0), **tol(device))
    m.sum().backward()                                      # an expanded (zero-stride) upstream gradient
    xr = x.detach().clone().requires_grad_()
    trilinear_composite(xr, 7.0).sum().backward()
    torch.testing.assert_close(x.grad, xr.grad, **tol(device))


# ---- the generated data set --------------------------------------------------------------------

def test_synthetic_images_are_deterministic_and_indexed():
    img, lab, box = tt.synthetic_images(6, "train", seed=3)
    assert img.shape == (6, 3, 96, 96) and img.dtype == torch.uint8 and lab.dtype == torch.int64
    img2, lab2, _ = tt.synthetic_images(6, "train", seed=3)
    assert torch.equal(img, img2) and torch.equal(lab, lab2)
    tail, tail_lab, tail_box = tt.synthetic_images(2, "train", seed=3, first=4)   # samples 4 and 5
    assert torch.equal(tail, img[4:]) and torch.equal(tail_lab, lab[4:]) and torch.equal(tail_box, box[4:])
    other, _, _ = tt.synthetic_images(6, "test", seed=3)
    assert not torch.equal(other, img)
    assert ((lab >= 0) & (lab < 8)).all()
    assert ((box[:, 2] - box[:, 0]) == 16).all() and (box >= 0).all() and (box <= 96).all()
    many = tt.synthetic_images(400, "train", seed=1, size=64, classes=4)[1]
    assert set(many.tolist()) == {0, 1, 2, 3}
    with pytest.raises(RuntimeError, match="split must be 'train', 'test' or 'val'"):
        tt.synthetic_images(1, "dev")
    with pytest.raises(RuntimeError, match="classes must be in \\[1, 8\\]"):
        tt.synthetic_images(1, classes=9)
