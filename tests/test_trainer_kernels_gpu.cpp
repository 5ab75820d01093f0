// The example trainer's small CUDA kernels (examples/gpu/kernels.h) against the CPU layers they
// replace (examples/nn/layers.h, train/optim.h's update nn::sgd_step), on random data with NaN and
// infinities, odd sizes, sizes past the capped grid (the grid-stride loops) and empty inputs.
//
// Exact (bit for bit; any NaN equals any NaN) where the kernel does the CPU's operations in the
// CPU's order: ReLU and its gradient, add + ReLU, add, fill, max pooling (values and argmax), its
// gradient (the gather adds in the CPU scatter's order), the average-pool gradient. Within a
// derived bound where nvcc and the host compiler may contract a multiply-add into an FMA
// differently (axpy, SGD, the bilinear blend): a few unit roundoffs of the largest term, and exact
// on dyadic data where every product is exact, so contraction cannot change a bit. The average
// pool sums in double in another order than the CPU: equal up to the float rounding of the mean.
// Each test skips when no device is usable; the argument checks and empty launches run everywhere
// (they never reach the device).
#include <gtest/gtest.h>

#include <cuda_runtime_api.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "gpu/gpu_runners.h"
#include "gpu/kernels.h"
#include "nn/elementwise.h"
#include "nn/layers.h"
#include "support/test_support.h"

namespace {
namespace tt = tasn::test;
namespace nn = tasn::nn;
namespace gk = tasn::nn::gpu;

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr double kU = 0x1.0p-24;  // float unit roundoff

// One more than a capped grid covers in one pass (4096 blocks of 256): the grid-stride loop runs.
constexpr std::int64_t kPastGrid = 4096 * 256 + 4099;
const std::int64_t kSizes[] = {1, 255, 257, 100003, kPastGrid};

void cuda_ok(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(e));
}

// A device copy of a host vector (or n uninitialised elements).
template <class T>
class Device {
 public:
  explicit Device(std::size_t n) : n_(n) {
    if (n_) cuda_ok(cudaMalloc(reinterpret_cast<void**>(&p_), n_ * sizeof(T)), "cudaMalloc");
  }
  explicit Device(const std::vector<T>& v) : Device(v.size()) {
    if (n_) cuda_ok(cudaMemcpy(p_, v.data(), n_ * sizeof(T), cudaMemcpyHostToDevice), "cudaMemcpy H2D");
  }
  Device(const Device&) = delete;
  Device& operator=(const Device&) = delete;
  ~Device() { cudaFree(p_); }
  T* get() const { return p_; }
  std::vector<T> host() const {
    std::vector<T> v(n_);
    cuda_ok(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
    if (n_) cuda_ok(cudaMemcpy(v.data(), p_, n_ * sizeof(T), cudaMemcpyDeviceToHost), "cudaMemcpy D2H");
    return v;
  }

 private:
  T* p_ = nullptr;
  std::size_t n_;
};

std::vector<float> random_floats(std::int64_t n, std::uint64_t seed, double lo = -1, double hi = 1) {
  const auto d = tt::random_tensor(n, seed, lo, hi);
  return std::vector<float>(d.begin(), d.end());
}

// With NaN, +-infinity and -0 sprinkled in.
std::vector<float> special_floats(std::int64_t n, std::uint64_t seed) {
  auto v = random_floats(n, seed);
  for (std::int64_t i = 3; i < n; i += 101) v[i] = kNaN;
  for (std::int64_t i = 5; i < n; i += 103) v[i] = kInf;
  for (std::int64_t i = 7; i < n; i += 107) v[i] = -kInf;
  for (std::int64_t i = 11; i < n; i += 109) v[i] = -0.0f;
  return v;
}

// k / 16 for small integers k: products with power-of-two factors and their sums stay exact.
std::vector<float> dyadic_floats(std::int64_t n, std::uint64_t seed) {
  std::vector<float> v(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) v[i] = static_cast<float>(std::floor(tt::uniform_at(seed, i, -8, 8)) / 16.0);
  return v;
}

// Equal bit for bit, except that any NaN equals any NaN: an operation that makes a NaN (inf - inf)
// or passes one through arithmetic gives x86's default NaN on the CPU and CUDA's canonical NaN
// (another sign and payload) on the GPU. 0 and -0 differ.
bool same_bits(float a, float b) { return (std::isnan(a) && std::isnan(b)) || std::memcmp(&a, &b, sizeof a) == 0; }

// Every element the same (same_bits), or the first that is not.
::testing::AssertionResult same_elements(const std::vector<float>& gpu, const std::vector<float>& cpu) {
  if (gpu.size() != cpu.size())
    return ::testing::AssertionFailure() << "sizes differ: gpu " << gpu.size() << ", cpu " << cpu.size();
  for (std::size_t i = 0; i < gpu.size(); ++i)
    if (!same_bits(gpu[i], cpu[i]))
      return ::testing::AssertionFailure() << "first difference at " << i << ": gpu " << gpu[i] << ", cpu " << cpu[i];
  return ::testing::AssertionSuccess();
}
#define EXPECT_SAME_BITS(gpu, cpu) EXPECT_TRUE(same_elements(gpu, cpu))

class TrainerKernelsGpu : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    if (!tt::gpu::device_available(&why)) GTEST_SKIP() << why;
    // a blocking stream: ordered after the test's cudaMemcpy uploads (legacy default stream)
    cuda_ok(cudaStreamCreate(&stream_), "cudaStreamCreate");
  }
  void TearDown() override {
    if (stream_) cudaStreamDestroy(stream_);
  }
  cudaStream_t stream_ = nullptr;
};

// ---- element-wise --------------------------------------------------------------------------------

TEST_F(TrainerKernelsGpu, ReluAndGradientBitExact) {
  for (std::int64_t n : kSizes) {
    SCOPED_TRACE(::testing::Message() << "n " << n);
    const auto x = special_floats(n, 1), dy = special_floats(n, 2), dx0 = random_floats(n, 3);
    std::vector<float> y(n), dx = dx0, dxw(n);
    nn::relu(x.data(), y.data(), n);
    nn::relu_grad(y.data(), dy.data(), dx.data(), n, true);
    nn::relu_grad(y.data(), dy.data(), dxw.data(), n, false);

    const Device<float> dx_(x), dy_(dy), dyg(y.size()), ddx(dx0), ddxw(n);
    gk::relu(stream_, dx_.get(), dyg.get(), n);
    gk::relu_grad(stream_, dyg.get(), dy_.get(), ddx.get(), n, true);
    gk::relu_grad(stream_, dyg.get(), dy_.get(), ddxw.get(), n, false);
    EXPECT_SAME_BITS(dyg.host(), y);
    EXPECT_SAME_BITS(ddx.host(), dx);
    EXPECT_SAME_BITS(ddxw.host(), dxw);
    // in place (y may be x; dx may be dy)
    gk::relu(stream_, dx_.get(), dx_.get(), n);
    gk::relu_grad(stream_, dyg.get(), dy_.get(), dy_.get(), n, false);
    EXPECT_SAME_BITS(dx_.host(), y);
    EXPECT_SAME_BITS(dy_.host(), dxw);
  }
}

TEST_F(TrainerKernelsGpu, AddReluAddFillBitExact) {
  for (std::int64_t n : kSizes) {
    SCOPED_TRACE(::testing::Message() << "n " << n);
    const auto a = special_floats(n, 4), b = special_floats(n, 5);
    std::vector<float> yr(n), sum(n);
    for (std::int64_t i = 0; i < n; ++i) {  // the ResNet block's join and a plain sum
      yr[i] = nn::add_relu_value(a[i], b[i]);
      sum[i] = a[i] + b[i];
    }
    const Device<float> da(a), db(b), dy(n), dfill(n);
    gk::add_relu(stream_, da.get(), db.get(), dy.get(), n);
    EXPECT_SAME_BITS(dy.host(), yr);
    gk::add_inplace(stream_, da.get(), db.get(), n);
    EXPECT_SAME_BITS(da.host(), sum);
    gk::fill(stream_, dfill.get(), n, -2.5f);
    EXPECT_SAME_BITS(dfill.host(), std::vector<float>(n, -2.5f));
  }
}

// ---- bf16 storage (--precision bf16): the CPU emulation's per-element math, bit for bit ----------

std::vector<nn::bf16> to_bf16_vec(const std::vector<float>& x) {
  std::vector<nn::bf16> y(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) y[i] = nn::float_to_bf16(x[i]);
  return y;
}
std::vector<float> widen_vec(const std::vector<nn::bf16>& x) {
  std::vector<float> y(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) y[i] = nn::bf16_to_float(x[i]);
  return y;
}

TEST_F(TrainerKernelsGpu, Bf16ElementwiseBitExact) {
  for (std::int64_t n : kSizes) {
    SCOPED_TRACE(::testing::Message() << "n " << n);
    const auto a = to_bf16_vec(special_floats(n, 6)), b = to_bf16_vec(special_floats(n, 7));
    const auto xf = special_floats(n, 8), yf0 = random_floats(n, 9);
    const auto y0 = to_bf16_vec(yf0);
    std::vector<float> relu(n), grad(n), grad_acc(n), join(n), sum(n), conv(n), conv_relu(n), round_acc(n), added(n),
        widened(n), masked(n);
    for (std::int64_t i = 0; i < n; ++i) {
      const float fa = nn::bf16_to_float(a[i]), fb = nn::bf16_to_float(b[i]), fy = nn::bf16_to_float(y0[i]);
      relu[i] = nn::bf16_to_float(nn::float_to_bf16(nn::relu_value(fa)));
      grad[i] = nn::bf16_to_float(nn::float_to_bf16(nn::relu_grad_value(fa, fb)));
      grad_acc[i] = nn::bf16_to_float(nn::float_to_bf16(fy + nn::relu_grad_value(fa, fb)));
      join[i] = nn::bf16_to_float(nn::float_to_bf16(nn::add_relu_value(fa, fb)));
      sum[i] = nn::bf16_to_float(nn::float_to_bf16(fa + fb));
      conv[i] = nn::bf16_to_float(nn::float_to_bf16(xf[i]));
      conv_relu[i] = nn::bf16_to_float(nn::float_to_bf16(nn::relu_value(xf[i])));
      round_acc[i] = nn::bf16_to_float(nn::float_to_bf16(xf[i] + fy));
      added[i] = yf0[i] + fa;
      widened[i] = fa;
      masked[i] = nn::relu_grad_value(fa, fb);
    }
    const Device<nn::bf16> da(a), db(b), dy(n), dacc(y0), dconv(n);
    const Device<float> dxf(xf), dyf(yf0), dw(n);
    gk::relu(stream_, da.get(), dy.get(), n);
    EXPECT_SAME_BITS(widen_vec(dy.host()), relu);
    gk::relu_grad(stream_, da.get(), db.get(), dy.get(), n, false);
    EXPECT_SAME_BITS(widen_vec(dy.host()), grad);
    gk::relu_grad(stream_, da.get(), db.get(), dacc.get(), n, true);
    EXPECT_SAME_BITS(widen_vec(dacc.host()), grad_acc);
    gk::add_relu(stream_, da.get(), db.get(), dy.get(), n);
    EXPECT_SAME_BITS(widen_vec(dy.host()), join);
    gk::convert(stream_, dxf.get(), dconv.get(), n);
    EXPECT_SAME_BITS(widen_vec(dconv.host()), conv);
    gk::convert(stream_, dxf.get(), dconv.get(), n, true);
    EXPECT_SAME_BITS(widen_vec(dconv.host()), conv_relu);
    const Device<nn::bf16> dacc2(y0);
    gk::round_into(stream_, dxf.get(), dacc2.get(), n, true);
    EXPECT_SAME_BITS(widen_vec(dacc2.host()), round_acc);
    gk::add_widened(stream_, da.get(), dyf.get(), n);
    EXPECT_SAME_BITS(dyf.host(), added);
    gk::convert(stream_, da.get(), dw.get(), n);
    EXPECT_SAME_BITS(dw.host(), widened);
    gk::relu_grad_widened(stream_, da.get(), db.get(), dw.get(), n, true);
    EXPECT_SAME_BITS(dw.host(), masked);
    gk::add_inplace(stream_, da.get(), db.get(), n);
    EXPECT_SAME_BITS(widen_vec(da.host()), sum);
  }
}

TEST_F(TrainerKernelsGpu, Bf16BiasAddAndGradient) {
  const std::int64_t N = 3, C = 5, P = 37;
  const auto y0 = to_bf16_vec(random_floats(N * C * P, 10));
  const auto bias = random_floats(C, 11), db0 = random_floats(C, 12);
  std::vector<float> y(N * C * P), db = db0;
  for (std::int64_t i = 0; i < N * C * P; ++i)
    y[i] = nn::bf16_to_float(nn::float_to_bf16(nn::bf16_to_float(y0[i]) + bias[(i / P) % C]));
  for (std::int64_t c = 0; c < C; ++c) {
    double s = 0;
    for (std::int64_t k = 0; k < N; ++k)
      for (std::int64_t p = 0; p < P; ++p) s += nn::bf16_to_float(y0[(k * C + c) * P + p]);
    db[c] += static_cast<float>(s);
  }
  const Device<nn::bf16> dy(y0);
  const Device<float> dbias(bias), ddb(db0);
  gk::bias_grad(stream_, N, C, P, dy.get(), ddb.get());  // before the add changes dy
  gk::bias_add(stream_, N, C, P, dbias.get(), dy.get());
  EXPECT_SAME_BITS(widen_vec(dy.host()), y);
  const auto got = ddb.host();
  for (std::int64_t c = 0; c < C; ++c)  // a double sum of bf16 values: exact to float rounding
    EXPECT_NEAR(got[c], db[c], 1e-6 * (std::fabs(db[c]) + 1)) << "channel " << c;
}

// y += alpha x: one multiply-add, which nvcc contracts to an FMA; within 2 roundings of the exact
// result, and exact on dyadic data with alpha a power of two.
TEST_F(TrainerKernelsGpu, AxpyWithinOneFmaOfExact) {
  for (std::int64_t n : kSizes) {
    SCOPED_TRACE(::testing::Message() << "n " << n);
    const float alpha = -0.37f;
    const auto x = random_floats(n, 6, -3, 3), y = random_floats(n, 7);
    const Device<float> dx(x), dy(y);
    gk::axpy(stream_, n, alpha, dx.get(), dy.get());
    const auto got = dy.host();
    for (std::int64_t i = 0; i < n; ++i) {
      const double ref = double(y[i]) + double(alpha) * double(x[i]);
      ASSERT_LE(std::fabs(got[i] - ref), 2 * kU * (std::fabs(double(y[i])) + std::fabs(double(alpha) * x[i]))) << i;
    }
    const auto xd = dyadic_floats(n, 8), yd = dyadic_floats(n, 9);
    const Device<float> dxd(xd), dyd(yd);
    gk::axpy(stream_, n, 0.5f, dxd.get(), dyd.get());
    std::vector<float> exact(n);
    for (std::int64_t i = 0; i < n; ++i) exact[i] = yd[i] + 0.5f * xd[i];
    EXPECT_SAME_BITS(dyd.host(), exact);
  }
}

// ---- SGD -----------------------------------------------------------------------------------------

struct Hyper {
  float lr, momentum, wd, rescale;
};

// The GPU update against the CPU's (nn::sgd_step, what train::BasicSgd runs): both within the
// rounding bound of the double definition (the CPU test NnElementwise.SgdStepMatchesDefinition), so
// they differ by at most twice it; bit for bit on dyadic data.
TEST_F(TrainerKernelsGpu, SgdMatchesCpuUpdate) {
  for (bool momentum : {true, false})
    for (const Hyper& h : {Hyper{0.1f, 0.9f, 5e-4f, 1.0f / 3}, Hyper{0.05f, 0.0f, 0.0f, 1.0f}}) {
      if (!momentum && h.momentum != 0) continue;  // no buffer: momentum 0 only
      for (std::int64_t n : {std::int64_t(1), std::int64_t(257), kPastGrid}) {
        SCOPED_TRACE(::testing::Message() << "momentum buffer " << momentum << ", mu " << h.momentum << ", n " << n);
        const auto w0 = random_floats(n, 10, -2, 2), v0 = random_floats(n, 11), g = random_floats(n, 12, -5, 5);
        std::vector<float> w = w0, v = v0;
        for (std::int64_t i = 0; i < n; ++i) {
          if (momentum) nn::sgd_step(w[i], v[i], g[i], h.lr, h.momentum, h.wd, h.rescale);
          else nn::sgd_step(w[i], g[i], h.lr, h.wd, h.rescale);
        }
        const Device<float> dw(w0), dv(v0), dg(g);
        gk::sgd(stream_, n, dw.get(), dg.get(), momentum ? dv.get() : nullptr, h.lr, h.momentum, h.wd, h.rescale);
        const auto gw = dw.host(), gv = dv.host();
        for (std::int64_t i = 0; i < n; ++i) {
          const double scale_v = std::fabs(double(h.momentum) * v0[i]) * momentum +
                                 std::fabs(double(g[i]) * h.rescale) + std::fabs(double(h.wd) * w0[i]);
          const double tol_v = 4 * kU * scale_v;
          const double tol_w = 2 * kU * (std::fabs(double(w0[i])) + h.lr * scale_v) + h.lr * tol_v;
          ASSERT_LE(std::fabs(double(gv[i]) - v[i]), 2 * tol_v) << i;
          ASSERT_LE(std::fabs(double(gw[i]) - w[i]), 2 * tol_w) << i;
        }
        if (!momentum) {
          EXPECT_SAME_BITS(gv, v0);  // the buffer was not passed: untouched
        }
      }
    }
  // dyadic: bit for bit
  const std::int64_t n = 100003;
  const auto w0 = dyadic_floats(n, 13), v0 = dyadic_floats(n, 14), g = dyadic_floats(n, 15);
  std::vector<float> w = w0, v = v0;
  for (std::int64_t i = 0; i < n; ++i) nn::sgd_step(w[i], v[i], g[i], 0.125f, 0.5f, 0.25f, 2.0f);
  const Device<float> dw(w0), dv(v0), dg(g);
  gk::sgd(stream_, n, dw.get(), dg.get(), dv.get(), 0.125f, 0.5f, 0.25f, 2.0f);
  EXPECT_SAME_BITS(dw.host(), w);
  EXPECT_SAME_BITS(dv.host(), v);
}

TEST_F(TrainerKernelsGpu, NonfiniteAny) {
  const std::int64_t n = kPastGrid;
  const auto clean = random_floats(n, 16);
  const Device<int> flag(1);
  const auto run = [&](const std::vector<float>& data, int start) {
    const Device<float> d(data);
    cuda_ok(cudaMemcpy(flag.get(), &start, sizeof start, cudaMemcpyHostToDevice), "cudaMemcpy");
    gk::nonfinite_any(stream_, d.get(), static_cast<std::int64_t>(data.size()), flag.get());
    return flag.host()[0];
  };
  EXPECT_EQ(run(clean, 0), 0);
  EXPECT_EQ(run(clean, 1), 1) << "the flag is never cleared";
  for (float bad : {kNaN, kInf, -kInf})
    for (std::int64_t at : {std::int64_t(0), n / 2, n - 1}) {
      auto d = clean;
      d[at] = bad;
      EXPECT_EQ(run(d, 0), 1) << bad << " at " << at;
    }
  auto big = clean;
  big[17] = std::numeric_limits<float>::max();
  big[18] = std::numeric_limits<float>::denorm_min();
  EXPECT_EQ(run(big, 0), 0) << "large and subnormal values are finite";
}

// ---- pooling -------------------------------------------------------------------------------------

struct PoolCase {
  std::int64_t NC, H, W, kernel, stride, padding;
};
// ResNet's stem pool, overlapping (stride 1), non-overlapping, gaps (stride > kernel), a wide
// window, and a plane count past the capped grid.
const PoolCase kPoolCases[] = {{6, 17, 13, 3, 2, 1},  {5, 9, 11, 3, 1, 1},  {3, 16, 16, 2, 2, 0},
                               {4, 10, 12, 2, 3, 1},  {2, 19, 15, 5, 2, 2}, {4099, 16, 18, 3, 2, 1}};

std::vector<float> pool_input(std::int64_t n, int kind) {
  if (kind == 0) return special_floats(n, 20);
  if (kind == 1) return random_floats(n, 21, -3, -1);  // all negative: zero padding would win
  return dyadic_floats(n, 22);                          // few values: ties everywhere
}

TEST_F(TrainerKernelsGpu, MaxPoolForwardAndGradientBitExact) {
  for (const PoolCase& c : kPoolCases)
    for (int kind = 0; kind < 3; ++kind) {
      SCOPED_TRACE(::testing::Message() << "NC " << c.NC << " (" << c.H << ", " << c.W << ") kernel " << c.kernel
                                        << " stride " << c.stride << " padding " << c.padding << " data " << kind);
      const nn::PoolArgs a{c.kernel, c.stride, c.padding};
      std::int64_t Ho, Wo;
      nn::pool_output(c.H, c.W, a, Ho, Wo);
      const std::int64_t in = c.NC * c.H * c.W, out = c.NC * Ho * Wo;
      const auto x = pool_input(in, kind);
      std::vector<float> y(out);
      std::vector<std::int64_t> am(out);
      nn::maxpool2d(c.NC, c.H, c.W, a, x.data(), y.data(), am.data());

      const Device<float> dx_(x), dy_(out), dy_noarg(out);
      const Device<std::int64_t> dam(out);
      gk::maxpool2d(stream_, c.NC, c.H, c.W, c.kernel, c.stride, c.padding, dx_.get(), dy_.get(), dam.get());
      gk::maxpool2d(stream_, c.NC, c.H, c.W, c.kernel, c.stride, c.padding, dx_.get(), dy_noarg.get(), nullptr);
      EXPECT_SAME_BITS(dy_.host(), y);
      EXPECT_SAME_BITS(dy_noarg.host(), y);
      EXPECT_EQ(dam.host(), am);

      // the gradient: dx += routed dy, from the GPU's own argmax, against the CPU scatter
      const auto g = random_floats(out, 23), dx0 = random_floats(in, 24);
      auto dx = dx0;
      nn::maxpool2d_grad(c.NC, Ho * Wo, g.data(), am.data(), dx.data());
      const Device<float> dg(g), ddx(dx0);
      gk::maxpool2d_grad(stream_, c.NC, c.H, c.W, Ho, Wo, c.kernel, c.stride, c.padding, dg.get(), dam.get(), ddx.get());
      EXPECT_SAME_BITS(ddx.host(), dx);
    }
}

// Means agree up to the float rounding of the mean (the GPU sums in double in another order:
// |difference of the double sums| <= 2 P 2^-53 sum|x|, then each side rounds once to float).
TEST_F(TrainerKernelsGpu, GlobalAvgPoolAndGradient) {
  for (auto [NC, P] : {std::pair<std::int64_t, std::int64_t>{1, 1}, {37, 49}, {1000, 33}, {9, 4099}, {70001, 3}}) {
    SCOPED_TRACE(::testing::Message() << "NC " << NC << " P " << P);
    const auto x = random_floats(NC * P, 30, -2, 3);
    std::vector<float> y(NC);
    nn::global_avgpool(NC, P, x.data(), y.data());
    const Device<float> dx_(x), dy_(NC);
    gk::global_avgpool(stream_, NC, P, dx_.get(), dy_.get());
    const auto got = dy_.host();
    for (std::int64_t c = 0; c < NC; ++c) {
      double mass = 0;
      for (std::int64_t p = 0; p < P; ++p) mass += std::fabs(double(x[c * P + p]));
      const double tol = 2 * kU * std::fabs(double(y[c])) + 2.0 * double(P) * 0x1.0p-53 * mass / double(P);
      ASSERT_LE(std::fabs(double(got[c]) - y[c]), tol) << c;
    }
    // the gradient broadcasts dy / P: the CPU's division, bit for bit
    const auto dy = random_floats(NC, 31), dx0 = random_floats(NC * P, 32);
    auto dx = dx0;
    std::vector<float> dxw(NC * P);
    nn::global_avgpool_grad(NC, P, dy.data(), dx.data(), true);
    nn::global_avgpool_grad(NC, P, dy.data(), dxw.data(), false);
    const Device<float> ddy(dy), ddx(dx0), ddxw(NC * P);
    gk::global_avgpool_grad(stream_, NC, P, ddy.get(), ddx.get(), true);
    gk::global_avgpool_grad(stream_, NC, P, ddy.get(), ddxw.get(), false);
    EXPECT_SAME_BITS(ddx.host(), dx);
    EXPECT_SAME_BITS(ddxw.host(), dxw);
  }
}

// ---- bilinear resize -----------------------------------------------------------------------------

// The taps are the same doubles on both sides (no multiply-add to contract); the float blend may be
// contracted differently: each side is within about 4 roundings of the largest of the four tap
// values (the weights of each stage sum to 1), so the two within 10 of them; and bit
// for bit where the weights are dyadic (doubling with half-pixel centres: 1/4, 3/4; 5 -> 9 with
// aligned corners: 0, 1/2) on dyadic data.
TEST_F(TrainerKernelsGpu, ResizeBilinearMatchesCpu) {
  struct Case {
    std::int64_t NC, H, W, Ho, Wo;
  };
  for (bool ac : {true, false})
    for (const Case& c : {Case{3, 7, 9, 13, 5}, Case{2, 8, 8, 1, 1}, Case{5, 16, 12, 16, 12}, Case{64, 14, 14, 112, 113},
                          Case{2, 33, 31, 7, 6}}) {
      SCOPED_TRACE(::testing::Message() << "align_corners " << ac << ", NC " << c.NC << " (" << c.H << ", " << c.W
                                        << ") -> (" << c.Ho << ", " << c.Wo << ")");
      const auto x = random_floats(c.NC * c.H * c.W, 40, -2, 2);
      std::vector<float> y(c.NC * c.Ho * c.Wo);
      nn::resize_bilinear(c.NC, c.H, c.W, c.Ho, c.Wo, ac, x.data(), y.data());
      const Device<float> dx_(x), dy_(y.size());
      gk::resize_bilinear(stream_, c.NC, c.H, c.W, c.Ho, c.Wo, ac, dx_.get(), dy_.get());
      const auto got = dy_.host();
      for (std::int64_t o = 0; o < c.NC * c.Ho * c.Wo; ++o) {
        const std::int64_t nc = o / (c.Ho * c.Wo), oy = (o / c.Wo) % c.Ho, ox = o % c.Wo;
        const auto ty = nn::layer_tap<float>(oy, c.H, c.Ho, ac), tx = nn::layer_tap<float>(ox, c.W, c.Wo, ac);
        const float* p = x.data() + nc * c.H * c.W;
        const double scale = std::max({std::fabs(p[ty.i0 * c.W + tx.i0]), std::fabs(p[ty.i0 * c.W + tx.i1]),
                                       std::fabs(p[ty.i1 * c.W + tx.i0]), std::fabs(p[ty.i1 * c.W + tx.i1])});
        ASSERT_LE(std::fabs(double(got[o]) - y[o]), 10 * kU * scale) << o;
      }
    }
  for (auto [H, W, Ho, Wo, ac] : {std::tuple<std::int64_t, std::int64_t, std::int64_t, std::int64_t, bool>{40, 36, 80, 72, false},
                                  {5, 5, 9, 9, true}}) {
    const std::int64_t NC = 300;
    const auto x = dyadic_floats(NC * H * W, 41);
    std::vector<float> y(NC * Ho * Wo);
    nn::resize_bilinear(NC, H, W, Ho, Wo, ac, x.data(), y.data());
    const Device<float> dx_(x), dy_(y.size());
    gk::resize_bilinear(stream_, NC, H, W, Ho, Wo, ac, dx_.get(), dy_.get());
    EXPECT_SAME_BITS(dy_.host(), y);
  }
}

// ---- arguments (no device needed: every launcher checks before it touches CUDA) ------------------

// Nothing to do: nothing launched (a launch without a device would fail), whatever the pointers.
TEST(TrainerKernels, EmptyInputsLaunchNothing) {
  cudaStream_t s = nullptr;
  float* nf = nullptr;
  nn::bf16* nb = nullptr;
  EXPECT_NO_THROW(gk::relu(s, nf, nf, 0));
  EXPECT_NO_THROW(gk::relu_grad(s, nf, nf, nf, 0, true));
  EXPECT_NO_THROW(gk::add_relu(s, nf, nf, nf, 0));
  EXPECT_NO_THROW(gk::add_inplace(s, nf, nf, 0));
  // bf16 storage
  EXPECT_NO_THROW(gk::relu(s, nb, nb, 0));
  EXPECT_NO_THROW(gk::relu_grad(s, nb, nb, nb, 0, false));
  EXPECT_NO_THROW(gk::add_relu(s, nb, nb, nb, 0));
  EXPECT_NO_THROW(gk::add_inplace(s, nb, nb, 0));
  EXPECT_NO_THROW(gk::convert(s, nf, nb, 0, true));
  EXPECT_NO_THROW(gk::convert(s, nb, nf, 0));
  EXPECT_NO_THROW(gk::round_into(s, nf, nb, 0, true));
  EXPECT_NO_THROW(gk::add_widened(s, nb, nf, 0));
  EXPECT_NO_THROW(gk::relu_grad_widened(s, nb, nb, nf, 0, true));
  EXPECT_NO_THROW(gk::bias_add(s, 0, 4, 9, reinterpret_cast<const float*>(256), nb));
  EXPECT_NO_THROW(gk::bias_grad(s, 2, 0, 9, nb, nf));
  EXPECT_NO_THROW(gk::axpy(s, 0, 2.0f, nullptr, nullptr));
  EXPECT_NO_THROW(gk::fill(s, nullptr, 0, 1.0f));
  EXPECT_NO_THROW(gk::maxpool2d(s, 0, 8, 8, 3, 2, 1, nullptr, nullptr, nullptr));
  EXPECT_NO_THROW(gk::maxpool2d_grad(s, 0, 8, 8, 4, 4, 3, 2, 1, nullptr, nullptr, nullptr));
  EXPECT_NO_THROW(gk::global_avgpool(s, 0, 49, nullptr, nullptr));
  EXPECT_NO_THROW(gk::global_avgpool_grad(s, 0, 49, nullptr, nullptr, false));
  EXPECT_NO_THROW(gk::global_avgpool_grad(s, 4, 0, reinterpret_cast<const float*>(16), nullptr, false));
  EXPECT_NO_THROW(gk::resize_bilinear(s, 0, 4, 4, 8, 8, true, nullptr, nullptr));
  EXPECT_NO_THROW(gk::sgd(s, 0, nullptr, nullptr, nullptr, 0.1f, 0.9f, 0.0f, 1.0f));
  int flag = 0;
  EXPECT_NO_THROW(gk::nonfinite_any(s, nullptr, 0, &flag));
}

TEST(TrainerKernels, RefusesBadArguments) {
  cudaStream_t s = nullptr;
  float* f = reinterpret_cast<float*>(256);  // never dereferenced: the checks come first
  std::int64_t* am = reinterpret_cast<std::int64_t*>(256);
  const auto msg = [](auto&& call) { return tt::invalid_argument_message(call); };
  EXPECT_NE(msg([&] { gk::relu(s, f, f, -1); }).find("nn::gpu::relu: n must be >= 0, got -1"), std::string::npos);
  EXPECT_NE(msg([&] { gk::add_relu(s, f, nullptr, f, 5); }).find("b is null but must hold 5 elements"),
            std::string::npos);
  EXPECT_NE(msg([&] { gk::maxpool2d(s, 2, 1, 1, 3, 2, 0, f, f, am); }).find("input (1, 1) is smaller than the pooling"),
            std::string::npos);
  EXPECT_NE(msg([&] { gk::maxpool2d(s, 2, 8, 8, 3, 0, 1, f, f, am); }).find("kernel and stride must be >= 1"),
            std::string::npos);
  EXPECT_NE(msg([&] { gk::maxpool2d_grad(s, 2, 8, 8, 4, 5, 3, 2, 1, f, am, f); })
                .find("the output (4, 5) is not the pooling of (8, 8) with kernel 3, stride 2, padding 1, which gives (4, 4)"),
            std::string::npos);
  EXPECT_NE(msg([&] { gk::resize_bilinear(s, 2, 4, 4, 0, 8, true, f, f); }).find("sizes must be >= 1"),
            std::string::npos);
  EXPECT_NE(msg([&] { gk::sgd(s, 10, f, f, nullptr, 0.1f, 0.9f, 0.0f, 1.0f); })
                .find("momentum is 0.9 but there is no momentum buffer"),
            std::string::npos);
  EXPECT_NE(msg([&] { gk::nonfinite_any(s, f, 10, nullptr); }).find("flag is null"), std::string::npos);
  nn::bf16* b16 = reinterpret_cast<nn::bf16*>(256);
  EXPECT_NE(msg([&] { gk::relu(s, b16, b16, -1); }).find("nn::gpu::relu (bf16): n must be >= 0, got -1"),
            std::string::npos);
  EXPECT_NE(msg([&] { gk::round_into(s, f, nullptr, 5, false); }).find("y is null but must hold 5 elements"),
            std::string::npos);
  EXPECT_NE(msg([&] { gk::bias_add(s, 2, 0, 9, f, b16); }).find("need N, P >= 0 and C >= 1"), std::string::npos);
  EXPECT_NE(msg([&] { gk::bias_grad(s, 2, 3, 9, b16, nullptr); }).find("db is null but must hold 3 elements"),
            std::string::npos);
  EXPECT_NE(msg([&] { gk::global_avgpool(s, std::int64_t(1) << 40, std::int64_t(1) << 40, f, f); })
                .find("overflows 64-bit indexing"),
            std::string::npos);
}

}  // namespace
