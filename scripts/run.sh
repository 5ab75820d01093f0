#!/usr/bin/env bash
# README command 1: the main job. Installs what is missing, builds the example trainer and runs it:
# with no arguments it trains TASN and the uniform-resize baseline on the built-in generated
# fine-grained data on the CPU and prints a table of their test accuracy and time. Arguments are
# passed to the trainer (bash scripts/run.sh --help lists them).
set -euo pipefail
TASN_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$TASN_ROOT/scripts/common.sh"
tasn_install_deps
build="${TASN_BUILD_DIR:-$TASN_ROOT/build}"
tasn_configure "$build" >/dev/null
cmake --build "$build" -j "$(nproc)" --target tasn_train
"$build/examples/tasn_train" "$@"
