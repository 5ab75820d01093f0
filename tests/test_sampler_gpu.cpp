// CUDA attention maps, marginals, grids and sampling against the CPU path, every image dtype.
#include <gtest/gtest.h>

#include <cmath>
#include <ostream>
#include <string>
#include <vector>

#include "gpu/gpu_runners.h"
#include "support/test_support.h"
#include "tasn/attention_sampler.h"

namespace {
namespace tt = tasn::test;
namespace g = tasn::test::gpu;
using g::Dtype;

class GpuSampler : public ::testing::TestWithParam<Dtype> {
 protected:
  void SetUp() override {
    std::string reason;
    if (!g::device_available(&reason)) GTEST_SKIP() << reason;
  }
};

// relative to max |ref|: images are stored in the dtype, the math is float
double tol(Dtype d) { return d == Dtype::F32 ? 1e-5 : d == Dtype::F16 ? 2e-3 : 1.6e-2; }

void expect_close(const std::vector<float>& got, const std::vector<float>& ref, double rel, const char* what) {
  const auto r = tt::compare(got, ref, rel * std::max(1e-30, tt::max_abs(tt::cast_vector<double>(ref))), 0.0);
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
  expect_close(g::attention_map(dt, m, N, C, h, w, 0, true, {}, 0, nullptr), ref, 1e-6, "structure (distinct)");
  std::vector<std::int64_t> chosen_cpu(N);
  for (unsigned long long seed : {0ull, 7ull, 123456789ull}) {
    std::vector<long long> chosen_gpu;
    const auto d = g::attention_map(dt, m, N, C, h, w, 1, false, {}, seed, &chosen_gpu);
    tasn::cpu::detail_map<float>(m.data(), N, C, h, w, true, nullptr, seed, ref.data(), chosen_cpu.data());
    EXPECT_EQ(std::vector<long long>(chosen_cpu.begin(), chosen_cpu.end()), chosen_gpu) << "seed " << seed;
    expect_close(d, ref, 0.0, "detail map");
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
  expect_close(gm.my, my, 1e-5, "my");
  expect_close(gm.mx, mx, 1e-5, "mx");
  EXPECT_EQ(gm.fallback, fb);
  // fused == materialised on the device as well
  const auto up = g::upsample(map, N, h, w, Hs, Ws, false);
  const auto gm2 = g::marginals(up, N, Hs, Ws, Hs, Ws);
  EXPECT_EQ(gm.my, gm2.my);
  EXPECT_EQ(gm.mx, gm2.mx);
  for (auto mode : {tasn::GridMode::Exact, tasn::GridMode::Official}) {
    tasn::GridOptions opt;
    opt.out_h = 224;
    opt.out_w = 200;
    opt.mode = mode;
    std::vector<float> gy(N * opt.out_h), gx(N * opt.out_w);
    tasn::cpu::sampling_grid<float>(my.data(), mx.data(), N, Hs, Ws, opt, gy.data(), gx.data());
    const auto gg = g::sampling_grid(my, mx, N, Hs, Ws, opt);
    expect_close(gg.gy, gy, 1e-5, "gy");
    expect_close(gg.gx, gx, 1e-5, "gx");
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
  expect_close(g::sample_separable(dt, img, N, C, Hi, Wi, gy, gx, Ho, Wo), out, tol(dt), "separable forward");
  const auto b1 = g::sample_separable_backward(dt, dout, N, C, Hi, Wi, gy, gx, Ho, Wo);
  const auto b2 = g::sample_separable_backward(dt, dout, N, C, Hi, Wi, gy, gx, Ho, Wo);
  EXPECT_EQ(b1, b2) << "separable backward must be bit-identical run to run";
  expect_close(b1, dimg, tol(dt), "separable backward");
  // general grid
  const auto grid = tt::cast_vector<float>(tt::random_tensor(N * Ho * Wo * 2, 105, -1.1, 1.1));
  std::vector<float> out2(out.size()), dimg2(img.size()), dgrid(grid.size());
  tasn::cpu::sample_grid<float>(img.data(), N, C, Hi, Wi, grid.data(), Ho, Wo, out2.data());
  tasn::cpu::sample_grid_backward<float>(img.data(), grid.data(), dout.data(), N, C, Hi, Wi, Ho, Wo, dimg2.data(), dgrid.data());
  expect_close(g::sample_grid(dt, img, N, C, Hi, Wi, grid, Ho, Wo), out2, tol(dt), "grid forward");
  const auto gb = g::sample_grid_backward(dt, img, grid, dout, N, C, Hi, Wi, Ho, Wo);
  expect_close(gb.dimg, dimg2, tol(dt), "grid backward (image)");
  expect_close(gb.dgrid, dgrid, 1e-4, "grid backward (grid)");
}

TEST_P(GpuSampler, AttentionSampleMatchesCpu) {
  const Dtype dt = GetParam();
  const long N = 3, C = 3, Hi = 160, Wi = 192, Ha = 14, Wa = 14;
  const auto img = g::round_to(dt, tt::cast_vector<float>(tt::random_tensor(N * C * Hi * Wi, 111, 0.0, 1.0)));
  auto att = tt::cast_vector<float>(tt::random_tensor(N * Ha * Wa, 112, 0.0, 1.0));
  for (long i = 0; i < Ha * Wa; ++i) att[2 * Ha * Wa + i] = 0.f;  // sample 2 falls back to the identity
  for (bool squared : {false, true}) {
    SCOPED_TRACE(::testing::Message() << "squared=" << squared);
    tasn::AttentionSampleOptions opt;
    opt.grid.out_h = 64;
    opt.grid.out_w = 80;
    opt.upsample_h = 128;
    opt.squared = squared;
    std::vector<float> out(N * C * 64 * 80), gy(N * 64), gx(N * 80);
    std::vector<unsigned char> fb(N);
    tasn::cpu::attention_sample<float>(img.data(), N, C, Hi, Wi, att.data(), Ha, Wa, opt, out.data(), gy.data(), gx.data(), fb.data());
    g::SepGrid grid;
    std::vector<unsigned char> gfb;
    const auto got = g::attention_sample(dt, img, N, C, Hi, Wi, att, Ha, Wa, opt, &grid, &gfb);
    EXPECT_EQ(gfb, fb);
    expect_close(grid.gy, gy, 1e-5, "gy");
    expect_close(grid.gx, gx, 1e-5, "gx");
    // grids agree to ~1e-5: a shift of 1e-5 * (W - 1) / 2 pixels on a noise image moves values by ~1e-3
    expect_close(got, out, std::max(tol(dt), 5e-3), "sampled image");
  }
}

INSTANTIATE_TEST_SUITE_P(AllTypes, GpuSampler, ::testing::Values(Dtype::F32, Dtype::F16, Dtype::BF16),
                         [](const auto& p) { return std::string(g::dtype_name(p.param)); });

}  // namespace
