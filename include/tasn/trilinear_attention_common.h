// tasn/trilinear_attention_common.h - shapes, options and argument checks of the trilinear
// attention operator, shared by the CPU path (tasn/trilinear_attention.h) and the CUDA path
// (tasn/trilinear_attention.cuh). No Eigen, no CUDA.
//
// Math (SPEC section 1), per sample, X viewed as a C x P matrix (P = H*W):
//   S = softmax_p(beta X)   B = S X^T   A = softmax_j(B)   M = A X
#pragma once

#include <cmath>
#include <cstdint>

#include "tasn/core/common.h"
#include "tasn/core/tensor.h"

namespace tasn {

// Sizes of X (N, C, H, W). N may be 0 (the operator does nothing); C, H, W must be positive.
// An internal helper of both backends (the operators take the sizes from the x view).
struct TrilinearShape {
  std::int64_t n = 0, c = 0, h = 0, w = 0;

  std::int64_t p() const { return h * w; }
  std::int64_t numel() const { return n * c * h * w; }  // valid after validate()

  // Throws tasn::InvalidArgument naming `op` and the sizes when they are unusable or when any
  // element count the operator forms (X, saved S and A) would overflow 64-bit indexing.
  void validate(const char* op) const {
    TASN_CHECK_ARG(n >= 0 && c >= 1 && h >= 1 && w >= 1, op, ": x must have shape (N, C, H, W) with N >= 0 and C, H, W >= 1, got (", n, ", ", c,
                   ", ", h, ", ", w, ")");
    const std::int64_t pp = detail::checked_mul(h, w, op);
    const std::int64_t cp = detail::checked_mul(c, pp, op);
    detail::checked_mul(n, cp, op);
    const std::int64_t cc = detail::checked_mul(c, c, op);
    detail::checked_mul(n, detail::checked_add(cp, cc, op), op);
  }
};

struct TrilinearAttentionOptions {
  // Scale inside the spatial softmax, S = softmax(beta * X). Official MXNet code: 7; paper: 1.
  // In (0, FLT_MAX]: the CUDA path (and the CPU path on float data) computes with beta as a float.
  double beta = 7.0;
  // Refuse NaN/Inf in x (and dm) with tasn::InvalidArgument, on both backends (on CUDA: one
  // device scan and one stream synchronisation per call, see tasn/core/value_checks.cuh). With
  // false nothing is scanned and non-finite inputs give non-finite outputs.
  bool check_finite = true;

  void validate(const char* op) const {
    TASN_CHECK_ARG(std::isfinite(beta) && beta > 0.0, op, ": beta must be finite and > 0, got ", beta);
    // beta = inf in float would make softmax(beta * (x - max)) compute inf * 0 = NaN everywhere
    TASN_CHECK_ARG(beta <= detail::kFloatMax, op, ": beta must be finite in float, in (0, ", detail::kFloatMax,
                   "], got ", beta);
  }
};

// Elements of the tensors the forward pass can save for the backward pass: S (N*C*H*W elements)
// followed by A (N*C*C elements). From the sizes of x, or from x itself.
inline std::int64_t trilinear_saved_elems(std::int64_t n, std::int64_t c, std::int64_t h, std::int64_t w) {
  const TrilinearShape s{n, c, h, w};
  s.validate("trilinear_saved_elems");
  return s.n * s.c * (s.p() + s.c);
}
template <class T>
std::int64_t trilinear_saved_elems(const Tensor4<T>& x) {
  return trilinear_saved_elems(x.size[0], x.size[1], x.size[2], x.size[3]);
}

// ---- arguments (the same struct for tasn::cpu:: and tasn::cuda::) ------------------------------

// Forward: m = trilinear_attention(x). `saved` (optional, trilinear_saved_elems elements)
// receives S then A for the backward pass.
template <class T>
struct TrilinearForwardArgs {
  Tensor4<const T> x;    // (N, C, H, W); N may be 0
  Tensor4<T> m;          // (N, C, H, W)
  Tensor1<T> saved;      // optional: (N*C*(H*W + C)): S (N, C, H*W) then A (N, C, C)
  TrilinearAttentionOptions options;
};

// Backward: dx from dm. `saved` from the forward pass, or absent (S and A are recomputed).
template <class T>
struct TrilinearBackwardArgs {
  Tensor4<const T> x;    // (N, C, H, W)
  Tensor4<const T> dm;   // (N, C, H, W)
  Tensor1<const T> saved;  // optional, as TrilinearForwardArgs::saved
  Tensor4<T> dx;         // (N, C, H, W)
  TrilinearAttentionOptions options;
};

namespace detail {

// The argument checks of both backends, in the convention's order: options, then x (defines the
// sizes; also checks the element counts of S and A against 64-bit overflow), then every other
// view. `op` prefixes every message ("trilinear_attention_forward" / "cuda::...").
template <class T>
TrilinearShape trilinear_shape_of(const Tensor4<const T>& x, const char* op) {
  check_leading_tensor(op, "x", x, "(N, C, H, W)", 0);
  const TrilinearShape s{x.size[0], x.size[1], x.size[2], x.size[3]};
  s.validate(op);
  return s;
}

template <class T>
TrilinearShape check_trilinear_args(const TrilinearForwardArgs<T>& a, const char* op) {
  a.options.validate(op);
  const TrilinearShape s = trilinear_shape_of<T>(a.x, op);
  check_present(op, "m", a.m);
  check_tensor(op, "m", a.m, "(N, C, H, W)", {s.n, s.c, s.h, s.w});
  check_optional_tensor(op, "saved", a.saved, "(N*C*(H*W + C))", {s.n * s.c * (s.p() + s.c)});
  return s;
}

template <class T>
TrilinearShape check_trilinear_args(const TrilinearBackwardArgs<T>& a, const char* op) {
  a.options.validate(op);
  const TrilinearShape s = trilinear_shape_of<T>(a.x, op);
  check_present(op, "dm", a.dm);
  check_tensor(op, "dm", a.dm, "(N, C, H, W)", {s.n, s.c, s.h, s.w});
  check_optional_tensor(op, "saved", a.saved, "(N*C*(H*W + C))", {s.n * s.c * (s.p() + s.c)});
  check_present(op, "dx", a.dx);
  check_tensor(op, "dx", a.dx, "(N, C, H, W)", {s.n, s.c, s.h, s.w});
  return s;
}

}  // namespace detail
}  // namespace tasn
