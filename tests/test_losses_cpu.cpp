// CPU losses: naive double references, finite differences, PyTorch golden data, extremes and
// every error path.
#include <gtest/gtest.h>

#include <cfloat>
#include <limits>

#include <cmath>
#include <string>
#include <type_traits>
#include <vector>

#include "support/reference_losses.h"
#include "support/test_support.h"
#include "tasn/losses.h"

namespace {
namespace tt = tasn::test;
using tasn::CrossEntropyOptions;
using tasn::DistillationOptions;
using tasn::Reduction;

int red_index(Reduction r) { return r == Reduction::None ? 0 : r == Reduction::Sum ? 1 : 2; }

template <class T>
struct LossTol;
template <>
struct LossTol<float> {
  static constexpr double rtol = 2e-5, atol = 2e-6;
};
template <>
struct LossTol<double> {
  static constexpr double rtol = 1e-12, atol = 1e-14;
};

template <class T>
class LossesCpu : public ::testing::Test {};
using Types = ::testing::Types<float, double>;
TYPED_TEST_SUITE(LossesCpu, Types);

struct DistillCase {
  double T;
  bool kl, tsq;
  Reduction red;
};

std::vector<DistillCase> distill_cases() {
  std::vector<DistillCase> v;
  for (double T : {1.0, 10.0, 0.5})
    for (bool kl : {false, true})
      for (bool tsq : {false, true})
        for (Reduction r : {Reduction::None, Reduction::Sum, Reduction::Mean}) v.push_back({T, kl, tsq, r});
  return v;
}

// Loss against the naive reference; gradients against central differences of the naive reference
// (double only; float is compared with the double gradients).
TYPED_TEST(LossesCpu, DistillationMatchesReferenceAndFiniteDifferences) {
  using T = TypeParam;
  const std::int64_t n = 5, k = 11;
  const auto zs = tt::random_tensor(n * k, 1, -6.0, 6.0);
  const auto zt = tt::random_tensor(n * k, 2, -6.0, 6.0);
  for (const auto& c : distill_cases()) {
    SCOPED_TRACE(::testing::Message() << "T=" << c.T << " kl=" << c.kl << " t_squared=" << c.tsq
                                      << " reduction=" << tasn::to_string(c.red));
    DistillationOptions opt;
    opt.temperature = c.T;
    opt.kl = c.kl;
    opt.t_squared = c.tsq;
    opt.reduction = c.red;
    const std::int64_t nl = tasn::loss_elems(n, c.red);
    const auto up = tt::random_tensor(nl, 3, 0.5, 1.5);  // upstream gradient
    const auto zs_t = tt::cast_vector<T>(zs), zt_t = tt::cast_vector<T>(zt), up_t = tt::cast_vector<T>(up);
    std::vector<T> loss(nl), gs(n * k), gt(n * k);
    tasn::cpu::distillation_loss<T>(zs_t.data(), zt_t.data(), n, k, opt, loss.data(), gs.data(), gt.data(), up_t.data());

    // loss
    const auto rows = tt::ref_distillation_rows(zs, zt, n, k, c.T, c.kl, c.tsq);
    std::vector<double> ref = c.red == Reduction::None ? rows
                                                       : std::vector<double>{tt::ref_reduce(rows, red_index(c.red), double(n))};
    auto r = tt::compare(loss, ref, LossTol<T>::atol * (1 + tt::max_abs(ref)), LossTol<T>::rtol);
    EXPECT_TRUE(r.ok) << "loss: " << r.message();

    // gradients: L = sum_i up_i * loss_i (None) or up_0 * loss
    auto total = [&](const std::vector<double>& s, const std::vector<double>& t) {
      const auto rr = tt::ref_distillation_rows(s, t, n, k, c.T, c.kl, c.tsq);
      if (c.red == Reduction::None) return tt::weighted_sum(rr, up);
      return up[0] * tt::ref_reduce(rr, red_index(c.red), double(n));
    };
    const auto gs_num = tt::numeric_gradient([&](const std::vector<double>& v) { return total(v, zt); }, zs, 1e-5);
    const auto gt_num = tt::numeric_gradient([&](const std::vector<double>& v) { return total(zs, v); }, zt, 1e-5);
    const double tol = std::is_same_v<T, double> ? 1e-7 : 2e-4;
    EXPECT_LT(tt::relative_error(tt::cast_vector<double>(gs), gs_num), tol) << "student gradient";
    EXPECT_LT(tt::relative_error(tt::cast_vector<double>(gt), gt_num), tol) << "teacher gradient";
    EXPECT_GT(tt::max_abs(gs_num), 1e-4);
  }
}

TYPED_TEST(LossesCpu, CrossEntropyMatchesReferenceAndFiniteDifferences) {
  using T = TypeParam;
  const std::int64_t n = 7, k = 9;
  const auto z = tt::random_tensor(n * k, 4, -5.0, 5.0);
  const std::vector<std::int64_t> y = {3, -1, 0, 8, 4, -1, 2};
  for (double eps : {0.0, 0.1})
    for (double scale : {1.0, 0.5})
      for (Reduction red : {Reduction::None, Reduction::Sum, Reduction::Mean}) {
        SCOPED_TRACE(::testing::Message() << "eps=" << eps << " grad_scale=" << scale << " reduction=" << tasn::to_string(red));
        CrossEntropyOptions opt;
        opt.ignore_index = -1;
        opt.label_smoothing = eps;
        opt.grad_scale = scale;
        opt.reduction = red;
        const std::int64_t nl = tasn::loss_elems(n, red);
        const auto up = tt::random_tensor(nl, 5, 0.5, 1.5);
        const auto z_t = tt::cast_vector<T>(z), up_t = tt::cast_vector<T>(up);
        std::vector<T> loss(nl), g(n * k);
        tasn::cpu::softmax_cross_entropy<T>(z_t.data(), y.data(), n, k, opt, loss.data(), g.data(), up_t.data());
        const auto rows = tt::ref_cross_entropy_rows(z, y, n, k, eps, scale, -1);
        const double valid = 5.0;
        std::vector<double> ref = red == Reduction::None ? rows
                                                         : std::vector<double>{tt::ref_reduce(rows, red_index(red), valid)};
        auto r = tt::compare(loss, ref, LossTol<T>::atol * (1 + tt::max_abs(ref)), LossTol<T>::rtol);
        EXPECT_TRUE(r.ok) << "loss: " << r.message();
        auto total = [&](const std::vector<double>& v) {
          const auto rr = tt::ref_cross_entropy_rows(v, y, n, k, eps, scale, -1);
          return red == Reduction::None ? tt::weighted_sum(rr, up) : up[0] * tt::ref_reduce(rr, red_index(red), valid);
        };
        const auto g_num = tt::numeric_gradient(total, z, 1e-5);
        EXPECT_LT(tt::relative_error(tt::cast_vector<double>(g), g_num), (std::is_same_v<T, double> ? 1e-8 : 1e-5));
        for (std::int64_t j = 0; j < k; ++j) {  // ignored rows: exactly zero
          EXPECT_EQ(g[1 * k + j], T(0));
          EXPECT_EQ(g[5 * k + j], T(0));
        }
      }
}

TYPED_TEST(LossesCpu, MatchesPyTorchGolden) {
  using T = TypeParam;
  const double rtol = std::is_same_v<T, double> ? 1e-12 : 3e-5, atol = std::is_same_v<T, double> ? 1e-14 : 1e-6;
  {
    const tt::GoldenFile g(tt::golden_path("losses_distillation.bin"));
    const std::int64_t n = 6, k = 13;
    const auto zs = tt::cast_vector<T>(tt::random_tensor(n * k, 21, -5.0, 5.0));
    const auto zt = tt::cast_vector<T>(tt::random_tensor(n * k, 22, -5.0, 5.0));
    const auto w = tt::cast_vector<T>(g.at("dloss").data);
    for (double temp : {10.0, 2.0})
      for (bool kl : {false, true}) {
        const std::string tag = std::string(kl ? "kl" : "ce") + "_T" + (temp == 10.0 ? "10" : "2");
        SCOPED_TRACE(tag);
        DistillationOptions opt;
        opt.temperature = temp;
        opt.kl = kl;
        opt.reduction = Reduction::None;
        std::vector<T> rows(n), gs(n * k), gt(n * k);
        tasn::cpu::distillation_loss<T>(zs.data(), zt.data(), n, k, opt, rows.data(), gs.data(), gt.data(), w.data());
        auto r = tt::compare(rows, g.at(tag + "_rows").data, atol, rtol);
        EXPECT_TRUE(r.ok) << "rows: " << r.message();
        r = tt::compare(gs, g.at(tag + "_dstudent").data, atol, rtol * 10);
        EXPECT_TRUE(r.ok) << "dstudent: " << r.message();
        r = tt::compare(gt, g.at(tag + "_dteacher").data, atol, rtol * 10);
        EXPECT_TRUE(r.ok) << "dteacher: " << r.message();
        if (kl) {  // F.kl_div(..., reduction="batchmean") is our KL form with mean reduction
          opt.reduction = Reduction::Mean;
          T mean = 0;
          tasn::cpu::distillation_loss<T>(zs.data(), zt.data(), n, k, opt, &mean, nullptr);
          EXPECT_NEAR(mean, g.scalar(tag + "_batchmean"), atol + rtol * std::fabs(g.scalar(tag + "_batchmean")));
        }
      }
  }
  {
    const tt::GoldenFile g(tt::golden_path("losses_cross_entropy.bin"));
    const std::int64_t n = 9, k = 7;
    const auto z = tt::cast_vector<T>(tt::random_tensor(n * k, 31, -4.0, 4.0));
    std::vector<std::int64_t> y;
    for (double v : g.at("labels").data) y.push_back(static_cast<std::int64_t>(v));
    for (double eps : {0.0, 0.1}) {
      const std::string tag = eps == 0.0 ? "eps0" : "eps0.1";
      SCOPED_TRACE(tag);
      CrossEntropyOptions opt;
      opt.label_smoothing = eps;  // ignore_index stays -100, as in PyTorch
      opt.reduction = Reduction::None;
      std::vector<T> rows(n), grad(n * k);
      tasn::cpu::softmax_cross_entropy<T>(z.data(), y.data(), n, k, opt, rows.data(), nullptr);
      auto r = tt::compare(rows, g.at(tag + "_rows").data, atol, rtol);
      EXPECT_TRUE(r.ok) << "rows: " << r.message();
      opt.reduction = Reduction::Mean;
      T mean = 0;
      tasn::cpu::softmax_cross_entropy<T>(z.data(), y.data(), n, k, opt, &mean, grad.data());
      EXPECT_NEAR(mean, g.scalar(tag + "_mean"), atol + rtol * std::fabs(g.scalar(tag + "_mean")));
      r = tt::compare(grad, g.at(tag + "_dlogits_mean").data, atol, rtol * 10);
      EXPECT_TRUE(r.ok) << "dlogits: " << r.message();
    }
  }
}

TYPED_TEST(LossesCpu, ExtremesStayFinite) {
  using T = TypeParam;
  const std::int64_t n = 4, k = 6;
  std::vector<T> zs = {T(1e4), T(-1e4), 0, 0, T(1e4), T(-1e4)}, zt;
  zs.resize(n * k, T(-1e4));
  zt = std::vector<T>(zs.rbegin(), zs.rend());
  for (double temp : {1e-3, 1.0, 10.0, 1e4}) {
    for (bool kl : {false, true}) {
      DistillationOptions opt;
      opt.temperature = temp;
      opt.kl = kl;
      opt.t_squared = true;
      opt.reduction = Reduction::None;
      std::vector<T> loss(n), gs(n * k), gt(n * k);
      tasn::cpu::distillation_loss<T>(zs.data(), zt.data(), n, k, opt, loss.data(), gs.data(), gt.data());
      for (T v : loss) EXPECT_TRUE(std::isfinite(v)) << "T=" << temp;
      for (std::int64_t i = 0; i < n * k; ++i) {
        ASSERT_TRUE(std::isfinite(gs[i])) << "T=" << temp << " i=" << i;
        ASSERT_TRUE(std::isfinite(gt[i])) << "T=" << temp << " i=" << i;
      }
    }
  }
  // Equal logits: KL is 0 with zero gradients; the CE form is the entropy log K.
  std::vector<T> same(n * k, T(3));
  DistillationOptions opt;
  opt.kl = true;
  T l = -1;
  std::vector<T> gs(n * k, T(9));
  tasn::cpu::distillation_loss<T>(same.data(), same.data(), n, k, opt, &l, gs.data());
  EXPECT_NEAR(l, 0.0, 1e-6);
  for (T v : gs) EXPECT_NEAR(v, 0.0, 1e-7);
  opt.kl = false;
  tasn::cpu::distillation_loss<T>(same.data(), same.data(), n, k, opt, &l, nullptr);
  EXPECT_NEAR(l, std::log(double(k)), 1e-5);
  // K = 1: everything is certain, loss 0, gradient 0.
  std::vector<T> one = {T(5), T(-7)}, two = {T(1e4), T(0)};
  std::vector<std::int64_t> y = {0, 0};
  std::vector<T> loss(2), g(2, T(9));
  CrossEntropyOptions ce;
  ce.reduction = Reduction::None;
  tasn::cpu::softmax_cross_entropy<T>(one.data(), y.data(), 2, 1, ce, loss.data(), g.data());
  EXPECT_EQ(loss[0], T(0));
  EXPECT_EQ(g[1], T(0));
  tasn::cpu::distillation_loss<T>(one.data(), two.data(), 2, 1, DistillationOptions{}, loss.data(), g.data());
  EXPECT_EQ(loss[0], T(0));
  EXPECT_EQ(g[0], T(0));
  // Cross-entropy of huge logits: finite, and exactly -log-softmax.
  std::vector<T> big = {T(1e4), T(-1e4), T(0)};
  std::vector<std::int64_t> lab = {1};
  g.assign(3, T(9));
  tasn::cpu::softmax_cross_entropy<T>(big.data(), lab.data(), 1, 3, ce, loss.data(), g.data());
  EXPECT_NEAR(loss[0], 2e4, 2e4 * 1e-6);
  EXPECT_NEAR(g[0], 1.0, 1e-6);
  EXPECT_NEAR(g[1], -1.0, 1e-6);  // q - onehot at the label
  EXPECT_NEAR(g[2], 0.0, 1e-6);
}

TEST(LossesCpu, MeanOverAllIgnoredRowsIsZero) {
  const std::vector<double> z(6, 0.5);
  const std::vector<std::int64_t> y = {-100, -100};
  double loss = -1;
  std::vector<double> g(6, 9.0);
  tasn::cpu::softmax_cross_entropy<double>(z.data(), y.data(), 2, 3, CrossEntropyOptions{}, &loss, g.data());
  EXPECT_EQ(loss, 0.0);
  for (double v : g) EXPECT_EQ(v, 0.0);
}

TEST(LossesCpu, TopkCorrect) {
  // rows: label's logit rank 0, 2, tie for first (rank 0), ignored, rank 4
  const std::vector<float> z = {5, 1, 2, 0, 0,  //
                                1, 3, 2, 4, 0,  //
                                7, 7, 1, 1, 1,  //
                                0, 0, 0, 0, 9,  //
                                5, 4, 3, 2, 1};
  const std::vector<std::int64_t> y = {0, 2, 1, -100, 4};
  std::vector<std::int64_t> c(5, -1);
  tasn::cpu::topk_correct<float>(z.data(), y.data(), 5, 5, 5, -100, c.data());
  EXPECT_EQ(c, (std::vector<std::int64_t>{2, 2, 3, 3, 4}));
  // NaN: at the label the row is never correct; elsewhere it ranks above the label
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const std::vector<float> zn = {nan, 1, 2,  //
                                 3, nan, 1};
  const std::vector<std::int64_t> yn = {0, 0};
  std::vector<std::int64_t> cn(5, -1);  // max_k > k: the NaN row is still never counted
  tasn::cpu::topk_correct<float>(zn.data(), yn.data(), 2, 3, 5, -100, cn.data());
  EXPECT_EQ(cn, (std::vector<std::int64_t>{0, 1, 1, 1, 1}));
}

// ---- errors ---------------------------------------------------------------------------------

TEST(LossesCpuErrors, BadInputs) {
  std::vector<float> z(12, 0.f), out(12, 7.f);
  std::vector<std::int64_t> y = {0, 1, 2, 3};
  CrossEntropyOptions ce;
  ce.reduction = Reduction::None;
  // label out of range, at the last row: nothing may have been written
  y[3] = 3;
  std::string msg = tt::invalid_argument_message([&] { tasn::cpu::softmax_cross_entropy<float>(z.data(), y.data(), 4, 3, ce, out.data(), out.data() ); });
  EXPECT_NE(msg.find("labels[3] = 3 is out of range [0, 3)"), std::string::npos) << msg;
  for (float v : out) EXPECT_EQ(v, 7.f);
  y[3] = -5;
  msg = tt::invalid_argument_message([&] { tasn::cpu::softmax_cross_entropy<float>(z.data(), y.data(), 4, 3, ce, out.data(), nullptr); });
  EXPECT_NE(msg.find("labels[3] = -5"), std::string::npos) << msg;
  y[3] = 0;
  // N or K zero
  msg = tt::invalid_argument_message([&] { tasn::cpu::softmax_cross_entropy<float>(z.data(), y.data(), 0, 3, ce, out.data(), nullptr); });
  EXPECT_NE(msg.find("(N, K) with N >= 1 and K >= 1, got (0, 3)"), std::string::npos) << msg;
  msg = tt::invalid_argument_message([&] { tasn::cpu::distillation_loss<float>(z.data(), z.data(), 4, 0, DistillationOptions{}, out.data(), nullptr); });
  EXPECT_NE(msg.find("got (4, 0)"), std::string::npos) << msg;
  // temperature
  for (double t : {0.0, -1.0, std::nan(""), double(INFINITY)}) {
    DistillationOptions opt;
    opt.temperature = t;
    msg = tt::invalid_argument_message([&] { tasn::cpu::distillation_loss<float>(z.data(), z.data(), 4, 3, opt, out.data(), nullptr); });
    EXPECT_NE(msg.find("temperature must be finite and > 0"), std::string::npos) << msg;
  }
  // options, pointers, non-finite inputs
  ce.label_smoothing = 1.5;
  msg = tt::invalid_argument_message([&] { tasn::cpu::softmax_cross_entropy<float>(z.data(), y.data(), 4, 3, ce, out.data(), nullptr); });
  EXPECT_NE(msg.find("label_smoothing must be in [0, 1], got 1.5"), std::string::npos) << msg;
  ce.label_smoothing = 0;
  msg = tt::invalid_argument_message([&] { tasn::cpu::softmax_cross_entropy<float>(z.data(), nullptr, 4, 3, ce, out.data(), nullptr); });
  EXPECT_NE(msg.find("labels is null but must hold 4 elements"), std::string::npos) << msg;
  msg = tt::invalid_argument_message([&] { tasn::cpu::distillation_loss<float>(z.data(), nullptr, 4, 3, DistillationOptions{}, out.data(), nullptr); });
  EXPECT_NE(msg.find("teacher is null but must hold 12 elements"), std::string::npos) << msg;
  z[7] = std::nanf("");
  msg = tt::invalid_argument_message([&] { tasn::cpu::distillation_loss<float>(z.data(), out.data(), 4, 3, DistillationOptions{}, out.data(), nullptr); });
  EXPECT_NE(msg.find("student holds a non-finite value"), std::string::npos) << msg;
  msg = tt::invalid_argument_message([&] { tasn::cpu::topk_correct<float>(out.data(), y.data(), 4, 3, 0, -100, nullptr); });
  EXPECT_NE(msg.find("max_k must be >= 1"), std::string::npos) << msg;
}

}  // namespace

namespace {

TEST(LossesCpuErrors, ShapeMismatchesThroughViews) {
  using tasn::MatrixView;
  using tasn::VectorView;
  std::vector<float> a(4 * 10, 0.f), b(4 * 11, 0.f), g(4 * 10), l(4);
  DistillationOptions opt;
  std::string m = tt::invalid_argument_message([&] {
    tasn::cpu::distillation_loss<float>(MatrixView<const float>(a.data(), 4, 10), MatrixView<const float>(b.data(), 4, 11),
                                        opt, VectorView<float>(l.data(), 1), MatrixView<float>(g.data(), 4, 10));
  });
  EXPECT_NE(m.find("distillation_loss: teacher has shape (4, 11) but student has shape (4, 10)"), std::string::npos) << m;
  m = tt::invalid_argument_message([&] {
    tasn::cpu::distillation_loss<float>(MatrixView<const float>(a.data(), 4, 10), MatrixView<const float>(a.data(), 4, 10),
                                        opt, VectorView<float>(l.data(), 4), MatrixView<float>(g.data(), 4, 10));
  });
  EXPECT_NE(m.find("loss holds 4 elements but 1 are needed"), std::string::npos) << m;
  m = tt::invalid_argument_message([&] {
    tasn::cpu::distillation_loss<float>(MatrixView<const float>(a.data(), 4, 10), MatrixView<const float>(a.data(), 4, 10),
                                        opt, VectorView<float>(l.data(), 1), MatrixView<float>(g.data(), 10, 4));
  });
  EXPECT_NE(m.find("dstudent has shape (10, 4) but student has shape (4, 10)"), std::string::npos) << m;
  std::vector<std::int64_t> y = {1, 2, 3};
  m = tt::invalid_argument_message([&] {
    tasn::cpu::softmax_cross_entropy<float>(MatrixView<const float>(a.data(), 4, 10), VectorView<const std::int64_t>(y.data(), 3),
                                            CrossEntropyOptions{}, VectorView<float>(l.data(), 1), MatrixView<float>(g.data(), 4, 10));
  });
  EXPECT_NE(m.find("labels holds 3 elements but logits has 4 rows"), std::string::npos) << m;
  // matching views run and agree with the pointer form
  y.push_back(0);
  float via_view = 0, via_ptr = 0;
  tasn::cpu::softmax_cross_entropy<float>(MatrixView<const float>(a.data(), 4, 10), VectorView<const std::int64_t>(y.data(), 4),
                                          CrossEntropyOptions{}, VectorView<float>(&via_view, 1), MatrixView<float>());
  tasn::cpu::softmax_cross_entropy<float>(a.data(), y.data(), 4, 10, CrossEntropyOptions{}, &via_ptr, nullptr);
  EXPECT_EQ(via_view, via_ptr);
  EXPECT_NEAR(via_ptr, std::log(10.0), 1e-6);
}

// ---- robustness: finite-but-extreme options -------------------------------------------------------
// Options that the computation uses as float (1/temperature, temperature^2 with t_squared,
// grad_scale) must be finite in float, on the CPU as on the GPU; legal values whose intermediate
// terms overflow are computed stably.

TEST(LossesCpuErrors, OptionsMustBeFiniteInFloat) {
  std::vector<double> z(12, 0.5), out(12);
  std::vector<std::int64_t> y = {0, 1, 2, 0};
  DistillationOptions d;
  d.temperature = 1e-50;  // 1/T = 1e50: not a float
  std::string msg = tt::invalid_argument_message([&] { tasn::cpu::distillation_loss<double>(z.data(), z.data(), 4, 3, d, out.data(), nullptr); });
  EXPECT_NE(msg.find("distillation_loss: temperature must be >= 2.93874e-39 (1/temperature finite in float), got 1e-50"), std::string::npos) << msg;
  d.temperature = 1e30;  // fine alone ...
  EXPECT_NO_THROW(tasn::cpu::distillation_loss<double>(z.data(), z.data(), 4, 3, d, out.data(), nullptr));
  d.t_squared = true;  // ... but T^2 = 1e60 is not a float
  msg = tt::invalid_argument_message([&] { tasn::cpu::distillation_loss<float>(tt::cast_vector<float>(z).data(), tt::cast_vector<float>(z).data(), 4, 3, d, nullptr, nullptr); });
  EXPECT_NE(msg.find("distillation_loss: temperature must be <= 1.84467e+19 with t_squared (temperature^2 finite in float), got 1e+30"), std::string::npos) << msg;
  for (double s : {1e300, -1e300, 3.5e38}) {
    CrossEntropyOptions ce;
    ce.grad_scale = s;
    msg = tt::invalid_argument_message([&] { tasn::cpu::softmax_cross_entropy<double>(z.data(), y.data(), 4, 3, ce, out.data(), nullptr); });
    EXPECT_NE(msg.find("softmax_cross_entropy: grad_scale must be finite in float (|grad_scale| <= 3.40282e+38), got"), std::string::npos) << msg;
  }
}

// The shared helper: 0 * anything = 0 (xlogy), NaN still propagates, otherwise the plain product.
TEST(LossesMath, XlogyIsZeroWhereTheProbabilityIsZero) {
  EXPECT_EQ(tasn::xlogy(0.0, -INFINITY), 0.0);
  EXPECT_EQ(tasn::xlogy(-0.0, std::nan("")), 0.0);
  EXPECT_EQ(tasn::xlogy(0.0, 1e300), 0.0);
  EXPECT_EQ(tasn::xlogy(0.25, -8.0), -2.0);
  EXPECT_EQ(tasn::xlogy(1e-300, -INFINITY), -INFINITY);  // p > 0: the honest product
  EXPECT_TRUE(std::isnan(tasn::xlogy(std::nan(""), 1.0)));
  EXPECT_TRUE(std::isnan(tasn::xlogy(0.5, std::nan(""))));
  // the distillation term and the teacher gradient use it
  EXPECT_EQ(tasn::distill_loss_term(0.0, -INFINITY, -INFINITY, false), 0.0);
  EXPECT_EQ(tasn::distill_loss_term(0.0, -INFINITY, -INFINITY, true), 0.0);
  EXPECT_EQ(tasn::distill_teacher_grad(0.0, -INFINITY, 3.0, 1e38, 1e38), 0.0);
}

// Far-apart logits for T = 1e-38: (z - max) / T overflows T's range, so log q = -inf where q = 0.
template <class T>
T far_logit() {
  return std::is_same_v<T, float> ? T(-30) : T(-1e300);
}

TYPED_TEST(LossesCpu, ZeroProbabilityTimesMinusInfinityContributesZero) {
  using T = TypeParam;
  const std::int64_t n = 2, k = 3;
  const std::vector<T> z = {T(0), far_logit<T>(), T(5), far_logit<T>(), T(1), T(0)};
  for (bool kl : {false, true}) {
    SCOPED_TRACE(::testing::Message() << "kl=" << kl);
    DistillationOptions opt;
    opt.temperature = 1e-38;
    opt.kl = kl;
    opt.reduction = Reduction::None;
    std::vector<T> loss(n, T(9)), gs(n * k, T(9)), gt(n * k, T(9));
    tasn::cpu::distillation_loss<T>(z.data(), z.data(), n, k, opt, loss.data(), gs.data(), gt.data());
    // student == teacher, both one-hot: p log q is 0 log 0 = 0 where p = 0 (xlogy), 1 log 1 = 0 elsewhere
    for (T v : loss) EXPECT_EQ(v, T(0));
    for (T v : gs) EXPECT_EQ(v, T(0));
    for (T v : gt) EXPECT_EQ(v, T(0));
  }
  // p = (1, 0), q = (0, 1): the loss is 5/T = 5e38 (inf in float), the teacher gradient exactly 0
  // (r_0 - sum p r = 0, p_1 = 0), the student gradient (q - p)/T
  const std::vector<T> zs = {T(0), T(5)}, zt = {T(5), T(0)};
  for (bool kl : {false, true}) {
    SCOPED_TRACE(::testing::Message() << "kl=" << kl);
    DistillationOptions opt;
    opt.temperature = 1e-38;
    opt.kl = kl;
    T loss = T(9);
    std::vector<T> gs(2, T(9)), gt(2, T(9));
    tasn::cpu::distillation_loss<T>(zs.data(), zt.data(), 1, 2, opt, &loss, gs.data(), gt.data());
    if (std::is_same_v<T, float>) EXPECT_EQ(loss, T(INFINITY));
    else EXPECT_NEAR(loss, 5e38, 5e38 * 1e-12);
    EXPECT_EQ(gt[0], T(0));
    EXPECT_EQ(gt[1], T(0));
    const T inv_t = static_cast<T>(1.0 / 1e-38);
    EXPECT_EQ(gs[0], -inv_t);
    EXPECT_EQ(gs[1], inv_t);
  }
}

TYPED_TEST(LossesCpu, GradientWeightsDoNotOverflowIntoNaN) {
  using T = TypeParam;
  // t_squared with T = 1e19 (T^2 = 1e38 is a float) and an upstream gradient of 100: the row
  // weight T^2 * 100 overflows float, but the gradient T * 100 * (q - p) does not
  const double temp = 1e19, up = 100.0;
  const std::int64_t n = 2, k = 3;
  const std::vector<double> zs = {0, 1e19, 2e19, 0, 0, 0}, zt = {2e19, 0, 1e19, 0, 0, 0};
  DistillationOptions opt;
  opt.temperature = temp;
  opt.t_squared = true;
  opt.reduction = Reduction::None;
  const std::vector<T> dl(n, T(up));
  std::vector<T> loss(n), gs(n * k), gt(n * k);
  tasn::cpu::distillation_loss<T>(tt::cast_vector<T>(zs).data(), tt::cast_vector<T>(zt).data(), n, k, opt, loss.data(),
                                  gs.data(), gt.data(), dl.data());
  for (std::int64_t i = 0; i < n; ++i) {
    const auto lq = tt::ref_log_softmax(&zs[i * k], k, 1.0 / temp), lp = tt::ref_log_softmax(&zt[i * k], k, 1.0 / temp);
    for (std::int64_t j = 0; j < k; ++j) {
      const double ref = (std::exp(lq[j]) - std::exp(lp[j])) * temp * up;
      ASSERT_TRUE(std::isfinite(gs[i * k + j])) << i << "," << j;
      ASSERT_TRUE(std::isfinite(gt[i * k + j])) << i << "," << j;
      EXPECT_NEAR(gs[i * k + j], ref, 1e-5 * temp * up) << i << "," << j;
    }
  }
  // cross-entropy: grad_scale 1e30 with an upstream gradient of 1e10; q - t = 0 where q underflows
  CrossEntropyOptions ce;
  ce.grad_scale = 1e30;
  ce.reduction = Reduction::None;
  const std::vector<T> z = {T(0), T(-1e4), T(5)}, d10 = {T(1e10)};
  const std::vector<std::int64_t> y = {2};
  std::vector<T> l(1), g(3);
  tasn::cpu::softmax_cross_entropy<T>(z.data(), y.data(), 1, 3, ce, l.data(), g.data(), d10.data());
  for (T v : g) EXPECT_FALSE(std::isnan(v));
  EXPECT_EQ(g[1], T(0));  // q_1 = t_1 = 0
  EXPECT_GT(g[0], T(0));
  EXPECT_LT(g[2], T(0));
}

TYPED_TEST(LossesCpu, RowLossesAreScaledAndReducedInDouble) {
  using T = TypeParam;
  // Row 0's loss times T^2 (or grad_scale) exceeds the float range; the mean over 64 rows does not.
  const std::int64_t n = 64, k = 2;
  std::vector<double> zs(n * k, 0.0), zt(n * k, 0.0);
  zs[1] = 1e20;  // row 0: q = (e^-10, 1), p = (1, e^-10) at T = 1e19
  zt[0] = 1e20;
  DistillationOptions opt;
  opt.temperature = 1e19;
  opt.t_squared = true;
  opt.kl = true;
  const auto rows = tt::ref_distillation_rows(zs, zt, n, k, 1e19, true, true);
  ASSERT_GT(rows[0], double(FLT_MAX));
  const double ref = tt::ref_reduce(rows, 2, double(n));
  T loss = 0;
  tasn::cpu::distillation_loss<T>(tt::cast_vector<T>(zs).data(), tt::cast_vector<T>(zt).data(), n, k, opt, &loss, nullptr);
  EXPECT_NEAR(loss, ref, 1e-5 * ref);
  // cross-entropy with grad_scale 1e30: row 0's loss 1e9 * 1e30
  std::vector<double> z(n * k, 0.0);
  std::vector<std::int64_t> y(n, 0);
  for (std::int64_t i = 0; i < n; ++i) z[i * k + 1] = -1e9;
  y[0] = 1;
  CrossEntropyOptions ce;
  ce.grad_scale = 1e30;
  const auto ce_rows = tt::ref_cross_entropy_rows(z, y, n, k, 0.0, 1e30, -100);
  ASSERT_GT(ce_rows[0], double(FLT_MAX));
  const double ce_ref = tt::ref_reduce(ce_rows, 2, double(n));
  tasn::cpu::softmax_cross_entropy<T>(tt::cast_vector<T>(z).data(), y.data(), n, k, ce, &loss, nullptr);
  EXPECT_NEAR(loss, ce_ref, 1e-5 * ce_ref);
}

}  // namespace
