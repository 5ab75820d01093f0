#!/usr/bin/python3
"""Golden data for one whole training step of the example trainer (tests/test_train_step_golden.cpp):
the TASN network of ../shared/SPEC.md section 5 and the baseline, at a tiny size, in float64.

Run with Debian's PyTorch (/usr/bin/python3):

    /usr/bin/python3 tests/golden/gen_train_step.py   # writes tests/golden/train_step_{tasn,baseline}.bin

This is an independent oracle: the network is written from the SPEC (sections 1-5) with torch ops
(F.conv2d, F.batch_norm, F.interpolate, softmax / bmm, cumsum + searchsorted, F.grid_sample) and
differentiated by autograd; only the parameter names and the configuration knobs follow the C++
trainer (examples/train/model.h, examples/nn/*.h), so that the test can compare by name.

Weights and running statistics: formula_value(checkpoint name, shape) of gen_golden.py
(tests/support/formula_weights.h in C++), keyed by the full checkpoint name ("att.conv1.weight",
"master.conv1.weight", "heads.part_fc.weight"), so the two backbones' stems differ. Images:
uniform(IMAGE_SEED) in [-1, 1). Labels and the detail channels are fixed (CONFIG below).

Stored tensors (gen_golden.py's TASNGLD1 format):
  config                      the numbers of CONFIG the test checks its own configuration against
  labels, detail_channels,    as float64
  image_seed
  loss/<term>, loss/total     every loss term, summed over the batch (scaled by its weight)
  grad/<ckpt name>            the gradient of the total loss for every trainable parameter
  running/<ckpt name>         every BN running statistic after the step (momentum 0.1, unbiased var)
  after/<ckpt name>           every trainable parameter after one SGD step (optim.h, v starts at 0):
                              v = g * rescale + wd * w;  w -= lr * v   (rescale = 1 / N)
  view/...                    (TASN only) the maps, the structure grid and the sampled images,
                              to localise a failure
"""
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from gen_golden import formula_value, trilinear, uniform, write  # noqa: E402

# ---- configuration (tests/test_train_step_golden.cpp builds the same NetConfig) ----------------
# ResNet-form backbones: stem 3x3 stride 1 without max-pool, two stages of one unit each. The
# attention net is basic-block (as the paper's ResNet-18), the shared part/master backbone is
# bottleneck (as the paper's ResNet-50); each has one identity and one projection shortcut.
ATT_BACKBONE = dict(bottleneck=False, depth=[1, 1], stride=[1, 2], width=0.0625, stem_kernel=3, stem_stride=1,
                    stem_pool=False)   # channels 4, 8: feature map (N, 8, 8, 8) from a 16 x 16 input
MASTER_BACKBONE = dict(bottleneck=True, depth=[1, 1], stride=[1, 2], width=0.0625, stem_kernel=3, stem_stride=1,
                       stem_pool=False)  # planes 4, 8 (x4): features 32, 12 x 12 -> 6 x 6
CONFIG = dict(classes=3, batch=2, image=20, att_input=16, out=12,
              # NetConfig's defaults (the trainer's):
              beta=7.0, dense=4.0, iters=5, temperature=10.0, head_grad_scale=0.5, att_grad_scale=1.0,
              distill_weight=1.0, teacher_grad=1,
              # Sgd (optim.h) for one step:
              lr=0.1, momentum=0.9, weight_decay=5e-4)
CONFIG_KEYS = ["classes", "batch", "image", "att_input", "out", "beta", "dense", "iters", "temperature",
               "head_grad_scale", "att_grad_scale", "distill_weight", "teacher_grad", "lr", "momentum",
               "weight_decay"]
LABELS = [2, 0]
DETAIL_CHANNELS = [1, 2]  # one fixed channel of M per sample (training-mode detail map)
IMAGE_SEED = 1219  # see relu(): every ReLU input of both nets is >= 4e-5 away from 0
BN_MOMENTUM, BN_EPS = 0.1, 1e-5


# The C++ step runs in float: a ReLU input within float rounding of 0 could take the other branch
# there and change the gradients far beyond rounding. relu() records the smallest |input| of the
# step, and step() refuses a case where it is below RELU_MARGIN (IMAGE_SEED was chosen for that).
RELU_MARGIN = 2e-5
relu_closest = [float("inf")]


def relu(x):
    relu_closest[0] = min(relu_closest[0], x.detach().abs().min().item())
    return F.relu(x)


# ---- parameters ---------------------------------------------------------------------------------
class Store:
    """Trainable parameters (leaf tensors with grad) and BN buffers by checkpoint name."""

    def __init__(self):
        self.params, self.buffers = {}, {}

    def add(self, name, shape, trainable=True):
        v = formula_value(name, tuple(shape)).clone()
        if trainable:
            self.params[name] = v.requires_grad_(True)
        else:
            self.buffers[name] = v
        return name

    def p(self, name):
        return self.params[name]


def ch(base, width):
    return max(1, int(base * width + 0.5))


class ConvBN:
    """conv (no bias) + BN (+ ReLU); names conv.weight, bn.{weight, bias, running_mean, running_var}."""

    def __init__(self, st, conv, bn, cin, cout, k, stride, pad, relu):
        self.st, self.conv, self.bn, self.stride, self.pad, self.relu = st, conv, bn, stride, pad, relu
        st.add(conv + ".weight", (cout, cin, k, k))
        st.add(bn + ".weight", (cout,))
        st.add(bn + ".bias", (cout,))
        st.add(bn + ".running_mean", (cout,), False)
        st.add(bn + ".running_var", (cout,), False)

    def __call__(self, x, training):
        st = self.st
        y = F.conv2d(x, st.p(self.conv + ".weight"), None, self.stride, self.pad)
        # F.batch_norm updates the running statistics in place (unbiased variance), as the C++ does
        y = F.batch_norm(y, st.buffers[self.bn + ".running_mean"], st.buffers[self.bn + ".running_var"],
                         st.p(self.bn + ".weight"), st.p(self.bn + ".bias"), training, BN_MOMENTUM, BN_EPS)
        return relu(y) if self.relu else y


class ResNet:
    """torchvision-form ResNet trunk (post-activation), features only; names as torchvision."""

    def __init__(self, st, prefix, cfg):
        self.cfg = cfg
        w = cfg["width"]
        k = cfg["stem_kernel"]
        self.stem = ConvBN(st, prefix + "conv1", prefix + "bn1", 3, ch(64, w), k, cfg["stem_stride"], k // 2, True)
        cin = ch(64, w)
        self.units = []
        for s, (depth, stride) in enumerate(zip(cfg["depth"], cfg["stride"])):
            planes = ch((64, 128, 256, 512)[s], w)
            for u in range(depth):
                p = "%slayer%d.%d." % (prefix, s + 1, u)
                st_ = stride if u == 0 else 1
                cout = planes * 4 if cfg["bottleneck"] else planes
                if cfg["bottleneck"]:
                    branch = [ConvBN(st, p + "conv1", p + "bn1", cin, planes, 1, 1, 0, True),
                              ConvBN(st, p + "conv2", p + "bn2", planes, planes, 3, st_, 1, True),
                              ConvBN(st, p + "conv3", p + "bn3", planes, cout, 1, 1, 0, False)]
                else:
                    branch = [ConvBN(st, p + "conv1", p + "bn1", cin, planes, 3, st_, 1, True),
                              ConvBN(st, p + "conv2", p + "bn2", planes, cout, 3, 1, 1, False)]
                down = None
                if st_ != 1 or cin != cout:
                    down = ConvBN(st, p + "downsample.0", p + "downsample.1", cin, cout, 1, st_, 0, False)
                self.units.append((branch, down))
                cin = cout
        self.features = cin

    def __call__(self, x, training):
        h = self.stem(x, training)
        if self.cfg["stem_pool"]:
            h = F.max_pool2d(h, 3, 2, 1)
        for branch, down in self.units:
            y = h
            for unit in branch:
                y = unit(y, training)
            h = relu(y + (down(h, training) if down else h))
        return h


class AttentionNet:
    """SPEC 5: trunk, conv1 shared over dilations 1, 2 (ReLU each, summed), conv2 shared over
    dilations 1, 2, 3 (ReLU each, summed), BN, ReLU (the feature map), average pool, FC."""

    def __init__(self, st, cfg, classes):
        self.st = st
        self.trunk = ResNet(st, "att.", cfg)
        c = self.trunk.features
        for n in ("conv1", "conv2"):
            st.add("att.head.%s.weight" % n, (c, c, 3, 3))
            st.add("att.head.%s.bias" % n, (c,))
        st.add("att.head.bn.weight", (c,))
        st.add("att.head.bn.bias", (c,))
        st.add("att.head.bn.running_mean", (c,), False)
        st.add("att.head.bn.running_var", (c,), False)
        st.add("att.head.fc.weight", (classes, c))
        st.add("att.head.fc.bias", (classes,))

    def __call__(self, x, training):
        p = self.st.p
        h = self.trunk(x, training)
        h1 = sum(relu(F.conv2d(h, p("att.head.conv1.weight"), p("att.head.conv1.bias"), 1, d, d)) for d in (1, 2))
        h2 = sum(relu(F.conv2d(h1, p("att.head.conv2.weight"), p("att.head.conv2.bias"), 1, d, d)) for d in (1, 2, 3))
        b = self.st.buffers
        feat = relu(F.batch_norm(h2, b["att.head.bn.running_mean"], b["att.head.bn.running_var"],
                                   p("att.head.bn.weight"), p("att.head.bn.bias"), training, BN_MOMENTUM, BN_EPS))
        logits = F.linear(feat.mean(dim=(2, 3)), p("att.head.fc.weight"), p("att.head.fc.bias"))
        return logits, feat


# ---- SPEC 2, 3: maps and the attention sampler ------------------------------------------------
def structure_map(m):
    """Sum of the channels of m (N, C, h, w), each value of a channel's spatial sum counted once
    (distinct=true: channels with exactly equal sums are the same map)."""
    out = []
    for mn in m:
        sums = mn.sum(dim=(1, 2))
        keep = [c for c in range(mn.shape[0]) if not any(sums[e] == sums[c] for e in range(c))]
        if len(keep) != mn.shape[0]:
            print("  structure map: sample keeps channels", keep)
        out.append(mn[keep].sum(0))
    return torch.stack(out)


def marginals(amap, hs, ws, squared):
    """SPEC 3a: the map upsampled (align_corners) to (hs, ws), squared after upsampling when asked;
    row / column maxima of max(v, 0), each normalised to sum 1."""
    up = F.interpolate(amap[:, None], size=(hs, ws), mode="bilinear", align_corners=True)[:, 0]
    if squared:
        up = up * up
    up = up.clamp(min=0)
    my, mx = up.amax(dim=2), up.amax(dim=1)
    assert (my.sum(1) > 0).all() and (mx.sum(1) > 0).all(), "degenerate marginal: choose another case"
    return my / my.sum(1, keepdim=True), mx / mx.sum(1, keepdim=True)


def limit(my, mx, ho, wo, dense, iters):
    """SPEC 3b for one sample: scale to the output sizes, then clip at the shared threshold (capped
    by dense * O / S on the first iteration) and spread the clipped mass uniformly, iters times."""
    ty, tx = my * ho, mx * wo
    t0y, t0x = dense * ho / len(my), dense * wo / len(mx)
    for it in range(iters):
        t = min(ty.max().item(), tx.max().item())
        cy, cx = (min(t, t0y), min(t, t0x)) if it == 0 else (t, t)
        ty = ty.clamp(max=cy)
        tx = tx.clamp(max=cx)
        ty = ty + (ho - ty.sum()) / len(ty)
        tx = tx + (wo - tx.sum()) / len(tx)
    return ty, tx


def inverse_cdf(m, o):
    """SPEC 3c exact mode: density (m[k-1] + m[k]) / 2 on [k-1, k], cumulative C at the knots,
    output i -> u = C^-1(i / (O - 1) * C(S - 1)) (smallest u), g = 2u / (S - 1) - 1, ends -1 and +1."""
    s = len(m)
    c = torch.cat([torch.zeros(1), torch.cumsum((m[:-1] + m[1:]) / 2, 0)])
    t = torch.arange(o, dtype=torch.float64) / (o - 1) * c[-1]
    k = torch.searchsorted(c, t).clamp(1, s - 1)  # first knot with C >= t; t > 0 inside
    u = (k - 1) + (t - c[k - 1]) / (c[k] - c[k - 1])
    g = 2 * u / (s - 1) - 1
    g[0], g[-1] = -1.0, 1.0
    # self-check: the piecewise-linear C at u gives back the targets
    back = np.interp(u.numpy(), np.arange(s), c.numpy())
    assert np.allclose(back[1:-1], t.numpy()[1:-1], rtol=0, atol=1e-12 * c[-1].item())
    return g


def attention_sample(img, amap, out, dense, iters, squared):
    """SPEC 3: marginals at the image size, the limited grid and grid_sample (bilinear, zeros,
    align_corners): the sampled image (N, 3, out, out) and the grid gy, gx (N, out)."""
    n, _, hi, wi = img.shape
    my, mx = marginals(amap, hi, wi, squared)
    gys, gxs = [], []
    for i in range(n):
        ty, tx = limit(my[i], mx[i], out, out, dense, iters)
        gys.append(inverse_cdf(ty, out))
        gxs.append(inverse_cdf(tx, out))
    gy, gx = torch.stack(gys), torch.stack(gxs)
    grid = torch.stack([gx[:, None, :].expand(n, out, out), gy[:, :, None].expand(n, out, out)], dim=3)
    sampled = F.grid_sample(img, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return sampled, gy, gx


# ---- the two networks --------------------------------------------------------------------------
def linear_head(st, name, fin, classes):
    st.add("heads.%s.weight" % name, (classes, fin))
    st.add("heads.%s.bias" % name, (classes,))
    return lambda f: F.linear(f, st.p("heads.%s.weight" % name), st.p("heads.%s.bias" % name))


def ce(z, labels, scale):
    return scale * F.cross_entropy(z, labels, reduction="sum")


def images():
    c = CONFIG
    return uniform(IMAGE_SEED, c["batch"] * 3 * c["image"] ** 2, -1.0, 1.0).reshape(c["batch"], 3, c["image"], c["image"])


class Tasn:
    def __init__(self):
        c = CONFIG
        self.st = Store()
        self.att = AttentionNet(self.st, ATT_BACKBONE, c["classes"])
        self.master = ResNet(self.st, "master.", MASTER_BACKBONE)
        f = self.master.features
        self.part_fc = linear_head(self.st, "part_fc", f, c["classes"])
        self.master_fc = linear_head(self.st, "master_fc", f, c["classes"])
        self.shared_fc = linear_head(self.st, "shared_fc", f, c["classes"])

    def losses(self, img, labels, training=True, views=None):
        """Every loss term of SPEC 5 (summed over the batch); views collects the intermediates."""
        c = CONFIG
        n = img.shape[0]
        small = F.interpolate(img, size=(c["att_input"],) * 2, mode="bilinear", align_corners=True)
        z_att, feat = self.att(small, training)
        with torch.no_grad():  # BlockGrad after the trilinear attention: maps and images carry no gradient
            m, _ = trilinear(feat.detach(), c["beta"])
            smap = structure_map(m)
            dmap = torch.stack([m[i, DETAIL_CHANNELS[i]] for i in range(n)])
            s_img, gy, gx = attention_sample(img, smap, c["out"], c["dense"], c["iters"], squared=True)
            d_img, _, _ = attention_sample(img, dmap, c["out"], c["dense"], c["iters"], squared=False)
        pooled = self.master(torch.cat([d_img, s_img]), training).mean(dim=(2, 3))  # one batch of 2N
        f_part, f_master = pooled[:n], pooled[n:]
        z_part, z_master = self.part_fc(f_part), self.master_fc(f_master)
        z_part_aux, z_master_aux = self.shared_fc(f_part), self.shared_fc(f_master)
        gs = c["head_grad_scale"]
        temp = c["temperature"]
        teacher = z_part if c["teacher_grad"] else z_part.detach()
        p = torch.softmax(teacher / temp, dim=1)  # SPEC 4: soft-target cross-entropy, student = master
        distill = -(p * torch.log_softmax(z_master / temp, dim=1)).sum()
        terms = [("att", ce(z_att, labels, c["att_grad_scale"])), ("part", ce(z_part, labels, gs)),
                 ("master", ce(z_master, labels, gs)), ("part_aux", ce(z_part_aux, labels, gs)),
                 ("master_aux", ce(z_master_aux, labels, gs)), ("distill", c["distill_weight"] * distill)]
        if views is not None:
            views.update({"view/structure_map": smap, "view/detail_map": dmap, "view/structure_image": s_img,
                          "view/detail_image": d_img, "view/gy_structure": gy, "view/gx_structure": gx,
                          "logits/att": z_att.detach(), "logits/part": z_part.detach(),
                          "logits/master": z_master.detach()})
        return terms


class Baseline:
    def __init__(self):
        self.st = Store()
        self.master = ResNet(self.st, "master.", MASTER_BACKBONE)
        self.fc = linear_head(self.st, "fc", self.master.features, CONFIG["classes"])

    def losses(self, img, labels, training=True, views=None):
        x = F.interpolate(img, size=(CONFIG["out"],) * 2, mode="bilinear", align_corners=True)
        z = self.fc(self.master(x, training).mean(dim=(2, 3)))
        if views is not None:
            views["logits/uniform"] = z.detach()
        return [("ce", ce(z, labels, 1.0))]


# ---- checks of the transliteration ---------------------------------------------------------------
def spot_check(net, img, labels, grads):
    """Central differences of the loss against autograd for a few elements of every parameter.
    The attention net's parameters also move the (gradient-stopped) maps, so their difference
    quotient is taken of the attention net's own loss only; the others do not touch the maps."""
    running = {k: v.clone() for k, v in net.st.buffers.items()}

    def loss_of(att_only):
        with torch.no_grad():
            terms = dict(net.losses(img, labels))
        for k, v in running.items():  # forward passes must not move the statistics under test
            net.st.buffers[k].copy_(v)
        return terms["att"].item() if att_only else sum(t.item() for t in terms.values())

    h, worst = 1e-6, 0.0
    for name, p in net.st.params.items():
        g = grads[name].reshape(-1)
        idx = sorted({0, p.numel() - 1, p.numel() // 2})
        for i in idx:
            with torch.no_grad():
                x0 = p.view(-1)[i].item()
                p.view(-1)[i] = x0 + h
                fp = loss_of(name.startswith("att."))
                p.view(-1)[i] = x0 - h
                fm = loss_of(name.startswith("att."))
                p.view(-1)[i] = x0
            fd = (fp - fm) / (2 * h)
            err = abs(fd - g[i].item()) / (1e-6 + abs(g[i].item()) + abs(fd))
            worst = max(worst, err)
            assert err < 1e-5, "finite differences disagree for %s[%d]: autograd %g, fd %g" % (name, i, g[i], fd)
    print("  finite-difference spot checks: %d parameters, worst relative error %.2e" % (len(net.st.params), worst))


def uniform_grid_check():
    """Uniform marginals must give linspace(-1, 1, O) (SPEC 3c)."""
    m = torch.full((20,), 1 / 20)
    ty, tx = limit(m, m, 12, 12, 4.0, 5)
    assert torch.allclose(inverse_cdf(ty, 12), torch.linspace(-1, 1, 12), atol=1e-14)


# ---- one step ------------------------------------------------------------------------------------
def step(net, path, tag):
    c = CONFIG
    print(tag)
    img = images()
    labels = torch.tensor(LABELS)
    views = {}
    relu_closest[0] = float("inf")
    terms = net.losses(img, labels, True, views)  # updates the running statistics once
    print("  smallest |ReLU input|: %.2e" % relu_closest[0])
    assert relu_closest[0] > RELU_MARGIN, "a ReLU input is too close to 0 for the float path: change IMAGE_SEED"
    total = sum(t for _, t in terms)
    names = list(net.st.params)
    grads = dict(zip(names, torch.autograd.grad(total, [net.st.params[k] for k in names])))
    out = {"config": torch.tensor([float(c[k]) for k in CONFIG_KEYS]),
           "labels": torch.tensor(LABELS, dtype=torch.float64),
           "detail_channels": torch.tensor(DETAIL_CHANNELS, dtype=torch.float64),
           "image_seed": torch.tensor([float(IMAGE_SEED)])}
    for name, t in terms:
        out["loss/" + name] = t.detach().reshape(1)
        print("  loss %-10s %.12f" % (name, t.item()))
    out["loss/total"] = total.detach().reshape(1)
    print("  loss %-10s %.12f" % ("total", total.item()))
    rescale = 1.0 / c["batch"]
    for name in names:
        w = net.st.params[name].detach()
        g = grads[name]
        v = g * rescale + c["weight_decay"] * w  # momentum buffer starts at 0: mu * v vanishes
        out["grad/" + name] = g
        out["after/" + name] = w - c["lr"] * v
    for name, b in net.st.buffers.items():
        out["running/" + name] = b.clone()
    out.update(views)
    spot_check(net, img, labels, grads)
    print("  %d parameters (%d values), %d buffers" % (len(names), sum(p.numel() for p in net.st.params.values()),
                                                        len(net.st.buffers)))
    write(path, out)


def main():
    torch.set_default_dtype(torch.float64)
    print("torch", torch.__version__, file=sys.stderr)
    uniform_grid_check()
    step(Tasn(), os.path.join(HERE, "train_step_tasn.bin"), "tasn")
    step(Baseline(), os.path.join(HERE, "train_step_baseline.bin"), "baseline")


if __name__ == "__main__":
    main()
