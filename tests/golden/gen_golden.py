#!/usr/bin/python3
"""Writes the PyTorch golden data the C++ tests compare against (tests/golden/*.bin).

Run with Debian's PyTorch (python3-torch installs into the system Python, /usr/bin/python3):

    /usr/bin/python3 tests/golden/gen_golden.py            # writes tests/golden/*.bin

Inputs are not stored: they come from the splitmix64 generator below, which
tests/support/test_support.h reproduces bit for bit. Everything is computed in float64 with
torch's own softmax / bmm and autograd, independently of the C++ code. Large tensors are stored
as samples (values at generator-chosen flat indices) plus per-row sums, so every file stays far
below 1 MiB.

File format (little-endian): b"TASNGLD1", uint32 count, then per tensor: uint32 name length, name
(utf-8), uint32 ndim, int64 dims[ndim], float64 data.
"""
import os
import struct
import sys

import numpy as np
import torch

MASK = (1 << 64) - 1
HERE = os.path.dirname(os.path.abspath(__file__))


def splitmix64(x):
    """Vectorised splitmix64 over a numpy uint64 array (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        z = x
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def uniform(seed, n, lo, hi):
    """Matches tasn::test::random_tensor: uniform [lo, hi), rounded to float32, as float64."""
    with np.errstate(over="ignore"):
        key = np.uint64((seed * 0x100000001B3) & MASK)
    idx = np.arange(n, dtype=np.uint64)
    h = splitmix64(key ^ idx)
    u = (h >> np.uint64(11)).astype(np.float64) * 2.0 ** -53
    v = lo + (hi - lo) * u
    return torch.from_numpy(v.astype(np.float32).astype(np.float64))


def sample_indices(seed, count, numel):
    """Flat indices chosen by the generator (tasn::test::sample_indices)."""
    idx = np.arange(count, dtype=np.uint64)
    with np.errstate(over="ignore"):
        key = np.uint64((seed * 0x100000001B3) & MASK)
    h = splitmix64(key ^ idx)
    return (h % np.uint64(numel)).astype(np.int64)


def write(path, tensors):
    with open(path, "wb") as f:
        f.write(b"TASNGLD1")
        f.write(struct.pack("<I", len(tensors)))
        for name, t in tensors.items():
            t = torch.as_tensor(t, dtype=torch.float64).contiguous()
            nb = name.encode()
            f.write(struct.pack("<I", len(nb)))
            f.write(nb)
            f.write(struct.pack("<I", t.dim()))
            f.write(struct.pack("<%dq" % t.dim(), *t.shape))
            f.write(t.numpy().astype("<f8").tobytes())
    print("wrote %s (%d bytes)" % (os.path.relpath(path), os.path.getsize(path)))


def trilinear(x, beta):
    """SPEC section 1, written with torch ops; x (N, C, H, W) float64."""
    n, c, h, w = x.shape
    xf = x.reshape(n, c, h * w)
    s = torch.softmax(beta * xf, dim=2)
    b = torch.bmm(s, xf.transpose(1, 2))
    a = torch.softmax(b, dim=2)
    return torch.bmm(a, xf).reshape(n, c, h, w), a


def trilinear_case(name, shape, beta, lo, hi, seed, full):
    n, c, h, w = shape
    numel = n * c * h * w
    x = uniform(seed, numel, lo, hi).reshape(shape).requires_grad_(True)
    dm = uniform(seed + 1, numel, -1.0, 1.0).reshape(shape)
    m, a = trilinear(x, beta)
    (dx,) = torch.autograd.grad(m, x, dm)
    out = {
        "shape": torch.tensor(shape, dtype=torch.float64),
        "params": torch.tensor([beta, lo, hi, seed], dtype=torch.float64),
        "m_rowsum": m.detach().reshape(n * c, h * w).sum(1),
        "dx_rowsum": dx.reshape(n * c, h * w).sum(1),
        "a_rowsum": a.detach().sum(2).reshape(-1),
    }
    if full:
        out["m"] = m.detach()
        out["dx"] = dx
    else:
        idx = sample_indices(seed + 2, 4096, numel)
        out["sample_idx"] = torch.from_numpy(idx.astype(np.float64))
        out["m_sample"] = m.detach().reshape(-1)[idx]
        out["dx_sample"] = dx.reshape(-1)[idx]
    write(os.path.join(HERE, "trilinear_%s.bin" % name), out)


def distillation_case():
    """F.cross_entropy with probability targets (CE form) and F.kl_div (KL form), per sample,
    with gradients for both logits (the teacher is not detached, as in the official graph)."""
    import torch.nn.functional as F
    n, k = 6, 13
    out = {"shape": torch.tensor([n, k], dtype=torch.float64)}
    zs0 = uniform(21, n * k, -5.0, 5.0).reshape(n, k)
    zt0 = uniform(22, n * k, -5.0, 5.0).reshape(n, k)
    w = uniform(23, n, -1.0, 1.0)  # upstream gradient of the per-sample losses
    for T in (10.0, 2.0):
        for form in ("ce", "kl"):
            zs = zs0.clone().requires_grad_(True)
            zt = zt0.clone().requires_grad_(True)
            p = torch.softmax(zt / T, dim=1)
            if form == "ce":
                rows = F.cross_entropy(zs / T, p, reduction="none")
            else:
                rows = F.kl_div(torch.log_softmax(zs / T, dim=1), p, reduction="none").sum(1)
            gs, gt = torch.autograd.grad((rows * w).sum(), (zs, zt))
            tag = "%s_T%g" % (form, T)
            out[tag + "_rows"] = rows.detach()
            out[tag + "_dstudent"] = gs
            out[tag + "_dteacher"] = gt
        zs = zs0.clone()
        out["kl_T%g_batchmean" % T] = F.kl_div(torch.log_softmax(zs / T, dim=1),
                                                torch.softmax(zt0 / T, dim=1), reduction="batchmean")
    out["dloss"] = w
    write(os.path.join(HERE, "losses_distillation.bin"), out)


def cross_entropy_case():
    """F.cross_entropy with integer labels, ignore_index and label_smoothing."""
    import torch.nn.functional as F
    n, k = 9, 7
    labels = torch.tensor([3, 0, -100, 6, 2, 2, 5, -100, 1])
    z0 = uniform(31, n * k, -4.0, 4.0).reshape(n, k)
    out = {"shape": torch.tensor([n, k], dtype=torch.float64),
           "labels": labels.to(torch.float64)}
    for eps in (0.0, 0.1):
        z = z0.clone().requires_grad_(True)
        rows = F.cross_entropy(z, labels, ignore_index=-100, label_smoothing=eps, reduction="none")
        mean = F.cross_entropy(z, labels, ignore_index=-100, label_smoothing=eps, reduction="mean")
        (g,) = torch.autograd.grad(mean, z)
        tag = "eps%g" % eps
        out[tag + "_rows"] = rows.detach()
        out[tag + "_mean"] = mean.detach()
        out[tag + "_dlogits_mean"] = g
    write(os.path.join(HERE, "losses_cross_entropy.bin"), out)


def grid_sample_case():
    """torch.nn.functional.grid_sample (bilinear, zeros, align_corners=True): forward, and the
    gradients for the image and the grid, with grid values on and just outside the borders."""
    import torch.nn.functional as F
    n, c, hi, wi, ho, wo = 2, 3, 5, 7, 4, 6
    img = uniform(41, n * c * hi * wi, -1.0, 1.0).reshape(n, c, hi, wi).requires_grad_(True)
    grid = uniform(42, n * ho * wo * 2, -1.1, 1.1).reshape(n, ho, wo, 2)
    specials = [-1.0, 1.0, -1.0000001, 1.0000001, -1.05, 1.05, 0.0, -1.3]
    flat = grid.reshape(-1)
    for i, v in enumerate(specials):
        flat[3 * i + 1] = v
    grid = flat.reshape(n, ho, wo, 2).to(torch.float32).to(torch.float64).requires_grad_(True)
    out = F.grid_sample(img, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    dout = uniform(43, out.numel(), -1.0, 1.0).reshape(out.shape)
    dimg, dgrid = torch.autograd.grad(out, (img, grid), dout)
    write(os.path.join(HERE, "grid_sample.bin"), {
        "sizes": torch.tensor([n, c, hi, wi, ho, wo], dtype=torch.float64),
        "grid": grid.detach(), "out": out.detach(), "dimg": dimg, "dgrid": dgrid})


def nn_layers_case():
    """Per-layer forward golden data for the example trainer's layers (examples/nn/layers.h)."""
    import torch.nn.functional as F
    x = uniform(31, 2 * 3 * 9 * 8, -1.0, 1.0).reshape(2, 3, 9, 8)
    w = uniform(32, 4 * 3 * 3 * 3, -1.0, 1.0).reshape(4, 3, 3, 3)
    b = uniform(33, 4, -1.0, 1.0)
    gamma = uniform(34, 3, 0.5, 1.5)
    beta = uniform(35, 3, -1.0, 1.0)
    rm, rv = torch.zeros(3), torch.ones(3)
    bn_train = F.batch_norm(x, rm, rv, gamma, beta, training=True, momentum=0.1, eps=1e-5)
    bn_eval = F.batch_norm(x, rm, rv, gamma, beta, training=False, eps=1e-5)
    write(os.path.join(HERE, "nn_layers.bin"), {
        "conv": F.conv2d(x, w, b, stride=2, padding=2, dilation=2),
        "bn_train": bn_train, "bn_running_var": rv.clone(), "bn_eval": bn_eval,
        "maxpool": F.max_pool2d(x, 3, 2, 1),
        "resize_ac": F.interpolate(x, size=(5, 13), mode="bilinear", align_corners=True),
        "resize_hp": F.interpolate(x, size=(5, 13), mode="bilinear", align_corners=False)})


def fnv1a64(name):
    h = 0xCBF29CE484222325
    for b in name.encode():
        h = ((h ^ b) * 0x100000001B3) & MASK
    return h


def formula_value(name, shape):
    """Deterministic parameter / buffer values from (name, element index); tasn::test::formula_tensor
    in tests/test_nn_resnet.cpp reproduces them bit for bit."""
    n = 1
    for d in shape:
        n *= d
    seed = fnv1a64(name)
    if name.endswith("running_var") or (name.endswith(".weight") and len(shape) == 1):
        lo, hi = 0.5, 1.5          # BN weight, running variance
    elif len(shape) == 1:
        lo, hi = -0.1, 0.1         # biases, running mean
    else:
        a = (3.0 / (n // shape[0])) ** 0.5  # conv / fc weights: U(-a, a), a = sqrt(3 / fan_in)
        lo, hi = -a, a
    return uniform(seed, n, lo, hi).reshape(shape)


def resnet_case(arch):
    """torchvision ResNet with formula weights, 10 classes, input 2x3x64x64, in float64: logits in
    evaluation and training mode, the input gradient and parameter gradients of sum(w * logits)."""
    import torchvision
    model = getattr(torchvision.models, arch)(num_classes=10).double()
    with torch.no_grad():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if name.endswith("num_batches_tracked"):
                continue
            t.copy_(formula_value(name, tuple(t.shape)))
    x = uniform(900, 2 * 3 * 64 * 64, -1.0, 1.0).reshape(2, 3, 64, 64)
    w = uniform(901, 2 * 10, -1.0, 1.0).reshape(2, 10)
    out = {}
    model.eval()
    with torch.no_grad():
        out["logits_eval"] = model(x)
    model.train()
    xg = x.clone().requires_grad_(True)
    logits = model(xg)
    (logits * w).sum().backward()
    out["logits_train"] = logits.detach()
    out["dx"] = xg.grad
    out["bn1.running_var"] = model.bn1.running_var.detach().clone()
    out["conv1.weight.grad"] = model.conv1.weight.grad
    out["fc.weight.grad"] = model.fc.weight.grad
    names = [n for n, _ in model.named_parameters()]
    out["grad_norms"] = torch.tensor([p.grad.norm().item() for _, p in model.named_parameters()])
    out["param_count"] = torch.tensor([float(len(names))])
    write(os.path.join(HERE, "resnet_%s.bin" % arch), out)
    with open(os.path.join(HERE, "resnet_%s_names.txt" % arch), "w") as f:
        f.write("\n".join(names) + "\n")


def attention_net_case():
    """TASN attention net in PyTorch: torchvision resnet18 with stage strides (1, 1, 2, 1), a
    multi-dilation head (conv1 shared over dilations 1, 2; conv2 over 1, 2, 3; ReLU each, summed),
    BN, ReLU, average pool, FC (10 classes); formula weights; float64; input 2x3x64x64."""
    import torchvision
    import torch.nn.functional as F
    model = torchvision.models.resnet18(num_classes=10).double()
    for layer, stride in ((model.layer2, 1), (model.layer3, 2), (model.layer4, 1)):
        layer[0].conv1.stride = (stride, stride)
        layer[0].downsample[0].stride = (stride, stride)
    c = 512
    head = {"head.conv1.weight": (c, c, 3, 3), "head.conv1.bias": (c,), "head.conv2.weight": (c, c, 3, 3),
            "head.conv2.bias": (c,), "head.bn.weight": (c,), "head.bn.bias": (c,),
            "head.bn.running_mean": (c,), "head.bn.running_var": (c,), "head.fc.weight": (10, c), "head.fc.bias": (10,)}
    hp = {n: formula_value(n, s).clone().requires_grad_(not ("running" in n)) for n, s in head.items()}
    with torch.no_grad():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if not name.endswith("num_batches_tracked"):
                t.copy_(formula_value(name, tuple(t.shape)))

    def forward(x, training):
        m = model
        h = m.maxpool(m.relu(m.bn1(m.conv1(x))))
        h = m.layer4(m.layer3(m.layer2(m.layer1(h))))
        h1 = sum(F.relu(F.conv2d(h, hp["head.conv1.weight"], hp["head.conv1.bias"], padding=d, dilation=d)) for d in (1, 2))
        h2 = sum(F.relu(F.conv2d(h1, hp["head.conv2.weight"], hp["head.conv2.bias"], padding=d, dilation=d)) for d in (1, 2, 3))
        f = F.relu(F.batch_norm(h2, hp["head.bn.running_mean"], hp["head.bn.running_var"], hp["head.bn.weight"],
                                hp["head.bn.bias"], training=training, momentum=0.1, eps=1e-5))
        return F.linear(f.mean(dim=(2, 3)), hp["head.fc.weight"], hp["head.fc.bias"]), f

    x = uniform(910, 2 * 3 * 64 * 64, -1.0, 1.0).reshape(2, 3, 64, 64).requires_grad_(True)
    w = uniform(911, 2 * 10, -1.0, 1.0).reshape(2, 10)
    model.train()
    logits, feat = forward(x, True)
    (logits * w).sum().backward()
    write(os.path.join(HERE, "attention_net.bin"), {
        "logits_train": logits.detach(), "feature_sum": feat.detach().sum(dim=1).reshape(-1),
        "dx": x.grad, "head_conv1_grad_norm": hp["head.conv1.weight"].grad.norm().reshape(1),
        "head_conv2_grad_norm": hp["head.conv2.weight"].grad.norm().reshape(1),
        "conv1_grad_norm": model.conv1.weight.grad.norm().reshape(1)})


def converter_case():
    """A small file written by scripts/convert_torchvision.py's writer (format compatibility)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "convert_torchvision", os.path.join(HERE, "..", "..", "scripts", "convert_torchvision.py"))
    conv = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conv)
    names = {"conv1.weight": (4, 3, 7, 7), "bn1.weight": (4,), "bn1.bias": (4,),
             "bn1.running_mean": (4,), "bn1.running_var": (4,)}
    conv.write_safetensors(os.path.join(HERE, "converter_sample.safetensors"),
                           {n: formula_value(n, s) for n, s in names.items()}, {"arch": "sample"})
    print("wrote tests/golden/converter_sample.safetensors")


def main():
    torch.set_default_dtype(torch.float64)
    print("torch", torch.__version__, file=sys.stderr)
    trilinear_case("small", (2, 4, 3, 5), 7.0, -1.0, 1.0, 11, full=True)
    trilinear_case("beta1", (3, 16, 7, 6), 1.0, -2.0, 2.0, 12, full=True)
    trilinear_case("tasn", (2, 512, 28, 28), 7.0, 0.0, 3.0, 13, full=False)
    distillation_case()
    cross_entropy_case()
    grid_sample_case()
    nn_layers_case()
    resnet_case("resnet18")
    resnet_case("resnet50")
    converter_case()
    attention_net_case()


if __name__ == "__main__":
    main()
