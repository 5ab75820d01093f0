// tasn/core/cuda_check.cuh - turn CUDA runtime and cuBLAS errors into tasn::CudaError.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "tasn/core/common.h"

namespace tasn::cuda::detail {

inline void throw_cuda(cudaError_t err, const char* call, const char* file, int line) {
  throw CudaError(::tasn::detail::concat(call, " failed: ", cudaGetErrorName(err), " (",
                                         cudaGetErrorString(err), ") at ", file, ":", line));
}

inline void throw_cublas(cublasStatus_t st, const char* call, const char* file, int line) {
  throw CudaError(::tasn::detail::concat(call, " failed: ", cublasGetStatusName(st), " (",
                                         cublasGetStatusString(st), ") at ", file, ":", line));
}

}  // namespace tasn::cuda::detail

// Checks a CUDA runtime call; throws tasn::CudaError naming the call and file:line.
#define TASN_CUDA_CHECK(call)                                                          \
  do {                                                                                 \
    const cudaError_t tasn_err_ = (call);                                              \
    if (tasn_err_ != cudaSuccess)                                                      \
      ::tasn::cuda::detail::throw_cuda(tasn_err_, #call, __FILE__, __LINE__);          \
  } while (0)

// Checks a kernel launch (configuration errors) right after it; does not synchronise.
// `what` is a string literal naming the kernel.
#define TASN_CUDA_CHECK_LAUNCH(what)                                                   \
  do {                                                                                 \
    const cudaError_t tasn_err_ = cudaGetLastError();                                  \
    if (tasn_err_ != cudaSuccess)                                                      \
      ::tasn::cuda::detail::throw_cuda(tasn_err_, "launch of " what, __FILE__, __LINE__); \
  } while (0)

#define TASN_CUBLAS_CHECK(call)                                                        \
  do {                                                                                 \
    const cublasStatus_t tasn_st_ = (call);                                            \
    if (tasn_st_ != CUBLAS_STATUS_SUCCESS)                                             \
      ::tasn::cuda::detail::throw_cublas(tasn_st_, #call, __FILE__, __LINE__);         \
  } while (0)
