#!/usr/bin/env bash
# README command 2: install what is missing, configure, build (CPU and, where nvcc exists, CUDA
# sources), and run every test with ctest. Build directory: $TASN_BUILD_DIR (default build/).
set -euo pipefail
TASN_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$TASN_ROOT/scripts/common.sh"
tasn_install_deps
build="${TASN_BUILD_DIR:-$TASN_ROOT/build}"
tasn_configure "$build" -DTASN_TORCH=ON
cmake --build "$build" -j "$(nproc)"
if [ -x "$build/tests/tasn_gpu_probe" ]; then
  "$build/tests/tasn_gpu_probe" || true
else
  echo "GPU: CUDA part not built (no nvcc found); only CPU tests run"
fi
cd "$build"
ctest --output-on-failure -j "$(nproc)"
