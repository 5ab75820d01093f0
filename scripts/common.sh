# Shared by scripts/run.sh and scripts/test.sh (sourced, not run).

# Installs the Debian packages the build needs when any is missing (Debian 12).
tasn_install_deps() {
  # libdnnl-dev: oneDNN for the trainer's CPU convolutions and batch norm; Debian's oneDNN CMake
  # config also requires OpenCL's (ocl-icd-opencl-dev, only "recommended" by libdnnl-dev, and
  # recommendations are not installed here). libopenmpi-dev + openmpi-bin: the trainer's
  # data parallelism on CPU processes (mpirun; docs/distributed.md) and its tests.
  # python3-torch + libtorch-dev (PyTorch 1.13, CPU; its CMake package), python3-torchvision,
  # python3-pytest: torch.ops.tasn, its tests and the PyTorch trainer (docs/pytorch.md).
  local pkgs=(cmake ninja-build g++ libeigen3-dev libgtest-dev googletest libbenchmark-dev nlohmann-json3-dev libstb-dev
              libdnnl-dev ocl-icd-opencl-dev libopenmpi-dev openmpi-bin
              python3-torch libtorch-dev python3-torchvision python3-pytest)
  local missing=()
  for p in "${pkgs[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  if ((${#missing[@]})); then
    echo "tasn: installing missing Debian packages: ${missing[*]}"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -q
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
  fi
  # The CUDA toolkit, where present, is used when nvcc is on PATH (or in /usr/local/cuda).
  if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then
    export PATH="/usr/local/cuda/bin:$PATH"
  fi
}

tasn_configure() {  # $1 = build dir, rest = extra cmake args
  local dir=$1
  shift
  cmake -S "$TASN_ROOT" -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=Release "$@"
}
