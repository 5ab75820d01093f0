// CPU trilinear attention: naive double reference, finite differences, PyTorch golden data,
// properties, and every error path.
#include <gtest/gtest.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
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
using tasn::Workspace;
namespace tt = tasn::test;

// Packed views of host vectors.
template <class T>
tasn::Tensor4<T> v4(T* p, const TrilinearShape& s) {
  return tasn::Tensor4<T>(p, {s.n, s.c, s.h, s.w});
}
template <class T>
tasn::Tensor1<T> v1(T* p, std::int64_t n) {
  return tasn::Tensor1<T>(p, {n});
}
std::int64_t saved_elems(const TrilinearShape& s) { return tasn::trilinear_saved_elems(s.n, s.c, s.h, s.w); }

// The operators on host vectors; saved may be null (absent).
template <class T>
void forward(const T* x, T* m, T* saved, const TrilinearShape& s, const TrilinearAttentionOptions& opt = {},
             Workspace ws = {}) {
  tasn::cpu::trilinear_attention_forward(
      tasn::TrilinearForwardArgs<T>{v4(x, s), v4(m, s), saved ? v1(saved, saved_elems(s)) : tasn::Tensor1<T>(), opt},
      ws);
}
template <class T>
void backward(const T* x, const T* dm, const T* saved, T* dx, const TrilinearShape& s,
              const TrilinearAttentionOptions& opt = {}, Workspace ws = {}) {
  tasn::cpu::trilinear_attention_backward(
      tasn::TrilinearBackwardArgs<T>{v4(x, s), v4(dm, s), saved ? v1(saved, saved_elems(s)) : tasn::Tensor1<const T>(),
                                     v4(dx, s), opt},
      ws);
}

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
  std::vector<T> m(x.size()), saved(saved_elems(s)), dx1(x.size()), dx2(x.size());
  forward<T>(xt.data(), m.data(), saved.data(), s, opt);
  backward<T>(xt.data(), dmt.data(), saved.data(), dx1.data(), s, opt);
  backward<T>(xt.data(), dmt.data(), nullptr, dx2.data(), s, opt);
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
      forward<double>(xv.data(), m.data(), nullptr, s, opt);
      return tt::weighted_sum(m, w);
    };
    const auto g_num = tt::numeric_gradient(loss, x, 1e-5);
    std::vector<double> g(x.size());
    backward<double>(x.data(), w.data(), nullptr, g.data(), s, opt);
    const double rel = tt::relative_error(g, g_num);
    EXPECT_LT(rel, 1e-6) << "relative error of dx vs central differences";
    EXPECT_GT(tt::max_abs(g), 1e-3) << "gradient unexpectedly vanishes";
  }
}

TEST(TrilinearCpuProperties, ChannelSoftmaxRowsSumToOne) {
  const TrilinearShape s{3, 12, 5, 4};
  const auto x = tt::random_tensor(s.numel(), 31, -3.0, 3.0);
  std::vector<double> m(x.size()), saved(saved_elems(s));
  forward<double>(x.data(), m.data(), saved.data(), s);
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
  forward<double>(x.data(), m.data(), nullptr, s);
  forward<double>(xp.data(), mp.data(), nullptr, s);
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
  forward<T>(x.data(), m.data(), nullptr, s);
  backward<T>(x.data(), dm.data(), nullptr, dx.data(), s);
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
    const std::string msg = tt::invalid_argument_message([&] { forward<float>(buf.data(), buf.data(), nullptr, s); });
    EXPECT_NE(msg.find("trilinear_attention_forward: x must have shape (N, C, H, W)"), std::string::npos) << msg;
    EXPECT_NE(msg.find(tasn::detail::sizes_string({s.n, s.c, s.h, s.w})), std::string::npos) << msg;
    EXPECT_EQ(tt::invalid_argument_message([&] { backward<float>(buf.data(), buf.data(), nullptr, buf.data(), s); }),
              "trilinear_attention_backward" + msg.substr(msg.find(':')));
  }
}

// Every view is checked against the sizes x defines: size, packed strides, presence; each message
// names the operator, the argument and the sizes.
TEST(TrilinearCpuErrors, ViewsAreCheckedAgainstX) {
  using V4 = tasn::Tensor4<float>;
  using C4 = tasn::Tensor4<const float>;
  const TrilinearShape s{1, 2, 2, 2};
  std::vector<float> b(64, 0.5f), out(64);
  const C4 x = v4<const float>(b.data(), s);
  const V4 m = v4(out.data(), s);
  auto fwd = [&](C4 xv, V4 mv, tasn::Tensor1<float> sv) {
    return tt::invalid_argument_message(
        [&] { tasn::cpu::trilinear_attention_forward(tasn::TrilinearForwardArgs<float>{xv, mv, sv, {}}); });
  };
  auto bwd = [&](C4 xv, C4 dmv, tasn::Tensor1<const float> sv, V4 dxv) {
    return tt::invalid_argument_message(
        [&] { tasn::cpu::trilinear_attention_backward(tasn::TrilinearBackwardArgs<float>{xv, dmv, sv, dxv, {}}); });
  };
  EXPECT_EQ(fwd(x, V4(out.data(), {1, 2, 2, 3}), {}),
            "trilinear_attention_forward: m has shape (1, 2, 2, 3) but (N, C, H, W) = (1, 2, 2, 2) is required");
  EXPECT_EQ(fwd(x, m, v1(out.data(), 11)),
            "trilinear_attention_forward: saved has shape (11) but (N*C*(H*W + C)) = (12) is required");
  EXPECT_EQ(fwd(C4(b.data(), {1, 2, 2, 2}, {16, 8, 4, 2}), m, {}),
            "trilinear_attention_forward: x of shape (1, 2, 2, 2) has strides (16, 8, 4, 2); the operator needs it "
            "packed row-major");
  EXPECT_EQ(fwd(x, V4(out.data(), {1, 2, 2, 2}, {8, 1, 4, 2}), {}),
            "trilinear_attention_forward: m of shape (1, 2, 2, 2) has strides (8, 1, 4, 2); the operator needs it "
            "packed row-major");
  EXPECT_EQ(fwd(C4(), m, {}), "trilinear_attention_forward: x is absent (a null view) but is required");
  EXPECT_EQ(fwd(x, V4(), {}), "trilinear_attention_forward: m is absent (a null view) but is required");
  EXPECT_EQ(bwd(x, C4(), {}, m), "trilinear_attention_backward: dm is absent (a null view) but is required");
  EXPECT_EQ(bwd(x, x, {}, V4()), "trilinear_attention_backward: dx is absent (a null view) but is required");
  EXPECT_EQ(bwd(x, C4(b.data(), {2, 2, 2, 2}), {}, m),
            "trilinear_attention_backward: dm has shape (2, 2, 2, 2) but (N, C, H, W) = (1, 2, 2, 2) is required");
  EXPECT_EQ(bwd(x, x, v1<const float>(b.data(), 13), m),
            "trilinear_attention_backward: saved has shape (13) but (N*C*(H*W + C)) = (12) is required");
  EXPECT_EQ(bwd(x, x, {}, V4(out.data(), {1, 2, 2, 2}, {8, 4, 1, 2})),
            "trilinear_attention_backward: dx of shape (1, 2, 2, 2) has strides (8, 4, 1, 2); the operator needs "
            "it packed row-major");
  // Sizes whose S or A element counts overflow 64-bit indexing (C * C = 2^64), checked before use.
  EXPECT_EQ(fwd(C4(b.data(), {1, std::int64_t(1) << 32, 1, 1}), V4(out.data(), {1, std::int64_t(1) << 32, 1, 1}), {}),
            "trilinear_attention_forward: size 4294967296 x 4294967296 overflows 64-bit indexing");
  // Nothing was written by any refused call.
  EXPECT_TRUE(std::all_of(out.begin(), out.end(), [](float v) { return v == 0.f; }));
  // An empty batch is a no-op (the views must still be present and of matching sizes).
  const TrilinearShape e{0, 2, 2, 2};
  EXPECT_NO_THROW(forward<float>(b.data(), out.data(), nullptr, e));
  EXPECT_NO_THROW(backward<float>(b.data(), b.data(), nullptr, out.data(), e));
  EXPECT_EQ(tasn::cpu::workspace_bytes(tasn::TrilinearForwardArgs<float>{v4<const float>(b.data(), e), v4(out.data(), e), {}, {}}),
            0u);
}

TEST(TrilinearCpuErrors, BadBeta) {
  const TrilinearShape s{1, 2, 2, 2};
  std::vector<double> b(8, 0.5), out(8);
  for (double beta : {0.0, -1.0, std::nan(""), double(INFINITY)}) {
    TrilinearAttentionOptions opt;
    opt.beta = beta;
    const std::string msg = tt::invalid_argument_message([&] { forward<double>(b.data(), out.data(), nullptr, s, opt); });
    EXPECT_NE(msg.find("trilinear_attention_forward: beta must be finite and > 0"), std::string::npos) << msg;
    const std::string msg2 =
        tt::invalid_argument_message([&] { backward<double>(b.data(), b.data(), nullptr, out.data(), s, opt); });
    EXPECT_NE(msg2.find("trilinear_attention_backward: beta"), std::string::npos) << msg2;
  }
}

TEST(TrilinearCpuErrors, NonFiniteInputs) {
  const TrilinearShape s{1, 2, 2, 2};
  std::vector<float> x(8, 0.5f), m(8, 3.f), dm(8, 1.f);
  x[5] = std::nanf("");
  std::string msg = tt::invalid_argument_message([&] { forward<float>(x.data(), m.data(), nullptr, s); });
  EXPECT_EQ(msg, tasn::detail::nonfinite_message("trilinear_attention_forward", "x", std::nanf(""), 5, 8));
  EXPECT_NE(msg.find("x holds a non-finite value"), std::string::npos) << msg;
  EXPECT_NE(msg.find("index 5 of 8"), std::string::npos) << msg;
  EXPECT_TRUE(std::all_of(m.begin(), m.end(), [](float v) { return v == 3.f; })) << "m written before the refusal";
  x[5] = 0.5f;
  dm[7] = INFINITY;
  msg = tt::invalid_argument_message([&] { backward<float>(x.data(), dm.data(), nullptr, m.data(), s); });
  EXPECT_EQ(msg, "trilinear_attention_backward: dm holds a non-finite value (inf) at flat index 7 of 8");
  EXPECT_TRUE(std::all_of(m.begin(), m.end(), [](float v) { return v == 3.f; })) << "dx written before the refusal";
  // The scan can be switched off; NaN then flows through as with any unchecked kernel.
  TrilinearAttentionOptions opt;
  opt.check_finite = false;
  x[0] = std::nanf("");
  EXPECT_NO_THROW(forward<float>(x.data(), m.data(), nullptr, s, opt));
  EXPECT_TRUE(std::isnan(m[0])) << "NaN in x must propagate to m with check_finite = false";
  x[0] = 0.5f;
  dm[7] = std::nanf("");
  std::vector<float> dx(8);
  EXPECT_NO_THROW(backward<float>(x.data(), dm.data(), nullptr, dx.data(), s, opt));
  EXPECT_TRUE(std::any_of(dx.begin(), dx.end(), [](float v) { return std::isnan(v); }))
      << "NaN in dm must propagate to dx with check_finite = false";
}

// ---- workspace --------------------------------------------------------------------------------

// A 256-byte aligned host buffer (plus `offset` bytes, to test misalignment), filled with a pattern.
struct HostBuffer {
  explicit HostBuffer(std::size_t bytes, std::size_t offset = 0) : raw(bytes + 2 * tasn::detail::kWorkspaceAlign, 0xab) {
    const auto a = reinterpret_cast<std::uintptr_t>(raw.data());
    p = raw.data() + (tasn::detail::kWorkspaceAlign - a % tasn::detail::kWorkspaceAlign) % tasn::detail::kWorkspaceAlign +
        offset;
  }
  std::vector<unsigned char> raw;
  unsigned char* p;
};

template <class T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

// The caller's workspace gives the results of the self-allocated one bit for bit, for a batch
// below the thread count (one region, threaded GEMMs) and above it (a region per thread slot),
// and the operators touch no byte beyond workspace_bytes(args).
TYPED_TEST(TrilinearCpu, CallerWorkspaceIsBitIdentical) {
  using T = TypeParam;
  for (std::int64_t n : {std::int64_t(1), std::int64_t(tasn::cpu::num_threads()) + 1}) {
    const TrilinearShape s{n, 6, 5, 7};
    SCOPED_TRACE(::testing::Message() << "N=" << n);
    const auto x = tt::cast_vector<T>(tt::random_tensor(s.numel(), 81, -1.0, 2.0));
    const auto dm = tt::cast_vector<T>(tt::random_tensor(s.numel(), 82));
    std::vector<T> m0(x.size()), saved0(saved_elems(s)), dx0(x.size()), dxr0(x.size());
    forward<T>(x.data(), m0.data(), saved0.data(), s);
    backward<T>(x.data(), dm.data(), saved0.data(), dx0.data(), s);
    backward<T>(x.data(), dm.data(), nullptr, dxr0.data(), s);
    std::vector<T> m1(x.size()), m2(x.size()), saved1(saved_elems(s)), dx1(x.size()), dxr1(x.size());

    const tasn::TrilinearForwardArgs<T> f_saved{v4<const T>(x.data(), s), v4(m1.data(), s), v1(saved1.data(), saved_elems(s)), {}};
    const tasn::TrilinearForwardArgs<T> f_plain{v4<const T>(x.data(), s), v4(m2.data(), s), {}, {}};
    const tasn::TrilinearBackwardArgs<T> b_saved{v4<const T>(x.data(), s), v4<const T>(dm.data(), s),
                                                 v1<const T>(saved1.data(), saved_elems(s)), v4(dx1.data(), s), {}};
    const tasn::TrilinearBackwardArgs<T> b_plain{v4<const T>(x.data(), s), v4<const T>(dm.data(), s), {},
                                                 v4(dxr1.data(), s), {}};
    auto run = [](std::size_t need, auto&& call) {
      HostBuffer ws(need);
      call(Workspace{ws.p, need});
      for (std::size_t i = need; i < need + tasn::detail::kWorkspaceAlign; ++i)
        if (ws.p[i] != 0xab) return false;  // a byte beyond workspace_bytes(args) was written
      return true;
    };
    EXPECT_TRUE(run(tasn::cpu::workspace_bytes(f_saved), [&](Workspace w) { tasn::cpu::trilinear_attention_forward(f_saved, w); }));
    EXPECT_TRUE(run(tasn::cpu::workspace_bytes(f_plain), [&](Workspace w) { tasn::cpu::trilinear_attention_forward(f_plain, w); }));
    EXPECT_TRUE(run(tasn::cpu::workspace_bytes(b_saved), [&](Workspace w) { tasn::cpu::trilinear_attention_backward(b_saved, w); }));
    EXPECT_TRUE(run(tasn::cpu::workspace_bytes(b_plain), [&](Workspace w) { tasn::cpu::trilinear_attention_backward(b_plain, w); }));
    EXPECT_TRUE(same_bits(m1, m0));
    EXPECT_TRUE(same_bits(m2, m0));
    EXPECT_TRUE(same_bits(saved1, saved0));
    EXPECT_TRUE(same_bits(dx1, dx0));
    EXPECT_TRUE(same_bits(dxr1, dxr0));
  }
}

// workspace_bytes(args): the per-sample temporaries, one region per thread slot when the samples
// run one per thread, else one region; nothing for a forward pass with a saved buffer.
TEST(TrilinearCpuWorkspace, BytesFollowTheLayout) {
  auto al = [](std::size_t b) { return (b + 255) / 256 * 256; };
  std::vector<float> b(4096);
  const auto threads = static_cast<std::int64_t>(tasn::cpu::num_threads());
  for (std::int64_t n : {std::int64_t(1), threads, threads + 2}) {
    const TrilinearShape s{n, 3, 4, 5};  // C*P = 60, C*C = 9
    const std::size_t regions = n >= threads ? static_cast<std::size_t>(tasn::cpu::num_slots()) : 1;
    const auto x = v4<const float>(b.data(), s);
    const auto m = v4(b.data(), s);
    const auto sv = v1(b.data(), saved_elems(s));
    EXPECT_EQ(tasn::cpu::workspace_bytes(tasn::TrilinearForwardArgs<float>{x, m, {}, {}}), regions * (al(240) + al(36)));
    EXPECT_EQ(tasn::cpu::workspace_bytes(tasn::TrilinearForwardArgs<float>{x, m, sv, {}}), 0u);
    EXPECT_EQ(tasn::cpu::workspace_bytes(tasn::TrilinearBackwardArgs<float>{x, x, sv, m, {}}),
              regions * (2 * al(36) + al(240)));
    EXPECT_EQ(tasn::cpu::workspace_bytes(tasn::TrilinearBackwardArgs<float>{x, x, {}, m, {}}),
              regions * (al(240) + al(36) + 2 * al(36) + al(240)));
  }
}

TEST(TrilinearCpuWorkspace, TooSmallOrMisalignedIsRefused) {
  const TrilinearShape s{2, 3, 4, 5};
  std::vector<float> x(s.numel(), 0.5f), m(s.numel(), 3.f);
  const tasn::TrilinearForwardArgs<float> a{v4<const float>(x.data(), s), v4(m.data(), s), {}, {}};
  const std::size_t need = tasn::cpu::workspace_bytes(a);
  ASSERT_GT(need, 0u);
  HostBuffer small(need), odd(need + 64, 8);
  std::string msg =
      tt::invalid_argument_message([&] { tasn::cpu::trilinear_attention_forward(a, Workspace{small.p, need - 1}); });
  EXPECT_EQ(msg, "trilinear_attention_forward: workspace holds " + std::to_string(need - 1) + " bytes but " +
                     std::to_string(need) + " are needed (query workspace_bytes(args))");
  msg = tt::invalid_argument_message([&] { tasn::cpu::trilinear_attention_forward(a, Workspace{odd.p, need + 8}); });
  EXPECT_EQ(msg, "trilinear_attention_forward: workspace must be 256-byte aligned (cudaMalloc memory is; on the host "
                 "use std::aligned_alloc)");
  const tasn::TrilinearBackwardArgs<float> ba{v4<const float>(x.data(), s), v4<const float>(x.data(), s), {},
                                              v4(m.data(), s), {}};
  const std::size_t bneed = tasn::cpu::workspace_bytes(ba);
  msg = tt::invalid_argument_message([&] { tasn::cpu::trilinear_attention_backward(ba, Workspace{small.p, 16}); });
  EXPECT_EQ(msg, "trilinear_attention_backward: workspace holds 16 bytes but " + std::to_string(bneed) +
                     " are needed (query workspace_bytes(args))");
  EXPECT_TRUE(std::all_of(m.begin(), m.end(), [](float v) { return v == 3.f; })) << "written before the refusal";
}

// 64-bit size arithmetic: a shape with more than 2^31 elements is accepted and counted exactly;
// one whose element counts overflow int64 is rejected before any arithmetic wraps.
TEST(TrilinearCpuErrors, SixtyFourBitSizes) {
  const TrilinearShape big{4096, 512, 64, 64};
  EXPECT_NO_THROW(big.validate("test"));
  EXPECT_EQ(big.numel(), std::int64_t(4096) * 512 * 4096);
  EXPECT_GT(big.numel(), std::int64_t(1) << 31);
  EXPECT_EQ(saved_elems(big), std::int64_t(4096) * 512 * (4096 + 512));
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
    std::string msg = tt::invalid_argument_message([&] { forward<float>(x.data(), m.data(), nullptr, s, opt); });
    EXPECT_NE(msg.find("trilinear_attention_forward: beta must be finite in float, in (0, 3.40282e+38], got " +
                       std::string(beta == 1e39 ? "1e+39" : "1e+300")),
              std::string::npos)
        << msg;
    std::vector<double> md(xd.size()), dx(xd.size());
    msg = tt::invalid_argument_message([&] { backward<double>(xd.data(), dmd.data(), nullptr, dx.data(), s, opt); });
    EXPECT_NE(msg.find("trilinear_attention_backward: beta must be finite in float"), std::string::npos) << msg;
  }
  for (double beta : {3.4e38, double(FLT_MAX)}) {
    TrilinearAttentionOptions opt;
    opt.beta = beta;
    const auto x = tt::cast_vector<float>(xd), dm = tt::cast_vector<float>(dmd);
    std::vector<float> m(x.size()), dx(x.size());
    forward<float>(x.data(), m.data(), nullptr, s, opt);
    backward<float>(x.data(), dm.data(), nullptr, dx.data(), s, opt);
    for (std::size_t i = 0; i < m.size(); ++i) {
      ASSERT_TRUE(std::isfinite(m[i])) << "beta " << beta << " m[" << i << "]";
      ASSERT_TRUE(std::isfinite(dx[i])) << "beta " << beta << " dx[" << i << "]";
    }
  }
}

}  // namespace
