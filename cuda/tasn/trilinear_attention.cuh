// tasn/trilinear_attention.cuh - trilinear attention, CUDA path (float, __half, __nv_bfloat16).
//
//   S = softmax_p(beta X)   B = S X^T   A = softmax_j(B)   M = A X          (per sample, X: C x P)
//
//   tasn::cuda::trilinear_attention_forward(ctx, TrilinearForwardArgs<T>{x, m, saved, options}, ws);
//   tasn::cuda::trilinear_attention_backward(ctx, TrilinearBackwardArgs<T>{x, dm, saved, dx, options}, ws);
//   std::size_t bytes = tasn::cuda::workspace_bytes(args);     // either args struct
//
// Storage type T for x, m, dm, dx and the saved S and A; all math accumulates in float: the four
// products per pass run as cuBLAS strided-batched GEMMs with CUBLAS_COMPUTE_32F (B, dA, dS and the
// dX2 + dX3 sum are kept in float), the softmaxes and softmax-Jacobian steps are the row kernels
// of tasn/core/row_softmax.cuh (variant by row length, or tasn::cuda::testing::forced_row_kernel()).
//
// Everything is enqueued on ctx.stream, with no allocation. Scratch memory comes from a
// caller-owned device workspace of workspace_bytes(args) bytes. `saved` (trilinear_saved_elems(x)
// elements of T: S then A) may be passed to forward to keep S and A for backward; backward
// recomputes them into its workspace when `saved` is absent.
//
// With options.check_finite (the default) x (and dm) are scanned for NaN/Inf before anything is
// launched, with one stream synchronisation (tasn/core/value_checks.cuh), and refused with the CPU
// path's message; with check_finite = false nothing is scanned and non-finite inputs give
// non-finite outputs.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "tasn/core/context.cuh"
#include "tasn/core/dtype.cuh"
#include "tasn/core/gemm.cuh"
#include "tasn/core/row_softmax.cuh"
#include "tasn/core/value_checks.cuh"
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

// S = softmax(beta X), B = S X^T (float), A = softmax(B).
template <class T>
void attention_weights(const T* x, const ForwardLayout<T>& l, const TrilinearShape& sh,
                       float beta, const Context& ctx) {
  const std::int64_t N = sh.n, C = sh.c, P = sh.p();
  const cudaDataType_t t = data_type<T>();
  const RowKernel kernel = testing::forced_row_kernel();
  softmax_rows(x, l.s, N * C, P, beta, ctx.stream, kernel);
  gemm_rm_batched(ctx.cublas, ctx.stream, C, C, P, 1.f, {l.s, t, false, P, C * P},
                  {x, t, true, P, C * P}, 0.f, l.b, CUDA_R_32F, C, C * C, N);
  softmax_rows(l.b, l.a, N * C, C, 1.f, ctx.stream, kernel);
}

template <class T>
constexpr void check_type() {
  static_assert(is_storage_type_v<T>, "T must be float, __half or __nv_bfloat16");
}

// The row kernels the op launches must accept its row lengths (P and C): a forced warp variant
// refuses rows longer than it holds, before anything is launched.
inline void check_row_kernel(const TrilinearShape& sh, const char* op) {
  TASN_CHECK_ARG(testing::forced_row_kernel() != RowKernel::Warp ||
                     (sh.p() <= kernels::kMaxWarpRowLen && sh.c <= kernels::kMaxWarpRowLen),
                 op, ": the forced warp-per-row kernel holds rows of at most ", kernels::kMaxWarpRowLen,
                 " elements, got H*W = ", sh.p(), " and C = ", sh.c);
}

}  // namespace detail_trilinear

// Bytes of workspace trilinear_attention_forward(ctx, args) needs (with or without `saved`; with
// check_finite the value-check slots come first; an empty batch needs none).
template <class T>
std::size_t workspace_bytes(const TrilinearForwardArgs<T>& args) {
  detail_trilinear::check_type<T>();
  const TrilinearShape sh = tasn::detail::check_trilinear_args(args, "cuda::trilinear_attention_forward");
  detail::WorkspaceCarver ws;
  detail::take_value_check_slots(ws, args.options.check_finite && sh.n > 0);
  detail_trilinear::forward_layout<T>(ws, args.saved.present(), static_cast<T*>(nullptr), sh);
  return ws.bytes();
}

// Bytes of workspace trilinear_attention_backward(ctx, args) needs (with `saved` from the forward
// pass, or without, in which case S and A are recomputed into the workspace).
template <class T>
std::size_t workspace_bytes(const TrilinearBackwardArgs<T>& args) {
  detail_trilinear::check_type<T>();
  const TrilinearShape sh = tasn::detail::check_trilinear_args(args, "cuda::trilinear_attention_backward");
  detail::WorkspaceCarver ws;
  detail::take_value_check_slots(ws, args.options.check_finite && sh.n > 0);
  detail_trilinear::ForwardLayout<T> re{};
  detail_trilinear::backward_layout<T>(ws, args.saved.present(), static_cast<const T*>(nullptr), nullptr, sh, &re);
  return ws.bytes();
}

// x, m: (N, C, H, W) device tensors of T; saved: absent or trilinear_saved_elems(x) elements.
template <class T>
void trilinear_attention_forward(const Context& ctx, const TrilinearForwardArgs<T>& args, Workspace ws = {}) {
  constexpr const char* op = "cuda::trilinear_attention_forward";
  detail_trilinear::check_type<T>();
  const TrilinearShape sh = tasn::detail::check_trilinear_args(args, op);
  detail::check_context(ctx, op);
  detail_trilinear::check_row_kernel(sh, op);
  detail::check_workspace(ws, workspace_bytes(args), op);
  if (sh.n == 0) return;
  const std::int64_t N = sh.n, C = sh.c, P = sh.p();
  const cudaDataType_t t = data_type<T>();
  const T* x = args.x.data;
  T* saved = args.saved.data;

  detail::WorkspaceCarver carver(ws.data);
  detail::ValueChecks vc(ctx, detail::take_value_check_slots(carver, args.options.check_finite && sh.n > 0), op);
  vc.finite(x, sh.numel(), "x");
  vc.finish();
  const auto l = detail_trilinear::forward_layout<T>(carver, args.saved.present(), saved, sh);
  detail_trilinear::attention_weights(x, l, sh, static_cast<float>(args.options.beta), ctx);
  gemm_rm_batched(ctx.cublas, ctx.stream, C, P, C, 1.f, {l.a, t, false, C, C * C},
                  {x, t, false, P, C * P}, 0.f, args.m.data, t, P, C * P, N);
}

// x, dm, dx: (N, C, H, W) device tensors of T; saved: what the forward pass wrote, or absent.
template <class T>
void trilinear_attention_backward(const Context& ctx, const TrilinearBackwardArgs<T>& args, Workspace ws = {}) {
  constexpr const char* op = "cuda::trilinear_attention_backward";
  detail_trilinear::check_type<T>();
  const TrilinearShape sh = tasn::detail::check_trilinear_args(args, op);
  detail::check_context(ctx, op);
  detail_trilinear::check_row_kernel(sh, op);
  detail::check_workspace(ws, workspace_bytes(args), op);
  if (sh.n == 0) return;
  const std::int64_t N = sh.n, C = sh.c, P = sh.p();
  const cudaDataType_t t = data_type<T>();
  const float beta = static_cast<float>(args.options.beta);
  const T* x = args.x.data;
  const T* dm = args.dm.data;
  T* dx = args.dx.data;
  const bool saved_given = args.saved.present();
  const RowKernel kernel = testing::forced_row_kernel();

  detail::WorkspaceCarver carver(ws.data);
  detail::ValueChecks vc(ctx, detail::take_value_check_slots(carver, args.options.check_finite && sh.n > 0), op);
  vc.finite(x, sh.numel(), "x");
  vc.finite(dm, sh.numel(), "dm");
  vc.finish();
  detail_trilinear::ForwardLayout<T> re{};
  const auto l = detail_trilinear::backward_layout<T>(carver, saved_given, args.saved.data, dx, sh, &re);
  if (!saved_given) detail_trilinear::attention_weights(x, re, sh, beta, ctx);

  // dA = dM X^T (float);  acc = A^T dM  (dX3, float)
  gemm_rm_batched(ctx.cublas, ctx.stream, C, C, P, 1.f, {dm, t, false, P, C * P},
                  {x, t, true, P, C * P}, 0.f, l.da, CUDA_R_32F, C, C * C, N);
  gemm_rm_batched(ctx.cublas, ctx.stream, C, P, C, 1.f, {l.a, t, true, C, C * C},
                  {dm, t, false, P, C * P}, 0.f, l.acc, CUDA_R_32F, P, C * P, N);
  // dB = A * (dA - rowsum(dA * A))
  softmax_backward_rows(l.a, l.da, static_cast<const float*>(nullptr), l.db, N * C, C, 1.f, ctx.stream, kernel);
  // dS = dB X (float);  acc += dB^T S  (dX2)
  gemm_rm_batched(ctx.cublas, ctx.stream, C, P, C, 1.f, {l.db, t, false, C, C * C},
                  {x, t, false, P, C * P}, 0.f, l.ds, CUDA_R_32F, P, C * P, N);
  gemm_rm_batched(ctx.cublas, ctx.stream, C, P, C, 1.f, {l.db, t, true, C, C * C},
                  {l.s, t, false, P, C * P}, 1.f, l.acc, CUDA_R_32F, P, C * P, N);
  // dx = beta * S * (dS - rowsum(dS * S)) + acc   (dX1 + dX2 + dX3)
  softmax_backward_rows(l.s, l.ds, static_cast<const float*>(l.acc), dx, N * C, P, beta, ctx.stream, kernel);
}

}  // namespace tasn::cuda
