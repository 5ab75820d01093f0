// CPU trilinear attention: naive double reference, finite differences, PyTorch golden data,
// properties, and every error path.
#include <gtest/gtest.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <string>
#include <numeric>
#include <tuple>
#include <vector>

#include "support/reference_trilinear.h"
#include "support/test_support.h"
#include "tasn/trilinear_attention.h"

namespace {

using tasn::TrilinearAttentionOptions;
using tasn::TrilinearShape;
namespace tt = tasn::test;

template <class T>
struct Tol;
template <>
struct Tol<float> {
  static constexpr double rtol = 2e-5, atol = 2e-6;
};
template <>
struct Tol<double> {
  static constexpr double rtol = 1e-12, atol = 1e-13;
};

struct RunResult {
  std::vector<double> m, dx_saved, dx_recompute, saved;
};

// Runs forward (with saved) and both backward variants in T, returns everything as double.
template <class T>
RunResult run_cpu(const std::vector<double>& x, const std::vector<double>& dm, const TrilinearShape& s,
                  double beta) {
  TrilinearAttentionOptions opt;
  opt.beta = beta;
  const auto xt = tt::cast_vector<T>(x), dmt = tt::cast_vector<T>(dm);
  std::vector<T> m(x.size()), saved(tasn::trilinear_saved_elems(s)), dx1(x.size()), dx2(x.size());
  tasn::cpu::trilinear_attention_forward<T>(xt.data(), m.data(), saved.data(), s, opt);
  tasn::cpu::trilinear_attention_backward<T>(xt.data(), dmt.data(), saved.data(), dx1.data(), s, opt);
  tasn::cpu::trilinear_attention_backward<T>(xt.data(), dmt.data(), nullptr, dx2.data(), s, opt);
  return {tt::cast_vector<double>(m), tt::cast_vector<double>(dx1), tt::cast_vector<double>(dx2),
          tt::cast_vector<double>(saved)};
}

template <class T>
class TrilinearCpu : public ::testing::Test {};
using Types = ::testing::Types<float, double>;
TYPED_TEST_SUITE(TrilinearCpu, Types);

TYPED_TEST(TrilinearCpu, MatchesNaiveReference) {
  using T = TypeParam;
  // (N, C, H, W, beta): odd sizes, N below and above the thread count, a long spatial row.
  const std::vector<std::tuple<int, int, int, int, double>> cases = {
      {2, 5, 3, 3, 7.0}, {1, 7, 4, 5, 1.0}, {5, 3, 2, 2, 7.0}, {3, 33, 6, 7, 7.0}, {1, 9, 1, 1, 2.5},
      {2, 16, 30, 40, 7.0}};
  for (const auto& [n, c, h, w, beta] : cases) {
    SCOPED_TRACE(::testing::Message() << "N=" << n << " C=" << c << " H=" << h << " W=" << w
                                      << " beta=" << beta);
    const TrilinearShape s{n, c, h, w};
    const auto x = tt::random_tensor(s.numel(), 100 + c, -1.0, 2.0);
    const auto dm = tt::random_tensor(s.numel(), 200 + c);
    const auto ref = tt::ref_trilinear_forward(x, n, c, h * w, beta);
    const auto dx_ref = tt::ref_trilinear_backward(x, dm, n, c, h * w, beta);
    const RunResult got = run_cpu<T>(x, dm, s, beta);

    const double ms = tt::max_abs(ref.m), gs = tt::max_abs(dx_ref);
    auto r = tt::compare(got.m, ref.m, Tol<T>::atol * ms, Tol<T>::rtol);
    EXPECT_TRUE(r.ok) << "m: " << r.message();
    r = tt::compare(got.dx_saved, dx_ref, Tol<T>::atol * gs * 10, Tol<T>::rtol * 10);
    EXPECT_TRUE(r.ok) << "dx (saved S, A): " << r.message();
    r = tt::compare(got.dx_recompute, dx_ref, Tol<T>::atol * gs * 10, Tol<T>::rtol * 10);
    EXPECT_TRUE(r.ok) << "dx (recomputed S, A): " << r.message();
    // The saved buffer holds S then A.
    std::vector<double> sa(ref.s);
    sa.insert(sa.end(), ref.a.begin(), ref.a.end());
    r = tt::compare(got.saved, sa, Tol<T>::atol, Tol<T>::rtol);
    EXPECT_TRUE(r.ok) << "saved S|A: " << r.message();
  }
}

TYPED_TEST(TrilinearCpu, MatchesPyTorchGolden) {
  using T = TypeParam;
  for (const char* name : {"small", "beta1", "tasn"}) {
    SCOPED_TRACE(name);
    const tt::GoldenFile g(tt::golden_path(std::string("trilinear_") + name + ".bin"));
    const auto& sh = g.at("shape").data;
    const auto& pr = g.at("params").data;
    const TrilinearShape s{static_cast<int64_t>(sh[0]), static_cast<int64_t>(sh[1]),
                           static_cast<int64_t>(sh[2]), static_cast<int64_t>(sh[3])};
    const double beta = pr[0];
    const auto seed = static_cast<std::uint64_t>(pr[3]);
    const auto x = tt::random_tensor(s.numel(), seed, pr[1], pr[2]);
    const auto dm = tt::random_tensor(s.numel(), seed + 1, -1.0, 1.0);
    const RunResult got = run_cpu<T>(x, dm, s, beta);

    // Per-(n, c) row sums of M and dX, and of A (each A row sums to 1).
    std::vector<double> m_rows(s.n * s.c, 0.0), dx_rows(s.n * s.c, 0.0), a_rows(s.n * s.c, 0.0);
    const std::int64_t P = s.p(), ncp = s.numel();
    for (std::int64_t r = 0; r < s.n * s.c; ++r) {
      for (std::int64_t p = 0; p < P; ++p) {
        m_rows[r] += got.m[r * P + p];
        dx_rows[r] += got.dx_saved[r * P + p];
      }
      for (std::int64_t j = 0; j < s.c; ++j) a_rows[r] += got.saved[ncp + r * s.c + j];
    }
    const double rtol = Tol<T>::rtol * 20, atol_scale = std::is_same_v<T, float> ? 1e-5 : 1e-12;
    const auto& gm = g.at("m_rowsum").data;
    const auto& gdx = g.at("dx_rowsum").data;
    auto r = tt::compare(m_rows, gm, atol_scale * tt::max_abs(gm), rtol);
    EXPECT_TRUE(r.ok) << "m row sums: " << r.message();
    r = tt::compare(dx_rows, gdx, atol_scale * tt::max_abs(gdx), rtol);
    EXPECT_TRUE(r.ok) << "dx row sums: " << r.message();
    r = tt::compare(a_rows, g.at("a_rowsum").data, atol_scale, 0.0);
    EXPECT_TRUE(r.ok) << "A row sums: " << r.message();

    std::vector<double> m_got, dx_got, m_ref, dx_ref;
    if (std::string(name) == "tasn") {
      const auto& idx = g.at("sample_idx").data;
      for (double d : idx) {
        m_got.push_back(got.m[static_cast<std::size_t>(d)]);
        dx_got.push_back(got.dx_saved[static_cast<std::size_t>(d)]);
      }
      m_ref = g.at("m_sample").data;
      dx_ref = g.at("dx_sample").data;
      // The generator's indices are reproduced here too.
      const auto idx2 = tt::sample_indices(seed + 2, static_cast<std::int64_t>(idx.size()), s.numel());
      EXPECT_TRUE(std::equal(idx2.begin(), idx2.end(), idx.begin()));
    } else {
      m_got = got.m;
      dx_got = got.dx_saved;
      m_ref = g.at("m").data;
      dx_ref = g.at("dx").data;
    }
    r = tt::compare(m_got, m_ref, atol_scale * tt::max_abs(m_ref), Tol<T>::rtol * 5);
    EXPECT_TRUE(r.ok) << "m: " << r.message();
    r = tt::compare(dx_got, dx_ref, atol_scale * 10 * tt::max_abs(dx_ref), Tol<T>::rtol * 50);
    EXPECT_TRUE(r.ok) << "dx: " << r.message();
  }
}

// Central differences of L = sum(w * M(x)) against the analytic backward, in double.
TEST(TrilinearCpuGrad, FiniteDifferences) {
  const TrilinearShape s{2, 5, 3, 3};
  for (double beta : {0.5, 1.0, 7.0, 20.0}) {
    SCOPED_TRACE(::testing::Message() << "beta=" << beta);
    TrilinearAttentionOptions opt;
    opt.beta = beta;
    const auto x = tt::random_tensor(s.numel(), 7, -1.0, 1.0);
    const auto w = tt::random_tensor(s.numel(), 8, -1.0, 1.0);
    auto loss = [&](const std::vector<double>& xv) {
      std::vector<double> m(xv.size());
      tasn::cpu::trilinear_attention_forward<double>(xv.data(), m.data(), nullptr, s, opt);
      return tt::weighted_sum(m, w);
    };
    const auto g_num = tt::numeric_gradient(loss, x, 1e-5);
    std::vector<double> g(x.size());
    tasn::cpu::trilinear_attention_backward<double>(x.data(), w.data(), nullptr, g.data(), s, opt);
    const double rel = tt::relative_error(g, g_num);
    EXPECT_LT(rel, 1e-6) << "relative error of dx vs central differences";
    EXPECT_GT(tt::max_abs(g), 1e-3) << "gradient unexpectedly vanishes";
  }
}

TEST(TrilinearCpuProperties, ChannelSoftmaxRowsSumToOne) {
  const TrilinearShape s{3, 12, 5, 4};
  const auto x = tt::random_tensor(s.numel(), 31, -3.0, 3.0);
  std::vector<double> m(x.size()), saved(tasn::trilinear_saved_elems(s));
  tasn::cpu::trilinear_attention_forward<double>(x.data(), m.data(), saved.data(), s);
  const std::int64_t ncp = s.numel();
  for (std::int64_t r = 0; r < s.n * s.c; ++r) {
    double a_sum = 0.0, s_sum = 0.0;
    for (std::int64_t j = 0; j < s.c; ++j) a_sum += saved[ncp + r * s.c + j];
    for (std::int64_t p = 0; p < s.p(); ++p) s_sum += saved[r * s.p() + p];
    EXPECT_NEAR(a_sum, 1.0, 1e-12) << "row " << r << " of A";
    EXPECT_NEAR(s_sum, 1.0, 1e-12) << "row " << r << " of S";
  }
}

TEST(TrilinearCpuProperties, ChannelPermutationEquivariance) {
  const TrilinearShape s{2, 9, 4, 3};
  const std::int64_t C = s.c, P = s.p();
  const auto x = tt::random_tensor(s.numel(), 41, -1.0, 1.0);
  std::vector<int> perm(C);
  std::iota(perm.begin(), perm.end(), 0);
  std::reverse(perm.begin(), perm.end());
  std::swap(perm[0], perm[4]);
  std::vector<double> xp(x.size());
  for (std::int64_t n = 0; n < s.n; ++n)
    for (std::int64_t c = 0; c < C; ++c)
      for (std::int64_t p = 0; p < P; ++p) xp[(n * C + c) * P + p] = x[(n * C + perm[c]) * P + p];
  std::vector<double> m(x.size()), mp(x.size());
  tasn::cpu::trilinear_attention_forward<double>(x.data(), m.data(), nullptr, s);
  tasn::cpu::trilinear_attention_forward<double>(xp.data(), mp.data(), nullptr, s);
  for (std::int64_t n = 0; n < s.n; ++n)
    for (std::int64_t c = 0; c < C; ++c)
      for (std::int64_t p = 0; p < P; ++p)
        EXPECT_NEAR(mp[(n * C + c) * P + p], m[(n * C + perm[c]) * P + p], 1e-12);
}

TYPED_TEST(TrilinearCpu, HugeInputsStayFinite) {
  using T = TypeParam;
  const TrilinearShape s{2, 8, 6, 6};
  auto xd = tt::random_tensor(s.numel(), 51, -1e4, 1e4);
  xd[3] = 1e4;
  xd[10] = -1e4;
  const auto x = tt::cast_vector<T>(xd);
  const auto dm = tt::cast_vector<T>(tt::random_tensor(s.numel(), 52));
  std::vector<T> m(x.size()), dx(x.size());
  tasn::cpu::trilinear_attention_forward<T>(x.data(), m.data(), nullptr, s);
  tasn::cpu::trilinear_attention_backward<T>(x.data(), dm.data(), nullptr, dx.data(), s);
  for (std::size_t i = 0; i < m.size(); ++i) {
    ASSERT_TRUE(std::isfinite(m[i])) << "m[" << i << "]";
    ASSERT_TRUE(std::isfinite(dx[i])) << "dx[" << i << "]";
  }
  // M rows are convex combinations of X rows: bounded by the input range.
  const T lim = *std::max_element(x.begin(), x.end(), [](T a, T b) { return std::abs(a) < std::abs(b); });
  for (T v : m) EXPECT_LE(std::abs(v), std::abs(lim) * (1 + 1e-5));
}

// ---- error paths ------------------------------------------------------------------------------

TEST(TrilinearCpuErrors, InvalidSizes) {
  std::vector<float> buf(64);
  for (TrilinearShape s : {TrilinearShape{1, 0, 2, 2}, TrilinearShape{1, 2, 0, 2}, TrilinearShape{1, 2, 2, -3},
                           TrilinearShape{-1, 2, 2, 2}}) {
    const std::string msg = tt::invalid_argument_message(
        [&] { tasn::cpu::trilinear_attention_forward<float>(buf.data(), buf.data(), nullptr, s); });
    EXPECT_NE(msg.find("trilinear_attention_forward"), std::string::npos) << msg;
    EXPECT_NE(msg.find("(N, C, H, W)"), std::string::npos) << msg;
    EXPECT_NE(msg.find(std::to_string(s.w)), std::string::npos) << msg;
  }
}

TEST(TrilinearCpuErrors, NullPointers) {
  const TrilinearShape s{1, 2, 2, 2};
  std::vector<float> b(8);
  std::string msg = tt::invalid_argument_message([&] { tasn::cpu::trilinear_attention_forward<float>(nullptr, b.data(), nullptr, s); });
  EXPECT_NE(msg.find("x is null"), std::string::npos) << msg;
  EXPECT_NE(msg.find("8 elements"), std::string::npos) << msg;
  msg = tt::invalid_argument_message([&] { tasn::cpu::trilinear_attention_forward<float>(b.data(), nullptr, nullptr, s); });
  EXPECT_NE(msg.find("m is null"), std::string::npos) << msg;
  msg = tt::invalid_argument_message([&] { tasn::cpu::trilinear_attention_backward<float>(b.data(), nullptr, nullptr, b.data(), s); });
  EXPECT_NE(msg.find("dm is null"), std::string::npos) << msg;
  msg = tt::invalid_argument_message([&] { tasn::cpu::trilinear_attention_backward<float>(b.data(), b.data(), nullptr, nullptr, s); });
  EXPECT_NE(msg.find("dx is null"), std::string::npos) << msg;
  // An empty batch is a no-op, null pointers allowed.
  EXPECT_NO_THROW(tasn::cpu::trilinear_attention_forward<float>(nullptr, nullptr, nullptr, TrilinearShape{0, 2, 2, 2}));
}

TEST(TrilinearCpuErrors, BadBeta) {
  const TrilinearShape s{1, 2, 2, 2};
  std::vector<double> b(8, 0.5), out(8);
  for (double beta : {0.0, -1.0, std::nan(""), double(INFINITY)}) {
    TrilinearAttentionOptions opt;
    opt.beta = beta;
    const std::string msg = tt::invalid_argument_message([&] {
      tasn::cpu::trilinear_attention_forward<double>(b.data(), out.data(), nullptr, s, opt);
    });
    EXPECT_NE(msg.find("beta must be finite and > 0"), std::string::npos) << msg;
    const std::string msg2 = tt::invalid_argument_message([&] {
      tasn::cpu::trilinear_attention_backward<double>(b.data(), b.data(), nullptr, out.data(), s, opt);
    });
    EXPECT_NE(msg2.find("beta"), std::string::npos) << msg2;
  }
}

TEST(TrilinearCpuErrors, NonFiniteInputs) {
  const TrilinearShape s{1, 2, 2, 2};
  std::vector<float> x(8, 0.5f), m(8), dm(8, 1.f);
  x[5] = std::nanf("");
  std::string msg = tt::invalid_argument_message([&] { tasn::cpu::trilinear_attention_forward<float>(x.data(), m.data(), nullptr, s); });
  EXPECT_NE(msg.find("x holds a non-finite value"), std::string::npos) << msg;
  EXPECT_NE(msg.find("index 5 of 8"), std::string::npos) << msg;
  x[5] = 0.5f;
  dm[7] = INFINITY;
  msg = tt::invalid_argument_message([&] { tasn::cpu::trilinear_attention_backward<float>(x.data(), dm.data(), nullptr, m.data(), s); });
  EXPECT_NE(msg.find("dm holds a non-finite value"), std::string::npos) << msg;
  // The scan can be switched off; NaN then flows through as with any unchecked kernel.
  TrilinearAttentionOptions opt;
  opt.check_finite = false;
  x[0] = std::nanf("");
  EXPECT_NO_THROW(tasn::cpu::trilinear_attention_forward<float>(x.data(), m.data(), nullptr, s, opt));
}

// 64-bit size arithmetic: a shape with more than 2^31 elements is accepted and counted exactly;
// one whose element counts overflow int64 is rejected before any arithmetic wraps.
TEST(TrilinearCpuErrors, SixtyFourBitSizes) {
  const TrilinearShape big{4096, 512, 64, 64};
  EXPECT_NO_THROW(big.validate("test"));
  EXPECT_EQ(big.numel(), std::int64_t(4096) * 512 * 4096);
  EXPECT_GT(big.numel(), std::int64_t(1) << 31);
  EXPECT_EQ(tasn::trilinear_saved_elems(big), std::int64_t(4096) * 512 * (4096 + 512));
  const TrilinearShape huge{1 << 20, 1 << 20, 1 << 20, 1 << 20};
  const std::string msg = tt::invalid_argument_message([&] { huge.validate("test"); });
  EXPECT_NE(msg.find("overflows 64-bit indexing"), std::string::npos) << msg;
  const TrilinearShape wide{1, std::int64_t(1) << 32, 1, 1};  // C * C = 2^64 overflows
  EXPECT_NE(tt::invalid_argument_message([&] { wide.validate("test"); }).find("overflows"), std::string::npos);
}

// beta is used as a float (the float CPU path and the CUDA path): a beta that is finite in double
// but not in float made softmax(beta * (x - max)) compute inf * 0 = NaN everywhere. It is refused
// for every type (CPU and CUDA react alike); the largest float beta still gives finite results.
TEST(TrilinearCpuErrors, BetaMustBeFiniteInFloat) {
  const TrilinearShape s{1, 3, 2, 2};
  const auto xd = tt::random_tensor(s.numel(), 71, -2.0, 2.0), dmd = tt::random_tensor(s.numel(), 72);
  for (double beta : {1e39, 1e300}) {
    TrilinearAttentionOptions opt;
    opt.beta = beta;
    std::vector<float> x = tt::cast_vector<float>(xd), m(x.size());
    std::string msg = tt::invalid_argument_message([&] { tasn::cpu::trilinear_attention_forward<float>(x.data(), m.data(), nullptr, s, opt); });
    EXPECT_NE(msg.find("trilinear_attention_forward: beta must be finite in float, in (0, 3.40282e+38], got " +
                       std::string(beta == 1e39 ? "1e+39" : "1e+300")),
              std::string::npos)
        << msg;
    std::vector<double> md(xd.size()), dx(xd.size());
    msg = tt::invalid_argument_message([&] { tasn::cpu::trilinear_attention_backward<double>(xd.data(), dmd.data(), nullptr, dx.data(), s, opt); });
    EXPECT_NE(msg.find("trilinear_attention_backward: beta must be finite in float"), std::string::npos) << msg;
  }
  for (double beta : {3.4e38, double(FLT_MAX)}) {
    TrilinearAttentionOptions opt;
    opt.beta = beta;
    const auto x = tt::cast_vector<float>(xd), dm = tt::cast_vector<float>(dmd);
    std::vector<float> m(x.size()), dx(x.size());
    tasn::cpu::trilinear_attention_forward<float>(x.data(), m.data(), nullptr, s, opt);
    tasn::cpu::trilinear_attention_backward<float>(x.data(), dm.data(), nullptr, dx.data(), s, opt);
    for (std::size_t i = 0; i < m.size(); ++i) {
      ASSERT_TRUE(std::isfinite(m[i])) << "beta " << beta << " m[" << i << "]";
      ASSERT_TRUE(std::isfinite(dx[i])) << "beta " << beta << " dx[" << i << "]";
    }
  }
}

}  // namespace
