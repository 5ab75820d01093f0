#!/usr/bin/env python3
"""Side-by-side training-step timing: our trainer (bench_train_step, oneDNN and reference backends)
against the PyTorch transliteration (bench/torch_train_step.py, eager and optionally
torch.compile), interleaved round by round so that a change in the machine's load hits every
implementation alike. Runs with any python3; PyTorch is needed only in --torch-python (a venv
with PyPI torch 2.x), and its runs are skipped with a note when it cannot import torch >= 2.

    python3 bench/compare_train_step.py --build build-bench --rounds 5 --threads 2 [--compile] \
        --markdown /tmp/train_step.md --json /tmp/train_step.json

Before any timing, every (preset, model) is checked: bench_train_step --dump-names writes our
parameter table and torch_train_step.py refuses to run unless its state_dict has exactly the
same names and shapes. Per case and implementation the report gives the median over rounds of
each run's median step time, the fastest step seen, images/s (from the median), the peak
resident memory of the process (and its rise after start-up: the PyTorch process starts with the
interpreter and torch's libraries mapped), and the ratio PyTorch time / our time (> 1: ours is
faster).

Cases: "preset:model:batch[:steps[:warmup]]"; the default is demo tasn and demo baseline at batch 32
and the paper TASN at batch 2 (a paper step takes seconds: few steps).
"""
import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DEFAULT_CASES = "demo:tasn:32:10:2,demo:baseline:32:10:2,paper:tasn:2:3:1"
IMPLS = ("onednn", "reference", "eager", "compile")


def parse_cases(text):
    cases = []
    for item in text.split(","):
        f = item.strip().split(":")
        if len(f) < 3 or len(f) > 5 or f[0] not in ("demo", "paper") or f[1] not in ("tasn", "baseline"):
            raise SystemExit(f"bad case {item!r}: want preset:model:batch[:steps[:warmup]] (demo|paper, tasn|baseline)")
        cases.append(dict(preset=f[0], model=f[1], batch=int(f[2]), steps=int(f[3]) if len(f) > 3 else 10,
                          warmup=int(f[4]) if len(f) > 4 else 2))
    return cases


def run_json(cmd, env, timeout):
    """Runs cmd, returns the JSON object on the last line of its stdout (or raises with its stderr)."""
    t0 = time.perf_counter()
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}\n  exit {r.returncode}: {r.stderr.strip()[-2000:]}")
    lines = [l for l in r.stdout.splitlines() if l.strip().startswith("{")]
    if not lines:
        raise RuntimeError(f"{' '.join(cmd)}\n  printed no JSON: {r.stdout[-500:]} {r.stderr[-500:]}")
    out = json.loads(lines[-1])
    out["wall_s"] = time.perf_counter() - t0
    return out


def torch_usable(python, env):
    try:
        r = subprocess.run([python, "-c", "import warnings; warnings.filterwarnings('ignore');"
                            "import torch; print(torch.__version__)"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, str(e)
    if r.returncode != 0:
        return None, r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}"
    v = r.stdout.strip().splitlines()[-1]
    if int(v.split(".")[0]) < 2:
        return None, f"torch {v} (need 2.x from PyPI; Debian's 1.13 has a generic BLAS)"
    return v, None


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def fmt(x, digits=1):
    return "-" if x is None else f"{x:.{digits}f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default=os.path.join(ROOT, "build-bench"), help="build folder with bench/bench_train_step")
    ap.add_argument("--binary", default=None, help="bench_train_step itself (default: BUILD/bench/bench_train_step)")
    ap.add_argument("--torch-python", default=os.environ.get("TASN_TORCH_PYTHON", "/work/torchvenv/bin/python"),
                    help="a python with PyPI torch 2.x (env TASN_TORCH_PYTHON)")
    ap.add_argument("--cases", default=DEFAULT_CASES, help=f"default {DEFAULT_CASES}")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--impls", default="onednn,reference,eager", help=f"subset of {','.join(IMPLS)}")
    ap.add_argument("--compile", action="store_true", help="add torch.compile (its compile time is reported apart)")
    ap.add_argument("--cold-compile", action="store_true",
                    help="every torch.compile run starts from an empty Inductor cache (a true compile time)")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per run")
    ap.add_argument("--markdown", default=None, help="write the table here")
    ap.add_argument("--json", default=None, help="write every run's result here")
    a = ap.parse_args()

    binary = a.binary or os.path.join(a.build, "bench", "bench_train_step")
    if not os.access(binary, os.X_OK):
        raise SystemExit(f"{binary} not found: configure with -DTASN_BUILD_BENCHMARKS=ON and build bench_train_step")
    impls = [i.strip() for i in a.impls.split(",") if i.strip()]
    if a.compile and "compile" not in impls:
        impls.append("compile")
    for i in impls:
        if i not in IMPLS:
            raise SystemExit(f"--impls: unknown {i!r}, want a subset of {','.join(IMPLS)}")
    cases = parse_cases(a.cases)
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads))
    notes = []

    torch_version = None
    if any(i in ("eager", "compile") for i in impls):
        torch_version, why = torch_usable(a.torch_python, env)
        if torch_version is None:
            notes.append(f"PyTorch runs skipped: {a.torch_python}: {why}")
            impls = [i for i in impls if i not in ("eager", "compile")]

    # Parameter tables (and whether this build has oneDNN), once per (preset, model).
    tmp = tempfile.mkdtemp(prefix="tasn_train_step_")
    names, info = {}, {}
    for c in cases:
        key = (c["preset"], c["model"])
        if key in names:
            continue
        path = os.path.join(tmp, f"names_{c['preset']}_{c['model']}.txt")
        info[key] = run_json([binary, "--preset", c["preset"], "--model", c["model"], "--backend", "reference",
                              "--batch", "1", "--steps", "0", "--warmup", "0", "--dump-names", path], env, a.timeout)
        names[key] = path
    first = next(iter(info.values()))
    if "onednn" in impls and not first.get("onednn_built"):
        notes.append("oneDNN runs skipped: this bench_train_step is built without oneDNN")
        impls.remove("onednn")

    def command(c, impl):
        common = ["--preset", c["preset"], "--model", c["model"], "--batch", str(c["batch"]), "--steps",
                  str(c["steps"]), "--warmup", str(c["warmup"]), "--threads", str(a.threads)]
        if impl in ("onednn", "reference"):
            return [binary, "--backend", impl] + common
        cmd = [a.torch_python, os.path.join(HERE, "torch_train_step.py"), "--names", names[(c["preset"], c["model"])]]
        if impl == "compile":
            cmd += ["--compile"] + (["--cold-compile"] if a.cold_compile else [])
        return cmd + common

    runs = []
    for r in range(a.rounds):
        for ci, c in enumerate(cases):
            # rotate the order every round: no implementation always runs first (cold caches) or last
            order = impls[(r + ci) % len(impls):] + impls[:(r + ci) % len(impls)]
            for impl in order:
                load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
                try:
                    out = run_json(command(c, impl), env, a.timeout)
                except (RuntimeError, subprocess.TimeoutExpired) as e:
                    print(f"round {r + 1} {c['preset']} {c['model']} {impl}: FAILED\n{e}", file=sys.stderr)
                    runs.append(dict(round=r, case=c, impl=impl, error=str(e)))
                    continue
                out.update(round=r, case=c, impl=impl, load_before=load)
                runs.append(out)
                print(f"round {r + 1}/{a.rounds} {c['preset']:5s} {c['model']:8s} b{c['batch']:<3d} {impl:9s} "
                      f"median {out['median_ms']:9.1f} ms  min {out['min_ms']:9.1f} ms  peak {out['peak_rss_mib']:7.0f} MiB"
                      + (f"  compile {out['compile_s']:.1f} s" if out.get("compile_s") else "")
                      + (f"  (load {load:.1f})" if load is not None else ""), file=sys.stderr, flush=True)

    # Summary: per case and implementation, the median of the runs' medians.
    lines = []
    plural = lambda n, w: f"{n} {w}" + ("s" if n != 1 else "")  # noqa: E731
    lines.append(f"Training step, {plural(a.threads, 'thread')}, {plural(a.rounds, 'interleaved round')}; {cpu_model()}, "
                 f"{os.cpu_count()} hardware threads; oneDNN {first.get('onednn_version')}, g++ {first.get('compiler')}"
                 + (f"; PyTorch {torch_version}" if torch_version else "") + ".")
    lines.append("")
    lines.append("| case | implementation | median step ms | min ms | images/s | peak RSS MiB | RSS rise MiB "
                 "| PyTorch eager / this | PyTorch compile / this |")
    lines.append("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    summary = []
    for c in cases:
        label = f"{c['preset']} {c['model']} b{c['batch']} ({c['steps']} steps)"
        agg = {}
        for impl in impls:
            ok = [x for x in runs if x["case"] == c and x["impl"] == impl and "error" not in x and x["median_ms"]]
            if not ok:
                continue
            med = statistics.median(x["median_ms"] for x in ok)
            agg[impl] = dict(median_ms=med, min_ms=min(x["min_ms"] for x in ok), images_per_s=1000.0 * c["batch"] / med,
                             peak_rss_mib=max(x["peak_rss_mib"] for x in ok),
                             rss_rise_mib=max(x["peak_rss_mib"] - x["rss_start_mib"] for x in ok),
                             rounds=len(ok), round_medians=[x["median_ms"] for x in ok],
                             compile_s=statistics.median(x["compile_s"] for x in ok) if impl == "compile" else None)
        for impl, s in agg.items():
            eager = agg.get("eager", {}).get("median_ms")
            comp = agg.get("compile", {}).get("median_ms")
            s["eager_over_this"] = eager / s["median_ms"] if eager else None
            s["compile_over_this"] = comp / s["median_ms"] if comp else None
            name = {"onednn": "ours, oneDNN", "reference": "ours, reference (Eigen)", "eager": "PyTorch eager",
                    "compile": f"PyTorch compile (compile {fmt(s['compile_s'])} s{'' if a.cold_compile else ', warm cache'})"}[impl]
            lines.append(f"| {label} | {name} | {fmt(s['median_ms'])} | {fmt(s['min_ms'])} | {fmt(s['images_per_s'])} "
                         f"| {fmt(s['peak_rss_mib'], 0)} | {fmt(s['rss_rise_mib'], 0)} | {fmt(s['eager_over_this'], 2)} "
                         f"| {fmt(s['compile_over_this'], 2)} |")
        summary.append(dict(case=c, results=agg))
    lines.append("")
    # Issue 12's targets at 2 threads: demo steps >= 1.3x faster than PyTorch eager, the paper step
    # at least as fast; peak memory no higher than PyTorch's.
    for s in summary:
        c, res = s["case"], s["results"]
        ours = res.get("onednn") or res.get("reference")
        if not ours or "eager" not in res:
            continue
        target = 1.3 if c["preset"] == "demo" else 1.0
        which = "oneDNN" if "onednn" in res else "reference"
        r = ours["eager_over_this"]
        rmin = res["eager"]["min_ms"] / ours["min_ms"]
        lines.append(f"- {c['preset']} {c['model']} b{c['batch']}: PyTorch eager / ours ({which}) = {r:.2f} "
                     f"(target >= {target}: {'met' if r >= target else 'NOT met'}; fastest steps: {rmin:.2f}); peak RSS {ours['peak_rss_mib']:.0f} "
                     f"vs {res['eager']['peak_rss_mib']:.0f} MiB ({'ok' if ours['peak_rss_mib'] <= res['eager']['peak_rss_mib'] else 'HIGHER'})"
                     + (f"; PyTorch compile / ours = {ours['compile_over_this']:.2f}" if ours.get("compile_over_this") else ""))
    lines.append("")
    lines.append("Median step: median over rounds of each run's median (after warm-up). PyTorch / this > 1: ours "
                 "is faster. Peak RSS: getrusage ru_maxrss of the process; RSS rise: peak minus the resident size "
                 "at start-up (PyTorch's includes its libraries, loaded at import).")
    lines += [f"Note: {n}" for n in notes]
    table = "\n".join(lines)
    print(table)
    if a.markdown:
        with open(a.markdown, "w") as f:
            f.write(table + "\n")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(dict(threads=a.threads, rounds=a.rounds, cpu=cpu_model(), torch=torch_version, notes=notes,
                           summary=summary, runs=runs), f, indent=1)
    shutil.rmtree(tmp, ignore_errors=True)
    return 1 if any("error" in x for x in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
