#!/usr/bin/env bash
# The prepared GPU check of torch.ops.tasn (docs/pytorch.md), one device call of its own (the
# trainer's check, scripts/gpu-check.sh, fills its call): on the lent GPU machine (nvcc, a CUDA
# PyTorch from PyPI, no network) it
#   1. builds the extension with its CUDA kernels for the local GPU against that PyTorch
#      (pip install --no-build-isolation --no-deps --target, into a temporary folder),
#   2. runs python/tests with it: every CPU test, and the same tests on the CUDA dispatch keys
#      against PyTorch's own CUDA composites (softmax + bmm, F.grid_sample, F.cross_entropy, ...),
#      torch.library.opcheck and torch.compile on CUDA tensors,
#   3. runs bench/torch_ops_bench.py --device cuda (ours against the composites, interleaved).
# pytest comes from the machine, else from the wheels scripts/prepare-deps.sh put in .deps/wheels.
# Results in $1 (else gpu-results-torch/): summary.txt, build.log, pytest.log, bench-ops.json.
# Budget TASN_GPU_BUDGET (default 560 s): build 300, tests 180, benchmark 60 (capped by what is left,
# less 10 s; the step runner is scripts/gpu-steps.sh, shared with gpu-check.sh).
# Exit status: 0 when the tests passed, 1 when they failed or did not run, 2 without dependencies.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
results="${1:-$root/gpu-results-torch}"
deps="${TASN_DEPS_DIR:-$root/.deps}"
budget="${TASN_GPU_BUDGET:-560}"
py="${TASN_PYTHON:-python3}"
mkdir -p "$results"
results="$(cd "$results" && pwd)"
summary="$results/summary.txt"
: >"$summary"
start=$SECONDS
gpu_check_name=gpu-check-torch
scale=1
source "$root/scripts/gpu-steps.sh"  # log, step

if ! "$py" -c "import torch; assert torch.cuda.is_available()" >>"$summary" 2>&1; then
  log "no CUDA PyTorch in $py (torch.cuda.is_available() false or no torch)"
  exit 2
fi
"$py" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.get_device_name())" | tee -a "$summary"
cc="$("$py" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")"
pylib="$(mktemp -d)"
trap 'rm -rf "$pylib"' EXIT
export EIGEN3_INCLUDE_DIR="${EIGEN3_INCLUDE_DIR:-$deps/eigen3}"
export TORCH_CUDA_ARCH_LIST="$cc" MAX_JOBS="$(nproc)"
if ! step build 300 build.log "$py" -m pip install --no-build-isolation --no-deps --no-index --target "$pylib" "$root/python"; then
  log "build FAILED (see build.log)"
  exit 1
fi
if ! "$py" -c "import pytest" 2>/dev/null; then
  if [ -d "$deps/wheels" ]; then
    "$py" -m pip install -q --no-index --find-links "$deps/wheels" --target "$pylib/_pytest_env" pytest >>"$results/build.log" 2>&1
  fi
fi
export PYTHONPATH="$pylib:$pylib/_pytest_env${PYTHONPATH:+:$PYTHONPATH}"
step tests 180 pytest.log "$py" -m pytest -q -rs -p no:cacheprovider "$root/python/tests"
rc=$?
grep -E "passed|failed|error" "$results/pytest.log" | tail -3 >>"$summary"
step bench 60 bench.log env PYTHONUNBUFFERED=1 "$py" "$root/bench/torch_ops_bench.py" --device cuda \
  --json "$results/bench-ops.json"
grep -E "tasn .* ms" "$results/bench.log" >>"$summary" 2>/dev/null
((rc == 0)) && log "torch.ops.tasn GPU tests: PASSED" || log "torch.ops.tasn GPU tests: FAILED or did not run (rc $rc)"
exit $((rc == 0 ? 0 : 1))
