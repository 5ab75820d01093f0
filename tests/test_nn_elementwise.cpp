// The per-element math the CPU layers share with the CUDA kernels (examples/nn/elementwise.h), against
// naive references written from the definitions in double, and the CPU layers that call it
// (nn/layers.h relu, relu_grad, maxpool2d and its gradient, resize_bilinear; train/optim.h SGD)
// against naive loops. The GPU kernels run this same math (tests/test_trainer_kernels_gpu.cpp).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "nn/elementwise.h"
#include "nn/layers.h"
#include "support/test_support.h"
#include "train/optim.h"

namespace {
namespace tt = tasn::test;
namespace nn = tasn::nn;

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

template <class T>
std::vector<T> random_values(std::int64_t n, std::uint64_t seed, double lo = -1, double hi = 1) {
  const auto d = tt::random_tensor(n, seed, lo, hi);
  return std::vector<T>(d.begin(), d.end());
}

// Values k / 16 for small integers k: sums and products with power-of-two weights stay exact, and
// ties are frequent (pooling must pick the first maximum).
template <class T>
std::vector<T> grid_values(std::int64_t n, std::uint64_t seed, int range = 8) {
  std::vector<T> v(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i)
    v[i] = static_cast<T>(std::floor(tt::uniform_at(seed, i, -range, range)) / 16.0);
  return v;
}

// Equal as stored values (NaN equals NaN; 0 and -0 differ).
template <class T>
bool same_bits(T a, T b) {
  return std::memcmp(&a, &b, sizeof(T)) == 0;
}
template <class T>
bool same_value(T a, T b) {
  return (std::isnan(a) && std::isnan(b)) || same_bits(a, b);
}

template <class T>
double unit_roundoff() {
  return std::numeric_limits<T>::epsilon() / 2;
}

// ---- ReLU ----------------------------------------------------------------------------------------

template <class T>
void check_relu_values() {
  const T nan = T(kNaN), inf = T(kInf);
  EXPECT_TRUE(std::isnan(nn::relu_value(nan)));
  EXPECT_TRUE(same_bits(nn::relu_value(T(-0.0)), T(0)));  // -0 <= 0: the output is +0
  EXPECT_EQ(nn::relu_value(inf), inf);
  EXPECT_TRUE(same_bits(nn::relu_value(-inf), T(0)));
  EXPECT_EQ(nn::relu_value(T(1.5)), T(1.5));
  EXPECT_EQ(nn::relu_grad_value(T(2), T(-3)), T(-3));
  EXPECT_EQ(nn::relu_grad_value(T(0), T(-3)), T(0));  // the gradient at 0 is 0, as PyTorch
  EXPECT_EQ(nn::relu_grad_value(nan, T(-3)), T(0));   // a NaN output passes no gradient
  EXPECT_TRUE(std::isnan(nn::relu_grad_value(T(1), nan)));
  EXPECT_EQ(nn::add_relu_value(T(1.25), T(-2)), T(0));
  EXPECT_EQ(nn::add_relu_value(T(1.25), T(2)), T(3.25));
  EXPECT_TRUE(std::isnan(nn::add_relu_value(inf, -inf)));
}

TEST(NnElementwise, ReluValues) {
  check_relu_values<float>();
  check_relu_values<double>();
}

// nn::relu / relu_grad (both branches) over more than one parallel block equal the naive loops.
template <class T>
void check_relu_layers() {
  const std::int64_t n = 100003;
  auto x = random_values<T>(n, 1), dy = random_values<T>(n, 2), dx0 = random_values<T>(n, 3);
  x[7] = T(kNaN);
  x[8] = T(-0.0);
  x[9] = T(kInf);
  std::vector<T> y(n), dx = dx0, dxw(n);
  nn::relu(x.data(), y.data(), n);
  nn::relu_grad(x.data(), dy.data(), dx.data(), n, true);
  nn::relu_grad(x.data(), dy.data(), dxw.data(), n, false);
  for (std::int64_t i = 0; i < n; ++i) {
    const T ry = std::isnan(x[i]) ? x[i] : (x[i] > 0 ? x[i] : T(0));
    const T rg = x[i] > 0 ? dy[i] : T(0);
    ASSERT_TRUE(same_value(y[i], ry)) << i;
    ASSERT_TRUE(same_value(dx[i], T(dx0[i] + rg))) << i;
    ASSERT_TRUE(same_value(dxw[i], rg)) << i;
  }
}

TEST(NnElementwise, ReluLayersMatchNaiveLoops) {
  check_relu_layers<float>();
  check_relu_layers<double>();
}

// ---- SGD -----------------------------------------------------------------------------------------

struct SgdHyper {
  double lr, momentum, wd, rescale;
};

// The update in double from the (float) inputs: v' = mu v + (g r + wd w), w' = w - lr v'.
void sgd_reference(double& w, double& v, double g, const SgdHyper& h, bool momentum) {
  const double d = g * h.rescale + h.wd * w;
  if (momentum) {
    v = h.momentum * v + d;
    w = w - h.lr * v;
  } else {
    w = w - h.lr * d;
  }
}

TEST(NnElementwise, SgdStepMatchesDefinition) {
  using T = float;
  const std::int64_t n = 4001;
  const double u = unit_roundoff<T>();
  for (bool momentum : {true, false}) {
    for (const SgdHyper& h : {SgdHyper{0.1, 0.9, 5e-4, 1.0 / 3}, SgdHyper{0.05, 0.0, 0.0, 1.0},
                              SgdHyper{1.7, 0.99, 0.1, 1.0 / 1024}}) {
      SCOPED_TRACE(::testing::Message() << "momentum buffer " << momentum << ", lr " << h.lr << ", mu "
                                        << h.momentum << ", wd " << h.wd << ", rescale " << h.rescale);
      const auto w0 = random_values<T>(n, 10, -2, 2), v0 = random_values<T>(n, 11), g = random_values<T>(n, 12, -5, 5);
      const T lr = T(h.lr), mu = T(h.momentum), wd = T(h.wd), r = T(h.rescale);
      const SgdHyper hf{lr, mu, wd, r};  // the reference sees the float hyper-parameters
      for (std::int64_t i = 0; i < n; ++i) {
        T w = w0[i], v = v0[i];
        if (momentum) nn::sgd_step(w, v, g[i], lr, mu, wd, r);
        else nn::sgd_step(w, g[i], lr, wd, r);
        double wr = w0[i], vr = v0[i];
        sgd_reference(wr, vr, g[i], hf, momentum);
        // v: at most 3 roundings deep over terms of these sizes (fewer when contracted to an FMA);
        // w: one more rounding, plus lr times the error in v.
        const double scale_v = std::fabs(hf.momentum * v0[i]) * momentum + std::fabs(g[i] * hf.rescale) +
                               std::fabs(hf.wd * w0[i]);
        const double tol_v = 4 * u * scale_v;
        const double tol_w = 2 * u * (std::fabs(double(w0[i])) + std::fabs(hf.lr * (momentum ? vr : scale_v))) +
                             hf.lr * tol_v;
        if (momentum) ASSERT_LE(std::fabs(v - vr), tol_v) << i;
        else ASSERT_EQ(v, v0[i]) << i;  // no buffer: untouched
        ASSERT_LE(std::fabs(w - wr), tol_w) << i;
      }
    }
  }
}

// Power-of-two hyper-parameters on values k / 16: every product and sum is exact in float, so the
// float update equals the double definition bit for bit whatever the compiler contracts.
TEST(NnElementwise, SgdStepExactOnDyadicValues) {
  const std::int64_t n = 1001;
  const auto w0 = grid_values<float>(n, 20), v0 = grid_values<float>(n, 21), g = grid_values<float>(n, 22);
  const SgdHyper h{0.125, 0.5, 0.25, 2.0};
  for (bool momentum : {true, false})
    for (std::int64_t i = 0; i < n; ++i) {
      float w = w0[i], v = v0[i];
      if (momentum) nn::sgd_step(w, v, g[i], 0.125f, 0.5f, 0.25f, 2.0f);
      else nn::sgd_step(w, g[i], 0.125f, 0.25f, 2.0f);
      double wr = w0[i], vr = v0[i];
      sgd_reference(wr, vr, g[i], h, momentum);
      ASSERT_EQ(double(w), wr) << i;
      ASSERT_EQ(double(v), vr) << i;
    }
}

// train::BasicSgd (its fused, parallel loop over the flat parameters) applies nn::sgd_step to every
// element: the same bits as a scalar loop of it.
TEST(NnElementwise, OptimiserLoopIsSgdStep) {
  for (double mu : {0.9, 0.0}) {
    SCOPED_TRACE(::testing::Message() << "momentum " << mu);
    nn::ParamStore<float> store;
    store.add("a", {70001});
    store.add("b", {3, 5});
    nn::FlatParams<float> fp;
    fp.add("m", store);
    fp.allocate();
    const std::int64_t n = fp.trainable_size();
    const auto w0 = random_values<float>(n, 30, -2, 2);
    std::copy(w0.begin(), w0.end(), fp.values());
    tasn::train::BasicSgd<float> opt(fp, {mu, 5e-4});
    std::vector<float> w = w0, v(n, 0.0f);
    for (int k = 0; k < 3; ++k) {
      const auto g = random_values<float>(n, 31 + k, -3, 3);
      std::copy(g.begin(), g.end(), fp.grads());
      const double lr = 0.1 / (k + 1), rescale = 1.0 / 3;
      ASSERT_TRUE(opt.step(lr, rescale));
      for (std::int64_t i = 0; i < n; ++i) {
        if (mu != 0)
          nn::sgd_step(w[i], v[i], g[i], float(lr), float(mu), 5e-4f, float(rescale));
        else
          nn::sgd_step(w[i], g[i], float(lr), 5e-4f, float(rescale));
      }
    }
    for (std::int64_t i = 0; i < n; ++i) ASSERT_TRUE(same_bits(fp.values()[i], w[i])) << i;
  }
}

// ---- max pooling ---------------------------------------------------------------------------------

struct Pool {
  std::int64_t kernel, stride, padding;
};

// The definition: the input elements of the window in row-major window order (padding positions
// are not elements); a NaN among them wins (the last one), otherwise the first largest. No
// elements: (-inf, -1).
template <class T>
std::pair<double, std::int64_t> naive_window_max(const std::vector<T>& x, std::int64_t nc, std::int64_t H,
                                                 std::int64_t W, std::int64_t oy, std::int64_t ox, const Pool& p) {
  std::vector<std::int64_t> members;
  for (std::int64_t ky = 0; ky < p.kernel; ++ky)
    for (std::int64_t kx = 0; kx < p.kernel; ++kx) {
      const std::int64_t iy = oy * p.stride - p.padding + ky, ix = ox * p.stride - p.padding + kx;
      if (iy >= 0 && iy < H && ix >= 0 && ix < W) members.push_back((nc * H + iy) * W + ix);
    }
  std::int64_t at = -1;
  for (std::int64_t i : members)
    if (std::isnan(double(x[i]))) at = i;
  if (at >= 0) return {kNaN, at};
  double best = -kInf;
  for (std::int64_t i : members)
    if (at < 0 || double(x[i]) > best) {
      best = double(x[i]);
      at = i;
    }
  return {best, at};
}

// Data with NaNs, infinities, negatives only (zero padding would win) or many ties.
template <class T>
std::vector<T> pool_data(std::int64_t n, int kind) {
  if (kind == 0) {
    auto x = random_values<T>(n, 40);
    for (std::int64_t i = 3; i < n; i += 17) x[i] = T(kNaN);
    for (std::int64_t i = 5; i < n; i += 23) x[i] = T(kInf);
    for (std::int64_t i = 6; i < n; i += 29) x[i] = T(-kInf);
    return x;
  }
  if (kind == 1) return random_values<T>(n, 41, -3, -1);
  if (kind == 2) return std::vector<T>(static_cast<std::size_t>(n), T(-kInf));
  return grid_values<T>(n, 42, 2);  // few distinct values: ties everywhere
}

// {2, 2, 2}: padding as wide as the window, so the first window holds no element at all.
const Pool kPools[] = {{3, 2, 1}, {2, 2, 0}, {3, 1, 1}, {5, 3, 2}, {1, 1, 0}, {2, 3, 1}, {4, 2, 3}, {2, 2, 2}};

template <class T>
void check_maxpool() {
  const std::int64_t NC = 3, H = 9, W = 8;
  for (int kind = 0; kind < 4; ++kind) {
    const auto x = pool_data<T>(NC * H * W, kind);
    for (const Pool& p : kPools) {
      SCOPED_TRACE(::testing::Message() << "data " << kind << ", kernel " << p.kernel << " stride " << p.stride
                                        << " padding " << p.padding);
      const std::int64_t Ho = (H + 2 * p.padding - p.kernel) / p.stride + 1, Wo = (W + 2 * p.padding - p.kernel) / p.stride + 1;
      ASSERT_EQ(nn::pool_extent(H, p.kernel, p.stride, p.padding), Ho);
      ASSERT_EQ(nn::pool_extent(W, p.kernel, p.stride, p.padding), Wo);
      bool all_padding_seen = false;
      for (std::int64_t nc = 0; nc < NC; ++nc)
        for (std::int64_t oy = 0; oy < Ho; ++oy)
          for (std::int64_t ox = 0; ox < Wo; ++ox) {
            const auto pick = nn::maxpool_window(x.data(), nc, H, W, oy, ox, p.kernel, p.stride, p.padding);
            const auto ref = naive_window_max(x, nc, H, W, oy, ox, p);
            ASSERT_EQ(pick.index, ref.second) << nc << " " << oy << " " << ox;
            ASSERT_TRUE(same_value(double(pick.value), ref.first)) << nc << " " << oy << " " << ox;
            all_padding_seen |= ref.second < 0;
          }
      EXPECT_EQ(all_padding_seen, p.padding >= p.kernel);
      if (all_padding_seen) continue;  // nn::maxpool2d's callers never pool such windows
      // the layer: every output and argmax as the definition
      std::vector<T> y(NC * Ho * Wo);
      std::vector<std::int64_t> am(y.size());
      nn::maxpool2d(NC, H, W, nn::PoolArgs{p.kernel, p.stride, p.padding}, x.data(), y.data(), am.data());
      for (std::int64_t o = 0; o < NC * Ho * Wo; ++o) {
        const auto ref = naive_window_max(x, o / (Ho * Wo), H, W, (o / Wo) % Ho, o % Wo, p);
        ASSERT_EQ(am[o], ref.second) << o;
        ASSERT_TRUE(same_value(double(y[o]), ref.first)) << o;
      }
    }
  }
}

TEST(NnElementwise, MaxPoolWindowAndLayerMatchDefinition) {
  check_maxpool<float>();
  check_maxpool<double>();
}

// pool_windows_containing: exactly the outputs whose window covers the input position.
TEST(NnElementwise, PoolWindowsContaining) {
  for (std::int64_t k = 1; k <= 5; ++k)
    for (std::int64_t s = 1; s <= 4; ++s)
      for (std::int64_t pad = 0; pad <= 3; ++pad)
        for (std::int64_t in = 1; in <= 9; ++in) {
          const std::int64_t out = nn::pool_extent(in, k, s, pad);
          if (out < 1) continue;
          for (std::int64_t i = 0; i < in; ++i) {
            std::int64_t lo, hi;
            nn::pool_windows_containing(i, out, k, s, pad, lo, hi);
            for (std::int64_t o = 0; o < out; ++o) {
              const bool covers = o * s - pad <= i && i <= o * s - pad + k - 1;
              ASSERT_EQ(covers, o >= lo && o < hi) << "k " << k << " s " << s << " pad " << pad << " in " << in
                                                   << " i " << i << " o " << o;
            }
          }
        }
}

// The GPU's gather (one input element at a time) gives the CPU scatter's numbers bit for bit,
// overlapping windows and repeated winners included; and both are the routed sum of the definition.
template <class T>
void check_maxpool_grad() {
  const std::int64_t NC = 4, H = 11, W = 10;
  for (int kind : {0, 3}) {
    const auto x = pool_data<T>(NC * H * W, kind);
    for (const Pool& p : {Pool{3, 1, 1}, Pool{3, 2, 1}, Pool{5, 2, 2}, Pool{2, 2, 0}, Pool{2, 3, 1}}) {
      SCOPED_TRACE(::testing::Message() << "data " << kind << ", kernel " << p.kernel << " stride " << p.stride
                                        << " padding " << p.padding);
      std::int64_t Ho, Wo;
      nn::pool_output(H, W, nn::PoolArgs{p.kernel, p.stride, p.padding}, Ho, Wo);
      std::vector<T> y(NC * Ho * Wo);
      std::vector<std::int64_t> am(y.size());
      nn::maxpool2d(NC, H, W, nn::PoolArgs{p.kernel, p.stride, p.padding}, x.data(), y.data(), am.data());
      const auto dy = random_values<T>(NC * Ho * Wo, 43);
      const auto dx0 = random_values<T>(NC * H * W, 44);
      auto scatter = dx0;
      nn::maxpool2d_grad(NC, Ho * Wo, dy.data(), am.data(), scatter.data());
      // the definition in double, with the sum of |terms| and their count for the rounding bound
      std::vector<double> routed(dx0.begin(), dx0.end()), mass(routed.size()), terms(routed.size(), 1.0);
      for (std::int64_t i = 0; i < NC * H * W; ++i) mass[i] = std::fabs(routed[i]);
      for (std::int64_t o = 0; o < NC * Ho * Wo; ++o) {
        routed[am[o]] += double(dy[o]);
        mass[am[o]] += std::fabs(double(dy[o]));
        terms[am[o]] += 1;
      }
      bool repeated = false;
      for (std::int64_t i = 0; i < NC * H * W; ++i) {
        const std::int64_t nc = i / (H * W), iy = (i / W) % H, ix = i % W;
        const T g = nn::maxpool_grad_gather(dx0[i], dy.data(), am.data(), nc, H, W, Ho, Wo, iy, ix, p.kernel,
                                            p.stride, p.padding);
        ASSERT_TRUE(same_bits(g, scatter[i])) << i;
        ASSERT_NEAR(double(g), routed[i], terms[i] * unit_roundoff<T>() * mass[i]) << i;
        repeated |= std::count(am.begin(), am.end(), i) > 1;
      }
      if (p.stride < p.kernel) {
        EXPECT_TRUE(repeated) << "overlapping windows should share winners";
      }
    }
  }
}

TEST(NnElementwise, MaxPoolGradGatherEqualsScatter) {
  check_maxpool_grad<float>();
  check_maxpool_grad<double>();
}

// ---- bilinear resize -----------------------------------------------------------------------------

struct Tap {
  std::int64_t i0, i1;
  double w1;
};

// PyTorch's definition (upsample_bilinear2d): align_corners maps the corner samples onto each other,
// otherwise half-pixel centres with negative source positions clamped to 0.
Tap naive_tap(std::int64_t dst, std::int64_t in, std::int64_t out, bool align_corners) {
  double src;
  if (align_corners) src = out > 1 ? double(dst) * double(in - 1) / double(out - 1) : 0.0;
  else src = std::max(0.0, (double(dst) + 0.5) * double(in) / double(out) - 0.5);
  const std::int64_t i0 = std::min<std::int64_t>(static_cast<std::int64_t>(std::floor(src)), in - 1);
  return {i0, std::min(i0 + 1, in - 1), src - double(i0)};
}

TEST(NnElementwise, ResizeTapsMatchDefinition) {
  for (bool ac : {true, false})
    for (std::int64_t in = 1; in <= 9; ++in)
      for (std::int64_t out = 1; out <= 19; ++out)
        for (std::int64_t d = 0; d < out; ++d) {
          const Tap r = naive_tap(d, in, out, ac);
          const auto tf = nn::layer_tap<float>(d, in, out, ac);
          const auto td = nn::layer_tap<double>(d, in, out, ac);
          SCOPED_TRACE(::testing::Message() << "align_corners " << ac << " in " << in << " out " << out << " dst " << d);
          ASSERT_EQ(td.i0, r.i0);
          ASSERT_EQ(td.i1, r.i1);
          ASSERT_EQ(tf.i0, r.i0);
          ASSERT_EQ(tf.i1, r.i1);
          ASSERT_NEAR(td.w1, r.w1, 1e-15);
          ASSERT_EQ(tf.w1, static_cast<float>(td.w1));  // the float weight is the double one rounded
          ASSERT_GE(td.w1, 0.0);
          ASSERT_LT(td.w1, 1.0 + 1e-15);
        }
  // corners of align_corners = true land on the input's corners exactly
  const auto last = nn::layer_tap<double>(12, 5, 13, true);
  EXPECT_EQ(last.i0, 4);
  EXPECT_EQ(last.w1, 0.0);
}

// The value at output (oy, ox) from the four taps, in double.
template <class T>
double naive_resize_at(const std::vector<T>& x, std::int64_t nc, std::int64_t H, std::int64_t W, std::int64_t Ho,
                       std::int64_t Wo, std::int64_t oy, std::int64_t ox, bool ac, double* scale) {
  const Tap ty = naive_tap(oy, H, Ho, ac), tx = naive_tap(ox, W, Wo, ac);
  const auto at = [&](std::int64_t iy, std::int64_t ix) { return double(x[(nc * H + iy) * W + ix]); };
  *scale = std::max({std::fabs(at(ty.i0, tx.i0)), std::fabs(at(ty.i0, tx.i1)), std::fabs(at(ty.i1, tx.i0)),
                     std::fabs(at(ty.i1, tx.i1))});
  return (1 - ty.w1) * (1 - tx.w1) * at(ty.i0, tx.i0) + (1 - ty.w1) * tx.w1 * at(ty.i0, tx.i1) +
         ty.w1 * (1 - tx.w1) * at(ty.i1, tx.i0) + ty.w1 * tx.w1 * at(ty.i1, tx.i1);
}

// nn::resize_bilinear (taps, then resize_blend) against the definition: within a few roundings of
// the largest tap value (T's weights are the double ones rounded; the blend rounds 6 times).
template <class T>
void check_resize() {
  const std::int64_t NC = 3, H = 7, W = 9;
  const auto x = random_values<T>(NC * H * W, 50, -2, 2);
  const double u = unit_roundoff<T>();
  for (bool ac : {true, false})
    for (auto [Ho, Wo] : {std::pair<std::int64_t, std::int64_t>{13, 5}, {1, 1}, {7, 9}, {3, 17}, {1, 12}}) {
      SCOPED_TRACE(::testing::Message() << "align_corners " << ac << " -> (" << Ho << ", " << Wo << ")");
      std::vector<T> y(NC * Ho * Wo);
      nn::resize_bilinear(NC, H, W, Ho, Wo, ac, x.data(), y.data());
      for (std::int64_t o = 0; o < NC * Ho * Wo; ++o) {
        const std::int64_t nc = o / (Ho * Wo), oy = (o / Wo) % Ho, ox = o % Wo;
        double scale;
        const double ref = naive_resize_at(x, nc, H, W, Ho, Wo, oy, ox, ac, &scale);
        ASSERT_NEAR(double(y[o]), ref, 10 * u * scale) << o;
        // the layer is resize_blend of layer_tap, element for element
        const auto ty = nn::layer_tap<T>(oy, H, Ho, ac), tx = nn::layer_tap<T>(ox, W, Wo, ac);
        ASSERT_TRUE(same_bits(y[o], nn::resize_blend(x.data() + nc * H * W, W, ty, tx))) << o;
      }
      if (Ho == H && Wo == W) {  // the identity resize copies
        for (std::int64_t i = 0; i < NC * H * W; ++i) ASSERT_EQ(y[i], x[i]) << i;
      }
    }
}

TEST(NnElementwise, ResizeLayerMatchesDefinition) {
  check_resize<float>();
  check_resize<double>();
}

// Doubling with half-pixel centres has weights 1/4 and 3/4, and align_corners from 5 to 9 weights
// 0 and 1/2: on values k / 16 every blend is exact in float.
TEST(NnElementwise, ResizeExactOnDyadicTaps) {
  const std::int64_t NC = 2;
  for (auto [H, W, Ho, Wo, ac] : {std::tuple<std::int64_t, std::int64_t, std::int64_t, std::int64_t, bool>{4, 6, 8, 12, false},
                                  {5, 5, 9, 9, true}}) {
    const auto x = grid_values<float>(NC * H * W, 51);
    std::vector<float> y(NC * Ho * Wo);
    nn::resize_bilinear(NC, H, W, Ho, Wo, ac, x.data(), y.data());
    for (std::int64_t o = 0; o < NC * Ho * Wo; ++o) {
      double scale;
      ASSERT_EQ(double(y[o]), naive_resize_at(x, o / (Ho * Wo), H, W, Ho, Wo, (o / Wo) % Ho, o % Wo, ac, &scale)) << o;
    }
  }
}

}  // namespace
