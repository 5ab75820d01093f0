#!/usr/bin/env python3
"""PyTorch composite of the tasn operators, timed as the side-by-side baseline.

Trilinear attention (SPEC section 1) as torch.softmax + torch.bmm, forward and autograd backward,
at the sizes of bench/bench_trilinear_{cpu,cuda}: N in {8, 32}, C = 512, 28 x 28. Losses (SPEC
section 4) as F.cross_entropy (soft targets for distillation, labels for the heads), loss and
gradient together, at the sizes of bench/bench_losses_{cpu,cuda}: (96, 200) and (256, 5089).

    python3 bench/torch_baseline.py --device cuda --json out.json      # GPU machine
    /usr/bin/python3 bench/torch_baseline.py --device cpu               # Debian's CPU PyTorch

CUDA timings use CUDA events (best of the repetitions); CPU timings use perf_counter.
"""
import argparse
import json
import os
import time

import torch


def trilinear(x, beta=7.0):
    n, c, h, w = x.shape
    xf = x.reshape(n, c, h * w)
    s = torch.softmax(beta * xf, dim=2)
    a = torch.softmax(torch.bmm(s, xf.transpose(1, 2)), dim=2)
    return torch.bmm(a, xf).reshape(n, c, h, w)


def best_time(fn, device, reps):
    best = float("inf")
    for _ in range(reps):
        if device == "cuda":
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            fn(prepare=True)
            start.record()
            fn(prepare=False)
            stop.record()
            torch.cuda.synchronize()
            best = min(best, start.elapsed_time(stop) * 1e-3)
        else:
            fn(prepare=True)
            t0 = time.perf_counter()
            fn(prepare=False)
            best = min(best, time.perf_counter() - t0)
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json", default=None)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--batches", default="8,32")
    args = ap.parse_args()
    dev = args.device
    if dev == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    dtypes = [torch.float32] if dev == "cpu" else [torch.float32, torch.float16, torch.bfloat16]
    if dev == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # tasn uses plain FP32 GEMMs for float
    rows = []
    print("torch %s on %s (%s)" % (torch.__version__, dev,
          torch.cuda.get_device_name() if dev == "cuda" else "%d threads" % torch.get_num_threads()))
    for n in [int(b) for b in args.batches.split(",")]:
        c, p = 512, 28 * 28
        for dt in dtypes:
            g = torch.Generator(device="cpu").manual_seed(0)
            x = (torch.rand(n, c, 28, 28, generator=g) * 3).to(dev, dt).requires_grad_(True)
            dm = (torch.rand(n, c, 28, 28, generator=g) * 2 - 1).to(dev, dt)
            state = {}

            def fwd(prepare):
                if not prepare:
                    with torch.no_grad():
                        trilinear(x)

            def bwd(prepare):
                if prepare:
                    x.grad = None
                    state["y"] = trilinear(x)
                else:
                    state["y"].backward(dm)

            for name, fn, prods in (("forward", fwd, 2), ("backward", bwd, 4)):
                fn(True)
                fn(False)
                sec = best_time(fn, dev, args.reps)
                flops = prods * 2.0 * n * c * c * p
                row = {"name": "torch_trilinear/%s/%s/%d" % (name, str(dt).replace("torch.", ""), n),
                       "ms": sec * 1e3, "GFLOP/s": flops / sec * 1e-9}
                rows.append(row)
                print("%-42s %9.3f ms %9.1f GFLOP/s" % (row["name"], row["ms"], row["GFLOP/s"]))
    import torch.nn.functional as F
    for n, k in ((96, 200), (256, 5089)):
        for dt in dtypes:
            g = torch.Generator(device="cpu").manual_seed(1)
            zs = (torch.rand(n, k, generator=g) * 20 - 10).to(dev, dt).requires_grad_(True)
            zt = (torch.rand(n, k, generator=g) * 20 - 10).to(dev, dt)
            y = torch.randint(0, k, (n,), generator=g).to(dev)

            def distill(prepare):
                if prepare:
                    zs.grad = None
                    return
                T = 10.0
                F.cross_entropy(zs / T, torch.softmax(zt / T, dim=1)).backward()

            def xent(prepare):
                if prepare:
                    zs.grad = None
                    return
                (0.5 * F.cross_entropy(zs, y)).backward()

            for name, fn, reads in (("distillation", distill, 2), ("cross_entropy", xent, 1)):
                fn(True)
                fn(False)
                sec = best_time(fn, dev, args.reps)
                nbytes = (reads + 1) * n * k * zs.element_size()
                row = {"name": "torch_%s/%s/%d/%d" % (name, str(dt).replace("torch.", ""), n, k),
                       "us": sec * 1e6, "GB/s": nbytes / sec * 1e-9}
                rows.append(row)
                print("%-42s %9.1f us %9.1f GB/s" % (row["name"], row["us"], row["GB/s"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": dev, "torch": torch.__version__, "results": rows}, f, indent=1)


if __name__ == "__main__":
    main()
