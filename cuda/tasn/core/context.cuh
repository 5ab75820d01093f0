// tasn/core/context.cuh - what every CUDA operator call needs besides its tensors, and workspace
// carving.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <limits>

#include "tasn/core/common.h"
#include "tasn/core/tensor.h"

namespace tasn::cuda {

// What every CUDA operator call needs besides its arguments struct and workspace: the stream its
// kernels and cuBLAS calls are enqueued on (an operator synchronises it only for the value checks
// of options.check_finite, see tasn/core/value_checks.cuh), and the cuBLAS handle to use (its
// stream set to `stream`; only trilinear attention uses it).
struct Context {
  cudaStream_t stream = nullptr;
  cublasHandle_t cublas = nullptr;
};

namespace detail {

using ::tasn::detail::align_up;
using ::tasn::detail::check_workspace;
using ::tasn::detail::kWorkspaceAlign;
using ::tasn::detail::WorkspaceCarver;

inline void check_context(const Context& ctx, const char* op) {
  TASN_CHECK_ARG(ctx.cublas != nullptr, op, ": ctx.cublas is null (create one, e.g. tasn::cuda::CublasHandle)");
}

}  // namespace detail
}  // namespace tasn::cuda
