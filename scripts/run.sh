#!/usr/bin/env bash
# README command 1: the main job. Installs what is missing, builds the example programs and runs
# the trilinear attention demo on generated data (the TASN trainer replaces it once it lands).
set -euo pipefail
TASN_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$TASN_ROOT/scripts/common.sh"
tasn_install_deps
build="${TASN_BUILD_DIR:-$TASN_ROOT/build}"
tasn_configure "$build" >/dev/null
cmake --build "$build" -j "$(nproc)" --target trilinear_demo
"$build/examples/trilinear_demo" "$@"
