// CUDA attention maps, marginals, grids and sampling against the CPU path, every image dtype.
#include <gtest/gtest.h>

#include <cmath>
#include <ostream>
#include <string>
#include <vector>

#include "gpu/gpu_runners.h"
#include "support/gpu_cases.h"
#include "support/gpu_tolerance.h"
#include "support/test_support.h"
#include "tasn/attention_sampler.h"

namespace {
namespace tt = tasn::test;
namespace g = tasn::test::gpu;
namespace tol = tasn::test::tol;
using g::Dtype;

class GpuSampler : public ::testing::TestWithParam<Dtype> {
 protected:
  void SetUp() override {
    std::string reason;
    if (!g::device_available(&reason)) GTEST_SKIP() << reason;
  }
};

// Each element's bound (tests/support/gpu_tolerance.h): the image's storage rounding (maps, marginals,
// grids and dgrid are float) plus both sides' float arithmetic (the reference is the float CPU path);
// tests/test_gpu_tolerances.cpp replays these tests' data on the CPU and checks the bounds cover it.
void expect_within(const std::vector<float>& got, const std::vector<float>& ref, Dtype out,
                   const std::vector<double>& pre, const char* what) {
  const auto r = tol::check_bound(got, ref, out, pre);
  EXPECT_TRUE(r.ok) << what << ": " << r.message();
}

TEST_P(GpuSampler, AttentionMapsMatchCpu) {
  const Dtype dt = GetParam();
  const long N = 5, C = 64, h = 28, w = 28, p = h * w;
  auto m = g::round_to(dt, tt::cast_vector<float>(tt::random_tensor(N * C * p, 81, 0.0, 2.0)));
  for (long n = 0; n < N; ++n)  // dead channels 3, 9, 10 (all zero)
    for (long c : {3L, 9L, 10L})
      for (long i = 0; i < p; ++i) m[(n * C + c) * p + i] = 0.f;
  std::vector<float> ref(N * p);
  tasn::cpu::structure_map<float>(m.data(), N, C, h, w, true, ref.data());
  expect_within(g::attention_map(dt, m, N, C, h, w, 0, true, {}, 0, nullptr), ref, Dtype::F32,
                tol::structure_map_pre(m, N, C, p), "structure (distinct)");
  std::vector<std::int64_t> chosen_cpu(N);
  for (unsigned long long seed : {0ull, 7ull, 123456789ull}) {
    std::vector<long long> chosen_gpu;
    const auto d = g::attention_map(dt, m, N, C, h, w, 1, false, {}, seed, &chosen_gpu);
    tasn::cpu::detail_map<float>(m.data(), N, C, h, w, true, nullptr, seed, ref.data(), chosen_cpu.data());
    EXPECT_EQ(std::vector<long long>(chosen_cpu.begin(), chosen_cpu.end()), chosen_gpu) << "seed " << seed;
    expect_within(d, ref, Dtype::F32, std::vector<double>(ref.size(), 0.0), "detail map");  // a copy: exact
  }
  std::vector<long long> chosen;
  const auto bad = g::attention_map(dt, m, N, C, h, w, 1, false, {1, 2, 99, 4, 5}, 0, &chosen);
  EXPECT_EQ(chosen[2], -1);
  EXPECT_TRUE(std::isnan(bad[2 * p]));
}

TEST_P(GpuSampler, MarginalsAndGridMatchCpu) {
  if (GetParam() != Dtype::F32) GTEST_SKIP() << "maps and grids are float for every image dtype";
  const long N = 4, h = 28, w = 28, Hs = 512, Ws = 448;
  auto map = tt::cast_vector<float>(tt::random_tensor(N * h * w, 91, -0.1, 1.0));
  for (long i = 0; i < h * w; ++i) map[3 * h * w + i] = 0.f;  // sample 3 falls back
  std::vector<float> my(N * Hs), mx(N * Ws);
  std::vector<unsigned char> fb(N);
  tasn::cpu::attention_marginals<float>(map.data(), N, h, w, Hs, Ws, my.data(), mx.data(), fb.data());
  const auto gm = g::marginals(map, N, h, w, Hs, Ws);
  const auto mp = tol::marginals_pre(map, N, h, w, Hs, Ws, false);
  expect_within(gm.my, my, Dtype::F32, mp.my, "my");
  expect_within(gm.mx, mx, Dtype::F32, mp.mx, "mx");
  EXPECT_EQ(gm.fallback, fb);
  // fused == materialised on the device as well
  const auto up = g::upsample(map, N, h, w, Hs, Ws, false);
  const auto gm2 = g::marginals(up, N, Hs, Ws, Hs, Ws);
  EXPECT_EQ(gm.my, gm2.my);
  EXPECT_EQ(gm.mx, gm2.mx);
  for (auto mode : {tasn::GridMode::Exact, tasn::GridMode::Official}) {
    const tasn::GridOptions opt = tt::gpu_cases::grid_options(mode);
    std::vector<float> gy(N * opt.out_h), gx(N * opt.out_w);
    tasn::cpu::sampling_grid<float>(my.data(), mx.data(), N, Hs, Ws, opt, gy.data(), gx.data());
    const auto gg = g::sampling_grid(my, mx, N, Hs, Ws, opt);
    const auto gp = tol::grid_pre(my, mx, N, Hs, Ws, opt, gy, gx);
    expect_within(gg.gy, gy, Dtype::F32, gp.gy, "gy");
    expect_within(gg.gx, gx, Dtype::F32, gp.gx, "gx");
  }
}

TEST_P(GpuSampler, SamplingMatchesCpu) {
  const Dtype dt = GetParam();
  const long N = 3, C = 3, Hi = 97, Wi = 131, Ho = 41, Wo = 37;
  const auto img = g::round_to(dt, tt::cast_vector<float>(tt::random_tensor(N * C * Hi * Wi, 101)));
  const auto gy = tt::cast_vector<float>(tt::random_tensor(N * Ho, 102, -1.05, 1.05));
  const auto gx = tt::cast_vector<float>(tt::random_tensor(N * Wo, 103, -1.05, 1.05));
  const auto dout = g::round_to(dt, tt::cast_vector<float>(tt::random_tensor(N * C * Ho * Wo, 104)));
  std::vector<float> out(N * C * Ho * Wo), dimg(img.size());
  tasn::cpu::sample_separable<float>(img.data(), N, C, Hi, Wi, gy.data(), gx.data(), Ho, Wo, out.data());
  tasn::cpu::sample_separable_backward<float>(dout.data(), N, C, Hi, Wi, gy.data(), gx.data(), Ho, Wo, dimg.data());
  expect_within(g::sample_separable(dt, img, N, C, Hi, Wi, gy, gx, Ho, Wo), out, dt,
                tol::separable_forward_pre(img, N, C, Hi, Wi, gy, gx, Ho, Wo), "separable forward");
  const auto b1 = g::sample_separable_backward(dt, dout, N, C, Hi, Wi, gy, gx, Ho, Wo);
  const auto b2 = g::sample_separable_backward(dt, dout, N, C, Hi, Wi, gy, gx, Ho, Wo);
  EXPECT_EQ(b1, b2) << "separable backward must be bit-identical run to run";
  expect_within(b1, dimg, dt, tol::separable_backward_pre(dout, N, C, Hi, Wi, gy, gx, Ho, Wo), "separable backward");
  // general grid
  const auto grid = tt::cast_vector<float>(tt::random_tensor(N * Ho * Wo * 2, 105, -1.1, 1.1));
  std::vector<float> out2(out.size()), dimg2(img.size()), dgrid(grid.size());
  tasn::cpu::sample_grid<float>(img.data(), N, C, Hi, Wi, grid.data(), Ho, Wo, out2.data());
  tasn::cpu::sample_grid_backward<float>(img.data(), grid.data(), dout.data(), N, C, Hi, Wi, Ho, Wo, dimg2.data(), dgrid.data());
  expect_within(g::sample_grid(dt, img, N, C, Hi, Wi, grid, Ho, Wo), out2, dt,
                tol::grid_forward_pre(img, N, C, Hi, Wi, grid, Ho, Wo), "grid forward");
  const auto gb = g::sample_grid_backward(dt, img, grid, dout, N, C, Hi, Wi, Ho, Wo);
  const auto gbp = tol::grid_backward_pre(img, grid, dout, N, C, Hi, Wi, Ho, Wo);  // atomics: any order
  expect_within(gb.dimg, dimg2, dt, gbp.dimg, "grid backward (image)");
  expect_within(gb.dgrid, dgrid, Dtype::F32, gbp.dgrid, "grid backward (grid)");
}

TEST_P(GpuSampler, AttentionSampleMatchesCpu) {
  const Dtype dt = GetParam();
  using Case = tt::gpu_cases::AttentionSampleCase;
  const long N = Case::N, C = Case::C, Hi = Case::Hi, Wi = Case::Wi, Ha = Case::Ha, Wa = Case::Wa;
  const auto img = g::round_to(dt, tt::cast_vector<float>(Case::image()));
  const auto att = Case::attention();  // sample 2 falls back to the identity
  for (bool squared : {false, true}) {
    SCOPED_TRACE(::testing::Message() << "squared=" << squared);
    const tasn::AttentionSampleOptions opt = Case::options(squared);
    std::vector<float> out(N * C * 64 * 80), gy(N * 64), gx(N * 80);
    std::vector<unsigned char> fb(N);
    tasn::cpu::attention_sample<float>(img.data(), N, C, Hi, Wi, att.data(), Ha, Wa, opt, out.data(), gy.data(), gx.data(), fb.data());
    g::SepGrid grid;
    std::vector<unsigned char> gfb;
    const auto got = g::attention_sample(dt, img, N, C, Hi, Wi, att, Ha, Wa, opt, &grid, &gfb);
    EXPECT_EQ(gfb, fb);
    // Each side computes its own marginals (float upsampling, contracted differently): the grid bound
    // adds their first-order effect; the sampled image is bounded given the grid the device used.
    const long Hs = opt.marginal_h(Hi), Ws = opt.marginal_w(Wi);
    std::vector<float> cmy(N * Hs), cmx(N * Ws);
    if (squared) {
      std::vector<float> up(N * Hs * Ws);
      tasn::cpu::upsample_bilinear<float>(att.data(), N, Ha, Wa, Hs, Ws, true, up.data());
      tasn::cpu::attention_marginals<float>(up.data(), N, Hs, Ws, Hs, Ws, cmy.data(), cmx.data());
    } else {
      tasn::cpu::attention_marginals<float>(att.data(), N, Ha, Wa, Hs, Ws, cmy.data(), cmx.data());
    }
    const auto mp = tol::marginals_pre(att, N, Ha, Wa, Hs, Ws, squared);
    const auto gp = tol::grid_pre(cmy, cmx, N, Hs, Ws, opt.grid, gy, gx, &mp.my, &mp.mx);
    expect_within(grid.gy, gy, Dtype::F32, gp.gy, "gy");
    expect_within(grid.gx, gx, Dtype::F32, gp.gx, "gx");
    expect_within(got, out, dt, tol::separable_forward_pre(img, N, C, Hi, Wi, gy, gx, 64, 80, &grid.gy, &grid.gx),
                  "sampled image");
  }
}

INSTANTIATE_TEST_SUITE_P(AllTypes, GpuSampler, ::testing::Values(Dtype::F32, Dtype::F16, Dtype::BF16),
                         [](const auto& p) { return std::string(g::dtype_name(p.param)); });

}  // namespace
