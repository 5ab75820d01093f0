#!/usr/bin/env bash
# The prepared GPU check: one call (at most 10 minutes, the device tool's limit per command) on a
# machine with a CUDA GPU (the lent H200: CUDA toolkit, CMake, ninja, g++, a CUDA PyTorch whose
# NVIDIA wheels bring cuDNN; no Debian dev packages, no network). It
#   1. configures for the local GPU (CMAKE_CUDA_ARCHITECTURES from nvidia-smi) with tests,
#      benchmarks and the example trainer, TASN_WERROR=OFF (a newer host compiler's new warnings must
#      not stop the check), Eigen / GoogleTest / Google Benchmark / nlohmann-json from $TASN_DEPS_DIR
#      (default .deps/, made by scripts/prepare-deps.sh on a Debian machine and carried along); cuDNN
#      from the toolkit or PyTorch's wheel (cmake/tasnCudnn.cmake),
#   2. builds only what it runs: first the test programs and tasn_train, then the CUDA benchmarks
#      (ninja -k 0: a target that fails to compile does not stop the others; the tests first, so
#      that a slow build still leaves them to run),
#   3. runs the library's GPU tests (one process; per-test isolation with ctest only if that process
#      dies), the trainer's GPU tests, tasn_train --device cuda (paper-preset throughput in FP32, the
#      same with the NCCL gradient all-reduce at world size 1, the demo, the throughput in TF32), the
#      CUDA benchmarks and, where PyTorch has CUDA, the PyTorch composite of each operator.
# No CPU tests here: they run on every machine (scripts/test.sh).
#
# Each step has a time cap (times TASN_GPU_TIME_SCALE, default 1), and the whole script a budget
# (TASN_GPU_BUDGET, default 560 s): a step gets the smaller of its cap and what is left of the
# budget, so the script ends within the budget however a step behaves (a timed-out build still
# lets every target that finished run). Caps: configure 45, build of the tests and the trainer 180,
# of the benchmarks 75, probe 10, library tests 75, trainer tests 60, paper FP32 75, paper FP32 with
# NCCL 75, demo 90, paper TF32 60, benchmarks 30 + 20 + 15, PyTorch 20 (830 s in all: the last steps,
# benchmarks first, are the ones the budget cuts when everything runs to its cap); the per-test
# rerun (only when the test process dies) gets what is left.
#
# Results, written as each step ends, in $1, else $TASN_RESULTS_DIR, else gpu-results/ (the device
# tool brings back at most 8 files, so there are 8):
#   summary.txt      one line per step (result, seconds, limit), test counts, failures, benchmark rows,
#                    the trainer's timing lines and accuracy table
#   build.log        configure + build output
#   gpu-tests.log    tasn_gpu_probe, then tasn_tests_gpu (and the ctest rerun, if any)
#   trainer.log      tasn_tests_trainer_gpu and the tasn_train runs (but the NCCL one)
#   nccl.log         tasn_train --comm nccl on the paper preset: its --timing line's "all-reduce"
#   bench.log        the CUDA benchmarks' and the PyTorch baseline's console output
#   bench-cuda.json  {"bench_trilinear_cuda": <Google Benchmark JSON>, ...}, rewritten after each
#   bench-torch.json bench/torch_baseline.py --json
# Exit status: 0 when the library's and the trainer's GPU tests passed, 1 when they failed or did not
# run, 2 without dependencies, 3 when they ran but found no usable CUDA device (every device test
# skipped, the reason in summary.txt).
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
results="${1:-${TASN_RESULTS_DIR:-$root/gpu-results}}"
deps="${TASN_DEPS_DIR:-$root/.deps}"
build="${TASN_GPU_BUILD_DIR:-$root/build-gpu}"
budget="${TASN_GPU_BUDGET:-560}"
# Multiplies every step's cap (not the budget): for trying the script on a slower machine (with a
# larger TASN_GPU_BUDGET too), e.g. 8 on 2 cores.
scale="${TASN_GPU_TIME_SCALE:-1}"
jobs="$(nproc)"
mkdir -p "$results"
results="$(cd "$results" && pwd)"
summary="$results/summary.txt"
: >"$summary"
start=$SECONDS
gpu_check_name=gpu-check

source "$root/scripts/gpu-steps.sh"  # log, step

if [ ! -f "$deps/eigen3/Eigen/Core" ] || [ ! -f "$deps/googletest/CMakeLists.txt" ] || [ ! -f "$deps/benchmark/CMakeLists.txt" ] ||
   [ ! -f "$deps/nlohmann_json/nlohmann/json.hpp" ]; then
  log "missing dependencies in $deps: run scripts/prepare-deps.sh on a Debian machine and carry the folder"
  exit 2
fi
command -v nvcc >/dev/null 2>&1 || export PATH="/usr/local/cuda/bin:$PATH"

# ---- what runs here ------------------------------------------------------------------------------------
# The library's GPU tests, then the trainer's (tasn_tests_trainer_gpu: kernels, cuDNN / cuBLAS layers,
# whole steps against PyTorch's golden data and the CPU) and the trainer itself (tasn_train --device
# cuda: a paper-preset throughput run, the demo's accuracy table).
test_targets=(tasn_tests_gpu tasn_gpu_probe tasn_tests_trainer_gpu tasn_train)
# The CUDA doc snippets (docs/snippets/*_cuda.cu): each family's calls as the docs show them.
for f in "$root"/docs/snippets/*_cuda.cu; do
  [ -e "$f" ] && test_targets+=("doc_snippet_$(basename "$f" .cu)")
done
benches=(bench_trilinear_cuda bench_losses_cuda bench_sampler_cuda)
examples=ON

# ---- environment -----------------------------------------------------------------------------------
gpu="$(timeout 20 nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv,noheader 2>&1 | head -1)"
arch="$(timeout 20 nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d ' .')"
arch_flag=()
if [[ "$arch" =~ ^[0-9]+$ ]]; then arch_flag=(-DCMAKE_CUDA_ARCHITECTURES="$arch"); else arch="(none found: CMake's default)"; fi
gen=(-G Ninja)
keep_going=(-- -k 0)
command -v ninja >/dev/null 2>&1 || { gen=(); keep_going=(-- -k); }
log "GPU: $gpu; CUDA architecture: $arch"
log "nvcc: $(nvcc --version 2>&1 | tail -1); $(cmake --version | head -1); $(c++ --version | head -1); $jobs cores"

# ---- configure + build -----------------------------------------------------------------------------
if ! step configure 45 build.log cmake -S "$root" -B "$build" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release -DTASN_CUDA=ON \
    -DTASN_DEPS_DIR="$deps" -DTASN_WERROR=OFF -DTASN_BUILD_TESTS=ON -DTASN_BUILD_BENCHMARKS=ON \
    -DTASN_BUILD_EXAMPLES="$examples" "${arch_flag[@]}"; then
  tail -20 "$results/build.log"
  log "done in $((SECONDS - start))s: configure failed, nothing ran"
  exit 1
fi
# Only targets this configuration has: without cuDNN there is no trainer GPU library, so no
# tasn_tests_trainer_gpu (an unknown target would make ninja build nothing at all).
known_target() {
  if [ -f "$build/build.ninja" ]; then ninja -C "$build" -t query "$1" >/dev/null 2>&1
  else make -C "$build" -n "$1" >/dev/null 2>&1; fi
}
kept=()
for t in "${test_targets[@]}"; do
  if known_target "$t"; then kept+=("$t"); else log "target $t is not part of this configuration (see build.log)"; fi
done
test_targets=("${kept[@]}")
grep -E "tasn: (CUDA|cuDNN|NCCL)" "$results/build.log" | tee -a "$summary"
step build-tests 180 build.log cmake --build "$build" -j "$jobs" --target "${test_targets[@]}" "${keep_going[@]}"
step build-benchmarks 75 build.log cmake --build "$build" -j "$jobs" --target "${benches[@]}" "${keep_going[@]}"
grep -E "error|FAILED:" "$results/build.log" | head -20 | tee -a "$summary"
# The executable of target $1 when it is up to date (not one left by an earlier build), else nothing.
path_of() {
  local exe
  exe="$(find "$build" -maxdepth 3 -type f -name "$1" -perm -u+x 2>/dev/null | head -1)"
  [ -n "$exe" ] || return 0
  if [ -f "$build/build.ninja" ]; then
    (cd "$build" && ninja -n "$1" 2>/dev/null | grep -q "no work to do") || return 0
  elif [ -f "$build/Makefile" ]; then
    make -C "$build" -q "$1" >/dev/null 2>&1 || return 0
  fi
  echo "$exe"
}
built=()
for t in "${test_targets[@]}" "${benches[@]}"; do [ -n "$(path_of "$t")" ] && built+=("$t"); done
log "built: ${built[*]:-nothing}"

# ---- GPU tests -------------------------------------------------------------------------------------
gpu_rc=1
tests_exe="$(path_of tasn_tests_gpu)"
probe_exe="$(path_of tasn_gpu_probe)"
[ -n "$probe_exe" ] && step probe 10 gpu-tests.log "$probe_exe"
if [ -n "$tests_exe" ]; then
  step gpu-tests 75 gpu-tests.log "$tests_exe" --gtest_color=no
  gpu_rc=$?
  if ((gpu_rc == 124 || gpu_rc == 137 || gpu_rc > 128)); then
    # The process died (crash, hang, a sticky CUDA error): one process per test, to see which.
    log "gpu-tests: the test process did not finish; rerunning each test in its own process"
    step gpu-tests-isolated 90 gpu-tests.log ctest --test-dir "$build" -L gpu --output-on-failure -j 4 --timeout 60
    gpu_rc=$?
  fi
  {  # counts, failed tests, the first skip reason; the ctest rerun's verdicts if there was one
    grep -E "^\[==========\] [0-9]+ tests? from .* ran|^\[  (PASSED  |FAILED  |SKIPPED )\] [0-9]+ tests?" "$results/gpu-tests.log"
    grep -E "^\[  FAILED  \] [A-Za-z]" "$results/gpu-tests.log" | sort -u | head -30
    grep -m1 -A1 -E ": Skipped$" "$results/gpu-tests.log" | tail -1 | sed 's/^/first skip reason: /'
    grep -E "tests passed|\*\*\*Failed|\*\*\*Exception|\*\*\*Timeout" "$results/gpu-tests.log" | head -30
  } | tee -a "$summary"
else
  log "gpu-tests: NOT RUN (tasn_tests_gpu was not built; see build.log)"
fi
for t in "${test_targets[@]}"; do  # the doc snippets: exit 0 and their printed results
  case "$t" in doc_snippet_*) ;; *) continue ;; esac
  exe="$(path_of "$t")"
  if [ -n "$exe" ]; then
    step "$t" 10 gpu-tests.log "$exe" || log "$t: FAILED (see gpu-tests.log)"
  else
    log "$t: NOT RUN (not built)"
  fi
done

# ---- the trainer on the GPU ------------------------------------------------------------------------
# Its tests first (correctness), then the paper preset's throughput in FP32 (generated data at 512 px,
# batch 96, 8 timed steps after a warm-up step: images/s, the step's phases, device memory), the same
# with the gradients all-reduced by NCCL at world size 1 (--comm nccl: the data-parallel path on one
# GPU; its --timing line adds the all-reduce's device time; NCCL skips an in-place sum over one rank,
# so that time is about 0 here and the throughput should match the run before), the demo (accuracy
# table next to the CPU's in docs/trainer.md), and the throughput again with TF32.
trainer_rc=1
if exe="$(path_of tasn_tests_trainer_gpu)" && [ -n "$exe" ]; then
  step trainer-tests 60 trainer.log "$exe" --gtest_color=no
  trainer_rc=$?
  grep -E "^\[  (PASSED  |FAILED  |SKIPPED )\] [0-9]+ tests?|^\[  FAILED  \] [A-Za-z]|^\[ (worst|curve|memory|nccl) " "$results/trainer.log" |
    sort -u | head -40 | tee -a "$summary"
else
  log "trainer-tests: NOT RUN (tasn_tests_trainer_gpu was not built; see build.log)"
fi
if exe="$(path_of tasn_train)" && [ -n "$exe" ]; then
  paper=(--device cuda --preset paper --model tasn --train-size 960 --test-size 32 --max-steps 9 --timing --no-progress
         --overwrite)
  step trainer-paper-fp32 75 trainer.log "$exe" "${paper[@]}" --out "$build/run-paper-fp32"
  # bf16 next: the issue's throughput target is in bf16
  step trainer-paper-bf16 60 trainer.log "$exe" "${paper[@]}" --precision bf16 --out "$build/run-paper-bf16"
  step trainer-paper-nccl 75 nccl.log "$exe" "${paper[@]}" --comm nccl --out "$build/run-paper-nccl"
  grep -E "^(tasn|baseline) (on|timing)|timing over|all-reduce|nccl|NCCL|error" "$results/nccl.log" | head -20 |
    sed 's/^/nccl: /' | tee -a "$summary"
  step trainer-demo 90 trainer.log "$exe" --device cuda --seeds 1 --no-progress --timing --overwrite --out "$build/run-demo"
  step trainer-paper-tf32 60 trainer.log "$exe" "${paper[@]}" --precision tf32 --out "$build/run-paper-tf32"
  grep -E "^(tasn|baseline) (on|timing)|timing over|^\| (model|tasn|baseline)|error" "$results/trainer.log" | head -30 |
    tee -a "$summary"
else
  log "tasn_train: NOT RUN (not built; see build.log)"
fi

# ---- benchmarks (JSON merged into bench-cuda.json after each) ---------------------------------------
json_dir="$build/bench-json"
mkdir -p "$json_dir"
merge_json() {
  local sep="" b
  {
    printf '{\n'
    for b in "${benches[@]}"; do
      [ -s "$json_dir/$b.json" ] || continue
      printf '%s"%s": ' "$sep" "$b"
      cat "$json_dir/$b.json"
      sep=","
    done
    printf '}\n'
  } >"$results/bench-cuda.json"
}
for b in "${benches[@]}"; do
  exe="$(path_of "$b")"
  if [ -z "$exe" ]; then
    log "$b: NOT RUN (not built)"
    continue
  fi
  rm -f "$json_dir/$b.json"
  case "$b" in bench_trilinear_cuda) cap=30 ;; bench_losses_cuda) cap=20 ;; *) cap=15 ;; esac
  step "$b" "$cap" bench.log "$exe" --benchmark_out="$json_dir/$b.json" --benchmark_out_format=json \
    --benchmark_min_time=0.2 --benchmark_color=false
  merge_json
  rows="$(awk -v b="$b" '/^===== /{on = index($0, b) > 0; next} on && /^BM_/' "$results/bench.log" | sed -E 's/ +/ /g')"
  log "$b: $(grep -c . <<<"$rows") rows, $(grep -c "ERROR OCCURRED" <<<"$rows") with errors"
  echo "$rows" | tee -a "$summary"
done

py="${TASN_PYTHON:-python3}"
if timeout 10 "$py" -c "import importlib.util, sys; sys.exit(0 if importlib.util.find_spec('torch') else 1)" >/dev/null 2>&1; then
  step torch-baseline 20 bench.log env PYTHONUNBUFFERED=1 "$py" "$root/bench/torch_baseline.py" --device cuda \
    --json "$results/bench-torch.json"
else
  log "torch-baseline: NOT RUN (no PyTorch for $py)"
fi


status=$((gpu_rc == 0 && trainer_rc == 0 ? 0 : 1))
if ((status == 0)) && grep -q "no usable CUDA device" "$results/gpu-tests.log" 2>/dev/null; then status=3; fi
log "done in $((SECONDS - start))s of a ${budget}s budget; GPU tests exit $gpu_rc; trainer tests exit $trainer_rc; script exit $status; results in $results"
exit "$status"
