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
#include "tasn/core/row_softmax.cuh"

namespace tasn::cuda {

// The stream every kernel and cuBLAS call of an operator is enqueued on (no operator synchronises
// it), the cuBLAS handle to use (its stream is set to `stream`), and, for tests and benchmarks,
// the row-kernel variant to force (Auto picks by row length).
struct Context {
  cudaStream_t stream = nullptr;
  cublasHandle_t cublas = nullptr;
  RowKernel row_kernel = RowKernel::Auto;
};

namespace detail {

using ::tasn::detail::align_up;
using ::tasn::detail::check_workspace;
using ::tasn::detail::kWorkspaceAlign;
using ::tasn::detail::WorkspaceCarver;

// TRANSITION (removed once every operator takes a tasn::Workspace): the old pointer + size form.
inline void check_workspace(const void* ws, std::size_t have, std::size_t need, const char* op) {
  check_workspace(Workspace{const_cast<void*>(ws), have}, need, op);
}

inline void check_context(const Context& ctx, const char* op) {
  TASN_CHECK_ARG(ctx.cublas != nullptr, op, ": ctx.cublas is null (create one, e.g. tasn::cuda::CublasHandle)");
}

}  // namespace detail
}  // namespace tasn::cuda
