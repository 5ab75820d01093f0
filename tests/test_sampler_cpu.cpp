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

template <class T>
std::vector<T> linspace_grid(std::int64_t O) {
  std::vector<T> g(O);
  for (std::int64_t i = 0; i < O; ++i) g[i] = static_cast<T>(-1.0 + 2.0 * i / (O - 1));
  return g;
}

struct Grid {
  std::vector<double> gy, gx;
};
// The grid of one sample with Ho x Wo outputs.
Grid grid_of(const std::vector<double>& my, const std::vector<double>& mx, std::int64_t Ho, std::int64_t Wo,
             const GridOptions& opt) {
  Grid g{std::vector<double>(Ho), std::vector<double>(Wo)};
  const auto Hs = static_cast<std::int64_t>(my.size()), Ws = static_cast<std::int64_t>(mx.size());
  tasn::cpu::sampling_grid(tasn::GridArgs<double>{
      {my.data(), {1, Hs}}, {mx.data(), {1, Ws}}, {g.gy.data(), {1, Ho}}, {g.gx.data(), {1, Wo}}, opt});
  return g;
}

// N samples: sampling_grid over packed (N, Hs), (N, Ws) marginals into (N, Ho), (N, Wo).
template <class T>
void grid_n(const std::vector<T>& my, const std::vector<T>& mx, std::int64_t N, std::int64_t Ho, std::int64_t Wo,
            const GridOptions& opt, std::vector<T>& gy, std::vector<T>& gx) {
  const auto Hs = static_cast<std::int64_t>(my.size()) / N, Ws = static_cast<std::int64_t>(mx.size()) / N;
  gy.assign(N * Ho, T(0));
  gx.assign(N * Wo, T(0));
  tasn::cpu::sampling_grid(tasn::GridArgs<T>{
      {my.data(), {N, Hs}}, {mx.data(), {N, Ws}}, {gy.data(), {N, Ho}}, {gx.data(), {N, Wo}}, opt});
}

template <class T>
void separable(const std::vector<T>& img, std::int64_t N, std::int64_t C, std::int64_t Hi, std::int64_t Wi,
               const std::vector<T>& gy, const std::vector<T>& gx, std::int64_t Ho, std::int64_t Wo, std::vector<T>& out,
               bool check_finite = true) {
  out.assign(N * C * Ho * Wo, T(0));
  tasn::SampleSeparableArgs<T> a{{img.data(), {N, C, Hi, Wi}}, {gy.data(), {N, Ho}}, {gx.data(), {N, Wo}},
                                 {out.data(), {N, C, Ho, Wo}}, {}};
  a.options.check_finite = check_finite;
  tasn::cpu::sample_separable(a);
}

template <class T>
void separable_backward(const std::vector<T>& dout, std::int64_t N, std::int64_t C, std::int64_t Hi, std::int64_t Wi,
                        const std::vector<T>& gy, const std::vector<T>& gx, std::int64_t Ho, std::int64_t Wo,
                        std::vector<T>& dimg, bool check_finite = true) {
  dimg.assign(N * C * Hi * Wi, T(7));
  tasn::SampleSeparableBackwardArgs<T> a{{dout.data(), {N, C, Ho, Wo}}, {gy.data(), {N, Ho}}, {gx.data(), {N, Wo}},
                                         {dimg.data(), {N, C, Hi, Wi}}, {}};
  a.options.check_finite = check_finite;
  tasn::cpu::sample_separable_backward(a);
}

template <class T>
void general(const std::vector<T>& img, std::int64_t N, std::int64_t C, std::int64_t Hi, std::int64_t Wi,
             const std::vector<T>& grid, std::int64_t Ho, std::int64_t Wo, std::vector<T>& out, bool check_finite = true) {
  out.assign(N * C * Ho * Wo, T(0));
  tasn::SampleGridArgs<T> a{{img.data(), {N, C, Hi, Wi}}, {grid.data(), {N, Ho, Wo, 2}}, {out.data(), {N, C, Ho, Wo}}, {}};
  a.options.check_finite = check_finite;
  tasn::cpu::sample_grid(a);
}

// dimg / dgrid: pass null to leave that gradient out.
template <class T>
void general_backward(const std::vector<T>& img, const std::vector<T>& grid, const std::vector<T>& dout, std::int64_t N,
                      std::int64_t C, std::int64_t Hi, std::int64_t Wi, std::int64_t Ho, std::int64_t Wo,
                      std::vector<T>* dimg, std::vector<T>* dgrid, bool check_finite = true) {
  tasn::SampleGridBackwardArgs<T> a{};
  a.img = {img.data(), {N, C, Hi, Wi}};
  a.grid = {grid.data(), {N, Ho, Wo, 2}};
  a.dout = {dout.data(), {N, C, Ho, Wo}};
  if (dimg) {
    dimg->assign(N * C * Hi * Wi, T(7));
    a.dimg = {dimg->data(), {N, C, Hi, Wi}};
  }
  if (dgrid) {
    dgrid->assign(N * Ho * Wo * 2, T(7));
    a.dgrid = {dgrid->data(), {N, Ho, Wo, 2}};
  }
  a.options.check_finite = check_finite;
  tasn::cpu::sample_grid_backward(a);
}

template <class T>
void marginals(const std::vector<T>& map, std::int64_t N, std::int64_t h, std::int64_t w, std::int64_t Hs,
               std::int64_t Ws, std::vector<T>& my, std::vector<T>& mx, std::vector<unsigned char>* fb = nullptr,
               bool check_finite = true) {
  my.assign(N * Hs, T(0));
  mx.assign(N * Ws, T(0));
  tasn::MarginalsArgs<T> a{{map.data(), {N, h, w}}, {my.data(), {N, Hs}}, {mx.data(), {N, Ws}}, {}, {}};
  if (fb) a.fallback = {fb->data(), {N}};
  a.options.check_finite = check_finite;
  tasn::cpu::attention_marginals(a);
}

TEST(SamplerGrid, UniformMarginalsGiveLinspace) {
  for (auto [S, O] : {std::pair<int, int>{512, 224}, {2, 5}, {7, 7}, {3, 1}, {100, 333}}) {
    SCOPED_TRACE(::testing::Message() << "S=" << S << " O=" << O);
    GridOptions opt;
    const std::vector<double> m(S, 1.0 / S);
    const Grid g = grid_of(m, m, O, O, opt);
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
    opt.dense = 1.5 + trial * 0.25;
    opt.iters = trial % 6;
    const auto my = peaky(Hs, 100 + trial), mx = peaky(Ws, 200 + trial);
    const Grid g = grid_of(my, mx, Ho, Wo, opt);
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
    opt.mode = GridMode::Official;
    const auto my = peaky(Hs, 300 + trial), mx = peaky(Ws, 400 + trial);
    const Grid g = grid_of(my, mx, Ho, Wo, opt);
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
  std::vector<float> up(N * Hs * Ws), my1, mx1, my2, mx2;
  tasn::cpu::upsample_bilinear(tasn::UpsampleArgs<float>{{map.data(), {N, h, w}}, {up.data(), {N, Hs, Ws}}, {}});
  marginals(up, N, Hs, Ws, Hs, Ws, my1, mx1);
  marginals(map, N, h, w, Hs, Ws, my2, mx2);
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
  std::vector<double> my, mx;
  std::vector<unsigned char> fb(3, 9);
  // NaN inside: refused with check_finite, the uniform fallback without
  EXPECT_EQ(tt::invalid_argument_message([&] { marginals(maps, 3, h, w, h, w, my, mx, &fb); }),
            "attention_marginals: map holds a non-finite value (nan) at flat index 47 of 60");
  EXPECT_EQ(fb, (std::vector<unsigned char>(3, 9))) << "nothing written on an exception";
  marginals(maps, 3, h, w, h, w, my, mx, &fb, /*check_finite=*/false);
  EXPECT_EQ(fb, (std::vector<unsigned char>{1, 1, 1}));
  for (double v : my) EXPECT_EQ(v, 1.0 / h);
  for (double v : mx) EXPECT_EQ(v, 1.0 / w);
  // ... and the grid of a fallen-back sample is the identity, never NaN
  const std::vector<double> my2(my.begin() + 2 * h, my.end()), mx2(mx.begin() + 2 * w, mx.end());
  const Grid g = grid_of(my2, mx2, 9, 9, GridOptions{});
  for (int i = 0; i < 9; ++i) EXPECT_NEAR(g.gy[i], -1.0 + 2.0 * i / 8, 1e-12);
  // a healthy map does not fall back
  maps[2 * h * w + 7] = 3.0;
  const std::vector<double> one(maps.begin() + 2 * h * w, maps.end());
  marginals(one, 1, h, w, h, w, my, mx, &fb);
  EXPECT_EQ(fb[0], 0);
  EXPECT_GT(my[1], my[0]);  // row 1 holds the 3.0
}

// ---- attention maps -------------------------------------------------------------------------

template <class T>
void structure(const std::vector<T>& m, std::int64_t N, std::int64_t C, std::int64_t h, std::int64_t w, bool distinct,
               std::vector<T>& out) {
  tasn::StructureMapArgs<T> a{{m.data(), {N, C, h, w}}, {out.data(), {N, h, w}}, {}};
  a.options.distinct = distinct;
  tasn::cpu::structure_map(a);
}

template <class T>
void detail(const std::vector<T>& m, std::int64_t N, std::int64_t C, std::int64_t h, std::int64_t w, bool training,
            const std::vector<std::int64_t>* channels, std::uint64_t seed, std::vector<T>& out,
            std::vector<std::int64_t>* chosen = nullptr, bool check_finite = true) {
  tasn::DetailMapArgs<T> a{};
  a.m = {m.data(), {N, C, h, w}};
  if (channels) a.channels = {channels->data(), {N}};
  a.out = {out.data(), {N, h, w}};
  if (chosen) a.chosen = {chosen->data(), {N}};
  a.options.training = training;
  a.options.seed = seed;
  a.options.check_finite = check_finite;
  tasn::cpu::detail_map(a);
}

// A batch split into parts with first_sample = each part's offset picks the channels of the whole
// batch (data-parallel ranks), and a different offset picks differently.
TEST(SamplerMaps, DetailPickOfASplitBatchIsThatOfTheWholeBatch) {
  const std::int64_t N = 12, C = 16, h = 3, w = 3, p = h * w;
  std::vector<float> m(N * C * p);
  for (std::size_t i = 0; i < m.size(); ++i) m[i] = float((i * 7919) % 101) / 50.0f;
  std::vector<float> whole(N * p);
  std::vector<std::int64_t> chosen(N);
  detail(m, N, C, h, w, true, nullptr, 42, whole, &chosen);
  for (std::int64_t first : {0, 4, 8}) {
    tasn::DetailMapArgs<float> a{};
    std::vector<float> out(4 * p);
    std::vector<std::int64_t> part(4);
    a.m = {m.data() + first * C * p, {4, C, h, w}};
    a.out = {out.data(), {4, h, w}};
    a.chosen = {part.data(), {4}};
    a.options.seed = 42;
    a.options.first_sample = first;
    tasn::cpu::detail_map(a);
    EXPECT_EQ(part, std::vector<std::int64_t>(chosen.begin() + first, chosen.begin() + first + 4)) << "first " << first;
    EXPECT_EQ(out, std::vector<float>(whole.begin() + first * p, whole.begin() + (first + 4) * p));
  }
  std::vector<std::int64_t> shifted(N);
  std::vector<float> out(N * p);
  tasn::DetailMapArgs<float> a{};
  a.m = {m.data(), {N, C, h, w}};
  a.out = {out.data(), {N, h, w}};
  a.chosen = {shifted.data(), {N}};
  a.options.seed = 42;
  a.options.first_sample = 1;
  tasn::cpu::detail_map(a);
  EXPECT_NE(shifted, chosen);
}

TEST(SamplerMaps, DistinctIgnoresRepeatedDeadChannels) {
  const std::int64_t N = 2, C = 6, h = 3, w = 3, p = h * w;
  std::vector<double> m(N * C * p, 0.0);  // channels 1, 3, 4 dead (all zero) in both samples
  for (std::int64_t n = 0; n < N; ++n)
    for (std::int64_t c : {0, 2, 5})
      for (std::int64_t i = 0; i < p; ++i) m[(n * C + c) * p + i] = 1.0 + c + 0.1 * i + n;
  std::vector<double> with(N * p), without(N * p);
  structure(m, N, C, h, w, true, with);
  structure(m, N, C, h, w, false, without);
  EXPECT_EQ(with, without);  // dead channels add 0 either way: one of them is kept
  // now dead channels hold the same constant: counted once with distinct
  for (std::int64_t n = 0; n < N; ++n)
    for (std::int64_t c : {1, 3, 4})
      for (std::int64_t i = 0; i < p; ++i) m[(n * C + c) * p + i] = 0.5;
  structure(m, N, C, h, w, true, with);
  structure(m, N, C, h, w, false, without);
  for (std::int64_t i = 0; i < N * p; ++i) EXPECT_NEAR(without[i] - with[i], 1.0, 1e-12);  // 3 x 0.5 vs 1 x 0.5
  // detail map picks among the distinct channels only: never 3 or 4
  std::vector<double> d(N * p);
  std::vector<std::int64_t> chosen(N);
  for (std::uint64_t seed = 0; seed < 50; ++seed) {
    detail(m, N, C, h, w, true, nullptr, seed, d, &chosen);
    for (auto c : chosen) EXPECT_TRUE(c == 0 || c == 1 || c == 2 || c == 5) << c;
    for (std::int64_t n = 0; n < N; ++n)
      for (std::int64_t i = 0; i < p; ++i) ASSERT_EQ(d[n * p + i], m[(n * C + chosen[n]) * p + i]);
  }
  // same seed, same channels; given indices are used as they are
  std::vector<std::int64_t> again(N);
  detail(m, N, C, h, w, true, nullptr, 49, d, &again);
  EXPECT_EQ(again, chosen);
  const std::vector<std::int64_t> given = {4, 3};
  detail(m, N, C, h, w, true, &given, 0, d, &again);
  EXPECT_EQ(again, given);
  // evaluation: the plain sum
  detail(m, N, C, h, w, false, nullptr, 0, d);
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
  std::vector<double> out, dimg, dgrid;
  general(img, N, C, Hi, Wi, grid, Ho, Wo, out);
  general_backward(img, grid, dout, N, C, Hi, Wi, Ho, Wo, &dimg, &dgrid);
  auto r = tt::compare(out, g.at("out").data, 1e-12, 1e-12);
  EXPECT_TRUE(r.ok) << "out: " << r.message();
  r = tt::compare(dimg, g.at("dimg").data, 1e-12, 1e-12);
  EXPECT_TRUE(r.ok) << "dimg: " << r.message();
  r = tt::compare(dgrid, g.at("dgrid").data, 1e-12, 1e-12);
  EXPECT_TRUE(r.ok) << "dgrid: " << r.message();
  // float path too
  const auto imgf = tt::cast_vector<float>(img), gridf = tt::cast_vector<float>(grid);
  std::vector<float> outf;
  general(imgf, N, C, Hi, Wi, gridf, Ho, Wo, outf);
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
  std::vector<float> a, b;
  separable(img, N, C, Hi, Wi, gy, gx, Ho, Wo, a);
  general(img, N, C, Hi, Wi, grid, Ho, Wo, b);
  EXPECT_EQ(a, b);
  const auto dout = tt::cast_vector<float>(tt::random_tensor(a.size(), 64));
  std::vector<float> d1, d2, d3;
  separable_backward(dout, N, C, Hi, Wi, gy, gx, Ho, Wo, d1);
  separable_backward(dout, N, C, Hi, Wi, gy, gx, Ho, Wo, d2);
  EXPECT_EQ(d1, d2) << "separable backward must be bit-identical run to run";
  general_backward(img, grid, dout, N, C, Hi, Wi, Ho, Wo, &d3, static_cast<std::vector<float>*>(nullptr));
  const auto r = tt::compare(d1, d3, 1e-5, 1e-5);
  EXPECT_TRUE(r.ok) << r.message();
}

TEST(SamplerSampling, ImageGradientMatchesFiniteDifferences) {
  const std::int64_t N = 1, C = 2, Hi = 5, Wi = 6, Ho = 4, Wo = 7;
  const auto img = tt::random_tensor(N * C * Hi * Wi, 71);
  const auto gy = tt::random_tensor(N * Ho, 72, -1.1, 1.1), gx = tt::random_tensor(N * Wo, 73, -1.1, 1.1);
  const auto w = tt::random_tensor(N * C * Ho * Wo, 74);
  auto loss = [&](const std::vector<double>& im) {
    std::vector<double> out;
    separable(im, N, C, Hi, Wi, gy, gx, Ho, Wo, out);
    return tt::weighted_sum(out, w);
  };
  std::vector<double> g;
  separable_backward(w, N, C, Hi, Wi, gy, gx, Ho, Wo, g);
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
  std::vector<float> out(O * O), gy(O), gx(O);
  tasn::AttentionSampleArgs<float> args{};
  args.img = {img.data(), {N, C, Hi, Wi}};
  args.attention = {att.data(), {N, Ha, Wa}};
  args.out = {out.data(), {N, C, O, O}};
  args.gy = {gy.data(), {N, O}};
  args.gx = {gx.data(), {N, O}};
  tasn::cpu::attention_sample(args);
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

// ---- errors: options, shapes, absent views ----------------------------------------------------

TEST(SamplerErrors, OptionsAndChannels) {
  std::vector<float> m(64, 1.f), g(64, 0.f);
  GridOptions opt;
  for (double dense : {0.0, -1.0, std::nan("")}) {
    opt.dense = dense;
    EXPECT_NE(tt::invalid_argument_message([&] {
                tasn::cpu::sampling_grid(tasn::GridArgs<float>{
                    {m.data(), {1, 4}}, {m.data(), {1, 4}}, {g.data(), {1, 4}}, {g.data() + 8, {1, 4}}, opt});
              }).find("sampling_grid: dense must be finite and > 0"),
              std::string::npos);
  }
  opt = GridOptions{};
  opt.iters = -1;
  EXPECT_EQ(tt::invalid_argument_message([&] {
              tasn::cpu::sampling_grid(tasn::GridArgs<float>{
                  {m.data(), {1, 4}}, {m.data(), {1, 4}}, {g.data(), {1, 4}}, {g.data() + 8, {1, 4}}, opt});
            }),
            "sampling_grid: iters must be >= 0, got -1");
  const std::vector<std::int64_t> bad = {0, 7};
  std::vector<std::int64_t> chosen(2, 5);
  EXPECT_EQ(tt::invalid_argument_message([&] { detail(m, 2, 4, 2, 4, true, &bad, 0, g, &chosen); }),
            "detail_map: channels[1] = 7 is out of range [0, 4)");
  EXPECT_EQ(chosen, (std::vector<std::int64_t>{5, 5})) << "nothing written on an exception";
  // check_finite = false: the sample with a bad channel gets a NaN map and chosen = -1 (as CUDA)
  std::iota(m.begin(), m.end(), 0.f);
  detail(m, 2, 4, 2, 4, true, &bad, 0, g, &chosen, /*check_finite=*/false);
  EXPECT_EQ(chosen, (std::vector<std::int64_t>{0, -1}));
  for (int i = 0; i < 8; ++i) {
    EXPECT_EQ(g[i], m[i]);
    EXPECT_TRUE(std::isnan(g[8 + i])) << i;
  }
}

TEST(SamplerErrors, ShapesStridesAndAbsentViewsNameArgumentAndSizes) {
  std::vector<float> buf(4096, 1.f), out(4096, 0.f);
  const float* p = buf.data();
  float* o = out.data();
  using tasn::Tensor1;
  using tasn::Tensor2;
  using tasn::Tensor3;
  using tasn::Tensor4;
  // wrong size
  EXPECT_EQ(tt::invalid_argument_message([&] {
              tasn::cpu::structure_map(tasn::StructureMapArgs<float>{{p, {2, 3, 4, 4}}, {o, {2, 4, 5}}, {}});
            }),
            "structure_map: out has shape (2, 4, 5) but (N, h, w) = (2, 4, 4) is required");
  EXPECT_EQ(tt::invalid_argument_message([&] {
              tasn::cpu::sample_separable(
                  tasn::SampleSeparableArgs<float>{{p, {2, 3, 4, 4}}, {p, {2, 5}}, {p, {3, 6}}, {o, {2, 3, 5, 6}}, {}});
            }),
            "sample_separable: gx has shape (3, 6) but (N, Wo) = (2, 6) is required");
  EXPECT_EQ(tt::invalid_argument_message([&] {
              tasn::cpu::sample_separable(
                  tasn::SampleSeparableArgs<float>{{p, {2, 3, 4, 4}}, {p, {2, 5}}, {p, {2, 6}}, {o, {2, 3, 6, 5}}, {}});
            }),
            "sample_separable: out has shape (2, 3, 6, 5) but (N, C, Ho, Wo) = (2, 3, 5, 6) is required");
  EXPECT_EQ(tt::invalid_argument_message([&] {
              tasn::cpu::sample_grid(
                  tasn::SampleGridArgs<float>{{p, {1, 2, 4, 4}}, {p, {1, 3, 3, 3}}, {o, {1, 2, 3, 3}}, {}});
            }),
            "sample_grid: grid has shape (1, 3, 3, 3) but (N, Ho, Wo, 2) = (1, 3, 3, 2) is required");
  EXPECT_EQ(tt::invalid_argument_message([&] {
              tasn::DetailMapArgs<float> a{};
              a.m = {p, {2, 3, 4, 4}};
              a.out = {o, {2, 4, 4}};
              std::vector<std::int64_t> ch(3, 0);
              a.channels = {ch.data(), {3}};
              tasn::cpu::detail_map(a);
            }),
            "detail_map: channels has shape (3) but (N) = (2) is required");
  EXPECT_EQ(tt::invalid_argument_message([&] {
              tasn::cpu::attention_marginals(
                  tasn::MarginalsArgs<float>{{p, {2, 4, 4}}, {o, {2, 8}}, {o + 100, {2, 0}}, {}, {}});
            }),
            "attention_marginals: mx has shape (2, 0) but (N, Ws) with every size >= 1 is required");
  EXPECT_EQ(tt::invalid_argument_message([&] {
              tasn::cpu::upsample_bilinear(tasn::UpsampleArgs<float>{{p, {0, 4, 4}}, {o, {0, 8, 8}}, {}});
            }),
            "upsample_bilinear: in must have shape (N, h, w) with every size >= 1, got (0, 4, 4)");
  // non-packed strides
  EXPECT_EQ(tt::invalid_argument_message([&] {
              tasn::cpu::sample_separable(tasn::SampleSeparableArgs<float>{
                  {p, {1, 1, 4, 4}, {32, 32, 8, 1}}, {p, {1, 2}}, {p, {1, 2}}, {o, {1, 1, 2, 2}}, {}});
            }),
            "sample_separable: img of shape (1, 1, 4, 4) has strides (32, 32, 8, 1); the operator needs it packed "
            "row-major");
  EXPECT_EQ(tt::invalid_argument_message([&] {
              tasn::cpu::sampling_grid(tasn::GridArgs<float>{
                  {p, {2, 4}}, {p, {2, 4}}, {o, {2, 3}, {1, 2}}, {o + 50, {2, 3}}, GridOptions{}});
            }),
            "sampling_grid: gy of shape (2, 3) has strides (1, 2); the operator needs it packed row-major");
  // absent required views; null data
  EXPECT_EQ(tt::invalid_argument_message([&] {
              tasn::cpu::sampling_grid(tasn::GridArgs<float>{{p, {2, 4}}, {p, {2, 4}}, {}, {o, {2, 3}}, GridOptions{}});
            }),
            "sampling_grid: gy is absent (a null view) but is required");
  EXPECT_EQ(tt::invalid_argument_message([&] {
              tasn::AttentionSampleArgs<float> a{};
              a.img = {p, {1, 1, 8, 8}};
              a.attention = {p, {1, 4, 4}};
              tasn::cpu::attention_sample(a);
            }),
            "attention_sample: out is absent (a null view) but is required");
  EXPECT_EQ(tt::invalid_argument_message([&] {
              tasn::SampleGridBackwardArgs<float> a{};
              a.dout = {p, {1, 1, 2, 2}};
              a.grid = {p, {1, 2, 2, 2}};
              a.dgrid = {o, {1, 2, 2, 2}};
              tasn::cpu::sample_grid_backward(a);
            }),
            "sample_grid_backward: img is absent (a null view) but is required when dgrid is given");
  EXPECT_EQ(tt::invalid_argument_message([&] {
              tasn::cpu::sample_separable_backward(
                  tasn::SampleSeparableBackwardArgs<float>{{}, {p, {1, 2}}, {p, {1, 2}}, {o, {1, 1, 4, 4}}, {}});
            }),
            "sample_separable_backward: dout is absent (a null view) but is required");
  EXPECT_EQ(tt::invalid_argument_message([&] {
              tasn::cpu::structure_map(tasn::StructureMapArgs<float>{{p, {2, 3, 4, 4}}, {nullptr, {2, 4, 4}}, {}});
            }),
            "structure_map: out is absent (a null view) but is required");
  EXPECT_EQ(out, std::vector<float>(4096, 0.f)) << "a refused call writes nothing";
}

// ---- workspace -----------------------------------------------------------------------------------

// A 256-byte aligned host buffer of `bytes` bytes plus a guard region filled with 0xab.
struct Buffer {
  static constexpr std::size_t kGuard = 512;
  std::vector<unsigned char> raw;
  unsigned char* data = nullptr;
  explicit Buffer(std::size_t bytes) : raw(bytes + kGuard + 256, 0xab) {
    auto at = reinterpret_cast<std::uintptr_t>(raw.data());
    data = raw.data() + (256 - at % 256) % 256;
  }
  bool guard_intact(std::size_t bytes) const {
    for (std::size_t i = 0; i < kGuard; ++i)
      if (data[bytes + i] != 0xab) return false;
    return true;
  }
};

// Runs op(args, ws) with a caller workspace of exactly workspace_bytes(args) bytes, compares to the
// self-allocated run (`outputs` returns the outputs), and checks the refusals.
template <class Args, class Op, class Outputs>
void check_workspace(const char* name, const Args& args, Op op, Outputs outputs, bool expect_scratch) {
  SCOPED_TRACE(name);
  const std::size_t need = tasn::cpu::workspace_bytes(args);
  if (expect_scratch) {
    EXPECT_GT(need, 0u);
  }
  op(args, tasn::Workspace{});
  const auto self = outputs();
  Buffer b(need);
  op(args, tasn::Workspace{b.data, need});
  EXPECT_EQ(outputs(), self) << "caller workspace must give bit-identical results";
  EXPECT_TRUE(b.guard_intact(need)) << "wrote beyond workspace_bytes(args)";
  if (need > 0) {
    const std::string small = tt::invalid_argument_message([&] { op(args, tasn::Workspace{b.data, need - 1}); });
    EXPECT_EQ(small, tasn::detail::concat(name, ": workspace holds ", need - 1, " bytes but ", need,
                                          " are needed (query workspace_bytes(args))"));
    Buffer c(need + 16);
    const std::string mis = tt::invalid_argument_message([&] { op(args, tasn::Workspace{c.data + 8, need + 8}); });
    EXPECT_NE(mis.find(std::string(name) + ": workspace must be 256-byte aligned"), std::string::npos) << mis;
  }
}

TEST(SamplerWorkspace, CallerWorkspaceIsBitIdenticalAndSizedExactly) {
  const std::int64_t N = 3, C = 4, Hi = 13, Wi = 11, Ho = 7, Wo = 9, h = 5, w = 6;
  const auto img = tt::random_tensor(N * C * Hi * Wi, 801, -1.0, 1.0);
  auto m = tt::random_tensor(N * C * h * w, 802, 0.0, 1.0);
  for (std::int64_t i = 0; i < h * w; ++i) m[2 * h * w + i] = m[i];  // a repeated channel
  const auto att = tt::random_tensor(N * h * w, 803, 0.0, 1.0);
  const auto gy = tt::random_tensor(N * Ho, 804, -1.0, 1.0), gx = tt::random_tensor(N * Wo, 805, -1.0, 1.0);
  const auto dout = tt::random_tensor(N * C * Ho * Wo, 806);
  std::vector<double> map(N * h * w), my(N * Hi), mx(N * Wi), gyo(N * Ho), gxo(N * Wo), out(N * C * Ho * Wo),
      dimg(img.size());
  std::vector<std::int64_t> chosen(N);
  std::vector<unsigned char> fb(N);

  tasn::StructureMapArgs<double> sm{{m.data(), {N, C, h, w}}, {map.data(), {N, h, w}}, {}};
  sm.options.distinct = true;
  check_workspace("structure_map", sm, [](auto& a, tasn::Workspace ws) { tasn::cpu::structure_map(a, ws); },
                  [&] { return map; }, true);
  tasn::DetailMapArgs<double> dm{};
  dm.m = sm.m;
  dm.out = sm.out;
  dm.chosen = {chosen.data(), {N}};
  dm.options.seed = 9;
  check_workspace("detail_map", dm, [](auto& a, tasn::Workspace ws) { tasn::cpu::detail_map(a, ws); },
                  [&] { return std::make_pair(map, chosen); }, true);
  tasn::MarginalsArgs<double> ma{{att.data(), {N, h, w}}, {my.data(), {N, Hi}}, {mx.data(), {N, Wi}},
                                 {fb.data(), {N}}, {}};
  check_workspace("attention_marginals", ma, [](auto& a, tasn::Workspace ws) { tasn::cpu::attention_marginals(a, ws); },
                  [&] { return std::make_pair(my, mx); }, false);
  tasn::GridArgs<double> ga{{my.data(), {N, Hi}}, {mx.data(), {N, Wi}}, {gyo.data(), {N, Ho}}, {gxo.data(), {N, Wo}}, {}};
  check_workspace("sampling_grid", ga, [](auto& a, tasn::Workspace ws) { tasn::cpu::sampling_grid(a, ws); },
                  [&] { return std::make_pair(gyo, gxo); }, true);
  tasn::SampleSeparableArgs<double> ss{{img.data(), {N, C, Hi, Wi}}, {gy.data(), {N, Ho}}, {gx.data(), {N, Wo}},
                                       {out.data(), {N, C, Ho, Wo}}, {}};
  check_workspace("sample_separable", ss, [](auto& a, tasn::Workspace ws) { tasn::cpu::sample_separable(a, ws); },
                  [&] { return out; }, true);
  tasn::SampleSeparableBackwardArgs<double> sb{{dout.data(), {N, C, Ho, Wo}}, {gy.data(), {N, Ho}}, {gx.data(), {N, Wo}},
                                               {dimg.data(), {N, C, Hi, Wi}}, {}};
  check_workspace("sample_separable_backward", sb,
                  [](auto& a, tasn::Workspace ws) { tasn::cpu::sample_separable_backward(a, ws); },
                  [&] { return dimg; }, true);
  for (bool squared : {false, true})
    for (bool give_grid : {false, true}) {
      tasn::AttentionSampleArgs<double> as{};
      as.img = {img.data(), {N, C, Hi, Wi}};
      as.attention = {att.data(), {N, h, w}};
      as.out = {out.data(), {N, C, Ho, Wo}};
      if (give_grid) {
        as.gy = {gyo.data(), {N, Ho}};
        as.gx = {gxo.data(), {N, Wo}};
      }
      as.fallback = {fb.data(), {N}};
      as.options.squared = squared;
      as.options.upsample_h = 17;
      check_workspace("attention_sample", as, [](auto& a, tasn::Workspace ws) { tasn::cpu::attention_sample(a, ws); },
                      [&] { return std::make_pair(out, std::make_pair(gyo, gxo)); }, true);
    }
  // the ops without scratch need none, and accept an empty workspace
  const auto grid = tt::random_tensor(N * Ho * Wo * 2, 807, -1.0, 1.0);
  tasn::SampleGridArgs<double> sg{{img.data(), {N, C, Hi, Wi}}, {grid.data(), {N, Ho, Wo, 2}}, {out.data(), {N, C, Ho, Wo}}, {}};
  EXPECT_EQ(tasn::cpu::workspace_bytes(sg), 0u);
  tasn::UpsampleArgs<double> ua{{att.data(), {N, h, w}}, {dimg.data(), {N, Hi, Wi}}, {}};
  EXPECT_EQ(tasn::cpu::workspace_bytes(ua), 0u);
  EXPECT_EQ(tasn::cpu::workspace_bytes(ma), 0u);
  tasn::StructureMapArgs<double> plain = sm;
  plain.options.distinct = false;
  EXPECT_EQ(tasn::cpu::workspace_bytes(plain), 0u);
}

// ---- check_finite ----------------------------------------------------------------------------------

TEST(SamplerCheckFinite, RefusedWithTheSharedMessageAndNothingWritten) {
  const std::int64_t N = 2, C = 2, Hi = 6, Wi = 5, Ho = 4, Wo = 3;
  auto img = tt::cast_vector<float>(tt::random_tensor(N * C * Hi * Wi, 811));
  auto att = tt::cast_vector<float>(tt::random_tensor(N * Hi * Wi, 812, 0.0, 1.0));
  const auto ly = linspace_grid<float>(Ho), lx = linspace_grid<float>(Wo);
  std::vector<float> gy(ly), gx(lx);
  gy.insert(gy.end(), ly.begin(), ly.end());
  gx.insert(gx.end(), lx.begin(), lx.end());
  std::vector<float> out(N * C * Ho * Wo, 3.f);
  img[17] = std::nanf("");
  tasn::SampleSeparableArgs<float> ss{{img.data(), {N, C, Hi, Wi}}, {gy.data(), {N, Ho}}, {gx.data(), {N, Wo}},
                                      {out.data(), {N, C, Ho, Wo}}, {}};
  EXPECT_EQ(tt::invalid_argument_message([&] { tasn::cpu::sample_separable(ss); }),
            tasn::detail::nonfinite_message("sample_separable", "img", std::nanf(""), 17, N * C * Hi * Wi));
  EXPECT_EQ(out, std::vector<float>(out.size(), 3.f));
  img[17] = 0.5f;
  gx[4] = INFINITY;
  EXPECT_EQ(tt::invalid_argument_message([&] { tasn::cpu::sample_separable(ss); }),
            "sample_separable: gx holds a non-finite value (inf) at flat index 4 of 6");
  ss.options.check_finite = false;  // propagates: NaN in the column of the bad coordinate
  tasn::cpu::sample_separable(ss);
  for (std::int64_t c = 0; c < C; ++c)
    for (std::int64_t y = 0; y < Ho; ++y) EXPECT_TRUE(std::isnan(out[((1 * C + c) * Ho + y) * Wo + 1]));
  EXPECT_TRUE(std::isfinite(out[0]));
  gx[4] = 0.f;

  tasn::AttentionSampleArgs<float> as{};
  as.img = {img.data(), {N, C, Hi, Wi}};
  as.attention = {att.data(), {N, Hi, Wi}};
  as.out = {out.data(), {N, C, Ho, Wo}};
  std::vector<float> agy(N * Ho, 5.f), agx(N * Wo, 5.f);
  std::vector<unsigned char> fb(N, 9);
  as.gy = {agy.data(), {N, Ho}};
  as.gx = {agx.data(), {N, Wo}};
  as.fallback = {fb.data(), {N}};
  att[Hi * Wi + 3] = -INFINITY;
  EXPECT_EQ(tt::invalid_argument_message([&] { tasn::cpu::attention_sample(as); }),
            "attention_sample: attention holds a non-finite value (-inf) at flat index 33 of 60");
  EXPECT_EQ(fb, (std::vector<unsigned char>{9, 9}));
  EXPECT_EQ(agy, std::vector<float>(agy.size(), 5.f));
  // check_finite = false: the sample with the bad map gets the identity grid, the other not
  as.options.check_finite = false;
  tasn::cpu::attention_sample(as);
  EXPECT_EQ(fb, (std::vector<unsigned char>{0, 1}));
  for (std::int64_t i = 0; i < Ho; ++i) EXPECT_NEAR(agy[Ho + i], -1.0 + 2.0 * i / (Ho - 1), 1e-6);
  for (std::int64_t i = 0; i < Wo; ++i) EXPECT_NEAR(agx[Wo + i], -1.0 + 2.0 * i / (Wo - 1), 1e-6);
  for (float v : out) EXPECT_TRUE(std::isfinite(v));

  // sampling_grid: refused, or the identity grid for that sample
  std::vector<float> my(N * Hi, 0.2f), mx(N * Wi, 0.1f);
  my[3] = 4.f;
  mx[Wi + 2] = std::nanf("");
  std::vector<float> sgy, sgx;
  EXPECT_EQ(tt::invalid_argument_message([&] { grid_n(my, mx, N, Ho, Wo, GridOptions{}, sgy, sgx); }),
            "sampling_grid: mx holds a non-finite value (nan) at flat index 7 of 10");
  GridOptions nf;
  nf.check_finite = false;
  grid_n(my, mx, N, Ho, Wo, nf, sgy, sgx);
  for (std::int64_t i = 0; i < Ho; ++i) EXPECT_NEAR(sgy[Ho + i], -1.0 + 2.0 * i / (Ho - 1), 1e-6);
  std::vector<float> hgy, hgx;  // the healthy sample's grid, alone
  grid_n(std::vector<float>(my.begin(), my.begin() + Hi), std::vector<float>(mx.begin(), mx.begin() + Wi), 1, Ho, Wo,
         GridOptions{}, hgy, hgx);
  EXPECT_EQ(std::vector<float>(sgy.begin(), sgy.begin() + Ho), hgy) << "the healthy sample keeps its grid";
  EXPECT_EQ(std::vector<float>(sgx.begin(), sgx.begin() + Wo), hgx);

  // maps: NaN refused, or propagated into the map
  std::vector<float> m(N * C * Hi * Wi, 1.f), map(N * Hi * Wi, 0.f);
  m[Hi * Wi + 2] = std::nanf("");
  tasn::StructureMapArgs<float> sm{{m.data(), {N, C, Hi, Wi}}, {map.data(), {N, Hi, Wi}}, {}};
  EXPECT_EQ(tt::invalid_argument_message([&] { tasn::cpu::structure_map(sm); }),
            "structure_map: m holds a non-finite value (nan) at flat index 32 of 120");
  EXPECT_EQ(map, std::vector<float>(map.size(), 0.f));
  sm.options.check_finite = false;
  tasn::cpu::structure_map(sm);
  EXPECT_TRUE(std::isnan(map[2]));
  EXPECT_EQ(map[3], 2.f);
  tasn::UpsampleArgs<float> ua{{m.data(), {N * C, Hi, Wi}}, {out.data(), {N * C, 2, 6}}, {}};
  EXPECT_EQ(tt::invalid_argument_message([&] { tasn::cpu::upsample_bilinear(ua); }),
            "upsample_bilinear: in holds a non-finite value (nan) at flat index 32 of 120");
  // backward passes: dout and the grid are checked
  std::vector<float> dout(N * C * Ho * Wo, 1.f), dimg;
  dout[5] = INFINITY;
  EXPECT_EQ(tt::invalid_argument_message([&] { separable_backward(dout, N, C, Hi, Wi, gy, gx, Ho, Wo, dimg); }),
            "sample_separable_backward: dout holds a non-finite value (inf) at flat index 5 of 48");
  separable_backward(dout, N, C, Hi, Wi, gy, gx, Ho, Wo, dimg, /*check_finite=*/false);
  EXPECT_TRUE(std::any_of(dimg.begin(), dimg.end(), [](float v) { return !std::isfinite(v); }))
      << "check_finite = false: the infinity propagates";
  std::vector<float> grid(N * Ho * Wo * 2, 0.25f), dgrid;
  grid[9] = std::nanf("");
  dout[5] = 1.f;
  EXPECT_EQ(tt::invalid_argument_message([&] {
              general_backward(img, grid, dout, N, C, Hi, Wi, Ho, Wo, &dimg, &dgrid);
            }),
            "sample_grid_backward: grid holds a non-finite value (nan) at flat index 9 of 48");
  EXPECT_EQ(tt::invalid_argument_message([&] { general(img, N, C, Hi, Wi, grid, Ho, Wo, dimg); }),
            "sample_grid: grid holds a non-finite value (nan) at flat index 9 of 48");
}

// ---- robustness: sizes ------------------------------------------------------------------------
// Every size product an entry point forms is checked before anything is allocated or indexed:
// overflow, negative sizes and allocations the machine cannot serve all become InvalidArgument.

constexpr std::int64_t kHuge = std::int64_t(1) << 62;

TEST(SamplerSizes, AttentionSampleRefusesOverflowingOutputSize) {
  // out (4, 1, 2^62, 2): its element count overflows int64; was a segfault
  std::vector<float> img(4 * 8 * 8, 1.f), att(4 * 4 * 4, 1.f), out(16);
  tasn::AttentionSampleArgs<float> a{};
  a.img = {img.data(), {4, 1, 8, 8}};
  a.attention = {att.data(), {4, 4, 4}};
  a.out = {out.data(), {4, 1, kHuge, 2}};
  EXPECT_EQ(tt::invalid_argument_message([&] { tasn::cpu::attention_sample(a); }),
            "attention_sample: out of shape (4, 1, 4611686018427387904, 2) overflows 64-bit indexing");
}

TEST(SamplerSizes, SamplingGridRefusesOverflowingOutputSize) {
  std::vector<float> m(4 * 4, 0.25f), g(16);
  EXPECT_EQ(tt::invalid_argument_message([&] {
              tasn::cpu::sampling_grid(tasn::GridArgs<float>{
                  {m.data(), {4, 4}}, {m.data(), {4, 4}}, {g.data(), {4, 2}}, {g.data(), {4, kHuge}}, GridOptions{}});
            }),
            "sampling_grid: gx of shape (4, 4611686018427387904) overflows 64-bit indexing");
}

TEST(SamplerSizes, AttentionSampleRefusesNegativeSizes) {
  // were std::length_error from a std::vector of negative size
  std::vector<float> buf(64, 1.f);
  tasn::AttentionSampleArgs<float> a{};
  a.img = {buf.data(), {-1, 1, 4, 4}};
  a.attention = {buf.data(), {1, 2, 2}};
  a.out = {buf.data(), {1, 1, 2, 2}};
  EXPECT_EQ(tt::invalid_argument_message([&] { tasn::cpu::attention_sample(a); }),
            "attention_sample: img must have shape (N, C, Hi, Wi) with every size >= 1, got (-1, 1, 4, 4)");
  a.img = {buf.data(), {1, 1, -3, 4}};
  EXPECT_EQ(tt::invalid_argument_message([&] { tasn::cpu::attention_sample(a); }),
            "attention_sample: img must have shape (N, C, Hi, Wi) with every size >= 1, got (1, 1, -3, 4)");
  a.img = {buf.data(), {1, 1, 4, 4}};
  a.attention = {buf.data(), {1, 2, -2}};
  EXPECT_EQ(tt::invalid_argument_message([&] { tasn::cpu::attention_sample(a); }),
            "attention_sample: attention has shape (1, 2, -2) but (N, Ha, Wa) with every size >= 1 is required");
  a.attention = {buf.data(), {1, 2, 2}};
  a.options.upsample_h = -5;
  EXPECT_EQ(tt::invalid_argument_message([&] { tasn::cpu::attention_sample(a); }),
            "attention_sample: upsample size must be >= 0 (0: the image size), got (-5, 0)");
}

TEST(SamplerSizes, AttentionSampleTurnsFailedAllocationIntoInvalidArgument) {
#if defined(__SANITIZE_ADDRESS__)
  GTEST_SKIP() << "AddressSanitizer aborts on an allocation it cannot serve instead of throwing std::bad_alloc";
#else
  // squared: the upsampled map (N, Hs, Ws) is materialised in the workspace: 2^48 floats = 1 PiB.
  std::vector<float> img(1, 1.f), att(4, 1.f), out(4);
  tasn::AttentionSampleArgs<float> a{};
  a.img = {img.data(), {1, 1, 1, 1}};
  a.attention = {att.data(), {1, 2, 2}};
  a.out = {out.data(), {1, 1, 2, 2}};
  a.options.upsample_h = a.options.upsample_w = std::int64_t(1) << 24;
  a.options.squared = true;
  const std::size_t need = tasn::cpu::workspace_bytes(a);
  EXPECT_GE(need, std::size_t(1) << 50);
  EXPECT_EQ(tt::invalid_argument_message([&] { tasn::cpu::attention_sample(a); }),
            tasn::detail::concat("attention_sample: cannot allocate the workspace (", need, " elements, ", need,
                                 " bytes)"));
#endif
}

TEST(SamplerSizes, SeparableBackwardRefusesOverflowingRowBuffer) {
  // dout (1, 1, 2^40, 1) and dimg (1, 1, 1, 2^40) fit, but the pass-1 buffer (Ho x Wi) = 2^80 does not
  const std::int64_t big = std::int64_t(1) << 40;
  std::vector<float> buf(16, 1.f);
  EXPECT_EQ(tt::invalid_argument_message([&] {
              tasn::cpu::sample_separable_backward(tasn::SampleSeparableBackwardArgs<float>{
                  {buf.data(), {1, 1, big, 1}}, {buf.data(), {1, big}}, {buf.data(), {1, 1}},
                  {buf.data(), {1, 1, 1, big}}, {}});
            }),
            "sample_separable_backward: the row buffer (N, C, Ho, Wi) of 1 x 1 x 1099511627776 x 1099511627776 "
            "elements overflows 64-bit indexing");
}

TEST(SamplerSizes, GeneralGridRefusesOverflowingGrid) {
  // out (1, 1, 2^62, 1) fits int64, the grid (1, 2^62, 1, 2) does not
  std::vector<float> buf(16, 1.f);
  EXPECT_EQ(tt::invalid_argument_message([&] {
              tasn::cpu::sample_grid(tasn::SampleGridArgs<float>{
                  {buf.data(), {1, 1, 1, 1}}, {buf.data(), {1, kHuge, 1, 2}}, {buf.data(), {1, 1, kHuge, 1}}, {}});
            }),
            "sample_grid: grid of shape (1, 4611686018427387904, 1, 2) overflows 64-bit indexing");
  tasn::SampleGridBackwardArgs<float> a{};
  a.img = {buf.data(), {1, 1, 1, 1}};
  a.grid = {buf.data(), {1, kHuge, 1, 2}};
  a.dout = {buf.data(), {1, 1, kHuge, 1}};
  a.dimg = {buf.data(), {1, 1, 1, 1}};
  EXPECT_EQ(tt::invalid_argument_message([&] { tasn::cpu::sample_grid_backward(a); }),
            "sample_grid_backward: grid of shape (1, 4611686018427387904, 1, 2) overflows 64-bit indexing");
}

// ---- robustness: non-finite and huge grid coordinates ------------------------------------------
// A coordinate beyond the image on either side (finite, however large) reaches no pixel: its
// output is 0 and it receives no gradient, as zeros padding says. A NaN or infinite coordinate
// gives NaN outputs, NaN dgrid (both components) and NaN image-gradient contributions, which land
// on pixels 0 and 1 of its axis.

const double kBadCoords[] = {std::numeric_limits<double>::quiet_NaN(), INFINITY, -INFINITY, 1e30, -1e30};

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
      std::vector<T> out, dimg;
      if (!std::isfinite(bad)) {  // refused with check_finite (the default); propagated without
        EXPECT_NE(tt::invalid_argument_message([&] { separable(img, N, C, Hi, Wi, gy, gx, Ho, Wo, out); })
                      .find(axis == 0 ? "sample_separable: gy holds a non-finite value" : "sample_separable: gx holds"),
                  std::string::npos);
      }
      separable(img, N, C, Hi, Wi, gy, gx, Ho, Wo, out, /*check_finite=*/false);
      separable_backward(dout, N, C, Hi, Wi, gy, gx, Ho, Wo, dimg, /*check_finite=*/false);
      // reference: the same call on the clean grid with the affected outputs' gradient zeroed
      std::vector<T> ref, dref;
      auto dz = dout;
      for (std::int64_t c = 0; c < C; ++c)
        for (std::int64_t i = 0; i < (axis == 0 ? Wo : Ho); ++i)
          dz[(c * Ho + (axis == 0 ? at : i)) * Wo + (axis == 0 ? i : at)] = 0;
      separable(img, N, C, Hi, Wi, gy0, gx0, Ho, Wo, ref);
      separable_backward(dz, N, C, Hi, Wi, gy0, gx0, Ho, Wo, dref);
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
      std::vector<T> out, ref, dimg, dref, dgrid, dgref;
      if (!std::isfinite(bad)) {  // refused with check_finite (the default); propagated without
        EXPECT_NE(tt::invalid_argument_message([&] { general(img, N, C, Hi, Wi, grid, Ho, Wo, out); })
                      .find("sample_grid: grid holds a non-finite value"),
                  std::string::npos);
        EXPECT_NE(tt::invalid_argument_message([&] {
                    general_backward(img, grid, dout, N, C, Hi, Wi, Ho, Wo, &dimg, &dgrid);
                  }).find("sample_grid_backward: grid holds a non-finite value"),
                  std::string::npos);
      }
      general(img, N, C, Hi, Wi, grid, Ho, Wo, out, /*check_finite=*/false);
      general_backward(img, grid, dout, N, C, Hi, Wi, Ho, Wo, &dimg, &dgrid, /*check_finite=*/false);
      auto dz = dout;
      for (std::int64_t c = 0; c < C; ++c) dz[c * P + at] = 0;
      general(img, N, C, Hi, Wi, grid0, Ho, Wo, ref);
      general_backward(img, grid0, dz, N, C, Hi, Wi, Ho, Wo, &dref, &dgref);
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
      const std::int64_t Ho = 29, Wo = 31;
      GridOptions opt;
      opt.iters = iters;
      opt.mode = mode;
      const auto my = positive_marginal<double>(Hs, 601), mx = positive_marginal<double>(Ws, 602);
      const Grid ref = grid_of(my, mx, Ho, Wo, opt);
      for (double k : {4.0, 0x1p-30, 0x1p+600}) {  // powers of two: normalisation is exact, the grid identical
        auto sy = my, sx = mx;
        for (auto& v : sy) v *= k;
        for (auto& v : sx) v *= k;
        const Grid g = grid_of(sy, sx, Ho, Wo, opt);
        EXPECT_EQ(g.gy, ref.gy) << "k = " << k;
        EXPECT_EQ(g.gx, ref.gx) << "k = " << k;
      }
      for (double k : {3.0, 1e-3, 7e250}) {
        auto sy = my, sx = mx;
        for (auto& v : sy) v *= k;
        for (auto& v : sx) v *= k;
        const Grid g = grid_of(sy, sx, Ho, Wo, opt);
        for (int i = 0; i < Ho; ++i) ASSERT_NEAR(g.gy[i], ref.gy[i], 1e-12) << "k = " << k;
        for (int i = 0; i < Wo; ++i) ASSERT_NEAR(g.gx[i], ref.gx[i], 1e-12) << "k = " << k;
      }
      // float: the same, from float marginals
      const auto myf = tt::cast_vector<float>(my), mxf = tt::cast_vector<float>(mx);
      std::vector<float> gy1, gx1, gy2, gx2;
      grid_n(myf, mxf, 1, Ho, Wo, opt, gy1, gx1);
      auto syf = myf, sxf = mxf;
      for (auto& v : syf) v *= 0x1p+100f;
      for (auto& v : sxf) v *= 0x1p+100f;
      grid_n(syf, sxf, 1, Ho, Wo, opt, gy2, gx2);
      EXPECT_EQ(gy1, gy2);
      EXPECT_EQ(gx1, gx2);
    }
}

TEST(SamplerGridNormalisation, MarginalsNearDblMaxGiveAFiniteGrid) {
  // iters = 0 with marginals whose sum overflows double: was a NaN grid
  const int Hs = 16, Ws = 12;
  const std::int64_t Ho = 9, Wo = 11;
  GridOptions opt;
  opt.iters = 0;
  auto my = positive_marginal<double>(Hs, 611), mx = positive_marginal<double>(Ws, 612);
  for (auto& v : my) v = 0.5 + 0.5 * v;
  for (auto& v : mx) v = 0.5 + 0.5 * v;
  const Grid ref = grid_of(my, mx, Ho, Wo, opt);
  auto by = my, bx = mx;
  for (auto& v : by) v *= 0x1p+1023;  // each near DBL_MAX / 2..1: the plain sum overflows
  for (auto& v : bx) v *= 0x1p+1023;
  by[3] = DBL_MAX;
  const Grid g = grid_of(by, bx, Ho, Wo, opt);
  auto my3 = my;
  my3[3] = DBL_MAX / 0x1p+1023;
  const Grid ref3 = grid_of(my3, mx, Ho, Wo, opt);
  for (int i = 0; i < Ho; ++i) {
    ASSERT_TRUE(std::isfinite(g.gy[i])) << i;
    ASSERT_NEAR(g.gy[i], ref3.gy[i], 1e-12) << i;
  }
  for (int i = 0; i < Wo; ++i) ASSERT_NEAR(g.gx[i], ref.gx[i], 1e-12) << i;
  EXPECT_EQ(g.gy.front(), -1.0);
  EXPECT_EQ(g.gy.back(), 1.0);
}

TEST(SamplerGridNormalisation, MarginalWithoutPositiveMassGivesTheIdentity) {
  const int Hs = 10, Ws = 14, N = 3;
  const std::int64_t Ho = 9, Wo = 13;
  GridOptions opt;
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
    std::vector<double> gy, gx;
    grid_n(my, mx, N, Ho, Wo, opt, gy, gx);
    const Grid healthy = grid_of(hy, hx, Ho, Wo, opt);
    for (int i = 0; i < Ho; ++i) ASSERT_EQ(gy[i], healthy.gy[i]);
    for (int i = 0; i < Wo; ++i) ASSERT_EQ(gx[i], healthy.gx[i]);
    for (int n = 1; n < N; ++n) {  // both axes fall back together: the identity grid
      for (int i = 0; i < Ho; ++i) ASSERT_NEAR(gy[n * Ho + i], -1.0 + 2.0 * i / (Ho - 1), 1e-12) << n;
      for (int i = 0; i < Wo; ++i) ASSERT_NEAR(gx[n * Wo + i], -1.0 + 2.0 * i / (Wo - 1), 1e-12) << n;
    }
  }
}

}  // namespace
