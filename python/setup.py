"""pip install --no-build-isolation ./python : builds torch.ops.tasn against the torch of the
running interpreter (a PyPI PyTorch 2.x in a venv, for one). --no-build-isolation makes pip use
that torch instead of downloading another into a temporary build environment.

The CUDA kernels are built when that torch has CUDA and nvcc is found (CUDA_HOME or PATH); set
TASN_TORCH_CUDA=0 to build the CPU kernels only, TORCH_CUDA_ARCH_LIST to choose the GPU
architectures (default here: 9.0, the H200), TASN_TORCH_NATIVE=0 to compile without -march=native
(for a package that other CPUs will run). Eigen 3.4 headers are needed (Debian: libeigen3-dev;
else set EIGEN3_INCLUDE_DIR). See docs/pytorch.md.
"""
import os

import torch
from setuptools import setup
from torch.utils import cpp_extension

here = os.path.dirname(os.path.abspath(__file__))
root = os.path.dirname(here)


def eigen_dir():
    for d in [os.environ.get("EIGEN3_INCLUDE_DIR", ""), "/usr/include/eigen3", "/usr/local/include/eigen3"]:
        if d and os.path.exists(os.path.join(d, "Eigen", "Core")):
            return d
    raise RuntimeError("tasn_torch: Eigen 3.4 headers not found (apt-get install libeigen3-dev, or set EIGEN3_INCLUDE_DIR)")


want_cuda = os.environ.get("TASN_TORCH_CUDA", "auto") != "0"
use_cuda = want_cuda and torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None
if use_cuda and not os.environ.get("TORCH_CUDA_ARCH_LIST"):
    os.environ["TORCH_CUDA_ARCH_LIST"] = "9.0"

sources = ["csrc/ops.cpp", "csrc/ops_cpu.cpp", "csrc/data.cpp"] + (["csrc/ops_cuda.cu"] if use_cuda else [])
sources = [os.path.join(here, s) for s in sources]
include_dirs = [os.path.join(here, "csrc"), os.path.join(root, "include"), os.path.join(root, "cuda"),
                os.path.join(root, "examples"), eigen_dir()]
# -march=native as in the CMake build (Eigen's GEMM and exp kernels use AVX2/AVX-512 only when
# allowed: 2-3x on the trilinear operator); TASN_TORCH_NATIVE=0 for a package other CPUs will run.
native = os.environ.get("TASN_TORCH_NATIVE", "1") != "0"
cxx = ["-O3", "-fopenmp"] + (["-march=native"] if native else [])
Extension = cpp_extension.CUDAExtension if use_cuda else cpp_extension.CppExtension
# PyTorch's extension flags hide the implicit __half / __nv_bfloat16 <-> float conversions that the
# library's shared per-element math (tasn/attention_sampler_common.h) uses; give them back.
nvcc = ["-O3", "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__", "-U__CUDA_NO_BFLOAT16_OPERATORS__",
        "-U__CUDA_NO_BFLOAT16_CONVERSIONS__", "-U__CUDA_NO_HALF2_OPERATORS__"]
ext = Extension(
    "tasn_torch._tasn_ops", sources, include_dirs=include_dirs,
    extra_compile_args={"cxx": cxx, "nvcc": nvcc} if use_cuda else cxx,
    extra_link_args=["-fopenmp"] + (["-lcublas"] if use_cuda else []))

setup(
    name="tasn_torch",
    version="0.1.0",
    description="TASN operators (trilinear attention, attention sampler, distillation) as torch.ops.tasn",
    packages=["tasn_torch"],
    package_dir={"tasn_torch": os.path.join(here, "tasn_torch")},
    ext_modules=[ext],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(no_python_abi_suffix=True)},
    python_requires=">=3.8",
)
