// tasn/trilinear_attention.cuh - trilinear attention, CUDA path (float, __half, __nv_bfloat16).
//
//   S = softmax_p(beta X)   B = S X^T   A = softmax_j(B)   M = A X          (per sample, X: C x P)
//
// Storage type T for x, m, dm, dx and the saved S and A; all math accumulates in float: the four
// products per pass run as cuBLAS strided-batched GEMMs with CUBLAS_COMPUTE_32F (B, dA, dS and the
// dX2 + dX3 sum are kept in float), the softmaxes and softmax-Jacobian steps are the row kernels
// of tasn/core/row_softmax.cuh.
//
// Everything is enqueued on ctx.stream: no synchronisation, no host round trips, no allocation.
// Scratch memory comes from a caller-owned workspace whose size the *_workspace_bytes functions
// give (two-phase, like CUB). `saved` (trilinear_saved_elems(shape) elements of T: S then A) may
// be passed to forward to keep S and A for backward; backward recomputes them into its workspace
// when it gets `saved == nullptr`.
//
// Unlike the CPU path, the CUDA path does not scan inputs for NaN/Inf (that would need a host
// round trip); non-finite inputs give non-finite outputs.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "tasn/core/context.cuh"
#include "tasn/core/dtype.cuh"
#include "tasn/core/gemm.cuh"
#include "tasn/core/row_softmax.cuh"
#include "tasn/trilinear_attention_common.h"

namespace tasn::cuda {

namespace detail_trilinear {

template <class T>
struct ForwardLayout {
  T* s;
  T* a;
  float* b;
};

// Layouts are computed by the same code for the size queries (null workspace base, saved_given
// flag only) and for the operators (real pointers).
template <class T>
ForwardLayout<T> forward_layout(detail::WorkspaceCarver& ws, bool saved_given, T* saved,
                                const TrilinearShape& sh) {
  const std::int64_t ncp = sh.n * sh.c * sh.p(), ncc = sh.n * sh.c * sh.c;
  ForwardLayout<T> l{};
  if (saved_given) {
    l.s = saved;
    l.a = saved ? saved + ncp : nullptr;
  } else {
    l.s = ws.take<T>(ncp);
    l.a = ws.take<T>(ncc);
  }
  l.b = ws.take<float>(ncc);
  return l;
}

template <class T>
struct BackwardLayout {
  const T* s;
  const T* a;
  float* da;
  T* db;
  float* ds;
  float* acc;  // dX2 + dX3; dx itself when T is float
};

template <class T>
BackwardLayout<T> backward_layout(detail::WorkspaceCarver& ws, bool saved_given, const T* saved, T* dx,
                                  const TrilinearShape& sh, ForwardLayout<T>* recompute) {
  const std::int64_t ncp = sh.n * sh.c * sh.p(), ncc = sh.n * sh.c * sh.c;
  BackwardLayout<T> l{};
  if (saved_given) {
    l.s = saved;
    l.a = saved ? saved + ncp : nullptr;
    l.da = ws.take<float>(ncc);
  } else {
    *recompute = forward_layout<T>(ws, false, static_cast<T*>(nullptr), sh);
    l.s = recompute->s;
    l.a = recompute->a;
    l.da = recompute->b;  // B is dead once A exists: dA reuses it
  }
  l.db = ws.take<T>(ncc);
  l.ds = ws.take<float>(ncp);
  if constexpr (std::is_same_v<T, float>) {
    l.acc = dx;
  } else {
    l.acc = ws.take<float>(ncp);
  }
  return l;
}

template <class T>
void check_args(const TrilinearShape& shape, const TrilinearAttentionOptions& opt,
                const Context& ctx, const char* op) {
  static_assert(is_storage_type_v<T>, "T must be float, __half or __nv_bfloat16");
  shape.validate(op);
  opt.validate(op);
  detail::check_context(ctx, op);
}

// S = softmax(beta X), B = S X^T (float), A = softmax(B).
template <class T>
void attention_weights(const T* x, const ForwardLayout<T>& l, const TrilinearShape& sh,
                       float beta, const Context& ctx) {
  const std::int64_t N = sh.n, C = sh.c, P = sh.p();
  const cudaDataType_t t = data_type<T>();
  softmax_rows(x, l.s, N * C, P, beta, ctx.stream, ctx.row_kernel);
  gemm_rm_batched(ctx.cublas, ctx.stream, C, C, P, 1.f, {l.s, t, false, P, C * P},
                  {x, t, true, P, C * P}, 0.f, l.b, CUDA_R_32F, C, C * C, N);
  softmax_rows(l.b, l.a, N * C, C, 1.f, ctx.stream, ctx.row_kernel);
}

}  // namespace detail_trilinear

// Bytes of workspace trilinear_attention_forward needs (with or without a `saved` buffer).
template <class T>
std::size_t trilinear_attention_forward_workspace_bytes(const TrilinearShape& shape,
                                                        bool saved_given) {
  shape.validate("trilinear_attention_forward_workspace_bytes");
  detail::WorkspaceCarver ws;
  detail_trilinear::forward_layout<T>(ws, saved_given, static_cast<T*>(nullptr), shape);
  return ws.bytes();
}

// Bytes of workspace trilinear_attention_backward needs (with `saved` from the forward pass, or
// without, in which case S and A are recomputed into the workspace).
template <class T>
std::size_t trilinear_attention_backward_workspace_bytes(const TrilinearShape& shape,
                                                         bool saved_given) {
  shape.validate("trilinear_attention_backward_workspace_bytes");
  detail::WorkspaceCarver ws;
  detail_trilinear::ForwardLayout<T> re{};
  detail_trilinear::backward_layout<T>(ws, saved_given, static_cast<const T*>(nullptr), nullptr,
                                       shape, &re);
  return ws.bytes();
}

// x, m: (N, C, H, W) device arrays of T. saved: nullptr or trilinear_saved_elems(shape) elements.
template <class T>
void trilinear_attention_forward(const T* x, T* m, T* saved, const TrilinearShape& shape,
                                 const TrilinearAttentionOptions& opt, void* workspace,
                                 std::size_t workspace_bytes, const Context& ctx) {
  constexpr const char* op = "cuda::trilinear_attention_forward";
  detail_trilinear::check_args<T>(shape, opt, ctx, op);
  tasn::detail::check_pointer(x, "x", shape.numel(), op);
  tasn::detail::check_pointer(m, "m", shape.numel(), op);
  detail::check_workspace(workspace, workspace_bytes,
                          trilinear_attention_forward_workspace_bytes<T>(shape, saved != nullptr), op);
  if (shape.n == 0) return;
  const std::int64_t N = shape.n, C = shape.c, P = shape.p();
  const cudaDataType_t t = data_type<T>();

  detail::WorkspaceCarver ws(workspace);
  const auto l = detail_trilinear::forward_layout<T>(ws, saved != nullptr, saved, shape);
  detail_trilinear::attention_weights(x, l, shape, static_cast<float>(opt.beta), ctx);
  gemm_rm_batched(ctx.cublas, ctx.stream, C, P, C, 1.f, {l.a, t, false, C, C * C},
                  {x, t, false, P, C * P}, 0.f, m, t, P, C * P, N);
}

// x, dm, dx: (N, C, H, W) device arrays of T. saved: what the forward pass wrote, or nullptr.
template <class T>
void trilinear_attention_backward(const T* x, const T* dm, const T* saved, T* dx,
                                  const TrilinearShape& shape, const TrilinearAttentionOptions& opt,
                                  void* workspace, std::size_t workspace_bytes, const Context& ctx) {
  constexpr const char* op = "cuda::trilinear_attention_backward";
  detail_trilinear::check_args<T>(shape, opt, ctx, op);
  tasn::detail::check_pointer(x, "x", shape.numel(), op);
  tasn::detail::check_pointer(dm, "dm", shape.numel(), op);
  tasn::detail::check_pointer(dx, "dx", shape.numel(), op);
  detail::check_workspace(workspace, workspace_bytes,
                          trilinear_attention_backward_workspace_bytes<T>(shape, saved != nullptr), op);
  if (shape.n == 0) return;
  const std::int64_t N = shape.n, C = shape.c, P = shape.p();
  const cudaDataType_t t = data_type<T>();
  const float beta = static_cast<float>(opt.beta);

  detail::WorkspaceCarver ws(workspace);
  detail_trilinear::ForwardLayout<T> re{};
  const auto l = detail_trilinear::backward_layout<T>(ws, saved != nullptr, saved, dx, shape, &re);
  if (!saved) detail_trilinear::attention_weights(x, re, shape, beta, ctx);

  // dA = dM X^T (float);  acc = A^T dM  (dX3, float)
  gemm_rm_batched(ctx.cublas, ctx.stream, C, C, P, 1.f, {dm, t, false, P, C * P},
                  {x, t, true, P, C * P}, 0.f, l.da, CUDA_R_32F, C, C * C, N);
  gemm_rm_batched(ctx.cublas, ctx.stream, C, P, C, 1.f, {l.a, t, true, C, C * C},
                  {dm, t, false, P, C * P}, 0.f, l.acc, CUDA_R_32F, P, C * P, N);
  // dB = A * (dA - rowsum(dA * A))
  softmax_backward_rows(l.a, l.da, static_cast<const float*>(nullptr), l.db, N * C, C, 1.f,
                        ctx.stream, ctx.row_kernel);
  // dS = dB X (float);  acc += dB^T S  (dX2)
  gemm_rm_batched(ctx.cublas, ctx.stream, C, P, C, 1.f, {l.db, t, false, C, C * C},
                  {x, t, false, P, C * P}, 0.f, l.ds, CUDA_R_32F, P, C * P, N);
  gemm_rm_batched(ctx.cublas, ctx.stream, C, P, C, 1.f, {l.db, t, true, C, C * C},
                  {l.s, t, false, P, C * P}, 1.f, l.acc, CUDA_R_32F, P, C * P, N);
  // dx = beta * S * (dS - rowsum(dS * S)) + acc   (dX1 + dX2 + dX3)
  softmax_backward_rows(l.s, l.ds, static_cast<const float*>(l.acc), dx, N * C, P, beta,
                        ctx.stream, ctx.row_kernel);
}

}  // namespace tasn::cuda
