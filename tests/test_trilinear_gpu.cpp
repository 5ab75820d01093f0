// CUDA trilinear attention and row-softmax kernels against the CPU path, for every storage type
// and kernel variant. Tests that need a device skip with the reason when there is none; the
// argument-validation and workspace tests run everywhere (validation happens before any CUDA call).
#include <gtest/gtest.h>

#include <cmath>
#include <ostream>
#include <tuple>
#include <vector>

#include "gpu/gpu_runners.h"
#include "support/gpu_tolerance.h"
#include "support/reference_trilinear.h"
#include "support/test_support.h"
#include "tasn/core/softmax_cpu.h"
#include "tasn/trilinear_attention.h"

namespace {
namespace tt = tasn::test;
namespace g = tasn::test::gpu;
namespace tol = tasn::test::tol;
using g::Dtype;
using g::Kernel;
using tasn::TrilinearShape;

// Tolerances: tests/support/gpu_tolerance.h derives each element's bound from the storage type and
// the computation (against the CPU double path on the same storage-rounded inputs);
// tests/test_gpu_tolerances.cpp replays these tests' data on the CPU and checks the bounds cover it.
template <class R>
void expect_within(const std::vector<float>& got, const std::vector<R>& ref, Dtype dt, const std::vector<double>& pre,
                   const char* what) {
  const auto r = tol::check_bound(got, ref, dt, pre);
  EXPECT_TRUE(r.ok) << what << ": " << r.message();
}

class Gpu : public ::testing::TestWithParam<std::tuple<Dtype, Kernel>> {
 protected:
  void SetUp() override {
    std::string reason;
    if (!g::device_available(&reason)) GTEST_SKIP() << reason;
  }
};

TEST_P(Gpu, SoftmaxRowsMatchCpu) {
  const auto [dt, kernel] = GetParam();
  for (long len : {1L, 7L, 32L, 33L, 100L, 784L, 1024L, 1025L, 5089L}) {
    if (kernel == Kernel::Warp && len > 1024) continue;
    SCOPED_TRACE(::testing::Message() << "len=" << len);
    const long rows = 37;
    const auto in = g::round_to(dt, tt::cast_vector<float>(tt::random_tensor(rows * len, len, -8.0, 8.0)));
    const auto got = g::softmax_rows(dt, in, rows, len, 7.f, kernel);
    std::vector<double> ref(in.size());
    const auto ind = tt::cast_vector<double>(in);
    tasn::cpu::softmax_rows(ind.data(), ref.data(), rows, len, 7.0, false);
    expect_within(got, ref, dt, tol::softmax_rows_pre(ind, ref, rows, len, 7.0, kernel), "softmax");
  }
}

TEST_P(Gpu, SoftmaxBackwardRowsMatchCpu) {
  const auto [dt, kernel] = GetParam();
  for (long len : {1L, 31L, 512L, 784L, 1024L, 3000L}) {
    if (kernel == Kernel::Warp && len > 1024) continue;
    SCOPED_TRACE(::testing::Message() << "len=" << len);
    const long rows = 19;
    const auto x = tt::random_tensor(rows * len, 3 * len, -2.0, 2.0);
    std::vector<double> y(x.size());
    tasn::cpu::softmax_rows(x.data(), y.data(), rows, len, 1.0, false);
    const auto yr = g::round_to(dt, tt::cast_vector<float>(y));
    const auto dy = tt::cast_vector<float>(tt::random_tensor(rows * len, 5 * len));
    const auto add = tt::cast_vector<float>(tt::random_tensor(rows * len, 7 * len, -1e-3, 1e-3));
    const auto got = g::softmax_backward_rows(dt, yr, dy, add, rows, len, 3.f, kernel);
    std::vector<double> ref(tt::cast_vector<double>(add));
    const auto yd = tt::cast_vector<double>(yr), dyd = tt::cast_vector<double>(dy);
    tasn::cpu::softmax_backward_rows(yd.data(), dyd.data(), ref.data(), rows, len, 3.0, true, false);
    expect_within(got, ref, dt, tol::softmax_backward_rows_pre(yd, nullptr, dyd, nullptr, nullptr, ref, rows, len, 3.0, kernel),
                  "softmax backward");
  }
}

TEST_P(Gpu, TrilinearMatchesCpu) {
  const auto [dt, kernel] = GetParam();
  // Forcing the warp variant would reject the P = 1600 case; auto already picks warp for the rest.
  if (kernel == Kernel::Warp) GTEST_SKIP() << "warp variant covered by auto (rows <= 1024)";
  for (const auto& s : {TrilinearShape{2, 5, 3, 3}, TrilinearShape{3, 64, 14, 14},
                        TrilinearShape{2, 512, 28, 28}, TrilinearShape{1, 40, 40, 40}}) {
    SCOPED_TRACE(::testing::Message() << "N=" << s.n << " C=" << s.c << " H=" << s.h << " W=" << s.w);
    const auto x = g::round_to(dt, tt::cast_vector<float>(tt::random_tensor(s.numel(), 61, 0.0, 3.0)));
    const auto dm = g::round_to(dt, tt::cast_vector<float>(tt::random_tensor(s.numel(), 62)));
    const auto got = g::trilinear(dt, x, dm, s, 7.0, kernel);
    const auto xd = tt::cast_vector<double>(x), dmd = tt::cast_vector<double>(dm);
    std::vector<double> m(xd.size()), saved(tasn::trilinear_saved_elems(s)), dx(xd.size());
    tasn::cpu::trilinear_attention_forward<double>(xd.data(), m.data(), saved.data(), s);
    tasn::cpu::trilinear_attention_backward<double>(xd.data(), dmd.data(), saved.data(), dx.data(), s);
    const auto pre = tol::trilinear_pre(dt, xd, dmd, s, 7.0, kernel);
    expect_within(got.m, m, dt, pre.m, "m");
    expect_within(got.dx_saved, dx, dt, pre.dx, "dx (saved)");
    expect_within(got.dx_recompute, dx, dt, pre.dx, "dx (recomputed)");
    expect_within(got.saved, saved, dt, pre.saved, "saved S|A");
    // Norm-wise as well: the elements' errors are independent, so they cannot all sit near their
    // bounds (a rounding's rms is below u |v| / sqrt(3), the statistical part's 1 / kLambda of its bound).
    std::vector<double> err(dx.size());
    for (std::size_t i = 0; i < dx.size(); ++i) err[i] = double(got.dx_saved[i]) - dx[i];
    EXPECT_LE(tol::norm2(err), 0.5 * tol::norm2(tol::allowed(dt, dx, pre.dx, tol::kGpuSafety)));
  }
}

INSTANTIATE_TEST_SUITE_P(AllTypes, Gpu,
                         ::testing::Combine(::testing::Values(Dtype::F32, Dtype::F16, Dtype::BF16),
                                            ::testing::Values(Kernel::Auto, Kernel::Warp, Kernel::Block)),
                         [](const auto& p) { return g::label(std::get<0>(p.param), std::get<1>(p.param)); });

// ---- validation and error conversion: no device needed ---------------------------------------

TEST(CudaValidation, WorkspaceSizes) {
  const TrilinearShape s{2, 3, 4, 5};  // NCP = 120, NCC = 18
  auto al = [](std::size_t b) { return (b + 255) / 256 * 256; };
  // forward with saved: B (float, NCC); without: S, A (T) too
  EXPECT_EQ(g::trilinear_workspace_bytes(Dtype::F32, s, false, true), al(18 * 4));
  EXPECT_EQ(g::trilinear_workspace_bytes(Dtype::F16, s, false, false), al(120 * 2) + al(18 * 2) + al(18 * 4));
  // backward with saved, float: dA (f32 NCC), dB (T NCC), dS (f32 NCP); dx doubles as accumulator
  EXPECT_EQ(g::trilinear_workspace_bytes(Dtype::F32, s, true, true), al(18 * 4) + al(18 * 4) + al(120 * 4));
  // half adds the float accumulator
  EXPECT_EQ(g::trilinear_workspace_bytes(Dtype::F16, s, true, true),
            al(18 * 4) + al(18 * 2) + al(120 * 4) + al(120 * 4));
  // without saved: S, A, B(=dA) recomputed into the workspace
  EXPECT_EQ(g::trilinear_workspace_bytes(Dtype::BF16, s, true, false),
            al(120 * 2) + al(18 * 2) + al(18 * 4) + al(18 * 2) + al(120 * 4) + al(120 * 4));
}

TEST(CudaValidation, RejectsBadArgumentsBeforeAnyDeviceWork) {
  const TrilinearShape s{2, 3, 4, 5};
  const std::size_t need = g::trilinear_workspace_bytes(Dtype::F32, s, false, false);
  std::string msg = tt::invalid_argument_message([&] { g::trilinear_forward_validation_only(s, 7.0, need - 1, false, false, false); });
  EXPECT_NE(msg.find("workspace holds " + std::to_string(need - 1) + " bytes but " + std::to_string(need)), std::string::npos) << msg;
  msg = tt::invalid_argument_message([&] { g::trilinear_forward_validation_only(s, 7.0, need, true, false, false); });
  EXPECT_NE(msg.find("workspace is null"), std::string::npos) << msg;
  msg = tt::invalid_argument_message([&] { g::trilinear_forward_validation_only(s, 7.0, need, false, true, false); });
  EXPECT_NE(msg.find("ctx.cublas is null"), std::string::npos) << msg;
  msg = tt::invalid_argument_message([&] { g::trilinear_forward_validation_only(s, 7.0, need, false, false, true); });
  EXPECT_NE(msg.find("x is null but must hold 120 elements"), std::string::npos) << msg;
  msg = tt::invalid_argument_message([&] { g::trilinear_forward_validation_only(s, -2.0, need, false, false, false); });
  EXPECT_NE(msg.find("beta must be finite and > 0, got -2"), std::string::npos) << msg;
  msg = tt::invalid_argument_message([&] { g::trilinear_forward_validation_only(TrilinearShape{2, 0, 4, 5}, 7.0, need, false, false, false); });
  EXPECT_NE(msg.find("cuda::trilinear_attention_forward: x must have shape"), std::string::npos) << msg;
}

TEST(CudaValidation, CudaErrorsBecomeCudaError) {
  try {
    g::raise_cuda_error();
    FAIL() << "no exception";
  } catch (const tasn::CudaError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("cudaMemcpy"), std::string::npos) << msg;
    EXPECT_NE(msg.find("gpu_runners.cu"), std::string::npos) << msg;
  }
}

}  // namespace
