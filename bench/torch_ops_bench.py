#!/usr/bin/env python3
"""torch.ops.tasn against the PyTorch composites a user would write instead, interleaved in one
process (rounds alternate ours / theirs; the median of each is reported with the ratio).

    PYTHONPATH=build/python python3 bench/torch_ops_bench.py --device cpu [--json out.json]
    /work/torchvenv/bin/python bench/torch_ops_bench.py --device cuda     # after pip install ./python

Cases (TASN's paper sizes, float32, forward + backward where the operator has one):
  trilinear_attention (8, 512, 28, 28)      vs softmax + bmm (bench/torch_baseline.py)
  attention_sample (8, 3, 512, 512) -> 224  vs interpolate + amax + magnify + inverse CDF +
                                               grid_sample (bench/torch_train_step.py)
  sample_grid (8, 3, 512, 512) -> 224       vs F.grid_sample(align_corners=True)
  softmax_cross_entropy (96, 200)           vs F.cross_entropy
  distillation_loss (96, 200), T = 10       vs -(softmax(t/T) * log_softmax(s/T)).sum()
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tasn_torch as tt  # noqa: E402
from torch_baseline import trilinear  # noqa: E402
from torch_train_step import attention_sample as composite_attention_sample  # noqa: E402


def timer(device):
    def run(fn, reps):
        times = []
        for _ in range(reps):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)
    return run


def cases(dev):
    g = torch.Generator().manual_seed(0)

    def r(*s, grad=False, scale=1.0):
        return (torch.rand(*s, generator=g) * scale).to(dev).requires_grad_(grad)

    x = r(8, 512, 28, 28, grad=True, scale=3)
    img = r(8, 3, 512, 512, grad=True)
    att = r(8, 28, 28)
    grid = (r(8, 224, 224, 2) * 2 - 1).requires_grad_()
    z = r(96, 200, grad=True, scale=20)
    t = r(96, 200, scale=20)
    y = torch.randint(0, 200, (96,), generator=g).to(dev)

    def fb(f):
        def go():
            f().sum().backward()
        return go

    T = 10.0
    return [
        ("trilinear fwd+bwd (8,512,28,28)", fb(lambda: tt.trilinear_attention(x)), fb(lambda: trilinear(x))),
        ("attention_sample fwd+bwd 512->224", fb(lambda: tt.attention_sample(img, att, (224, 224), squared=True)[0]),
         fb(lambda: composite_attention_sample(img, att, 224, True, 4.0, 5))),
        ("sample_grid fwd+bwd 512->224", fb(lambda: tt.sample_grid(img, grid)),
         fb(lambda: F.grid_sample(img, grid, mode="bilinear", padding_mode="zeros", align_corners=True))),
        ("cross_entropy fwd+bwd (96,200)", fb(lambda: tt.softmax_cross_entropy(z, y)),
         fb(lambda: F.cross_entropy(z, y))),
        ("distillation fwd+bwd (96,200)", fb(lambda: tt.distillation_loss(z, t, T)),
         fb(lambda: -(torch.softmax(t / T, 1) * torch.log_softmax(z / T, 1)).sum(1).mean())),
    ]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--json")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                    help="CPU threads for PyTorch (the tasn operators use OpenMP's: OMP_NUM_THREADS, default all cores)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
    run = timer(dev)
    print("torch %s, %s (%s)" % (torch.__version__, dev, torch.cuda.get_device_name() if dev.type == "cuda"
                                 else "%d threads" % torch.get_num_threads()))
    rows = []
    for name, ours, theirs in cases(dev):
        ours()
        theirs()  # warm-up (allocator, autotuning)
        o, p = [], []
        for _ in range(a.rounds):
            o.append(run(ours, a.reps))
            p.append(run(theirs, a.reps))
        mo, mp = statistics.median(o), statistics.median(p)
        rows.append(dict(case=name, tasn_ms=mo * 1e3, torch_ms=mp * 1e3, speedup=mp / mo))
        print("%-36s tasn %9.3f ms   torch composite %9.3f ms   %5.2fx" % (name, mo * 1e3, mp * 1e3, mp / mo))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(dict(torch=torch.__version__, device=str(dev), rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
