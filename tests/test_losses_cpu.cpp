// CPU losses: naive double references, finite differences, PyTorch golden data, extremes and
// every error path.
#include <gtest/gtest.h>

#include <cfloat>
#include <limits>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "support/loss_calls.h"
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
    tasn::cpu::distillation_loss(tt::distillation_args<T>(zs_t.data(), zt_t.data(), n, k, opt, loss.data(), gs.data(), gt.data(), up_t.data()));

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
        tasn::cpu::softmax_cross_entropy(tt::cross_entropy_args<T>(z_t.data(), y.data(), n, k, opt, loss.data(), g.data(), up_t.data()));
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
        tasn::cpu::distillation_loss(tt::distillation_args<T>(zs.data(), zt.data(), n, k, opt, rows.data(), gs.data(), gt.data(), w.data()));
        auto r = tt::compare(rows, g.at(tag + "_rows").data, atol, rtol);
        EXPECT_TRUE(r.ok) << "rows: " << r.message();
        r = tt::compare(gs, g.at(tag + "_dstudent").data, atol, rtol * 10);
        EXPECT_TRUE(r.ok) << "dstudent: " << r.message();
        r = tt::compare(gt, g.at(tag + "_dteacher").data, atol, rtol * 10);
        EXPECT_TRUE(r.ok) << "dteacher: " << r.message();
        if (kl) {  // F.kl_div(..., reduction="batchmean") is our KL form with mean reduction
          opt.reduction = Reduction::Mean;
          T mean = 0;
          tasn::cpu::distillation_loss(tt::distillation_args<T>(zs.data(), zt.data(), n, k, opt, &mean, nullptr));
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
      tasn::cpu::softmax_cross_entropy(tt::cross_entropy_args<T>(z.data(), y.data(), n, k, opt, rows.data(), nullptr));
      auto r = tt::compare(rows, g.at(tag + "_rows").data, atol, rtol);
      EXPECT_TRUE(r.ok) << "rows: " << r.message();
      opt.reduction = Reduction::Mean;
      T mean = 0;
      tasn::cpu::softmax_cross_entropy(tt::cross_entropy_args<T>(z.data(), y.data(), n, k, opt, &mean, grad.data()));
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
      tasn::cpu::distillation_loss(tt::distillation_args<T>(zs.data(), zt.data(), n, k, opt, loss.data(), gs.data(), gt.data()));
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
  tasn::cpu::distillation_loss(tt::distillation_args<T>(same.data(), same.data(), n, k, opt, &l, gs.data()));
  EXPECT_NEAR(l, 0.0, 1e-6);
  for (T v : gs) EXPECT_NEAR(v, 0.0, 1e-7);
  opt.kl = false;
  tasn::cpu::distillation_loss(tt::distillation_args<T>(same.data(), same.data(), n, k, opt, &l, nullptr));
  EXPECT_NEAR(l, std::log(double(k)), 1e-5);
  // K = 1: everything is certain, loss 0, gradient 0.
  std::vector<T> one = {T(5), T(-7)}, two = {T(1e4), T(0)};
  std::vector<std::int64_t> y = {0, 0};
  std::vector<T> loss(2), g(2, T(9));
  CrossEntropyOptions ce;
  ce.reduction = Reduction::None;
  tasn::cpu::softmax_cross_entropy(tt::cross_entropy_args<T>(one.data(), y.data(), 2, 1, ce, loss.data(), g.data()));
  EXPECT_EQ(loss[0], T(0));
  EXPECT_EQ(g[1], T(0));
  tasn::cpu::distillation_loss(tt::distillation_args<T>(one.data(), two.data(), 2, 1, DistillationOptions{}, loss.data(), g.data()));
  EXPECT_EQ(loss[0], T(0));
  EXPECT_EQ(g[0], T(0));
  // Cross-entropy of huge logits: finite, and exactly -log-softmax.
  std::vector<T> big = {T(1e4), T(-1e4), T(0)};
  std::vector<std::int64_t> lab = {1};
  g.assign(3, T(9));
  tasn::cpu::softmax_cross_entropy(tt::cross_entropy_args<T>(big.data(), lab.data(), 1, 3, ce, loss.data(), g.data()));
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
  tasn::cpu::softmax_cross_entropy(tt::cross_entropy_args<double>(z.data(), y.data(), 2, 3, CrossEntropyOptions{}, &loss, g.data()));
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
  tasn::cpu::topk_correct(tt::topk_args<float>(z.data(), y.data(), 5, 5, 5, -100, c.data()));
  EXPECT_EQ(c, (std::vector<std::int64_t>{2, 2, 3, 3, 4}));
  // NaN: at the label the row is never correct; elsewhere it ranks above the label
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const std::vector<float> zn = {nan, 1, 2,  //
                                 3, nan, 1};
  const std::vector<std::int64_t> yn = {0, 0};
  std::vector<std::int64_t> cn(5, -1);  // max_k > k: the NaN row is still never counted
  tasn::cpu::topk_correct(tt::topk_args<float>(zn.data(), yn.data(), 2, 3, 5, -100, cn.data()));
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
  std::string msg = tt::invalid_argument_message([&] { tasn::cpu::softmax_cross_entropy(tt::cross_entropy_args<float>(z.data(), y.data(), 4, 3, ce, out.data(), out.data() )); });
  EXPECT_EQ(msg, "softmax_cross_entropy: labels[3] = 3 is out of range [0, 3) and is not ignore_index (-100)");
  for (float v : out) EXPECT_EQ(v, 7.f);
  y[3] = -5;
  msg = tt::invalid_argument_message([&] { tasn::cpu::softmax_cross_entropy(tt::cross_entropy_args<float>(z.data(), y.data(), 4, 3, ce, out.data(), nullptr)); });
  EXPECT_NE(msg.find("labels[3] = -5"), std::string::npos) << msg;
  std::vector<std::int64_t> c(2, -1);
  msg = tt::invalid_argument_message([&] { tasn::cpu::topk_correct(tt::topk_args<float>(z.data(), y.data(), 4, 3, 2, -100, c.data())); });
  EXPECT_EQ(msg, "topk_correct: labels[3] = -5 is out of range [0, 3) and is not ignore_index (-100)");
  EXPECT_EQ(c, (std::vector<std::int64_t>{-1, -1}));
  y[3] = 0;
  // N or K zero
  msg = tt::invalid_argument_message([&] { tasn::cpu::softmax_cross_entropy(tt::cross_entropy_args<float>(z.data(), y.data(), 0, 3, ce, out.data(), nullptr)); });
  EXPECT_EQ(msg, "softmax_cross_entropy: logits must have shape (N, K) with every size >= 1, got (0, 3)");
  msg = tt::invalid_argument_message([&] { tasn::cpu::distillation_loss(tt::distillation_args<float>(z.data(), z.data(), 4, 0, DistillationOptions{}, out.data(), nullptr)); });
  EXPECT_EQ(msg, "distillation_loss: student must have shape (N, K) with every size >= 1, got (4, 0)");
  // temperature
  for (double t : {0.0, -1.0, std::nan(""), double(INFINITY)}) {
    DistillationOptions opt;
    opt.temperature = t;
    msg = tt::invalid_argument_message([&] { tasn::cpu::distillation_loss(tt::distillation_args<float>(z.data(), z.data(), 4, 3, opt, out.data(), nullptr)); });
    EXPECT_NE(msg.find("temperature must be finite and > 0"), std::string::npos) << msg;
  }
  // options, absent views, non-finite inputs
  ce.label_smoothing = 1.5;
  msg = tt::invalid_argument_message([&] { tasn::cpu::softmax_cross_entropy(tt::cross_entropy_args<float>(z.data(), y.data(), 4, 3, ce, out.data(), nullptr)); });
  EXPECT_NE(msg.find("label_smoothing must be in [0, 1], got 1.5"), std::string::npos) << msg;
  ce.label_smoothing = 0;
  msg = tt::invalid_argument_message([&] { tasn::cpu::softmax_cross_entropy(tt::cross_entropy_args<float>(z.data(), nullptr, 4, 3, ce, out.data(), nullptr)); });
  EXPECT_EQ(msg, "softmax_cross_entropy: labels is absent (a null view) but is required");
  msg = tt::invalid_argument_message([&] { tasn::cpu::distillation_loss(tt::distillation_args<float>(z.data(), nullptr, 4, 3, DistillationOptions{}, out.data(), nullptr)); });
  EXPECT_EQ(msg, "distillation_loss: teacher is absent (a null view) but is required");
  msg = tt::invalid_argument_message([&] { tasn::cpu::distillation_loss(tt::distillation_args<float>(nullptr, z.data(), 4, 3, DistillationOptions{}, out.data(), nullptr)); });
  EXPECT_EQ(msg, "distillation_loss: student is absent (a null view) but is required");
  msg = tt::invalid_argument_message([&] { tasn::cpu::topk_correct(tt::topk_args<float>(z.data(), y.data(), 4, 3, 2, -100, nullptr)); });
  EXPECT_EQ(msg, "topk_correct: correct is absent (a null view) but is required");
  z[7] = std::nanf("");
  msg = tt::invalid_argument_message([&] { tasn::cpu::distillation_loss(tt::distillation_args<float>(z.data(), out.data(), 4, 3, DistillationOptions{}, out.data(), nullptr)); });
  EXPECT_EQ(msg, "distillation_loss: student holds a non-finite value (nan) at flat index 7 of 12");
  msg = tt::invalid_argument_message([&] { tasn::cpu::topk_correct(tt::topk_args<float>(out.data(), y.data(), 4, 3, 0, -100, c.data())); });
  EXPECT_EQ(msg, "topk_correct: correct must have shape (max_k) with max_k >= 1, got (0)");
}

}  // namespace

namespace {

// Every view's shape, strides and presence, with messages naming the argument and the sizes; on
// an error nothing is written.
TEST(LossesCpuErrors, ShapeErrorsFromViews) {
  std::vector<float> a(4 * 10, 0.f), b(4 * 11, 0.f), g(4 * 10, 7.f), l(4, 7.f), padded(4 * 20, 0.f);
  std::vector<std::int64_t> y = {1, 2, 3, 0};
  auto untouched = [&] {
    for (float v : g) EXPECT_EQ(v, 7.f);
    for (float v : l) EXPECT_EQ(v, 7.f);
  };
  // distillation: every view against student's (N, K) = (4, 10)
  auto d = tt::distillation_args<float>(a.data(), a.data(), 4, 10, DistillationOptions{}, l.data(), g.data());
  auto dist = [&](const tasn::DistillationArgs<float>& args) {
    return tt::invalid_argument_message([&] { tasn::cpu::distillation_loss(args); });
  };
  auto bad = d;
  bad.teacher = tasn::Tensor2<const float>(b.data(), {4, 11});
  EXPECT_EQ(dist(bad), "distillation_loss: teacher has shape (4, 11) but (N, K) = (4, 10) is required");
  bad = d;
  bad.loss = tasn::Tensor1<float>(l.data(), {4});
  EXPECT_EQ(dist(bad), "distillation_loss: loss has shape (4) but (1) (reduction mean) = (1) is required");
  bad.options.reduction = Reduction::None;
  bad.loss = tasn::Tensor1<float>(l.data(), {3});
  EXPECT_EQ(dist(bad), "distillation_loss: loss has shape (3) but (N) = (4) is required");
  bad = d;
  bad.dstudent = tasn::Tensor2<float>(g.data(), {10, 4});
  EXPECT_EQ(dist(bad), "distillation_loss: dstudent has shape (10, 4) but (N, K) = (4, 10) is required");
  bad = d;
  bad.dteacher = tasn::Tensor2<float>(g.data(), {4, 9});
  EXPECT_EQ(dist(bad), "distillation_loss: dteacher has shape (4, 9) but (N, K) = (4, 10) is required");
  bad = d;
  bad.options.reduction = Reduction::Sum;
  bad.dloss = tasn::Tensor1<const float>(l.data(), {2});
  EXPECT_EQ(dist(bad), "distillation_loss: dloss has shape (2) but (1) (reduction sum) = (1) is required");
  // strides: a row-padded student (a view of columns 0..9 of a (4, 20) buffer) and teacher
  bad = d;
  bad.student = tasn::Tensor2<const float>(padded.data(), {4, 10}, {20, 1});
  EXPECT_EQ(dist(bad), "distillation_loss: student of shape (4, 10) has strides (20, 1); the operator needs it packed row-major");
  bad = d;
  bad.teacher = tasn::Tensor2<const float>(padded.data(), {4, 10}, {1, 4});  // column-major
  EXPECT_EQ(dist(bad), "distillation_loss: teacher of shape (4, 10) has strides (1, 4); the operator needs it packed row-major");
  bad = d;
  bad.dstudent = tasn::Tensor2<float>(g.data(), {4, 10}, {10, 2});
  EXPECT_EQ(dist(bad), "distillation_loss: dstudent of shape (4, 10) has strides (10, 2); the operator needs it packed row-major");
  bad = d;
  bad.student = {};
  EXPECT_EQ(dist(bad), "distillation_loss: student is absent (a null view) but is required");
  untouched();

  // cross-entropy: against logits' (N, K)
  auto c = tt::cross_entropy_args<float>(a.data(), y.data(), 4, 10, CrossEntropyOptions{}, l.data(), g.data());
  auto cross = [&](const tasn::CrossEntropyArgs<float>& args) {
    return tt::invalid_argument_message([&] { tasn::cpu::softmax_cross_entropy(args); });
  };
  auto cb = c;
  cb.labels = tasn::Tensor1<const std::int64_t>(y.data(), {3});
  EXPECT_EQ(cross(cb), "softmax_cross_entropy: labels has shape (3) but (N) = (4) is required");
  cb = c;
  cb.labels = tasn::Tensor1<const std::int64_t>(y.data(), {4}, {2});
  EXPECT_EQ(cross(cb), "softmax_cross_entropy: labels of shape (4) has strides (2); the operator needs it packed row-major");
  cb = c;
  cb.dlogits = tasn::Tensor2<float>(g.data(), {5, 10});
  EXPECT_EQ(cross(cb), "softmax_cross_entropy: dlogits has shape (5, 10) but (N, K) = (4, 10) is required");
  cb = c;
  cb.logits = {};
  EXPECT_EQ(cross(cb), "softmax_cross_entropy: logits is absent (a null view) but is required");
  cb = c;
  cb.labels = {};
  EXPECT_EQ(cross(cb), "softmax_cross_entropy: labels is absent (a null view) but is required");
  untouched();

  // top-k
  std::vector<std::int64_t> cnt(3, -1);
  auto t = tt::topk_args<float>(a.data(), y.data(), 4, 10, 3, -100, cnt.data());
  auto topk = [&](const tasn::TopkArgs<float>& args) {
    return tt::invalid_argument_message([&] { tasn::cpu::topk_correct(args); });
  };
  auto tb = t;
  tb.labels = tasn::Tensor1<const std::int64_t>(y.data(), {5});
  EXPECT_EQ(topk(tb), "topk_correct: labels has shape (5) but (N) = (4) is required");
  tb = t;
  tb.correct = tasn::Tensor1<std::int64_t>(cnt.data(), {2}, {-1});
  EXPECT_EQ(topk(tb), "topk_correct: correct of shape (2) has strides (-1); the operator needs it packed row-major");
  tb = t;
  tb.logits = tasn::Tensor2<const float>(padded.data(), {4, 10}, {20, 1});
  EXPECT_EQ(topk(tb), "topk_correct: logits of shape (4, 10) has strides (20, 1); the operator needs it packed row-major");
  EXPECT_EQ(cnt, (std::vector<std::int64_t>{-1, -1, -1}));

  // matching views run, and a batch slice of packed views is packed again
  float whole = 0, half = 0;
  tasn::cpu::softmax_cross_entropy(tt::cross_entropy_args<float>(a.data(), y.data(), 4, 10, CrossEntropyOptions{}, &whole, nullptr));
  EXPECT_NEAR(whole, std::log(10.0), 1e-6);
  tasn::CrossEntropyArgs<float> s;
  s.logits = tasn::Tensor2<const float>(a.data(), {4, 10}).slice(2, 4);
  s.labels = tasn::Tensor1<const std::int64_t>(y.data(), {4}).slice(2, 4);
  s.loss = tasn::Tensor1<float>(&half, {1});
  tasn::cpu::softmax_cross_entropy(s);
  EXPECT_EQ(half, whole);
}

// Caller workspaces: the same bits as the operator's own; too small, null or misaligned ones are
// refused before anything is written; workspace_bytes(args) is exactly what the call uses.
template <class Args, class Op>
void expect_workspace_contract(const Args& args, Op&& op, const char* name, const std::vector<std::vector<float>*>& outs) {
  SCOPED_TRACE(name);
  for (auto* o : outs) std::fill(o->begin(), o->end(), 0.f);
  op(args, tasn::Workspace{});
  std::vector<std::vector<float>> own;
  for (auto* o : outs) own.push_back(*o);
  const std::size_t need = tasn::cpu::workspace_bytes(args);
  ASSERT_GT(need, 0u);
  ASSERT_EQ(need % tasn::detail::kWorkspaceAlign, 0u);
  const std::size_t extra = 512;
  auto* buf = static_cast<unsigned char*>(std::aligned_alloc(tasn::detail::kWorkspaceAlign, need + extra + 256));
  ASSERT_NE(buf, nullptr);
  std::memset(buf, 0xA5, need + extra + 256);
  for (auto* o : outs) std::fill(o->begin(), o->end(), 0.f);
  op(args, tasn::Workspace{buf, need + extra});
  for (std::size_t i = 0; i < outs.size(); ++i)
    EXPECT_EQ(std::memcmp(outs[i]->data(), own[i].data(), own[i].size() * sizeof(float)), 0) << "output " << i;
  std::size_t touched_beyond = 0, touched = 0;
  for (std::size_t i = 0; i < need; ++i) touched += buf[i] != 0xA5;
  for (std::size_t i = need; i < need + extra + 256; ++i) touched_beyond += buf[i] != 0xA5;
  EXPECT_EQ(touched_beyond, 0u) << "the call wrote beyond workspace_bytes(args)";
  EXPECT_GT(touched, 0u);
  // exactly the size works, one byte less does not
  EXPECT_NO_THROW(op(args, tasn::Workspace{buf, need}));
  for (auto* o : outs) std::fill(o->begin(), o->end(), 7.f);
  const std::string small = tt::invalid_argument_message([&] { op(args, tasn::Workspace{buf, need - 1}); });
  EXPECT_EQ(small, std::string(name) + ": workspace holds " + std::to_string(need - 1) + " bytes but " +
                       std::to_string(need) + " are needed (query workspace_bytes(args))");
  const std::string mis = tt::invalid_argument_message([&] { op(args, tasn::Workspace{buf + 8, need + extra}); });
  EXPECT_EQ(mis, std::string(name) + ": workspace must be 256-byte aligned (cudaMalloc memory is; on the host use std::aligned_alloc)");
  for (auto* o : outs)
    for (float v : *o) EXPECT_EQ(v, 7.f);
  std::free(buf);
}

TEST(LossesCpuWorkspace, CallerWorkspaceIsBitIdenticalAndChecked) {
  const std::int64_t n = 37, k = 300;
  const auto zs = tt::cast_vector<float>(tt::random_tensor(n * k, 41, -5.0, 5.0));
  const auto zt = tt::cast_vector<float>(tt::random_tensor(n * k, 42, -5.0, 5.0));
  std::vector<std::int64_t> y(n);
  for (std::int64_t i = 0; i < n; ++i) y[i] = i % 7 == 0 ? -100 : (i * 13) % k;
  std::vector<float> loss(n), gs(n * k), gt(n * k), counts(5);
  DistillationOptions dopt;
  dopt.reduction = Reduction::None;
  expect_workspace_contract(
      tt::distillation_args<float>(zs.data(), zt.data(), n, k, dopt, loss.data(), gs.data(), gt.data()),
      [](const auto& a, tasn::Workspace ws) { tasn::cpu::distillation_loss(a, ws); }, "distillation_loss", {&loss, &gs, &gt});
  CrossEntropyOptions copt;
  copt.label_smoothing = 0.1;
  copt.reduction = Reduction::None;
  expect_workspace_contract(
      tt::cross_entropy_args<float>(zs.data(), y.data(), n, k, copt, loss.data(), gs.data()),
      [](const auto& a, tasn::Workspace ws) { tasn::cpu::softmax_cross_entropy(a, ws); }, "softmax_cross_entropy", {&loss, &gs});
  std::vector<std::int64_t> c(5);
  auto t = tt::topk_args<float>(zs.data(), y.data(), n, k, 5, -100, c.data());
  expect_workspace_contract(
      t,
      [&](const auto& a, tasn::Workspace ws) {
        tasn::cpu::topk_correct(a, ws);
        for (int j = 0; j < 5; ++j) counts[j] = static_cast<float>(c[j]);
      },
      "topk_correct", {&counts});
  // the workspace holds the row losses (loss present) and a row scratch per thread slot
  auto no_loss = tt::distillation_args<float>(zs.data(), zt.data(), n, k, dopt, nullptr, gs.data());
  auto with_loss = tt::distillation_args<float>(zs.data(), zt.data(), n, k, dopt, loss.data(), gs.data());
  EXPECT_LT(tasn::cpu::workspace_bytes(no_loss), tasn::cpu::workspace_bytes(with_loss));
}

// check_finite = false: no scan; NaN propagates to its row only; a bad label (never used as an
// index) gives its row a NaN loss and a zero gradient; top-k does not count it.
TEST(LossesCpu, CheckFiniteFalsePropagatesAndMarksBadLabels) {
  const std::int64_t n = 4, k = 5;
  const float nan = std::numeric_limits<float>::quiet_NaN();
  auto z = tt::cast_vector<float>(tt::random_tensor(n * k, 51, -3.0, 3.0));
  const auto zt = tt::cast_vector<float>(tt::random_tensor(n * k, 52, -3.0, 3.0));
  // distillation: NaN in student row 1
  auto zn = z;
  zn[1 * k + 2] = nan;
  DistillationOptions d;
  d.reduction = Reduction::None;
  std::vector<float> loss(n), gs(n * k), ref_loss(n), ref_gs(n * k);
  const std::string msg = tt::invalid_argument_message([&] {
    tasn::cpu::distillation_loss(tt::distillation_args<float>(zn.data(), zt.data(), n, k, d, loss.data(), gs.data()));
  });
  EXPECT_EQ(msg, "distillation_loss: student holds a non-finite value (nan) at flat index 7 of 20");
  d.check_finite = false;
  tasn::cpu::distillation_loss(tt::distillation_args<float>(zn.data(), zt.data(), n, k, d, loss.data(), gs.data()));
  tasn::cpu::distillation_loss(tt::distillation_args<float>(z.data(), zt.data(), n, k, d, ref_loss.data(), ref_gs.data()));
  for (std::int64_t i = 0; i < n; ++i) {
    if (i == 1) {
      EXPECT_TRUE(std::isnan(loss[i]));
      for (std::int64_t j = 0; j < k; ++j) EXPECT_TRUE(std::isnan(gs[i * k + j])) << j;
    } else {
      EXPECT_EQ(loss[i], ref_loss[i]) << i;
      for (std::int64_t j = 0; j < k; ++j) EXPECT_EQ(gs[i * k + j], ref_gs[i * k + j]) << i << "," << j;
    }
  }
  d.reduction = Reduction::Mean;
  float mean = 0;
  tasn::cpu::distillation_loss(tt::distillation_args<float>(zn.data(), zt.data(), n, k, d, &mean, nullptr));
  EXPECT_TRUE(std::isnan(mean));

  // cross-entropy: bad labels far out of range (never indexed) against the same rows ignored
  for (std::int64_t bad_label : {std::int64_t(5), std::int64_t(-7), std::numeric_limits<std::int64_t>::max(),
                                 std::numeric_limits<std::int64_t>::min()}) {
    SCOPED_TRACE(::testing::Message() << "bad label " << bad_label);
    const std::vector<std::int64_t> y = {1, bad_label, -100, 4}, y_ignored = {1, -100, -100, 4};
    CrossEntropyOptions ce;
    ce.reduction = Reduction::None;
    ce.check_finite = false;
    std::vector<float> l(n, 7.f), g(n * k, 7.f), rl(n), rg(n * k);
    tasn::cpu::softmax_cross_entropy(tt::cross_entropy_args<float>(z.data(), y.data(), n, k, ce, l.data(), g.data()));
    tasn::cpu::softmax_cross_entropy(tt::cross_entropy_args<float>(z.data(), y_ignored.data(), n, k, ce, rl.data(), rg.data()));
    EXPECT_TRUE(std::isnan(l[1]));
    for (std::int64_t j = 0; j < k; ++j) EXPECT_EQ(g[1 * k + j], 0.f);
    for (std::int64_t i : {0, 2, 3}) {
      EXPECT_EQ(l[i], rl[i]) << i;
      for (std::int64_t j = 0; j < k; ++j) EXPECT_EQ(g[i * k + j], rg[i * k + j]) << i << "," << j;
    }
    ce.reduction = Reduction::Mean;  // NaN, not the mean of the good rows
    float m = 0;
    tasn::cpu::softmax_cross_entropy(tt::cross_entropy_args<float>(z.data(), y.data(), n, k, ce, &m, nullptr));
    EXPECT_TRUE(std::isnan(m));
    // every non-ignored label bad: still NaN, not the 0 of an all-ignored batch
    const std::vector<std::int64_t> all_bad = {bad_label, -100, bad_label, -100};
    tasn::cpu::softmax_cross_entropy(tt::cross_entropy_args<float>(z.data(), all_bad.data(), n, k, ce, &m, nullptr));
    EXPECT_TRUE(std::isnan(m));
    // top-k: the bad row is never counted; with check_finite it is refused
    std::vector<std::int64_t> c(k, -1), c_ignored(k, -1);
    auto t = tt::topk_args<float>(z.data(), y.data(), n, k, k, -100, c.data());
    t.options.check_finite = false;
    tasn::cpu::topk_correct(t);
    tasn::cpu::topk_correct(tt::topk_args<float>(z.data(), y_ignored.data(), n, k, k, -100, c_ignored.data()));
    EXPECT_EQ(c, c_ignored);
    EXPECT_EQ(c.back(), 2);  // rows 0 and 3, at max_k = K
    t.options.check_finite = true;
    const std::string tm = tt::invalid_argument_message([&] { tasn::cpu::topk_correct(t); });
    EXPECT_EQ(tm, "topk_correct: labels[1] = " + std::to_string(bad_label) + " is out of range [0, 5) and is not ignore_index (-100)");
  }
  // NaN logits and dloss with check_finite: refused, nothing written
  CrossEntropyOptions ce;
  ce.reduction = Reduction::None;
  const std::vector<std::int64_t> y = {1, 2, 3, 4};
  std::vector<float> l(n, 7.f), up(n, 1.f);
  up[2] = std::numeric_limits<float>::infinity();
  std::string m = tt::invalid_argument_message([&] {
    tasn::cpu::softmax_cross_entropy(tt::cross_entropy_args<float>(zn.data(), y.data(), n, k, ce, l.data(), nullptr));
  });
  EXPECT_EQ(m, "softmax_cross_entropy: logits holds a non-finite value (nan) at flat index 7 of 20");
  m = tt::invalid_argument_message([&] {
    tasn::cpu::softmax_cross_entropy(tt::cross_entropy_args<float>(z.data(), y.data(), n, k, ce, l.data(), nullptr, up.data()));
  });
  EXPECT_EQ(m, "softmax_cross_entropy: dloss holds a non-finite value (inf) at flat index 2 of 4");
  for (float v : l) EXPECT_EQ(v, 7.f);
  ce.check_finite = false;  // propagates: row 2's loss is finite, its gradient inf * (q - t)
  std::vector<float> g(n * k);
  tasn::cpu::softmax_cross_entropy(tt::cross_entropy_args<float>(z.data(), y.data(), n, k, ce, l.data(), g.data(), up.data()));
  EXPECT_TRUE(std::isfinite(l[2]));
  for (std::int64_t j = 0; j < k; ++j) EXPECT_FALSE(std::isfinite(g[2 * k + j])) << j;
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
  std::string msg = tt::invalid_argument_message([&] { tasn::cpu::distillation_loss(tt::distillation_args<double>(z.data(), z.data(), 4, 3, d, out.data(), nullptr)); });
  EXPECT_NE(msg.find("distillation_loss: temperature must be >= 2.93874e-39 (1/temperature finite in float), got 1e-50"), std::string::npos) << msg;
  d.temperature = 1e30;  // fine alone ...
  EXPECT_NO_THROW(tasn::cpu::distillation_loss(tt::distillation_args<double>(z.data(), z.data(), 4, 3, d, out.data(), nullptr)));
  d.t_squared = true;  // ... but T^2 = 1e60 is not a float
  msg = tt::invalid_argument_message([&] { tasn::cpu::distillation_loss(tt::distillation_args<float>(tt::cast_vector<float>(z).data(), tt::cast_vector<float>(z).data(), 4, 3, d, nullptr, nullptr)); });
  EXPECT_NE(msg.find("distillation_loss: temperature must be <= 1.84467e+19 with t_squared (temperature^2 finite in float), got 1e+30"), std::string::npos) << msg;
  for (double s : {1e300, -1e300, 3.5e38}) {
    CrossEntropyOptions ce;
    ce.grad_scale = s;
    msg = tt::invalid_argument_message([&] { tasn::cpu::softmax_cross_entropy(tt::cross_entropy_args<double>(z.data(), y.data(), 4, 3, ce, out.data(), nullptr)); });
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
    tasn::cpu::distillation_loss(tt::distillation_args<T>(z.data(), z.data(), n, k, opt, loss.data(), gs.data(), gt.data()));
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
    tasn::cpu::distillation_loss(tt::distillation_args<T>(zs.data(), zt.data(), 1, 2, opt, &loss, gs.data(), gt.data()));
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
  tasn::cpu::distillation_loss(tt::distillation_args<T>(tt::cast_vector<T>(zs).data(), tt::cast_vector<T>(zt).data(), n, k, opt, loss.data(),
                                  gs.data(), gt.data(), dl.data()));
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
  tasn::cpu::softmax_cross_entropy(tt::cross_entropy_args<T>(z.data(), y.data(), 1, 3, ce, l.data(), g.data(), d10.data()));
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
  tasn::cpu::distillation_loss(tt::distillation_args<T>(tt::cast_vector<T>(zs).data(), tt::cast_vector<T>(zt).data(), n, k, opt, &loss, nullptr));
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
  tasn::cpu::softmax_cross_entropy(tt::cross_entropy_args<T>(tt::cast_vector<T>(z).data(), y.data(), n, k, ce, &loss, nullptr));
  EXPECT_NEAR(loss, ce_ref, 1e-5 * ce_ref);
}

}  // namespace
