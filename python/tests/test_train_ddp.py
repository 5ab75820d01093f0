"""examples/pytorch/train_tasn.py: a few steps of TASN and the baseline with 2 CPU processes on
gloo (torch.distributed.run), after which both ranks must hold bit-identical weights and the
weights must have moved; the files the run writes are checked too."""
import json
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("torchvision", reason="the trainer's networks are torchvision ResNets (Debian: python3-torchvision)")

HERE = os.path.dirname(os.path.abspath(__file__))
TRAINER = os.path.join(HERE, "..", "..", "examples", "pytorch", "train_tasn.py")
sys.path.insert(0, os.path.dirname(TRAINER))


def run_trainer(args, nproc, tmp_path, port):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port", str(port),
           # Debian's torch 1.13 on Python 3.11: the default "--redirects 0 --tee 0" fails inside torchrun
           # (a zero-valued enum flag no longer iterates); 1 and 1 work on every version
           "--redirects", "1", "--tee", "1", "--log_dir", str(tmp_path / "torchrun-logs"), TRAINER] + args
    r = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-6000:]
    return r.stdout


def test_two_gloo_ranks_hold_identical_weights(tmp_path):
    out = tmp_path / "run"
    log = run_trainer(["--model", "both", "--train-size", "96", "--test-size", "20", "--batch", "16", "--epochs", "2",
                       "--max-steps", "4", "--seed", "5", "--out", str(out), "--save-rank-weights"], 2, tmp_path, 29613)
    assert "2 rank(s)" in log
    import tasn_net
    for kind in ("tasn", "baseline"):
        w0 = torch.load(out / ("%s-rank0.pt" % kind))
        w1 = torch.load(out / ("%s-rank1.pt" % kind))
        assert w0.keys() == w1.keys()
        for k in w0:
            assert torch.equal(w0[k], w1[k]), "%s: %s differs between the ranks" % (kind, k)
        ckpt = torch.load(out / ("%s.pt" % kind))
        assert ckpt["step"] == 4 and ckpt["epoch"] == 1
        for k in w0:
            assert torch.equal(ckpt["model"][k], w0[k])
        # the weights moved away from the initial ones (the same seed gives the same initialisation)
        torch.manual_seed(5)
        p = tasn_net.preset("demo")
        init = (tasn_net.TasnNet if kind == "tasn" else tasn_net.BaselineNet)(p).state_dict()
        moved = [k for k in w0 if w0[k].dtype.is_floating_point and not torch.equal(init[k], w0[k])]
        assert len(moved) > len(w0) // 2, moved
    records = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [(r["model"], r["ranks"], r["step"]) for r in records] == [("baseline", 2, 4), ("tasn", 2, 4)]
    assert all(set(r["test_top1"]) for r in records)
    assert set(records[1]["test_top1"]) == {"att", "master", "part", "part_shared", "tasn"}


def test_two_ranks_train_as_one_process_with_the_global_batch(tmp_path):
    """2 ranks x 8 = 1 process x 16: the same samples per step (the ranks' shares side by side), the
    same detail channels, gradients of the summed losses divided by the global batch. Batch norm
    frozen (--freeze-bn): with batch statistics each rank would normalise by its own 8 images, which
    is a different computation. What is left is float rounding (convolutions over 8 vs 16 images)."""
    args = ["--model", "both", "--train-size", "64", "--test-size", "8", "--batch", "16", "--epochs", "1",
            "--max-steps", "3", "--seed", "7", "--lr", "0.05", "--freeze-bn", "--save-rank-weights"]
    run_trainer(args + ["--out", str(tmp_path / "two")], 2, tmp_path, 29621)
    run_trainer(args + ["--out", str(tmp_path / "one")], 1, tmp_path, 29623)
    import tasn_net
    for kind in ("tasn", "baseline"):
        two = torch.load(tmp_path / "two" / ("%s-rank0.pt" % kind))
        one = torch.load(tmp_path / "one" / ("%s-rank0.pt" % kind))
        torch.manual_seed(7)
        init = (tasn_net.TasnNet if kind == "tasn" else tasn_net.BaselineNet)(tasn_net.preset("demo")).state_dict()
        moved = max(float((one[k] - init[k]).abs().max()) for k in one if one[k].dtype.is_floating_point)
        worst = max(float((one[k] - two[k]).abs().max()) for k in one if one[k].dtype.is_floating_point)
        # the updates are >= 1e-2; a wrong gradient scale (x2 or x1/2) would move the weights by as much
        assert moved > 1e-2, (kind, moved)
        assert worst < 1e-4, "%s: 2 ranks differ from 1 process by %g (updates %g)" % (kind, worst, moved)


def test_an_earlier_run_is_not_overwritten(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"earlier": true}\n')
    r = subprocess.run([sys.executable, TRAINER, "--model", "baseline", "--train-size", "32", "--test-size", "8",
                        "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    assert r.returncode != 0 and "holds an earlier run" in r.stdout
    assert (out / "metrics.jsonl").read_text() == '{"earlier": true}\n'


@pytest.mark.parametrize("bad,msg", [(["--batch", "15"], "must be a multiple of the 2 ranks")])
def test_bad_batch_for_the_ranks(tmp_path, bad, msg):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29617",
           "--redirects", "1", "--tee", "1", "--log_dir", str(tmp_path / "logs"), TRAINER, "--model", "baseline",
           "--train-size", "32", "--test-size", "8", "--out", str(tmp_path / "r")] + bad
    r = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    assert r.returncode != 0 and msg in r.stdout, r.stdout[-3000:]
