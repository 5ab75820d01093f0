// tests/support/gpu_tolerance.h - error bounds of the GPU tests, derived from the storage precision
// and the float computation, and the exact storage rounding the CPU replay of those tests uses
// (tests/test_gpu_tolerances.cpp checks these bounds against a replay of the test data on the CPU).
//
// Every GPU test compares a device result with a CPU reference on the same storage-rounded inputs.
// The derived bound of element i is
//
//     bound_i = u_T (|ref_i| + pre_i) + eta_T + pre_i
//
//   pre_i: a bound on the error of the float value v_i the kernel computes before it converts it to
//          the storage type T: float arithmetic, and the roundings of stored intermediates (the
//          trilinear S, A, dB), propagated through the computation. Derived per comparison below.
//   u_T |v_i| + eta_T, |v_i| <= |ref_i| + pre_i: the conversion of v_i to T (round to nearest even):
//     float     no conversion: u = eta = 0 (the float arithmetic is all in pre)
//     half      u = 2^-11, eta = 2^-25 (half the subnormal spacing 2^-24; normals from 2^-14)
//     bfloat16  u = 2^-8, eta = 2^-134 (float's exponent range)
// The GPU tests allow pre_i twice (kGpuSafety, see check_bound); the CPU replay must fit bound_i.
//
// Float arithmetic: unit roundoff u = 2^-24. A sum of n terms in any order (sequential loops, CUB
// trees, atomics) is off by at most gamma(n-1) * sum|terms|, gamma(n) = n u / (1 - n u); along a
// reduction whose longest chain has d additions, by gamma(d) * sum|terms| (Higham, Accuracy and
// Stability of Numerical Algorithms, 2nd ed., 3.1 and 4.2). Row groups: a warp sums ceil(L/32)
// strided elements per lane, then a 5-level shuffle tree; a 256-thread block ceil(L/256) per thread,
// then 5 levels per warp and 7 sequential warp aggregates (CUB's default BlockReduce). CUDA expf is
// within 2 ulp (relative 4u), logf within 1 ulp (2u of the result). cuBLAS GEMMs accumulate in float
// over all K terms (the order inside cuBLAS is not known): round to nearest FP32 FMAs for float
// storage (u), tensor cores for half/bf16, which may truncate instead of round (u = 2^-23 there).
//
// These are worst-case bounds, except for the trilinear backward (and M where smaller), whose worst
// case exceeds the result itself; there a first-order statistical bound (trilinear_pre). Terms of
// second order (products of two error bounds) are covered by computing the first-order factors as
// (1 + a)(1 + b) - 1 where they multiply and by kSecondOrder elsewhere.
//
// The models follow the kernels in cuda/tasn (and their shared TASN_HD math): when a kernel changes
// how it computes, change its bound here and its replay in tests/test_gpu_tolerances.cpp together.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <string>
#include <tuple>
#include <vector>

#include "gpu/gpu_runners.h"  // Dtype, Kernel (plain enums; no CUDA)
#include "tasn/attention_sampler.h"
#include "tasn/core/softmax_cpu.h"
#include "tasn/losses_common.h"
#include "tasn/trilinear_attention_common.h"

namespace tasn::test::tol {

using gpu::Dtype;
using gpu::Kernel;

// ---- precision ---------------------------------------------------------------------------------

struct Storage {
  double u;    // unit roundoff of the conversion to T (0: no conversion)
  double eta;  // largest absolute error of a conversion in the subnormal range
};

inline Storage storage(Dtype d) {
  switch (d) {
    case Dtype::F16: return {0x1p-11, 0x1p-25};
    case Dtype::BF16: return {0x1p-8, 0x1p-134};
    default: return {0.0, 0.0};
  }
}

constexpr double kU = 0x1p-24;            // float arithmetic
constexpr double kUTensorCore = 0x1p-23;  // tensor-core float accumulation (one ulp per addition)
constexpr double kExpRel = 4 * kU;        // CUDA expf: 2 ulp
constexpr double kLogUlps = 2 * kU;       // CUDA logf: 1 ulp, relative to |log|
constexpr double kSecondOrder = 1.0 + 0x1p-7;
constexpr double kFloatTiny = 0x1p-146;   // float underflow: a few subnormal ulps

inline double gamma(double n, double u = kU) { return n * u / (1.0 - n * u); }

// Worst case of a cuBLAS GEMM's accumulation over K terms, relative to sum |a b|.
inline double gemm_gamma(Dtype d, double K) { return gamma(K, d == Dtype::F32 ? kU : kUTensorCore); }

// The same as an error source of the statistical bounds (trilinear dX): round to nearest makes the
// K + 1 rounding errors of a float dot product independent and of either sign, so their sum is
// bounded by sqrt(K + 1) u sum|a b| in the root-sum-square sense; truncation (tensor cores) is
// one-signed: the worst case stays.
inline double gemm_source(Dtype d, double K) { return d == Dtype::F32 ? std::sqrt(K + 1.0) * kU : gemm_gamma(d, K); }

// ---- exact storage rounding (software; equal to CUDA's host __float2half_rn / __float2bfloat16_rn
// conversions, which were checked on every 7th float bit pattern) ------------------------------------

// v rounded to nearest even in a binary format of `digits` significand bits whose normals start at
// 2^emin (subnormals below share the spacing 2^(emin - digits + 1)); +-inf beyond max_finite.
inline double round_to_format(double v, int digits, int emin, double max_finite) {
  if (!std::isfinite(v) || v == 0.0) return v;
  int e = 0;
  std::frexp(v, &e);  // |v| in [2^(e-1), 2^e)
  const double q = std::ldexp(1.0, std::max(e - 1, emin) - digits + 1);
  const double r = std::nearbyint(v / q) * q;  // v / q and the product are exact (powers of two)
  return std::fabs(r) > max_finite ? std::copysign(INFINITY, v) : r;
}

inline float round_to_storage(Dtype d, float v) {
  switch (d) {
    case Dtype::F16: return static_cast<float>(round_to_format(v, 11, -14, 65504.0));
    case Dtype::BF16: return static_cast<float>(round_to_format(v, 8, -126, 0x1.fep127));
    default: return v;
  }
}

inline std::vector<float> round_to_storage(Dtype d, std::vector<float> v) {
  for (float& x : v) x = round_to_storage(d, x);
  return v;
}

// ---- comparison against the bound ----------------------------------------------------------------

// The derived bound of one element (share 1), or the GPU tests' allowance (share kGpuSafety).
inline double allowed(Dtype out, double ref, double pre, double share = 1.0) {
  const Storage s = storage(out);
  return s.u * (std::fabs(ref) + share * pre) + s.eta + share * pre;
}

inline std::vector<double> allowed(Dtype out, const std::vector<double>& ref, const std::vector<double>& pre,
                                   double share = 1.0) {
  std::vector<double> a(ref.size());
  for (std::size_t i = 0; i < ref.size(); ++i) a[i] = allowed(out, ref[i], pre[i], share);
  return a;
}

struct BoundCheck {
  bool ok = true;
  std::int64_t worst = -1;  // element with the largest |err| / allowed
  double ratio = 0.0;       // that ratio (<= 1 when ok)
  double got = 0.0, ref = 0.0, err = 0.0, limit = 0.0;
  std::int64_t failures = 0;
  std::string message() const {
    char buf[256];
    std::snprintf(buf, sizeof buf, "|err| / allowed %.4g at index %lld (got %.9g, expected %.9g, |err| %.3g, allowed %.3g; %lld elements over)",
                  ratio, static_cast<long long>(worst), got, ref, err, limit, static_cast<long long>(failures));
    return buf;
  }
};

// |got_i - ref_i| <= u_T (|ref_i| + share pre_i) + eta_T + share pre_i for every i.
// The CPU replay must fit the derived bound itself (share = 1); the GPU tests allow kGpuSafety times
// the arithmetic part pre (default), for what a model of the device can miss (its expf / logf,
// tensor-core accumulation details). The storage rounding needs no such factor: it is exact on both
// sides (round to nearest even), and the replay reproduces it bit for bit.
constexpr double kGpuSafety = 2.0;

template <class G, class R>
BoundCheck check_bound(const std::vector<G>& got, const std::vector<R>& ref, Dtype out,
                       const std::vector<double>& pre, double share = kGpuSafety) {
  BoundCheck r;
  if (got.size() != ref.size() || pre.size() != ref.size()) {
    r.ok = false;
    r.ratio = INFINITY;
    r.failures = -1;
    return r;
  }
  const Storage s = storage(out);
  for (std::size_t i = 0; i < got.size(); ++i) {
    const double g = static_cast<double>(got[i]), e = static_cast<double>(ref[i]);
    const double lim = s.u * (std::fabs(e) + share * pre[i]) + s.eta + share * pre[i];
    const double err = std::fabs(g - e);
    double ratio = err == 0.0 ? 0.0 : (lim > 0.0 ? err / lim : INFINITY);
    if (!std::isfinite(g) || !(ratio == ratio)) ratio = INFINITY;
    if (ratio > 1.0) {
      r.ok = false;
      ++r.failures;
    }
    if (ratio > r.ratio || r.worst < 0) {
      r.ratio = ratio;
      r.worst = static_cast<std::int64_t>(i);
      r.got = g;
      r.ref = e;
      r.err = err;
      r.limit = lim;
    }
  }
  return r;
}

// ||v||_2 of a vector.
inline double norm2(const std::vector<double>& v) {
  double s = 0.0;
  for (double x : v) s += x * x;
  return std::sqrt(s);
}

// ---- row groups (tasn/core/row_softmax.cuh, row_group.cuh, the loss kernels) ----------------------

// The variant a row kernel runs for rows of len elements (Auto: warp up to 1024).
inline Kernel resolve(Kernel k, std::int64_t len) {
  return k == Kernel::Auto ? (len <= 1024 ? Kernel::Warp : Kernel::Block) : k;
}

// Additions on the longest chain of a row reduction of a warp (32 lanes) or a 256-thread block.
inline double row_depth(Kernel resolved, std::int64_t len) {
  const bool warp = resolved == Kernel::Warp;
  const std::int64_t g = warp ? 32 : 256;
  return static_cast<double>((len + g - 1) / g) + (warp ? 5.0 : 12.0);
}

// Relative error bound of the float exp-sum s = sum_k exp(a_k) of one row (a_k = scale (x_k - max)
// <= 0, computed with `arg_roundings` float roundings, so off by gamma(arg_roundings) |a_k|; the exp
// adds kExpRel). `online`: SoftmaxStats (running maximum): a partial sum is rescaled by
// exp(scale (m_old - m_new)) up to depth times; those argument errors telescope into |a_k|, each
// rescale adds an exp and a multiplication (5u).
inline double exp_sum_rel(const double* y, const double* a, std::int64_t len, double depth, bool online,
                          double arg_roundings) {
  double weighted = 0.0;  // sum_k y_k (e^{gamma |a_k|} - 1), y_k the exact softmax
  for (std::int64_t k = 0; k < len; ++k) weighted += y[k] * std::expm1(gamma(arg_roundings) * a[k]);
  return gamma(depth) + weighted * kSecondOrder + kExpRel + (online ? 5.0 * kU * depth : 0.0);
}

// pre of y = softmax(scale * x) over rows of len (row_softmax.cuh): the warp variant computes the
// maximum, then e_k = expf(scale (x_k - m)), s = sum e_k, y_k = e_k * (1 / s); the block variant gets
// (m, s) from SoftmaxStats (online). y: the exact softmax (reference).
// row_rel (optional): receives each row's relative exp-sum error (the part shared by the row).
inline std::vector<double> softmax_rows_pre(const std::vector<double>& x, const std::vector<double>& y,
                                            std::int64_t rows, std::int64_t len, double scale, Kernel kernel,
                                            double arg_roundings = 2.0, std::vector<double>* row_rel = nullptr) {
  std::vector<double> pre(x.size()), a(static_cast<std::size_t>(len));
  const Kernel k = resolve(kernel, len);
  if (row_rel) row_rel->assign(static_cast<std::size_t>(rows), 0.0);
  for (std::int64_t r = 0; r < rows; ++r) {
    const double* xr = x.data() + r * len;
    const double* yr = y.data() + r * len;
    const double m = *std::max_element(xr, xr + len);
    for (std::int64_t j = 0; j < len; ++j) a[j] = scale * (m - xr[j]);
    const double es = exp_sum_rel(yr, a.data(), len, row_depth(k, len), k == Kernel::Block, arg_roundings);
    if (row_rel) (*row_rel)[r] = es / (1.0 - es);
    for (std::int64_t j = 0; j < len; ++j) {
      const double ee = (1.0 + std::expm1(gamma(arg_roundings) * a[j])) * (1.0 + kExpRel);  // e_j
      const double rel = ee * (1.0 + kU) * (1.0 + kU) / (1.0 - es) - 1.0;  // 1 / s, e * inv
      pre[r * len + j] = yr[j] * rel + kFloatTiny;
    }
  }
  return pre;
}

// pre of dx = scale * y * (dy - <y, dy>) + add over rows (row_softmax.cuh backward), where the values
// the kernel reads are off from the exact ones by at most ey (y), edy (dy) and eadd (add); nullptr:
// exact (stored inputs). y, dy: exact values; ref: the exact dx. The dot product adds gamma(depth + 1)
// (products and the reduction); each element fl(fl(scale y) fl(dy - dot)) three roundings, + add one.
inline std::vector<double> softmax_backward_rows_pre(const std::vector<double>& y, const std::vector<double>* ey,
                                                     const std::vector<double>& dy, const std::vector<double>* edy,
                                                     const std::vector<double>* eadd, const std::vector<double>& ref,
                                                     std::int64_t rows, std::int64_t len, double scale,
                                                     Kernel kernel) {
  std::vector<double> pre(y.size());
  const double depth = row_depth(resolve(kernel, len), len);
  auto at = [](const std::vector<double>* v, std::size_t i) { return v ? (*v)[i] : 0.0; };
  for (std::int64_t r = 0; r < rows; ++r) {
    const std::size_t b = static_cast<std::size_t>(r * len);
    double dot = 0.0, abs_dot = 0.0, ddot = 0.0;
    for (std::int64_t j = 0; j < len; ++j) {
      const std::size_t i = b + j;
      const double yy = std::fabs(y[i]), e1 = at(ey, i), g = std::fabs(dy[i]), e2 = at(edy, i);
      dot += y[i] * dy[i];
      abs_dot += (yy + e1) * (g + e2);
      ddot += e1 * g + yy * e2 + e1 * e2;
    }
    ddot += gamma(depth + 1.0) * abs_dot;
    for (std::int64_t j = 0; j < len; ++j) {
      const std::size_t i = b + j;
      const double yy = std::fabs(y[i]), e1 = at(ey, i), e2 = at(edy, i);
      const double diff = std::fabs(dy[i] - dot);
      const double term = scale * (e1 * (diff + e2 + ddot) + yy * (e2 + ddot)) +
                          gamma(3.0) * scale * (yy + e1) * (diff + e2 + ddot);
      pre[i] = (term + at(eadd, i)) * (1.0 + kU) + kU * std::fabs(ref[i]) + kFloatTiny;
    }
  }
  return pre;
}

// ---- trilinear attention (tasn/trilinear_attention.cuh) ------------------------------------------

struct TrilinearPre {
  std::vector<double> m, dx, saved;  // saved: S then A, as the operator stores them
};

// Multiplier of the statistical part of the dX (and M) bound: under the model below an element
// exceeds kLambda times its scale with probability <= 2 exp(-kLambda^2 / 2) (Hoeffding), 3e-8 for
// 6. The GPU tests allow twice the bound's arithmetic part (kGpuSafety), 2 exp(-72) each: nothing
// over the 11 million dX elements they compare (3 types x 2 kernels x saved / recomputed).
constexpr double kLambda = 6.0;

// Bounds along the CUDA pass, per sample (X: C x P, exact stored values; each matrix below is the
// exact double value, e* its error bound on the device):
//   S  = softmax(beta X)   stored in T          eS = storage(softmax_rows_pre)
//   B  = S X^T             float GEMM over P    eB = eS |X|^T + gamma_g(P) (S + eS) |X|^T
//   A  = softmax(B)        stored in T          a row of B off by <= d moves A by a factor e^{+-2d}
//   M  = A X               float GEMM over C, stored in T: eA |X| + gamma_g(C) (A + eA) |X|
// The saved S and A get these worst-case (component-wise) bounds; M the smaller of its worst case
// and the statistical bound below (A's independent errors through X, the GEMM's).
//
// The backward pass, dA = dM X^T, dB = A (dA - <A, dA>) (stored in T), dS = dB X,
// dX = beta S (dS - <S, dS>) + A^T dM + dB^T S (stored in T), sums hundreds of terms of both signs
// at each step (|dB| |X| is ~30 |dB X| here), so a worst-case bound, which gives every rounding
// error the sign that hurts, exceeds max|dX| itself. dX gets a first-order statistical bound
// instead (the probabilistic model of Higham and Mary, SIAM J. Sci. Comput. 41 (2019)): the errors
// of the stored S, A and dB and of each GEMM output element are independent, of either sign, and
// bounded as above. Each is carried through the exact linear maps of the backward pass - the
// softmax Jacobian makes a row's error count only by its deviation from the row's weighted mean:
//   an error E of dB moves dX_ip by beta S_ip sum_j E_ij (X_jp - B_ij) + sum_c E_ci S_cp
//   an error F of dA gives E = A (F - <A, F>), an error G of A adds G^T dM and E = G (dA - dot) - A <G, dA>
//   an error H of S moves dX by beta (H (dS - dot2) - S <H, dS>) + dB^T H; K of dS by beta S (K - <S, K>)
// and the variance of the sum over independent sources, sum_k coefficient_k^2 bound_k^2, is formed
// with matrix products. dX's bound: kLambda sqrt(variance) plus what is shared by a row and added
// coherently (the row kernels' float dot products, the exp-sum of S) plus dX's own float steps.
inline TrilinearPre trilinear_pre(Dtype dt, const std::vector<double>& x, const std::vector<double>& dm,
                                  const TrilinearShape& sh, double beta, Kernel kernel) {
  using Mat = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using Col = Eigen::VectorXd;
  using CMap = Eigen::Map<const Mat>;
  const std::int64_t N = sh.n, C = sh.c, P = sh.p();
  const Storage st = storage(dt);
  TrilinearPre out;
  out.m.resize(x.size());
  out.dx.resize(x.size());
  out.saved.resize(static_cast<std::size_t>(N * C * (P + C)));
  auto vec = [](const Mat& mm) { return std::vector<double>(mm.data(), mm.data() + mm.size()); };
  auto mat = [](const std::vector<double>& v, std::int64_t r, std::int64_t c) { return Mat(CMap(v.data(), r, c)); };
  auto stored = [&](const Mat& val, const Mat& pre) {  // error bound of the value once stored in T
    return mat(allowed(dt, vec(val), vec(pre)), val.rows(), val.cols());
  };
  auto sq = [](const Mat& a) { return Mat(a.cwiseAbs2()); };
  auto mul = [](const Mat& a, const Mat& b) { return Mat(a.cwiseProduct(b)); };
  auto rows = [](const Col& r, Eigen::Index cols) { return Mat(r.replicate(1, cols)); };  // r_i in every column
  const double gP = gemm_gamma(dt, double(P)), gC = gemm_gamma(dt, double(C));
  const double sP = gemm_source(dt, double(P)), sC = gemm_source(dt, double(C)), sC1 = gemm_source(dt, double(C + 1));
  const double dP = row_depth(resolve(kernel, P), P), dC = row_depth(resolve(kernel, C), C);
  for (std::int64_t n = 0; n < N; ++n) {
    const Mat X = CMap(x.data() + n * C * P, C, P), dM = CMap(dm.data() + n * C * P, C, P);
    const Mat aX = X.cwiseAbs(), adM = dM.cwiseAbs(), X2 = sq(X), dM2 = sq(dM);
    // ---- forward, worst case (M, saved S and A)
    Mat S(C, P);
    tasn::cpu::softmax_rows(X.data(), S.data(), C, P, beta, false);
    std::vector<double> esS;
    const Mat preS = mat(softmax_rows_pre(vec(X), vec(S), C, P, beta, kernel, 2.0, &esS), C, P);
    const Mat eS = stored(S, preS);
    const Mat B = S * X.transpose();
    const Mat eB = eS * aX.transpose() + gP * (S + eS) * aX.transpose();
    Mat A(C, C);
    tasn::cpu::softmax_rows(B.data(), A.data(), C, C, 1.0, false);
    std::vector<double> esA;
    const Mat smA = mat(softmax_rows_pre(vec(B), vec(A), C, C, 1.0, kernel, 2.0, &esA), C, C);
    Mat preA(C, C);
    for (std::int64_t i = 0; i < C; ++i) {
      const double d = eB.row(i).maxCoeff();
      for (std::int64_t j = 0; j < C; ++j) preA(i, j) = A(i, j) * std::expm1(2 * d) + std::exp(2 * d) * smA(i, j);
    }
    const Mat eA = stored(A, preA);
    const Mat preM_worst = eA * aX + gC * (A + eA) * aX;
    // ---- backward: exact values
    const Mat M = A * X;
    const Col bbar = mul(A, B).rowwise().sum();
    const Mat w = M - rows(bbar, P);  // sum_j A_ij (X_jp - B_ij)
    const Mat dA = dM * X.transpose();
    const Col dot = mul(A, dA).rowwise().sum();
    const Mat u = dA - rows(dot, C);
    const Mat dB = mul(A, u);
    const Mat dS = dB * X;
    const Col dot2 = mul(S, dS).rowwise().sum();
    const Mat v = dS - rows(dot2, P);
    const Mat acc1 = A.transpose() * dM;
    const Mat acc = acc1 + dB.transpose() * S;
    const Mat dX = beta * mul(S, v) + acc;
    const Mat S2 = sq(S), adB = dB.cwiseAbs();
    // sum_k Q_ik (X_kp - B_ik)^2 and sum_k R_ik (X_kp - B_ik)
    auto sumsq_dev = [&](const Mat& Q) {
      return Mat((Q * X2 - 2.0 * mul(Q, B) * X + rows(mul(Q, sq(B)).rowwise().sum(), P)).cwiseMax(0.0));
    };
    auto sum_dev = [&](const Mat& R) { return Mat(R * X - rows(mul(R, B).rowwise().sum(), P)); };
    // ---- error sources (bounds)
    const Col es_s = Eigen::Map<const Col>(esS.data(), C), es_a = Eigen::Map<const Col>(esA.data(), C);
    const Mat cS = mul(S, rows(es_s, P));  // S's exp-sum error, shared by the row
    const Mat sS = (eS - cS).cwiseMax(0.0);
    // A: the local errors of S through B (exactly: dA_ij = A_ij sum_p dS_ip (X_jp - M_ip)), B's GEMM
    // error per element, A's own rounding and float steps; A's exp-sum error es_a (shared) apart
    const Mat gB = sP * (S + eS) * aX.transpose();
    const Mat hS = sq(sS);
    const Mat viaS = (hS * X2.transpose() - 2.0 * mul(hS, M) * X.transpose() + rows(mul(hS, sq(M)).rowwise().sum(), C)).cwiseMax(0.0);
    const Mat gB2A = mul(sq(A), sq(gB));
    const Mat ownA = st.u * A + Mat::Constant(C, C, st.eta) + (smA - mul(A, rows(es_a, C))).cwiseMax(0.0);
    const Mat sA = (mul(sq(A), viaS + sq(gB) + rows(gB2A.rowwise().sum(), C)) + sq(ownA)).cwiseSqrt();
    // M = A X: A's independent errors through X, the GEMM's own, A's exp-sum (shared: es_a,i M_ip)
    const Mat preM_stat = kLambda * (sq(sA) * X2 + sq(sC * (A + eA) * aX)).cwiseSqrt() + mul(M.cwiseAbs(), rows(es_a, P));
    // cuBLAS converts M's float result to T itself: one more rounding, in case its epilogue does not
    // round to nearest (the only GEMM here whose output is stored in T)
    const Mat preM = preM_worst.cwiseMin(preM_stat) + st.u * M.cwiseAbs();
    const Mat gdA = sP * adM * aX.transpose();
    const Col cd1 = gamma(dC + 1.0) * mul(A + eA, dA.cwiseAbs() + gdA).rowwise().sum();  // dB's dot (float)
    const Mat rdB = st.u * adB + Mat::Constant(C, C, st.eta) + gamma(3.0) * mul(A + eA, u.cwiseAbs() + gdA);
    const Mat gdS = sC * (adB + rdB) * aX;
    const Col cd2 = gamma(dP + 1.0) * mul(S + eS, dS.cwiseAbs() + gdS).rowwise().sum();  // dX's dot (float)
    const Mat gacc = sC * (A + eA).transpose() * adM + sC1 * (acc1.cwiseAbs() + (adB + rdB).transpose() * (S + eS));
    // ---- variance of dX from the independent sources
    Mat V = Mat::Zero(C, P);
    {  // (1) dB's own error (its rounding and float steps)
      const Mat r2 = sq(rdB);
      V += beta * beta * mul(S2, sumsq_dev(r2)) + r2.transpose() * S2;
    }
    {  // (2) dA's GEMM error F: E_ij = A_ij (F_ij - sum_k A_ik F_ik)
      const Mat q = mul(sq(gdA), sq(A));
      const Col qs = q.rowwise().sum();
      V += beta * beta * mul(S2, (sumsq_dev(q) - 2.0 * mul(w, sum_dev(q)) + mul(sq(w), rows(qs, P))).cwiseMax(0.0));
      V += mul(sq(A), sq(gdA) + rows(qs, C)).transpose() * S2;
    }
    {  // (3) A's error G: dX += G^T dM; E_ij = G_ij u_ij - A_ij sum_k G_ik dA_ik
      const Mat a = sq(sA);
      V += beta * beta * mul(S2, (sumsq_dev(mul(a, sq(u))) - 2.0 * mul(w, sum_dev(mul(mul(a, u), dA))) +
                                  mul(sq(w), rows(mul(a, sq(dA)).rowwise().sum(), P))).cwiseMax(0.0));
      // same output row j through G^T dM and dB^T S: (dM_ip + S_ip u_ij)^2 together
      V += (a.transpose() * dM2 + 2.0 * mul(a, u).transpose() * mul(dM, S) + mul(a, sq(u)).transpose() * S2).cwiseMax(0.0);
      const Col t = mul(a, sq(dA)).rowwise().sum();
      V += (2.0 * mul(mul(a, u), mul(A, dA)).cwiseAbs() + mul(sq(A), rows(t, C))).transpose() * S2;
    }
    {  // (4) S's local error H: row i directly, and dB^T H
      const Mat h = sq(sS);
      V += beta * beta * (mul(h, sq(v)) + 2.0 * mul(mul(h, v), mul(S, dS)).cwiseAbs() +
                          mul(S2, rows(mul(h, sq(dS)).rowwise().sum(), P)));
      V += sq(adB).transpose() * h;
      V += mul(sq(adB), rows(Eigen::Map<const Col>(esS.data(), C).cwiseAbs2(), C)).transpose() * S2;  // es_c S_cp via dB^T
    }
    {  // (5) dS's GEMM error K: beta S_ip (K_ip - sum_p' S_ip' K_ip')
      const Mat k2 = sq(gdS);
      V += beta * beta * mul(S2, k2 + rows(mul(S2, k2).rowwise().sum(), P));
    }
    V += sq(gacc);  // (6) the accumulator's GEMMs
    {  // (7) A's exp-sum error, G_ij = es_i A_ij: through A^T dM and dB^T S independent over rows i
      const Mat ea2 = mul(sq(A), rows(es_a.cwiseAbs2(), C)), ud = u - rows(dot, C);
      V += (ea2.transpose() * dM2 + 2.0 * mul(ea2, ud).transpose() * mul(dM, S) + mul(ea2, sq(ud)).transpose() * S2).cwiseMax(0.0);
    }
    // ---- shared by a row (coherent), and dX's own float steps
    const Mat coherent = beta * mul(mul(S, w.cwiseAbs()), rows(cd1, P)) +      // dB's dot: E_ij = -A_ij d1_i
                         mul(A, rows(cd1, C)).transpose() * S +                 //   through dB^T S
                         beta * mul(S, rows(cd2, P)) +                          // dX's dot
                         beta * mul(cS.cwiseAbs(), (dS - 2.0 * rows(dot2, P)).cwiseAbs()) +  // S's exp-sum
                         beta * mul(mul(S, rows(es_a, P)),                      // A's exp-sum, row path
                                    (sum_dev(mul(A, u)) - mul(rows(dot, P), w)).cwiseAbs());
    const Mat local = gamma(3.0) * beta * mul(S + eS, v.cwiseAbs()) + kU * dX.cwiseAbs();
    const Mat preX = kLambda * V.cwiseSqrt() + coherent + local;
    const auto o = static_cast<std::size_t>(n * C * P);
    for (std::int64_t i = 0; i < C * P; ++i) {
      out.m[o + i] = preM.data()[i] * kSecondOrder;
      out.dx[o + i] = preX.data()[i] * kSecondOrder;
      out.saved[o + i] = preS.data()[i];
    }
    const auto oa = static_cast<std::size_t>(N * C * P + n * C * C);
    for (std::int64_t i = 0; i < C * C; ++i) out.saved[oa + i] = preA.data()[i] * kSecondOrder;
  }
  return out;
}

// ---- losses (tasn/losses.cuh) ----------------------------------------------------------------------

struct LossPre {
  std::vector<double> loss, grad, grad_teacher;
};

namespace detail {

// One softmax(scale z) row as the loss kernels compute it: SoftmaxStats over the row group, then
// log-probabilities l_j = scale (z_j - m) - log s, in float (fl(fl(scale fl(z - m)) - logf(s)),
// `arg_roundings` roundings before the subtraction: 3 when scale = 1/T is itself a rounded float)
// or in double from the float scale and log s (log_softmax_at: the scale's rounding only).
// Exact values and error bounds.
struct LogSoftmaxRow {
  std::vector<double> prob, logp, err_logp, err_logp_d, err_prob;  // q, log q; bounds: float and double log q, expf(float log q)
  double log_s = 0.0, err_log_s = 0.0;
};

inline LogSoftmaxRow log_softmax_row(const double* z, std::int64_t k, double scale, double arg_roundings,
                                     double depth) {
  LogSoftmaxRow r;
  const auto K = static_cast<std::size_t>(k);
  r.prob.resize(K);
  r.logp.resize(K);
  r.err_logp.resize(K);
  r.err_logp_d.resize(K);
  r.err_prob.resize(K);
  std::vector<double> a(K);
  const double m = *std::max_element(z, z + k);
  double s = 0.0;
  for (std::int64_t j = 0; j < k; ++j) {
    a[j] = scale * (m - z[j]);
    s += std::exp(-a[j]);
  }
  r.log_s = std::log(s);
  for (std::int64_t j = 0; j < k; ++j) {
    r.prob[j] = std::exp(-a[j]) / s;
    r.logp[j] = -a[j] - r.log_s;
  }
  const double es = exp_sum_rel(r.prob.data(), a.data(), k, depth, true, arg_roundings);
  r.err_log_s = -std::log1p(-es) + kLogUlps * std::fabs(r.log_s);
  const double scale_rounding = arg_roundings > 2.0 ? kU : 0.0;
  for (std::int64_t j = 0; j < k; ++j) {
    r.err_logp[j] = (gamma(arg_roundings) * a[j] + r.err_log_s + kU * std::fabs(r.logp[j])) * kSecondOrder;
    r.err_logp_d[j] = (scale_rounding * a[j] + r.err_log_s) * kSecondOrder + 0x1p-50 * (a[j] + std::fabs(r.log_s));
    r.err_prob[j] = r.prob[j] * ((1.0 + std::expm1(r.err_logp[j])) * (1.0 + kExpRel) - 1.0) + kFloatTiny;
  }
  return r;
}

// The loss of reduced rows: float row losses (unscaled, each rounded), summed in double, times
// `factor` / den in double, rounded to float.
inline std::vector<double> reduced_loss_pre(const std::vector<double>& row_loss, const std::vector<double>& row_err,
                                            double factor, double den) {
  double sum_err = 0.0, sum = 0.0;
  for (std::size_t i = 0; i < row_loss.size(); ++i) {
    sum_err += row_err[i] + kU * std::fabs(row_loss[i]);
    sum += row_loss[i];
  }
  if (!(den > 0)) return {0.0};
  return {(std::fabs(factor) * sum_err / den + kU * std::fabs(factor * sum / den)) * kSecondOrder};
}

}  // namespace detail

// Distillation (distill_row in losses.cuh): p = softmax(zt / T), q = softmax(zs / T) with 1/T a
// float. The row loss sum_j -p_j log q_j (or p_j (log p_j - log q_j)) is formed in double from
// float p_j = expf(log p_j) and double log-probabilities (log_softmax_at), summed by the row group in
// double, times T^2 in double (None: then to float and T; Sum / Mean: the unscaled row loss to
// float, then detail::reduced_loss_pre). dzs = (q - p) g w in float (g = T or 1/T as a float,
// w = mean scale * dloss, two float roundings); dzt = -p (r - sum p r) g w in double, then float.
inline LossPre distillation_pre(const std::vector<double>& zs, const std::vector<double>& zt, std::int64_t n,
                                std::int64_t k, const DistillationOptions& opt, const std::vector<double>& up,
                                Kernel kernel) {
  LossPre out;
  out.grad.resize(zs.size());
  out.grad_teacher.resize(zs.size());
  const double depth = row_depth(resolve(kernel, k), k);
  const double inv_t = 1.0 / opt.temperature, g = opt.grad_factor(), lf = opt.loss_factor();
  const double mean_scale = opt.reduction == Reduction::Mean ? 1.0 / double(n) : 1.0;
  std::vector<double> row_err(static_cast<std::size_t>(n)), row_loss(row_err.size());
  for (std::int64_t i = 0; i < n; ++i) {
    const auto q = detail::log_softmax_row(zs.data() + i * k, k, inv_t, 3.0, depth);
    const auto p = detail::log_softmax_row(zt.data() + i * k, k, inv_t, 3.0, depth);
    double unscaled = 0.0, du = 0.0, abs_sum = 0.0;
    for (std::int64_t j = 0; j < k; ++j) {
      const double r = opt.kl ? p.logp[j] - q.logp[j] : -q.logp[j];
      const double dr = q.err_logp_d[j] + (opt.kl ? p.err_logp_d[j] : 0.0);
      unscaled += p.prob[j] * r;
      du += p.err_prob[j] * std::fabs(r) + (p.prob[j] + p.err_prob[j]) * dr;
      abs_sum += (p.prob[j] + p.err_prob[j]) * (std::fabs(r) + dr);
    }
    du = (du + gamma(depth + 2.0, 0x1p-53) * abs_sum) * kSecondOrder;  // the double sums
    row_loss[i] = unscaled;
    row_err[i] = du;
    const double w = mean_scale * (up.empty() ? 1.0 : up[opt.reduction == Reduction::None ? i : 0]);
    const double gw = std::fabs(g * w);
    for (std::int64_t j = 0; j < k; ++j) {
      const std::size_t e = static_cast<std::size_t>(i * k + j);
      const double qj = q.prob[j], pj = p.prob[j], eq = q.err_prob[j], ep = p.err_prob[j];
      const double dqp = eq + ep + kU * (std::fabs(qj - pj) + eq + ep);
      out.grad[e] = (gw * (dqp + gamma(6.0) * (std::fabs(qj - pj) + dqp))) * kSecondOrder + kFloatTiny;
      const double r = opt.kl ? q.logp[j] - p.logp[j] : q.logp[j];
      const double dr = q.err_logp_d[j] + (opt.kl ? p.err_logp_d[j] : 0.0);
      const double rd = std::fabs(r + unscaled);  // r - sum p r, sum p r = -unscaled
      const double drd = dr + du;
      out.grad_teacher[e] = (gw * (ep * (rd + drd) + pj * drd + gamma(4.0) * (pj + ep) * (rd + drd))) * kSecondOrder + kFloatTiny;
    }
  }
  if (opt.reduction == Reduction::None) {
    out.loss.resize(row_err.size());
    for (std::int64_t i = 0; i < n; ++i) out.loss[i] = (lf * row_err[i] + kU * std::fabs(lf * row_loss[i])) * kSecondOrder;
  } else {
    out.loss = detail::reduced_loss_pre(row_loss, row_err, lf, opt.reduction == Reduction::Mean ? double(n) : 1.0);
  }
  return out;
}

// Cross-entropy (cross_entropy_row in losses.cuh), in float: nll = -(z_y - m - log s),
// sum_lq = sum_j (z_j - m) - K log s (eps > 0), row loss (1 - eps) nll - eps sum_lq / K with eps and
// 1/K floats, times grad_scale in double (None: then to float and T; Sum / Mean as distillation);
// dz = (q - t) s w in float (s = grad_scale, w = mean scale * dloss, floats). Ignored rows: exact zeros.
inline LossPre cross_entropy_pre(const std::vector<double>& z, const std::vector<long long>& labels, std::int64_t n,
                                 std::int64_t k, const CrossEntropyOptions& opt, Kernel kernel) {
  LossPre out;
  out.grad.assign(z.size(), 0.0);
  const double depth = row_depth(resolve(kernel, k), k);
  const double eps = opt.label_smoothing;
  std::int64_t valid = 0;
  for (std::int64_t i = 0; i < n; ++i) valid += labels[i] != opt.ignore_index;
  const double mean_scale = opt.reduction == Reduction::Mean ? (valid > 0 ? 1.0 / double(valid) : 0.0) : 1.0;
  std::vector<double> row_err(static_cast<std::size_t>(n), 0.0), row_loss(row_err.size(), 0.0);
  for (std::int64_t i = 0; i < n; ++i) {
    const long long y = labels[i];
    if (y == opt.ignore_index) continue;
    const double* zr = z.data() + i * k;
    const auto q = detail::log_softmax_row(zr, k, 1.0, 1.0, depth);
    const double m = *std::max_element(zr, zr + k);
    double sum_shift = 0.0;
    for (std::int64_t j = 0; j < k; ++j) sum_shift += m - zr[j];
    const double dshift = eps > 0 ? gamma(depth + 1.0) * sum_shift : 0.0;
    const double slq = -sum_shift - double(k) * q.log_s;
    const double dslq = dshift + double(k) * (q.err_log_s + kU * std::fabs(q.log_s)) + kU * std::fabs(slq);
    const double nll = -q.logp[y];
    const double dnll = kU * (m - zr[y]) + q.err_log_s + kU * std::fabs(nll);
    const double a = (1.0 - eps) * std::fabs(nll) + eps / double(k) * std::fabs(slq);
    row_loss[i] = (1.0 - eps) * nll - eps * slq / double(k);
    row_err[i] = ((1.0 - eps) * dnll + eps / double(k) * dslq + gamma(6.0) * a) * kSecondOrder;
    const double sw = std::fabs(opt.grad_scale * mean_scale);
    for (std::int64_t j = 0; j < k; ++j) {
      const double t = (j == y ? 1.0 - eps : 0.0) + eps / double(k);
      const double qj = q.prob[j], eq = q.err_prob[j];
      out.grad[i * k + j] =
          (sw * (eq + gamma(3.0) * t + kU * (std::fabs(qj - t) + eq)) + gamma(6.0) * sw * std::fabs(qj - t)) *
              kSecondOrder + kFloatTiny;
    }
  }
  const double gs = opt.grad_scale;
  if (opt.reduction == Reduction::None) {
    out.loss.resize(row_err.size());
    for (std::int64_t i = 0; i < n; ++i) out.loss[i] = (std::fabs(gs) * row_err[i] + kU * std::fabs(gs * row_loss[i])) * kSecondOrder;
  } else {
    out.loss = detail::reduced_loss_pre(row_loss, row_err, gs, opt.reduction == Reduction::Mean ? double(valid) : 1.0);
  }
  return out;
}

// ---- attention sampler (tasn/attention_sampler.cuh); maps, marginals and grids are float, the CPU
// reference is the float CPU path, so both sides' arithmetic counts -----------------------------------

// Channel sum of m (N, C, p) in channel order on both sides: each off by gamma(C - 1) sum|m|.
inline std::vector<double> structure_map_pre(const std::vector<float>& m, std::int64_t N, std::int64_t C,
                                             std::int64_t p) {
  std::vector<double> pre(static_cast<std::size_t>(N * p), 0.0);
  for (std::int64_t n = 0; n < N; ++n)
    for (std::int64_t c = 0; c < C; ++c)
      for (std::int64_t i = 0; i < p; ++i) pre[n * p + i] += std::fabs(double(m[(n * C + c) * p + i]));
  for (double& v : pre) v *= 2 * gamma(double(C));
  return pre;
}

struct MarginalsPre {
  std::vector<double> my, mx;  // per element
};

// Marginals of a float map (N, h, w), bilinearly upsampled to (Hs, Ws) (and squared first, as
// attention_sample(squared) materialises it). Both sides evaluate upsample_at with the same weights
// (identical float operations) but may contract differently (FMA): each value is off by
// gamma(4) max|4 neighbours|, each side; squaring adds 2|v| that + u v^2 per side. Row / column
// maxima move by at most the largest of those; my = r / sum r (double), rounded to float per side.
inline MarginalsPre marginals_pre(const std::vector<float>& map, std::int64_t N, std::int64_t h, std::int64_t w,
                                  std::int64_t Hs, std::int64_t Ws, bool squared) {
  MarginalsPre out;
  out.my.resize(static_cast<std::size_t>(N * Hs));
  out.mx.resize(static_cast<std::size_t>(N * Ws));
  std::vector<double> ry(static_cast<std::size_t>(Hs)), rx(static_cast<std::size_t>(Ws)), ey(ry.size()), ex(rx.size());
  for (std::int64_t n = 0; n < N; ++n) {
    const float* a = map.data() + n * h * w;
    std::fill(ry.begin(), ry.end(), 0.0);
    std::fill(rx.begin(), rx.end(), 0.0);
    std::fill(ey.begin(), ey.end(), 0.0);
    std::fill(ex.begin(), ex.end(), 0.0);
    bool finite = true;
    for (std::int64_t y = 0; y < Hs; ++y)
      for (std::int64_t x = 0; x < Ws; ++x) {
        double v, e;
        if (Hs == h && Ws == w) {
          v = a[y * w + x];
          e = 0.0;
        } else {
          v = tasn::sampler::upsample_at<float, double>(a, h, w, Hs, Ws, y, x);
          const auto ty = tasn::resize_tap<double>(y, h, Hs, true), tx = tasn::resize_tap<double>(x, w, Ws, true);
          const std::int64_t y0 = ty.i0, y1 = ty.i1, x0 = tx.i0, x1 = tx.i1;
          const double m4 = std::max({std::fabs(double(a[y0 * w + x0])), std::fabs(double(a[y0 * w + x1])),
                                      std::fabs(double(a[y1 * w + x0])), std::fabs(double(a[y1 * w + x1]))});
          e = 2 * gamma(4.0) * m4;
        }
        if (squared) {
          e = 2 * std::fabs(v) * e + e * e + 2 * kU * v * v;
          v = v * v;
        }
        if (!std::isfinite(v)) finite = false;
        ry[y] = std::max(ry[y], v);
        rx[x] = std::max(rx[x], v);
        ey[y] = std::max(ey[y], e);
        ex[x] = std::max(ex[x], e);
      }
    for (auto [r, e, len, dst] :
         {std::make_tuple(&ry, &ey, Hs, out.my.data() + n * Hs), std::make_tuple(&rx, &ex, Ws, out.mx.data() + n * Ws)}) {
      double mass = 0.0, emass = 0.0;
      for (std::int64_t i = 0; i < len; ++i) {
        mass += (*r)[i];
        emass += (*e)[i];
      }
      if (!finite || !(mass > 0.0) || !std::isfinite(mass)) {  // uniform fallback, exact on both sides
        for (std::int64_t i = 0; i < len; ++i) dst[i] = 0.0;
        continue;
      }
      for (std::int64_t i = 0; i < len; ++i) {
        const double mi = (*r)[i] / mass;
        dst[i] = ((*e)[i] + mi * emass) / (mass - emass) * kSecondOrder + 2 * kU * mi;
      }
    }
  }
  return out;
}

struct GridPre {
  std::vector<double> gy, gx;
};

namespace detail {

// The magnification limit (SPEC 3b) and knot CDF (3c) of one sample, in double, for the grid
// bound's knot spacing only (written here so that the bound does not depend on library internals).
inline void limited_knot_cdfs(std::vector<double>& ty, std::vector<double>& tx, std::int64_t out_rows,
                              std::int64_t out_cols, const GridOptions& opt) {
  for (auto* t : {&ty, &tx}) {  // normalised: negatives as 0, sum 1 (uniform without mass)
    double mass = 0.0;
    for (double& v : *t) mass += (v = std::max(v, 0.0));
    for (double& v : *t) v = mass > 0.0 ? v / mass : 1.0 / double(t->size());
  }
  const double Ho = double(out_rows), Wo = double(out_cols), Hs = double(ty.size()), Ws = double(tx.size());
  for (double& v : ty) v *= Ho;
  for (double& v : tx) v *= Wo;
  for (int it = 0; it < opt.iters; ++it) {
    const double my = *std::max_element(ty.begin(), ty.end()), mx = *std::max_element(tx.begin(), tx.end());
    for (auto [t, t0, O] : {std::make_tuple(&ty, opt.dense * Ho / Hs, Ho), std::make_tuple(&tx, opt.dense * Wo / Ws, Wo)}) {
      double cap = std::min(my, mx), sum = 0.0;
      if (it == 0) cap = std::min(cap, t0);
      for (double& v : *t) sum += (v = std::min(v, cap));
      const double add = (O - sum) / double(t->size());
      for (double& v : *t) v += add;
    }
  }
  for (auto* t : {&ty, &tx}) {
    std::vector<double> c(t->size());
    if (opt.mode == GridMode::Exact) {
      c[0] = 0.0;
      for (std::size_t k = 1; k < c.size(); ++k) c[k] = c[k - 1] + 0.5 * ((*t)[k - 1] + (*t)[k]);
    } else {
      c[0] = 1.0;
      for (std::size_t k = 1; k < c.size(); ++k) c[k] = c[k - 1] + (*t)[k];
    }
    *t = c;
  }
}

}  // namespace detail

// The grid (sampling_grid; double math, float out) from the same marginals my, mx on both sides:
// the same double formulas in different orders (block sums and scans vs loops) make the knot CDF
// differ by about 2^(iters+1) S 2^-53 of its total (each magnification-limit iteration at most
// doubles a perturbation of the limited marginals: the cap min(max_y, max_x) is shared by both axes,
// the refill spreads the sum's error evenly); a point of the piecewise-linear inverse CDF moves by at
// most 4 |dc| / (smallest knot spacing) knots, the grid by 2 / (S - 1) of that; each side then rounds
// to float (u |g| each).
//
// When the two sides start from different marginals (attention_sample: each side computes its own,
// off by at most pre_my / pre_mx, MarginalsPre), their effect is added to first order: entry k of a
// marginal moved by +-pre_k moves the grid by d_k (the CPU grid, recomputed in double with that one
// entry moved), and the grid point by at most sum_k |d_k|. The output sizes Ho, Wo are those of gy
// (N * Ho values) and gx (N * Wo).
inline GridPre grid_pre(const std::vector<float>& my, const std::vector<float>& mx, std::int64_t N, std::int64_t Hs,
                        std::int64_t Ws, const GridOptions& opt, const std::vector<float>& gy,
                        const std::vector<float>& gx, const std::vector<double>* pre_my = nullptr,
                        const std::vector<double>* pre_mx = nullptr) {
  GridPre out;
  out.gy.resize(gy.size());
  out.gx.resize(gx.size());
  const auto Ho = static_cast<std::int64_t>(gy.size()) / N, Wo = static_cast<std::int64_t>(gx.size()) / N;
  // the CPU grid of one sample (Hs, Ws) -> (Ho, Wo)
  auto cpu_grid = [&](const std::vector<double>& py, const std::vector<double>& px, std::vector<double>& oy,
                      std::vector<double>& ox) {
    tasn::cpu::sampling_grid(tasn::GridArgs<double>{
        {py.data(), {1, Hs}}, {px.data(), {1, Ws}}, {oy.data(), {1, Ho}}, {ox.data(), {1, Wo}}, opt});
  };
  for (std::int64_t n = 0; n < N; ++n) {
    std::vector<double> ty(my.begin() + n * Hs, my.begin() + (n + 1) * Hs), tx(mx.begin() + n * Ws, mx.begin() + (n + 1) * Ws);
    const std::vector<double> by(ty), bx(tx);
    detail::limited_knot_cdfs(ty, tx, Ho, Wo, opt);
    const double growth = std::ldexp(1.0, opt.iters);
    for (auto [c, S, O, g, pre] : {std::make_tuple(&ty, Hs, Ho, gy.data() + n * Ho, out.gy.data() + n * Ho),
                                   std::make_tuple(&tx, Ws, Wo, gx.data() + n * Wo, out.gx.data() + n * Wo)}) {
      double min_gap = opt.mode == GridMode::Official ? (*c)[0] : INFINITY;
      for (std::int64_t i = 1; i < S; ++i) min_gap = std::min(min_gap, (*c)[i] - (*c)[i - 1]);
      const double dc = growth * 2.0 * 0x1p-53 * (*c)[S - 1] * double(S);
      const double dg = S > 1 ? (min_gap > 0 ? 8.0 * dc / (double(S - 1) * min_gap) : INFINITY) : 0.0;
      for (std::int64_t i = 0; i < O; ++i) pre[i] = dg * kSecondOrder + 2 * kU * std::fabs(double(g[i]));
    }
    if (!pre_my || !pre_mx) continue;
    // first-order sensitivity to each marginal entry, both signs, one entry at a time
    std::vector<double> py(by), px(bx), g0y(Ho), g0x(Wo), g1y(Ho), g1x(Wo), ey(Ho, 0.0), ex(Wo, 0.0);
    cpu_grid(py, px, g0y, g0x);
    std::vector<double> wy(Ho), wx(Wo);
    for (auto [m, S, b] : {std::make_tuple(&py, Hs, pre_my->data() + n * Hs), std::make_tuple(&px, Ws, pre_mx->data() + n * Ws)}) {
      for (std::int64_t k = 0; k < S; ++k) {
        if (!(b[k] > 0.0)) continue;
        std::fill(wy.begin(), wy.end(), 0.0);
        std::fill(wx.begin(), wx.end(), 0.0);
        const double keep = (*m)[k];
        for (double sign : {1.0, -1.0}) {
          (*m)[k] = keep + sign * b[k];
          cpu_grid(py, px, g1y, g1x);
          for (std::int64_t i = 0; i < Ho; ++i) wy[i] = std::max(wy[i], std::fabs(g1y[i] - g0y[i]));
          for (std::int64_t i = 0; i < Wo; ++i) wx[i] = std::max(wx[i], std::fabs(g1x[i] - g0x[i]));
        }
        (*m)[k] = keep;
        for (std::int64_t i = 0; i < Ho; ++i) ey[i] += wy[i];
        for (std::int64_t i = 0; i < Wo; ++i) ex[i] += wx[i];
      }
    }
    for (std::int64_t i = 0; i < Ho; ++i) out.gy[n * Ho + i] += ey[i] * kSecondOrder;
    for (std::int64_t i = 0; i < Wo; ++i) out.gx[n * Wo + i] += ex[i] * kSecondOrder;
  }
  return out;
}

namespace detail {
inline std::vector<double> abs_vector(const std::vector<float>& v) {
  std::vector<double> a(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) a[i] = std::fabs(double(v[i]));
  return a;
}
inline std::vector<double> to_double(const std::vector<float>& v) { return std::vector<double>(v.begin(), v.end()); }
}  // namespace detail

// Bilinear sampling forward (sample_plane: four products of a pixel and a float weight product, summed):
// each side off by gamma(5) sum_taps w |img|, which is the sampling of |img| (weights are >= 0).
// dev_gy / dev_gx: the grid the device sampled at when it is not the CPU's (attention_sample): a
// bilinear sample moves by at most D per pixel of displacement along each axis, D = the largest
// difference of neighbouring pixels (zero padding included); the displacement is
// |dg| (size - 1) / 2 plus the rounding of the tap coordinate (g + 1) (size - 1) / 2 (2u of it, each side).
inline std::vector<double> separable_forward_pre(const std::vector<float>& img, std::int64_t N, std::int64_t C,
                                                 std::int64_t Hi, std::int64_t Wi, const std::vector<float>& gy,
                                                 const std::vector<float>& gx, std::int64_t Ho, std::int64_t Wo,
                                                 const std::vector<float>* dev_gy = nullptr,
                                                 const std::vector<float>* dev_gx = nullptr) {
  const auto aimg = detail::abs_vector(img);
  const auto dgy = detail::to_double(gy), dgx = detail::to_double(gx);
  std::vector<double> pre(static_cast<std::size_t>(N * C * Ho * Wo));
  tasn::cpu::sample_separable(tasn::SampleSeparableArgs<double>{
      {aimg.data(), {N, C, Hi, Wi}}, {dgy.data(), {N, Ho}}, {dgx.data(), {N, Wo}}, {pre.data(), {N, C, Ho, Wo}}, {}});
  for (double& v : pre) v *= 2 * gamma(5.0) * kSecondOrder;
  if (dev_gy && dev_gx) {
    for (std::int64_t nc = 0; nc < N * C; ++nc) {
      const float* pl = img.data() + nc * Hi * Wi;
      double D = 0.0;
      for (std::int64_t y = 0; y < Hi; ++y)
        for (std::int64_t x = 0; x < Wi; ++x) {
          const double v = pl[y * Wi + x];
          D = std::max(D, std::fabs(v));  // against the zero padding
          if (x + 1 < Wi) D = std::max(D, std::fabs(double(pl[y * Wi + x + 1]) - v));
          if (y + 1 < Hi) D = std::max(D, std::fabs(double(pl[(y + 1) * Wi + x]) - v));
        }
      const std::int64_t n = nc / C;
      for (std::int64_t y = 0; y < Ho; ++y) {
        const double gyv = gy[n * Ho + y], dyv = std::fabs(double((*dev_gy)[n * Ho + y]) - gyv);
        const double py = dyv * 0.5 * double(Hi - 1) + (dyv > 0 ? 4 * kU * (std::fabs(gyv) + 1.0) * 0.5 * double(Hi - 1) : 0.0);
        for (std::int64_t x = 0; x < Wo; ++x) {
          const double gxv = gx[n * Wo + x], dxv = std::fabs(double((*dev_gx)[n * Wo + x]) - gxv);
          const double px = dxv * 0.5 * double(Wi - 1) + (dxv > 0 ? 4 * kU * (std::fabs(gxv) + 1.0) * 0.5 * double(Wi - 1) : 0.0);
          pre[(nc * Ho + y) * Wo + x] += D * (px + py) * kSecondOrder;
        }
      }
    }
  }
  return pre;
}

// Separable backward: both sides add, per input pixel, the tap weights times dout in output order,
// first along x (<= Wo terms), then along y (<= Ho terms): gamma(Wo + Ho + 2) times the same sums of
// |terms| (the backward of |dout|), each side.
inline std::vector<double> separable_backward_pre(const std::vector<float>& dout, std::int64_t N, std::int64_t C,
                                                  std::int64_t Hi, std::int64_t Wi, const std::vector<float>& gy,
                                                  const std::vector<float>& gx, std::int64_t Ho, std::int64_t Wo) {
  const auto ad = detail::abs_vector(dout);
  const auto dgy = detail::to_double(gy), dgx = detail::to_double(gx);
  std::vector<double> pre(static_cast<std::size_t>(N * C * Hi * Wi));
  tasn::cpu::sample_separable_backward(tasn::SampleSeparableBackwardArgs<double>{
      {ad.data(), {N, C, Ho, Wo}}, {dgy.data(), {N, Ho}}, {dgx.data(), {N, Wo}}, {pre.data(), {N, C, Hi, Wi}}, {}});
  for (double& v : pre) v *= 2 * gamma(double(Wo + Ho + 2)) * kSecondOrder;
  return pre;
}

// General-grid forward: as separable_forward_pre.
inline std::vector<double> grid_forward_pre(const std::vector<float>& img, std::int64_t N, std::int64_t C,
                                            std::int64_t Hi, std::int64_t Wi, const std::vector<float>& grid,
                                            std::int64_t Ho, std::int64_t Wo) {
  const auto aimg = detail::abs_vector(img);
  const auto dg = detail::to_double(grid);
  std::vector<double> pre(static_cast<std::size_t>(N * C * Ho * Wo));
  tasn::cpu::sample_grid(tasn::SampleGridArgs<double>{
      {aimg.data(), {N, C, Hi, Wi}}, {dg.data(), {N, Ho, Wo, 2}}, {pre.data(), {N, C, Ho, Wo}}, {}});
  for (double& v : pre) v *= 2 * gamma(5.0) * kSecondOrder;
  return pre;
}

struct GridBackwardPre {
  std::vector<double> dimg, dgrid;
};

// General-grid backward. dimg: the device adds each output pixel's term w_x w_y dout (two float
// products) with float atomicAdd in whatever order the threads arrive; the CPU in pixel order. Any
// order of n terms is off by gamma(n - 1) sum|terms| (the atomics' order is arbitrary but each is
// one correctly rounded float addition), so an input pixel that receives n terms is off by
// gamma(n + 2) sum|terms| per side; n is counted from the grid, sum|terms| is the backward of |dout|.
// dgrid (float out, same expression and channel order both sides): per output pixel
// sum_c d (w (ne - nw) + w (se - sw)) times (size - 1) / 2, gamma(C + 5) times its sum of |terms|.
inline GridBackwardPre grid_backward_pre(const std::vector<float>& img, const std::vector<float>& grid,
                                         const std::vector<float>& dout, std::int64_t N, std::int64_t C,
                                         std::int64_t Hi, std::int64_t Wi, std::int64_t Ho, std::int64_t Wo) {
  GridBackwardPre out;
  const std::int64_t P = Ho * Wo;
  const auto ad = detail::abs_vector(dout);
  const auto dg = detail::to_double(grid);
  out.dimg.resize(img.size());
  tasn::SampleGridBackwardArgs<double> args{};  // no img, no dgrid: dimg's view gives (Hi, Wi)
  args.grid = {dg.data(), {N, Ho, Wo, 2}};
  args.dout = {ad.data(), {N, C, Ho, Wo}};
  args.dimg = {out.dimg.data(), {N, C, Hi, Wi}};
  tasn::cpu::sample_grid_backward(args);
  std::vector<int> count(static_cast<std::size_t>(N * Hi * Wi), 0);
  out.dgrid.resize(grid.size());
  for (std::int64_t n = 0; n < N; ++n)
    for (std::int64_t i = 0; i < P; ++i) {
      const float* g = grid.data() + (n * P + i) * 2;
      const auto tx = tasn::sampler::taps_of<float>(g[0], Wi);
      const auto ty = tasn::sampler::taps_of<float>(g[1], Hi);
      for (std::int64_t yy : {ty.i0, ty.i0 + 1})
        for (std::int64_t xx : {tx.i0, tx.i0 + 1})
          if (tasn::sampler::tap_in(yy, Hi) && tasn::sampler::tap_in(xx, Wi)) ++count[(n * Hi + yy) * Wi + xx];
      double ax = 0.0, ay = 0.0;
      for (std::int64_t c = 0; c < C; ++c) {
        const float* pl = img.data() + (n * C + c) * Hi * Wi;
        const double d = std::fabs(double(dout[(n * C + c) * P + i]));
        auto px = [&](std::int64_t yy, std::int64_t xx) { return tasn::sampler::pixel_or_zero<float, double>(pl, Hi, Wi, yy, xx); };
        const double nw = px(ty.i0, tx.i0), ne = px(ty.i0, tx.i0 + 1), sw = px(ty.i0 + 1, tx.i0), se = px(ty.i0 + 1, tx.i0 + 1);
        ax += d * (double(ty.w0) * std::fabs(ne - nw) + double(ty.w1) * std::fabs(se - sw));
        ay += d * (double(tx.w0) * std::fabs(sw - nw) + double(tx.w1) * std::fabs(se - ne));
      }
      out.dgrid[(n * P + i) * 2] = 2 * gamma(double(C + 5)) * ax * double(tx.scale) * kSecondOrder;
      out.dgrid[(n * P + i) * 2 + 1] = 2 * gamma(double(C + 5)) * ay * double(ty.scale) * kSecondOrder;
    }
  for (std::int64_t nc = 0; nc < N * C; ++nc) {
    const std::int64_t n = nc / C;
    for (std::int64_t j = 0; j < Hi * Wi; ++j)
      out.dimg[nc * Hi * Wi + j] *= 2 * gamma(double(count[n * Hi * Wi + j] + 2)) * kSecondOrder;
  }
  return out;
}

}  // namespace tasn::test::tol
