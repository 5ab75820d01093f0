// CPU replay of the GPU tests' numerics: checks the tolerances of tests/test_*_gpu.cpp without a GPU.
//
// For each GPU test, its data generator and sizes, this file recomputes on the CPU what the device
// computes: the same storage-rounded inputs, float math in the kernels' order (row groups: strided
// per-lane / per-thread partials, then CUB's trees; SoftmaxStats; FMA where nvcc contracts), the
// shared TASN_HD functions, intermediates and outputs rounded to the storage type with an exact
// software rounding (tol::round_to_storage, equal to CUDA's conversions). It then compares with the
// same reference the GPU test uses and asserts that the derived bound (tests/support/gpu_tolerance.h)
// covers the replayed error. The GPU tests allow kGpuSafety (2) times the bound's arithmetic part, so
// the replay fits the GPU tolerance with that margin; the storage rounding part is exact on both sides
// (the replay reaches it: an element can round by a full half ulp) and needs none.
//
// It also evaluates the tolerances the GPU tests had before the bounds were derived ("legacy") and
// prints which comparisons they would have failed; the half softmax-backward case is asserted (the
// absolute floor 1e-6 max|ref| is below the rounding error of half subnormals).
//
// Keep the generators here in step with the GPU tests (same seeds, ranges and sizes).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "support/gpu_cases.h"
#include "support/gpu_tolerance.h"
#include "support/loss_calls.h"
#include "support/test_support.h"
#include "tasn/attention_sampler.h"
#include "tasn/core/softmax_cpu.h"
#include "tasn/losses.h"
#include "tasn/trilinear_attention.h"

namespace {
namespace tt = tasn::test;
namespace tol = tasn::test::tol;
using tol::Dtype;
using tol::Kernel;
using tasn::Reduction;
using tasn::TrilinearShape;

constexpr Dtype kDtypes[] = {Dtype::F32, Dtype::F16, Dtype::BF16};
constexpr Kernel kKernels[] = {Kernel::Auto, Kernel::Warp, Kernel::Block};

const char* dname(Dtype d) { return d == Dtype::F16 ? "half" : d == Dtype::BF16 ? "bfloat16" : "float"; }
const char* kname(Kernel k) { return k == Kernel::Warp ? "warp" : k == Kernel::Block ? "block" : "auto"; }

std::vector<float> rounded(Dtype d, const std::vector<double>& v) { return tol::round_to_storage(d, tt::cast_vector<float>(v)); }

// ---- reporting ---------------------------------------------------------------------------------

// Checks a replayed result against the derived bound (share 1) and prints the largest |err| / bound
// and |err| / GPU allowance.
void expect_covered(const std::string& what, const std::vector<float>& got, const std::vector<double>& ref, Dtype out,
                    const std::vector<double>& pre) {
  const auto r = tol::check_bound(got, ref, out, pre, 1.0);
  const auto g = tol::check_bound(got, ref, out, pre);
  EXPECT_TRUE(r.ok) << what << ": " << r.message();
  double mref = 0, merr = 0, mall = 0;
  const auto al = tol::allowed(out, ref, pre, tol::kGpuSafety);
  for (std::size_t i = 0; i < ref.size(); ++i) {
    mref = std::max(mref, std::fabs(ref[i]));
    merr = std::max(merr, std::fabs(double(got[i]) - ref[i]));
    mall = std::max(mall, al[i]);
  }
  std::printf("[replay] %-60s |err|/bound %.3g  |err|/gpu-allowed %.3g  max err/max|ref| %.3g  max gpu-allowed/max|ref| %.3g\n",
              what.c_str(), r.ratio, g.ratio, merr / mref, mall / mref);
}

template <class R>
std::vector<double> as_double(const std::vector<R>& v) { return std::vector<double>(v.begin(), v.end()); }

// The old check |got - ref| <= atol + rtol |ref| (tt::compare) with a readable worst element.
template <class G, class R>
bool legacy_ok(const std::vector<G>& got, const std::vector<R>& ref, double atol, double rtol, std::string* detail) {
  const auto r = tt::compare(got, ref, atol, rtol);
  char buf[200];
  const double lim = atol + rtol * std::fabs(r.ref_at_worst);
  std::snprintf(buf, sizeof buf, "(worst index %lld: got %.9g, expected %.9g, |err| %.3g > allowed %.3g)",
                static_cast<long long>(r.worst), r.got_at_worst, r.ref_at_worst, std::fabs(r.got_at_worst - r.ref_at_worst), lim);
  *detail = buf;
  return r.ok;
}

// Legacy verdicts: (comparison, failed) in order, printed by each test.
struct Legacy {
  std::vector<std::pair<std::string, bool>> rows;
  void add(const std::string& what, bool ok, const std::string& detail = "") {
    rows.emplace_back(what, !ok);
    if (!ok) std::printf("[legacy] WOULD FAIL %s %s\n", what.c_str(), detail.c_str());
  }
  int failures() const {
    int f = 0;
    for (const auto& r : rows) f += r.second;
    return f;
  }
  ~Legacy() { std::printf("[legacy] %d of %zu comparisons would fail with the old tolerances\n", failures(), rows.size()); }
};

// ---- row groups as the device orders them -------------------------------------------------------

// Reduces one value per group member (32 lanes, or 256 threads) like CUB: a warp combines lane l with
// lane l + o for o = 1, 2, 4, 8, 16 (result in lane 0); a block reduces each warp so, then thread 0
// folds the warp aggregates in order.
template <class V, class Op>
V group_reduce(std::vector<V> v, Op op) {
  auto warp = [&](std::size_t base) {
    for (std::size_t o = 1; o < 32; o *= 2) {
      std::vector<V> t(v.begin() + base, v.begin() + base + 32);
      for (std::size_t l = 0; l + o < 32; ++l) t[l] = op(t[l], t[l + o]);
      std::copy(t.begin(), t.end(), v.begin() + base);
    }
    return v[base];
  };
  V acc = warp(0);
  for (std::size_t w = 32; w < v.size(); w += 32) acc = op(acc, warp(w));
  return acc;
}

std::size_t group_size(Kernel k, std::int64_t len) { return tol::resolve(k, len) == Kernel::Warp ? 32 : 256; }

float fsum(const std::vector<float>& partial) {
  return group_reduce(partial, [](float a, float b) { return a + b; });
}

using Stats = tasn::SoftmaxStats<float>;

Stats stats_reduce(const std::vector<Stats>& partial, float scale) {
  return group_reduce(partial, [scale](const Stats& a, const Stats& b) { return Stats::combine(a, b, scale); });
}

// tasn::cuda::softmax_rows: warp variant max, exp terms, sum; block variant SoftmaxStats.
std::vector<float> softmax_rows_replay(Dtype dt, const std::vector<float>& in, std::int64_t rows, std::int64_t len,
                                       float scale, Kernel kernel) {
  std::vector<float> out(in.size());
  const std::size_t G = group_size(kernel, len);
  const bool warp = tol::resolve(kernel, len) == Kernel::Warp;
  for (std::int64_t r = 0; r < rows; ++r) {
    const float* x = in.data() + r * len;
    float m, s;
    if (warp) {
      m = *std::max_element(x, x + len);
      std::vector<float> part(G, 0.f);
      for (std::size_t t = 0; t < G; ++t)
        for (std::int64_t k = static_cast<std::int64_t>(t); k < len; k += static_cast<std::int64_t>(G))
          part[t] += tasn::softmax_term(x[k], m, scale);
      s = fsum(part);
    } else {
      std::vector<Stats> part(G, Stats::empty());
      for (std::size_t t = 0; t < G; ++t)
        for (std::int64_t k = static_cast<std::int64_t>(t); k < len; k += static_cast<std::int64_t>(G)) part[t].push(x[k], scale);
      const Stats st = stats_reduce(part, scale);
      m = st.m;
      s = st.s;
    }
    const float inv = 1.f / s;
    for (std::int64_t k = 0; k < len; ++k) out[r * len + k] = tol::round_to_storage(dt, tasn::softmax_term(x[k], m, scale) * inv);
  }
  return out;
}

// tasn::cuda::softmax_backward_rows: dot by the row group (FMA per lane), then
// fma(scale * y, dy - dot, add) rounded to the storage type.
std::vector<float> softmax_backward_replay(Dtype dt, const std::vector<float>& y, const std::vector<float>& dy,
                                           const std::vector<float>& add, std::int64_t rows, std::int64_t len,
                                           float scale, Kernel kernel) {
  std::vector<float> out(y.size());
  const std::size_t G = group_size(kernel, len);
  for (std::int64_t r = 0; r < rows; ++r) {
    const std::int64_t b = r * len;
    std::vector<float> part(G, 0.f);
    for (std::size_t t = 0; t < G; ++t)
      for (std::int64_t k = static_cast<std::int64_t>(t); k < len; k += static_cast<std::int64_t>(G))
        part[t] = std::fma(y[b + k], dy[b + k], part[t]);
    const float dot = fsum(part);
    for (std::int64_t k = 0; k < len; ++k)
      out[b + k] = tol::round_to_storage(dt, std::fma(scale * y[b + k], dy[b + k] - dot, add.empty() ? 0.f : add[b + k]));
  }
  return out;
}

// ---- storage rounding ----------------------------------------------------------------------------

TEST(GpuTolerances, StorageRoundingIsExact) {
  // half: 11 significant bits, normals from 2^-14, subnormal spacing 2^-24, largest 65504
  EXPECT_EQ(tol::round_to_storage(Dtype::F16, 1.f + 0x1p-11f), 1.f);                  // tie to even
  EXPECT_EQ(tol::round_to_storage(Dtype::F16, 1.f + 3 * 0x1p-11f), 1.f + 0x1p-9f);     // tie to even (up)
  EXPECT_EQ(tol::round_to_storage(Dtype::F16, 1.f + 0x1p-11f + 0x1p-20f), 1.f + 0x1p-10f);
  EXPECT_EQ(tol::round_to_storage(Dtype::F16, 0x1p-25f), 0.f);                         // tie to even (0)
  EXPECT_EQ(tol::round_to_storage(Dtype::F16, 0x1.8p-25f), 0x1p-24f);
  EXPECT_EQ(tol::round_to_storage(Dtype::F16, 3 * 0x1p-25f), 2 * 0x1p-24f);            // tie to even
  EXPECT_EQ(tol::round_to_storage(Dtype::F16, -5e-8f), -0x1p-24f);
  EXPECT_EQ(tol::round_to_storage(Dtype::F16, 65519.f), 65504.f);
  EXPECT_TRUE(std::isinf(tol::round_to_storage(Dtype::F16, 65520.f)));
  // bfloat16: 8 significant bits, float's exponent range
  EXPECT_EQ(tol::round_to_storage(Dtype::BF16, 1.f + 0x1p-8f), 1.f);
  EXPECT_EQ(tol::round_to_storage(Dtype::BF16, 1.f + 3 * 0x1p-8f), 1.f + 0x1p-6f);
  EXPECT_EQ(tol::round_to_storage(Dtype::BF16, 0x1.01p-130f), 0x1p-130f);
  EXPECT_EQ(tol::round_to_storage(Dtype::BF16, 3.f), 3.f);
  EXPECT_TRUE(std::isinf(tol::round_to_storage(Dtype::BF16, 0x1.ffp127f)));
  EXPECT_EQ(tol::round_to_storage(Dtype::F32, 0.1f), 0.1f);
  // the bound of one rounding holds on a dense sweep
  for (Dtype d : {Dtype::F16, Dtype::BF16}) {
    const auto s = tol::storage(d);
    for (int i = -200000; i <= 200000; ++i) {
      const float v = std::ldexp(static_cast<float>(i) * 1.0001f, -12);
      const double err = std::fabs(double(tol::round_to_storage(d, v)) - v);
      ASSERT_LE(err, s.u * std::fabs(v) + s.eta) << dname(d) << " " << v;
    }
  }
}

// ---- trilinear attention and row softmax (tests/test_trilinear_gpu.cpp) -----------------------------

double legacy_softmax_rtol(Dtype d) { return d == Dtype::F16 ? 2e-3 : d == Dtype::BF16 ? 1.6e-2 : 2e-6; }

TEST(GpuTolerances, SoftmaxRowsMatchCpu) {
  Legacy legacy;
  for (Dtype dt : kDtypes)
    for (Kernel kernel : kKernels)
      for (long len : {1L, 7L, 32L, 33L, 100L, 784L, 1024L, 1025L, 5089L}) {
        if (kernel == Kernel::Warp && len > 1024) continue;
        const long rows = 37;
        const auto in = rounded(dt, tt::random_tensor(rows * len, len, -8.0, 8.0));
        const auto got = softmax_rows_replay(dt, in, rows, len, 7.f, kernel);
        const auto ind = tt::cast_vector<double>(in);
        std::vector<double> ref(in.size());
        tasn::cpu::softmax_rows(ind.data(), ref.data(), rows, len, 7.0, false);
        const std::string what = std::string("SoftmaxRows ") + dname(dt) + "/" + kname(kernel) + " len=" + std::to_string(len);
        expect_covered(what, got, ref, dt, tol::softmax_rows_pre(ind, ref, rows, len, 7.0, kernel));
        std::string msg;
        legacy.add(what, legacy_ok(got, ref, 1e-7, legacy_softmax_rtol(dt), &msg), msg);
      }
}

// The case: the half backward with the old absolute floor 1e-6 max|ref|.
TEST(GpuTolerances, SoftmaxBackwardRowsMatchCpu) {
  Legacy legacy;
  std::map<std::string, std::set<long>> old_failures;  // "half/auto" -> lengths
  for (Dtype dt : kDtypes)
    for (Kernel kernel : kKernels)
      for (long len : {1L, 31L, 512L, 784L, 1024L, 3000L}) {
        if (kernel == Kernel::Warp && len > 1024) continue;
        const long rows = 19;
        const auto x = tt::random_tensor(rows * len, 3 * len, -2.0, 2.0);
        std::vector<double> y(x.size());
        tasn::cpu::softmax_rows(x.data(), y.data(), rows, len, 1.0, false);
        const auto yr = rounded(dt, y);
        const auto dy = tt::cast_vector<float>(tt::random_tensor(rows * len, 5 * len));
        const auto add = tt::cast_vector<float>(tt::random_tensor(rows * len, 7 * len, -1e-3, 1e-3));
        const auto got = softmax_backward_replay(dt, yr, dy, add, rows, len, 3.f, kernel);
        std::vector<double> ref(tt::cast_vector<double>(add));
        const auto yd = tt::cast_vector<double>(yr), dyd = tt::cast_vector<double>(dy);
        tasn::cpu::softmax_backward_rows(yd.data(), dyd.data(), ref.data(), rows, len, 3.0, true, false);
        const std::string what = std::string("SoftmaxBackwardRows ") + dname(dt) + "/" + kname(kernel) + " len=" + std::to_string(len);
        expect_covered(what, got, ref, dt,
                       tol::softmax_backward_rows_pre(yd, nullptr, dyd, nullptr, nullptr, ref, rows, len, 3.0, kernel));
        std::string msg;
        const bool old_ok = legacy_ok(got, ref, 1e-6 * tt::max_abs(ref), legacy_softmax_rtol(dt), &msg);
        legacy.add(what, old_ok, msg);
        if (!old_ok) old_failures[std::string(dname(dt)) + "/" + kname(kernel)].insert(len);
      }
  // The old tolerance fails half at these lengths in every kernel variant that runs them, nowhere else.
  EXPECT_EQ(old_failures["half/auto"], (std::set<long>{784, 1024, 3000}));
  EXPECT_EQ(old_failures["half/block"], (std::set<long>{784, 1024, 3000}));
  EXPECT_EQ(old_failures["half/warp"], (std::set<long>{784, 1024}));
  EXPECT_EQ(old_failures.count("float/auto") + old_failures.count("bfloat16/auto"), 0u);
}

// Trilinear forward + backward as tasn::cuda runs them: row kernels for the softmaxes, float GEMMs
// (Eigen here, cuBLAS there), S, A, dB, M and dX rounded to the storage type.
struct TrilinearReplay {
  std::vector<float> m, saved, dx;
};

TrilinearReplay trilinear_replay(Dtype dt, const std::vector<float>& x, const std::vector<float>& dm,
                                 const TrilinearShape& s, float beta, Kernel kernel) {
  using Mat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using CMap = Eigen::Map<const Mat>;
  const std::int64_t N = s.n, C = s.c, P = s.p();
  TrilinearReplay out;
  out.m.resize(x.size());
  out.dx.resize(x.size());
  out.saved.resize(static_cast<std::size_t>(N * C * (P + C)));
  auto vec = [](const Mat& mm) { return std::vector<float>(mm.data(), mm.data() + mm.size()); };
  auto round_mat = [&](const Mat& mm) { return Mat(CMap(tol::round_to_storage(dt, vec(mm)).data(), mm.rows(), mm.cols())); };
  for (std::int64_t n = 0; n < N; ++n) {
    const Mat X = CMap(x.data() + n * C * P, C, P), dM = CMap(dm.data() + n * C * P, C, P);
    const auto sv = softmax_rows_replay(dt, vec(X), C, P, beta, kernel);
    const Mat S = CMap(sv.data(), C, P);
    const Mat B = S * X.transpose();
    const auto av = softmax_rows_replay(dt, vec(B), C, C, 1.f, kernel);
    const Mat A = CMap(av.data(), C, C);
    const Mat M = round_mat(A * X);
    const Mat dA = dM * X.transpose();
    Mat acc = A.transpose() * dM;
    const auto dbv = softmax_backward_replay(dt, av, vec(dA), {}, C, C, 1.f, kernel);
    const Mat dB = CMap(dbv.data(), C, C);
    const Mat dS = dB * X;
    acc.noalias() += dB.transpose() * S;
    const auto dxv = softmax_backward_replay(dt, sv, vec(dS), vec(acc), C, P, beta, kernel);
    std::copy(M.data(), M.data() + C * P, out.m.begin() + n * C * P);
    std::copy(dxv.begin(), dxv.end(), out.dx.begin() + n * C * P);
    std::copy(sv.begin(), sv.end(), out.saved.begin() + n * C * P);
    std::copy(av.begin(), av.end(), out.saved.begin() + N * C * P + n * C * C);
  }
  return out;
}

struct LegacyTrilinearTol {
  double softmax_rtol, m, dx;
};
LegacyTrilinearTol legacy_trilinear(Dtype d) {
  switch (d) {
    case Dtype::F16: return {2e-3, 5e-3, 3e-2};
    case Dtype::BF16: return {1.6e-2, 3e-2, 1e-1};
    default: return {2e-6, 2e-5, 2e-4};
  }
}

TEST(GpuTolerances, TrilinearMatchesCpu) {
  Legacy legacy;
  for (Dtype dt : kDtypes)
    for (Kernel kernel : {Kernel::Auto, Kernel::Block})  // the GPU test skips the forced warp variant
      for (const auto& gs : {TrilinearShape{2, 5, 3, 3}, TrilinearShape{3, 64, 14, 14}, TrilinearShape{2, 512, 28, 28},
                             TrilinearShape{1, 40, 40, 40}}) {
        // Samples are independent computations: of the TASN-size case (the slow one here) replay
        // sample 0 of the GPU test's data, with the auto kernel (block rows are covered by 40x40).
        const bool big = gs.c == 512;
        if (big && kernel != Kernel::Auto) continue;
        const TrilinearShape s{big ? 1 : gs.n, gs.c, gs.h, gs.w};
        const std::string tag = std::string(dname(dt)) + "/" + kname(kernel) + " N=" + std::to_string(gs.n) + " C=" +
                                std::to_string(s.c) + " " + std::to_string(s.h) + "x" + std::to_string(s.w) +
                                (big ? " (sample 0)" : "");
        auto x = rounded(dt, tt::random_tensor(gs.numel(), 61, 0.0, 3.0));
        auto dm = rounded(dt, tt::random_tensor(gs.numel(), 62));
        x.resize(static_cast<std::size_t>(s.numel()));
        dm.resize(static_cast<std::size_t>(s.numel()));
        const auto got = trilinear_replay(dt, x, dm, s, 7.f, kernel);
        const auto xd = tt::cast_vector<double>(x), dmd = tt::cast_vector<double>(dm);
        const std::int64_t ns = tasn::trilinear_saved_elems(s.n, s.c, s.h, s.w);
        std::vector<double> m(xd.size()), saved(static_cast<std::size_t>(ns)), dx(xd.size());
        const tasn::Tensor4<const double> xv(xd.data(), {s.n, s.c, s.h, s.w});
        tasn::cpu::trilinear_attention_forward(tasn::TrilinearForwardArgs<double>{
            xv, tasn::Tensor4<double>(m.data(), {s.n, s.c, s.h, s.w}), tasn::Tensor1<double>(saved.data(), {ns}), {}});
        tasn::cpu::trilinear_attention_backward(tasn::TrilinearBackwardArgs<double>{
            xv, tasn::Tensor4<const double>(dmd.data(), {s.n, s.c, s.h, s.w}), tasn::Tensor1<const double>(saved.data(), {ns}),
            tasn::Tensor4<double>(dx.data(), {s.n, s.c, s.h, s.w}), {}});
        const auto pre = tol::trilinear_pre(dt, xd, dmd, s, 7.0, kernel);
        expect_covered("Trilinear m " + tag, got.m, m, dt, pre.m);
        expect_covered("Trilinear dx " + tag, got.dx, dx, dt, pre.dx);
        expect_covered("Trilinear saved S|A " + tag, got.saved, saved, dt, pre.saved);
        // norm-wise: the GPU test asks ||err|| <= ||GPU allowance|| / 2; the replay, half of that
        std::vector<double> err(dx.size());
        for (std::size_t i = 0; i < dx.size(); ++i) err[i] = double(got.dx[i]) - dx[i];
        const double norm_ratio = tol::norm2(err) / tol::norm2(tol::allowed(dt, dx, pre.dx, tol::kGpuSafety));
        EXPECT_LT(norm_ratio, 0.25) << tag;
        std::printf("[replay] %-60s ||err||/||gpu-allowed|| %.3g\n", ("Trilinear dx norm " + tag).c_str(), norm_ratio);
        const auto lt = legacy_trilinear(dt);
        std::string msg;
        legacy.add("Trilinear m " + tag, legacy_ok(got.m, m, lt.m * tt::max_abs(m), 0.0, &msg), msg);
        legacy.add("Trilinear dx " + tag, legacy_ok(got.dx, dx, lt.dx * tt::max_abs(dx), 0.0, &msg), msg);
        legacy.add("Trilinear saved " + tag, legacy_ok(got.saved, saved, lt.m, lt.softmax_rtol * 4, &msg), msg);
        legacy.add("Trilinear dx norm " + tag, tt::relative_error(tt::cast_vector<double>(got.dx), dx) < lt.dx / 3);
      }
}

// ---- losses (tests/test_losses_gpu.cpp) ------------------------------------------------------------

double legacy_loss_tol(Dtype d) { return d == Dtype::F32 ? 2e-5 : d == Dtype::F16 ? 3e-3 : 2e-2; }

bool legacy_loss_ok(const std::vector<float>& got, const std::vector<double>& ref, double rel, std::string* msg) {
  return legacy_ok(got, ref, rel * std::max(1e-30, tt::max_abs(ref)), rel, msg);
}

struct LossReplay {
  std::vector<float> loss, grad, grad_teacher;
};

// finalize_loss_kernel: float row losses summed in double, times factor / den, to float, to T;
// None: each row's loss times factor in double, to float, to T.
std::vector<float> finalize(Dtype dt, const std::vector<double>& row_loss, Reduction red, double factor, double den) {
  std::vector<float> out;
  if (red == Reduction::None) {
    for (double l : row_loss) out.push_back(tol::round_to_storage(dt, static_cast<float>(l * factor)));
    return out;
  }
  double s = 0.0;
  for (double v : row_loss) s += static_cast<float>(v);
  s *= factor;
  return {tol::round_to_storage(dt, static_cast<float>(den > 0 ? s / den : s))};
}

double dsum(const std::vector<double>& partial) {
  return group_reduce(partial, [](double a, double b) { return a + b; });
}

// kernels::distill_row over a warp or block row group.
LossReplay distillation_replay(Dtype dt, const std::vector<float>& zs, const std::vector<float>& zt, long n, long k,
                               const tasn::DistillationOptions& opt, const std::vector<float>& up, Kernel kernel) {
  LossReplay out;
  out.grad.resize(zs.size());
  out.grad_teacher.resize(zs.size());
  const std::size_t G = group_size(kernel, k);
  const float inv_t = static_cast<float>(1.0 / opt.temperature);
  const float g = static_cast<float>(opt.grad_factor());
  const float mean_scale = static_cast<float>(opt.reduction == Reduction::Mean ? 1.0 / double(n) : 1.0);
  std::vector<double> rows(static_cast<std::size_t>(n));
  for (long i = 0; i < n; ++i) {
    const float* s = zs.data() + i * k;
    const float* t = zt.data() + i * k;
    std::vector<Stats> ps(G, Stats::empty()), pt(G, Stats::empty());
    for (std::size_t r = 0; r < G; ++r)
      for (long j = static_cast<long>(r); j < k; j += static_cast<long>(G)) {
        ps[r].push(s[j], inv_t);
        pt[r].push(t[j], inv_t);
      }
    const Stats ss = stats_reduce(ps, inv_t), st = stats_reduce(pt, inv_t);
    const float log_ss = std::log(ss.s), log_st = std::log(st.s);
    std::vector<double> part(G, 0.0);
    for (std::size_t r = 0; r < G; ++r)
      for (long j = static_cast<long>(r); j < k; j += static_cast<long>(G)) {
        const float pj = std::exp(inv_t * (t[j] - st.m) - log_st);
        part[r] += tasn::distill_loss_term(static_cast<double>(pj), tasn::log_softmax_at(s[j], ss.m, inv_t, log_ss),
                                           tasn::log_softmax_at(t[j], st.m, inv_t, log_st), opt.kl);
      }
    const double unscaled = dsum(part);
    const float w = mean_scale * (up.empty() ? 1.f : up[opt.reduction == Reduction::None ? i : 0]);
    for (long j = 0; j < k; ++j) {
      const float pj = std::exp(inv_t * (t[j] - st.m) - log_st);
      out.grad[i * k + j] = tol::round_to_storage(
          dt, tasn::distill_student_grad(std::exp(inv_t * (s[j] - ss.m) - log_ss), pj, g, w));
      const double lq = tasn::log_softmax_at(s[j], ss.m, inv_t, log_ss);
      const double r = opt.kl ? lq - tasn::log_softmax_at(t[j], st.m, inv_t, log_st) : lq;
      out.grad_teacher[i * k + j] = tol::round_to_storage(
          dt, static_cast<float>(tasn::distill_teacher_grad(static_cast<double>(pj), r, -unscaled, double(g), double(w))));
    }
    rows[i] = unscaled;
  }
  out.loss = finalize(dt, rows, opt.reduction, opt.loss_factor(), opt.reduction == Reduction::Mean ? double(n) : 1.0);
  return out;
}

TEST(GpuTolerances, DistillationMatchesCpu) {
  Legacy legacy;
  const long n = tt::gpu_cases::kLossRows;
  for (Dtype dt : kDtypes)
    for (Kernel kernel : kKernels)
      for (long k : tt::gpu_cases::kLossLengths)
        for (bool kl : {false, true})
          for (Reduction red : {Reduction::None, Reduction::Mean}) {
            tasn::DistillationOptions opt;
            opt.kl = kl;
            opt.t_squared = true;
            opt.reduction = red;
            const auto zs = rounded(dt, tt::random_tensor(n * k, 10 + k, -20.0, 20.0));
            const auto zt = rounded(dt, tt::random_tensor(n * k, 20 + k, -20.0, 20.0));
            const auto up = rounded(dt, tt::random_tensor(tasn::loss_elems(n, red), 3, 0.5, 1.5));
            const auto got = distillation_replay(dt, zs, zt, n, k, opt, up, kernel);
            const auto zsd = tt::cast_vector<double>(zs), ztd = tt::cast_vector<double>(zt), upd = tt::cast_vector<double>(up);
            std::vector<double> loss(tasn::loss_elems(n, red)), gs(n * k), gtt(n * k);
            tasn::cpu::distillation_loss(tt::distillation_args<double>(zsd.data(), ztd.data(), n, k, opt, loss.data(), gs.data(), gtt.data(), upd.data()));
            const auto pre = tol::distillation_pre(zsd, ztd, n, k, opt, upd, kernel);
            const std::string tag = std::string(dname(dt)) + "/" + kname(kernel) + " K=" + std::to_string(k) +
                                    (kl ? " kl " : " ce ") + tasn::to_string(red);
            expect_covered("Distillation loss " + tag, got.loss, loss, dt, pre.loss);
            expect_covered("Distillation dstudent " + tag, got.grad, gs, dt, pre.grad);
            expect_covered("Distillation dteacher " + tag, got.grad_teacher, gtt, dt, pre.grad_teacher);
            std::string msg;
            legacy.add("Distillation loss " + tag, legacy_loss_ok(got.loss, loss, legacy_loss_tol(dt), &msg), msg);
            legacy.add("Distillation dstudent " + tag, legacy_loss_ok(got.grad, gs, legacy_loss_tol(dt), &msg), msg);
            legacy.add("Distillation dteacher " + tag, legacy_loss_ok(got.grad_teacher, gtt, legacy_loss_tol(dt), &msg), msg);
          }
}

// kernels::cross_entropy_row over a warp or block row group.
LossReplay cross_entropy_replay(Dtype dt, const std::vector<float>& z, const std::vector<long long>& labels, long n,
                                long k, const tasn::CrossEntropyOptions& opt, Kernel kernel) {
  LossReplay out;
  out.grad.assign(z.size(), 0.f);
  const std::size_t G = group_size(kernel, k);
  long long valid = 0;
  for (long long y : labels) valid += y != opt.ignore_index;
  const float mean_scale = opt.reduction == Reduction::Mean ? (valid > 0 ? 1.f / static_cast<float>(valid) : 0.f) : 1.f;
  const float eps = static_cast<float>(opt.label_smoothing), inv_k = static_cast<float>(1.0 / double(k));
  const float scale = static_cast<float>(opt.grad_scale);
  std::vector<double> rows(static_cast<std::size_t>(n), 0.0);
  for (long i = 0; i < n; ++i) {
    const long long y = labels[i];
    if (y == opt.ignore_index) continue;
    const float* zr = z.data() + i * k;
    std::vector<Stats> part(G, Stats::empty());
    for (std::size_t g = 0; g < G; ++g)
      for (long j = static_cast<long>(g); j < k; j += static_cast<long>(G)) part[g].push(zr[j], 1.f);
    const Stats st = stats_reduce(part, 1.f);
    const float log_s = std::log(st.s);
    std::vector<float> shift(G, 0.f);
    if (eps > 0.f)
      for (std::size_t g = 0; g < G; ++g)
        for (long j = static_cast<long>(g); j < k; j += static_cast<long>(G)) shift[g] += zr[j] - st.m;
    const float sum_lq = fsum(shift) - static_cast<float>(k) * log_s;
    const float nll = -(zr[y] - st.m - log_s);
    for (long j = 0; j < k; ++j)
      out.grad[i * k + j] = tol::round_to_storage(
          dt, tasn::cross_entropy_grad(std::exp(zr[j] - st.m - log_s), tasn::smoothed_target(j == y, eps, inv_k), scale,
                                       mean_scale));
    rows[i] = (1.f - eps) * nll - eps * sum_lq * inv_k;
  }
  out.loss = finalize(dt, rows, opt.reduction, opt.grad_scale, opt.reduction == Reduction::Mean ? double(valid) : 1.0);
  return out;
}

TEST(GpuTolerances, CrossEntropyMatchesCpu) {
  Legacy legacy;
  const long n = tt::gpu_cases::kLossRows;
  for (Dtype dt : kDtypes)
    for (Kernel kernel : kKernels)
      for (long k : tt::gpu_cases::kLossLengths)
        for (Reduction red : {Reduction::None, Reduction::Sum, Reduction::Mean}) {
          const tasn::CrossEntropyOptions opt = tt::gpu_cases::cross_entropy_options(red);
          const auto y = tt::gpu_cases::cross_entropy_labels(n, k);
          const auto z = rounded(dt, tt::random_tensor(n * k, 30 + k, -1e4, 1e4));
          const auto got = cross_entropy_replay(dt, z, y, n, k, opt, kernel);
          const auto zd = tt::cast_vector<double>(z);
          const std::vector<std::int64_t> y64(y.begin(), y.end());
          std::vector<double> loss(tasn::loss_elems(n, red)), gz(n * k);
          tasn::cpu::softmax_cross_entropy(tt::cross_entropy_args<double>(zd.data(), y64.data(), n, k, opt, loss.data(), gz.data()));
          const auto pre = tol::cross_entropy_pre(zd, y, n, k, opt, kernel);
          const std::string tag = std::string(dname(dt)) + "/" + kname(kernel) + " K=" + std::to_string(k) + " " + tasn::to_string(red);
          expect_covered("CrossEntropy loss " + tag, got.loss, loss, dt, pre.loss);
          expect_covered("CrossEntropy dlogits " + tag, got.grad, gz, dt, pre.grad);
          std::string msg;
          legacy.add("CrossEntropy loss " + tag, legacy_loss_ok(got.loss, loss, legacy_loss_tol(dt), &msg), msg);
          legacy.add("CrossEntropy dlogits " + tag, legacy_loss_ok(got.grad, gz, legacy_loss_tol(dt), &msg), msg);
        }
}

// ---- attention sampler (tests/test_sampler_gpu.cpp) --------------------------------------------------

double legacy_sampler_tol(Dtype d) { return d == Dtype::F32 ? 1e-5 : d == Dtype::F16 ? 2e-3 : 1.6e-2; }

bool legacy_sampler_ok(const std::vector<float>& got, const std::vector<float>& ref, double rel, std::string* msg) {
  return legacy_ok(got, ref, rel * std::max(1e-30, tt::max_abs(tt::cast_vector<double>(ref))), 0.0, msg);
}

// sampler::upsample_at<T, float> as nvcc contracts it: (1 - f) a + f b -> fma(f, b, (1 - f) a).
float upsample_at_fma(const float* map, std::int64_t h, std::int64_t w, std::int64_t H, std::int64_t W, std::int64_t y,
                      std::int64_t x) {
  const auto ty = tasn::resize_tap<float>(y, h, H, true), tx = tasn::resize_tap<float>(x, w, W, true);
  const std::int64_t y0 = ty.i0, y1 = ty.i1, x0 = tx.i0, x1 = tx.i1;
  const float fy = ty.w1, fx = tx.w1;
  const float r0 = std::fma(fx, map[y0 * w + x1], (1.f - fx) * map[y0 * w + x0]);
  const float r1 = std::fma(fx, map[y1 * w + x1], (1.f - fx) * map[y1 * w + x0]);
  return std::fma(fy, r1, (1.f - fy) * r0);
}

// The fused marginals (tasn/attention_sampler.cuh): pass 1 (marginal_maxima_kernel) takes each row's
// and column's maximum of the upsampled map (starting at +0, v replaces it only when v > max: the
// order of the chunked blocks does not matter; a row or column holding a non-finite value is NaN);
// pass 2 (marginal_normalise_kernel) sums each axis in double in the kernel's fixed order - thread t
// of 256 adds entries t, t + 256, ... in index order, then the partials pairwise, p[t] += p[t + s]
// for s = 128, 64, ..., 1 - and divides in double, rounded to float.
void marginals_replay(const std::vector<float>& map, long N, long h, long w, long Hs, long Ws, std::vector<float>& my,
                      std::vector<float>& mx, std::vector<unsigned char>& fb) {
  my.assign(N * Hs, 0.f);
  mx.assign(N * Ws, 0.f);
  fb.assign(N, 0);
  for (long n = 0; n < N; ++n) {
    const float* a = map.data() + n * h * w;
    float* ry = my.data() + n * Hs;
    float* rx = mx.data() + n * Ws;
    std::vector<unsigned char> bad_y(Hs, 0), bad_x(Ws, 0);
    for (long y = 0; y < Hs; ++y)
      for (long x = 0; x < Ws; ++x) {
        const float v = (Hs == h && Ws == w) ? a[y * w + x] : upsample_at_fma(a, h, w, Hs, Ws, y, x);
        if (!std::isfinite(v)) bad_y[y] = bad_x[x] = 1;
        ry[y] = v > ry[y] ? v : ry[y];
        rx[x] = v > rx[x] ? v : rx[x];
      }
    for (long y = 0; y < Hs; ++y)
      if (bad_y[y]) ry[y] = std::numeric_limits<float>::quiet_NaN();
    for (long x = 0; x < Ws; ++x)
      if (bad_x[x]) rx[x] = std::numeric_limits<float>::quiet_NaN();
    bool bad = false;
    auto mass_of = [&bad](const float* r, long len) {
      std::vector<double> part(256, 0.0);
      for (long i = 0; i < len; ++i) {
        bad = bad || !std::isfinite(r[i]);
        part[i % 256] += static_cast<double>(r[i]);
      }
      for (long s = 128; s > 0; s /= 2)
        for (long t = 0; t < s; ++t) part[t] += part[t + s];
      return part[0];
    };
    const double my_mass = mass_of(ry, Hs), mx_mass = mass_of(rx, Ws);
    const bool fell = bad || !(my_mass > 0.0) || !(mx_mass > 0.0) || !std::isfinite(my_mass) || !std::isfinite(mx_mass);
    for (long y = 0; y < Hs; ++y) ry[y] = fell ? static_cast<float>(1.0 / double(Hs)) : static_cast<float>(double(ry[y]) / my_mass);
    for (long x = 0; x < Ws; ++x) rx[x] = fell ? static_cast<float>(1.0 / double(Ws)) : static_cast<float>(double(rx[x]) / mx_mass);
    fb[n] = fell ? 1 : 0;
  }
}

TEST(GpuTolerances, AttentionMapsMatchCpu) {
  Legacy legacy;
  for (Dtype dt : kDtypes) {
    const long N = 5, C = 64, h = 28, w = 28, p = h * w;
    auto m = rounded(dt, tt::random_tensor(N * C * p, 81, 0.0, 2.0));
    for (long n = 0; n < N; ++n)
      for (long c : {3L, 9L, 10L})
        for (long i = 0; i < p; ++i) m[(n * C + c) * p + i] = 0.f;
    std::vector<float> ref(N * p);
    tasn::StructureMapArgs<float> sm{{m.data(), {N, C, h, w}}, {ref.data(), {N, h, w}}, {}};
    sm.options.distinct = true;
    tasn::cpu::structure_map(sm);
    // the device adds the distinct channels in channel order too, but per pixel in a thread: replay
    // the same sum in reverse channel order (another order the bound must cover)
    std::vector<float> got(N * p, 0.f);
    for (long n = 0; n < N; ++n) {
      std::vector<double> sums(C);
      for (long c = 0; c < C; ++c)
        sums[c] = tasn::sampler::warp_order_sum(m.data() + (n * C + c) * p, p, [](float v) { return double(v); });
      for (long c = C - 1; c >= 0; --c) {
        bool keep = true;
        for (long e = 0; e < c; ++e) keep = keep && sums[e] != sums[c];
        if (!keep) continue;
        for (long i = 0; i < p; ++i) got[n * p + i] += m[(n * C + c) * p + i];
      }
    }
    const std::string tag = std::string(dname(dt));
    expect_covered("AttentionMaps structure (distinct) " + tag, got, as_double(ref), Dtype::F32,
                   tol::structure_map_pre(m, N, C, p));
    std::string msg;
    legacy.add("AttentionMaps structure " + tag, legacy_sampler_ok(got, ref, 1e-6, &msg), msg);
  }
}

TEST(GpuTolerances, MarginalsAndGridMatchCpu) {
  Legacy legacy;
  const long N = 4, h = 28, w = 28, Hs = 512, Ws = 448;
  auto map = tt::cast_vector<float>(tt::random_tensor(N * h * w, 91, -0.1, 1.0));
  for (long i = 0; i < h * w; ++i) map[3 * h * w + i] = 0.f;
  std::vector<float> my(N * Hs), mx(N * Ws);
  std::vector<unsigned char> fb(N);
  tasn::cpu::attention_marginals(tasn::MarginalsArgs<float>{
      {map.data(), {N, h, w}}, {my.data(), {N, Hs}}, {mx.data(), {N, Ws}}, {fb.data(), {N}}, {}});
  std::vector<float> gmy, gmx;
  std::vector<unsigned char> gfb;
  marginals_replay(map, N, h, w, Hs, Ws, gmy, gmx, gfb);
  EXPECT_EQ(gfb, fb);
  const auto mp = tol::marginals_pre(map, N, h, w, Hs, Ws, false);
  expect_covered("Marginals my", gmy, as_double(my), Dtype::F32, mp.my);
  expect_covered("Marginals mx", gmx, as_double(mx), Dtype::F32, mp.mx);
  std::string msg;
  legacy.add("Marginals my", legacy_sampler_ok(gmy, my, 1e-5, &msg), msg);
  legacy.add("Marginals mx", legacy_sampler_ok(gmx, mx, 1e-5, &msg), msg);
  for (auto mode : {tasn::GridMode::Exact, tasn::GridMode::Official}) {
    const tasn::GridOptions opt = tt::gpu_cases::grid_options(mode);
    const long Ho = tt::gpu_cases::kGridHo, Wo = tt::gpu_cases::kGridWo;
    std::vector<float> gy(N * Ho), gx(N * Wo);
    tasn::cpu::sampling_grid(tasn::GridArgs<float>{
        {my.data(), {N, Hs}}, {mx.data(), {N, Ws}}, {gy.data(), {N, Ho}}, {gx.data(), {N, Wo}}, opt});
    // The device sums in other orders (block reductions and scans) in double: perturb the CPU's input
    // marginals by one double ulp-scale relative amount to replay that, then run the CPU grid.
    std::vector<double> dmy(my.begin(), my.end()), dmx(mx.begin(), mx.end());
    std::vector<float> ry(gy.size()), rx(gx.size());
    {
      std::vector<double> py(dmy), px(dmx);
      for (std::size_t i = 0; i < py.size(); ++i) py[i] *= 1.0 + (i % 3 == 0 ? 0x1p-50 : -0x1p-51);
      for (std::size_t i = 0; i < px.size(); ++i) px[i] *= 1.0 + (i % 5 == 0 ? -0x1p-50 : 0x1p-51);
      std::vector<double> oy(gy.size()), ox(gx.size());
      tasn::cpu::sampling_grid(tasn::GridArgs<double>{
          {py.data(), {N, Hs}}, {px.data(), {N, Ws}}, {oy.data(), {N, Ho}}, {ox.data(), {N, Wo}}, opt});
      for (std::size_t i = 0; i < oy.size(); ++i) ry[i] = static_cast<float>(oy[i]);
      for (std::size_t i = 0; i < ox.size(); ++i) rx[i] = static_cast<float>(ox[i]);
    }
    const auto gp = tol::grid_pre(my, mx, N, Hs, Ws, opt, gy, gx);
    const std::string tag = std::string(" ") + tasn::to_string(mode);
    expect_covered("Grid gy" + tag, ry, as_double(gy), Dtype::F32, gp.gy);
    expect_covered("Grid gx" + tag, rx, as_double(gx), Dtype::F32, gp.gx);
    legacy.add("Grid gy" + tag, legacy_sampler_ok(ry, gy, 1e-5, &msg), msg);
    legacy.add("Grid gx" + tag, legacy_sampler_ok(rx, gx, 1e-5, &msg), msg);
  }
}

// sample_plane<T, float> with nvcc's contraction: v = fma(pixel, wx * wy, v) per tap.
float sample_plane_fma(const float* plane, std::int64_t H, std::int64_t W, const tasn::sampler::Taps<float>& ty,
                       const tasn::sampler::Taps<float>& tx) {
  using tasn::sampler::tap_in;
  const std::int64_t y0 = ty.i0, y1 = ty.i0 + 1, x0 = tx.i0, x1 = tx.i0 + 1;
  float v = 0.f;
  if (tap_in(y0, H) && tap_in(x0, W)) v = std::fma(plane[y0 * W + x0], tx.w0 * ty.w0, v);
  if (tap_in(y0, H) && tap_in(x1, W)) v = std::fma(plane[y0 * W + x1], tx.w1 * ty.w0, v);
  if (tap_in(y1, H) && tap_in(x0, W)) v = std::fma(plane[y1 * W + x0], tx.w0 * ty.w1, v);
  if (tap_in(y1, H) && tap_in(x1, W)) v = std::fma(plane[y1 * W + x1], tx.w1 * ty.w1, v);
  return v;
}

std::vector<float> separable_replay(Dtype dt, const std::vector<float>& img, long N, long C, long Hi, long Wi,
                                    const std::vector<float>& gy, const std::vector<float>& gx, long Ho, long Wo) {
  std::vector<float> out(N * C * Ho * Wo);
  for (long nc = 0; nc < N * C; ++nc)
    for (long y = 0; y < Ho; ++y)
      for (long x = 0; x < Wo; ++x) {
        const long n = nc / C;
        out[(nc * Ho + y) * Wo + x] = tol::round_to_storage(
            dt, sample_plane_fma(img.data() + nc * Hi * Wi, Hi, Wi, tasn::sampler::taps_of<float>(gy[n * Ho + y], Hi),
                                 tasn::sampler::taps_of<float>(gx[n * Wo + x], Wi)));
      }
  return out;
}

TEST(GpuTolerances, SamplingMatchesCpu) {
  Legacy legacy;
  for (Dtype dt : kDtypes) {
    const long N = 3, C = 3, Hi = 97, Wi = 131, Ho = 41, Wo = 37;
    const auto img = rounded(dt, tt::random_tensor(N * C * Hi * Wi, 101));
    const auto gy = tt::cast_vector<float>(tt::random_tensor(N * Ho, 102, -1.05, 1.05));
    const auto gx = tt::cast_vector<float>(tt::random_tensor(N * Wo, 103, -1.05, 1.05));
    const auto dout = rounded(dt, tt::random_tensor(N * C * Ho * Wo, 104));
    std::vector<float> out(N * C * Ho * Wo), dimg(img.size());
    tasn::cpu::sample_separable(tasn::SampleSeparableArgs<float>{
        {img.data(), {N, C, Hi, Wi}}, {gy.data(), {N, Ho}}, {gx.data(), {N, Wo}}, {out.data(), {N, C, Ho, Wo}}, {}});
    tasn::cpu::sample_separable_backward(tasn::SampleSeparableBackwardArgs<float>{
        {dout.data(), {N, C, Ho, Wo}}, {gy.data(), {N, Ho}}, {gx.data(), {N, Wo}}, {dimg.data(), {N, C, Hi, Wi}}, {}});
    const std::string tag = std::string(" ") + dname(dt);
    std::string msg;
    const auto fwd = separable_replay(dt, img, N, C, Hi, Wi, gy, gx, Ho, Wo);
    expect_covered("Sampling separable forward" + tag, fwd, as_double(out), dt,
                   tol::separable_forward_pre(img, N, C, Hi, Wi, gy, gx, Ho, Wo));
    legacy.add("Sampling separable forward" + tag, legacy_sampler_ok(fwd, out, legacy_sampler_tol(dt), &msg), msg);
    // backward_x_kernel / backward_y_kernel: gathers in output order with FMA, float, then to T
    std::vector<float> bwd(img.size());
    for (long nc = 0; nc < N * C; ++nc) {
      const long n = nc / C;
      std::vector<float> rows(Ho * Wi, 0.f);
      for (long y = 0; y < Ho; ++y)
        for (long o = 0; o < Wo; ++o) {
          const auto t = tasn::sampler::taps_of<float>(gx[n * Wo + o], Wi);
          const float d = dout[(nc * Ho + y) * Wo + o];
          if (tasn::sampler::tap_in(t.i0, Wi)) rows[y * Wi + t.i0] = std::fma(t.w0, d, rows[y * Wi + t.i0]);
          if (tasn::sampler::tap_in(t.i0 + 1, Wi)) rows[y * Wi + t.i0 + 1] = std::fma(t.w1, d, rows[y * Wi + t.i0 + 1]);
        }
      std::vector<float> acc(Hi * Wi, 0.f);
      for (long o = 0; o < Ho; ++o) {
        const auto t = tasn::sampler::taps_of<float>(gy[n * Ho + o], Hi);
        for (long x = 0; x < Wi; ++x) {
          if (tasn::sampler::tap_in(t.i0, Hi)) acc[t.i0 * Wi + x] = std::fma(t.w0, rows[o * Wi + x], acc[t.i0 * Wi + x]);
          if (tasn::sampler::tap_in(t.i0 + 1, Hi))
            acc[(t.i0 + 1) * Wi + x] = std::fma(t.w1, rows[o * Wi + x], acc[(t.i0 + 1) * Wi + x]);
        }
      }
      for (long i = 0; i < Hi * Wi; ++i) bwd[nc * Hi * Wi + i] = tol::round_to_storage(dt, acc[i]);
    }
    expect_covered("Sampling separable backward" + tag, bwd, as_double(dimg), dt,
                   tol::separable_backward_pre(dout, N, C, Hi, Wi, gy, gx, Ho, Wo));
    legacy.add("Sampling separable backward" + tag, legacy_sampler_ok(bwd, dimg, legacy_sampler_tol(dt), &msg), msg);
    // general grid
    const auto grid = tt::cast_vector<float>(tt::random_tensor(N * Ho * Wo * 2, 105, -1.1, 1.1));
    std::vector<float> out2(out.size()), dimg2(img.size()), dgrid(grid.size());
    tasn::cpu::sample_grid(tasn::SampleGridArgs<float>{
        {img.data(), {N, C, Hi, Wi}}, {grid.data(), {N, Ho, Wo, 2}}, {out2.data(), {N, C, Ho, Wo}}, {}});
    tasn::cpu::sample_grid_backward(tasn::SampleGridBackwardArgs<float>{{img.data(), {N, C, Hi, Wi}},
                                                                       {grid.data(), {N, Ho, Wo, 2}},
                                                                       {dout.data(), {N, C, Ho, Wo}},
                                                                       {dimg2.data(), {N, C, Hi, Wi}},
                                                                       {dgrid.data(), {N, Ho, Wo, 2}},
                                                                       {}});
    std::vector<float> gf(out2.size());
    const long P = Ho * Wo;
    for (long nc = 0; nc < N * C; ++nc)
      for (long i = 0; i < P; ++i) {
        const float* g = grid.data() + ((nc / C) * P + i) * 2;
        gf[nc * P + i] = tol::round_to_storage(dt, sample_plane_fma(img.data() + nc * Hi * Wi, Hi, Wi,
                                                                    tasn::sampler::taps_of<float>(g[1], Hi),
                                                                    tasn::sampler::taps_of<float>(g[0], Wi)));
      }
    expect_covered("Sampling grid forward" + tag, gf, as_double(out2), dt, tol::grid_forward_pre(img, N, C, Hi, Wi, grid, Ho, Wo));
    legacy.add("Sampling grid forward" + tag, legacy_sampler_ok(gf, out2, legacy_sampler_tol(dt), &msg), msg);
    // sample_grid_backward_kernel: atomics arrive in any order: replay last pixel first, last channel first
    std::vector<float> acc(img.size(), 0.f), gdg(grid.size());
    for (long n = 0; n < N; ++n)
      for (long i = P - 1; i >= 0; --i) {
        const float* g = grid.data() + (n * P + i) * 2;
        const auto tx = tasn::sampler::taps_of<float>(g[0], Wi);
        const auto ty = tasn::sampler::taps_of<float>(g[1], Hi);
        float gxs = 0.f, gys = 0.f;
        for (long c = 0; c < C; ++c) {
          const float d = dout[(n * C + c) * P + i];
          const float* pl = img.data() + (n * C + c) * Hi * Wi;
          float* di = acc.data() + (n * C + c) * Hi * Wi;
          for (int q = 3; q >= 0; --q) {
            const std::int64_t yy = ty.i0 + q / 2, xx = tx.i0 + q % 2;
            const float wgt = (q % 2 ? tx.w1 : tx.w0) * (q / 2 ? ty.w1 : ty.w0);
            if (tasn::sampler::tap_in(yy, Hi) && tasn::sampler::tap_in(xx, Wi)) di[yy * Wi + xx] += wgt * d;
          }
          const float nw = tasn::sampler::pixel_or_zero<float, float>(pl, Hi, Wi, ty.i0, tx.i0);
          const float ne = tasn::sampler::pixel_or_zero<float, float>(pl, Hi, Wi, ty.i0, tx.i0 + 1);
          const float sw = tasn::sampler::pixel_or_zero<float, float>(pl, Hi, Wi, ty.i0 + 1, tx.i0);
          const float se = tasn::sampler::pixel_or_zero<float, float>(pl, Hi, Wi, ty.i0 + 1, tx.i0 + 1);
          gxs = std::fma(d, std::fma(ty.w0, ne - nw, ty.w1 * (se - sw)), gxs);
          gys = std::fma(d, std::fma(tx.w0, sw - nw, tx.w1 * (se - ne)), gys);
        }
        gdg[(n * P + i) * 2] = gxs * tx.scale;
        gdg[(n * P + i) * 2 + 1] = gys * ty.scale;
      }
    const auto gdimg = tol::round_to_storage(dt, acc);
    const auto gbp = tol::grid_backward_pre(img, grid, dout, N, C, Hi, Wi, Ho, Wo);
    expect_covered("Sampling grid backward (image)" + tag, gdimg, as_double(dimg2), dt, gbp.dimg);
    expect_covered("Sampling grid backward (grid)" + tag, gdg, as_double(dgrid), Dtype::F32, gbp.dgrid);
    legacy.add("Sampling grid backward (image)" + tag, legacy_sampler_ok(gdimg, dimg2, legacy_sampler_tol(dt), &msg), msg);
    legacy.add("Sampling grid backward (grid)" + tag, legacy_sampler_ok(gdg, dgrid, 1e-4, &msg), msg);
  }
}

TEST(GpuTolerances, AttentionSampleMatchesCpu) {
  Legacy legacy;
  for (Dtype dt : kDtypes) {
    using Case = tt::gpu_cases::AttentionSampleCase;
    const long N = Case::N, C = Case::C, Hi = Case::Hi, Wi = Case::Wi, Ha = Case::Ha, Wa = Case::Wa, Ho = Case::Ho,
               Wo = Case::Wo;
    const auto img = rounded(dt, Case::image());
    const auto att = Case::attention();
    for (bool squared : {false, true}) {
      const tasn::AttentionSampleOptions opt = Case::options(squared);
      std::vector<float> out(N * C * Ho * Wo), gy(N * Ho), gx(N * Wo);
      std::vector<unsigned char> fb(N);
      tasn::AttentionSampleArgs<float> as{};
      as.img = {img.data(), {N, C, Hi, Wi}};
      as.attention = {att.data(), {N, Ha, Wa}};
      as.out = {out.data(), {N, C, Ho, Wo}};
      as.gy = {gy.data(), {N, Ho}};
      as.gx = {gx.data(), {N, Wo}};
      as.fallback = {fb.data(), {N}};
      as.options = opt;
      tasn::cpu::attention_sample(as);
      // replay the device chain: (upsample + square), marginals, grid (double), sampling
      const long Hs = opt.marginal_h(Hi), Ws = opt.marginal_w(Wi);
      std::vector<float> map = att;
      long h = Ha, w = Wa;
      if (squared) {
        map.assign(N * Hs * Ws, 0.f);
        for (long n = 0; n < N; ++n)
          for (long y = 0; y < Hs; ++y)
            for (long x = 0; x < Ws; ++x) {
              const float v = upsample_at_fma(att.data() + n * Ha * Wa, Ha, Wa, Hs, Ws, y, x);
              map[(n * Hs + y) * Ws + x] = v * v;
            }
        h = Hs;
        w = Ws;
      }
      std::vector<float> my, mx;
      std::vector<unsigned char> gfb;
      marginals_replay(map, N, h, w, Hs, Ws, my, mx, gfb);
      EXPECT_EQ(gfb, fb);
      std::vector<float> rgy(gy.size()), rgx(gx.size());
      tasn::cpu::sampling_grid(tasn::GridArgs<float>{
          {my.data(), {N, Hs}}, {mx.data(), {N, Ws}}, {rgy.data(), {N, Ho}}, {rgx.data(), {N, Wo}}, opt.grid});
      const auto got = separable_replay(dt, img, N, C, Hi, Wi, rgy, rgx, Ho, Wo);
      // bounds as the GPU test computes them: marginals of the CPU's map, the CPU grid
      std::vector<float> cmy(N * Hs), cmx(N * Ws);
      tasn::cpu::attention_marginals(tasn::MarginalsArgs<float>{
          {att.data(), {N, Ha, Wa}}, {cmy.data(), {N, Hs}}, {cmx.data(), {N, Ws}}, {}, {}});
      if (squared) {
        std::vector<float> up(N * Hs * Ws);
        tasn::UpsampleArgs<float> ua{{att.data(), {N, Ha, Wa}}, {up.data(), {N, Hs, Ws}}, {}};
        ua.options.squared = true;
        tasn::cpu::upsample_bilinear(ua);
        tasn::cpu::attention_marginals(tasn::MarginalsArgs<float>{
            {up.data(), {N, Hs, Ws}}, {cmy.data(), {N, Hs}}, {cmx.data(), {N, Ws}}, {}, {}});
      }
      const auto mp = tol::marginals_pre(att, N, Ha, Wa, Hs, Ws, squared);
      const auto gp = tol::grid_pre(cmy, cmx, N, Hs, Ws, opt.grid, gy, gx, &mp.my, &mp.mx);
      const std::string tag = std::string(" ") + dname(dt) + (squared ? " squared" : "");
      expect_covered("AttentionSample gy" + tag, rgy, as_double(gy), Dtype::F32, gp.gy);
      expect_covered("AttentionSample gx" + tag, rgx, as_double(gx), Dtype::F32, gp.gx);
      expect_covered("AttentionSample image" + tag, got, as_double(out), dt,
                     tol::separable_forward_pre(img, N, C, Hi, Wi, gy, gx, Ho, Wo, &rgy, &rgx));
      std::string msg;
      legacy.add("AttentionSample gy" + tag, legacy_sampler_ok(rgy, gy, 1e-5, &msg), msg);
      legacy.add("AttentionSample gx" + tag, legacy_sampler_ok(rgx, gx, 1e-5, &msg), msg);
      legacy.add("AttentionSample image" + tag, legacy_sampler_ok(got, out, std::max(legacy_sampler_tol(dt), 5e-3), &msg), msg);
      double gmax = 0.0;
      for (std::size_t i = 0; i < gy.size(); ++i) gmax = std::max(gmax, std::fabs(double(rgy[i]) - gy[i]));
      for (std::size_t i = 0; i < gx.size(); ++i) gmax = std::max(gmax, std::fabs(double(rgx[i]) - gx[i]));
      double bmax = 0.0;
      for (double v : gp.gy) bmax = std::max(bmax, v);
      for (double v : gp.gx) bmax = std::max(bmax, v);
      std::printf("[replay] AttentionSample%s: max |grid diff| %.3g, grid bound up to %.3g\n", tag.c_str(), gmax, bmax);
    }
  }
}

}  // namespace
