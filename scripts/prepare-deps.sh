#!/usr/bin/env bash
# Prepares, on a Debian 12 machine, the folder of dependencies that scripts/gpu-check.sh carries
# to a machine without Debian's development packages (the lent GPU machine):
#   DIR/eigen3      Eigen 3.4 headers (from libeigen3-dev)
#   DIR/googletest  GoogleTest sources (from the googletest package)
#   DIR/benchmark   Google Benchmark sources (Debian source package "benchmark", via apt-get source)
#   DIR/nlohmann_json  nlohmann/json headers (from nlohmann-json3-dev)
#   DIR/wheels      pytest and its dependencies as wheels (PyPI), for scripts/gpu-check-torch.sh
#                   on a machine whose Python has torch but maybe no pytest
# DIR defaults to .deps/ in the repository (git-ignored). About 15 MB.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="${1:-$root/.deps}"
source "$root/scripts/common.sh"
tasn_install_deps
mkdir -p "$dir"
rm -rf "$dir/eigen3" "$dir/googletest" "$dir/benchmark" "$dir/nlohmann_json"
cp -r /usr/include/eigen3 "$dir/eigen3"
mkdir -p "$dir/nlohmann_json" && cp -r /usr/include/nlohmann "$dir/nlohmann_json/nlohmann"
cp -r /usr/src/googletest "$dir/googletest"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
# apt-get source needs a deb-src entry: use a private sources list instead of editing the system's.
mkdir -p "$tmp/lists" "$tmp/apt"
cat >"$tmp/src.sources" <<'SRC'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
apt_opts=(-o "Dir::Etc::SourceList=/dev/null" -o "Dir::Etc::SourceParts=$tmp"
          -o "Dir::State::Lists=$tmp/lists" -o "Dir::Cache=$tmp/apt")
mv "$tmp/src.sources" "$tmp/tasn.sources"
apt-get "${apt_opts[@]}" update -q >/dev/null
(cd "$tmp" && apt-get "${apt_opts[@]}" source -q --download-only benchmark >/dev/null 2>&1)
tarball="$(ls "$tmp"/benchmark_*.orig.tar.gz)"
mkdir -p "$dir/benchmark"
tar -xzf "$tarball" -C "$dir/benchmark" --strip-components=1
rm -rf "$dir/wheels"
if ! python3 -m pip download -q --only-binary=:all: -d "$dir/wheels" pytest >/dev/null 2>&1; then
  echo "note: could not download the pytest wheels (no network?): gpu-check-torch.sh then needs pytest installed"
fi
echo "prepared $dir: $(du -sh "$dir" | cut -f1) (eigen3, googletest, benchmark $(basename "$tarball" .orig.tar.gz | cut -d_ -f2))"
