#!/usr/bin/env python3
"""Train TASN (and the baseline) in PyTorch with torch.ops.tasn: the network of SPEC section 5
(examples/pytorch/tasn_net.py), on the built-in generated data set (the C++ trainer's images,
through tasn_torch.synthetic_images), on CUB-200-2011 or on list files. One process, or many
through torch.distributed (DDP; `torchrun`): gloo on the CPU, NCCL on GPUs. docs/pytorch.md.

    PYTHONPATH=build/python python3 examples/pytorch/train_tasn.py                  # demo, both models
    python3 -m torch.distributed.run --nproc_per_node 2 examples/pytorch/train_tasn.py --model tasn
    python3 examples/pytorch/train_tasn.py --preset paper --data cub --data-root CUB_200_2011 \\
        --device cuda --weights resnet50.pth --att-weights resnet18.pth

Semantics shared with the C++ trainer: losses summed over the batch, gradients of the sum divided
by the global batch (DDP averages the ranks' gradients of their local sums divided by the local
batch: the same), --batch is the global batch and the ranks' batches side by side are the
one-process batch (GlobalBatches), so the detail channel of a rank's sample i is that of sample
rank x local + i of the one-process batch (first_sample).
"""
import argparse
import hashlib
import json
import math
import os
import sys
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tasn_torch as tt  # noqa: E402
from tasn_net import BaselineNet, TasnNet, load_torchvision, preset  # noqa: E402

MEAN_255 = (123.68, 116.779, 103.939)  # SPEC 5: per-channel mean subtracted, no std scaling


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="demo", choices=["demo", "paper"])
    ap.add_argument("--model", default="both", choices=["both", "tasn", "baseline"])
    ap.add_argument("--data", default="generated", choices=["generated", "cub", "list"])
    ap.add_argument("--data-root", help="CUB_200_2011 folder (images.txt, ...) or the root of the list files' paths")
    ap.add_argument("--train-list", help="--data list: lines 'relative/path label'")
    ap.add_argument("--test-list")
    ap.add_argument("--train-size", type=int, help="generated images for training (demo: 4000)")
    ap.add_argument("--test-size", type=int, help="generated images for testing (demo: 1000)")
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--batch", type=int, help="global batch (divided among the ranks)")
    ap.add_argument("--lr", type=float)
    ap.add_argument("--max-steps", type=int, default=0, help="stop after this many steps (0: all epochs)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=0, help="CPU threads per process (0: cores / local ranks)")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers for image files")
    ap.add_argument("--weights", help="torchvision ImageNet resnet50 state dict for the master/part net")
    ap.add_argument("--att-weights", help="torchvision ImageNet resnet18 state dict for the attention net")
    ap.add_argument("--out", default="tasn-torch-run", help="checkpoints and metrics.jsonl go here")
    ap.add_argument("--overwrite", action="store_true", help="allow --out to hold an earlier run")
    ap.add_argument("--freeze-bn", action="store_true",
                    help="batch norm uses (and keeps) its running statistics while training (fine-tuning with small "
                         "per-rank batches; makes N ranks x B/N equal 1 process x B up to rounding)")
    ap.add_argument("--save-rank-weights", action="store_true",
                    help="each rank also writes its final weights (tests: the ranks must be identical)")
    return ap.parse_args(argv)


# ---- distributed ----------------------------------------------------------------------------------

class Dist:
    def __init__(self, device):
        self.size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.local_size = int(os.environ.get("LOCAL_WORLD_SIZE", str(self.size)))
        if self.size > 1:
            dist.init_process_group("nccl" if device == "cuda" else "gloo")
        self.device = torch.device("cuda", self.local_rank) if device == "cuda" else torch.device("cpu")
        if device == "cuda":
            torch.cuda.set_device(self.device)

    @property
    def leader(self):
        return self.rank == 0

    def sum(self, values):
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        if self.size > 1:
            dist.all_reduce(t)
        return t.tolist()

    def same_everywhere(self, digest):
        if self.size == 1:
            return True
        got = [None] * self.size
        dist.all_gather_object(got, digest)
        return all(g == got[0] for g in got)

    def broadcast_buffers(self, module):
        """Rank 0's batch-norm statistics everywhere (DDP broadcasts them before every training
        forward; the last forward updated each rank's copy from its own batch)."""
        if self.size > 1:
            for b in module.buffers():
                dist.broadcast(b, 0)

    def close(self):
        if self.size > 1:
            dist.destroy_process_group()


def log(d, *a):
    if d.leader:
        print(*a, flush=True)


# ---- data -----------------------------------------------------------------------------------------

class GeneratedSplit(torch.utils.data.Dataset):
    """The C++ trainer's generated images, normalised as it does: (x / 255 - 0.5) * 4."""

    def __init__(self, n, split, seed, size, classes):
        self.images, self.labels, _ = tt.synthetic_images(n, split, seed, size, 16, 6, classes)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return (self.images[i].float() / 255 - 0.5) * 4, self.labels[i]


class ImageList(torch.utils.data.Dataset):
    """(path, label) pairs; training: shorter side to `size`, random crop, flip; else centre crop."""

    def __init__(self, items, size, train):
        from torchvision import transforms as T
        self.items = items
        aug = [T.RandomCrop(size), T.RandomHorizontalFlip()] if train else [T.CenterCrop(size)]
        self.tf = T.Compose([T.Resize(size)] + aug + [T.PILToTensor()])
        self.mean = torch.tensor(MEAN_255).view(3, 1, 1)

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        from PIL import Image
        path, label = self.items[i]
        with Image.open(path) as im:
            x = self.tf(im.convert("RGB"))
        return x.float() - self.mean, label


def cub_items(root):
    def table(name):
        path = os.path.join(root, name)
        try:
            with open(path) as f:
                return dict(line.split() for line in f if line.strip())
        except OSError as e:
            raise SystemExit("--data cub: cannot read %s: %s" % (path, e.strerror))
    images, labels, split = table("images.txt"), table("image_class_labels.txt"), table("train_test_split.txt")
    train, test = [], []
    for k, rel in images.items():
        (train if split[k] == "1" else test).append((os.path.join(root, "images", rel), int(labels[k]) - 1))
    return train, test


def list_items(path, root):
    items = []
    try:
        with open(path) as f:
            for no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                parts = line.rsplit(None, 1)
                if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                    raise SystemExit("%s:%d: expected 'path label', got %r" % (path, no, line.strip()))
                items.append((os.path.join(root or "", parts[0]), int(parts[1])))
    except OSError as e:
        raise SystemExit("cannot read %s: %s" % (path, e.strerror))
    return items


def make_data(a, p):
    if a.data == "generated":
        return (GeneratedSplit(a.train_size or p["train_size"], "train", a.seed, p["image"], min(p["classes"], 8)),
                GeneratedSplit(a.test_size or p["test_size"], "test", a.seed, p["image"], min(p["classes"], 8)))
    if a.data == "cub":
        if not a.data_root:
            raise SystemExit("--data cub needs --data-root (the CUB_200_2011 folder)")
        train, test = cub_items(a.data_root)
    else:
        if not (a.train_list and a.test_list):
            raise SystemExit("--data list needs --train-list and --test-list")
        train, test = list_items(a.train_list, a.data_root), list_items(a.test_list, a.data_root)
    return ImageList(train, p["image"], True), ImageList(test, p["image"], False)


class GlobalBatches(torch.utils.data.Sampler):
    """The one-process run's batches, each cut into the ranks' contiguous shares (as the C++
    trainer's BatchLoader shards): epoch e shuffles with (seed, e), global batch k is positions
    [kB, (k+1)B) of that permutation, and rank r takes [kB + rb, kB + (r+1)b), b = B / ranks. So
    sample i of rank r's batch is sample rb + i of the one-process batch (first_sample = rb)."""

    def __init__(self, n, batch, rank, ranks, seed):
        self.n, self.batch, self.rank, self.local, self.seed, self.epoch = n, batch, rank, batch // ranks, seed, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return self.n // self.batch

    def __iter__(self):
        g = torch.Generator()
        g.manual_seed(self.seed * 1000003 + self.epoch)
        perm = torch.randperm(self.n, generator=g).tolist()
        for k in range(len(self)):
            start = k * self.batch + self.rank * self.local
            yield perm[start:start + self.local]


def set_training(net, freeze_bn):
    """Training mode; with --freeze-bn the batch norms normalise with their running statistics
    and do not update them (their scale and shift still train)."""
    net.train()
    if freeze_bn:
        for m in net.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()


# ---- learning rate (examples/train/optim.h) -----------------------------------------------------

def lr_at(p, base, t_epochs, epochs):
    t = min(1.0, max(0.0, t_epochs / epochs)) if epochs > 0 else 0.0
    if p["schedule"] == "onecycle":
        lo = base / 25
        end = lo / 1e4
        if t < 0.3:
            return lo + (base - lo) * 0.5 * (1 - math.cos(math.pi * t / 0.3))
        return end + (base - end) * 0.5 * (1 + math.cos(math.pi * (t - 0.3) / 0.7))
    return base * 0.1 ** sum(t_epochs >= m for m in p.get("milestones", ()))


# ---- files: nothing a user has is lost ------------------------------------------------------------

def atomic_save(obj, path):
    """torch.save to path.tmp, fsync, rename over path, fsync the folder; errors name the path."""
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        raise SystemExit("cannot write %s: %s" % (e.filename or path, e.strerror))


def append_line(path, record):
    try:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise SystemExit("cannot append to %s: %s" % (path, e.strerror))


def weights_digest(model):
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# ---- training -------------------------------------------------------------------------------------

def evaluate(model, data, d, batch, freeze_bn=False):
    """Top-1 of every head over the whole split, each rank a strided shard, counts summed."""
    model.eval()
    idx = list(range(d.rank, len(data), d.size))
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(data, idx), batch_size=batch, shuffle=False)
    names, n = sorted(model.heads), 0
    correct = [0.0] * len(names)
    with torch.no_grad():
        for x, y in loader:
            x, y = x.to(d.device), y.to(d.device)
            _, logits = model(x)
            for i, k in enumerate(names):
                correct[i] += float((logits[k].argmax(1) == y).sum())
            n += len(y)
    sums = d.sum(correct + [n])  # every rank, an empty shard included
    set_training(model, freeze_bn)
    return {k: 100.0 * c / max(1.0, sums[-1]) for k, c in zip(names, sums[:-1])}


def train_one(kind, a, p, d, train_data, test_data, out):
    torch.manual_seed(a.seed)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    net = (TasnNet if kind == "tasn" else BaselineNet)(p)
    if a.weights:
        load_torchvision(net.master, a.weights)
    if a.att_weights and kind == "tasn":
        load_torchvision(net.att.backbone, a.att_weights)
    net.to(d.device)
    model = torch.nn.parallel.DistributedDataParallel(net) if d.size > 1 else net
    batch, epochs, base_lr = a.batch or p["batch"], a.epochs or p["epochs"], a.lr or p["lr"]
    if batch % d.size or batch // d.size < 1:
        raise SystemExit("--batch %d must be a multiple of the %d ranks" % (batch, d.size))
    local = batch // d.size
    opt = torch.optim.SGD(net.parameters(), lr=base_lr, momentum=p["momentum"], weight_decay=p["weight_decay"])
    sampler = GlobalBatches(len(train_data), batch, d.rank, d.size, a.seed)
    workers = a.workers if isinstance(train_data, ImageList) else 0
    loader = torch.utils.data.DataLoader(train_data, batch_sampler=sampler, num_workers=workers,
                                         pin_memory=d.device.type == "cuda")
    set_training(net, a.freeze_bn)
    steps_per_epoch = len(loader)
    if steps_per_epoch == 0:
        raise SystemExit("the training split (%d images) holds no full batch of %d" % (len(train_data), batch))
    step, t0, metrics = 0, time.time(), os.path.join(out, "metrics.jsonl")
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        loss_sum = n_sum = 0.0
        for i, (x, y) in enumerate(loader):
            for g in opt.param_groups:
                g["lr"] = lr_at(p, base_lr, epoch + i / steps_per_epoch, epochs)
            x, y = x.to(d.device, non_blocking=True), y.to(d.device, non_blocking=True)
            loss, _ = model(x, y, (a.seed * 1000003 + step) & 0x7FFFFFFFFFFFFFFF, d.rank * local)
            opt.zero_grad(set_to_none=True)
            (loss / local).backward()
            ls, nn_ = d.sum([float(loss), len(y)])  # every rank sees the same sum: they stop together
            if not math.isfinite(ls):
                raise SystemExit("%s: the loss became non-finite at step %d (lr %g); lower --lr" % (kind, step, g["lr"]))
            opt.step()
            loss_sum, n_sum, step = loss_sum + ls, n_sum + nn_, step + 1
            if a.max_steps and step >= a.max_steps:
                break
        d.broadcast_buffers(net)
        acc = evaluate(net, test_data, d, local, a.freeze_bn)  # not through DDP: its forward is a collective
        rec = dict(model=kind, epoch=epoch + 1, step=step, train_loss=loss_sum / max(1.0, n_sum), seconds=time.time() - t0,
                   test_top1=acc, ranks=d.size)
        log(d, "%s epoch %d/%d  train loss %.4f  test top-1 %s  (%.1f s)" % (
            kind, epoch + 1, epochs, rec["train_loss"], " ".join("%s %.1f%%" % kv for kv in sorted(acc.items())),
            rec["seconds"]))
        if d.leader:
            append_line(metrics, rec)
            atomic_save(dict(model=net.state_dict(), optimizer=opt.state_dict(), epoch=epoch + 1, step=step,
                             preset=a.preset, args=vars(a)), os.path.join(out, "%s.pt" % kind))
        if a.max_steps and step >= a.max_steps:
            break
    digest = weights_digest(net)
    if not d.same_everywhere(digest):
        raise SystemExit("%s: the ranks' weights differ after training (a bug)" % kind)
    if a.save_rank_weights:
        atomic_save(net.state_dict(), os.path.join(out, "%s-rank%d.pt" % (kind, d.rank)))
    main = "tasn" if kind == "tasn" else "baseline"
    return acc[main], time.time() - t0, step


def main(argv=None):
    a = parse_args(argv)
    p = preset(a.preset)
    d = Dist(a.device)
    if a.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch.cuda.is_available() is False")
    torch.set_num_threads(a.threads or max(1, (os.cpu_count() or 1) // d.local_size))
    earlier = d.leader and os.path.exists(os.path.join(a.out, "metrics.jsonl")) and not a.overwrite
    if d.sum([float(earlier)])[0]:  # every rank learns rank 0's decision and stops with it
        raise SystemExit("%s holds an earlier run (metrics.jsonl); pick another --out or pass --overwrite" % a.out)
    if d.leader:
        os.makedirs(a.out, exist_ok=True)
        if a.overwrite:
            try:
                os.remove(os.path.join(a.out, "metrics.jsonl"))
            except FileNotFoundError:
                pass
    t = time.time()
    train_data, test_data = make_data(a, p)
    log(d, "data: %s, %d train / %d test images (%.1f s); %d rank(s), torch %s, device %s" % (
        a.data, len(train_data), len(test_data), time.time() - t, d.size, torch.__version__, a.device))
    results = {}
    for kind in (["baseline", "tasn"] if a.model == "both" else [a.model]):
        results[kind] = train_one(kind, a, p, d, train_data, test_data, a.out)
    log(d, "\nmodel      test top-1   time     steps")
    for kind, (acc, secs, steps) in results.items():
        log(d, "%-10s %8.1f %%  %6.1f s  %6d" % (kind, acc, secs, steps))
    d.close()


if __name__ == "__main__":
    main()
