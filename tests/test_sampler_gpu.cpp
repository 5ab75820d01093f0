// CUDA attention maps, marginals, grids and sampling against the CPU path, every image dtype; the
// restructured kernels (one-launch tap lists, chunked marginals) against CPU constructions; and the
// CUDA operators' argument checks against the CPU operators' messages (these need no device).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <memory>
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
using tasn::Tensor1;
using tasn::Tensor2;
using tasn::Tensor3;
using tasn::Tensor4;

class GpuSampler : public ::testing::TestWithParam<Dtype> {
 protected:
  void SetUp() override {
    std::string reason;
    if (!g::device_available(&reason)) GTEST_SKIP() << reason;
  }
};

// ---- the CPU operators on host vectors (float) ----

std::vector<float> cpu_structure_map(const std::vector<float>& m, long N, long C, long h, long w, bool distinct) {
  std::vector<float> out(N * h * w);
  tasn::StructureMapArgs<float> a{{m.data(), {N, C, h, w}}, {out.data(), {N, h, w}}, {}};
  a.options.distinct = distinct;
  tasn::cpu::structure_map(a);
  return out;
}

std::vector<float> cpu_detail_map(const std::vector<float>& m, long N, long C, long h, long w, std::uint64_t seed,
                                  std::vector<std::int64_t>* chosen) {
  std::vector<float> out(N * h * w);
  chosen->assign(N, 0);
  tasn::DetailMapArgs<float> a;
  a.m = {m.data(), {N, C, h, w}};
  a.out = {out.data(), {N, h, w}};
  a.chosen = {chosen->data(), {N}};
  a.options.seed = seed;
  tasn::cpu::detail_map(a);
  return out;
}

std::vector<float> cpu_upsample(const std::vector<float>& in, long N, long h, long w, long H, long W, bool squared) {
  std::vector<float> out(N * H * W);
  tasn::UpsampleArgs<float> a{{in.data(), {N, h, w}}, {out.data(), {N, H, W}}, {}};
  a.options.squared = squared;
  tasn::cpu::upsample_bilinear(a);
  return out;
}

g::Marginals cpu_marginals(const std::vector<float>& map, long N, long h, long w, long Hs, long Ws,
                           bool check_finite = true) {
  g::Marginals r{std::vector<float>(N * Hs), std::vector<float>(N * Ws), std::vector<unsigned char>(N)};
  tasn::MarginalsArgs<float> a{{map.data(), {N, h, w}}, {r.my.data(), {N, Hs}}, {r.mx.data(), {N, Ws}},
                               {r.fallback.data(), {N}}, {}};
  a.options.check_finite = check_finite;
  tasn::cpu::attention_marginals(a);
  return r;
}

g::SepGrid cpu_grid(const std::vector<float>& my, const std::vector<float>& mx, long N, long Hs, long Ws, long Ho,
                    long Wo, const tasn::GridOptions& opt) {
  g::SepGrid r{std::vector<float>(N * Ho), std::vector<float>(N * Wo)};
  tasn::cpu::sampling_grid(tasn::GridArgs<float>{
      {my.data(), {N, Hs}}, {mx.data(), {N, Ws}}, {r.gy.data(), {N, Ho}}, {r.gx.data(), {N, Wo}}, opt});
  return r;
}

std::vector<float> cpu_sample_separable(const std::vector<float>& img, long N, long C, long Hi, long Wi,
                                        const std::vector<float>& gy, const std::vector<float>& gx, long Ho, long Wo,
                                        bool check_finite = true) {
  std::vector<float> out(N * C * Ho * Wo);
  tasn::SampleSeparableArgs<float> a{{img.data(), {N, C, Hi, Wi}}, {gy.data(), {N, Ho}}, {gx.data(), {N, Wo}},
                                     {out.data(), {N, C, Ho, Wo}}, {}};
  a.options.check_finite = check_finite;
  tasn::cpu::sample_separable(a);
  return out;
}

std::vector<float> cpu_separable_backward(const std::vector<float>& dout, long N, long C, long Hi, long Wi,
                                          const std::vector<float>& gy, const std::vector<float>& gx, long Ho,
                                          long Wo) {
  std::vector<float> dimg(N * C * Hi * Wi);
  tasn::cpu::sample_separable_backward(tasn::SampleSeparableBackwardArgs<float>{
      {dout.data(), {N, C, Ho, Wo}}, {gy.data(), {N, Ho}}, {gx.data(), {N, Wo}}, {dimg.data(), {N, C, Hi, Wi}}, {}});
  return dimg;
}

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
  auto ref = cpu_structure_map(m, N, C, h, w, true);
  expect_within(g::attention_map(dt, m, N, C, h, w, 0, true, {}, 0, nullptr), ref, Dtype::F32,
                tol::structure_map_pre(m, N, C, p), "structure (distinct)");
  std::vector<std::int64_t> chosen_cpu;
  for (unsigned long long seed : {0ull, 7ull, 123456789ull}) {
    std::vector<long long> chosen_gpu;
    const auto d = g::attention_map(dt, m, N, C, h, w, 1, false, {}, seed, &chosen_gpu);
    ref = cpu_detail_map(m, N, C, h, w, seed, &chosen_cpu);
    EXPECT_EQ(std::vector<long long>(chosen_cpu.begin(), chosen_cpu.end()), chosen_gpu) << "seed " << seed;
    expect_within(d, ref, Dtype::F32, std::vector<double>(ref.size(), 0.0), "detail map");  // a copy: exact
  }
  // check_finite = false: an out-of-range channel gives a NaN map and chosen = -1 (the CPU as well)
  std::vector<long long> chosen;
  const auto bad = g::attention_map(dt, m, N, C, h, w, 1, false, {1, 2, 99, 4, 5}, 0, &chosen, false);
  EXPECT_EQ(chosen[2], -1);
  EXPECT_TRUE(std::isnan(bad[2 * p]));
  // check_finite = true: refused with the CPU's message
  const std::string msg =
      tt::invalid_argument_message([&] { g::attention_map(dt, m, N, C, h, w, 1, false, {1, 2, 99, 4, 5}, 0, &chosen); });
  EXPECT_EQ(msg, "cuda::detail_map: channels[2] = 99 is out of range [0, 64)");
}

// Marginals on shapes that exercise the chunked kernel: rows / columns not a multiple of the 32 of
// a block, the other axis longer than one tile of 512 resize taps, no upsampling (the direct path),
// and a sample without mass (fallback).
TEST_P(GpuSampler, MarginalsMatchCpuOnEveryShape) {
  if (GetParam() != Dtype::F32) GTEST_SKIP() << "maps and marginals are float for every image dtype";
  struct Shape {
    long N, h, w, Hs, Ws;
  };
  for (const Shape& s : {Shape{3, 7, 300, 37, 1100}, Shape{2, 600, 9, 1030, 33}, Shape{3, 40, 50, 40, 50},
                         Shape{1, 1, 1, 5, 3}}) {
    SCOPED_TRACE(::testing::Message() << "map " << s.h << "x" << s.w << " -> " << s.Hs << "x" << s.Ws);
    auto map = tt::cast_vector<float>(tt::random_tensor(s.N * s.h * s.w, 93, -0.2, 1.0));
    for (long i = 0; i < s.h * s.w; ++i) map[(s.N - 1) * s.h * s.w + i] = -1.f;  // the last sample falls back
    const auto ref = cpu_marginals(map, s.N, s.h, s.w, s.Hs, s.Ws);
    const auto got = g::marginals(map, s.N, s.h, s.w, s.Hs, s.Ws);
    const auto mp = tol::marginals_pre(map, s.N, s.h, s.w, s.Hs, s.Ws, false);
    expect_within(got.my, ref.my, Dtype::F32, mp.my, "my");
    expect_within(got.mx, ref.mx, Dtype::F32, mp.mx, "mx");
    EXPECT_EQ(got.fallback, ref.fallback);
    // the maxima are order-free and the upsampled values are the CPU's: fused == materialised
    const auto up = g::upsample(map, s.N, s.h, s.w, s.Hs, s.Ws, false);
    const auto got2 = g::marginals(up, s.N, s.Hs, s.Ws, s.Hs, s.Ws);
    EXPECT_EQ(got.my, got2.my);
    EXPECT_EQ(got.mx, got2.mx);
    EXPECT_EQ(got.my, g::marginals(map, s.N, s.h, s.w, s.Hs, s.Ws).my) << "not bit-identical run to run";
  }
}

TEST_P(GpuSampler, MarginalsAndGridMatchCpu) {
  if (GetParam() != Dtype::F32) GTEST_SKIP() << "maps and grids are float for every image dtype";
  const long N = 4, h = 28, w = 28, Hs = 512, Ws = 448;
  auto map = tt::cast_vector<float>(tt::random_tensor(N * h * w, 91, -0.1, 1.0));
  for (long i = 0; i < h * w; ++i) map[3 * h * w + i] = 0.f;  // sample 3 falls back
  const auto cm = cpu_marginals(map, N, h, w, Hs, Ws);
  const auto gm = g::marginals(map, N, h, w, Hs, Ws);
  const auto mp = tol::marginals_pre(map, N, h, w, Hs, Ws, false);
  expect_within(gm.my, cm.my, Dtype::F32, mp.my, "my");
  expect_within(gm.mx, cm.mx, Dtype::F32, mp.mx, "mx");
  EXPECT_EQ(gm.fallback, cm.fallback);
  // fused == materialised on the device as well
  const auto up = g::upsample(map, N, h, w, Hs, Ws, false);
  const auto gm2 = g::marginals(up, N, Hs, Ws, Hs, Ws);
  EXPECT_EQ(gm.my, gm2.my);
  EXPECT_EQ(gm.mx, gm2.mx);
  for (auto mode : {tasn::GridMode::Exact, tasn::GridMode::Official}) {
    const tasn::GridOptions opt = tt::gpu_cases::grid_options(mode);
    const long Ho = tt::gpu_cases::kGridHo, Wo = tt::gpu_cases::kGridWo;
    const auto cg = cpu_grid(cm.my, cm.mx, N, Hs, Ws, Ho, Wo, opt);
    const auto gg = g::sampling_grid(cm.my, cm.mx, N, Hs, Ws, Ho, Wo, opt);
    const auto gp = tol::grid_pre(cm.my, cm.mx, N, Hs, Ws, opt, cg.gy, cg.gx);
    expect_within(gg.gy, cg.gy, Dtype::F32, gp.gy, "gy");
    expect_within(gg.gx, cg.gx, Dtype::F32, gp.gx, "gx");
  }
}

// The serial construction the tap lists replace (the pre-restructuring kernel, one thread per
// sample): for each source index, the outputs that read it in ascending order and their weights.
void serial_tap_lists(const std::vector<float>& g, long N, long O, long S, std::vector<int>& off,
                      std::vector<int>& outs, std::vector<float>& wts) {
  off.assign(N * (S + 1), 0);
  outs.assign(N * 2 * O, -1);
  wts.assign(N * 2 * O, 0.f);
  for (long n = 0; n < N; ++n) {
    int* o_ = off.data() + n * (S + 1);
    for (long o = 0; o < O; ++o) {
      const auto t = tasn::sampler::taps_of<float>(g[n * O + o], S);
      if (tasn::sampler::tap_in(t.i0, S)) ++o_[t.i0 + 1];
      if (tasn::sampler::tap_in(t.i0 + 1, S)) ++o_[t.i0 + 2];
    }
    for (long s = 0; s < S; ++s) o_[s + 1] += o_[s];
    std::vector<int> cur(o_, o_ + S);
    for (long o = 0; o < O; ++o) {
      const auto t = tasn::sampler::taps_of<float>(g[n * O + o], S);
      if (tasn::sampler::tap_in(t.i0, S)) {
        outs[n * 2 * O + cur[t.i0]] = static_cast<int>(o);
        wts[n * 2 * O + cur[t.i0]++] = t.w0;
      }
      if (tasn::sampler::tap_in(t.i0 + 1, S)) {
        outs[n * 2 * O + cur[t.i0 + 1]] = static_cast<int>(o);
        wts[n * 2 * O + cur[t.i0 + 1]++] = t.w1;
      }
    }
  }
}

// Grids that stress the deterministic fill: non-monotone, many outputs on one pixel (long lists
// across warps and 256-output chunks), out of range, NaN, and more outputs than inputs.
TEST_P(GpuSampler, TapListsMatchSerialConstruction) {
  if (GetParam() != Dtype::F32) GTEST_SKIP() << "grids are float for every image dtype";
  const long N = 3, Ho = 700, Wo = 333, Hi = 97, Wi = 1500;
  auto gy = tt::cast_vector<float>(tt::random_tensor(N * Ho, 121, -1.2, 1.2));
  auto gx = tt::cast_vector<float>(tt::random_tensor(N * Wo, 122, -1.0, 1.0));
  for (long o = 0; o < Ho; ++o) gy[Ho + o] = o % 3 == 0 ? 0.25f : gy[Ho + o];  // sample 1: a crowded pixel
  for (long o = 0; o < Wo; ++o) gx[2 * Wo + o] = -1.f + 2.f * float(o) / float(Wo - 1);  // monotone
  gy[2 * Ho + 5] = std::numeric_limits<float>::quiet_NaN();
  gx[7] = 1e30f;
  const auto got = g::tap_lists(gy, gx, N, Ho, Wo, Hi, Wi);
  std::vector<int> off, outs;
  std::vector<float> wts;
  serial_tap_lists(gy, N, Ho, Hi, off, outs, wts);
  EXPECT_EQ(got.y_offsets, off);
  for (long n = 0; n < N; ++n)
    for (long e = 0; e < off[n * (Hi + 1) + Hi]; ++e) {
      ASSERT_EQ(got.y_outputs[n * 2 * Ho + e], outs[n * 2 * Ho + e]) << "y list entry " << e << " of sample " << n;
      const float a = got.y_weights[n * 2 * Ho + e], b = wts[n * 2 * Ho + e];
      ASSERT_TRUE(a == b || (std::isnan(a) && std::isnan(b))) << "y weight " << e << " of sample " << n;
    }
  serial_tap_lists(gx, N, Wo, Wi, off, outs, wts);
  EXPECT_EQ(got.x_offsets, off);
  for (long n = 0; n < N; ++n)
    for (long e = 0; e < off[n * (Wi + 1) + Wi]; ++e) {
      ASSERT_EQ(got.x_outputs[n * 2 * Wo + e], outs[n * 2 * Wo + e]) << "x list entry " << e << " of sample " << n;
      ASSERT_EQ(got.x_weights[n * 2 * Wo + e], wts[n * 2 * Wo + e]) << "x weight " << e << " of sample " << n;
    }
}

TEST_P(GpuSampler, SamplingMatchesCpu) {
  const Dtype dt = GetParam();
  const long N = 3, C = 3, Hi = 97, Wi = 131, Ho = 41, Wo = 37;
  const auto img = g::round_to(dt, tt::cast_vector<float>(tt::random_tensor(N * C * Hi * Wi, 101)));
  const auto gy = tt::cast_vector<float>(tt::random_tensor(N * Ho, 102, -1.05, 1.05));
  const auto gx = tt::cast_vector<float>(tt::random_tensor(N * Wo, 103, -1.05, 1.05));
  const auto dout = g::round_to(dt, tt::cast_vector<float>(tt::random_tensor(N * C * Ho * Wo, 104)));
  const auto out = cpu_sample_separable(img, N, C, Hi, Wi, gy, gx, Ho, Wo);
  const auto dimg = cpu_separable_backward(dout, N, C, Hi, Wi, gy, gx, Ho, Wo);
  expect_within(g::sample_separable(dt, img, N, C, Hi, Wi, gy, gx, Ho, Wo), out, dt,
                tol::separable_forward_pre(img, N, C, Hi, Wi, gy, gx, Ho, Wo), "separable forward");
  const auto b1 = g::sample_separable_backward(dt, dout, N, C, Hi, Wi, gy, gx, Ho, Wo);
  const auto b2 = g::sample_separable_backward(dt, dout, N, C, Hi, Wi, gy, gx, Ho, Wo);
  EXPECT_EQ(b1, b2) << "separable backward must be bit-identical run to run";
  expect_within(b1, dimg, dt, tol::separable_backward_pre(dout, N, C, Hi, Wi, gy, gx, Ho, Wo), "separable backward");
  // many outputs per input pixel (lists longer than a warp / a chunk): still bit-identical
  const long Hb = 9, Wb = 11, Ob = 600;
  const auto gyb = tt::cast_vector<float>(tt::random_tensor(N * Ob, 106, -1.0, 1.0));
  const auto gxb = tt::cast_vector<float>(tt::random_tensor(N * Ob, 107, -1.0, 1.0));
  const auto doutb = g::round_to(dt, tt::cast_vector<float>(tt::random_tensor(N * C * Ob * Ob, 108)));
  const auto c1 = g::sample_separable_backward(dt, doutb, N, C, Hb, Wb, gyb, gxb, Ob, Ob);
  EXPECT_EQ(c1, g::sample_separable_backward(dt, doutb, N, C, Hb, Wb, gyb, gxb, Ob, Ob));
  expect_within(c1, cpu_separable_backward(doutb, N, C, Hb, Wb, gyb, gxb, Ob, Ob), dt,
                tol::separable_backward_pre(doutb, N, C, Hb, Wb, gyb, gxb, Ob, Ob), "crowded separable backward");
  // general grid
  const auto grid = tt::cast_vector<float>(tt::random_tensor(N * Ho * Wo * 2, 105, -1.1, 1.1));
  std::vector<float> out2(out.size()), dimg2(img.size()), dgrid(grid.size());
  tasn::cpu::sample_grid(tasn::SampleGridArgs<float>{
      {img.data(), {N, C, Hi, Wi}}, {grid.data(), {N, Ho, Wo, 2}}, {out2.data(), {N, C, Ho, Wo}}, {}});
  tasn::cpu::sample_grid_backward(tasn::SampleGridBackwardArgs<float>{{img.data(), {N, C, Hi, Wi}},
                                                                     {grid.data(), {N, Ho, Wo, 2}},
                                                                     {dout.data(), {N, C, Ho, Wo}},
                                                                     {dimg2.data(), {N, C, Hi, Wi}},
                                                                     {dgrid.data(), {N, Ho, Wo, 2}},
                                                                     {}});
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
  const long N = Case::N, C = Case::C, Hi = Case::Hi, Wi = Case::Wi, Ha = Case::Ha, Wa = Case::Wa, Ho = Case::Ho,
             Wo = Case::Wo;
  const auto img = g::round_to(dt, tt::cast_vector<float>(Case::image()));
  const auto att = Case::attention();  // sample 2 falls back to the identity
  for (bool squared : {false, true}) {
    SCOPED_TRACE(::testing::Message() << "squared=" << squared);
    const tasn::AttentionSampleOptions opt = Case::options(squared);
    std::vector<float> out(N * C * Ho * Wo), gy(N * Ho), gx(N * Wo);
    std::vector<unsigned char> fb(N);
    tasn::cpu::attention_sample(tasn::AttentionSampleArgs<float>{{img.data(), {N, C, Hi, Wi}},
                                                                 {att.data(), {N, Ha, Wa}},
                                                                 {out.data(), {N, C, Ho, Wo}},
                                                                 {gy.data(), {N, Ho}},
                                                                 {gx.data(), {N, Wo}},
                                                                 {fb.data(), {N}},
                                                                 opt});
    g::SepGrid grid;
    std::vector<unsigned char> gfb;
    const auto got = g::attention_sample(dt, img, N, C, Hi, Wi, att, Ha, Wa, Ho, Wo, opt, &grid, &gfb);
    EXPECT_EQ(gfb, fb);
    // Each side computes its own marginals (float upsampling, contracted differently): the grid bound
    // adds their first-order effect; the sampled image is bounded given the grid the device used.
    const long Hs = opt.marginal_h(Hi), Ws = opt.marginal_w(Wi);
    const auto cm = squared ? cpu_marginals(cpu_upsample(att, N, Ha, Wa, Hs, Ws, true), N, Hs, Ws, Hs, Ws)
                            : cpu_marginals(att, N, Ha, Wa, Hs, Ws);
    const auto mp = tol::marginals_pre(att, N, Ha, Wa, Hs, Ws, squared);
    const auto gp = tol::grid_pre(cm.my, cm.mx, N, Hs, Ws, opt.grid, gy, gx, &mp.my, &mp.mx);
    expect_within(grid.gy, gy, Dtype::F32, gp.gy, "gy");
    expect_within(grid.gx, gx, Dtype::F32, gp.gx, "gx");
    expect_within(got, out, dt, tol::separable_forward_pre(img, N, C, Hi, Wi, gy, gx, Ho, Wo, &grid.gy, &grid.gx),
                  "sampled image");
  }
}

// NaN input: with check_finite both backends refuse it with the same message (op prefix aside);
// without, NaN propagates on both (sampling) or both fall back to the uniform marginals.
TEST_P(GpuSampler, NonFiniteInputsBehaveAsOnCpu) {
  const Dtype dt = GetParam();
  const long N = 2, C = 2, Hi = 9, Wi = 7, Ho = 5, Wo = 6;
  auto img = g::round_to(dt, tt::cast_vector<float>(tt::random_tensor(N * C * Hi * Wi, 131)));
  const auto gy = tt::cast_vector<float>(tt::random_tensor(N * Ho, 132, -1.0, 1.0));
  auto gx = tt::cast_vector<float>(tt::random_tensor(N * Wo, 133, -1.0, 1.0));
  gx[Wo + 2] = std::numeric_limits<float>::quiet_NaN();  // sample 1, column 2
  const std::string cpu_msg = tt::invalid_argument_message([&] { cpu_sample_separable(img, N, C, Hi, Wi, gy, gx, Ho, Wo); });
  const std::string gpu_msg =
      tt::invalid_argument_message([&] { g::sample_separable(dt, img, N, C, Hi, Wi, gy, gx, Ho, Wo); });
  EXPECT_NE(cpu_msg.find("sample_separable: gx holds a non-finite value"), std::string::npos) << cpu_msg;
  EXPECT_EQ(gpu_msg, "cuda::" + cpu_msg);
  const auto c = cpu_sample_separable(img, N, C, Hi, Wi, gy, gx, Ho, Wo, false);
  const auto d = g::sample_separable(dt, img, N, C, Hi, Wi, gy, gx, Ho, Wo, false);
  for (long i = 0; i < static_cast<long>(c.size()); ++i) {
    const bool nan_col = i / (C * Ho * Wo) == 1 && i % Wo == 2;
    EXPECT_EQ(std::isnan(c[i]), nan_col) << i;
    EXPECT_EQ(std::isnan(d[i]), nan_col) << i;
  }
  // marginals: refused with check_finite, uniform fallback without
  const long h = 4, w = 5, Hs = 8, Ws = 10;
  auto map = tt::cast_vector<float>(tt::random_tensor(N * h * w, 134, 0.0, 1.0));
  map[h * w + 3] = std::numeric_limits<float>::infinity();
  const std::string cm = tt::invalid_argument_message([&] { cpu_marginals(map, N, h, w, Hs, Ws); });
  EXPECT_EQ(tt::invalid_argument_message([&] { g::marginals(map, N, h, w, Hs, Ws); }), "cuda::" + cm);
  const auto cr = cpu_marginals(map, N, h, w, Hs, Ws, false);
  const auto gr = g::marginals(map, N, h, w, Hs, Ws, false);
  EXPECT_EQ(cr.fallback, (std::vector<unsigned char>{0, 1}));
  EXPECT_EQ(gr.fallback, cr.fallback);
  EXPECT_EQ(gr.my[Hs], 1.f / float(Hs));
}

INSTANTIATE_TEST_SUITE_P(AllTypes, GpuSampler, ::testing::Values(Dtype::F32, Dtype::F16, Dtype::BF16),
                         [](const auto& p) { return std::string(g::dtype_name(p.param)); });

// ---- argument checks: cuda:: against cpu:: on the same args struct (no device needed) ----------

// The message of the cpu:: call and of the cuda:: call (validation only) for the same args: equal
// but for the "cuda::" prefix.
template <class Cpu, class Cuda>
void expect_same_message(Cpu&& cpu, Cuda&& cuda, const std::string& expect_in) {
  const std::string c = tt::invalid_argument_message(cpu), d = tt::invalid_argument_message(cuda);
  EXPECT_NE(c.find(expect_in), std::string::npos) << c;
  EXPECT_EQ(d, "cuda::" + c);
}

// Workspace too small: the messages agree up to the byte counts the backends need ("but N are needed").
template <class Cpu, class Cuda>
void expect_workspace_refused(Cpu&& cpu, Cuda&& cuda, const std::string& op) {
  const std::string c = tt::invalid_argument_message(cpu), d = tt::invalid_argument_message(cuda);
  const std::string head = op + ": workspace holds 8 bytes but ";
  EXPECT_EQ(c.rfind(head, 0), 0u) << c;
  EXPECT_EQ(d.rfind("cuda::" + head, 0), 0u) << d;
}

struct AlignedBuffer {
  std::unique_ptr<void, decltype(&std::free)> p{std::aligned_alloc(256, 4096), &std::free};
  tasn::Workspace ws(std::size_t bytes) const { return {p.get(), bytes}; }
};

TEST(SamplerValidation, ShapeErrorsMatchCpu) {
  std::vector<float> buf(1 << 16, 0.5f);
  float* f = buf.data();
  // structure_map: out of the wrong size
  tasn::StructureMapArgs<float> sm{{f, {2, 3, 4, 5}}, {f, {2, 4, 6}}, {}};
  expect_same_message([&] { tasn::cpu::structure_map(sm); }, [&] { g::sampler_validation_only(sm, {}); },
                      "structure_map: out has shape (2, 4, 6) but (N, h, w) = (2, 4, 5) is required");
  // detail_map: channels of the wrong length
  std::vector<std::int64_t> ch(8, 0);
  tasn::DetailMapArgs<float> dm;
  dm.m = {f, {2, 3, 4, 5}};
  dm.channels = {ch.data(), {3}};
  dm.out = {f, {2, 4, 5}};
  expect_same_message([&] { tasn::cpu::detail_map(dm); }, [&] { g::sampler_validation_only(dm, {}); },
                      "detail_map: channels has shape (3)");
  // upsample: absent output
  tasn::UpsampleArgs<float> up{{f, {2, 4, 5}}, {}, {}};
  expect_same_message([&] { tasn::cpu::upsample_bilinear(up); }, [&] { g::sampler_validation_only(up, {}); },
                      "upsample_bilinear: out is absent");
  // marginals: a non-contiguous my
  tasn::MarginalsArgs<float> ma{{f, {2, 4, 5}}, {f, {2, 8}, {16, 2}}, {f, {2, 10}}, {}, {}};
  expect_same_message([&] { tasn::cpu::attention_marginals(ma); }, [&] { g::sampler_validation_only(ma, {}); },
                      "attention_marginals: my of shape (2, 8) has strides (16, 2)");
  // sampling_grid: gx of another batch size
  tasn::GridArgs<float> ga{{f, {2, 8}}, {f, {2, 10}}, {f, {2, 6}}, {f, {3, 7}}, {}};
  expect_same_message([&] { tasn::cpu::sampling_grid(ga); }, [&] { g::sampler_validation_only(ga, {}); },
                      "sampling_grid: gx has shape (3, 7)");
  // separable forward / backward: out / gy inconsistent
  tasn::SampleSeparableArgs<float> sa{{f, {2, 3, 9, 7}}, {f, {2, 5}}, {f, {2, 6}}, {f, {2, 3, 6, 5}}, {}};
  expect_same_message([&] { tasn::cpu::sample_separable(sa); }, [&] { g::sampler_validation_only(sa, {}); },
                      "sample_separable: out has shape (2, 3, 6, 5)");
  tasn::SampleSeparableBackwardArgs<float> sb{{f, {2, 3, 5, 6}}, {f, {2, 4}}, {f, {2, 6}}, {f, {2, 3, 9, 7}}, {}};
  expect_same_message([&] { tasn::cpu::sample_separable_backward(sb); },
                      [&] { g::sampler_validation_only(sb, {}); }, "sample_separable_backward: gy has shape (2, 4)");
  // general grid: last size not 2; backward: dgrid without img
  tasn::SampleGridArgs<float> gr{{f, {2, 3, 9, 7}}, {f, {2, 5, 6, 3}}, {f, {2, 3, 5, 6}}, {}};
  expect_same_message([&] { tasn::cpu::sample_grid(gr); }, [&] { g::sampler_validation_only(gr, {}); },
                      "sample_grid: grid has shape (2, 5, 6, 3)");
  tasn::SampleGridBackwardArgs<float> gb{{}, {f, {2, 5, 6, 2}}, {f, {2, 3, 5, 6}}, {}, {f, {2, 5, 6, 2}}, {}};
  expect_same_message([&] { tasn::cpu::sample_grid_backward(gb); }, [&] { g::sampler_validation_only(gb, {}); },
                      "sample_grid_backward: img is absent");
  // attention_sample: a zero-sized image, then a gy of the wrong length
  tasn::AttentionSampleArgs<float> as{{f, {2, 3, 0, 7}}, {f, {2, 4, 4}}, {f, {2, 3, 5, 6}}, {}, {}, {}, {}};
  expect_same_message([&] { tasn::cpu::attention_sample(as); }, [&] { g::sampler_validation_only(as, {}); },
                      "attention_sample: img must have shape (N, C, Hi, Wi)");
  as.img = {f, {2, 3, 9, 7}};
  as.gy = {f, {2, 6}};
  expect_same_message([&] { tasn::cpu::attention_sample(as); }, [&] { g::sampler_validation_only(as, {}); },
                      "attention_sample: gy has shape (2, 6)");
  // workspace_bytes runs the same checks
  EXPECT_EQ(tt::invalid_argument_message([&] { g::sampler_workspace_bytes(as); }),
            "cuda::" + tt::invalid_argument_message([&] { tasn::cpu::workspace_bytes(as); }));
}

TEST(SamplerValidation, OptionErrorsMatchCpu) {
  std::vector<float> buf(1 << 16, 0.5f);
  float* f = buf.data();
  tasn::GridArgs<float> ga{{f, {2, 8}}, {f, {2, 10}}, {f, {2, 6}}, {f, {2, 7}}, {}};
  ga.options.dense = -1.0;
  expect_same_message([&] { tasn::cpu::sampling_grid(ga); }, [&] { g::sampler_validation_only(ga, {}); },
                      "sampling_grid: dense must be finite and > 0, got -1");
  ga.options.dense = 4.0;
  ga.options.iters = -2;
  expect_same_message([&] { tasn::cpu::sampling_grid(ga); }, [&] { g::sampler_validation_only(ga, {}); },
                      "sampling_grid: iters must be >= 0, got -2");
  tasn::AttentionSampleArgs<float> as{{f, {2, 3, 9, 7}}, {f, {2, 4, 4}}, {f, {2, 3, 5, 6}}, {}, {}, {}, {}};
  as.options.upsample_w = -5;
  expect_same_message([&] { tasn::cpu::attention_sample(as); }, [&] { g::sampler_validation_only(as, {}); },
                      "attention_sample: upsample size must be >= 0 (0: the image size), got (0, -5)");
  as.options.upsample_w = 0;
  as.options.grid.dense = std::numeric_limits<double>::infinity();
  expect_same_message([&] { tasn::cpu::attention_sample(as); }, [&] { g::sampler_validation_only(as, {}); },
                      "attention_sample: dense must be finite and > 0, got inf");
}

TEST(SamplerValidation, WorkspaceTooSmallOrMisalignedIsRefused) {
  std::vector<float> buf(1 << 16, 0.5f);
  float* f = buf.data();
  const AlignedBuffer wsb;
  tasn::SampleSeparableBackwardArgs<float> sb{{f, {2, 3, 5, 6}}, {f, {2, 5}}, {f, {2, 6}}, {f, {2, 3, 9, 7}}, {}};
  expect_workspace_refused([&] { tasn::cpu::sample_separable_backward(sb, wsb.ws(8)); },
                           [&] { g::sampler_validation_only(sb, wsb.ws(8)); }, "sample_separable_backward");
  tasn::AttentionSampleArgs<float> as{{f, {2, 3, 9, 7}}, {f, {2, 4, 4}}, {f, {2, 3, 5, 6}}, {}, {}, {}, {}};
  expect_workspace_refused([&] { tasn::cpu::attention_sample(as, wsb.ws(8)); },
                           [&] { g::sampler_validation_only(as, wsb.ws(8)); }, "attention_sample");
  tasn::GridArgs<float> ga{{f, {2, 8}}, {f, {2, 10}}, {f, {2, 6}}, {f, {2, 7}}, {}};
  expect_workspace_refused([&] { tasn::cpu::sampling_grid(ga, wsb.ws(8)); },
                           [&] { g::sampler_validation_only(ga, wsb.ws(8)); }, "sampling_grid");
  // CUDA: one byte short of workspace_bytes(args) is refused, a misaligned workspace too, and with
  // check_finite = false an op without scratch needs none
  const std::size_t need = g::sampler_workspace_bytes(as);
  EXPECT_GT(need, 0u);
  EXPECT_NE(tt::invalid_argument_message([&] { g::sampler_validation_only(as, {wsb.p.get(), need - 1}); })
                .find("cuda::attention_sample: workspace holds " + std::to_string(need - 1) + " bytes but " +
                      std::to_string(need) + " are needed"),
            std::string::npos);
  EXPECT_NE(tt::invalid_argument_message(
                [&] { g::sampler_validation_only(as, {static_cast<char*>(wsb.p.get()) + 8, 1 << 30}); })
                .find("cuda::attention_sample: workspace must be 256-byte aligned"),
            std::string::npos);
  tasn::SampleSeparableArgs<float> sa{{f, {2, 3, 9, 7}}, {f, {2, 5}}, {f, {2, 6}}, {f, {2, 3, 5, 6}}, {}};
  EXPECT_GT(g::sampler_workspace_bytes(sa), 0u);  // the value-check slots
  sa.options.check_finite = false;
  EXPECT_EQ(g::sampler_workspace_bytes(sa), 0u);
  // the one layout of attention_sample: the grid is carved only where gy / gx are not given
  std::vector<float> gy(2 * 5), gx(2 * 6);
  const std::size_t without = g::sampler_workspace_bytes(as);
  as.gy = {gy.data(), {2, 5}};
  as.gx = {gx.data(), {2, 6}};
  EXPECT_LT(g::sampler_workspace_bytes(as), without);
}

// CUDA-only limits are refused with a message naming them.
TEST(SamplerValidation, CudaLimitsAreStated) {
  std::vector<float> buf(1 << 16, 0.5f);
  float* f = buf.data();
  const AlignedBuffer wsb;
  // tap lists: an image axis beyond the shared-memory cursors
  tasn::SampleSeparableBackwardArgs<float> sb{{f, {1, 1, 2, 2}}, {f, {1, 2}}, {f, {1, 2}}, {f, {1, 1, 1, 20000}}, {}};
  EXPECT_NE(tt::invalid_argument_message([&] { g::sampler_validation_only(sb, wsb.ws(4096)); })
                .find("pixels per axis the tap lists hold in shared memory"),
            std::string::npos);
  // grid kernel: Hs + Ws beyond its shared-memory scratch
  tasn::GridArgs<float> ga{{f, {1, 2000}}, {f, {1, 1000}}, {f, {1, 6}}, {f, {1, 7}}, {}};
  EXPECT_NE(tt::invalid_argument_message([&] { g::sampler_validation_only(ga, wsb.ws(4096)); })
                .find("cuda::sampling_grid: Hs + Ws = 3000 exceeds the 2560 marginal entries"),
            std::string::npos);
}

}  // namespace
