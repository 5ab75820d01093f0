// tasn/core/context.cuh - what every CUDA operator call needs besides its tensors, and workspace
// carving.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <limits>

#include "tasn/core/common.h"
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

constexpr std::size_t kWorkspaceAlign = 256;

inline std::size_t align_up(std::size_t v) {
  return (v + kWorkspaceAlign - 1) / kWorkspaceAlign * kWorkspaceAlign;
}

// Carves aligned regions off a caller-provided workspace; also used with a null base to count
// the bytes a layout needs (the workspace size queries run the same code as the operators).
// The byte arithmetic is checked: a region whose size is negative or overflows throws
// tasn::InvalidArgument (the operators check their sizes first; this backs the size queries).
class WorkspaceCarver {
 public:
  explicit WorkspaceCarver(void* base = nullptr) : base_(static_cast<unsigned char*>(base)) {}

  template <class T>
  T* take(std::int64_t elems) {
    constexpr std::size_t kMax = static_cast<std::size_t>(std::numeric_limits<std::int64_t>::max());
    TASN_CHECK_ARG(elems >= 0, "workspace layout: a region of ", elems, " elements (negative size)");
    TASN_CHECK_ARG(static_cast<std::size_t>(elems) <= (kMax - kWorkspaceAlign - used_) / sizeof(T),
                   "workspace layout: a region of ", elems, " elements of ", sizeof(T), " bytes after ", used_,
                   " bytes overflows 64-bit sizes");
    const std::size_t at = used_;
    used_ = align_up(used_ + static_cast<std::size_t>(elems) * sizeof(T));
    return base_ ? reinterpret_cast<T*>(base_ + at) : nullptr;
  }
  std::size_t bytes() const { return used_; }

 private:
  unsigned char* base_;
  std::size_t used_ = 0;
};

inline void check_workspace(const void* ws, std::size_t have, std::size_t need, const char* op) {
  TASN_CHECK_ARG(have >= need, op, ": workspace holds ", have, " bytes but ", need,
                 " are needed (query the *_workspace_bytes function)");
  TASN_CHECK_ARG(need == 0 || ws != nullptr, op, ": workspace is null but ", need,
                 " bytes are needed");
  TASN_CHECK_ARG(reinterpret_cast<std::uintptr_t>(ws) % kWorkspaceAlign == 0, op,
                 ": workspace must be ", kWorkspaceAlign, "-byte aligned (cudaMalloc memory is)");
}

inline void check_context(const Context& ctx, const char* op) {
  TASN_CHECK_ARG(ctx.cublas != nullptr, op, ": ctx.cublas is null (create one, e.g. tasn::cuda::CublasHandle)");
}

}  // namespace detail
}  // namespace tasn::cuda
