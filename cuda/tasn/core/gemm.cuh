// tasn/core/gemm.cuh - row-major strided-batched GEMM on cuBLAS, mixed precision.
//
// C[b] = alpha * op(A[b]) * op(B[b]) + beta * C[b] for b in [0, batch), all matrices row-major.
// cuBLAS is column-major: a row-major R (rows x cols) is the column-major R^T, so the call computes
// C^T = op(B)^T op(A)^T with the operands swapped. Inputs A and B share one storage type (float,
// half, bfloat16); C may be that type or float; accumulation is always float
// (CUBLAS_COMPUTE_32F). Float inputs run as plain FP32 under the handle's default math mode; a
// handle the caller switched to CUBLAS_TF32_TENSOR_OP_MATH lets cuBLAS use TF32 instead.
#pragma once

#include <cublas_v2.h>

#include <climits>
#include <cstdint>

#include "tasn/core/cuda_check.cuh"
#include "tasn/core/dtype.cuh"

namespace tasn::cuda {

struct GemmOperand {
  const void* ptr;
  cudaDataType_t type;
  bool trans;              // use the transpose of the stored row-major matrix
  std::int64_t ld;         // row-major leading dimension (elements between rows)
  std::int64_t stride;     // elements between batch entries
};

namespace detail {
inline int to_blas_int(std::int64_t v, const char* what) {
  TASN_CHECK_ARG(v >= 0 && v <= INT_MAX, "gemm: ", what, " = ", v,
                 " exceeds the 32-bit range of cuBLAS sizes");
  return static_cast<int>(v);
}
}  // namespace detail

// Row-major C (m x n) = alpha op(A) (m x k) * op(B) (k x n) + beta C, batched. Sets the handle's
// stream to `stream`.
inline void gemm_rm_batched(cublasHandle_t handle, cudaStream_t stream, std::int64_t m,
                            std::int64_t n, std::int64_t k, float alpha, const GemmOperand& a,
                            const GemmOperand& b, float beta, void* c, cudaDataType_t c_type,
                            std::int64_t ldc, std::int64_t stride_c, std::int64_t batch) {
  TASN_CUBLAS_CHECK(cublasSetStream(handle, stream));
  TASN_CUBLAS_CHECK(cublasGemmStridedBatchedEx(
      handle, b.trans ? CUBLAS_OP_T : CUBLAS_OP_N, a.trans ? CUBLAS_OP_T : CUBLAS_OP_N,
      detail::to_blas_int(n, "n"), detail::to_blas_int(m, "m"), detail::to_blas_int(k, "k"), &alpha,
      b.ptr, b.type, detail::to_blas_int(b.ld, "ldb"), b.stride, a.ptr, a.type,
      detail::to_blas_int(a.ld, "lda"), a.stride, &beta, c, c_type,
      detail::to_blas_int(ldc, "ldc"), stride_c, detail::to_blas_int(batch, "batch"),
      CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

// RAII owner of a cuBLAS handle, for callers that do not manage one already.
class CublasHandle {
 public:
  CublasHandle() { TASN_CUBLAS_CHECK(cublasCreate(&h_)); }
  ~CublasHandle() { cublasDestroy(h_); }
  CublasHandle(const CublasHandle&) = delete;
  CublasHandle& operator=(const CublasHandle&) = delete;
  cublasHandle_t get() const { return h_; }
  operator cublasHandle_t() const { return h_; }

 private:
  cublasHandle_t h_ = nullptr;
};

}  // namespace tasn::cuda
