// tasn/core/softmax_math.h - per-element and per-row softmax math shared by CPU and CUDA.
//
// Every function here is TASN_HD: the CUDA kernels call them per element / per partial row, and
// the CPU path and CPU tests call the very same functions, so the math the GPU runs is proven on
// the CPU. No Eigen, no CUDA headers.
//
// Conventions (scale > 0, the softmax of scale * x over one row):
//   y_k  = exp(scale * (x_k - m)) / s,   m = max_k x_k,   s = sum_k exp(scale * (x_k - m))
//   dx_k = scale * y_k * (dy_k - sum_j y_j dy_j)                       (softmax Jacobian^T dy)
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "tasn/core/common.h"

namespace tasn {

TASN_HD float hd_exp(float x) { return ::expf(x); }
TASN_HD double hd_exp(double x) { return ::exp(x); }
TASN_HD float hd_floor(float x) { return ::floorf(x); }
TASN_HD double hd_floor(double x) { return ::floor(x); }
TASN_HD float hd_max(float a, float b) { return a > b ? a : b; }
TASN_HD double hd_max(double a, double b) { return a > b ? a : b; }
#if defined(__CUDA_ARCH__)
TASN_HD bool hd_isfinite(float x) { return isfinite(x); }
TASN_HD bool hd_isfinite(double x) { return isfinite(x); }
TASN_HD bool hd_isnan(float x) { return isnan(x); }
TASN_HD bool hd_isnan(double x) { return isnan(x); }
#else
TASN_HD bool hd_isfinite(float x) { return std::isfinite(x); }
TASN_HD bool hd_isfinite(double x) { return std::isfinite(x); }
TASN_HD bool hd_isnan(float x) { return std::isnan(x); }
TASN_HD bool hd_isnan(double x) { return std::isnan(x); }
#endif

// -infinity, usable in device code without --expt-relaxed-constexpr.
template <class Acc>
TASN_HD Acc neg_inf() {
  return -static_cast<Acc>(INFINITY);
}

// The bits of a double and back (a defined bit copy on host and device).
TASN_HD std::uint64_t hd_bits(double x) {
#if defined(__CUDA_ARCH__)
  return static_cast<std::uint64_t>(__double_as_longlong(x));
#else
  std::uint64_t b;
  std::memcpy(&b, &x, sizeof b);
  return b;
#endif
}
TASN_HD double hd_from_bits(std::uint64_t b) {
#if defined(__CUDA_ARCH__)
  return __longlong_as_double(static_cast<long long>(b));
#else
  double x;
  std::memcpy(&x, &b, sizeof x);
  return x;
#endif
}

// A quiet NaN, usable in device code without --expt-relaxed-constexpr.
template <class Acc>
TASN_HD Acc quiet_nan() {
  return static_cast<Acc>(NAN);
}

// exp(scale * (x - m)): the unnormalised softmax term of x for a row whose maximum is m.
template <class Acc>
TASN_HD Acc softmax_term(Acc x, Acc m, Acc scale) {
  return hd_exp(scale * (x - m));
}

// Partial softmax statistics of a set of row elements: their maximum m and
// s = sum exp(scale * (x - m)). Two partials merge exactly (up to rounding) with combine(), which
// is what lets a warp or a block compute a row's statistics in one read ("online softmax").
template <class Acc>
struct SoftmaxStats {
  Acc m;
  Acc s;

  TASN_HD static SoftmaxStats empty() { return {neg_inf<Acc>(), Acc(0)}; }

  // Adds one element. -inf contributes nothing (exp(-inf) = 0); skipping it also avoids
  // exp(-inf - -inf) = NaN while the running maximum is still -inf.
  TASN_HD void push(Acc x, Acc scale) {
    if (x == neg_inf<Acc>()) return;
    if (x > m) {
      s = s * softmax_term(m, x, scale) + Acc(1);
      m = x;
    } else {
      s += softmax_term(x, m, scale);
    }
  }

  TASN_HD static SoftmaxStats combine(const SoftmaxStats& a, const SoftmaxStats& b, Acc scale) {
    if (a.m == neg_inf<Acc>()) return b;
    if (b.m == neg_inf<Acc>()) return a;
    const Acc m = hd_max(a.m, b.m);
    return {m, a.s * softmax_term(a.m, m, scale) + b.s * softmax_term(b.m, m, scale)};
  }
};

// Reduction functor over SoftmaxStats for CUB / std algorithms (scale is a member).
template <class Acc>
struct SoftmaxStatsCombine {
  Acc scale;
  TASN_HD SoftmaxStats<Acc> operator()(const SoftmaxStats<Acc>& a,
                                       const SoftmaxStats<Acc>& b) const {
    return SoftmaxStats<Acc>::combine(a, b, scale);
  }
};

// One element of the softmax backward: scale * y * (dy - dot), dot = sum_j y_j dy_j of the row.
template <class Acc>
TASN_HD Acc softmax_backward_term(Acc y, Acc dy, Acc dot, Acc scale) {
  return scale * y * (dy - dot);
}

}  // namespace tasn
