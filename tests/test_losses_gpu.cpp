// CUDA losses against the CPU path (double, on the same storage-rounded logits), for every
// storage type, both row-kernel variants, and K in {1, 31, 200, 1000, 5089, 8192}.
#include <gtest/gtest.h>

#include <cmath>
#include <ostream>
#include <string>
#include <tuple>
#include <vector>

#include "gpu/gpu_runners.h"
#include "support/gpu_cases.h"
#include "support/gpu_tolerance.h"
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
        tasn::cpu::distillation_loss<double>(zsd.data(), ztd.data(), n, k, opt, loss.data(), gs.data(), gtt.data(), upd.data());
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
      tasn::cpu::softmax_cross_entropy<double>(zd.data(), y64.data(), n, k, opt, loss.data(), gz.data());
      const auto pre = tol::cross_entropy_pre(zd, y, n, k, opt, kernel);
      expect_within(got.loss, loss, dt, pre.loss, "loss");
      expect_within(got.grad, gz, dt, pre.grad, "dlogits");
      EXPECT_EQ(got.status[0], 0);
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
  tasn::cpu::topk_correct<float>(zf.data(), y64.data(), n, k, max_k, -100, ref.data());
  const auto got = g::topk(dt, zf, y, n, k, max_k, -100);
  EXPECT_EQ(std::vector<long long>(ref.begin(), ref.end()), got);
}

TEST_P(GpuLosses, BadLabelIsReportedAndPoisonsTheLoss) {
  const auto [dt, kernel] = GetParam();
  const long n = 5, k = 7;
  const std::vector<long long> y = {1, 2, 9, 3, -100};
  const auto z = g::round_to(dt, tt::cast_vector<float>(tt::random_tensor(n * k, 9)));
  tasn::CrossEntropyOptions opt;
  const auto got = g::cross_entropy(dt, z, y, n, k, opt, {}, kernel);
  EXPECT_EQ(got.status[0], 3);  // row 2 + 1
  EXPECT_EQ(got.status[1], 9);
  EXPECT_TRUE(std::isnan(got.loss[0])) << "a bad label must not give a finite mean loss";
  for (long j = 0; j < k; ++j) EXPECT_EQ(got.grad[2 * k + j], 0.f);
  // All non-ignored labels bad: the mean must still be NaN, not the 0 of an all-ignored batch.
  const auto all_bad = g::cross_entropy(dt, z, {9, -100, 8, -100, 7}, n, k, opt, {}, kernel);
  EXPECT_TRUE(std::isnan(all_bad.loss[0]));
  EXPECT_EQ(all_bad.status[0], 1);
  if (dt == Dtype::F32 && kernel == Kernel::Auto) {
    const std::string msg = tt::invalid_argument_message([&] { g::cross_entropy_and_check(z, y, n, k, opt); });
    EXPECT_NE(msg.find("labels[2] = 9 is out of range [0, 7)"), std::string::npos) << msg;
  }
}

INSTANTIATE_TEST_SUITE_P(AllTypes, GpuLosses,
                         ::testing::Combine(::testing::Values(Dtype::F32, Dtype::F16, Dtype::BF16),
                                            ::testing::Values(Kernel::Auto, Kernel::Warp, Kernel::Block)),
                         [](const auto& p) { return g::label(std::get<0>(p.param), std::get<1>(p.param)); });

TEST(CudaLossValidation, RejectsBadArgumentsBeforeAnyDeviceWork) {
  tasn::DistillationOptions opt;
  opt.temperature = -1;
  EXPECT_NE(tt::invalid_argument_message([&] { g::distillation_validation_only(4, 3, opt, 1024); }).find("temperature must be finite and > 0"),
            std::string::npos);
  opt.temperature = 10;
  EXPECT_NE(tt::invalid_argument_message([&] { g::distillation_validation_only(0, 3, opt, 1024); }).find("got (0, 3)"), std::string::npos);
  const std::string m = tt::invalid_argument_message([&] { g::distillation_validation_only(100, 3, opt, 16); });
  EXPECT_NE(m.find("workspace holds 16 bytes but 512 are needed"), std::string::npos) << m;
}

}  // namespace
