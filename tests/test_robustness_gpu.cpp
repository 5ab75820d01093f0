// CUDA paths on bad input react as the CPU path does: sizes whose products overflow, negative
// sizes and options that are not finite in float are refused with the CPU's message (prefixed
// "cuda::") before any device work; NaN / infinite / huge grid coordinates, unnormalised, empty or
// huge marginals and finite-but-extreme loss options give the CPU's results. Host C++ against the
// CPU path (float, on the same storage-rounded inputs); the CUDA calls are in gpu/gpu_runners.cu.
//
// Tolerances are derived, not tuned. u = 2^-24 is float's unit roundoff; u_T the storage type's
// (0 for float, 2^-11 half, 2^-8 bfloat16): the GPU result is rounded to T once, |fl_T(x) - x| <=
// u_T |x| (+ 2^-25 for half subnormals). Inputs are rounded to T before either side sees them, so
// the rest is float arithmetic in a different order or with FMA contraction (nvcc fuses a * b + c,
// g++ may not): each fused / unfused or reordered step differs by at most one rounding on each
// side. Each bound below states its operation count; kSafety = 2 covers the constants' slack.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <tuple>
#include <vector>

#include "gpu/gpu_runners.h"
#include "support/loss_calls.h"
#include "support/test_support.h"
#include "tasn/attention_sampler.h"
#include "tasn/losses.h"
#include "tasn/trilinear_attention.h"

namespace {
namespace tt = tasn::test;
namespace g = tasn::test::gpu;
using g::Dtype;
using g::Kernel;

constexpr double kU = 0x1p-24;   // float unit roundoff
constexpr double kSafety = 2.0;  // on the arithmetic part of every bound
const float kNaN = std::nanf("");

double storage_u(Dtype d) { return d == Dtype::F32 ? 0.0 : d == Dtype::F16 ? 0x1p-11 : 0x1p-8; }
double storage_floor(Dtype d) { return d == Dtype::F16 ? 0x1p-25 : 0.0; }  // half subnormal spacing / 2

double max_abs_finite(const std::vector<float>& v) {
  double m = 0.0;
  for (float x : v)
    if (std::isfinite(x)) m = std::max(m, static_cast<double>(std::fabs(x)));
  return m;
}

// got: the GPU result (already rounded to dt); ref: the CPU float result. NaN exactly where ref is
// NaN, the same infinity where ref rounded to dt is infinite, elsewhere |got - ref| <= arith +
// u_T |ref| (+ the subnormal floor).
void expect_matches(Dtype dt, const std::vector<float>& got, const std::vector<float>& ref, double arith,
                    const std::string& what) {
  ASSERT_EQ(got.size(), ref.size()) << what;
  const auto ref_t = g::round_to(dt, ref);
  for (std::size_t i = 0; i < got.size(); ++i) {
    if (std::isnan(ref[i])) {
      ASSERT_TRUE(std::isnan(got[i])) << what << "[" << i << "] = " << got[i] << ", the CPU gives NaN";
    } else if (std::isinf(ref_t[i])) {
      ASSERT_EQ(got[i], ref_t[i]) << what << "[" << i << "]: the CPU gives " << ref[i] << " (" << ref_t[i]
                                  << " in " << g::dtype_name(dt) << ")";
    } else {
      const double bound = arith + storage_u(dt) * std::fabs(ref[i]) + storage_floor(dt);
      ASSERT_FALSE(std::isnan(got[i])) << what << "[" << i << "] is NaN, the CPU gives " << ref[i];
      ASSERT_LE(std::fabs(static_cast<double>(got[i]) - ref[i]), bound)
          << what << "[" << i << "] = " << got[i] << ", the CPU gives " << ref[i];
    }
  }
}

// ---- refusals: validation runs before any device work, so these need no GPU ---------------------

// The CUDA message is the CPU message with the operator prefixed "cuda::": the same check, the
// same order (the shared checks of tasn/*_common.h).
void expect_same_refusal(const std::string& cuda_msg, const std::string& cpu_msg, const std::string& needle) {
  EXPECT_NE(cpu_msg.find(needle), std::string::npos) << cpu_msg;
  EXPECT_EQ(cuda_msg, "cuda::" + cpu_msg);
}

TEST(CudaRobustnessValidation, SizeOverflowsAreRefusedAsOnTheCpu) {
  const long huge = 1L << 62, big = 1L << 40;
  std::vector<float> buf(64, 1.f);
  float* p = buf.data();
  // out (4, 1, 2^62, 2) overflows: was a segfault on the CPU (N * out_h)
  tasn::AttentionSampleArgs<float> as{};
  as.img = {p, {4, 1, 8, 8}};
  as.attention = {p, {4, 4, 4}};
  as.out = {p, {4, 1, huge, 2}};
  expect_same_refusal(tt::invalid_argument_message([&] { g::sampler_validation_only(as, {}); }),
                      tt::invalid_argument_message([&] { tasn::cpu::attention_sample(as); }),
                      "out of shape (4, 1, 4611686018427387904, 2) overflows 64-bit indexing");
  expect_same_refusal(tt::invalid_argument_message([&] { g::sampler_workspace_bytes(as); }),
                      tt::invalid_argument_message([&] { tasn::cpu::workspace_bytes(as); }),
                      "out of shape (4, 1, 4611686018427387904, 2) overflows 64-bit indexing");
  as.img = {p, {-1, 1, 4, 4}};
  as.attention = {p, {1, 2, 2}};
  as.out = {p, {1, 1, 2, 2}};
  expect_same_refusal(tt::invalid_argument_message([&] { g::sampler_validation_only(as, {}); }),
                      tt::invalid_argument_message([&] { tasn::cpu::attention_sample(as); }),
                      "img must have shape (N, C, Hi, Wi) with every size >= 1, got (-1, 1, 4, 4)");
  as.img = {p, {1, 1, 4, 4}};
  as.options.upsample_w = -5;
  expect_same_refusal(tt::invalid_argument_message([&] { g::sampler_validation_only(as, {}); }),
                      tt::invalid_argument_message([&] { tasn::cpu::attention_sample(as); }),
                      "upsample size must be >= 0 (0: the image size), got (0, -5)");
  tasn::GridArgs<float> ga{{p, {4, 4}}, {p, {4, 4}}, {p, {4, 2}}, {p, {4, huge}}, {}};
  expect_same_refusal(tt::invalid_argument_message([&] { g::sampler_validation_only(ga, {}); }),
                      tt::invalid_argument_message([&] { tasn::cpu::sampling_grid(ga); }),
                      "gx of shape (4, 4611686018427387904) overflows 64-bit indexing");
  // general grid (N, Ho, Wo, 2) overflows while out (N, C, Ho, Wo) fits
  tasn::SampleGridArgs<float> sg{{p, {1, 1, 1, 1}}, {p, {1, huge, 1, 2}}, {p, {1, 1, huge, 1}}, {}};
  expect_same_refusal(tt::invalid_argument_message([&] { g::sampler_validation_only(sg, {}); }),
                      tt::invalid_argument_message([&] { tasn::cpu::sample_grid(sg); }),
                      "grid of shape (1, 4611686018427387904, 1, 2) overflows 64-bit indexing");
  tasn::SampleGridBackwardArgs<float> sgb{};
  sgb.img = {p, {1, 1, 1, 1}};
  sgb.grid = {p, {1, huge, 1, 2}};
  sgb.dout = {p, {1, 1, huge, 1}};
  sgb.dimg = {p, {1, 1, 1, 1}};
  sgb.dgrid = {p, {1, huge, 1, 2}};
  expect_same_refusal(tt::invalid_argument_message([&] { g::sampler_validation_only(sgb, {}); }),
                      tt::invalid_argument_message([&] { tasn::cpu::sample_grid_backward(sgb); }),
                      "grid of shape (1, 4611686018427387904, 1, 2)");
  // separable backward: the pass-1 buffer (N, C, Ho, Wi) overflows while dout and dimg fit
  tasn::SampleSeparableBackwardArgs<float> sb{{p, {1, 1, big, 1}}, {p, {1, big}}, {p, {1, 1}}, {p, {1, 1, 1, big}}, {}};
  expect_same_refusal(tt::invalid_argument_message([&] { g::sampler_validation_only(sb, {}); }),
                      tt::invalid_argument_message([&] { tasn::cpu::sample_separable_backward(sb); }),
                      "the row buffer (N, C, Ho, Wi) of 1 x 1 x 1099511627776 x 1099511627776 elements overflows");
  expect_same_refusal(tt::invalid_argument_message([&] { g::sampler_workspace_bytes(sb); }),
                      tt::invalid_argument_message([&] { tasn::cpu::workspace_bytes(sb); }),
                      "the row buffer (N, C, Ho, Wi)");
  tasn::SampleSeparableArgs<float> ss{{p, {1, 1, -3, 4}}, {p, {1, 2}}, {p, {1, 2}}, {p, {1, 1, 2, 2}}, {}};
  expect_same_refusal(tt::invalid_argument_message([&] { g::sampler_validation_only(ss, {}); }),
                      tt::invalid_argument_message([&] { tasn::cpu::sample_separable(ss); }),
                      "img must have shape (N, C, Hi, Wi) with every size >= 1, got (1, 1, -3, 4)");
}

TEST(CudaRobustnessValidation, OptionsThatAreNotFiniteInFloatAreRefusedAsOnTheCpu) {
  std::vector<float> x(2 * 3 * 4 * 5, 0.5f), m(x.size());
  tasn::TrilinearForwardArgs<float> targs{tasn::Tensor4<const float>(x.data(), {2, 3, 4, 5}),
                                          tasn::Tensor4<float>(m.data(), {2, 3, 4, 5}), {}, {}};
  targs.options.beta = 1e39;  // inf as a float: softmax(inf * (x - max)) was NaN everywhere
  expect_same_refusal(
      tt::invalid_argument_message([&] { g::trilinear_forward_validation_only(targs, {}); }),
      tt::invalid_argument_message([&] { tasn::cpu::trilinear_attention_forward(targs); }),
      "beta must be finite in float, in (0, 3.40282e+38], got 1e+39");
  std::vector<float> z(12, 0.5f), out(12);
  tasn::DistillationOptions dopt;
  dopt.temperature = 1e-50;  // 1/T = 1e50
  auto dargs = tt::distillation_args<float>(z.data(), z.data(), 4, 3, dopt, out.data(), nullptr);
  expect_same_refusal(
      tt::invalid_argument_message([&] { g::loss_validation_only(dargs, {}); }),
      tt::invalid_argument_message([&] { tasn::cpu::distillation_loss(dargs); }),
      "temperature must be >= 2.93874e-39 (1/temperature finite in float), got 1e-50");
  dargs.options.temperature = 1e30;
  dargs.options.t_squared = true;  // T^2 = 1e60
  expect_same_refusal(
      tt::invalid_argument_message([&] { g::loss_validation_only(dargs, {}); }),
      tt::invalid_argument_message([&] { tasn::cpu::distillation_loss(dargs); }),
      "temperature must be <= 1.84467e+19 with t_squared (temperature^2 finite in float), got 1e+30");
  tasn::CrossEntropyOptions copt;
  copt.grad_scale = 1e300;
  const std::vector<std::int64_t> y = {0, 1, 2, 0};
  const auto cargs = tt::cross_entropy_args<float>(z.data(), y.data(), 4, 3, copt, out.data(), nullptr);
  expect_same_refusal(
      tt::invalid_argument_message([&] { g::loss_validation_only(cargs, {}); }),
      tt::invalid_argument_message([&] { tasn::cpu::softmax_cross_entropy(cargs); }),
      "grad_scale must be finite in float (|grad_scale| <= 3.40282e+38), got 1e+300");
}

// ---- results: need a GPU ---------------------------------------------------------------------------

class GpuRobustness : public ::testing::TestWithParam<Dtype> {
 protected:
  void SetUp() override {
    std::string reason;
    if (!g::device_available(&reason)) GTEST_SKIP() << reason;
  }
};

// Non-finite and huge grid coordinates: NaN outputs / dgrid / image-gradient contributions (at
// pixels 0 and 1 of the bad axis) for NaN and +-inf, zeros padding for +-1e30, identical NaN
// placement on both paths.
TEST_P(GpuRobustness, NonFiniteAndHugeGridCoordinatesMatchCpu) {
  const Dtype dt = GetParam();
  const long N = 2, C = 3, Hi = 9, Wi = 11, Ho = 7, Wo = 8;
  const auto img = g::round_to(dt, tt::cast_vector<float>(tt::random_tensor(N * C * Hi * Wi, 701, 0.5, 1.5)));
  const auto dout = g::round_to(dt, tt::cast_vector<float>(tt::random_tensor(N * C * Ho * Wo, 702, -1.0, 1.0)));
  auto gy = tt::cast_vector<float>(tt::random_tensor(N * Ho, 703, -1.05, 1.05));
  auto gx = tt::cast_vector<float>(tt::random_tensor(N * Wo, 704, -1.05, 1.05));
  auto gy_clean = gy, gx_clean = gx;
  gy[1] = kNaN;
  gy[4] = INFINITY;
  gy[Ho + 3] = -1e30f;
  gx[2] = -INFINITY;
  gx[5] = 1e30f;
  gx[Wo + 1] = kNaN;
  for (long i : {1L, 4L, Ho + 3}) gy_clean[i] = 0.f;
  for (long i : {2L, 5L, Wo + 1}) gx_clean[i] = 0.f;
  const double max_img = max_abs_finite(img);

  // separable forward: 4 taps, each v += pixel * (wx * wy): <= 2 roundings a tap on each side
  std::vector<float> out(N * C * Ho * Wo), dimg(img.size()), mag(img.size());
  tasn::SampleSeparableArgs<float> ss{{img.data(), {N, C, Hi, Wi}}, {gy.data(), {N, Ho}}, {gx.data(), {N, Wo}},
                                      {out.data(), {N, C, Ho, Wo}}, {}};
  ss.options.check_finite = false;  // non-finite coordinates propagate (NaN outputs), as on the device
  tasn::cpu::sample_separable(ss);
  expect_matches(dt, g::sample_separable(dt, img, N, C, Hi, Wi, gy, gx, Ho, Wo, false), out, kSafety * 8 * kU * max_img,
                 "separable forward");
  // separable backward: sums of <= Wo (pass 1) then <= Ho (pass 2) terms in the same order on both
  // paths; fused / unfused: <= 2 (Ho + Wo) u of the magnitude, the backward of |dout| (bad
  // coordinates replaced by 0: an upper bound)
  tasn::SampleSeparableBackwardArgs<float> sb{{dout.data(), {N, C, Ho, Wo}}, {gy.data(), {N, Ho}}, {gx.data(), {N, Wo}},
                                              {dimg.data(), {N, C, Hi, Wi}}, {}};
  sb.options.check_finite = false;
  tasn::cpu::sample_separable_backward(sb);
  std::vector<float> abs_dout(dout.size());
  for (std::size_t i = 0; i < dout.size(); ++i) abs_dout[i] = std::fabs(dout[i]);
  tasn::cpu::sample_separable_backward(tasn::SampleSeparableBackwardArgs<float>{
      {abs_dout.data(), {N, C, Ho, Wo}}, {gy_clean.data(), {N, Ho}}, {gx_clean.data(), {N, Wo}},
      {mag.data(), {N, C, Hi, Wi}}, {}});
  expect_matches(dt, g::sample_separable_backward(dt, dout, N, C, Hi, Wi, gy, gx, Ho, Wo, false), dimg,
                 kSafety * 2 * (Ho + Wo) * kU * max_abs_finite(mag), "separable backward");
  for (long c = 0; c < C; ++c)  // sample 0, gy[1] NaN: rows 0 and 1 of its image gradient are NaN
    for (long x = 0; x < Wi; ++x) ASSERT_TRUE(std::isnan(dimg[(c * Hi + 1) * Wi + x]));

  // general grid with bad x, y or both at some points
  auto grid = tt::cast_vector<float>(tt::random_tensor(N * Ho * Wo * 2, 705, -1.1, 1.1));
  auto grid_clean = grid;
  const std::vector<std::tuple<long, int, float>> bad = {{3, 0, kNaN},       {9, 1, INFINITY}, {17, 0, -INFINITY},
                                                         {17, 1, 0.25f},     {20, 0, 1e30f},   {31, 1, -1e30f},
                                                         {Ho * Wo + 2, 0, kNaN}, {Ho * Wo + 2, 1, kNaN}};
  for (auto [p, comp, v] : bad) {
    grid[p * 2 + comp] = v;
    grid_clean[p * 2 + comp] = 0.f;
  }
  std::vector<float> out2(out.size()), dimg2(img.size()), dgrid(grid.size()), mag2(img.size());
  tasn::SampleGridArgs<float> sg{{img.data(), {N, C, Hi, Wi}}, {grid.data(), {N, Ho, Wo, 2}}, {out2.data(), {N, C, Ho, Wo}}, {}};
  sg.options.check_finite = false;
  tasn::cpu::sample_grid(sg);
  expect_matches(dt, g::sample_grid(dt, img, N, C, Hi, Wi, grid, Ho, Wo, false), out2, kSafety * 8 * kU * max_img,
                 "grid forward");
  tasn::SampleGridBackwardArgs<float> sgb{{img.data(), {N, C, Hi, Wi}}, {grid.data(), {N, Ho, Wo, 2}},
                                          {dout.data(), {N, C, Ho, Wo}}, {dimg2.data(), {N, C, Hi, Wi}},
                                          {dgrid.data(), {N, Ho, Wo, 2}}, {}};
  sgb.options.check_finite = false;
  tasn::cpu::sample_grid_backward(sgb);
  tasn::SampleGridBackwardArgs<float> sgm{{img.data(), {N, C, Hi, Wi}}, {grid_clean.data(), {N, Ho, Wo, 2}},
                                          {abs_dout.data(), {N, C, Ho, Wo}}, {mag2.data(), {N, C, Hi, Wi}}, {}, {}};
  tasn::cpu::sample_grid_backward(sgm);
  const auto gb = g::sample_grid_backward(dt, img, grid, dout, N, C, Hi, Wi, Ho, Wo, false);
  // image gradient: float atomics in any order; a pixel sums <= Ho Wo terms: <= 2 Ho Wo u of the magnitude
  expect_matches(dt, gb.dimg, dimg2, kSafety * 2 * Ho * Wo * kU * max_abs_finite(mag2), "grid backward (image)");
  // dgrid (float on both paths): per point, C channels of d * (w * (pixel difference) + ...): <= (C + 5)
  // roundings of sum_c |d| * 4 max|img| * (size - 1) / 2 on each side
  double max_d = 0.0;
  for (long n = 0; n < N; ++n)
    for (long p = 0; p < Ho * Wo; ++p) {
      double s = 0.0;
      for (long c = 0; c < C; ++c) s += std::fabs(dout[(n * C + c) * Ho * Wo + p]);
      max_d = std::max(max_d, s);
    }
  const double dgrid_mag = max_d * 4 * max_img * 0.5 * (std::max(Hi, Wi) - 1);
  expect_matches(Dtype::F32, gb.dgrid, dgrid, kSafety * 2 * (C + 5) * kU * dgrid_mag, "grid backward (grid)");
  for (int comp = 0; comp < 2; ++comp) {  // both components NaN at a point with one bad coordinate
    ASSERT_TRUE(std::isnan(gb.dgrid[3 * 2 + comp]));
    ASSERT_EQ(gb.dgrid[20 * 2 + comp], 0.f);  // 1e30: no pixel reached, no gradient
  }
}

INSTANTIATE_TEST_SUITE_P(AllTypes, GpuRobustness, ::testing::Values(Dtype::F32, Dtype::F16, Dtype::BF16),
                         [](const auto& p) { return std::string(g::dtype_name(p.param)); });

class GpuRobustnessGrid : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string reason;
    if (!g::device_available(&reason)) GTEST_SKIP() << reason;
  }
};

// Grids on both paths come from the same float marginals through double math that differs only in
// summation order (serial vs block reductions and scan): the knot CDF differs by <= 4 S u_d C(S-1)
// (u_d = 2^-53), an output coordinate u by that over the smallest density (>= min m / max m of the
// total / S), g = 2u/(S - 1) - 1: |dg| <= 16 S^2 u_d rho with rho = max m / min m; then the
// rounding to float can differ by one float ulp (|g| < 2: 2^-23).
double grid_tol(long S, double rho) { return 0x1p-23 + kSafety * 16.0 * double(S) * double(S) * 0x1p-53 * rho; }

std::vector<float> linspace(long O) {
  std::vector<float> v(O);
  for (long i = 0; i < O; ++i) v[i] = static_cast<float>(-1.0 + 2.0 * double(i) / double(O - 1));
  return v;
}

// sampling_grid normalises the marginals it is given: scaled, huge and empty marginals give the
// CPU's grids; a marginal without positive mass gives the identity.
TEST_F(GpuRobustnessGrid, UnnormalisedZeroAndHugeMarginalsMatchCpu) {
  const long N = 6, Hs = 64, Ws = 48;
  const auto base_y = tt::cast_vector<float>(tt::random_tensor(Hs, 711, 0.05, 1.0));
  const auto base_x = tt::cast_vector<float>(tt::random_tensor(Ws, 712, 0.05, 1.0));
  const double rho = 1.0 / 0.05;
  const float scale[N] = {1.f, 3.f, 0x1p+100f, 0x1p+127f, 0.f, -1.f};  // 3: near FLT_MAX, 4: zero, 5: negative
  std::vector<float> my(N * Hs), mx(N * Ws);
  for (long n = 0; n < N; ++n) {
    for (long i = 0; i < Hs; ++i) my[n * Hs + i] = base_y[i] * scale[n];
    for (long i = 0; i < Ws; ++i) mx[n * Ws + i] = n == 5 ? base_x[i] : base_x[i] * scale[n];
  }
  for (auto mode : {tasn::GridMode::Exact, tasn::GridMode::Official})
    for (int iters : {0, 5}) {
      SCOPED_TRACE(::testing::Message() << tasn::to_string(mode) << " iters=" << iters);
      const long Ho = 40, Wo = 36;
      tasn::GridOptions opt;
      opt.mode = mode;
      opt.iters = iters;
      std::vector<float> gy(N * Ho), gx(N * Wo);
      tasn::cpu::sampling_grid(tasn::GridArgs<float>{
          {my.data(), {N, Hs}}, {mx.data(), {N, Ws}}, {gy.data(), {N, Ho}}, {gx.data(), {N, Wo}}, opt});
      const auto gg = g::sampling_grid(my, mx, N, Hs, Ws, Ho, Wo, opt);
      expect_matches(Dtype::F32, gg.gy, gy, grid_tol(Hs, rho), "gy");
      expect_matches(Dtype::F32, gg.gx, gx, grid_tol(Ws, rho), "gx");
      // scaling by a power of two commutes with every rounding: bit-identical on the device as well
      for (long n : {2L, 3L}) {
        for (long i = 0; i < Ho; ++i) ASSERT_EQ(gg.gy[n * Ho + i], gg.gy[i]) << n;
        for (long i = 0; i < Wo; ++i) ASSERT_EQ(gg.gx[n * Wo + i], gg.gx[i]) << n;
      }
      // no positive mass on an axis: both axes uniform, which in exact mode is the identity grid
      // (to the tolerance above; the official grid of uniform marginals is not the identity)
      if (mode != tasn::GridMode::Exact) continue;
      const auto ly = linspace(Ho), lx = linspace(Wo);
      for (long n : {4L, 5L}) {
        for (long i = 0; i < Ho; ++i) ASSERT_NEAR(gg.gy[n * Ho + i], ly[i], grid_tol(Hs, 1.0)) << n;
        for (long i = 0; i < Wo; ++i) ASSERT_NEAR(gg.gx[n * Wo + i], lx[i], grid_tol(Ws, 1.0)) << n;
      }
    }
}

// Non-finite marginals: refused with check_finite (the CPU here); without it both backends give that
// sample the identity grid, never NaN, and leave the other samples alone.
TEST_F(GpuRobustnessGrid, NonFiniteMarginalsGiveTheIdentityGrid) {
  const long N = 5, Hs = 20, Ws = 30;
  auto my = tt::cast_vector<float>(tt::random_tensor(N * Hs, 721, 0.05, 1.0));
  auto mx = tt::cast_vector<float>(tt::random_tensor(N * Ws, 722, 0.05, 1.0));
  my[1 * Hs + 7] = kNaN;
  mx[2 * Ws + 0] = INFINITY;
  my[3 * Hs + 19] = -INFINITY;
  const long Ho = 17, Wo = 19;
  tasn::GridOptions opt;
  std::vector<float> gy(N * Ho), gx(N * Wo);
  tasn::GridArgs<float> ga{{my.data(), {N, Hs}}, {mx.data(), {N, Ws}}, {gy.data(), {N, Ho}}, {gx.data(), {N, Wo}}, opt};
  EXPECT_NE(tt::invalid_argument_message([&] { tasn::cpu::sampling_grid(ga); })
                .find("sampling_grid: my holds a non-finite value"),
            std::string::npos);
  opt.check_finite = false;
  ga.options = opt;
  tasn::cpu::sampling_grid(ga);  // the CPU's identity grids for the bad samples
  const auto gg = g::sampling_grid(my, mx, N, Hs, Ws, Ho, Wo, opt);
  const auto ly = linspace(Ho), lx = linspace(Wo);
  for (long n = 0; n < N; ++n) {
    const std::vector<float> cy(gy.begin() + n * Ho, gy.begin() + (n + 1) * Ho),
        cx(gx.begin() + n * Wo, gx.begin() + (n + 1) * Wo);
    const bool bad = n >= 1 && n <= 3;
    for (long i = 0; i < Ho; ++i) {
      const float v = gg.gy[n * Ho + i];
      ASSERT_TRUE(std::isfinite(v)) << n << "," << i;
      ASSERT_NEAR(v, bad ? ly[i] : cy[i], grid_tol(Hs, bad ? 1.0 : 20.0)) << n << "," << i;
    }
    for (long i = 0; i < Wo; ++i) {
      const float v = gg.gx[n * Wo + i];
      ASSERT_TRUE(std::isfinite(v)) << n << "," << i;
      ASSERT_NEAR(v, bad ? lx[i] : cx[i], grid_tol(Ws, bad ? 1.0 : 20.0)) << n << "," << i;
    }
  }
}

// ---- losses with finite-but-extreme options --------------------------------------------------------
// Probabilities: the GPU forms q = expf(a - logf(s)), the CPU exp(a) / s: with K terms in s, each
// differs from the exact value by <= (K + 10) u (expf and logf within 2 ulp, |a| <= 2 here).

class GpuRobustnessLosses : public ::testing::TestWithParam<std::tuple<Dtype, Kernel>> {
 protected:
  void SetUp() override {
    std::string reason;
    if (!g::device_available(&reason)) GTEST_SKIP() << reason;
  }
};

TEST_P(GpuRobustnessLosses, ZeroProbabilityTimesMinusInfinityContributesZero) {
  const auto [dt, kernel] = GetParam();
  // T = 1e-38 (1/T = 1e38 is a float): (z - max) / T overflows float, so log q = -inf where q = 0
  const long n = 2, k = 3;
  const std::vector<float> z = {0.f, -30.f, 5.f, -30.f, 1.f, 0.f};
  for (bool kl : {false, true}) {
    SCOPED_TRACE(::testing::Message() << "kl=" << kl);
    tasn::DistillationOptions opt;
    opt.temperature = 1e-38;
    opt.kl = kl;
    opt.reduction = tasn::Reduction::None;
    const auto r = g::distillation(dt, z, z, n, k, opt, {}, true, kernel);
    for (float v : r.loss) EXPECT_EQ(v, 0.f);
    for (float v : r.grad) EXPECT_EQ(v, 0.f);
    for (float v : r.grad_teacher) EXPECT_EQ(v, 0.f);
  }
  // p = (1, 0), q = (0, 1): loss 5/T = 5e38 (inf in float), teacher gradient 0, student (q - p)/T
  const std::vector<float> zs = {0.f, 5.f}, zt = {5.f, 0.f};
  for (bool kl : {false, true}) {
    SCOPED_TRACE(::testing::Message() << "kl=" << kl);
    tasn::DistillationOptions opt;
    opt.temperature = 1e-38;
    opt.kl = kl;
    float loss = 0.f;
    std::vector<float> gs(2), gt(2);
    tasn::cpu::distillation_loss(tt::distillation_args<float>(zs.data(), zt.data(), 1, 2, opt, &loss, gs.data(), gt.data()));
    const auto r = g::distillation(dt, zs, zt, 1, 2, opt, {}, true, kernel);
    expect_matches(dt, r.loss, {loss}, 0.0, "loss");
    expect_matches(dt, r.grad, gs, 0.0, "student gradient");  // (q - p) exact: +-1, times float(1/T)
    expect_matches(dt, r.grad_teacher, gt, 0.0, "teacher gradient");
  }
}

TEST_P(GpuRobustnessLosses, GradientWeightsAndRowLossesDoNotOverflow) {
  const auto [dt, kernel] = GetParam();
  if (dt == Dtype::F16) GTEST_SKIP() << "the logits (up to 2e19, 1e9) do not fit half; bfloat16 has float's range";
  const long k = 3;
  // t_squared, T = 1e19, upstream 100: T^2 * 100 overflows float, T * 100 * (q - p) does not
  const std::vector<float> zs = g::round_to(dt, {0.f, 1e19f, 2e19f, 0.f, 0.f, 0.f});
  const std::vector<float> zt = g::round_to(dt, {2e19f, 0.f, 1e19f, 0.f, 0.f, 0.f});
  tasn::DistillationOptions opt;
  opt.temperature = 1e19;
  opt.t_squared = true;
  opt.reduction = tasn::Reduction::None;
  const std::vector<float> up = g::round_to(dt, {100.f, 100.f});  // inputs as the device sees them
  std::vector<float> loss(2), gs(6), gt(6);
  tasn::cpu::distillation_loss(tt::distillation_args<float>(zs.data(), zt.data(), 2, k, opt, loss.data(), gs.data(), gt.data(), up.data()));
  const auto r = g::distillation(dt, zs, zt, 2, k, opt, up, true, kernel);
  const double gw = 1e19 * 100.0;  // grad_factor * upstream
  // student: (q - p) differs by <= 2 (K + 10) u, then two products
  expect_matches(dt, r.grad, gs, kSafety * (2 * (k + 10) + 2) * kU * gw, "student gradient");
  // teacher: p (<= (K + 10) u) times |r - sum p r| <= 2 (max |z - m| / T + log K) = 6.2, plus the
  // double logs' float inputs (m, log s: <= 4 (1 + log K) u absolute)
  expect_matches(dt, r.grad_teacher, gt, kSafety * (6.2 * (k + 10) + 4 * (1 + std::log(3.0))) * kU * gw,
                 "teacher gradient");
  // losses: terms in double from float probabilities (<= (K + 10) u relative each), times T^2 in double
  expect_matches(dt, r.loss, loss, kSafety * 2 * (k + 10) * kU * max_abs_finite(loss), "row losses");

  // Mean with t_squared: row 0's loss (about 10 T^2 = 1e39) exceeds float, the mean over 64 rows does not
  const long n = 64;
  std::vector<float> ms(n * 2, 0.f), mt(n * 2, 0.f);
  ms[1] = 1e20f;
  mt[0] = 1e20f;
  ms = g::round_to(dt, ms);
  mt = g::round_to(dt, mt);
  tasn::DistillationOptions mo;
  mo.temperature = 1e19;
  mo.t_squared = true;
  mo.kl = true;
  float mean = 0.f;
  tasn::cpu::distillation_loss(tt::distillation_args<float>(ms.data(), mt.data(), n, 2, mo, &mean, nullptr));
  ASSERT_TRUE(std::isfinite(mean));
  const auto rm = g::distillation(dt, ms, mt, n, 2, mo, {}, false, kernel);
  // rows rounded to float on the GPU (u), their sum and the mean in double
  expect_matches(dt, rm.loss, {mean}, kSafety * (2 * (2 + 10) + 2) * kU * mean, "mean loss");

  // cross-entropy, grad_scale 1e35 with upstream 1e4: grad_scale * upstream overflows float; where
  // q = t the gradient is 0, elsewhere (q - t) * 1e39 overflows honestly to +-inf
  tasn::CrossEntropyOptions ce;
  ce.grad_scale = 1e35;
  ce.reduction = tasn::Reduction::None;
  const std::vector<float> cz = g::round_to(dt, {0.f, -1e4f, 5.f});
  const std::vector<long long> cy = {2};
  const std::vector<std::int64_t> cy64 = {2};
  const std::vector<float> cup = g::round_to(dt, {1e4f});
  float cl = 0.f;
  std::vector<float> cg(3);
  tasn::cpu::softmax_cross_entropy(tt::cross_entropy_args<float>(cz.data(), cy64.data(), 1, 3, ce, &cl, cg.data(), cup.data()));
  const auto rc = g::cross_entropy(dt, cz, cy, 1, 3, ce, cup, kernel);
  EXPECT_EQ(rc.grad[1], 0.f);
  expect_matches(dt, rc.grad, cg, kSafety * ((3 + 10) + 2) * kU * 1e39, "cross-entropy gradient");
  // Mean with grad_scale 1e30: row 0's loss 1e9 * 1e30 exceeds float, the mean does not
  std::vector<float> mz(n * 2, 0.f);
  std::vector<long long> my(n, 0);
  std::vector<std::int64_t> my64(n, 0);
  for (long i = 0; i < n; ++i) mz[i * 2 + 1] = -1e9f;
  mz = g::round_to(dt, mz);
  my[0] = my64[0] = 1;
  tasn::CrossEntropyOptions cm;
  cm.grad_scale = 1e30;
  float cmean = 0.f;
  tasn::cpu::softmax_cross_entropy(tt::cross_entropy_args<float>(mz.data(), my64.data(), n, 2, cm, &cmean, nullptr));
  ASSERT_TRUE(std::isfinite(cmean));
  const auto rcm = g::cross_entropy(dt, mz, my, n, 2, cm, {}, kernel);
  expect_matches(dt, rcm.loss, {cmean}, kSafety * 4 * kU * cmean, "cross-entropy mean loss");
}

INSTANTIATE_TEST_SUITE_P(AllTypes, GpuRobustnessLosses,
                         ::testing::Combine(::testing::Values(Dtype::F32, Dtype::F16, Dtype::BF16),
                                            ::testing::Values(Kernel::Warp, Kernel::Block)),
                         [](const auto& p) { return g::label(std::get<0>(p.param), std::get<1>(p.param)); });

}  // namespace
