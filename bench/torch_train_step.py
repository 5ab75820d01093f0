#!/usr/bin/env python3
"""The example trainer's networks (SPEC section 5) in PyTorch, timed one training step at a time.

The peer that bench/bench_train_step.cpp is measured against (issue 12, "Speed"): the same TASN
network and baseline, layer for layer, with the same parameter names and shapes as the C++ model
(checked against `bench_train_step --dump-names FILE` before anything is timed), the same losses
(summed over the batch), the same SGD (momentum, weight decay, gradients rescaled by 1 / batch).
Needs a PyTorch 2.x from PyPI (MKL + oneDNN); Debian's python3-torch 1.13 has a generic BLAS and
is not a fair peer. Never needed by the tests.

    build/bench/bench_train_step --preset demo --model tasn --dump-names /tmp/names.txt --steps 0 --warmup 0
    /work/torchvenv/bin/python bench/torch_train_step.py --preset demo --model tasn --names /tmp/names.txt \
        --batch 32 --steps 20 --warmup 3 --threads 2 [--compile] [--json out.json]

A step is: forward of every network, every loss, backward, optimizer.step(); the images are random
(the C++ program uses the trainer's generated images; the only data-dependent work, the sampler's
grid, is well under 2 % of a step). With --compile the forward + loss is torch.compile'd
(AOTAutograd compiles the backward with it); the first step, which compiles, is reported apart as
compile_s and is never one of the timed steps. Inductor keeps compiled code in an on-disk cache,
so a second run's compile_s is mostly loading: --cold-compile gives it an empty cache.
"""
import argparse
import json
import os
import resource
import statistics
import sys
import time
import warnings

warnings.filterwarnings("ignore", message="Failed to initialize NumPy")  # numpy is not needed here
if "--cold-compile" in sys.argv:  # an empty Inductor cache, so compile_s is a first compile (read at import)
    import atexit
    import shutil
    import tempfile

    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="torchinductor_cold_")
    atexit.register(shutil.rmtree, os.environ["TORCHINDUCTOR_CACHE_DIR"], True)
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402


# ---- the presets of examples/train/presets.h ------------------------------------------------------

def resnet_config(bottleneck=False, depth=(2, 2, 2, 2), stride=(1, 2, 2, 2), width=1.0, stem_kernel=7,
                  stem_stride=2, stem_pool=True):
    return dict(bottleneck=bottleneck, depth=list(depth), stride=list(stride), width=width,
                stem_kernel=stem_kernel, stem_stride=stem_stride, stem_pool=stem_pool)


def demo_backbone(width):
    # 3x3 stem (stride 1, no pool), two residual stages of width 32 / 64 (x width / 0.5), stride 2 each
    return resnet_config(depth=(1, 1), stride=(2, 2), width=width, stem_kernel=3, stem_stride=1, stem_pool=False)


def preset(name):
    """NetConfig + the optimiser of examples/train/presets.h."""
    if name == "demo":
        return dict(classes=8, image=96, att_input=32, out=32, att_backbone=demo_backbone(0.25),
                    master_backbone=demo_backbone(0.5), batch=32, lr=0.1, momentum=0.9, weight_decay=5e-4)
    if name == "paper":
        return dict(classes=200, image=512, att_input=224, out=224,
                    att_backbone=resnet_config(stride=(1, 1, 2, 1)),           # ResNet-18, strides (1, 1, 2, 1)
                    master_backbone=resnet_config(bottleneck=True, depth=(3, 4, 6, 3)),  # ResNet-50
                    batch=96, lr=0.1, momentum=0.0, weight_decay=0.0)
    raise SystemExit(f"--preset must be demo or paper, got {name!r}")


# common NetConfig defaults (examples/train/model.h)
BETA, DENSE, ITERS, TEMPERATURE, HEAD_SCALE, ATT_SCALE, DISTILL_WEIGHT = 7.0, 4.0, 5, 10.0, 0.5, 1.0, 1.0


# ---- torchvision-form ResNet (examples/nn/resnet.h) -----------------------------------------------

class BasicBlock(nn.Module):
    def __init__(self, cin, planes, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or cin != planes:
            self.downsample = nn.Sequential(nn.Conv2d(cin, planes, 1, stride, 0, bias=False), nn.BatchNorm2d(planes))
        self.out_channels = planes

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        return F.relu(h + (self.downsample(x) if self.downsample is not None else x))


class Bottleneck(nn.Module):
    def __init__(self, cin, planes, stride):
        super().__init__()
        cout = planes * 4
        self.conv1 = nn.Conv2d(cin, planes, 1, 1, 0, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)  # stride on the 3x3 (torchvision)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, cout, 1, 1, 0, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, 0, bias=False), nn.BatchNorm2d(cout))
        self.out_channels = cout

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        h = F.relu(self.bn2(self.conv2(h)))
        h = self.bn3(self.conv3(h))
        return F.relu(h + (self.downsample(x) if self.downsample is not None else x))


class ResNet(nn.Module):
    """conv1 + bn1 + relu (+ max-pool 3/2) -> layer1..layerK; no fc (features only, num_classes = 0)."""

    def __init__(self, cfg):
        super().__init__()
        ch = lambda base: max(1, int(base * cfg["width"] + 0.5))  # noqa: E731 (ResNet's ch())
        k = cfg["stem_kernel"]
        self.conv1 = nn.Conv2d(3, ch(64), k, cfg["stem_stride"], k // 2, bias=False)
        self.bn1 = nn.BatchNorm2d(ch(64))
        self.stem_pool = cfg["stem_pool"]
        block = Bottleneck if cfg["bottleneck"] else BasicBlock
        cin = ch(64)
        self.stages = []
        for s, (depth, stride) in enumerate(zip(cfg["depth"], cfg["stride"])):
            units = []
            for u in range(depth):
                units.append(block(cin, ch((64, 128, 256, 512)[s]), stride if u == 0 else 1))
                cin = units[-1].out_channels
            self.add_module(f"layer{s + 1}", nn.Sequential(*units))
            self.stages.append(f"layer{s + 1}")
        self.features = cin

    def forward_features(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        if self.stem_pool:
            h = F.max_pool2d(h, 3, 2, 1)
        for name in self.stages:
            h = getattr(self, name)(h)
        return h

    def forward(self, x):  # pooled features (N, features)
        return self.forward_features(x).mean((2, 3))


class AttentionHead(nn.Module):
    """Two shared-weight multi-dilation 3x3 convs (dilations 1,2 then 1,2,3; ReLU each, summed), BN,
    ReLU, global average pool, FC (examples/nn/attention_net.h)."""

    def __init__(self, c, classes):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, 1, 1)
        self.conv2 = nn.Conv2d(c, c, 3, 1, 1)
        self.bn = nn.BatchNorm2d(c)
        self.fc = nn.Linear(c, classes)

    @staticmethod
    def dilated_sum(x, conv, count):
        out = None
        for d in range(1, count + 1):
            y = F.relu(F.conv2d(x, conv.weight, conv.bias, 1, d, d))
            out = y if out is None else out + y
        return out

    def forward(self, x):
        h = self.dilated_sum(x, self.conv1, 2)
        h = self.dilated_sum(h, self.conv2, 3)
        feat = F.relu(self.bn(h))
        return self.fc(feat.mean((2, 3))), feat


class AttentionNet(ResNet):
    """The attention net: its backbone's parameters at the top level (torchvision names), head.*."""

    def __init__(self, cfg, classes):
        super().__init__(cfg)
        self.head = AttentionHead(self.features, classes)

    def forward(self, x):
        return self.head(self.forward_features(x))


# ---- TASN's operators (SPEC sections 1-3), no gradient (the official graph stops it) --------------

def trilinear(x, beta):
    n, c, h, w = x.shape
    xf = x.reshape(n, c, h * w)
    s = torch.softmax(beta * xf, dim=2)
    a = torch.softmax(torch.bmm(s, xf.transpose(1, 2)), dim=2)
    return torch.bmm(a, xf).reshape(n, c, h, w)


def distinct_mask(m):
    """(N, C) 1 for the first channel of every group with exactly equal spatial sums."""
    sums = m.sum((2, 3))
    vals, idx = torch.sort(sums, dim=1)
    first = torch.ones_like(vals, dtype=torch.bool)
    first[:, 1:] = vals[:, 1:] != vals[:, :-1]
    return torch.zeros_like(first).scatter(1, idx, first)


def magnify(my, mx, out_h, out_w, dense, iters):
    """SPEC 3b: scale each marginal to its output size, clip at one shared threshold, redistribute."""
    Hs, Ws = my.shape[1], mx.shape[1]
    my = my * out_h
    mx = mx * out_w
    t0 = min(dense * out_h / Hs, dense * out_w / Ws)
    for it in range(iters):
        t = torch.minimum(my.amax(1, keepdim=True), mx.amax(1, keepdim=True))
        if it == 0:
            t = t.clamp(max=t0)
        my = torch.minimum(my, t)
        mx = torch.minimum(mx, t)
        my = my + (out_h - my.sum(1, keepdim=True)) / Hs
        mx = mx + (out_w - mx.sum(1, keepdim=True)) / Ws
    return my, mx


def exact_grid(m, out):
    """SPEC 3c, exact mode: density (m[k-1] + m[k]) / 2 on [k-1, k], C its cumulative, output i at
    C^-1(i / (out - 1) * C(S-1)) (smallest u), as normalised coordinates."""
    n, S = m.shape
    c = torch.zeros(n, S, dtype=m.dtype)
    c[:, 1:] = torch.cumsum(0.5 * (m[:, :-1] + m[:, 1:]), dim=1)
    t = torch.linspace(0, 1, out, dtype=m.dtype)[None, :] * c[:, -1:]
    k = torch.searchsorted(c, t.contiguous(), right=False).clamp(1, S - 1)
    lo, hi = torch.gather(c, 1, k - 1), torch.gather(c, 1, k)
    u = (k - 1).to(m.dtype) + ((t - lo) / (hi - lo).clamp_min(1e-30)).clamp(0, 1)
    u = torch.where(t <= 0, torch.zeros_like(u), u)
    return 2 * u / (S - 1) - 1


def attention_sample(img, amap, out, squared, dense, iters):
    """SPEC 3: map (N, h, w) upsampled to the image size (squared for the structure map), max
    marginals, magnification limit, inverse-CDF grid, bilinear sampling (grid_sample)."""
    N, _, Hi, Wi = img.shape
    up = F.interpolate(amap[:, None], size=(Hi, Wi), mode="bilinear", align_corners=True)[:, 0]
    if squared:
        up = up * up
    up = up.clamp_min(0)
    my, mx = up.amax(2), up.amax(1)
    sy, sx = my.sum(1, keepdim=True), mx.sum(1, keepdim=True)
    bad = ~(torch.isfinite(sy) & torch.isfinite(sx) & (sy > 0) & (sx > 0))  # fallback: uniform
    my = torch.where(bad, torch.full_like(my, 1.0 / Hi), my / sy)
    mx = torch.where(bad, torch.full_like(mx, 1.0 / Wi), mx / sx)
    my, mx = magnify(my, mx, out, out, dense, iters)
    gy, gx = exact_grid(my, out), exact_grid(mx, out)
    grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=3)  # (N, out, out, (x, y))
    return F.grid_sample(img, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


# ---- the networks (examples/train/model.h) -------------------------------------------------------

class Heads(nn.Module):
    def __init__(self, names, features, classes):
        super().__init__()
        for n in names:
            self.add_module(n, nn.Linear(features, classes))


class TasnNet(nn.Module):
    def __init__(self, p):
        super().__init__()
        self.p = p
        self.att = AttentionNet(p["att_backbone"], p["classes"])
        self.master = ResNet(p["master_backbone"])
        self.heads = Heads(["part_fc", "master_fc", "shared_fc"], self.master.features, p["classes"])

    def loss(self, img, labels):
        p, N = self.p, img.shape[0]
        small = F.interpolate(img, size=(p["att_input"],) * 2, mode="bilinear", align_corners=True)
        z_att, feat = self.att(small)
        with torch.no_grad():  # the maps and the sampler carry no gradient (BlockGrad)
            m = trilinear(feat.detach(), BETA)
            keep = distinct_mask(m)
            smap = (m * keep[:, :, None, None]).sum(1)
            ch = torch.multinomial(keep.float(), 1)[:, 0]  # one random distinct channel per sample
            dmap = m[torch.arange(N), ch]
            x2 = torch.cat([attention_sample(img, dmap, p["out"], False, DENSE, ITERS),
                            attention_sample(img, smap, p["out"], True, DENSE, ITERS)])
        pooled = self.master(x2)  # one batch of 2N: [detail; structure]
        f_part, f_master = pooled[:N], pooled[N:]
        z_part, z_master = self.heads.part_fc(f_part), self.heads.master_fc(f_master)
        z_aux = self.heads.shared_fc(pooled)
        ce = lambda z: F.cross_entropy(z, labels, reduction="sum")  # noqa: E731
        q = F.log_softmax(z_master / TEMPERATURE, dim=1)
        pt = torch.softmax(z_part / TEMPERATURE, dim=1)  # the soft target is not detached (official)
        distill = -(pt * q).sum()
        return (ATT_SCALE * ce(z_att) + HEAD_SCALE * (ce(z_part) + ce(z_master) + ce(z_aux[:N]) + ce(z_aux[N:]))
                + DISTILL_WEIGHT * distill)


class BaselineNet(nn.Module):
    def __init__(self, p):
        super().__init__()
        self.p = p
        self.master = ResNet(p["master_backbone"])
        self.heads = Heads(["fc"], self.master.features, p["classes"])

    def loss(self, img, labels):
        x = F.interpolate(img, size=(self.p["out"],) * 2, mode="bilinear", align_corners=True)
        return F.cross_entropy(self.heads.fc(self.master(x)), labels, reduction="sum")


def init_torchvision(model):
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        # nn.Linear's default is U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias, as ours


# ---- names, memory, timing -------------------------------------------------------------------------

def table(model):
    """'name shape trainable' lines like bench_train_step --dump-names (num_batches_tracked, which
    PyTorch keeps for momentum=None only and our BN does not have, is left out)."""
    params = {n for n, _ in model.named_parameters()}
    rows = []
    for n, t in model.state_dict().items():
        if n.endswith("num_batches_tracked"):
            continue
        rows.append(f"{n} {','.join(str(d) for d in t.shape)} {1 if n in params else 0}")
    return sorted(rows)


def check_names(model, path):
    with open(path) as f:
        ours = sorted(line.strip() for line in f if line.strip())
    theirs = table(model)
    if ours != theirs:
        a, b = set(ours), set(theirs)
        msg = [f"parameter tables differ: {len(ours)} in {path}, {len(theirs)} in the PyTorch model"]
        msg += [f"  only in C++:     {x}" for x in sorted(a - b)[:20]]
        msg += [f"  only in PyTorch: {x}" for x in sorted(b - a)[:20]]
        raise SystemExit("\n".join(msg))
    return len(ours)


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def rss_now_mib():
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return -1.0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="demo", choices=["demo", "paper"])
    ap.add_argument("--model", default="tasn", choices=["tasn", "baseline"])
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--lr", type=float, default=None, help="default: the preset's base / 25, as bench_train_step")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--compile", action="store_true", help="torch.compile the forward + loss (and so the backward)")
    ap.add_argument("--cold-compile", action="store_true",
                    help="compile with an empty Inductor cache (otherwise a re-run reuses the on-disk cache and "
                         "compile_s is mostly cache loading)")
    ap.add_argument("--channels-last", action="store_true", help="NHWC activations (not our layout; off by default)")
    ap.add_argument("--names", default=None, help="bench_train_step --dump-names FILE: checked before timing")
    ap.add_argument("--skip-name-check", action="store_true")
    ap.add_argument("--json", default=None, help="also write the result here")
    a = ap.parse_args()
    if a.names is None and not a.skip_name_check:
        ap.error("--names FILE (from bench_train_step --dump-names) is required, or --skip-name-check")

    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    p = preset(a.preset)
    N = a.batch or p["batch"]
    lr = a.lr if a.lr is not None else p["lr"] / 25
    rss_start = rss_now_mib()

    model = TasnNet(p) if a.model == "tasn" else BaselineNet(p)
    init_torchvision(model)
    checked = check_names(model, a.names) if a.names else 0
    model.train()
    fmt = torch.channels_last if a.channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=p["momentum"], weight_decay=p["weight_decay"])
    img = (torch.rand(N, 3, p["image"], p["image"]) - 0.5) * 4  # the trainer's normalised range
    img = img.contiguous(memory_format=fmt)
    labels = torch.randint(0, p["classes"], (N,))
    rescale = 1.0 / N  # our SGD rescales the summed gradients by 1 / batch; here the loss is scaled

    loss_fn = model.loss
    if a.compile:
        loss_fn = torch.compile(model.loss)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(img, labels)
        (loss * rescale).backward()
        opt.step()
        return loss.item()

    compile_s = None
    if a.compile:  # the first call compiles (forward and backward); timed apart
        t0 = time.perf_counter()
        step()
        compile_s = time.perf_counter() - t0
    rss_model = rss_now_mib()
    ms, losses = [], []
    for s in range(a.warmup + a.steps):
        t0 = time.perf_counter()
        loss = step()
        dt = (time.perf_counter() - t0) * 1e3
        if not (loss == loss and abs(loss) != float("inf")):
            raise SystemExit(f"step {s}: loss {loss} is not finite: a diverged step is not a timing; lower --lr")
        losses.append(loss)
        if s >= a.warmup:
            ms.append(dt)
    med = statistics.median(ms) if ms else None
    out = {
        "impl": "torch-compile" if a.compile else "torch-eager",
        "torch": torch.__version__, "preset": a.preset, "model": a.model, "batch": N,
        "threads": torch.get_num_threads(), "warmup": a.warmup, "steps": a.steps, "lr": lr,
        "channels_last": a.channels_last, "names_checked": checked,
        "trainable_params": sum(t.numel() for t in model.parameters()),
        "median_ms": med, "min_ms": min(ms) if ms else None, "mean_ms": statistics.fmean(ms) if ms else None,
        "images_per_s": 1000.0 * N / med if med else None,
        "compile_s": compile_s, "cold_compile": a.cold_compile,
        "peak_rss_mib": peak_rss_mib(), "rss_start_mib": rss_start, "rss_model_mib": rss_model,
        "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None, "step_ms": ms,
    }
    print(json.dumps(out))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
