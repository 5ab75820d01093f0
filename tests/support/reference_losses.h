// tests/support/reference_losses.h - naive double-precision losses (plain loops, no shared code
// with the library) used as independent oracles.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

namespace tasn::test {

inline std::vector<double> ref_log_softmax(const double* x, std::int64_t k, double scale) {
  double m = x[0];
  for (std::int64_t j = 1; j < k; ++j) m = std::max(m, x[j]);
  double s = 0.0;
  for (std::int64_t j = 0; j < k; ++j) s += std::exp(scale * (x[j] - m));
  std::vector<double> out(k);
  for (std::int64_t j = 0; j < k; ++j) out[j] = scale * (x[j] - m) - std::log(s);
  return out;
}

// Per-row distillation loss (CE or KL form, times T^2 when asked), no reduction.
inline std::vector<double> ref_distillation_rows(const std::vector<double>& zs, const std::vector<double>& zt,
                                                 std::int64_t n, std::int64_t k, double T, bool kl,
                                                 bool t_squared) {
  std::vector<double> loss(n);
  for (std::int64_t i = 0; i < n; ++i) {
    const auto lq = ref_log_softmax(&zs[i * k], k, 1.0 / T);
    const auto lp = ref_log_softmax(&zt[i * k], k, 1.0 / T);
    double l = 0.0;
    for (std::int64_t j = 0; j < k; ++j) {
      const double p = std::exp(lp[j]);
      l += kl ? p * (lp[j] - lq[j]) : -p * lq[j];
    }
    loss[i] = l * (t_squared ? T * T : 1.0);
  }
  return loss;
}

// Per-row cross-entropy (0 for ignored rows), times grad_scale, with label smoothing eps.
inline std::vector<double> ref_cross_entropy_rows(const std::vector<double>& z, const std::vector<std::int64_t>& y,
                                                  std::int64_t n, std::int64_t k, double eps,
                                                  double scale, std::int64_t ignore) {
  std::vector<double> loss(n, 0.0);
  for (std::int64_t i = 0; i < n; ++i) {
    if (y[i] == ignore) continue;
    const auto lq = ref_log_softmax(&z[i * k], k, 1.0);
    double l = 0.0;
    for (std::int64_t j = 0; j < k; ++j) l -= ((j == y[i] ? 1.0 - eps : 0.0) + eps / k) * lq[j];
    loss[i] = scale * l;
  }
  return loss;
}

inline double ref_reduce(const std::vector<double>& rows, int reduction /*0 none,1 sum,2 mean*/,
                         double mean_den) {
  double s = 0.0;
  for (double v : rows) s += v;
  return reduction == 2 ? (mean_den > 0 ? s / mean_den : 0.0) : s;
}

}  // namespace tasn::test
