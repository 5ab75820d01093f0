#!/usr/bin/env bash
# The prepared GPU check: one call on a machine with a CUDA GPU (the lent H200: CUDA toolkit,
# CMake, ninja, a CUDA PyTorch; no Debian dev packages, no network). It
#   1. builds tests and benchmarks with CUDA for the local GPU (architecture from nvidia-smi),
#      taking Eigen, GoogleTest and Google Benchmark from $TASN_DEPS_DIR (default .deps/, made by
#      scripts/prepare-deps.sh on a Debian machine and carried along),
#   2. runs the gpu-labelled tests, then the CPU tests,
#   3. runs the CUDA benchmarks (JSON) and, where PyTorch with CUDA is present, the PyTorch
#      composite of each operator as the side-by-side baseline,
#   4. prints a short summary and copies logs and JSON into the results folder:
#      $1, else $TASN_RESULTS_DIR, else gpu-results/.
# Budget: under 8 minutes on 16 cores + H200 (each step has its own timeout).
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
results="${1:-${TASN_RESULTS_DIR:-$root/gpu-results}}"
deps="${TASN_DEPS_DIR:-$root/.deps}"
build="${TASN_GPU_BUILD_DIR:-$root/build-gpu}"
jobs="$(nproc)"
mkdir -p "$results"
results="$(cd "$results" && pwd)"
log() { echo "[gpu-check $(date +%H:%M:%S)] $*" | tee -a "$results/summary.txt"; }
: >"$results/summary.txt"
start=$SECONDS

if [ ! -f "$deps/eigen3/Eigen/Core" ] || [ ! -f "$deps/googletest/CMakeLists.txt" ] || [ ! -f "$deps/benchmark/CMakeLists.txt" ] ||
   [ ! -f "$deps/nlohmann_json/nlohmann/json.hpp" ]; then
  log "missing dependencies in $deps: run scripts/prepare-deps.sh on a Debian machine and carry the folder"
  exit 2
fi
command -v nvcc >/dev/null 2>&1 || export PATH="/usr/local/cuda/bin:$PATH"
nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv,noheader >"$results/gpu.txt" 2>&1
log "GPU: $(head -1 "$results/gpu.txt")"
log "nvcc: $(nvcc --version | tail -1)"

gen=(-G Ninja)
command -v ninja >/dev/null 2>&1 || gen=()
log "configure + build ($jobs jobs)"
if ! timeout 300 cmake -S "$root" -B "$build" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release -DTASN_CUDA=ON \
      -DTASN_DEPS_DIR="$deps" >"$results/configure.log" 2>&1; then
  log "configure FAILED (see configure.log)"; tail -20 "$results/configure.log"; exit 1
fi
if ! timeout 360 cmake --build "$build" -j "$jobs" >"$results/build.log" 2>&1; then
  log "build FAILED (see build.log)"; grep -E "error" "$results/build.log" | head -20; exit 1
fi
log "build done after $((SECONDS - start)) s"

timeout 240 ctest --test-dir "$build" -L gpu --output-on-failure -j 4 >"$results/ctest-gpu.log" 2>&1
gpu_rc=$?
log "gpu tests: $(grep -E 'tests passed|tests failed' "$results/ctest-gpu.log" | tail -1) (exit $gpu_rc)"
grep -E "\*\*\*Failed|\*\*\*Skipped" "$results/ctest-gpu.log" | head -20 | tee -a "$results/summary.txt"
timeout 120 ctest --test-dir "$build" -L cpu -j "$jobs" >"$results/ctest-cpu.log" 2>&1
log "cpu tests: $(grep -E 'tests passed|tests failed' "$results/ctest-cpu.log" | tail -1)"

for b in bench_trilinear_cuda bench_losses_cuda bench_sampler_cuda; do
  log "$b"
  timeout 150 "$build/bench/$b" --benchmark_out="$results/$b.json" \
    --benchmark_out_format=json --benchmark_min_time=0.2 >"$results/$b.txt" 2>&1
  log "$b exit $?"
  grep -E "^BM_" "$results/$b.txt" | sed -E 's/ +/ /g' | tee -a "$results/summary.txt"
done

py="${TASN_PYTHON:-python3}"
if "$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  log "PyTorch composite baseline (CUDA)"
  timeout 120 "$py" "$root/bench/torch_baseline.py" --device cuda --json "$results/bench_torch_cuda.json" \
    2>&1 | tee "$results/bench_torch_cuda.txt" | tee -a "$results/summary.txt"
else
  log "PyTorch with CUDA not available: no PyTorch baseline"
fi
log "done in $((SECONDS - start)) s; results in $results"
[ "$gpu_rc" -eq 0 ]
