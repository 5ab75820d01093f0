"""nn.Module wrappers of the TASN operators."""
import torch

from . import functional as F


class TrilinearAttention(torch.nn.Module):
    """Trilinear attention M = (softmax(beta X) X^T) X ... per SPEC 1: (N, C, H, W) -> (N, C, H, W)."""

    def __init__(self, beta=7.0):
        super().__init__()
        self.beta = float(beta)

    def forward(self, x):
        return F.trilinear_attention(x, self.beta)

    def extra_repr(self):
        return "beta=%g" % self.beta


class AttentionSampler(torch.nn.Module):
    """Attention-based non-uniform sampling (SPEC 3): magnifies the attended parts of img.

    forward(img, attention) -> sampled image (N, C, Ho, Wo); the attention map (N, Ha, Wa) is used
    detached (the maps carry no gradient); the image gets its gradient. ``return_grid=True`` also
    returns (gy, gx, fallback)."""

    def __init__(self, out_size, dense=4.0, iters=5, mode="exact", upsample=None, squared=False, return_grid=False):
        super().__init__()
        self.out_size = (int(out_size[0]), int(out_size[1]))
        self.dense, self.iters, self.mode = float(dense), int(iters), str(mode)
        self.upsample = None if upsample is None else (int(upsample[0]), int(upsample[1]))
        self.squared, self.return_grid = bool(squared), bool(return_grid)

    def forward(self, img, attention):
        out, gy, gx, fallback = F.attention_sample(img, attention.detach(), self.out_size, self.dense, self.iters,
                                                   self.mode, self.upsample, self.squared)
        return (out, gy, gx, fallback) if self.return_grid else out

    def extra_repr(self):
        return "out_size=%s, dense=%g, iters=%d, mode=%s, upsample=%s, squared=%s" % (
            self.out_size, self.dense, self.iters, self.mode, self.upsample, self.squared)


class DistillationLoss(torch.nn.Module):
    """Teacher-student distillation loss (SPEC 4); forward(student, teacher)."""

    def __init__(self, temperature=10.0, kl=False, t_squared=False, reduction="mean"):
        super().__init__()
        self.temperature, self.kl, self.t_squared, self.reduction = float(temperature), bool(kl), bool(t_squared), reduction

    def forward(self, student, teacher):
        return F.distillation_loss(student, teacher, self.temperature, self.kl, self.t_squared, self.reduction)

    def extra_repr(self):
        return "temperature=%g, kl=%s, t_squared=%s, reduction=%s" % (
            self.temperature, self.kl, self.t_squared, self.reduction)
