"""Functional forms of torch.ops.tasn, with keyword arguments and the defaults of SPEC.md.

Every function is one call of a registered operator (so it works under autograd, on CPU and CUDA
tensors, and under torch.compile on PyTorch 2.x). Shapes: N batch, C channels, K classes.
"""
import torch

_ops = torch.ops.tasn


def trilinear_attention(x, beta=7.0):
    """M = trilinear attention of x (N, C, H, W) -> (N, C, H, W). Differentiable in x."""
    return _ops.trilinear_attention(x, beta)


def structure_map(m, distinct=True):
    """Structure-preserved map (N, h, w): the channel sum of m (N, C, h, w), each distinct channel once.

    No gradient (SPEC 2)."""
    return _ops.structure_map(m, distinct)


def detail_map(m, channels=None, training=True, seed=0, first_sample=0):
    """Detail-preserved map (N, h, w) and the channel used per sample (N, int64).

    Training: one channel per sample, ``channels`` or a pick seeded by (seed, first_sample + n) that
    is the same on CPU and CUDA; evaluation (training=False): the channel sum. No gradient."""
    return _ops.detail_map(m, channels, training, seed, first_sample)


def upsample_bilinear(input, size, squared=False):
    """Bilinear upsampling of maps (N, h, w) to size = (H, W), align_corners=True; optionally squared."""
    return _ops.upsample_bilinear(input, size[0], size[1], squared)


def attention_marginals(map, size):
    """Row and column marginals (my (N, Hs), mx (N, Ws)) of map upsampled to size = (Hs, Ws), and a bool
    (N) fallback flag where the uniform marginal was used (zero or non-finite mass)."""
    return _ops.attention_marginals(map, size[0], size[1])


def sampling_grid(my, mx, out_size, dense=4.0, iters=5, mode="exact"):
    """Separable inverse-CDF grid (gy (N, Ho), gx (N, Wo)) in [-1, 1] from the marginals."""
    return _ops.sampling_grid(my, mx, out_size[0], out_size[1], dense, iters, mode)


def sample_separable(img, gy, gx):
    """Bilinear sampling of img (N, C, Hi, Wi) at the separable grid (gy, gx): (N, C, Ho, Wo).

    Differentiable in img (a deterministic, atomic-free backward); gy and gx get no gradient."""
    return _ops.sample_separable(img, gy, gx)


def sample_grid(img, grid):
    """grid_sample(img, grid, bilinear, zeros, align_corners=True) for grid (N, Ho, Wo, 2) in (x, y) order.

    Differentiable in img and grid."""
    return _ops.sample_grid(img, grid)


def attention_sample(img, attention, out_size, dense=4.0, iters=5, mode="exact", upsample=None, squared=False):
    """TASN's sampler in one call: marginals of attention (N, Ha, Wa) (upsampled to ``upsample``, default
    the image size; squared first if asked), the grid, and the bilinear sampling of img.

    Returns (out (N, C, Ho, Wo), gy, gx, fallback). Differentiable in img; attention must not require
    grad (SPEC: the maps carry no gradient): pass attention.detach()."""
    uh, uw = (0, 0) if upsample is None else upsample
    return _ops.attention_sample(img, attention, out_size[0], out_size[1], dense, iters, mode, uh, uw, squared)


def distillation_loss(student, teacher, temperature=10.0, kl=False, t_squared=False, reduction="mean"):
    """Teacher-student loss -sum_k softmax(t/T) log_softmax(s/T) per row (KL with kl=True, times T^2 with
    t_squared). Differentiable in both logits (detach the teacher for the usual one-sided loss)."""
    return _ops.distillation_loss(student, teacher, temperature, kl, t_squared, reduction)


def softmax_cross_entropy(logits, labels, ignore_index=-100, grad_scale=1.0, label_smoothing=0.0, reduction="mean"):
    """Cross-entropy of logits (N, K) with int64 labels (N), scaled by grad_scale; mean over non-ignored rows."""
    return _ops.softmax_cross_entropy(logits, labels, ignore_index, grad_scale, label_smoothing, reduction)


def topk_correct(logits, labels, max_k=5, ignore_index=-100):
    """correct[j] (int64, max_k): rows whose label is among their top j+1 logits (ties rank above)."""
    return _ops.topk_correct(logits, labels, max_k, ignore_index)


def synthetic_images(count, split="train", seed=1, size=96, patch=16, clutter=6, classes=8, first=0):
    """The example trainer's generated fine-grained data set (examples/data/synthetic.h): samples
    first .. first+count-1 of a split ('train', 'test', 'val') as (images (count, 3, size, size)
    uint8, labels (count) int64, detail boxes (count, 4) int64 [y0, x0, y1, x1)). The same images
    as the C++ trainer's for the same (seed, split, index); CPU tensors."""
    return torch.ops.tasn.synthetic_images(count, split, seed, size, patch, clutter, classes, first)
