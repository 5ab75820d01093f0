// Example-trainer layers (examples/nn/layers.h): finite differences in double, PyTorch golden data,
// weight sharing, and bad shapes.
#include <gtest/gtest.h>

#include <functional>
#include <string>
#include <vector>

#include "nn/layers.h"
#include "support/test_support.h"

namespace {
namespace tt = tasn::test;
namespace nn = tasn::nn;
using T = double;

nn::Tensor<T> rnd(std::vector<std::int64_t> shape, std::uint64_t seed, double lo = -1, double hi = 1) {
  nn::Tensor<T> t(std::move(shape));
  t.set(tt::random_tensor(t.numel(), seed, lo, hi));
  return t;
}

// Checks the analytic gradient `g` of L(v) = sum(w * f(v)) against central differences.
void expect_grad(const std::function<nn::Tensor<T>(const nn::Tensor<T>&)>& f, const nn::Tensor<T>& v,
                 const nn::Tensor<T>& w, const nn::Tensor<T>& g, const char* what, double tol = 1e-7) {
  auto loss = [&](const std::vector<double>& d) {
    nn::Tensor<T> t = v;
    t.set(d);
    return tt::weighted_sum(f(t).data, w.data);
  };
  const auto num = tt::numeric_gradient(loss, std::vector<double>(v.data.begin(), v.data.end()), 1e-6);
  EXPECT_LT(tt::relative_error(g.data, num), tol) << what;
  EXPECT_GT(tt::max_abs(num), 1e-6) << what << ": gradient unexpectedly zero";
}

TEST(NnLayers, Conv2dGradients) {
  struct Case {
    nn::Conv2dArgs a;
    std::int64_t k;
  };
  // 3x3 through im2col; 1x1 stride 1 through the per-sample GEMM path, 1x1 stride 2 through im2col
  for (const auto& [a, k] : {Case{{1, 0, 1}, 3}, Case{{2, 1, 1}, 3}, Case{{1, 2, 2}, 3}, Case{{2, 3, 3}, 3},
                             Case{{1, 0, 1}, 1}, Case{{2, 0, 1}, 1}}) {
    SCOPED_TRACE(::testing::Message() << "k " << k << " stride " << a.stride << " pad " << a.padding << " dilation " << a.dilation);
    const auto x = rnd({2, 3, 7, 6}, 1), wt = rnd({4, 3, k, k}, 2), b = rnd({4}, 3);
    const auto y = nn::conv2d_forward(x, wt, &b, a);
    const auto w = rnd(y.shape, 4);
    nn::Tensor<T> dx(x.shape), dw(wt.shape), db(b.shape);
    nn::conv2d_backward(x, wt, w, a, &dx, &dw, &db);
    expect_grad([&](const nn::Tensor<T>& v) { return nn::conv2d_forward(v, wt, &b, a); }, x, w, dx, "dx");
    expect_grad([&](const nn::Tensor<T>& v) { return nn::conv2d_forward(x, v, &b, a); }, wt, w, dw, "dweight");
    expect_grad([&](const nn::Tensor<T>& v) { return nn::conv2d_forward(x, wt, &v, a); }, b, w, db, "dbias");
  }
}

// y[n][o][oy][ox] = b[o] + sum over (c, ky, kx) inside the input: the definition, in double.
nn::Tensor<T> naive_conv(const nn::Tensor<T>& x, const nn::Tensor<T>& w, const nn::Tensor<T>& b, const nn::Conv2dArgs& a) {
  const std::int64_t N = x.dim(0), C = x.dim(1), H = x.dim(2), W = x.dim(3), O = w.dim(0), K = w.dim(2);
  const std::int64_t Ho = (H + 2 * a.padding - a.dilation * (K - 1) - 1) / a.stride + 1;
  const std::int64_t Wo = (W + 2 * a.padding - a.dilation * (K - 1) - 1) / a.stride + 1;
  nn::Tensor<T> y({N, O, Ho, Wo});
  for (std::int64_t n = 0; n < N; ++n)
    for (std::int64_t o = 0; o < O; ++o)
      for (std::int64_t oy = 0; oy < Ho; ++oy)
        for (std::int64_t ox = 0; ox < Wo; ++ox) {
          double s = b.data[o];
          for (std::int64_t c = 0; c < C; ++c)
            for (std::int64_t ky = 0; ky < K; ++ky)
              for (std::int64_t kx = 0; kx < K; ++kx) {
                const std::int64_t iy = oy * a.stride - a.padding + ky * a.dilation;
                const std::int64_t ix = ox * a.stride - a.padding + kx * a.dilation;
                if (iy >= 0 && iy < H && ix >= 0 && ix < W)
                  s += x.data[((n * C + c) * H + iy) * W + ix] * w.data[((o * C + c) * K + ky) * K + kx];
              }
          y.data[((n * O + o) * Ho + oy) * Wo + ox] = s;
        }
  return y;
}

// Padding wider than the input (the attention head's dilation-3 conv on a 1x1 or 2x2 map, which a
// small --att-input gives): once an out-of-bounds write (found by a review), now equal to the definition.
TEST(NnLayers, Conv2dPaddingWiderThanTheInput) {
  struct Case {
    std::int64_t h, w;
    nn::Conv2dArgs a;
  };
  for (const auto& [h, w, a] : {Case{1, 1, {1, 3, 3}}, Case{2, 2, {1, 3, 3}}, Case{1, 2, {1, 2, 2}}, Case{2, 1, {2, 3, 1}},
                                Case{3, 2, {3, 4, 2}}}) {
    SCOPED_TRACE(::testing::Message() << h << "x" << w << " stride " << a.stride << " pad " << a.padding << " dilation " << a.dilation);
    const auto x = rnd({2, 3, h, w}, 11), wt = rnd({4, 3, 3, 3}, 12), b = rnd({4}, 13);
    const auto y = nn::conv2d_forward(x, wt, &b, a);
    auto r = tt::compare(y.data, naive_conv(x, wt, b, a).data, 1e-12, 1e-12);
    EXPECT_TRUE(r.ok) << r.message();
    const auto g = rnd(y.shape, 14);
    nn::Tensor<T> dx(x.shape), dw(wt.shape), db(b.shape);
    nn::conv2d_backward(x, wt, g, a, &dx, &dw, &db);
    expect_grad([&](const nn::Tensor<T>& v) { return naive_conv(v, wt, b, a); }, x, g, dx, "dx");
    expect_grad([&](const nn::Tensor<T>& v) { return naive_conv(x, v, b, a); }, wt, g, dw, "dweight");
  }
}

TEST(NnLayers, SharedWeightsAccumulate) {
  // The TASN attention head: one 3x3 weight applied with dilation 1, 2 and 3, outputs summed.
  const auto x = rnd({1, 2, 9, 9}, 5), wt = rnd({2, 2, 3, 3}, 6);
  auto head = [&](const nn::Tensor<T>& v) {
    auto y = nn::conv2d_forward(x, v, nullptr, {1, 1, 1});
    y = nn::add_forward(y, nn::conv2d_forward(x, v, nullptr, {1, 2, 2}));
    return nn::add_forward(y, nn::conv2d_forward(x, v, nullptr, {1, 3, 3}));
  };
  const auto w = rnd(head(wt).shape, 7);
  nn::Tensor<T> dw(wt.shape);
  for (std::int64_t d = 1; d <= 3; ++d) nn::conv2d_backward(x, wt, w, {1, d, d}, nullptr, &dw, nullptr);
  expect_grad(head, wt, w, dw, "shared weight");
}

TEST(NnLayers, BatchNormGradients) {
  const auto x = rnd({3, 4, 3, 5}, 8, -2, 3), gamma = rnd({4}, 9, 0.5, 1.5), beta = rnd({4}, 10);
  for (bool training : {true, false}) {
    SCOPED_TRACE(training ? "training" : "evaluation");
    nn::BatchNormState s;
    s.training = training;
    auto rm = rnd({4}, 11, -0.2, 0.2), rv = rnd({4}, 12, 0.5, 2.0);
    auto f = [&](const nn::Tensor<T>& v, const nn::Tensor<T>& g, const nn::Tensor<T>& b) {
      auto rm2 = rm, rv2 = rv;  // forward updates running stats: keep them fixed across probes
      return nn::batchnorm2d_forward(v, g, b, rm2, rv2, s, nullptr);
    };
    nn::BatchNormCache<T> cache;
    auto rm2 = rm, rv2 = rv;
    const auto y = nn::batchnorm2d_forward(x, gamma, beta, rm2, rv2, s, &cache);
    const auto w = rnd(y.shape, 13);
    nn::Tensor<T> dx(x.shape), dg(gamma.shape), dbt(beta.shape);
    nn::batchnorm2d_backward(x, gamma, w, cache, training, &dx, &dg, &dbt);
    expect_grad([&](const nn::Tensor<T>& v) { return f(v, gamma, beta); }, x, w, dx, "dx");
    expect_grad([&](const nn::Tensor<T>& v) { return f(x, v, beta); }, gamma, w, dg, "dgamma");
    expect_grad([&](const nn::Tensor<T>& v) { return f(x, gamma, v); }, beta, w, dbt, "dbeta");
    if (training) {  // running statistics moved towards the batch ones (PyTorch: unbiased variance)
      double m = 0;
      for (std::int64_t n = 0; n < 3; ++n)
        for (std::int64_t p = 0; p < 15; ++p) m += x.data[(n * 4 + 0) * 15 + p];
      m /= 45;
      EXPECT_NEAR(rm2.data[0], 0.9 * rm.data[0] + 0.1 * m, 1e-12);
    }
  }
}

TEST(NnLayers, PoolingLinearResizeReluGradients) {
  const auto x = rnd({2, 3, 7, 8}, 14);
  std::vector<std::int64_t> am;
  const auto p = nn::maxpool2d_forward(x, {3, 2, 1}, &am);
  EXPECT_EQ(p.shape, (std::vector<std::int64_t>{2, 3, 4, 4}));
  auto w = rnd(p.shape, 15);
  nn::Tensor<T> dx(x.shape);
  nn::maxpool2d_backward(w, am, dx);
  expect_grad([&](const nn::Tensor<T>& v) { return nn::maxpool2d_forward(v, {3, 2, 1}, nullptr); },
              x, w, dx, "maxpool");

  const auto g = nn::global_avgpool_forward(x);
  w = rnd(g.shape, 16);
  dx = nn::Tensor<T>(x.shape);
  nn::global_avgpool_backward(w, dx);
  expect_grad([](const nn::Tensor<T>& v) { return nn::global_avgpool_forward(v); }, x, w, dx, "global avgpool");

  const auto f = rnd({4, 6}, 17), lw = rnd({5, 6}, 18), lb = rnd({5}, 19);
  w = rnd({4, 5}, 20);
  nn::Tensor<T> df(f.shape), dlw(lw.shape), dlb(lb.shape);
  nn::linear_backward(f, lw, w, &df, &dlw, &dlb);
  expect_grad([&](const nn::Tensor<T>& v) { return nn::linear_forward(v, lw, &lb); }, f, w, df, "linear dx");
  expect_grad([&](const nn::Tensor<T>& v) { return nn::linear_forward(f, v, &lb); }, lw, w, dlw, "linear dweight");
  expect_grad([&](const nn::Tensor<T>& v) { return nn::linear_forward(f, lw, &v); }, lb, w, dlb, "linear dbias");

  for (bool ac : {true, false}) {
    for (auto [ho, wo] : {std::pair<std::int64_t, std::int64_t>{11, 5}, {3, 13}}) {
      const auto r = nn::resize_bilinear_forward(x, ho, wo, ac);
      w = rnd(r.shape, 21);
      dx = nn::Tensor<T>(x.shape);
      nn::resize_bilinear_backward(w, ac, dx);
      expect_grad([&](const nn::Tensor<T>& v) { return nn::resize_bilinear_forward(v, ho, wo, ac); }, x, w, dx,
                  ac ? "resize align_corners" : "resize half-pixel");
    }
  }

  const auto rx = rnd({2, 3, 4, 4}, 22);
  w = rnd(rx.shape, 23);
  dx = nn::Tensor<T>(rx.shape);
  nn::relu_backward(rx, w, dx);
  expect_grad([](const nn::Tensor<T>& v) { return nn::relu_forward(v); }, rx, w, dx, "relu");
}

TEST(NnLayers, ConcatSlice) {
  const auto a = rnd({2, 3, 2, 2}, 24), b = rnd({1, 3, 2, 2}, 25);
  const auto c = nn::concat_batch(a, b);
  EXPECT_EQ(c.shape[0], 3);
  EXPECT_EQ(nn::slice_batch(c, 0, 2).data, a.data);
  EXPECT_EQ(nn::slice_batch(c, 2, 1).data, b.data);
}

TEST(NnLayers, MatchesPyTorchGolden) {
  const tt::GoldenFile g(tt::golden_path("nn_layers.bin"));
  const auto x = rnd({2, 3, 9, 8}, 31);
  const auto wt = rnd({4, 3, 3, 3}, 32), b = rnd({4}, 33);
  const auto y = nn::conv2d_forward(x, wt, &b, {2, 2, 2});
  auto r = tt::compare(y.data, g.at("conv").data, 1e-12, 1e-12);
  EXPECT_TRUE(r.ok) << "conv: " << r.message();
  const auto gamma = rnd({3}, 34, 0.5, 1.5), beta = rnd({3}, 35);
  nn::Tensor<T> rm({3}, 0.0), rv({3}, 1.0);
  nn::BatchNormState s;
  const auto bn = nn::batchnorm2d_forward(x, gamma, beta, rm, rv, s, nullptr);
  r = tt::compare(bn.data, g.at("bn_train").data, 1e-10, 1e-10);
  EXPECT_TRUE(r.ok) << "bn train: " << r.message();
  r = tt::compare(rv.data, g.at("bn_running_var").data, 1e-12, 1e-12);
  EXPECT_TRUE(r.ok) << "bn running var: " << r.message();
  s.training = false;
  const auto bne = nn::batchnorm2d_forward(x, gamma, beta, rm, rv, s, nullptr);
  r = tt::compare(bne.data, g.at("bn_eval").data, 1e-10, 1e-10);
  EXPECT_TRUE(r.ok) << "bn eval: " << r.message();
  const auto mp = nn::maxpool2d_forward(x, {3, 2, 1}, nullptr);
  r = tt::compare(mp.data, g.at("maxpool").data, 0, 0);
  EXPECT_TRUE(r.ok) << "maxpool: " << r.message();
  r = tt::compare(nn::resize_bilinear_forward(x, 5, 13, true).data, g.at("resize_ac").data, 1e-12, 1e-12);
  EXPECT_TRUE(r.ok) << "resize align_corners: " << r.message();
  r = tt::compare(nn::resize_bilinear_forward(x, 5, 13, false).data, g.at("resize_hp").data, 1e-12, 1e-12);
  EXPECT_TRUE(r.ok) << "resize half-pixel: " << r.message();
}

TEST(NnLayers, BadShapes) {
  const auto x = rnd({1, 3, 5, 5}, 40), wt = rnd({2, 4, 3, 3}, 41);
  EXPECT_NE(tt::invalid_argument_message([&] { nn::conv2d_forward(x, wt, nullptr, {}); })
                .find("weight (2, 4, 3, 3) expects 4 input channels but x (1, 3, 5, 5) has 3"),
            std::string::npos);
  const auto w2 = rnd({2, 3, 7, 7}, 42);
  EXPECT_NE(tt::invalid_argument_message([&] { nn::conv2d_forward(x, w2, nullptr, {}); }).find("is smaller than the kernel"),
            std::string::npos);
  const auto f = rnd({2, 6}, 43), lw = rnd({5, 7}, 44);
  EXPECT_NE(tt::invalid_argument_message([&] { nn::linear_forward(f, lw, nullptr); }).find("expects 7 features"),
            std::string::npos);
  EXPECT_NE(tt::invalid_argument_message([&] { nn::add_forward(f, lw); }).find("a has shape (2, 6) but b has (5, 7)"),
            std::string::npos);
}

}  // namespace
