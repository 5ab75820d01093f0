// tasn/trilinear_attention.h - trilinear attention, CPU path (Eigen + OpenMP), float and double.
//
//   S = softmax_p(beta X)   B = S X^T   A = softmax_j(B)   M = A X          (per sample, X: C x P)
//
//   tasn::cpu::trilinear_attention_forward(TrilinearForwardArgs<T>{x, m, saved, options}, ws);
//   tasn::cpu::trilinear_attention_backward(TrilinearBackwardArgs<T>{x, dm, saved, dx, options}, ws);
//   std::size_t bytes = tasn::cpu::workspace_bytes(args);     // either args struct
//
// Forward:  x (N, C, H, W) -> m (N, C, H, W). When `saved` is present it receives S followed by A
//           (trilinear_saved_elems(x) elements) for the backward pass.
// Backward: dm (N, C, H, W) -> dx (N, C, H, W). With `saved` from the forward pass S and A are
//           read, without it they are recomputed from x (less memory, ~25 % more work).
//
// Threading: a batch of at least as many samples as threads runs one sample per thread; smaller
// batches run the samples in turn with threaded GEMMs (Eigen) and threaded softmax rows.
// Workspace: the per-sample temporaries (S and A when not saved, dA, dB, dS) come from the
// workspace, one region per thread slot (cpu::num_slots()) when samples run one per thread, one
// region otherwise; workspace_bytes(args) gives its size for the current thread count. Without a
// caller workspace the operator allocates it (tasn::detail::HostWorkspace, its only allocation).
#pragma once

#include <Eigen/Core>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "tasn/core/parallel.h"
#include "tasn/core/scratch.h"
#include "tasn/core/softmax_cpu.h"
#include "tasn/core/tensor.h"
#include "tasn/trilinear_attention_common.h"

namespace tasn::cpu {

namespace detail_trilinear {

template <class T>
constexpr void check_type() {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                "the CPU trilinear attention supports float and double");
}

// True when the samples run one per thread (each with serial GEMMs and softmaxes); false when
// they run in turn, each with threaded GEMMs and softmax rows.
inline bool per_sample_threads(std::int64_t n) { return n >= num_threads(); }

// Runs body(n, slot, inner_parallel) for every sample with the threading policy described above.
template <class Body>
void for_each_sample(std::int64_t n, Body&& body) {
  if (per_sample_threads(n)) {
    parallel_for_slots(0, n, [&](std::int64_t i, int slot) { body(i, slot, false); });
  } else {
    for (std::int64_t i = 0; i < n; ++i) body(i, 0, true);
  }
}

// The temporaries of one sample (null where not needed).
template <class T>
struct SampleScratch {
  T *s = nullptr, *a = nullptr;            // S (C, P), A (C, C) when there is no saved buffer
  T *da = nullptr, *db = nullptr, *ds = nullptr;  // backward: dA, dB (C, C), dS (C, P)
};

template <class T>
SampleScratch<T> sample_layout(tasn::detail::WorkspaceCarver& ws, const TrilinearShape& sh, bool saved_given,
                               bool backward) {
  const std::int64_t cp = sh.c * sh.p(), cc = sh.c * sh.c;
  SampleScratch<T> l;
  if (!saved_given) {
    l.s = ws.take<T>(cp);
    l.a = ws.take<T>(cc);
  }
  if (backward) {
    l.da = ws.take<T>(cc);
    l.db = ws.take<T>(cc);
    l.ds = ws.take<T>(cp);
  }
  return l;
}

// The workspace: `regions` regions of `region_bytes` bytes (a multiple of the alignment), one per
// thread slot, or one. The same code sizes the workspace (null base) and carves it.
struct Layout {
  unsigned char* base = nullptr;
  std::size_t region_bytes = 0;
  std::int64_t regions = 0;
  std::size_t bytes = 0;
};

template <class T>
Layout layout(void* base, const TrilinearShape& sh, bool saved_given, bool backward) {
  Layout l;
  if (sh.n == 0) return l;
  tasn::detail::WorkspaceCarver one;
  sample_layout<T>(one, sh, saved_given, backward);
  l.region_bytes = one.bytes();
  l.regions = per_sample_threads(sh.n) ? num_slots() : 1;
  tasn::detail::WorkspaceCarver ws(base);
  l.base = ws.take<unsigned char>(
      tasn::detail::checked_mul(l.regions, static_cast<std::int64_t>(l.region_bytes), "trilinear workspace"));
  l.bytes = ws.bytes();
  return l;
}

template <class T>
SampleScratch<T> slot_scratch(const Layout& l, int slot, const TrilinearShape& sh, bool saved_given,
                              bool backward) {
  tasn::detail::WorkspaceCarver ws(l.base + static_cast<std::size_t>(slot) * l.region_bytes);
  return sample_layout<T>(ws, sh, saved_given, backward);
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

// Bytes of workspace trilinear_attention_forward(args) needs (for the current thread count).
template <class T>
std::size_t workspace_bytes(const TrilinearForwardArgs<T>& args) {
  detail_trilinear::check_type<T>();
  const TrilinearShape sh = tasn::detail::check_trilinear_args(args, "trilinear_attention_forward");
  return detail_trilinear::layout<T>(nullptr, sh, args.saved.present(), false).bytes;
}

// Bytes of workspace trilinear_attention_backward(args) needs (for the current thread count).
template <class T>
std::size_t workspace_bytes(const TrilinearBackwardArgs<T>& args) {
  detail_trilinear::check_type<T>();
  const TrilinearShape sh = tasn::detail::check_trilinear_args(args, "trilinear_attention_backward");
  return detail_trilinear::layout<T>(nullptr, sh, args.saved.present(), true).bytes;
}

template <class T>
void trilinear_attention_forward(const TrilinearForwardArgs<T>& args, Workspace ws = {}) {
  constexpr const char* op = "trilinear_attention_forward";
  detail_trilinear::check_type<T>();
  const TrilinearShape sh = tasn::detail::check_trilinear_args(args, op);
  const bool saved_given = args.saved.present();
  tasn::detail::HostWorkspace hw(ws, workspace_bytes(args), op);
  const std::int64_t N = sh.n, C = sh.c, P = sh.p();
  if (N == 0) return;
  const T* x = args.x.data;
  if (args.options.check_finite) check_all_finite(x, sh.numel(), "x", op);
  const auto l = detail_trilinear::layout<T>(hw.data(), sh, saved_given, false);
  const T beta = static_cast<T>(args.options.beta);
  T* saved = args.saved.data;
  T* m = args.m.data;

  detail_trilinear::for_each_sample(N, [&](std::int64_t n, int slot, bool par) {
    const auto t = detail_trilinear::slot_scratch<T>(l, slot, sh, saved_given, false);
    T* sn = saved_given ? saved + n * C * P : t.s;
    T* an = saved_given ? saved + N * C * P + n * C * C : t.a;
    const T* xn = x + n * C * P;
    detail_trilinear::attention_weights(xn, sn, an, C, P, beta, par);
    Eigen::Map<RowMatrix<T>>(m + n * C * P, C, P).noalias() =
        Eigen::Map<const RowMatrix<T>>(an, C, C) * Eigen::Map<const RowMatrix<T>>(xn, C, P);
  });
}

template <class T>
void trilinear_attention_backward(const TrilinearBackwardArgs<T>& args, Workspace ws = {}) {
  constexpr const char* op = "trilinear_attention_backward";
  detail_trilinear::check_type<T>();
  const TrilinearShape sh = tasn::detail::check_trilinear_args(args, op);
  const bool saved_given = args.saved.present();
  tasn::detail::HostWorkspace hw(ws, workspace_bytes(args), op);
  const std::int64_t N = sh.n, C = sh.c, P = sh.p();
  if (N == 0) return;
  const T* x = args.x.data;
  const T* dm = args.dm.data;
  if (args.options.check_finite) {
    check_all_finite(x, sh.numel(), "x", op);
    check_all_finite(dm, sh.numel(), "dm", op);
  }
  const auto l = detail_trilinear::layout<T>(hw.data(), sh, saved_given, true);
  const T beta = static_cast<T>(args.options.beta);
  const T* saved = args.saved.data;
  T* dx = args.dx.data;

  detail_trilinear::for_each_sample(N, [&](std::int64_t n, int slot, bool par) {
    const auto t = detail_trilinear::slot_scratch<T>(l, slot, sh, saved_given, true);
    const T* xn = x + n * C * P;
    const T* sn;
    const T* an;
    if (saved_given) {
      sn = saved + n * C * P;
      an = saved + N * C * P + n * C * C;
    } else {
      detail_trilinear::attention_weights(xn, t.s, t.a, C, P, beta, par);
      sn = t.s;
      an = t.a;
    }
    Eigen::Map<const RowMatrix<T>> X(xn, C, P), S(sn, C, P), A(an, C, C), dM(dm + n * C * P, C, P);
    Eigen::Map<RowMatrix<T>> dX(dx + n * C * P, C, P), dA(t.da, C, C), dB(t.db, C, C), dS(t.ds, C, P);
    dA.noalias() = dM * X.transpose();
    dX.noalias() = A.transpose() * dM;  // dX3
    softmax_backward_rows(an, t.da, t.db, C, C, T(1), false, par);
    dS.noalias() = dB * X;
    dX.noalias() += dB.transpose() * S;  // dX2
    softmax_backward_rows(sn, t.ds, dx + n * C * P, C, P, beta, true, par);  // dX1
  });
}

}  // namespace tasn::cpu
