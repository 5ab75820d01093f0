// The oneDNN backend of the example trainer (examples/nn/dnnl_layers.h) against the reference
// layers (examples/nn/layers.h) run in double on the same float inputs: convolution forward,
// backward-data and backward-weights on randomised shapes (strides, padding, dilation, the
// attention head's dilated 3x3, 1x1 and 7x7 stride-2 stems, bias or not, overwrite or accumulate),
// in both layouts; batch norm in training and evaluation with its running statistics and the fused
// ReLU; the primitive cache; and bad geometries.
//
// Tolerances come from the reduction length, not from tuning. Every result is a float sum of K
// rounded terms (plus the bias, or the value accumulated into): in any order of summation (oneDNN's
// blocked kernels sum in their own order) |float - exact| <= gamma(K) * sum |term_k| with
// gamma(K) = K u / (1 - K u), u = 2^-24 (Higham, Accuracy and Stability, 3.1). The test evaluates
// sum |term_k| exactly as the reference layer applied to |x|, |weight|, |dy| in double, so each
// element gets its own bound. K: cin * kh * kw (forward), cout * kh * kw (backward-data),
// n * ho * wo (backward-weights and bias), plus 2 for the bias / accumulated value and the final
// rounding. Batch norm chains reductions of length M = n * h * w; its first-order bound is built
// the same way in bn_bounds() below and doubled for the neglected second-order terms.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include "nn/dnnl_layers.h"
#include "nn/layers.h"
#include "support/layer_bounds.h"
#include "support/test_support.h"

namespace {

namespace tt = tasn::test;
namespace nn = tasn::nn;
namespace nnd = tasn::nn::dnnl;

// The bound helpers shared with the GPU layer tests (support/layer_bounds.h); declarations, not a
// using-directive: glibc's `struct random_data` would make the name ambiguous.
using tasn::test::bounds::abs_of;
using tasn::test::bounds::bn_bounds;
using tasn::test::bounds::BnBounds;
using tasn::test::bounds::BnShape;
using tasn::test::bounds::channel_stats;
using tasn::test::bounds::Data;
using tasn::test::bounds::expect_within;
using tasn::test::bounds::gamma_k;
using tasn::test::bounds::kU;
using tasn::test::bounds::pick;
using tasn::test::bounds::random_data;
using tasn::test::bounds::tensor;

struct ConvCase {
  nnd::ConvGeometry g;
  bool bias = false, accumulate = false;
};

std::string describe(const ConvCase& c) {
  return nnd::to_string(c.g) + (c.bias ? ", bias" : ", no bias") + (c.accumulate ? ", accumulate" : ", overwrite");
}

// Runs all three directions of one case through `ctx` and compares each with the reference.
void check_conv(nnd::Context& ctx, const ConvCase& c, std::uint64_t seed) {
  SCOPED_TRACE(describe(c));
  const auto& g = c.g;
  const std::vector<std::int64_t> xs{g.n, g.cin, g.h, g.w}, ws{g.cout, g.cin, g.kh, g.kw},
      ys{g.n, g.cout, g.ho(), g.wo()};
  const nn::Conv2dArgs a{g.stride, g.padding, g.dilation};
  const Data x = random_data(g.x_numel(), seed), w = random_data(g.weight_numel(), seed + 1),
             b = random_data(g.cout, seed + 2), dy = random_data(g.y_numel(), seed + 3),
             dx0 = random_data(g.x_numel(), seed + 4), dw0 = random_data(g.weight_numel(), seed + 5),
             db0 = random_data(g.cout, seed + 6);
  const auto X = tensor(xs, x.d), W = tensor(ws, w.d), B = tensor({g.cout}, b.d), DY = tensor(ys, dy.d);
  const auto aX = tensor(xs, abs_of(x.d)), aW = tensor(ws, abs_of(w.d)), aB = tensor({g.cout}, abs_of(b.d)),
             aDY = tensor(ys, abs_of(dy.d));
  nn::Arena arena;

  // forward: K = cin kh kw products (+ bias) per output
  {
    std::vector<float> y(static_cast<std::size_t>(g.y_numel()), NAN);
    nnd::conv2d_forward(ctx, arena, g, x.f.data(), w.f.data(), c.bias ? b.f.data() : nullptr, y.data());
    const auto ref = nn::conv2d_forward(X, W, c.bias ? &B : nullptr, a);
    const auto mag = nn::conv2d_forward(aX, aW, c.bias ? &aB : nullptr, a);
    std::vector<double> bound(mag.data.size());
    const double gk = gamma_k(double(g.cin * g.kh * g.kw) + 2);
    for (std::size_t i = 0; i < bound.size(); ++i) bound[i] = gk * mag.data[i] + 1e-30;
    expect_within(y, std::vector<double>(ref.data.begin(), ref.data.end()), bound, "forward y");
  }

  // exact sums of |terms| for the three gradients
  nn::Tensor<double> mdx(xs), mdw(ws), mdb({g.cout});
  nn::conv2d_backward(aX, aW, aDY, a, &mdx, &mdw, &mdb);
  nn::Tensor<double> rdx(xs), rdw(ws), rdb({g.cout});
  if (c.accumulate) rdx.set(dx0.d);
  rdw.set(dw0.d);
  rdb.set(db0.d);
  nn::conv2d_backward(X, W, DY, a, &rdx, &rdw, &rdb);

  // backward-data: at most cout kh kw terms per input element, plus the value accumulated into
  {
    std::vector<float> dx = c.accumulate ? dx0.f : std::vector<float>(dx0.f.size(), NAN);
    nnd::conv2d_backward_data(ctx, arena, g, dy.f.data(), w.f.data(), dx.data(), c.accumulate);
    std::vector<double> bound(dx.size());
    const double gk = gamma_k(double(g.cout * g.kh * g.kw) + 2);
    for (std::size_t i = 0; i < bound.size(); ++i)
      bound[i] = gk * (mdx.data[i] + (c.accumulate ? std::fabs(dx0.d[i]) : 0.0)) + 1e-30;
    expect_within(dx, std::vector<double>(rdx.data.begin(), rdx.data.end()), bound, "dx");
  }

  // backward-weights: n ho wo terms per weight (and bias), always added to what is there
  {
    std::vector<float> dw = dw0.f, db = db0.f;
    nnd::conv2d_backward_weights(ctx, arena, g, x.f.data(), dy.f.data(), dw.data(), c.bias ? db.data() : nullptr);
    const double gk = gamma_k(double(g.n * g.ho() * g.wo()) + 2);
    std::vector<double> bw(dw.size()), bb(db.size());
    for (std::size_t i = 0; i < bw.size(); ++i) bw[i] = gk * (mdw.data[i] + std::fabs(dw0.d[i])) + 1e-30;
    for (std::size_t i = 0; i < bb.size(); ++i) bb[i] = gk * (mdb.data[i] + std::fabs(db0.d[i])) + 1e-30;
    expect_within(dw, std::vector<double>(rdw.data.begin(), rdw.data.end()), bw, "dweight");
    if (c.bias) expect_within(db, std::vector<double>(rdb.data.begin(), rdb.data.end()), bb, "dbias");
    else EXPECT_EQ(db, db0.f) << "dbias was not asked for";
  }
  EXPECT_EQ(arena.mark().live, 0u) << "the arena is rewound after each call";
}


std::vector<ConvCase> conv_cases() {
  std::vector<ConvCase> cases;
  auto add = [&](std::int64_t n, std::int64_t cin, std::int64_t h, std::int64_t w, std::int64_t cout, std::int64_t k,
                 std::int64_t s, std::int64_t p, std::int64_t d, bool bias, bool acc) {
    cases.push_back({nnd::ConvGeometry{n, cin, h, w, cout, k, k, s, p, d}, bias, acc});
  };
  // The attention head: one 3x3 weight with dilation = padding 1, 2, 3.
  for (std::int64_t d = 1; d <= 3; ++d) add(2, 16, 14, 14, 16, 3, 1, d, d, d == 2, d != 2);
  add(3, 8, 12, 12, 24, 1, 1, 0, 1, true, false);    // 1x1 (pointwise)
  add(2, 24, 12, 11, 32, 1, 2, 0, 1, false, true);   // 1x1 stride 2 (ResNet downsample)
  add(2, 3, 32, 32, 16, 7, 2, 3, 1, false, false);   // 7x7 stride-2 stem on RGB
  add(1, 3, 23, 29, 8, 7, 2, 3, 1, true, true);      // odd sizes
  add(4, 16, 16, 16, 32, 3, 2, 1, 1, false, false);  // 3x3 stride 2
  add(1, 5, 3, 3, 7, 3, 1, 0, 1, true, false);       // a single output pixel
  // Randomised shapes (fixed seed): kernel 1/3/5/7, stride 1-2, padding 0-3, dilation 1-3.
  const std::uint64_t seed = 20240612;
  for (std::uint64_t t = 0; cases.size() < 40; ++t) {
    const std::uint64_t s = seed + 97 * t;
    const std::int64_t k = 2 * pick(s, 0, 0, 3) + 1, d = pick(s, 1, 1, 3), p = pick(s, 2, 0, 3), st = pick(s, 3, 1, 2);
    const std::int64_t h = pick(s, 4, 4, 17), w = pick(s, 5, 4, 17);
    const nnd::ConvGeometry g{pick(s, 6, 1, 8), pick(s, 7, 1, 20), h, w, pick(s, 8, 1, 20), k, k, st, p, d};
    if (g.ho() < 1 || g.wo() < 1) continue;
    cases.push_back({g, pick(s, 9, 0, 1) == 1, pick(s, 10, 0, 1) == 1});
  }
  return cases;
}

TEST(NnDnnl, ConvolutionMatchesReferenceBothLayouts) {
  for (const nnd::Layout layout : {nnd::Layout::plain, nnd::Layout::blocked}) {
    SCOPED_TRACE(layout == nnd::Layout::plain ? "plain layout" : "blocked layout");
    nnd::Context ctx(nnd::Layouts{layout, layout, layout, layout});
    std::uint64_t seed = 1;
    for (const auto& c : conv_cases()) check_conv(ctx, c, seed += 10);
  }
}

TEST(NnDnnl, DefaultLayoutsMatchReference) {
  nnd::Context ctx;
  std::uint64_t seed = 500;
  for (const auto& c : conv_cases()) check_conv(ctx, c, seed += 10);
}

TEST(NnDnnl, SharedWeightGradientsAccumulate) {
  // One 3x3 weight used at dilation 1, 2, 3 (the attention head): three backward-weights calls add up.
  nnd::Context ctx;
  nn::Arena arena;
  const std::int64_t n = 2, c = 4, h = 9;
  const Data x = random_data(n * c * h * h, 71), w = random_data(c * c * 9, 72), dy = random_data(n * c * h * h, 73);
  std::vector<float> dw(w.f.size(), 0.f);
  nn::Tensor<double> ref({c, c, 3, 3});
  const auto X = tensor({n, c, h, h}, x.d), W = tensor({c, c, 3, 3}, w.d), DY = tensor({n, c, h, h}, dy.d);
  for (std::int64_t d = 1; d <= 3; ++d) {
    const nnd::ConvGeometry g{n, c, h, h, c, 3, 3, 1, d, d};
    nnd::conv2d_backward_weights(ctx, arena, g, x.f.data(), dy.f.data(), dw.data(), nullptr);
    nn::conv2d_backward(X, W, DY, {1, d, d}, nullptr, &ref, nullptr);
  }
  // three sums of n h h = 162 terms each, each added into the running total
  std::vector<double> bound(dw.size(), gamma_k(3 * (n * h * h + 2)) * 3 * n * h * h);
  expect_within(dw, std::vector<double>(ref.data.begin(), ref.data.end()), bound, "shared dweight");
}

// ---- batch norm ---------------------------------------------------------------------------------

// x (n, c, h, w) (BnShape, support/layer_bounds.h); the oneDNN call sees (n, c, p = h w).
struct BnCase {
  BnShape g;
  bool accumulate;
};

void check_batchnorm(const BnCase& bc, bool fuse_relu, nnd::Layout layout, std::uint64_t seed) {
  const auto& g = bc.g;
  SCOPED_TRACE(::testing::Message() << "x (" << g.n << ", " << g.c << ", " << g.h << ", " << g.w << ")"
                                    << (bc.accumulate ? " accumulate" : " overwrite") << (fuse_relu ? " relu" : "")
                                    << (layout == nnd::Layout::plain ? " plain" : " blocked"));
  const std::int64_t P = g.h * g.w, M = g.n * P, numel = g.numel();
  const std::vector<std::int64_t> xs{g.n, g.c, g.h, g.w};
  // an offset mean (|mu| ~ 2 sigma) so the variance formula matters
  const Data x = random_data(numel, seed, -1, 4), ga = random_data(g.c, seed + 1, 0.5, 1.5),
             be = random_data(g.c, seed + 2), dy = random_data(numel, seed + 3), dx0 = random_data(numel, seed + 4),
             rm0 = random_data(g.c, seed + 5, -0.2, 0.2), rv0 = random_data(g.c, seed + 6, 0.5, 2),
             dg0 = random_data(g.c, seed + 7), db0 = random_data(g.c, seed + 8);
  const double momentum = 0.1;
  const nnd::BnGeometry bg{g.n, g.c, g.h * g.w, 1e-5, fuse_relu};
  nnd::Layouts layouts;
  layouts.batchnorm = layout;
  nnd::Context ctx(layouts);
  nn::Arena arena;
  const auto X = tensor(xs, x.d), G = tensor({g.c}, ga.d), B = tensor({g.c}, be.d);
  std::vector<double> mean, var;
  channel_stats(g, x.d, mean, var);
  const BnBounds eb = bn_bounds(g, x.d, mean, var, bg.eps);

  // ---- training forward ----
  nn::Tensor<double> rrm = tensor({g.c}, rm0.d), rrv = tensor({g.c}, rv0.d);
  nn::BatchNormCache<double> cache;
  nn::BatchNormState st;
  st.training = true;
  auto yref = nn::batchnorm2d_forward(X, G, B, rrm, rrv, st, &cache);
  std::vector<float> y(numel, NAN), smean(g.c, NAN), svar(g.c, NAN), rm = rm0.f, rv = rv0.f;
  std::vector<unsigned char> ws(nnd::batchnorm_relu_workspace_bytes(ctx, bg));
  EXPECT_EQ(ws.empty(), !fuse_relu);
  nnd::batchnorm_forward(ctx, arena, bg, true, momentum, x.f.data(), ga.f.data(), be.f.data(), rm.data(), rv.data(),
                         smean.data(), svar.data(), y.data(), fuse_relu ? ws.data() : nullptr);
  {
    std::vector<double> by(numel), ref(numel);
    for (std::int64_t i = 0; i < numel; ++i) {
      const std::int64_t c = (i / P) % g.c;
      const double inv = 1 / std::sqrt(var[c] + bg.eps), xm = std::fabs(x.d[i] - mean[c]);
      by[i] = 2 * (std::fabs(ga.d[c]) * inv * (eb.e_mu[c] + xm * eb.rel_inv[c]) +
                   4 * kU * (std::fabs(ga.d[c]) * xm * inv + std::fabs(be.d[c])));
      ref[i] = fuse_relu ? std::max(yref.data[i], 0.0) : yref.data[i];
    }
    expect_within(y, ref, by, "training y");
    std::vector<double> bm(g.c), bv(g.c), brm(g.c), brv(g.c);
    const double unbias = double(M) / double(M - 1);
    for (std::int64_t c = 0; c < g.c; ++c) {
      bm[c] = 2 * eb.e_mu[c] + kU * std::fabs(mean[c]);
      bv[c] = 2 * eb.e_var[c] + kU * var[c];
      brm[c] = momentum * bm[c] + 3 * kU * (std::fabs(rm0.d[c]) + std::fabs(mean[c]));
      brv[c] = momentum * unbias * bv[c] + 3 * kU * (rv0.d[c] + var[c] * unbias);
    }
    expect_within(smean, mean, bm, "saved mean");
    expect_within(svar, var, bv, "saved (biased) variance");
    expect_within(rm, std::vector<double>(rrm.data.begin(), rrm.data.end()), brm, "running_mean");
    expect_within(rv, std::vector<double>(rrv.data.begin(), rrv.data.end()), brv, "running_var (unbiased)");
    // PyTorch's rule, written out: the reference must agree with it too (it is what both follow)
    EXPECT_NEAR(rrv.data[0], 0.9 * rv0.d[0] + 0.1 * var[0] * unbias, 1e-12);
  }

  // ---- training backward: oneDNN's own forward statistics and mask, the reference its own ----
  {
    // With the fused ReLU, dy reaches the batch norm where oneDNN's output was positive.
    std::vector<double> dyd = dy.d;
    if (fuse_relu)
      for (std::int64_t i = 0; i < numel; ++i)
        if (!(y[i] > 0)) dyd[i] = 0;
    const auto DY = tensor(xs, dyd);
    nn::Tensor<double> rdx(xs), rdg = tensor({g.c}, dg0.d), rdb = tensor({g.c}, db0.d);
    if (bc.accumulate) rdx.set(dx0.d);
    nn::batchnorm2d_backward(X, G, DY, cache, true, &rdx, &rdg, &rdb);
    std::vector<float> dx = bc.accumulate ? dx0.f : std::vector<float>(numel, NAN), dg = dg0.f, db = db0.f;
    nnd::batchnorm_backward(ctx, arena, bg, true, x.f.data(), ga.f.data(), smean.data(), svar.data(), dy.f.data(),
                            dx.data(), bc.accumulate, dg.data(), db.data(), fuse_relu ? ws.data() : nullptr);
    // x_hat differs from the exact one by e_xh <= invstd (e_mu' + |x - mu| rel') with the saved
    // statistics' own errors (bounded above); dbeta, dgamma are M-term sums; dx combines them.
    std::vector<double> bdg(g.c), bdb(g.c), bdx(numel), A0(g.c, 0), A1(g.c, 0), exh(numel), r(numel);
    for (std::int64_t i = 0; i < numel; ++i) {
      const std::int64_t c = (i / P) % g.c;
      const double inv = 1 / std::sqrt(var[c] + bg.eps), xh = std::fabs(x.d[i] - mean[c]) * inv;
      exh[i] = 2 * inv * (eb.e_mu[c] + std::fabs(x.d[i] - mean[c]) * eb.rel_inv[c]) + 4 * kU * (xh + 1);
      r[i] = xh + 1;
      A0[c] += std::fabs(dyd[i]);
      A1[c] += std::fabs(dyd[i]) * (xh + exh[i]);
    }
    for (std::int64_t c = 0; c < g.c; ++c) {
      bdb[c] = gamma_k(double(M) + 2) * (A0[c] + std::fabs(db0.d[c]));
      double sx = 0;
      for (std::int64_t n = 0; n < g.n; ++n)
        for (std::int64_t p = 0; p < P; ++p) sx += std::fabs(dyd[(n * g.c + c) * P + p]) * exh[(n * g.c + c) * P + p];
      bdg[c] = gamma_k(double(M) + 4) * (A1[c] + std::fabs(dg0.d[c])) + sx;
    }
    for (std::int64_t i = 0; i < numel; ++i) {
      const std::int64_t c = (i / P) % g.c;
      const double inv = 1 / std::sqrt(var[c] + bg.eps), k = std::fabs(ga.d[c]) * inv;
      const double sdyxh = std::fabs(rdg.data[c] - dg0.d[c]);
      bdx[i] = 2 * (k * (4 * kU * std::fabs(dyd[i]) + (bdb[c] + r[i] * bdg[c] + sdyxh * exh[i]) / double(M) +
                         eb.rel_inv[c] * (std::fabs(dyd[i]) + (A0[c] + r[i] * A1[c]) / double(M)))) +
               2 * kU * (std::fabs(rdx.data[i]) + (bc.accumulate ? std::fabs(dx0.d[i]) : 0.0));
    }
    expect_within(dx, std::vector<double>(rdx.data.begin(), rdx.data.end()), bdx, "training dx");
    expect_within(dg, std::vector<double>(rdg.data.begin(), rdg.data.end()), bdg, "training dgamma");
    expect_within(db, std::vector<double>(rdb.data.begin(), rdb.data.end()), bdb, "training dbeta");
  }

  // ---- evaluation forward and backward (running statistics, no fused ReLU workspace) ----
  if (!fuse_relu) {
    st.training = false;
    nn::Tensor<double> erm = tensor({g.c}, rm0.d), erv = tensor({g.c}, rv0.d);
    nn::BatchNormCache<double> ecache;
    const auto eref = nn::batchnorm2d_forward(X, G, B, erm, erv, st, &ecache);
    std::vector<float> ey(numel, NAN), esm(g.c, NAN), esv(g.c, NAN), frm = rm0.f, frv = rv0.f;
    nnd::batchnorm_forward(ctx, arena, bg, false, momentum, x.f.data(), ga.f.data(), be.f.data(), frm.data(),
                           frv.data(), esm.data(), esv.data(), ey.data());
    EXPECT_EQ(frm, rm0.f) << "evaluation leaves the running statistics alone";
    EXPECT_EQ(frv, rv0.f) << "evaluation leaves the running statistics alone";
    EXPECT_EQ(esm, rm0.f) << "evaluation saves the running statistics for backward";
    EXPECT_EQ(esv, rv0.f) << "evaluation saves the running statistics for backward";
    std::vector<double> bey(numel);
    for (std::int64_t i = 0; i < numel; ++i) {
      const std::int64_t c = (i / P) % g.c;
      const double inv = 1 / std::sqrt(rv0.d[c] + bg.eps);
      bey[i] = 8 * kU * ((std::fabs(x.d[i]) + std::fabs(rm0.d[c])) * std::fabs(ga.d[c]) * inv + std::fabs(be.d[c]));
    }
    expect_within(ey, std::vector<double>(eref.data.begin(), eref.data.end()), bey, "evaluation y");

    const auto DY = tensor(xs, dy.d);
    nn::Tensor<double> rdx(xs), rdg(std::vector<std::int64_t>{g.c}), rdb(std::vector<std::int64_t>{g.c});
    if (bc.accumulate) rdx.set(dx0.d);
    nn::batchnorm2d_backward(X, G, DY, ecache, false, &rdx, &rdg, &rdb);
    std::vector<float> dx = bc.accumulate ? dx0.f : std::vector<float>(numel, NAN), dg(g.c, 0.f), db(g.c, 0.f);
    nnd::batchnorm_backward(ctx, arena, bg, false, x.f.data(), ga.f.data(), esm.data(), esv.data(), dy.f.data(),
                            dx.data(), bc.accumulate, dg.data(), db.data());
    std::vector<double> bdx(numel), bdg(g.c, 0), bdb(g.c, 0);
    for (std::int64_t i = 0; i < numel; ++i) {
      const std::int64_t c = (i / P) % g.c;
      const double inv = 1 / std::sqrt(rv0.d[c] + bg.eps), xh = (std::fabs(x.d[i]) + std::fabs(rm0.d[c])) * inv;
      bdx[i] = 6 * kU * (std::fabs(ga.d[c]) * inv * std::fabs(dy.d[i]) + (bc.accumulate ? std::fabs(dx0.d[i]) : 0.0));
      bdg[c] += std::fabs(dy.d[i]) * xh;
      bdb[c] += std::fabs(dy.d[i]);
    }
    for (std::int64_t c = 0; c < g.c; ++c) bdg[c] *= gamma_k(double(M) + 6), bdb[c] *= gamma_k(double(M) + 2);
    expect_within(dx, std::vector<double>(rdx.data.begin(), rdx.data.end()), bdx, "evaluation dx");
    expect_within(dg, std::vector<double>(rdg.data.begin(), rdg.data.end()), bdg, "evaluation dgamma");
    expect_within(db, std::vector<double>(rdb.data.begin(), rdb.data.end()), bdb, "evaluation dbeta");
  }
  EXPECT_EQ(arena.mark().live, 0u) << "the arena is rewound after each call";
}

TEST(NnDnnl, BatchNormMatchesReference) {
  // channel counts below, at and above the 8 / 16 of the blocked layouts (padding channels)
  std::uint64_t seed = 900;
  for (const nnd::Layout layout : {nnd::Layout::plain, nnd::Layout::blocked})
    for (const BnCase& c : {BnCase{{2, 3, 5, 7}, false}, BnCase{{8, 16, 8, 8}, true}, BnCase{{1, 5, 1, 2}, true},
                            BnCase{{4, 12, 13, 11}, false}, BnCase{{32, 16, 8, 8}, true}, BnCase{{3, 19, 4, 4}, false}})
      for (bool relu : {false, true}) check_batchnorm(c, relu, layout, seed += 20);
}

// ---- cache, threads, errors ---------------------------------------------------------------------

TEST(NnDnnl, RepeatedGeometryCreatesNoPrimitive) {
  nnd::Context ctx;
  nn::Arena arena;
  const nnd::ConvGeometry g{2, 8, 10, 10, 16, 3, 3, 1, 1, 1};
  std::vector<float> x(g.x_numel(), 0.5f), w(g.weight_numel(), 0.25f), y(g.y_numel()), dx(g.x_numel()),
      dw(g.weight_numel()), db(g.cout);
  auto all = [&] {
    nnd::conv2d_forward(ctx, arena, g, x.data(), w.data(), nullptr, y.data());
    nnd::conv2d_backward_data(ctx, arena, g, y.data(), w.data(), dx.data(), true);
    nnd::conv2d_backward_weights(ctx, arena, g, x.data(), y.data(), dw.data(), db.data());
  };
  all();
  const std::int64_t created = ctx.primitives_created();
  const std::size_t entries = ctx.cached_geometries();
  EXPECT_GT(created, 2);
  EXPECT_EQ(entries, 3u);
  all();
  all();
  EXPECT_EQ(ctx.primitives_created(), created) << "a repeated geometry must reuse its primitives";
  EXPECT_EQ(ctx.cached_geometries(), entries);
  // Another stride is another geometry; the accumulate flag selects another backward-data entry.
  nnd::conv2d_forward(ctx, arena, {2, 8, 10, 10, 16, 3, 3, 2, 1, 1}, x.data(), w.data(), nullptr, y.data());
  nnd::conv2d_backward_data(ctx, arena, g, y.data(), w.data(), dx.data(), false);
  EXPECT_EQ(ctx.cached_geometries(), entries + 2);
  EXPECT_GT(ctx.primitives_created(), created);

  const nnd::BnGeometry bg{2, 8, 100, 1e-5, true};
  std::vector<float> gm(8, 1.f), bt(8, 0.f), m(8), v(8), rm(8, 0.f), rv(8, 1.f), dg(8), dbt(8);
  std::vector<unsigned char> ws(nnd::batchnorm_relu_workspace_bytes(ctx, bg));
  auto bn = [&] {
    nnd::batchnorm_forward(ctx, arena, bg, true, 0.1, x.data(), gm.data(), bt.data(), rm.data(), rv.data(), m.data(),
                           v.data(), y.data(), ws.data());
    nnd::batchnorm_backward(ctx, arena, bg, true, x.data(), gm.data(), m.data(), v.data(), y.data(), dx.data(), false,
                            dg.data(), dbt.data(), ws.data());
  };
  bn();
  const std::int64_t bn_created = ctx.primitives_created();
  bn();
  EXPECT_EQ(ctx.primitives_created(), bn_created);
}

#if defined(_OPENMP)
TEST(NnDnnl, ThreadCountIsPartOfTheGeometry) {
  // oneDNN's OpenMP kernels are built for the thread count at creation; another count gets its own.
  const int before = omp_get_max_threads();
  nnd::Context ctx;
  nn::Arena arena;
  const nnd::ConvGeometry g{2, 8, 10, 10, 8, 3, 3, 1, 1, 1};
  std::vector<float> x(g.x_numel(), 1.f), w(g.weight_numel(), 1.f), y1(g.y_numel()), y2(g.y_numel());
  omp_set_num_threads(1);
  nnd::conv2d_forward(ctx, arena, g, x.data(), w.data(), nullptr, y1.data());
  omp_set_num_threads(2);
  nnd::conv2d_forward(ctx, arena, g, x.data(), w.data(), nullptr, y2.data());
  omp_set_num_threads(before);
  EXPECT_EQ(ctx.cached_geometries(), 2u);
  EXPECT_EQ(y1, y2);
}
#endif

bool has(const std::string& msg, const char* part) { return msg.find(part) != std::string::npos; }

TEST(NnDnnl, BadGeometryThrowsWithSizes) {
  std::string msg = tt::invalid_argument_message([] { nnd::conv2d_geometry({2, 5, 8, 8}, {4, 3, 3, 3}, 1, 1, 1); });
  EXPECT_TRUE(has(msg, "weight (4, 3, 3, 3) expects 3 input channels but x (2, 5, 8, 8) has 5")) << msg;
  msg = tt::invalid_argument_message([] { nnd::conv2d_geometry({2, 3, 4, 4}, {8, 3, 7, 7}, 1, 1, 1); });
  EXPECT_TRUE(has(msg, "the output would be 0 x 0: input 4 x 4 with padding 1 is smaller than the kernel 7 x 7"))
      << msg;
  msg = tt::invalid_argument_message([] { nnd::conv2d_geometry({2, 3, 8}, {8, 3, 3, 3}, 1, 1, 1); });
  EXPECT_TRUE(has(msg, "x must have 4 dimensions (N, C, H, W), got (2, 3, 8)")) << msg;

  nnd::Context ctx;
  nn::Arena arena;
  std::vector<float> buf(4096);
  msg = tt::invalid_argument_message([&] {
    nnd::conv2d_forward(ctx, arena, {1, 2, 3, 3, 2, 3, 3, 1, 0, 2}, buf.data(), buf.data(), nullptr, buf.data());
  });
  EXPECT_TRUE(has(msg, "dnnl::conv2d_forward: the output would be 0 x 0")) << msg;
  EXPECT_TRUE(has(msg, "dilation 2")) << msg;
  msg = tt::invalid_argument_message([&] {
    nnd::conv2d_backward_data(ctx, arena, {1, 2, 8, 8, 2, 3, 3, 0, 1, 1}, buf.data(), buf.data(), buf.data(), false);
  });
  EXPECT_TRUE(has(msg, "stride and dilation must be >= 1 and padding >= 0, got x (1, 2, 8, 8), weight (2, 2, 3, 3), "
                       "stride 0"))
      << msg;
  msg = tt::invalid_argument_message([&] {
    nnd::conv2d_backward_weights(ctx, arena, {1, 0, 8, 8, 2, 3, 3, 1, 1, 1}, buf.data(), buf.data(), buf.data(),
                                 nullptr);
  });
  EXPECT_TRUE(has(msg, "every size must be >= 1, got x (1, 0, 8, 8)")) << msg;
  float* p = buf.data();
  msg = tt::invalid_argument_message(
      [&] { nnd::batchnorm_forward(ctx, arena, {2, 0, 16}, true, 0.1, p, p, p, p, p, p, p, p); });
  EXPECT_TRUE(has(msg, "dnnl::batchnorm_forward: every size must be >= 1, got x (2, 0, 16)")) << msg;
  msg = tt::invalid_argument_message(
      [&] { nnd::batchnorm_forward(ctx, arena, {2, 3, 16, 0.0}, true, 0.1, p, p, p, p, p, p, p, p); });
  EXPECT_TRUE(has(msg, "eps must be > 0 (and a float), got 0")) << msg;
  msg = tt::invalid_argument_message(
      [&] { nnd::batchnorm_forward(ctx, arena, {2, 3, 16, 1e-5, true}, true, 0.1, p, p, p, p, p, p, p, p); });
  EXPECT_TRUE(has(msg, "fuse_relu needs a workspace")) << msg;
  msg = tt::invalid_argument_message([&] {
    nnd::batchnorm_backward(ctx, arena, {2, 3, 16, 1e-5, true}, false, p, p, p, p, p, p, false, p, p, p);
  });
  EXPECT_TRUE(has(msg, "fuse_relu needs training = true and the forward's relu_workspace")) << msg;
  EXPECT_EQ(ctx.primitives_created(), 0) << "nothing is created for a refused call";
}

}  // namespace
