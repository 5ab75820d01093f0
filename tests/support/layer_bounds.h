// tests/support/layer_bounds.h - element-wise error bounds for float layers (convolution, batch
// norm, linear) checked against the reference layers (examples/nn/layers.h) run in double on the
// same float inputs. Written for the GPU layers (tests/test_trainer_dnn_gpu.cpp) after the oneDNN
// test's (tests/test_nn_dnnl.cpp, which still has its own copy in an anonymous namespace).
//
// Every float result of a reduction is a sum of K rounded terms (plus the bias or the value added
// into): in any order of summation |float - exact| <= gamma(K) * sum |term_k|, gamma(K) = K u /
// (1 - K u), u = 2^-24 (Higham, Accuracy and Stability, 3.1). sum |term_k| is evaluated exactly by
// the reference layer applied to |inputs| in double, so each element gets its own bound. Batch norm
// chains reductions of length M = N * P; its first-order bounds are built in bn_bounds() and
// doubled for the neglected second-order terms.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "nn/layers.h"
#include "support/test_support.h"

namespace tasn::test::bounds {

constexpr double kU = 0x1.0p-24;  // float unit roundoff

inline double gamma_k(double k) { return k * kU / (1 - k * kU); }

// Uniform integer in [lo, hi] from the test generator (random layer geometries).
inline std::int64_t pick(std::uint64_t seed, std::uint64_t i, std::int64_t lo, std::int64_t hi) {
  return lo + static_cast<std::int64_t>(uniform_at(seed, i, 0, double(hi - lo + 1)));
}

// Inputs: float values, kept as double for the reference.
struct Data {
  std::vector<double> d;
  std::vector<float> f;
};
inline Data random_data(std::int64_t n, std::uint64_t seed, double lo = -1, double hi = 1) {
  Data r;
  r.d = random_tensor(n, seed, lo, hi);
  r.f.assign(r.d.begin(), r.d.end());
  return r;
}
inline nn::Tensor<double> tensor(std::vector<std::int64_t> shape, const std::vector<double>& v) {
  nn::Tensor<double> t(std::move(shape));
  t.set(v);
  return t;
}
inline std::vector<double> abs_of(const std::vector<double>& v) {
  std::vector<double> a(v.size());
  std::transform(v.begin(), v.end(), a.begin(), [](double x) { return std::fabs(x); });
  return a;
}
template <class T>
std::vector<double> values(const nn::Tensor<T>& t) {
  return std::vector<double>(t.data.begin(), t.data.end());
}

// |got - ref| <= bound element-wise; reports the worst element (largest error / bound).
// TASN_PRINT_RATIO=1 prints each check's worst error / bound (how tight the bounds are).
inline void expect_within(const std::vector<float>& got, const std::vector<double>& ref,
                          const std::vector<double>& bound, const std::string& what) {
  ASSERT_EQ(got.size(), ref.size()) << what;
  ASSERT_EQ(bound.size(), ref.size()) << what;
  double worst = -1;
  std::size_t at = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    const double err = std::fabs(double(got[i]) - ref[i]);
    const double r = std::isfinite(err) ? err / std::max(bound[i], 1e-300) : INFINITY;
    if (r > worst) worst = r, at = i;
  }
  if (std::getenv("TASN_PRINT_RATIO")) std::printf("%-32s worst err/bound %.3g\n", what.c_str(), worst);
  if (got.empty()) return;
  EXPECT_LE(worst, 1.0) << what << ": element " << at << " got " << got[at] << ", expected " << ref[at]
                        << ", bound " << bound[at];
}

// ---- batch norm ---------------------------------------------------------------------------------

// x (n, c, h, w); the layers see (N, C, P = h w).
struct BnShape {
  std::int64_t n, c, h, w;
  std::int64_t numel() const { return n * c * h * w; }
};

// Per-channel statistics in double: the mean and biased variance of the float inputs.
inline void channel_stats(const BnShape& g, const std::vector<double>& x, std::vector<double>& mean,
                          std::vector<double>& var) {
  const std::int64_t P = g.h * g.w, M = g.n * P;
  mean.assign(g.c, 0);
  var.assign(g.c, 0);
  for (std::int64_t c = 0; c < g.c; ++c) {
    double s = 0, q = 0;
    for (std::int64_t n = 0; n < g.n; ++n)
      for (std::int64_t p = 0; p < P; ++p) s += x[(n * g.c + c) * P + p];
    mean[c] = s / double(M);
    for (std::int64_t n = 0; n < g.n; ++n)
      for (std::int64_t p = 0; p < P; ++p) q += std::pow(x[(n * g.c + c) * P + p] - mean[c], 2);
    var[c] = q / double(M);
  }
}

// First-order error bounds of the float computation, per channel, from M = n h w:
//   mean:  e_mu  = gamma(M + 2) * mean|x|
//   var:   e_var = gamma(M + 4) * mean (|x| + |mu|)^2 + 2 e_mu (mean|x| + |mu|)   (either formula,
//          two-pass or E[x^2] - mu^2)
//   invstd relative: e_var / (2 (var + eps)) + 3u
// (callers double them for the second-order terms).
struct BnBounds {
  std::vector<double> e_mu, e_var, rel_inv;
};
inline BnBounds bn_bounds(const BnShape& g, const std::vector<double>& x, const std::vector<double>& mean,
                          const std::vector<double>& var, double eps) {
  const std::int64_t P = g.h * g.w, M = g.n * P;
  BnBounds b;
  for (std::int64_t c = 0; c < g.c; ++c) {
    double s1 = 0, s2 = 0;
    for (std::int64_t n = 0; n < g.n; ++n)
      for (std::int64_t p = 0; p < P; ++p) {
        const double v = std::fabs(x[(n * g.c + c) * P + p]);
        s1 += v;
        s2 += (v + std::fabs(mean[c])) * (v + std::fabs(mean[c]));
      }
    s1 /= double(M);
    s2 /= double(M);
    const double e_mu = gamma_k(double(M) + 2) * s1;
    const double e_var = gamma_k(double(M) + 4) * s2 + 2 * e_mu * (s1 + std::fabs(mean[c]));
    b.e_mu.push_back(e_mu);
    b.e_var.push_back(e_var);
    b.rel_inv.push_back(e_var / (2 * (var[c] + eps)) + 3 * kU);
  }
  return b;
}

}  // namespace tasn::test::bounds
