// CUDA losses against the CPU path (double, on the same storage-rounded logits), for every
// storage type, both row-kernel variants, and K in {1, 31, 200, 1000, 5089, 8192}.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <ostream>
#include <string>
#include <tuple>
#include <vector>

#include "gpu/gpu_runners.h"
#include "support/gpu_cases.h"
#include "support/gpu_tolerance.h"
#include "support/loss_calls.h"
#include "support/test_support.h"
#include "tasn/losses.h"

namespace {
namespace tt = tasn::test;
namespace g = tasn::test::gpu;
namespace tol = tasn::test::tol;
using g::Dtype;
using g::Kernel;
using tasn::Reduction;

class GpuLosses : public ::testing::TestWithParam<std::tuple<Dtype, Kernel>> {
 protected:
  void SetUp() override {
    std::string reason;
    if (!g::device_available(&reason)) GTEST_SKIP() << reason;
  }
};

// Each element's bound (tests/support/gpu_tolerance.h): the storage rounding of the loss or gradient
// plus its float computation (row-group reductions, expf / logf, the options' float factors);
// tests/test_gpu_tolerances.cpp replays these tests' data on the CPU and checks the bounds cover it.
void expect_within(const std::vector<float>& got, const std::vector<double>& ref, Dtype dt, const std::vector<double>& pre,
                   const char* what) {
  const auto r = tol::check_bound(got, ref, dt, pre);
  EXPECT_TRUE(r.ok) << what << ": " << r.message();
}

TEST_P(GpuLosses, DistillationMatchesCpu) {
  const auto [dt, kernel] = GetParam();
  const long n = tt::gpu_cases::kLossRows;
  for (long k : tt::gpu_cases::kLossLengths) {
    for (bool kl : {false, true}) {
      for (Reduction red : {Reduction::None, Reduction::Mean}) {
        SCOPED_TRACE(::testing::Message() << "K=" << k << " kl=" << kl << " reduction=" << tasn::to_string(red));
        tasn::DistillationOptions opt;
        opt.kl = kl;
        opt.t_squared = true;
        opt.reduction = red;
        const auto zs = g::round_to(dt, tt::cast_vector<float>(tt::random_tensor(n * k, 10 + k, -20.0, 20.0)));
        const auto zt = g::round_to(dt, tt::cast_vector<float>(tt::random_tensor(n * k, 20 + k, -20.0, 20.0)));
        const auto up = g::round_to(dt, tt::cast_vector<float>(tt::random_tensor(tasn::loss_elems(n, red), 3, 0.5, 1.5)));
        const auto got = g::distillation(dt, zs, zt, n, k, opt, up, true, kernel);
        const auto zsd = tt::cast_vector<double>(zs), ztd = tt::cast_vector<double>(zt), upd = tt::cast_vector<double>(up);
        std::vector<double> loss(tasn::loss_elems(n, red)), gs(n * k), gtt(n * k);
        tasn::cpu::distillation_loss(tt::distillation_args<double>(zsd.data(), ztd.data(), n, k, opt, loss.data(), gs.data(), gtt.data(), upd.data()));
        const auto pre = tol::distillation_pre(zsd, ztd, n, k, opt, upd, kernel);
        expect_within(got.loss, loss, dt, pre.loss, "loss");
        expect_within(got.grad, gs, dt, pre.grad, "dstudent");
        expect_within(got.grad_teacher, gtt, dt, pre.grad_teacher, "dteacher");
      }
    }
  }
}

TEST_P(GpuLosses, CrossEntropyMatchesCpu) {
  const auto [dt, kernel] = GetParam();
  const long n = tt::gpu_cases::kLossRows;
  for (long k : tt::gpu_cases::kLossLengths) {
    for (Reduction red : {Reduction::None, Reduction::Sum, Reduction::Mean}) {
      SCOPED_TRACE(::testing::Message() << "K=" << k << " reduction=" << tasn::to_string(red));
      const tasn::CrossEntropyOptions opt = tt::gpu_cases::cross_entropy_options(red);
      const auto y = tt::gpu_cases::cross_entropy_labels(n, k);
      const auto z = g::round_to(dt, tt::cast_vector<float>(tt::random_tensor(n * k, 30 + k, -1e4, 1e4)));
      const auto got = g::cross_entropy(dt, z, y, n, k, opt, {}, kernel);
      const auto zd = tt::cast_vector<double>(z);
      const std::vector<std::int64_t> y64(y.begin(), y.end());
      std::vector<double> loss(tasn::loss_elems(n, red)), gz(n * k);
      tasn::cpu::softmax_cross_entropy(tt::cross_entropy_args<double>(zd.data(), y64.data(), n, k, opt, loss.data(), gz.data()));
      const auto pre = tol::cross_entropy_pre(zd, y, n, k, opt, kernel);
      expect_within(got.loss, loss, dt, pre.loss, "loss");
      expect_within(got.grad, gz, dt, pre.grad, "dlogits");
    }
  }
}

TEST_P(GpuLosses, TopkMatchesCpu) {
  const auto [dt, kernel] = GetParam();
  if (kernel != Kernel::Auto) GTEST_SKIP() << "one kernel (warp per row)";
  const long n = 300, k = 37, max_k = 5;
  std::vector<long long> y(n);
  for (long i = 0; i < n; ++i) y[i] = i % 10 == 0 ? -100 : (i * 31) % k;
  // small integers: many ties, exact in every storage type
  auto z = tt::random_tensor(n * k, 5, 0.0, 8.0);
  for (auto& v : z) v = std::floor(v);
  const auto zf = tt::cast_vector<float>(z);
  const std::vector<std::int64_t> y64(y.begin(), y.end());
  std::vector<std::int64_t> ref(max_k);
  tasn::cpu::topk_correct(tt::topk_args<float>(zf.data(), y64.data(), n, k, max_k, -100, ref.data()));
  const auto got = g::topk(dt, zf, y, n, k, max_k, tasn::TopkOptions{});
  EXPECT_EQ(std::vector<long long>(ref.begin(), ref.end()), got);
  // check_finite = false: bad labels are not counted, as on the CPU; with it they are refused alike
  auto yb = y;
  yb[3] = k;
  yb[7] = -5;
  const std::vector<std::int64_t> yb64(yb.begin(), yb.end());
  tasn::TopkOptions unchecked;
  unchecked.check_finite = false;
  auto targs = tt::topk_args<float>(zf.data(), yb64.data(), n, k, max_k, -100, ref.data());
  targs.options = unchecked;
  tasn::cpu::topk_correct(targs);
  EXPECT_EQ(std::vector<long long>(ref.begin(), ref.end()), g::topk(dt, zf, yb, n, k, max_k, unchecked));
  targs.options.check_finite = true;
  const std::string cpu_msg = tt::invalid_argument_message([&] { tasn::cpu::topk_correct(targs); });
  EXPECT_EQ(cpu_msg, "topk_correct: labels[3] = 37 is out of range [0, 37) and is not ignore_index (-100)");
  EXPECT_EQ(tt::invalid_argument_message([&] { g::topk(dt, zf, yb, n, k, max_k, tasn::TopkOptions{}); }), "cuda::" + cpu_msg);
}

// check_finite = false: a bad label gives its row a NaN loss and a zero gradient on both backends;
// with check_finite (the default) both refuse it with the same message.
TEST_P(GpuLosses, BadLabelPoisonsTheLossOrIsRefusedAsOnTheCpu) {
  const auto [dt, kernel] = GetParam();
  const long n = 5, k = 7;
  const std::vector<long long> y = {1, 2, 9, 3, -100};
  const std::vector<std::int64_t> y64(y.begin(), y.end());
  const auto z = g::round_to(dt, tt::cast_vector<float>(tt::random_tensor(n * k, 9)));
  tasn::CrossEntropyOptions opt;
  opt.check_finite = false;
  const auto got = g::cross_entropy(dt, z, y, n, k, opt, {}, kernel);
  EXPECT_TRUE(std::isnan(got.loss[0])) << "a bad label must not give a finite mean loss";
  for (long j = 0; j < k; ++j) EXPECT_EQ(got.grad[2 * k + j], 0.f);
  float cpu_loss = 0;
  std::vector<float> cpu_grad(n * k);
  tasn::cpu::softmax_cross_entropy(tt::cross_entropy_args<float>(z.data(), y64.data(), n, k, opt, &cpu_loss, cpu_grad.data()));
  EXPECT_TRUE(std::isnan(cpu_loss));
  for (long j = 0; j < k; ++j) EXPECT_EQ(cpu_grad[2 * k + j], 0.f);
  // per row: NaN exactly at the bad row on both
  opt.reduction = Reduction::None;
  const auto rows = g::cross_entropy(dt, z, y, n, k, opt, {}, kernel);
  for (long i = 0; i < n; ++i) EXPECT_EQ(std::isnan(rows.loss[i]), i == 2) << i;
  opt.reduction = Reduction::Mean;
  // All non-ignored labels bad: the mean must still be NaN, not the 0 of an all-ignored batch.
  const auto all_bad = g::cross_entropy(dt, z, {9, -100, 8, -100, 7}, n, k, opt, {}, kernel);
  EXPECT_TRUE(std::isnan(all_bad.loss[0]));
  opt.check_finite = true;
  const std::string cpu_msg = tt::invalid_argument_message(
      [&] { tasn::cpu::softmax_cross_entropy(tt::cross_entropy_args<float>(z.data(), y64.data(), n, k, opt, &cpu_loss, nullptr)); });
  EXPECT_EQ(cpu_msg, "softmax_cross_entropy: labels[2] = 9 is out of range [0, 7) and is not ignore_index (-100)");
  EXPECT_EQ(tt::invalid_argument_message([&] { g::cross_entropy(dt, z, y, n, k, opt, {}, kernel); }), "cuda::" + cpu_msg);
}

// NaN inputs: the same message on both backends with check_finite; propagation without.
TEST_P(GpuLosses, NonFiniteInputsAreRefusedOrPropagateAsOnTheCpu) {
  const auto [dt, kernel] = GetParam();
  const long n = 4, k = 9;
  const float nan = std::numeric_limits<float>::quiet_NaN();
  auto zs = g::round_to(dt, tt::cast_vector<float>(tt::random_tensor(n * k, 61, -3.0, 3.0)));
  const auto zt = g::round_to(dt, tt::cast_vector<float>(tt::random_tensor(n * k, 62, -3.0, 3.0)));
  zs[2 * k + 5] = nan;
  tasn::DistillationOptions d;
  d.reduction = Reduction::None;
  std::vector<float> loss(n), gs(n * k);
  auto cpu_distill = [&] {
    tasn::cpu::distillation_loss(tt::distillation_args<float>(zs.data(), zt.data(), n, k, d, loss.data(), gs.data()));
  };
  std::string cpu_msg = tt::invalid_argument_message(cpu_distill);
  EXPECT_EQ(cpu_msg, "distillation_loss: student holds a non-finite value (nan) at flat index 23 of 36");
  EXPECT_EQ(tt::invalid_argument_message([&] { g::distillation(dt, zs, zt, n, k, d, {}, false, kernel); }), "cuda::" + cpu_msg);
  // the teacher and the upstream gradient are checked too
  std::vector<float> up(n, 1.f);
  up[3] = std::numeric_limits<float>::infinity();
  cpu_msg = tt::invalid_argument_message([&] {
    tasn::cpu::distillation_loss(tt::distillation_args<float>(zt.data(), zs.data(), n, k, d, loss.data(), gs.data()));
  });
  EXPECT_EQ(tt::invalid_argument_message([&] { g::distillation(dt, zt, zs, n, k, d, {}, false, kernel); }), "cuda::" + cpu_msg);
  EXPECT_NE(cpu_msg.find("teacher holds a non-finite value"), std::string::npos) << cpu_msg;
  cpu_msg = tt::invalid_argument_message([&] {
    tasn::cpu::distillation_loss(tt::distillation_args<float>(zt.data(), zt.data(), n, k, d, loss.data(), gs.data(), nullptr, up.data()));
  });
  EXPECT_EQ(cpu_msg, "distillation_loss: dloss holds a non-finite value (inf) at flat index 3 of 4");
  EXPECT_EQ(tt::invalid_argument_message([&] { g::distillation(dt, zt, zt, n, k, d, up, false, kernel); }), "cuda::" + cpu_msg);
  // cross-entropy logits
  const std::vector<long long> y = {0, 3, 8, -100};
  const std::vector<std::int64_t> y64(y.begin(), y.end());
  tasn::CrossEntropyOptions ce;
  ce.reduction = Reduction::None;
  cpu_msg = tt::invalid_argument_message([&] {
    tasn::cpu::softmax_cross_entropy(tt::cross_entropy_args<float>(zs.data(), y64.data(), n, k, ce, loss.data(), gs.data()));
  });
  EXPECT_EQ(cpu_msg, "softmax_cross_entropy: logits holds a non-finite value (nan) at flat index 23 of 36");
  EXPECT_EQ(tt::invalid_argument_message([&] { g::cross_entropy(dt, zs, y, n, k, ce, {}, kernel); }), "cuda::" + cpu_msg);

  // check_finite = false: NaN exactly in row 2's loss and gradient, on both
  d.check_finite = false;
  cpu_distill();
  const auto r = g::distillation(dt, zs, zt, n, k, d, {}, false, kernel);
  for (long i = 0; i < n; ++i) {
    EXPECT_EQ(std::isnan(loss[i]), i == 2) << i;
    EXPECT_EQ(std::isnan(r.loss[i]), i == 2) << i;
    for (long j = 0; j < k; ++j) {
      EXPECT_EQ(std::isnan(gs[i * k + j]), i == 2) << i << "," << j;
      EXPECT_EQ(std::isnan(r.grad[i * k + j]), i == 2) << i << "," << j;
    }
  }
  ce.check_finite = false;
  ce.reduction = Reduction::Mean;
  float cpu_mean = 0;
  tasn::cpu::softmax_cross_entropy(tt::cross_entropy_args<float>(zs.data(), y64.data(), n, k, ce, &cpu_mean, nullptr));
  EXPECT_TRUE(std::isnan(cpu_mean));
  EXPECT_TRUE(std::isnan(g::cross_entropy(dt, zs, y, n, k, ce, {}, kernel).loss[0]));
}

INSTANTIATE_TEST_SUITE_P(AllTypes, GpuLosses,
                         ::testing::Combine(::testing::Values(Dtype::F32, Dtype::F16, Dtype::BF16),
                                            ::testing::Values(Kernel::Auto, Kernel::Warp, Kernel::Block)),
                         [](const auto& p) { return g::label(std::get<0>(p.param), std::get<1>(p.param)); });

// ---- CPU = CUDA error behaviour, without a GPU: the cuda:: op on the same invalid args (host
// pointers, never dereferenced: validation throws before any device work) gives the CPU message
// with the prefix "cuda::". ----

template <class Args, class CpuOp>
void expect_same_error(const Args& args, tasn::Workspace cuda_ws, CpuOp&& cpu_op, const std::string& expected_cpu) {
  const std::string cpu_msg = tt::invalid_argument_message([&] { cpu_op(args); });
  const std::string cuda_msg = tt::invalid_argument_message([&] { g::loss_validation_only(args, cuda_ws); });
  EXPECT_EQ(cpu_msg, expected_cpu);
  EXPECT_EQ(cuda_msg, "cuda::" + cpu_msg);
}

// A big enough, aligned fake workspace: the checks before the workspace ones must fire.
tasn::Workspace big_workspace() { return {reinterpret_cast<void*>(std::uintptr_t(1) << 20), std::size_t(1) << 40}; }

TEST(CudaLossValidation, SameErrorsAsTheCpuBeforeAnyDeviceWork) {
  const std::int64_t n = 4, k = 10;
  std::vector<float> a(n * k, 0.f), b(n * 11, 0.f), g(n * k), l(n), padded(n * 20);
  std::vector<std::int64_t> y = {1, 2, 3, 0}, cnt(3);
  const auto cpu_distill = [](const tasn::DistillationArgs<float>& x) { tasn::cpu::distillation_loss(x); };
  const auto cpu_ce = [](const tasn::CrossEntropyArgs<float>& x) { tasn::cpu::softmax_cross_entropy(x); };
  const auto cpu_topk = [](const tasn::TopkArgs<float>& x) { tasn::cpu::topk_correct(x); };

  const auto d = tt::distillation_args<float>(a.data(), a.data(), n, k, tasn::DistillationOptions{}, l.data(), g.data());
  auto bd = d;  // option range
  bd.options.temperature = -1;
  expect_same_error(bd, big_workspace(), cpu_distill, "distillation_loss: temperature must be finite and > 0, got -1");
  bd = d;
  bd.options.temperature = 1e-50;
  expect_same_error(bd, big_workspace(), cpu_distill,
                    "distillation_loss: temperature must be >= 2.93874e-39 (1/temperature finite in float), got 1e-50");
  bd = d;  // shapes, strides, absent views
  bd.teacher = tasn::Tensor2<const float>(b.data(), {n, 11});
  expect_same_error(bd, big_workspace(), cpu_distill, "distillation_loss: teacher has shape (4, 11) but (N, K) = (4, 10) is required");
  bd = d;
  bd.student = tasn::Tensor2<const float>(a.data(), {0, k});
  expect_same_error(bd, big_workspace(), cpu_distill, "distillation_loss: student must have shape (N, K) with every size >= 1, got (0, 10)");
  bd = d;
  bd.dstudent = tasn::Tensor2<float>(padded.data(), {n, k}, {20, 1});
  expect_same_error(bd, big_workspace(), cpu_distill,
                    "distillation_loss: dstudent of shape (4, 10) has strides (20, 1); the operator needs it packed row-major");
  bd = d;
  bd.loss = tasn::Tensor1<float>(l.data(), {n});
  expect_same_error(bd, big_workspace(), cpu_distill, "distillation_loss: loss has shape (4) but (1) (reduction mean) = (1) is required");
  bd = d;
  bd.teacher = {};
  expect_same_error(bd, big_workspace(), cpu_distill, "distillation_loss: teacher is absent (a null view) but is required");

  const auto c = tt::cross_entropy_args<float>(a.data(), y.data(), n, k, tasn::CrossEntropyOptions{}, l.data(), g.data());
  auto bc = c;
  bc.options.grad_scale = 1e300;
  expect_same_error(bc, big_workspace(), cpu_ce,
                    "softmax_cross_entropy: grad_scale must be finite in float (|grad_scale| <= 3.40282e+38), got 1e+300");
  bc = c;
  bc.options.label_smoothing = -0.5;
  expect_same_error(bc, big_workspace(), cpu_ce, "softmax_cross_entropy: label_smoothing must be in [0, 1], got -0.5");
  bc = c;
  bc.labels = tasn::Tensor1<const std::int64_t>(y.data(), {3});
  expect_same_error(bc, big_workspace(), cpu_ce, "softmax_cross_entropy: labels has shape (3) but (N) = (4) is required");
  bc = c;
  bc.dlogits = tasn::Tensor2<float>(g.data(), {k, n});
  expect_same_error(bc, big_workspace(), cpu_ce, "softmax_cross_entropy: dlogits has shape (10, 4) but (N, K) = (4, 10) is required");

  const auto t = tt::topk_args<float>(a.data(), y.data(), n, k, 3, -100, cnt.data());
  auto bt = t;
  bt.correct = tasn::Tensor1<std::int64_t>(cnt.data(), {0});
  expect_same_error(bt, big_workspace(), cpu_topk, "topk_correct: correct must have shape (max_k) with max_k >= 1, got (0)");
  bt = t;
  bt.labels = {};
  expect_same_error(bt, big_workspace(), cpu_topk, "topk_correct: labels is absent (a null view) but is required");

  // workspaces: misaligned (the same message), too small (each backend's own size)
  alignas(256) static unsigned char host_ws[1 << 16];
  const tasn::Workspace misaligned{host_ws + 8, sizeof(host_ws) - 8};
  expect_same_error(d, misaligned, [&](const auto& x) { tasn::cpu::distillation_loss(x, misaligned); },
                    "distillation_loss: workspace must be 256-byte aligned (cudaMalloc memory is; on the host use std::aligned_alloc)");
  expect_same_error(c, misaligned, [&](const auto& x) { tasn::cpu::softmax_cross_entropy(x, misaligned); },
                    "softmax_cross_entropy: workspace must be 256-byte aligned (cudaMalloc memory is; on the host use std::aligned_alloc)");
  expect_same_error(t, misaligned, [&](const auto& x) { tasn::cpu::topk_correct(x, misaligned); },
                    "topk_correct: workspace must be 256-byte aligned (cudaMalloc memory is; on the host use std::aligned_alloc)");
  auto too_small = [](const std::string& op, std::size_t have, std::size_t need) {
    return op + ": workspace holds " + std::to_string(have) + " bytes but " + std::to_string(need) +
           " are needed (query workspace_bytes(args))";
  };
  auto ds = d;
  ds.options.reduction = Reduction::Sum;  // per-row losses on the device, value-check slots
  const std::size_t cuda_need = g::loss_workspace_bytes(ds), cpu_need = tasn::cpu::workspace_bytes(ds);
  ASSERT_GT(cuda_need, 0u);
  EXPECT_EQ(tt::invalid_argument_message([&] { g::loss_validation_only(ds, {host_ws, cuda_need - 1}); }),
            too_small("cuda::distillation_loss", cuda_need - 1, cuda_need));
  EXPECT_EQ(tt::invalid_argument_message([&] { tasn::cpu::distillation_loss(ds, {host_ws, cpu_need - 1}); }),
            too_small("distillation_loss", cpu_need - 1, cpu_need));
  EXPECT_EQ(tt::invalid_argument_message([&] { g::loss_validation_only(c, {nullptr, 0}); }),
            too_small("cuda::softmax_cross_entropy", 0, g::loss_workspace_bytes(c)));
  EXPECT_EQ(tt::invalid_argument_message([&] { g::loss_validation_only(t, {nullptr, 0}); }),
            too_small("cuda::topk_correct", 0, g::loss_workspace_bytes(t)));
  // the CUDA workspace: value-check slots only with check_finite; per-row losses only for Sum/Mean
  // with a loss
  auto unchecked = t;
  unchecked.options.check_finite = false;
  EXPECT_EQ(g::loss_workspace_bytes(unchecked), 0u);
  auto none = d;
  none.options.reduction = Reduction::None;
  none.loss = tasn::Tensor1<float>(l.data(), {n});
  none.options.check_finite = false;
  EXPECT_EQ(g::loss_workspace_bytes(none), 0u);
  EXPECT_LT(g::loss_workspace_bytes(none), g::loss_workspace_bytes(ds));
}

}  // namespace
