// tests/support/reference_trilinear.h - naive double-precision trilinear attention (plain loops,
// no Eigen, no shared code with the library) used as an independent oracle.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

namespace tasn::test {

struct TrilinearRef {
  std::vector<double> s, a, m;  // S (N,C,P), A (N,C,C), M (N,C,P)
};

inline void ref_softmax_row(const double* in, double* out, std::int64_t len, double scale) {
  double mx = in[0];
  for (std::int64_t k = 1; k < len; ++k) mx = std::max(mx, in[k]);
  double sum = 0.0;
  for (std::int64_t k = 0; k < len; ++k) sum += std::exp(scale * (in[k] - mx));
  for (std::int64_t k = 0; k < len; ++k) out[k] = std::exp(scale * (in[k] - mx)) / sum;
}

inline TrilinearRef ref_trilinear_forward(const std::vector<double>& x, std::int64_t N,
                                          std::int64_t C, std::int64_t P, double beta) {
  TrilinearRef r;
  r.s.assign(N * C * P, 0.0);
  r.a.assign(N * C * C, 0.0);
  r.m.assign(N * C * P, 0.0);
  std::vector<double> b(C * C);
  for (std::int64_t n = 0; n < N; ++n) {
    const double* X = &x[n * C * P];
    double* S = &r.s[n * C * P];
    double* A = &r.a[n * C * C];
    double* M = &r.m[n * C * P];
    for (std::int64_t i = 0; i < C; ++i) ref_softmax_row(X + i * P, S + i * P, P, beta);
    for (std::int64_t i = 0; i < C; ++i)
      for (std::int64_t j = 0; j < C; ++j) {
        double acc = 0.0;
        for (std::int64_t p = 0; p < P; ++p) acc += S[i * P + p] * X[j * P + p];
        b[i * C + j] = acc;
      }
    for (std::int64_t i = 0; i < C; ++i) ref_softmax_row(&b[i * C], A + i * C, C, 1.0);
    for (std::int64_t i = 0; i < C; ++i)
      for (std::int64_t p = 0; p < P; ++p) {
        double acc = 0.0;
        for (std::int64_t j = 0; j < C; ++j) acc += A[i * C + j] * X[j * P + p];
        M[i * P + p] = acc;
      }
  }
  return r;
}

// dX for upstream gradient dM, following SPEC section 1 term by term.
inline std::vector<double> ref_trilinear_backward(const std::vector<double>& x,
                                                  const std::vector<double>& dm, std::int64_t N,
                                                  std::int64_t C, std::int64_t P, double beta) {
  const TrilinearRef f = ref_trilinear_forward(x, N, C, P, beta);
  std::vector<double> dx(N * C * P, 0.0), da(C * C), db(C * C), ds(C * P);
  for (std::int64_t n = 0; n < N; ++n) {
    const double* X = &x[n * C * P];
    const double* dM = &dm[n * C * P];
    const double* S = &f.s[n * C * P];
    const double* A = &f.a[n * C * C];
    double* dX = &dx[n * C * P];
    for (std::int64_t i = 0; i < C; ++i)
      for (std::int64_t j = 0; j < C; ++j) {
        double acc = 0.0;
        for (std::int64_t p = 0; p < P; ++p) acc += dM[i * P + p] * X[j * P + p];
        da[i * C + j] = acc;
      }
    for (std::int64_t j = 0; j < C; ++j)  // dX3 = A^T dM
      for (std::int64_t p = 0; p < P; ++p) {
        double acc = 0.0;
        for (std::int64_t i = 0; i < C; ++i) acc += A[i * C + j] * dM[i * P + p];
        dX[j * P + p] += acc;
      }
    for (std::int64_t i = 0; i < C; ++i) {
      double dot = 0.0;
      for (std::int64_t j = 0; j < C; ++j) dot += da[i * C + j] * A[i * C + j];
      for (std::int64_t j = 0; j < C; ++j) db[i * C + j] = A[i * C + j] * (da[i * C + j] - dot);
    }
    for (std::int64_t i = 0; i < C; ++i)  // dS = dB X
      for (std::int64_t p = 0; p < P; ++p) {
        double acc = 0.0;
        for (std::int64_t j = 0; j < C; ++j) acc += db[i * C + j] * X[j * P + p];
        ds[i * P + p] = acc;
      }
    for (std::int64_t j = 0; j < C; ++j)  // dX2 = dB^T S
      for (std::int64_t p = 0; p < P; ++p) {
        double acc = 0.0;
        for (std::int64_t i = 0; i < C; ++i) acc += db[i * C + j] * S[i * P + p];
        dX[j * P + p] += acc;
      }
    for (std::int64_t i = 0; i < C; ++i) {  // dX1 = beta S (dS - rowsum(dS S))
      double dot = 0.0;
      for (std::int64_t p = 0; p < P; ++p) dot += ds[i * P + p] * S[i * P + p];
      for (std::int64_t p = 0; p < P; ++p) dX[i * P + p] += beta * S[i * P + p] * (ds[i * P + p] - dot);
    }
  }
  return dx;
}

}  // namespace tasn::test
