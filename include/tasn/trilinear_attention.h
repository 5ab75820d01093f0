// tasn/trilinear_attention.h - trilinear attention, CPU path (Eigen + OpenMP), float and double.
//
//   S = softmax_p(beta X)   B = S X^T   A = softmax_j(B)   M = A X          (per sample, X: C x P)
//
// Forward:  x (N, C, H, W) -> m (N, C, H, W). When `saved` is not null it receives S followed by A
//           (trilinear_saved_elems(shape) elements) for the backward pass.
// Backward: dm (N, C, H, W) -> dx (N, C, H, W). With `saved` from the forward pass S and A are
//           read, with nullptr they are recomputed from x (less memory, ~25 % more work).
//
// Threading: a batch of at least as many samples as threads runs one sample per thread; smaller
// batches run the samples in turn with threaded GEMMs (Eigen) and threaded softmax rows.
// Temporaries (S and A when not saved, dA, dB, dS) are allocated per sample inside the call,
// through tasn::detail::allocate_scratch (a failed allocation is a tasn::InvalidArgument).
#pragma once

#include <Eigen/Core>
#include <cstdint>
#include <type_traits>

#include "tasn/core/parallel.h"
#include "tasn/core/scratch.h"
#include "tasn/core/softmax_cpu.h"
#include "tasn/trilinear_attention_common.h"

namespace tasn::cpu {

namespace detail_trilinear {

template <class T>
void check_common(const TrilinearShape& shape, const TrilinearAttentionOptions& opt, const char* op) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                "the CPU trilinear attention supports float and double");
  shape.validate(op);
  opt.validate(op);
}

// Resizes a per-sample temporary to rows x cols through the library's scratch allocation.
template <class T>
void make_temporary(RowMatrix<T>& m, std::int64_t rows, std::int64_t cols, const char* op, const char* name) {
  tasn::detail::allocate_scratch(op, name, rows * cols, sizeof(T), [&] { m.resize(rows, cols); });
}

// Runs body(n, inner_parallel) for every sample with the threading policy described above.
template <class Body>
void for_each_sample(std::int64_t n, Body&& body) {
  if (n >= num_threads()) {
    parallel_for(0, n, [&](std::int64_t i) { body(i, false); });
  } else {
    for (std::int64_t i = 0; i < n; ++i) body(i, true);
  }
}

// S = softmax_p(beta X) and A = softmax_j(S X^T) for one sample.
template <class T>
void attention_weights(const T* xn, T* sn, T* an, std::int64_t c, std::int64_t p, T beta, bool par) {
  Eigen::Map<const RowMatrix<T>> X(xn, c, p);
  softmax_rows(xn, sn, c, p, beta, par);
  Eigen::Map<const RowMatrix<T>> S(sn, c, p);
  Eigen::Map<RowMatrix<T>> A(an, c, c);
  A.noalias() = S * X.transpose();  // B, softmaxed in place below
  softmax_rows(an, an, c, c, T(1), par);
}

}  // namespace detail_trilinear

template <class T>
void trilinear_attention_forward(const T* x, T* m, T* saved, const TrilinearShape& shape,
                                 const TrilinearAttentionOptions& opt = {}) {
  constexpr const char* op = "trilinear_attention_forward";
  detail_trilinear::check_common<T>(shape, opt, op);
  const std::int64_t N = shape.n, C = shape.c, P = shape.p();
  tasn::detail::check_pointer(x, "x", shape.numel(), op);
  tasn::detail::check_pointer(m, "m", shape.numel(), op);
  if (N == 0) return;
  if (opt.check_finite) check_all_finite(x, shape.numel(), "x", op);
  const T beta = static_cast<T>(opt.beta);

  detail_trilinear::for_each_sample(N, [&](std::int64_t n, bool par) {
    RowMatrix<T> s_local, a_local;
    if (!saved) {
      detail_trilinear::make_temporary(s_local, C, P, op, "S (C, P)");
      detail_trilinear::make_temporary(a_local, C, C, op, "A (C, C)");
    }
    T* sn = saved ? saved + n * C * P : s_local.data();
    T* an = saved ? saved + N * C * P + n * C * C : a_local.data();
    const T* xn = x + n * C * P;
    detail_trilinear::attention_weights(xn, sn, an, C, P, beta, par);
    Eigen::Map<RowMatrix<T>>(m + n * C * P, C, P).noalias() =
        Eigen::Map<const RowMatrix<T>>(an, C, C) * Eigen::Map<const RowMatrix<T>>(xn, C, P);
  });
}

template <class T>
void trilinear_attention_backward(const T* x, const T* dm, const T* saved, T* dx,
                                  const TrilinearShape& shape,
                                  const TrilinearAttentionOptions& opt = {}) {
  constexpr const char* op = "trilinear_attention_backward";
  detail_trilinear::check_common<T>(shape, opt, op);
  const std::int64_t N = shape.n, C = shape.c, P = shape.p();
  tasn::detail::check_pointer(x, "x", shape.numel(), op);
  tasn::detail::check_pointer(dm, "dm", shape.numel(), op);
  tasn::detail::check_pointer(dx, "dx", shape.numel(), op);
  if (N == 0) return;
  if (opt.check_finite) {
    check_all_finite(x, shape.numel(), "x", op);
    check_all_finite(dm, shape.numel(), "dm", op);
  }
  const T beta = static_cast<T>(opt.beta);

  detail_trilinear::for_each_sample(N, [&](std::int64_t n, bool par) {
    const T* xn = x + n * C * P;
    RowMatrix<T> s_local, a_local;
    const T* sn;
    const T* an;
    if (saved) {
      sn = saved + n * C * P;
      an = saved + N * C * P + n * C * C;
    } else {
      detail_trilinear::make_temporary(s_local, C, P, op, "S (C, P)");
      detail_trilinear::make_temporary(a_local, C, C, op, "A (C, C)");
      detail_trilinear::attention_weights(xn, s_local.data(), a_local.data(), C, P, beta, par);
      sn = s_local.data();
      an = a_local.data();
    }
    Eigen::Map<const RowMatrix<T>> X(xn, C, P), S(sn, C, P), A(an, C, C), dM(dm + n * C * P, C, P);
    Eigen::Map<RowMatrix<T>> dX(dx + n * C * P, C, P);

    RowMatrix<T> dA, dB, dS;
    detail_trilinear::make_temporary(dA, C, C, op, "dA (C, C)");
    detail_trilinear::make_temporary(dB, C, C, op, "dB (C, C)");
    detail_trilinear::make_temporary(dS, C, P, op, "dS (C, P)");
    dA.noalias() = dM * X.transpose();
    dX.noalias() = A.transpose() * dM;  // dX3
    softmax_backward_rows(an, dA.data(), dB.data(), C, C, T(1), false, par);
    dS.noalias() = dB * X;
    dX.noalias() += dB.transpose() * S;  // dX2
    softmax_backward_rows(sn, dS.data(), dX.data(), C, P, beta, true, par);  // dX1
  });
}

}  // namespace tasn::cpu
