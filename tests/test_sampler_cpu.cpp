// CPU attention maps, marginals, grids and bilinear sampling (SPEC 2, 3).
#include <gtest/gtest.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include "support/test_support.h"
#include "tasn/attention_sampler.h"

namespace {
namespace tt = tasn::test;
using tasn::GridMode;
using tasn::GridOptions;

// ---- independent transcriptions of SPEC 3b / 3c (written from the spec, not from the library) ----

void spec_limit(std::vector<double>& my, std::vector<double>& mx, double Ho, double Wo, double dense, int iters) {
  for (auto& v : my) v *= Ho;
  for (auto& v : mx) v *= Wo;
  const double t0y = dense * Ho / my.size(), t0x = dense * Wo / mx.size();
  for (int it = 0; it < iters; ++it) {
    const double t = std::min(*std::max_element(my.begin(), my.end()), *std::max_element(mx.begin(), mx.end()));
    const double ty = it == 0 ? std::min(t, t0y) : t, tx = it == 0 ? std::min(t, t0x) : t;
    double sy = 0, sx = 0;
    for (auto& v : my) sy += (v = std::min(v, ty));
    for (auto& v : mx) sx += (v = std::min(v, tx));
    for (auto& v : my) v += (Ho - sy) / my.size();
    for (auto& v : mx) v += (Wo - sx) / mx.size();
  }
}

// The official MXNet grid, transcribed from SPEC 3c with c[-1] = 0.
std::vector<double> spec_official(const std::vector<double>& m, int O) {
  const int S = static_cast<int>(m.size());
  std::vector<double> c(S);
  c[0] = 1.0;
  for (int i = 1; i < S; ++i) c[i] = c[i - 1] + m[i];
  const double step = c[S - 1] / O;
  std::vector<double> g(O);
  for (int i = 0; i < O; ++i) {
    const double target = i * step;
    int j = 0;
    while (j < S - 1 && c[j] < target) ++j;
    const double prev = j == 0 ? 0.0 : c[j - 1];
    const double u = j + (target - c[j]) / (c[j] - prev);
    g[i] = 2.0 * u / (S - 1) - 1.0;
  }
  return g;
}

std::vector<double> peaky(int S, std::uint64_t seed) {
  auto m = tt::random_tensor(S, seed, 0.0, 1.0);
  for (auto& v : m) v = std::pow(v, 8.0);  // a few large peaks
  const double s = std::accumulate(m.begin(), m.end(), 0.0);
  for (auto& v : m) v /= s;
  return m;
}

struct Grid {
  std::vector<double> gy, gx;
};
Grid grid_of(const std::vector<double>& my, const std::vector<double>& mx, const GridOptions& opt) {
  Grid g{std::vector<double>(opt.out_h), std::vector<double>(opt.out_w)};
  tasn::cpu::sampling_grid<double>(my.data(), mx.data(), 1, static_cast<std::int64_t>(my.size()),
                                   static_cast<std::int64_t>(mx.size()), opt, g.gy.data(), g.gx.data());
  return g;
}

TEST(SamplerGrid, UniformMarginalsGiveLinspace) {
  for (auto [S, O] : {std::pair<int, int>{512, 224}, {2, 5}, {7, 7}, {3, 1}, {100, 333}}) {
    SCOPED_TRACE(::testing::Message() << "S=" << S << " O=" << O);
    GridOptions opt;
    opt.out_h = O;
    opt.out_w = O;
    const std::vector<double> m(S, 1.0 / S);
    const Grid g = grid_of(m, m, opt);
    for (int i = 0; i < O; ++i) {
      const double lin = O == 1 ? 0.0 : -1.0 + 2.0 * i / (O - 1);
      EXPECT_NEAR(g.gy[i], lin, 1e-12);
      EXPECT_NEAR(g.gx[i], lin, 1e-12);
    }
    if (O > 1) {
      EXPECT_EQ(g.gy.front(), -1.0);
      EXPECT_EQ(g.gy.back(), 1.0);
    }
  }
}

TEST(SamplerGrid, ExactModeIsMonotoneWithPinnedEndsAndLimitedMagnification) {
  for (int trial = 0; trial < 20; ++trial) {
    const int Hs = 20 + 37 * trial, Ws = 512 - 11 * trial, Ho = 17 + 9 * trial, Wo = 224 - 5 * trial;
    GridOptions opt;
    opt.out_h = Ho;
    opt.out_w = Wo;
    opt.dense = 1.5 + trial * 0.25;
    opt.iters = trial % 6;
    const auto my = peaky(Hs, 100 + trial), mx = peaky(Ws, 200 + trial);
    const Grid g = grid_of(my, mx, opt);
    auto lmy = my, lmx = mx;
    spec_limit(lmy, lmx, Ho, Wo, opt.dense, opt.iters);
    for (auto [gv, lm, O, S] : {std::make_tuple(&g.gy, &lmy, Ho, Hs), std::make_tuple(&g.gx, &lmx, Wo, Ws)}) {
      EXPECT_EQ(gv->front(), -1.0);
      EXPECT_EQ(gv->back(), 1.0);
      // Magnification: an output step covers at least (total mass / (O-1)) / max density of input.
      double total = 0;
      for (int k = 1; k < S; ++k) total += 0.5 * ((*lm)[k - 1] + (*lm)[k]);
      const double max_m = *std::max_element(lm->begin(), lm->end());
      const double min_step = 2.0 / (S - 1) * (total / (O - 1)) / max_m;
      for (int i = 1; i < O; ++i) {
        ASSERT_GE((*gv)[i], (*gv)[i - 1]) << "not monotone at " << i;
        ASSERT_GE((*gv)[i] - (*gv)[i - 1], min_step * (1 - 1e-9)) << "magnified beyond the limit at " << i;
      }
    }
  }
}

TEST(SamplerGrid, OfficialModeMatchesTranscription) {
  for (int trial = 0; trial < 10; ++trial) {
    const int Hs = 64 + trial * 40, Ws = 48 + trial * 50, Ho = 30 + trial * 20, Wo = 25 + trial * 19;
    GridOptions opt;
    opt.out_h = Ho;
    opt.out_w = Wo;
    opt.mode = GridMode::Official;
    const auto my = peaky(Hs, 300 + trial), mx = peaky(Ws, 400 + trial);
    const Grid g = grid_of(my, mx, opt);
    auto lmy = my, lmx = mx;
    spec_limit(lmy, lmx, Ho, Wo, opt.dense, opt.iters);
    const auto ry = spec_official(lmy, Ho), rx = spec_official(lmx, Wo);
    for (int i = 0; i < Ho; ++i) ASSERT_NEAR(g.gy[i], ry[i], 1e-5) << i;
    for (int i = 0; i < Wo; ++i) ASSERT_NEAR(g.gx[i], rx[i], 1e-5) << i;
    EXPECT_LT(g.gy[0], -1.0);  // the official grid starts slightly outside [-1, 1]
  }
}

// ---- marginals ----------------------------------------------------------------------------

TEST(SamplerMarginals, FusedEqualsMaterialised) {
  const std::int64_t N = 3, h = 28, w = 21, Hs = 512, Ws = 300;
  const auto map = tt::cast_vector<float>(tt::random_tensor(N * h * w, 51, -0.2, 1.0));
  std::vector<float> up(N * Hs * Ws), my1(N * Hs), mx1(N * Ws), my2(N * Hs), mx2(N * Ws);
  tasn::cpu::upsample_bilinear<float>(map.data(), N, h, w, Hs, Ws, false, up.data());
  tasn::cpu::attention_marginals<float>(up.data(), N, Hs, Ws, Hs, Ws, my1.data(), mx1.data());
  tasn::cpu::attention_marginals<float>(map.data(), N, h, w, Hs, Ws, my2.data(), mx2.data());
  EXPECT_EQ(my1, my2);
  EXPECT_EQ(mx1, mx2);
  // normalised
  EXPECT_NEAR(std::accumulate(my2.begin(), my2.begin() + Hs, 0.0), 1.0, 1e-5);
  // upsampling with align_corners keeps the corners
  EXPECT_EQ(up[0], map[0]);
  EXPECT_EQ(up[Hs * Ws - 1], map[h * w - 1]);
}

TEST(SamplerMarginals, DegenerateMapsFallBackToUniform) {
  const std::int64_t h = 4, w = 5;
  std::vector<double> maps(3 * h * w, 0.0);                             // sample 0: all zero
  for (int i = 0; i < h * w; ++i) maps[h * w + i] = -1.0 - i;           // sample 1: negative
  for (int i = 0; i < h * w; ++i) maps[2 * h * w + i] = 1.0;            // sample 2: NaN inside
  maps[2 * h * w + 7] = std::nan("");
  std::vector<double> my(3 * h), mx(3 * w);
  std::vector<unsigned char> fb(3, 9);
  tasn::cpu::attention_marginals<double>(maps.data(), 3, h, w, h, w, my.data(), mx.data(), fb.data());
  EXPECT_EQ(fb, (std::vector<unsigned char>{1, 1, 1}));
  for (double v : my) EXPECT_EQ(v, 1.0 / h);
  for (double v : mx) EXPECT_EQ(v, 1.0 / w);
  // ... and the grid of a fallen-back sample is the identity, never NaN
  GridOptions opt;
  opt.out_h = 9;
  opt.out_w = 9;
  std::vector<double> gy(9), gx(9);
  tasn::cpu::sampling_grid<double>(my.data() + 2 * h, mx.data() + 2 * w, 1, h, w, opt, gy.data(), gx.data());
  for (int i = 0; i < 9; ++i) EXPECT_NEAR(gy[i], -1.0 + 2.0 * i / 8, 1e-12);
  // a healthy map does not fall back
  maps[2 * h * w + 7] = 3.0;
  tasn::cpu::attention_marginals<double>(maps.data() + 2 * h * w, 1, h, w, h, w, my.data(), mx.data(), fb.data());
  EXPECT_EQ(fb[0], 0);
  EXPECT_GT(my[1], my[0]);  // row 1 holds the 3.0
}

// ---- attention maps -------------------------------------------------------------------------

TEST(SamplerMaps, DistinctIgnoresRepeatedDeadChannels) {
  const std::int64_t N = 2, C = 6, h = 3, w = 3, p = h * w;
  std::vector<double> m(N * C * p, 0.0);  // channels 1, 3, 4 dead (all zero) in both samples
  for (std::int64_t n = 0; n < N; ++n)
    for (std::int64_t c : {0, 2, 5})
      for (std::int64_t i = 0; i < p; ++i) m[(n * C + c) * p + i] = 1.0 + c + 0.1 * i + n;
  std::vector<double> with(N * p), without(N * p);
  tasn::cpu::structure_map<double>(m.data(), N, C, h, w, true, with.data());
  tasn::cpu::structure_map<double>(m.data(), N, C, h, w, false, without.data());
  EXPECT_EQ(with, without);  // dead channels add 0 either way: one of them is kept
  // now dead channels hold the same constant: counted once with distinct
  for (std::int64_t n = 0; n < N; ++n)
    for (std::int64_t c : {1, 3, 4})
      for (std::int64_t i = 0; i < p; ++i) m[(n * C + c) * p + i] = 0.5;
  tasn::cpu::structure_map<double>(m.data(), N, C, h, w, true, with.data());
  tasn::cpu::structure_map<double>(m.data(), N, C, h, w, false, without.data());
  for (std::int64_t i = 0; i < N * p; ++i) EXPECT_NEAR(without[i] - with[i], 1.0, 1e-12);  // 3 x 0.5 vs 1 x 0.5
  // detail map picks among the distinct channels only: never 3 or 4
  std::vector<double> d(N * p);
  std::vector<std::int64_t> chosen(N);
  for (std::uint64_t seed = 0; seed < 50; ++seed) {
    tasn::cpu::detail_map<double>(m.data(), N, C, h, w, true, nullptr, seed, d.data(), chosen.data());
    for (auto c : chosen) EXPECT_TRUE(c == 0 || c == 1 || c == 2 || c == 5) << c;
    for (std::int64_t n = 0; n < N; ++n)
      for (std::int64_t i = 0; i < p; ++i) ASSERT_EQ(d[n * p + i], m[(n * C + chosen[n]) * p + i]);
  }
  // same seed, same channels; given indices are used as they are
  std::vector<std::int64_t> again(N);
  tasn::cpu::detail_map<double>(m.data(), N, C, h, w, true, nullptr, 49, d.data(), again.data());
  EXPECT_EQ(again, chosen);
  const std::vector<std::int64_t> given = {4, 3};
  tasn::cpu::detail_map<double>(m.data(), N, C, h, w, true, given.data(), 0, d.data(), again.data());
  EXPECT_EQ(again, given);
  // evaluation: the plain sum
  tasn::cpu::detail_map<double>(m.data(), N, C, h, w, false, nullptr, 0, d.data());
  EXPECT_EQ(d, without);
}

// ---- bilinear sampling ----------------------------------------------------------------------

TEST(SamplerSampling, MatchesPyTorchGridSample) {
  const tt::GoldenFile g(tt::golden_path("grid_sample.bin"));
  const auto& sz = g.at("sizes").data;
  const std::int64_t N = sz[0], C = sz[1], Hi = sz[2], Wi = sz[3], Ho = sz[4], Wo = sz[5];
  const auto img = tt::random_tensor(N * C * Hi * Wi, 41, -1.0, 1.0);
  const auto dout = tt::random_tensor(N * C * Ho * Wo, 43, -1.0, 1.0);
  const auto& grid = g.at("grid").data;
  std::vector<double> out(N * C * Ho * Wo), dimg(img.size()), dgrid(grid.size());
  tasn::cpu::sample_grid<double>(img.data(), N, C, Hi, Wi, grid.data(), Ho, Wo, out.data());
  tasn::cpu::sample_grid_backward<double>(img.data(), grid.data(), dout.data(), N, C, Hi, Wi, Ho, Wo,
                                          dimg.data(), dgrid.data());
  auto r = tt::compare(out, g.at("out").data, 1e-12, 1e-12);
  EXPECT_TRUE(r.ok) << "out: " << r.message();
  r = tt::compare(dimg, g.at("dimg").data, 1e-12, 1e-12);
  EXPECT_TRUE(r.ok) << "dimg: " << r.message();
  r = tt::compare(dgrid, g.at("dgrid").data, 1e-12, 1e-12);
  EXPECT_TRUE(r.ok) << "dgrid: " << r.message();
  // float path too
  const auto imgf = tt::cast_vector<float>(img), gridf = tt::cast_vector<float>(grid);
  std::vector<float> outf(out.size());
  tasn::cpu::sample_grid<float>(imgf.data(), N, C, Hi, Wi, gridf.data(), Ho, Wo, outf.data());
  r = tt::compare(outf, g.at("out").data, 2e-6, 1e-5);
  EXPECT_TRUE(r.ok) << "out (float): " << r.message();
}

TEST(SamplerSampling, SeparableEqualsGeneralAndIsDeterministic) {
  const std::int64_t N = 2, C = 3, Hi = 37, Wi = 41, Ho = 19, Wo = 23;
  const auto img = tt::cast_vector<float>(tt::random_tensor(N * C * Hi * Wi, 61));
  auto gy = tt::cast_vector<float>(tt::random_tensor(N * Ho, 62, -1.05, 1.05));
  auto gx = tt::cast_vector<float>(tt::random_tensor(N * Wo, 63, -1.05, 1.05));
  gy[0] = -1.f;
  gx[Wo - 1] = 1.f;
  std::vector<float> grid(N * Ho * Wo * 2);
  tasn::detail::separable_to_general_grid(gy.data(), gx.data(), N, Ho, Wo, grid.data());
  std::vector<float> a(N * C * Ho * Wo), b(a.size());
  tasn::cpu::sample_separable<float>(img.data(), N, C, Hi, Wi, gy.data(), gx.data(), Ho, Wo, a.data());
  tasn::cpu::sample_grid<float>(img.data(), N, C, Hi, Wi, grid.data(), Ho, Wo, b.data());
  EXPECT_EQ(a, b);
  const auto dout = tt::cast_vector<float>(tt::random_tensor(a.size(), 64));
  std::vector<float> d1(img.size()), d2(img.size()), d3(img.size());
  tasn::cpu::sample_separable_backward<float>(dout.data(), N, C, Hi, Wi, gy.data(), gx.data(), Ho, Wo, d1.data());
  tasn::cpu::sample_separable_backward<float>(dout.data(), N, C, Hi, Wi, gy.data(), gx.data(), Ho, Wo, d2.data());
  EXPECT_EQ(d1, d2) << "separable backward must be bit-identical run to run";
  tasn::cpu::sample_grid_backward<float>(img.data(), grid.data(), dout.data(), N, C, Hi, Wi, Ho, Wo, d3.data(), nullptr);
  const auto r = tt::compare(d1, d3, 1e-5, 1e-5);
  EXPECT_TRUE(r.ok) << r.message();
}

TEST(SamplerSampling, ImageGradientMatchesFiniteDifferences) {
  const std::int64_t N = 1, C = 2, Hi = 5, Wi = 6, Ho = 4, Wo = 7;
  const auto img = tt::random_tensor(N * C * Hi * Wi, 71);
  const auto gy = tt::random_tensor(N * Ho, 72, -1.1, 1.1), gx = tt::random_tensor(N * Wo, 73, -1.1, 1.1);
  const auto w = tt::random_tensor(N * C * Ho * Wo, 74);
  auto loss = [&](const std::vector<double>& im) {
    std::vector<double> out(w.size());
    tasn::cpu::sample_separable<double>(im.data(), N, C, Hi, Wi, gy.data(), gx.data(), Ho, Wo, out.data());
    return tt::weighted_sum(out, w);
  };
  std::vector<double> g(img.size());
  tasn::cpu::sample_separable_backward<double>(w.data(), N, C, Hi, Wi, gy.data(), gx.data(), Ho, Wo, g.data());
  EXPECT_LT(tt::relative_error(g, tt::numeric_gradient(loss, img, 1e-6)), 1e-8);
}

TEST(SamplerConvenience, AttentionSampleMagnifiesTheAttendedRegion) {
  // A map with one hot spot: the sampled image spends more output rows/columns on it.
  const std::int64_t N = 1, C = 1, Hi = 96, Wi = 96, Ha = 12, Wa = 12, O = 32;
  std::vector<float> att(Ha * Wa, 0.05f);
  att[5 * Wa + 8] = 1.f;
  std::vector<float> img(Hi * Wi);
  for (std::int64_t y = 0; y < Hi; ++y)
    for (std::int64_t x = 0; x < Wi; ++x) img[y * Wi + x] = static_cast<float>(x);  // value = column
  tasn::AttentionSampleOptions opt;
  opt.grid.out_h = O;
  opt.grid.out_w = O;
  std::vector<float> out(O * O), gy(O), gx(O);
  tasn::cpu::attention_sample<float>(img.data(), N, C, Hi, Wi, att.data(), Ha, Wa, opt, out.data(), gy.data(), gx.data());
  const double hot_x = 8.0 / (Wa - 1) * (Wi - 1);  // hot column in image pixels
  int near_hot = 0, near_uniform = 0;
  for (std::int64_t x = 0; x < O; ++x) {
    near_hot += std::fabs(out[x] - hot_x) < 8.0;
    near_uniform += std::fabs(x * (Wi - 1.0) / (O - 1) - hot_x) < 8.0;
  }
  EXPECT_GT(near_hot, near_uniform) << "attended columns are not magnified";
  EXPECT_EQ(gx.front(), -1.f);
  EXPECT_EQ(gx.back(), 1.f);
}

// ---- errors ---------------------------------------------------------------------------------

TEST(SamplerErrors, BadInputs) {
  std::vector<float> m(64, 1.f), g(64);
  GridOptions opt;
  opt.out_h = 0;
  EXPECT_NE(tt::invalid_argument_message([&] { tasn::cpu::sampling_grid<float>(m.data(), m.data(), 1, 4, 4, opt, g.data(), g.data()); })
                .find("output size must be >= 1, got (0, 224)"),
            std::string::npos);
  opt.out_h = 4;
  opt.out_w = 4;
  for (double dense : {0.0, -1.0, std::nan("")}) {
    opt.dense = dense;
    EXPECT_NE(tt::invalid_argument_message([&] { tasn::cpu::sampling_grid<float>(m.data(), m.data(), 1, 4, 4, opt, g.data(), g.data()); })
                  .find("dense must be finite and > 0"),
              std::string::npos);
  }
  const std::vector<std::int64_t> bad = {0, 7};
  EXPECT_NE(tt::invalid_argument_message([&] { tasn::cpu::detail_map<float>(m.data(), 2, 4, 2, 4, true, bad.data(), 0, g.data()); })
                .find("channels[1] = 7 is out of range [0, 4)"),
            std::string::npos);
  EXPECT_NE(tt::invalid_argument_message([&] { tasn::cpu::sample_separable<float>(m.data(), 1, 1, 0, 4, g.data(), g.data(), 2, 2, g.data()); })
                .find("img must have positive sizes, got (1, 1, 0, 4)"),
            std::string::npos);
  EXPECT_NE(tt::invalid_argument_message([&] { tasn::cpu::attention_marginals<float>(nullptr, 1, 4, 4, 8, 8, g.data(), g.data()); })
                .find("map is null but must hold 16 elements"),
            std::string::npos);
  m[3] = std::nanf("");
  EXPECT_NE(tt::invalid_argument_message([&] { tasn::cpu::sampling_grid<float>(m.data(), m.data(), 1, 4, 4, GridOptions{}, g.data(), g.data()); })
                .find("my holds a non-finite value"),
            std::string::npos);
}

// ---- robustness: sizes ------------------------------------------------------------------------
// Every size product an entry point forms is checked before anything is allocated or indexed:
// overflow, negative sizes and allocations the machine cannot serve all become InvalidArgument.

constexpr std::int64_t kHuge = std::int64_t(1) << 62;

TEST(SamplerSizes, AttentionSampleRefusesOverflowingOutputSize) {
  // out_h = 2^62 with N = 4: N * out_h overflows int64 (the grid buffer gy); was a segfault
  std::vector<float> img(4 * 8 * 8, 1.f), att(4 * 4 * 4, 1.f), out(16);
  tasn::AttentionSampleOptions opt;
  opt.grid.out_h = kHuge;
  opt.grid.out_w = 2;
  const std::string msg = tt::invalid_argument_message([&] {
    tasn::cpu::attention_sample<float>(img.data(), 4, 1, 8, 8, att.data(), 4, 4, opt, out.data());
  });
  EXPECT_NE(msg.find("attention_sample: "), std::string::npos) << msg;
  EXPECT_NE(msg.find("gy"), std::string::npos) << msg;
  EXPECT_NE(msg.find("4 x 4611686018427387904"), std::string::npos) << msg;
  EXPECT_NE(msg.find("overflows 64-bit indexing"), std::string::npos) << msg;
}

TEST(SamplerSizes, SamplingGridRefusesOverflowingOutputSize) {
  std::vector<float> m(4 * 4, 0.25f), g(16);
  GridOptions opt;
  opt.out_h = 2;
  opt.out_w = kHuge;  // N * out_w overflows (gx)
  const std::string msg = tt::invalid_argument_message([&] {
    tasn::cpu::sampling_grid<float>(m.data(), m.data(), 4, 4, 4, opt, g.data(), g.data());
  });
  EXPECT_NE(msg.find("sampling_grid: gx"), std::string::npos) << msg;
  EXPECT_NE(msg.find("overflows 64-bit indexing"), std::string::npos) << msg;
}

TEST(SamplerSizes, AttentionSampleRefusesNegativeSizes) {
  // were std::length_error from a std::vector of negative size
  std::vector<float> buf(64, 1.f);
  tasn::AttentionSampleOptions opt;
  opt.grid.out_h = opt.grid.out_w = 2;
  std::string msg = tt::invalid_argument_message([&] {
    tasn::cpu::attention_sample<float>(buf.data(), -1, 1, 4, 4, buf.data(), 2, 2, opt, buf.data());
  });
  EXPECT_NE(msg.find("attention_sample: "), std::string::npos) << msg;
  EXPECT_NE(msg.find("must have positive sizes, got (-1"), std::string::npos) << msg;
  msg = tt::invalid_argument_message([&] {
    tasn::cpu::attention_sample<float>(buf.data(), 1, 1, -3, 4, buf.data(), 2, 2, opt, buf.data());
  });
  EXPECT_NE(msg.find("attention_sample: img must have positive sizes, got (1, 1, -3, 4)"), std::string::npos) << msg;
  opt.upsample_h = -5;
  msg = tt::invalid_argument_message([&] {
    tasn::cpu::attention_sample<float>(buf.data(), 1, 1, 4, 4, buf.data(), 2, 2, opt, buf.data());
  });
  EXPECT_NE(msg.find("attention_sample: upsample size must be >= 0 (0: the image size), got (-5, 0)"), std::string::npos) << msg;
}

TEST(SamplerSizes, AttentionSampleTurnsFailedAllocationIntoInvalidArgument) {
#if defined(__SANITIZE_ADDRESS__)
  GTEST_SKIP() << "AddressSanitizer aborts on an allocation it cannot serve instead of throwing std::bad_alloc";
#else
  // squared: the upsampled map (N, Hs, Ws) is materialised: 2^48 floats = 1 PiB. Was std::bad_alloc.
  std::vector<float> img(1, 1.f), att(4, 1.f), out(4);
  tasn::AttentionSampleOptions opt;
  opt.grid.out_h = opt.grid.out_w = 2;
  opt.upsample_h = opt.upsample_w = std::int64_t(1) << 24;
  opt.squared = true;
  const std::string msg = tt::invalid_argument_message([&] {
    tasn::cpu::attention_sample<float>(img.data(), 1, 1, 1, 1, att.data(), 2, 2, opt, out.data());
  });
  EXPECT_NE(msg.find("attention_sample: cannot allocate the upsampled attention map"), std::string::npos) << msg;
  EXPECT_NE(msg.find("281474976710656 elements, 1125899906842624 bytes"), std::string::npos) << msg;
#endif
}

TEST(SamplerSizes, SeparableBackwardRefusesOverflowingRowBuffer) {
  // dout (1, 1, 2^40, 1) and dimg (1, 1, 1, 2^40) fit, but the pass-1 buffer (Ho x Wi) = 2^80 does not
  const std::int64_t big = std::int64_t(1) << 40;
  std::vector<float> buf(16, 1.f);
  const std::string msg = tt::invalid_argument_message([&] {
    tasn::cpu::sample_separable_backward<float>(buf.data(), 1, 1, 1, big, buf.data(), buf.data(), big, 1, buf.data());
  });
  EXPECT_NE(msg.find("sample_separable_backward: "), std::string::npos) << msg;
  EXPECT_NE(msg.find("overflows 64-bit indexing"), std::string::npos) << msg;
}

TEST(SamplerSizes, GeneralGridRefusesOverflowingGrid) {
  // out (1, 1, 2^62, 1) fits int64, the grid (1, 2^62, 1, 2) does not
  std::vector<float> buf(16, 1.f);
  std::string msg = tt::invalid_argument_message([&] {
    tasn::cpu::sample_grid<float>(buf.data(), 1, 1, 1, 1, buf.data(), kHuge, 1, buf.data());
  });
  EXPECT_NE(msg.find("sample_grid: grid"), std::string::npos) << msg;
  EXPECT_NE(msg.find("overflows 64-bit indexing"), std::string::npos) << msg;
  msg = tt::invalid_argument_message([&] {
    tasn::cpu::sample_grid_backward<float>(buf.data(), buf.data(), buf.data(), 1, 1, 1, 1, kHuge, 1, buf.data(), buf.data());
  });
  EXPECT_NE(msg.find("sample_grid_backward: grid"), std::string::npos) << msg;
}

// ---- robustness: non-finite and huge grid coordinates ------------------------------------------
// A coordinate beyond the image on either side (finite, however large) reaches no pixel: its
// output is 0 and it receives no gradient, as zeros padding says. A NaN or infinite coordinate
// gives NaN outputs, NaN dgrid (both components) and NaN image-gradient contributions, which land
// on pixels 0 and 1 of its axis.

const double kBadCoords[] = {std::numeric_limits<double>::quiet_NaN(), INFINITY, -INFINITY, 1e30, -1e30};

template <class T>
std::vector<T> linspace_grid(std::int64_t O) {
  std::vector<T> g(O);
  for (std::int64_t i = 0; i < O; ++i) g[i] = static_cast<T>(-1.0 + 2.0 * i / (O - 1));
  return g;
}

template <class T>
class SamplerNonFinite : public ::testing::Test {};
using SamplerTypes = ::testing::Types<float, double>;
TYPED_TEST_SUITE(SamplerNonFinite, SamplerTypes);

TYPED_TEST(SamplerNonFinite, SeparableForwardAndBackward) {
  using T = TypeParam;
  const std::int64_t N = 1, C = 2, Hi = 5, Wi = 6, Ho = 7, Wo = 8;
  const auto img = tt::cast_vector<T>(tt::random_tensor(N * C * Hi * Wi, 501, 0.5, 1.5));
  const auto dout = tt::cast_vector<T>(tt::random_tensor(N * C * Ho * Wo, 502, 0.5, 1.5));
  // linspace grids: every image row and column is reached
  const auto gy0 = linspace_grid<T>(Ho), gx0 = linspace_grid<T>(Wo);
  for (int axis = 0; axis < 2; ++axis)
    for (double bad : kBadCoords) {
      SCOPED_TRACE(::testing::Message() << (axis == 0 ? "gy" : "gx") << " = " << bad);
      const std::int64_t at = axis == 0 ? 3 : 4;  // the output row / column that gets the bad value
      auto gy = gy0, gx = gx0;
      (axis == 0 ? gy : gx)[at] = static_cast<T>(bad);
      std::vector<T> out(N * C * Ho * Wo), dimg(img.size());
      tasn::cpu::sample_separable<T>(img.data(), N, C, Hi, Wi, gy.data(), gx.data(), Ho, Wo, out.data());
      tasn::cpu::sample_separable_backward<T>(dout.data(), N, C, Hi, Wi, gy.data(), gx.data(), Ho, Wo, dimg.data());
      // reference: the same call on the clean grid with the affected outputs' gradient zeroed
      std::vector<T> ref(out.size()), dref(img.size());
      auto dz = dout;
      for (std::int64_t c = 0; c < C; ++c)
        for (std::int64_t i = 0; i < (axis == 0 ? Wo : Ho); ++i)
          dz[(c * Ho + (axis == 0 ? at : i)) * Wo + (axis == 0 ? i : at)] = 0;
      tasn::cpu::sample_separable<T>(img.data(), N, C, Hi, Wi, gy0.data(), gx0.data(), Ho, Wo, ref.data());
      tasn::cpu::sample_separable_backward<T>(dz.data(), N, C, Hi, Wi, gy0.data(), gx0.data(), Ho, Wo, dref.data());
      const bool finite = std::isfinite(bad);
      for (std::int64_t c = 0; c < C; ++c)
        for (std::int64_t y = 0; y < Ho; ++y)
          for (std::int64_t x = 0; x < Wo; ++x) {
            const std::int64_t i = (c * Ho + y) * Wo + x;
            if ((axis == 0 ? y : x) == at) {
              if (finite) ASSERT_EQ(out[i], T(0)) << "outside the image: zeros padding, at " << i;
              else ASSERT_TRUE(std::isnan(out[i])) << "non-finite coordinate: NaN, at " << i;
            } else {
              ASSERT_EQ(out[i], ref[i]) << "unaffected output changed at " << i;
            }
          }
      for (std::int64_t c = 0; c < C; ++c)
        for (std::int64_t y = 0; y < Hi; ++y)
          for (std::int64_t x = 0; x < Wi; ++x) {
            const std::int64_t i = (c * Hi + y) * Wi + x;
            if (!finite && (axis == 0 ? y : x) <= 1) ASSERT_TRUE(std::isnan(dimg[i])) << "NaN contribution lands on pixels 0 and 1, at " << i;
            else ASSERT_EQ(dimg[i], dref[i]) << "at " << i;
          }
    }
}

TYPED_TEST(SamplerNonFinite, GeneralGridForwardAndBackward) {
  using T = TypeParam;
  const std::int64_t N = 1, C = 2, Hi = 5, Wi = 6, Ho = 3, Wo = 4, P = Ho * Wo;
  const auto img = tt::cast_vector<T>(tt::random_tensor(N * C * Hi * Wi, 511, 0.5, 1.5));
  const auto dout = tt::cast_vector<T>(tt::random_tensor(N * C * P, 512, 0.5, 1.5));
  const auto grid0 = tt::cast_vector<T>(tt::random_tensor(N * P * 2, 513, -0.9, 0.9));
  for (int comp = 0; comp < 3; ++comp)  // x, y or both
    for (double bad : kBadCoords) {
      SCOPED_TRACE(::testing::Message() << (comp == 0 ? "x" : comp == 1 ? "y" : "x and y") << " = " << bad);
      const std::int64_t at = 5;  // the grid point that gets the bad value
      auto grid = grid0;
      if (comp != 1) grid[at * 2] = static_cast<T>(bad);
      if (comp != 0) grid[at * 2 + 1] = static_cast<T>(bad);
      std::vector<T> out(N * C * P), ref(out.size()), dimg(img.size()), dref(img.size()), dgrid(grid.size()), dgref(grid.size());
      tasn::cpu::sample_grid<T>(img.data(), N, C, Hi, Wi, grid.data(), Ho, Wo, out.data());
      tasn::cpu::sample_grid_backward<T>(img.data(), grid.data(), dout.data(), N, C, Hi, Wi, Ho, Wo, dimg.data(), dgrid.data());
      auto dz = dout;
      for (std::int64_t c = 0; c < C; ++c) dz[c * P + at] = 0;
      tasn::cpu::sample_grid<T>(img.data(), N, C, Hi, Wi, grid0.data(), Ho, Wo, ref.data());
      tasn::cpu::sample_grid_backward<T>(img.data(), grid0.data(), dz.data(), N, C, Hi, Wi, Ho, Wo, dref.data(), dgref.data());
      const bool finite = std::isfinite(bad);
      for (std::int64_t c = 0; c < C; ++c)
        for (std::int64_t i = 0; i < P; ++i) {
          if (i != at) ASSERT_EQ(out[c * P + i], ref[c * P + i]) << i;
          else if (finite) ASSERT_EQ(out[c * P + i], T(0));
          else ASSERT_TRUE(std::isnan(out[c * P + i]));
        }
      for (std::int64_t i = 0; i < P * 2; ++i) {
        if (i / 2 != at) ASSERT_EQ(dgrid[i], dgref[i]) << i;
        else if (finite) ASSERT_EQ(dgrid[i], T(0)) << "no pixel reached: no gradient, at " << i;
        else ASSERT_TRUE(std::isnan(dgrid[i])) << "both components NaN, at " << i;
      }
      // image gradient: NaN at pixels 0 and 1 of a non-finite axis, crossed with the taps of the
      // other coordinate (pixels 0 and 1 too when both are bad)
      auto taps = [&](T g, std::int64_t size, bool bad_axis) {
        std::vector<std::int64_t> t;
        if (bad_axis) return std::vector<std::int64_t>{0, 1};
        const double s = (static_cast<double>(g) + 1.0) * (size - 1) / 2.0;
        const auto i0 = static_cast<std::int64_t>(std::floor(s));
        for (auto i : {i0, i0 + 1})
          if (i >= 0 && i < size) t.push_back(i);
        return t;
      };
      std::vector<char> nan_px(Hi * Wi, 0);
      if (!finite)
        for (auto y : taps(grid[at * 2 + 1], Hi, comp != 0))
          for (auto x : taps(grid[at * 2], Wi, comp != 1)) nan_px[y * Wi + x] = 1;
      for (std::int64_t c = 0; c < C; ++c)
        for (std::int64_t i = 0; i < Hi * Wi; ++i) {
          if (nan_px[i]) ASSERT_TRUE(std::isnan(dimg[c * Hi * Wi + i])) << i;
          else ASSERT_NEAR(dimg[c * Hi * Wi + i], dref[c * Hi * Wi + i], 1e-6) << i;
        }
    }
}

// ---- robustness: sampling_grid normalises the marginals it is given ------------------------------

template <class T>
std::vector<T> positive_marginal(int S, std::uint64_t seed) {
  return tt::cast_vector<T>(tt::random_tensor(S, seed, 0.05, 1.0));
}

TEST(SamplerGridNormalisation, ScaledMarginalsGiveTheSameGrid) {
  const int Hs = 37, Ws = 53;
  for (auto mode : {GridMode::Exact, GridMode::Official})
    for (int iters : {0, 5}) {
      SCOPED_TRACE(::testing::Message() << tasn::to_string(mode) << " iters=" << iters);
      GridOptions opt;
      opt.out_h = 29;
      opt.out_w = 31;
      opt.iters = iters;
      opt.mode = mode;
      const auto my = positive_marginal<double>(Hs, 601), mx = positive_marginal<double>(Ws, 602);
      const Grid ref = grid_of(my, mx, opt);
      for (double k : {4.0, 0x1p-30, 0x1p+600}) {  // powers of two: normalisation is exact, the grid identical
        auto sy = my, sx = mx;
        for (auto& v : sy) v *= k;
        for (auto& v : sx) v *= k;
        const Grid g = grid_of(sy, sx, opt);
        EXPECT_EQ(g.gy, ref.gy) << "k = " << k;
        EXPECT_EQ(g.gx, ref.gx) << "k = " << k;
      }
      for (double k : {3.0, 1e-3, 7e250}) {
        auto sy = my, sx = mx;
        for (auto& v : sy) v *= k;
        for (auto& v : sx) v *= k;
        const Grid g = grid_of(sy, sx, opt);
        for (int i = 0; i < opt.out_h; ++i) ASSERT_NEAR(g.gy[i], ref.gy[i], 1e-12) << "k = " << k;
        for (int i = 0; i < opt.out_w; ++i) ASSERT_NEAR(g.gx[i], ref.gx[i], 1e-12) << "k = " << k;
      }
      // float: the same, from float marginals
      const auto myf = tt::cast_vector<float>(my), mxf = tt::cast_vector<float>(mx);
      std::vector<float> gy1(opt.out_h), gx1(opt.out_w), gy2(opt.out_h), gx2(opt.out_w);
      tasn::cpu::sampling_grid<float>(myf.data(), mxf.data(), 1, Hs, Ws, opt, gy1.data(), gx1.data());
      auto syf = myf, sxf = mxf;
      for (auto& v : syf) v *= 0x1p+100f;
      for (auto& v : sxf) v *= 0x1p+100f;
      tasn::cpu::sampling_grid<float>(syf.data(), sxf.data(), 1, Hs, Ws, opt, gy2.data(), gx2.data());
      EXPECT_EQ(gy1, gy2);
      EXPECT_EQ(gx1, gx2);
    }
}

TEST(SamplerGridNormalisation, MarginalsNearDblMaxGiveAFiniteGrid) {
  // iters = 0 with marginals whose sum overflows double: was a NaN grid
  const int Hs = 16, Ws = 12;
  GridOptions opt;
  opt.out_h = 9;
  opt.out_w = 11;
  opt.iters = 0;
  auto my = positive_marginal<double>(Hs, 611), mx = positive_marginal<double>(Ws, 612);
  for (auto& v : my) v = 0.5 + 0.5 * v;
  for (auto& v : mx) v = 0.5 + 0.5 * v;
  const Grid ref = grid_of(my, mx, opt);
  auto by = my, bx = mx;
  for (auto& v : by) v *= 0x1p+1023;  // each near DBL_MAX / 2..1: the plain sum overflows
  for (auto& v : bx) v *= 0x1p+1023;
  by[3] = DBL_MAX;
  const Grid g = grid_of(by, bx, opt);
  auto my3 = my;
  my3[3] = DBL_MAX / 0x1p+1023;
  const Grid ref3 = grid_of(my3, mx, opt);
  for (int i = 0; i < opt.out_h; ++i) {
    ASSERT_TRUE(std::isfinite(g.gy[i])) << i;
    ASSERT_NEAR(g.gy[i], ref3.gy[i], 1e-12) << i;
  }
  for (int i = 0; i < opt.out_w; ++i) ASSERT_NEAR(g.gx[i], ref.gx[i], 1e-12) << i;
  EXPECT_EQ(g.gy.front(), -1.0);
  EXPECT_EQ(g.gy.back(), 1.0);
}

TEST(SamplerGridNormalisation, MarginalWithoutPositiveMassGivesTheIdentity) {
  const int Hs = 10, Ws = 14, N = 3;
  GridOptions opt;
  opt.out_h = 9;
  opt.out_w = 13;
  opt.iters = 0;  // no limit iterations to spread the mass
  for (double fill : {0.0, -2.0}) {
    SCOPED_TRACE(::testing::Message() << "fill " << fill);
    // sample 0 healthy, sample 1 without mass on the row marginal only, sample 2 on both
    std::vector<double> my(N * Hs), mx(N * Ws);
    const auto hy = positive_marginal<double>(Hs, 621), hx = positive_marginal<double>(Ws, 622);
    for (int n = 0; n < N; ++n) {
      for (int i = 0; i < Hs; ++i) my[n * Hs + i] = n == 0 ? hy[i] : fill;
      for (int i = 0; i < Ws; ++i) mx[n * Ws + i] = n == 2 ? fill : hx[i];
    }
    std::vector<double> gy(N * opt.out_h), gx(N * opt.out_w);
    tasn::cpu::sampling_grid<double>(my.data(), mx.data(), N, Hs, Ws, opt, gy.data(), gx.data());
    const Grid healthy = grid_of(hy, hx, opt);
    for (int i = 0; i < opt.out_h; ++i) ASSERT_EQ(gy[i], healthy.gy[i]);
    for (int i = 0; i < opt.out_w; ++i) ASSERT_EQ(gx[i], healthy.gx[i]);
    for (int n = 1; n < N; ++n) {  // both axes fall back together: the identity grid
      for (int i = 0; i < opt.out_h; ++i) ASSERT_NEAR(gy[n * opt.out_h + i], -1.0 + 2.0 * i / (opt.out_h - 1), 1e-12) << n;
      for (int i = 0; i < opt.out_w; ++i) ASSERT_NEAR(gx[n * opt.out_w + i], -1.0 + 2.0 * i / (opt.out_w - 1), 1e-12) << n;
    }
  }
}

}  // namespace
