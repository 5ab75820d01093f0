"""Shape-only ("fake") kernels of torch.ops.tasn for PyTorch 2.x (torch.library.register_fake):
what torch.compile, FakeTensor and torch.library.opcheck trace with. They allocate outputs of the
right shape, dtype and device from the inputs' (possibly symbolic) sizes and compute nothing.
Must agree with python/csrc/plumbing.h (the tests' opcheck compares them)."""
import torch


def _compute(dtype):
    """Maps, marginals and grids: float for half-precision images (the CUDA path's compute type)."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _loss(x, reduction):
    return x.new_empty((x.shape[0],)) if reduction == "none" else x.new_empty(())


def register():
    reg = getattr(torch.library, "register_fake", None)
    if reg is None:  # PyTorch < 2.4: no torch.compile support through these operators
        return False

    @reg("tasn::trilinear_attention")
    def _(x, beta=7.0):
        return x.new_empty(x.shape)

    @reg("tasn::trilinear_attention_forward")
    def _(x, beta=7.0):
        n, c, h, w = x.shape
        return x.new_empty(x.shape), x.new_empty((n * c * (h * w + c),))

    @reg("tasn::trilinear_attention_backward")
    def _(dm, x, saved, beta=7.0):
        return x.new_empty(x.shape)

    @reg("tasn::structure_map")
    def _(m, distinct=True):
        return m.new_empty((m.shape[0], m.shape[2], m.shape[3]), dtype=_compute(m.dtype))

    @reg("tasn::detail_map")
    def _(m, channels=None, training=True, seed=0, first_sample=0):
        return (m.new_empty((m.shape[0], m.shape[2], m.shape[3]), dtype=_compute(m.dtype)),
                m.new_empty((m.shape[0],), dtype=torch.int64))

    @reg("tasn::upsample_bilinear")
    def _(input, H, W, squared=False):
        return input.new_empty((input.shape[0], H, W))

    @reg("tasn::attention_marginals")
    def _(map, Hs, Ws):
        n = map.shape[0]
        return map.new_empty((n, Hs)), map.new_empty((n, Ws)), map.new_empty((n,), dtype=torch.bool)

    @reg("tasn::sampling_grid")
    def _(my, mx, Ho, Wo, dense=4.0, iters=5, mode="exact"):
        return my.new_empty((my.shape[0], Ho)), my.new_empty((my.shape[0], Wo))

    @reg("tasn::sample_separable")
    def _(img, gy, gx):
        return img.new_empty((img.shape[0], img.shape[1], gy.shape[1], gx.shape[1]))

    @reg("tasn::sample_separable_backward")
    def _(dout, gy, gx, Hi, Wi):
        return dout.new_empty((dout.shape[0], dout.shape[1], Hi, Wi))

    @reg("tasn::sample_grid")
    def _(img, grid):
        return img.new_empty((img.shape[0], img.shape[1], grid.shape[1], grid.shape[2]))

    @reg("tasn::sample_grid_backward")
    def _(dout, img, grid, img_grad=True, grid_grad=True):
        return (img.new_empty(img.shape) if img_grad else img.new_empty((0,)),
                grid.new_empty(grid.shape) if grid_grad else grid.new_empty((0,)))

    @reg("tasn::attention_sample")
    def _(img, attention, Ho, Wo, dense=4.0, iters=5, mode="exact", upsample_h=0, upsample_w=0, squared=False):
        n, c = img.shape[0], img.shape[1]
        ct = _compute(img.dtype)
        return (img.new_empty((n, c, Ho, Wo)), img.new_empty((n, Ho), dtype=ct), img.new_empty((n, Wo), dtype=ct),
                img.new_empty((n,), dtype=torch.bool))

    @reg("tasn::distillation_loss")
    def _(student, teacher, temperature=10.0, kl=False, t_squared=False, reduction="mean"):
        return _loss(student, reduction)

    @reg("tasn::distillation_loss_backward")
    def _(dloss, student, teacher, temperature, kl, t_squared, reduction, student_grad, teacher_grad):
        return (student.new_empty(student.shape) if student_grad else student.new_empty((0,)),
                teacher.new_empty(teacher.shape) if teacher_grad else teacher.new_empty((0,)))

    @reg("tasn::softmax_cross_entropy")
    def _(logits, labels, ignore_index=-100, grad_scale=1.0, label_smoothing=0.0, reduction="mean"):
        return _loss(logits, reduction)

    @reg("tasn::softmax_cross_entropy_backward")
    def _(dloss, logits, labels, ignore_index, grad_scale, label_smoothing, reduction):
        return logits.new_empty(logits.shape)

    @reg("tasn::topk_correct")
    def _(logits, labels, max_k=5, ignore_index=-100):
        return logits.new_empty((max_k,), dtype=torch.int64)

    return True
