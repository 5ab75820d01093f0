// The trainer's cuDNN / cuBLAS layers (examples/gpu/dnn.h) against the reference layers
// (examples/nn/layers.h) run in double on the same float inputs: convolution forward, backward-data
// and backward-weights (stride 2, padding, dilation 1-3, 1x1, the 7x7 stride-2 stem, bias or not,
// overwrite or accumulate, randomised shapes), batch norm in training (output, saved statistics,
// running statistics after one update: PyTorch's momentum rule with the unbiased variance) and
// evaluation, its backward, the linear layer; TF32; the descriptor / algorithm cache, the benchmark
// search (which must not clobber what the call accumulates into), the workspace cap; bad arguments.
//
// Tolerances: tests/support/layer_bounds.h (the reduction length times the sum of |terms|, per
// element; batch norm's chained first-order bounds). Results of FFT and Winograd algorithms are not
// plain sums (the transforms round too; their error grows with the tile), so where cuDNN picked one
// the bound is kTransformSlack times the summation bound; each case prints the algorithms it used
// (TASN_PRINT_ALGOS=1) and names them when it fails.
//
// Device memory comes from cudaMalloc here; every test skips with the reason when no device is
// usable (tasn::test::gpu::device_available).
#include <gtest/gtest.h>

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "gpu/dnn.h"
#include "nn/bf16.h"
#include "gpu/gpu_runners.h"
#include "nn/layers.h"
#include "support/layer_bounds.h"
#include "support/test_support.h"
#include "tasn/core/cuda_check.cuh"

namespace {

namespace tt = tasn::test;
namespace nn = tasn::nn;
namespace gpu = tasn::nn::gpu;
using tt::bounds::abs_of;
using tt::bounds::BnShape;
using tt::bounds::Data;
using tt::bounds::expect_within;
using tt::bounds::gamma_k;
using tt::bounds::pick;
using tt::bounds::kU;
using tt::bounds::random_data;
using tt::bounds::tensor;
using tt::bounds::values;

// FFT / Winograd results against the summation bound (see the file comment): their rounding error
// comes from the transforms and can be an order of magnitude above the direct sum's for Winograd's
// larger tiles; 16x leaves room for that without hiding a wrong result (those are O(1) off). An
// allowance, not a derived bound: the GPU run reports which cases used such an algorithm.
constexpr double kTransformSlack = 16;
constexpr double kTf32U = 0x1.0p-11;  // TF32 keeps 10 mantissa bits: unit roundoff 2^-11

// ---- device memory ------------------------------------------------------------------------------

// Device memory of storage S (float, or nn::bf16 for the bf16 layers), filled from and read back as
// float values (bf16 rounds on the way up: nn::store_value).
template <class S>
class DeviceBufferOf {
 public:
  explicit DeviceBufferOf(std::size_t n) : n_(n) {
    if (n_) TASN_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&p_), n_ * sizeof(S)));
  }
  explicit DeviceBufferOf(const std::vector<float>& v) : DeviceBufferOf(v.size()) { upload(v); }
  ~DeviceBufferOf() {
    if (p_) cudaFree(p_);
  }
  DeviceBufferOf(const DeviceBufferOf&) = delete;
  DeviceBufferOf& operator=(const DeviceBufferOf&) = delete;
  S* get() { return p_; }
  void upload(const std::vector<float>& v) {
    ASSERT_EQ(v.size(), n_);
    std::vector<S> h(n_);
    for (std::size_t i = 0; i < n_; ++i) h[i] = nn::store_value<S>(v[i]);
    if (n_) TASN_CUDA_CHECK(cudaMemcpy(p_, h.data(), n_ * sizeof(S), cudaMemcpyHostToDevice));
  }
  std::vector<float> download() const {  // after the stream has been synchronised
    std::vector<S> h(n_);
    if (n_) TASN_CUDA_CHECK(cudaMemcpy(h.data(), p_, n_ * sizeof(S), cudaMemcpyDeviceToHost));
    std::vector<float> v(n_);
    for (std::size_t i = 0; i < n_; ++i) v[i] = nn::load_value(h[i]);
    return v;
  }

 private:
  std::size_t n_;
  S* p_ = nullptr;
};
using DeviceBuffer = DeviceBufferOf<float>;
using Bf16Buffer = DeviceBufferOf<nn::bf16>;

std::vector<float> nans(std::size_t n) { return std::vector<float>(n, NAN); }

// The step arena's stand-in: one cudaMalloc block, grown when asked for more; counts the requests.
class TestScratch final : public gpu::DeviceScratch {
 public:
  void* get(std::size_t bytes) override {
    ++calls;
    largest = std::max(largest, bytes);
    if (bytes > size_) {
      release();
      TASN_CUDA_CHECK(cudaMalloc(&p_, bytes));
      size_ = bytes;
    }
    return p_;
  }
  ~TestScratch() { release(); }
  int calls = 0;
  std::size_t largest = 0;

 private:
  void release() {
    if (!p_) return;
    cudaDeviceSynchronize();  // queued work may still use it
    cudaFree(p_);
    p_ = nullptr;
    size_ = 0;
  }
  void* p_ = nullptr;
  std::size_t size_ = 0;
};

class TrainerDnnGpu : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    if (!tt::gpu::device_available(&why)) GTEST_SKIP() << why;
    dnn_ = std::make_unique<gpu::Dnn>();
    TASN_CUDA_CHECK(cudaStreamCreate(&stream_));
    dnn_->set_stream(stream_);
  }
  void TearDown() override {
    dnn_.reset();
    if (stream_) cudaStreamDestroy(stream_);
  }
  void sync() { TASN_CUDA_CHECK(cudaStreamSynchronize(stream_)); }

  std::unique_ptr<gpu::Dnn> dnn_;
  cudaStream_t stream_ = nullptr;
};

// ---- convolution ----------------------------------------------------------------------------------

struct ConvCase {
  nn::ConvGeometry g;
  bool bias = false, accumulate = false;
};

nn::ConvGeometry geometry(std::int64_t n, std::int64_t cin, std::int64_t h, std::int64_t w, std::int64_t cout,
                          std::int64_t k, std::int64_t stride, std::int64_t pad, std::int64_t dil) {
  const std::int64_t xs[4] = {n, cin, h, w}, ws[4] = {cout, cin, k, k};
  return nn::conv_geometry(xs, ws, nn::Conv2dArgs{stride, pad, dil}, "test");
}

std::string describe(const nn::ConvGeometry& g) {
  return ::testing::PrintToString(std::vector<std::int64_t>{g.n, g.cin, g.h, g.w}) + " * " +
         ::testing::PrintToString(std::vector<std::int64_t>{g.cout, g.cin, g.kh, g.kw}) + " stride " +
         std::to_string(g.a.stride) + " pad " + std::to_string(g.a.padding) + " dil " + std::to_string(g.a.dilation);
}
std::string describe(const ConvCase& c) {
  return describe(c.g) + (c.bias ? ", bias" : ", no bias") + (c.accumulate ? ", accumulate" : ", overwrite");
}
std::string describe(const gpu::ConvAlgorithms& a) {
  return "forward " + a.forward + ", backward-data " + a.backward_data +
         (a.backward_data_deterministic ? "" : " (non-deterministic)") + ", backward-filter " + a.backward_filter +
         (a.backward_filter_deterministic ? "" : " (non-deterministic)");
}


std::vector<ConvCase> conv_cases() {
  std::vector<ConvCase> cases;
  auto add = [&](std::int64_t n, std::int64_t cin, std::int64_t h, std::int64_t w, std::int64_t cout, std::int64_t k,
                 std::int64_t s, std::int64_t p, std::int64_t d, bool bias, bool acc) {
    cases.push_back({geometry(n, cin, h, w, cout, k, s, p, d), bias, acc});
  };
  // The attention head: one 3x3 weight with dilation = padding 1, 2, 3.
  for (std::int64_t d = 1; d <= 3; ++d) add(2, 16, 14, 14, 16, 3, 1, d, d, d == 2, d != 2);
  add(3, 8, 12, 12, 24, 1, 1, 0, 1, true, false);    // 1x1 (pointwise)
  add(2, 24, 12, 11, 32, 1, 2, 0, 1, false, true);   // 1x1 stride 2 (ResNet downsample)
  add(2, 3, 32, 32, 16, 7, 2, 3, 1, false, false);   // 7x7 stride-2 stem on RGB
  add(1, 3, 23, 29, 8, 7, 2, 3, 1, true, true);      // the stem on odd sizes
  add(4, 16, 16, 16, 32, 3, 2, 1, 1, false, false);  // 3x3 stride 2
  add(2, 32, 9, 9, 32, 3, 1, 1, 1, true, true);      // 3x3 stride 1 (Winograd's home ground)
  add(1, 5, 3, 3, 7, 3, 1, 0, 1, true, false);       // a single output pixel
  // Randomised shapes (fixed seed): kernel 1/3/5/7, stride 1-2, padding 0-3, dilation 1-3.
  const std::uint64_t seed = 20240613;
  for (std::uint64_t t = 0; cases.size() < 24; ++t) {
    const std::uint64_t s = seed + 97 * t;
    const std::int64_t k = 2 * pick(s, 0, 0, 3) + 1, d = pick(s, 1, 1, 3), p = pick(s, 2, 0, 3), st = pick(s, 3, 1, 2);
    const std::int64_t h = pick(s, 4, 4, 17), w = pick(s, 5, 4, 17);
    if (h + 2 * p - d * (k - 1) < 1 || w + 2 * p - d * (k - 1) < 1) continue;
    add(pick(s, 6, 1, 8), pick(s, 7, 1, 20), h, w, pick(s, 8, 1, 20), k, st, p, d, pick(s, 9, 0, 1) == 1,
        pick(s, 10, 0, 1) == 1);
  }
  return cases;
}

// The three directions of one case on the device against the reference. `tf32` widens the bounds
// by TF32's rounding of both operands of every product.
void check_conv(gpu::Dnn& dnn, cudaStream_t stream, const ConvCase& c, std::uint64_t seed, bool tf32 = false) {
  SCOPED_TRACE(describe(c));
  const nn::ConvGeometry& g = c.g;
  const std::vector<std::int64_t> xs{g.n, g.cin, g.h, g.w}, ws{g.cout, g.cin, g.kh, g.kw}, ys{g.n, g.cout, g.ho, g.wo};
  const Data x = random_data(g.x_numel(), seed), w = random_data(g.w_numel(), seed + 1),
             b = random_data(g.cout, seed + 2), dy = random_data(g.y_numel(), seed + 3),
             dx0 = random_data(g.x_numel(), seed + 4), dw0 = random_data(g.w_numel(), seed + 5),
             db0 = random_data(g.cout, seed + 6);
  const auto X = tensor(xs, x.d), W = tensor(ws, w.d), B = tensor({g.cout}, b.d), DY = tensor(ys, dy.d);
  const auto aX = tensor(xs, abs_of(x.d)), aW = tensor(ws, abs_of(w.d)), aB = tensor({g.cout}, abs_of(b.d)),
             aDY = tensor(ys, abs_of(dy.d));

  DeviceBuffer dX(x.f), dW(w.f), dB(b.f), dDY(dy.f), dY(nans(g.y_numel())),
      dDX(c.accumulate ? dx0.f : nans(dx0.f.size())), dDW(dw0.f), dDB(db0.f);
  TestScratch scratch;
  dnn.conv_forward(g, dX.get(), dW.get(), c.bias ? dB.get() : nullptr, dY.get(), scratch);
  dnn.conv_backward_data(g, dW.get(), dDY.get(), dDX.get(), c.accumulate, scratch);
  dnn.conv_backward_weights(g, dX.get(), dDY.get(), dDW.get(), c.bias ? dDB.get() : nullptr, scratch);
  TASN_CUDA_CHECK(cudaStreamSynchronize(stream));
  EXPECT_LE(scratch.calls, 3) << "each call asks the scratch at most once";
  const gpu::ConvAlgorithms algos = dnn.conv_algorithms(g);
  SCOPED_TRACE(describe(algos));
  if (std::getenv("TASN_PRINT_ALGOS")) std::printf("%s: %s\n", describe(c).c_str(), describe(algos).c_str());
  const double t = tf32 ? 2 * kTf32U * (1 + kTf32U) : 0;  // per product, both operands rounded

  // forward: K = cin kh kw products (+ bias) per output
  {
    const auto ref = nn::conv2d_forward(X, W, c.bias ? &B : nullptr, nn::Conv2dArgs(g.a));
    const auto mag = nn::conv2d_forward(aX, aW, c.bias ? &aB : nullptr, nn::Conv2dArgs(g.a));
    const double gk = (gamma_k(double(g.cin * g.kh * g.kw) + 2) + t) * (algos.forward_transform ? kTransformSlack : 1);
    std::vector<double> bound(mag.data.size());
    for (std::size_t i = 0; i < bound.size(); ++i) bound[i] = gk * mag.data[i] + 1e-30;
    expect_within(dY.download(), values(ref), bound, "forward y");
  }

  // exact sums of |terms| for the three gradients, and the references
  nn::Tensor<double> mdx(xs), mdw(ws), mdb({g.cout});
  nn::conv2d_backward(aX, aW, aDY, nn::Conv2dArgs(g.a), &mdx, &mdw, &mdb);
  nn::Tensor<double> rdx(xs), rdw = tensor(ws, dw0.d), rdb = tensor({g.cout}, db0.d);
  if (c.accumulate) rdx.set(dx0.d);
  nn::conv2d_backward(X, W, DY, nn::Conv2dArgs(g.a), &rdx, &rdw, &rdb);

  // backward-data: at most cout kh kw terms per input element, plus the value accumulated into
  {
    const double gk = (gamma_k(double(g.cout * g.kh * g.kw) + 2) + t) *
                      (algos.backward_data_transform ? kTransformSlack : 1);
    std::vector<double> bound(mdx.data.size());
    for (std::size_t i = 0; i < bound.size(); ++i)
      bound[i] = gk * (mdx.data[i] + (c.accumulate ? std::fabs(dx0.d[i]) : 0.0)) + 1e-30;
    expect_within(dDX.download(), values(rdx), bound, "dx");
  }

  // backward-weights: n ho wo terms per weight (and bias), always added to what is there
  {
    const double gk = gamma_k(double(g.n * g.ho * g.wo) + 2) + t;
    const double gw = gk * (algos.backward_filter_transform ? kTransformSlack : 1);
    std::vector<double> bw(mdw.data.size()), bb(mdb.data.size());
    for (std::size_t i = 0; i < bw.size(); ++i) bw[i] = gw * (mdw.data[i] + std::fabs(dw0.d[i])) + 1e-30;
    for (std::size_t i = 0; i < bb.size(); ++i)
      bb[i] = gamma_k(double(g.n * g.ho * g.wo) + 2) * (mdb.data[i] + std::fabs(db0.d[i])) + 1e-30;
    expect_within(dDW.download(), values(rdw), bw, "dweight");
    if (c.bias) expect_within(dDB.download(), values(rdb), bb, "dbias");
    else EXPECT_EQ(dDB.download(), db0.f) << "dbias was not asked for";
  }
}

TEST_F(TrainerDnnGpu, ConvolutionMatchesReference) {
  std::uint64_t seed = 1;
  for (const auto& c : conv_cases()) check_conv(*dnn_, stream_, c, seed += 10);
}

TEST_F(TrainerDnnGpu, ConvolutionBenchmarkSearchKeepsWhatItAccumulatesInto) {
  // cudnnFind*Ex runs every candidate on the call's buffers: the search must write scratch copies,
  // not the dx / dw the call adds into (which check_conv compares with dx0 + gradient).
  dnn_->set_search(gpu::ConvSearch::benchmark);
  std::uint64_t seed = 300;
  for (const auto& c : {ConvCase{geometry(2, 16, 14, 14, 16, 3, 1, 2, 2), true, true},
                        ConvCase{geometry(2, 3, 32, 32, 16, 7, 2, 3, 1), false, true},
                        ConvCase{geometry(3, 8, 12, 12, 24, 1, 1, 0, 1), true, false}})
    check_conv(*dnn_, stream_, c, seed += 10);
  EXPECT_EQ(dnn_->conv_searches(), 9);
}

TEST_F(TrainerDnnGpu, Tf32WithinItsRounding) {
  dnn_->set_tf32(true);
  EXPECT_TRUE(dnn_->tf32());
  check_conv(*dnn_, stream_, {geometry(2, 3, 32, 32, 16, 7, 2, 3, 1), true, true}, 400, true);
  check_conv(*dnn_, stream_, {geometry(2, 64, 10, 10, 64, 3, 1, 1, 1), false, false}, 410, true);
}

TEST_F(TrainerDnnGpu, SharedWeightGradientsAccumulate) {
  // One 3x3 weight used at dilation 1, 2, 3 (the attention head): three backward-weights calls add up.
  const std::int64_t n = 2, c = 4, h = 9;
  const Data x = random_data(n * c * h * h, 71), w = random_data(c * c * 9, 72), dy = random_data(n * c * h * h, 73);
  DeviceBuffer dX(x.f), dDY(dy.f), dDW(std::vector<float>(w.f.size(), 0.f));
  TestScratch scratch;
  nn::Tensor<double> ref({c, c, 3, 3});
  const auto X = tensor({n, c, h, h}, x.d), W = tensor({c, c, 3, 3}, w.d), DY = tensor({n, c, h, h}, dy.d);
  bool transform = false;
  for (std::int64_t d = 1; d <= 3; ++d) {
    const nn::ConvGeometry g = geometry(n, c, h, h, c, 3, 1, d, d);
    dnn_->conv_backward_weights(g, dX.get(), dDY.get(), dDW.get(), nullptr, scratch);
    nn::conv2d_backward(X, W, DY, {1, d, d}, nullptr, &ref, nullptr);
    transform = transform || dnn_->conv_algorithms(g).backward_filter_transform;
  }
  sync();
  // three sums of n h h = 162 terms each, each added into the running total
  const std::vector<double> bound(w.f.size(), gamma_k(3 * (n * h * h + 2)) * 3 * n * h * h *
                                                  (transform ? kTransformSlack : 1));
  expect_within(dDW.download(), values(ref), bound, "shared dweight");
}

TEST_F(TrainerDnnGpu, RepeatedGeometrySearchesOnceAndRepeatsItsResults) {
  const nn::ConvGeometry g = geometry(2, 8, 10, 10, 16, 3, 1, 1, 1);
  const Data x = random_data(g.x_numel(), 81), w = random_data(g.w_numel(), 82), dy = random_data(g.y_numel(), 83);
  DeviceBuffer dX(x.f), dW(w.f), dDY(dy.f), dY(g.y_numel()), dDX(g.x_numel()), dDW(g.w_numel()), dDB(g.cout);
  TestScratch scratch;
  std::vector<std::vector<float>> runs;
  for (int r = 0; r < 3; ++r) {
    dDW.upload(std::vector<float>(g.w_numel(), 0.f));
    dDB.upload(std::vector<float>(g.cout, 0.f));
    dnn_->conv_forward(g, dX.get(), dW.get(), nullptr, dY.get(), scratch);
    dnn_->conv_backward_data(g, dW.get(), dDY.get(), dDX.get(), false, scratch);
    dnn_->conv_backward_weights(g, dX.get(), dDY.get(), dDW.get(), dDB.get(), scratch);
    sync();
    for (auto* b : {&dY, &dDX, &dDW, &dDB}) runs.push_back(b->download());
    if (r == 0) {
      EXPECT_EQ(dnn_->conv_searches(), 3);
      EXPECT_EQ(dnn_->cached_geometries(), 1);
    }
  }
  EXPECT_EQ(dnn_->conv_searches(), 3) << "a repeated geometry must reuse its algorithms";
  EXPECT_EQ(dnn_->cached_geometries(), 1) << "and its descriptors";
  const gpu::ConvAlgorithms a = dnn_->conv_algorithms(g);
  SCOPED_TRACE(describe(a));
  for (int r = 1; r < 3; ++r) {
    EXPECT_EQ(runs[4 * r + 0], runs[0]) << "forward repeats bit for bit";
    EXPECT_EQ(runs[4 * r + 3], runs[3]) << "the bias gradient repeats bit for bit";
    if (a.backward_data_deterministic) {
      EXPECT_EQ(runs[4 * r + 1], runs[1]) << "dx repeats bit for bit";
    }
    if (a.backward_filter_deterministic) {
      EXPECT_EQ(runs[4 * r + 2], runs[2]) << "dw repeats bit for bit";
    }
  }
  // Another stride, or TF32, is another geometry; the accumulate flag is not.
  dnn_->conv_forward(geometry(2, 8, 10, 10, 16, 3, 2, 1, 1), dX.get(), dW.get(), nullptr, dY.get(), scratch);
  dnn_->conv_backward_data(g, dW.get(), dDY.get(), dDX.get(), true, scratch);
  EXPECT_EQ(dnn_->cached_geometries(), 2);
  dnn_->set_tf32(true);
  dnn_->conv_forward(g, dX.get(), dW.get(), nullptr, dY.get(), scratch);
  EXPECT_EQ(dnn_->cached_geometries(), 3);
  EXPECT_EQ(dnn_->conv_searches(), 5);
  sync();
}

TEST_F(TrainerDnnGpu, WorkspaceCapIsRespected) {
  const nn::ConvGeometry g = geometry(4, 32, 28, 28, 32, 3, 1, 1, 1);
  const Data x = random_data(g.x_numel(), 91), w = random_data(g.w_numel(), 92);
  DeviceBuffer dX(x.f), dW(w.f), dY(g.y_numel());
  TestScratch scratch;
  dnn_->set_workspace_cap(0);  // IMPLICIT_GEMM needs none
  dnn_->conv_forward(g, dX.get(), dW.get(), nullptr, dY.get(), scratch);
  sync();
  EXPECT_EQ(dnn_->conv_algorithms(g).forward_workspace, 0u) << describe(dnn_->conv_algorithms(g));
  EXPECT_EQ(scratch.calls, 0) << "no workspace, no request";
  const auto ref = nn::conv2d_forward(tensor({g.n, g.cin, g.h, g.w}, x.d), tensor({g.cout, g.cin, 3, 3}, w.d),
                                      nullptr, nn::Conv2dArgs(g.a));
  const auto mag = nn::conv2d_forward(tensor({g.n, g.cin, g.h, g.w}, abs_of(x.d)),
                                      tensor({g.cout, g.cin, 3, 3}, abs_of(w.d)), nullptr, nn::Conv2dArgs(g.a));
  std::vector<double> bound(mag.data.size());
  for (std::size_t i = 0; i < bound.size(); ++i) bound[i] = gamma_k(double(g.cin * 9) + 2) * mag.data[i] + 1e-30;
  expect_within(dY.download(), values(ref), bound, "forward y, no workspace");
}

// ---- batch norm ---------------------------------------------------------------------------------

void check_batchnorm(gpu::Dnn& dnn, cudaStream_t stream, const BnShape& g, bool accumulate, std::uint64_t seed) {
  SCOPED_TRACE(::testing::Message() << "x (" << g.n << ", " << g.c << ", " << g.h << ", " << g.w << ")"
                                    << (accumulate ? " accumulate" : " overwrite"));
  const std::int64_t P = g.h * g.w, M = g.n * P, numel = g.numel();
  const std::vector<std::int64_t> xs{g.n, g.c, g.h, g.w};
  const double eps = 1e-5, momentum = 0.1;
  // an offset mean (|mu| ~ 2 sigma) so the variance formula matters
  const Data x = random_data(numel, seed, -1, 4), ga = random_data(g.c, seed + 1, 0.5, 1.5),
             be = random_data(g.c, seed + 2), dy = random_data(numel, seed + 3), dx0 = random_data(numel, seed + 4),
             rm0 = random_data(g.c, seed + 5, -0.2, 0.2), rv0 = random_data(g.c, seed + 6, 0.5, 2),
             dg0 = random_data(g.c, seed + 7), db0 = random_data(g.c, seed + 8);
  const auto X = tensor(xs, x.d), G = tensor({g.c}, ga.d), B = tensor({g.c}, be.d);
  std::vector<double> mean, var;
  tt::bounds::channel_stats(g, x.d, mean, var);
  const tt::bounds::BnBounds eb = tt::bounds::bn_bounds(g, x.d, mean, var, eps);

  DeviceBuffer dX(x.f), dG(ga.f), dB(be.f), dDY(dy.f), dRM(rm0.f), dRV(rv0.f), dY(nans(numel)), dSM(nans(g.c)),
      dSI(nans(g.c)), dDX(accumulate ? dx0.f : nans(numel)), dDG(dg0.f), dDB(db0.f);

  // ---- training forward: output, saved statistics, running statistics after one update ----
  nn::Tensor<double> rrm = tensor({g.c}, rm0.d), rrv = tensor({g.c}, rv0.d);
  nn::BatchNormCache<double> cache;
  nn::BatchNormState st;
  st.training = true;
  st.eps = eps;
  st.momentum = momentum;
  const auto yref = nn::batchnorm2d_forward(X, G, B, rrm, rrv, st, &cache);
  dnn.bn_forward_training(g.n, g.c, P, eps, momentum, dX.get(), dG.get(), dB.get(), dRM.get(), dRV.get(), dSM.get(),
                          dSI.get(), dY.get());
  TASN_CUDA_CHECK(cudaStreamSynchronize(stream));
  const std::vector<float> smean = dSM.download(), sinv = dSI.download();
  {
    std::vector<double> by(numel);
    for (std::int64_t i = 0; i < numel; ++i) {
      const std::int64_t c = (i / P) % g.c;
      const double inv = 1 / std::sqrt(var[c] + eps), xm = std::fabs(x.d[i] - mean[c]);
      by[i] = 2 * (std::fabs(ga.d[c]) * inv * (eb.e_mu[c] + xm * eb.rel_inv[c]) +
                   4 * kU * (std::fabs(ga.d[c]) * xm * inv + std::fabs(be.d[c])));
    }
    expect_within(dY.download(), values(yref), by, "training y");
    std::vector<double> bm(g.c), binv(g.c), rinv(g.c), brm(g.c), brv(g.c);
    const double unbias = double(M) / double(M - 1);
    for (std::int64_t c = 0; c < g.c; ++c) {
      rinv[c] = 1 / std::sqrt(var[c] + eps);
      bm[c] = 2 * eb.e_mu[c] + kU * std::fabs(mean[c]);
      binv[c] = 2 * eb.rel_inv[c] * rinv[c];
      const double bv = 2 * eb.e_var[c] + kU * var[c];
      brm[c] = momentum * bm[c] + 3 * kU * (std::fabs(rm0.d[c]) + std::fabs(mean[c]));
      brv[c] = momentum * unbias * bv + 3 * kU * (rv0.d[c] + var[c] * unbias);
    }
    expect_within(smean, mean, bm, "saved mean");
    expect_within(sinv, rinv, binv, "saved invstd = 1 / sqrt(biased var + eps)");
    expect_within(dRM.download(), values(rrm), brm, "running_mean");
    // The biased variance would be off by momentum var / (M - 1): far outside this bound.
    expect_within(dRV.download(), values(rrv), brv, "running_var (unbiased, as PyTorch)");
    // PyTorch's rule, written out: the reference must agree with it too (it is what both follow)
    EXPECT_NEAR(rrv.data[0], (1 - momentum) * rv0.d[0] + momentum * var[0] * unbias, 1e-12);
  }

  // ---- training backward with cuDNN's saved statistics; the reference with its own ----
  {
    const auto DY = tensor(xs, dy.d);
    nn::Tensor<double> rdx(xs), rdg = tensor({g.c}, dg0.d), rdb = tensor({g.c}, db0.d);
    if (accumulate) rdx.set(dx0.d);
    nn::batchnorm2d_backward(X, G, DY, cache, true, &rdx, &rdg, &rdb);
    dnn.bn_backward(g.n, g.c, P, eps, dX.get(), dG.get(), dDY.get(), dSM.get(), dSI.get(), dDX.get(), accumulate,
                    dDG.get(), dDB.get());
    TASN_CUDA_CHECK(cudaStreamSynchronize(stream));
    // x_hat differs from the exact one by e_xh <= invstd (e_mu' + |x - mu| rel') with the saved
    // statistics' own errors (bounded above); dbeta, dgamma are M-term sums; dx combines them.
    std::vector<double> bdg(g.c), bdb(g.c), bdx(numel), A0(g.c, 0), A1(g.c, 0), exh(numel), r(numel);
    for (std::int64_t i = 0; i < numel; ++i) {
      const std::int64_t c = (i / P) % g.c;
      const double inv = 1 / std::sqrt(var[c] + eps), xh = std::fabs(x.d[i] - mean[c]) * inv;
      exh[i] = 2 * inv * (eb.e_mu[c] + std::fabs(x.d[i] - mean[c]) * eb.rel_inv[c]) + 4 * kU * (xh + 1);
      r[i] = xh + 1;
      A0[c] += std::fabs(dy.d[i]);
      A1[c] += std::fabs(dy.d[i]) * (xh + exh[i]);
    }
    for (std::int64_t c = 0; c < g.c; ++c) {
      bdb[c] = gamma_k(double(M) + 2) * (A0[c] + std::fabs(db0.d[c]));
      double sx = 0;
      for (std::int64_t n = 0; n < g.n; ++n)
        for (std::int64_t p = 0; p < P; ++p) sx += std::fabs(dy.d[(n * g.c + c) * P + p]) * exh[(n * g.c + c) * P + p];
      bdg[c] = gamma_k(double(M) + 4) * (A1[c] + std::fabs(dg0.d[c])) + sx;
    }
    for (std::int64_t i = 0; i < numel; ++i) {
      const std::int64_t c = (i / P) % g.c;
      const double inv = 1 / std::sqrt(var[c] + eps), k = std::fabs(ga.d[c]) * inv;
      const double sdyxh = std::fabs(rdg.data[c] - dg0.d[c]);
      bdx[i] = 2 * (k * (4 * kU * std::fabs(dy.d[i]) + (bdb[c] + r[i] * bdg[c] + sdyxh * exh[i]) / double(M) +
                         eb.rel_inv[c] * (std::fabs(dy.d[i]) + (A0[c] + r[i] * A1[c]) / double(M)))) +
               2 * kU * (std::fabs(rdx.data[i]) + (accumulate ? std::fabs(dx0.d[i]) : 0.0));
    }
    expect_within(dDX.download(), values(rdx), bdx, "training dx");
    expect_within(dDG.download(), values(rdg), bdg, "training dgamma");
    expect_within(dDB.download(), values(rdb), bdb, "training dbeta");
  }

  // ---- evaluation forward: the running statistics (the initial ones), left as they are ----
  {
    st.training = false;
    nn::Tensor<double> erm = tensor({g.c}, rm0.d), erv = tensor({g.c}, rv0.d);
    const auto eref = nn::batchnorm2d_forward(X, G, B, erm, erv, st, nullptr);
    DeviceBuffer eRM(rm0.f), eRV(rv0.f), eY(nans(numel));
    dnn.bn_forward_inference(g.n, g.c, P, eps, dX.get(), dG.get(), dB.get(), eRM.get(), eRV.get(), eY.get());
    TASN_CUDA_CHECK(cudaStreamSynchronize(stream));
    EXPECT_EQ(eRM.download(), rm0.f) << "evaluation leaves the running statistics alone";
    EXPECT_EQ(eRV.download(), rv0.f) << "evaluation leaves the running statistics alone";
    std::vector<double> bey(numel);
    for (std::int64_t i = 0; i < numel; ++i) {
      const std::int64_t c = (i / P) % g.c;
      const double inv = 1 / std::sqrt(rv0.d[c] + eps);
      bey[i] = 8 * kU * ((std::fabs(x.d[i]) + std::fabs(rm0.d[c])) * std::fabs(ga.d[c]) * inv + std::fabs(be.d[c]));
    }
    expect_within(eY.download(), values(eref), bey, "evaluation y");
  }
}

TEST_F(TrainerDnnGpu, BatchNormMatchesReference) {
  // M = N P from 2 (the unbiased variance doubles the biased one) to 4096; P = 1 after global pooling.
  std::uint64_t seed = 900;
  for (const auto& [g, acc] : std::vector<std::pair<BnShape, bool>>{{{2, 3, 5, 7}, false},
                                                                  {{8, 16, 8, 8}, true},
                                                                  {{1, 5, 1, 2}, true},
                                                                  {{4, 12, 13, 11}, false},
                                                                  {{2, 3, 3, 3}, true},
                                                                  {{16, 8, 1, 1}, false},
                                                                  {{64, 4, 8, 8}, true}})
    check_batchnorm(*dnn_, stream_, g, acc, seed += 20);
  EXPECT_EQ(dnn_->cached_geometries(), 7) << "one descriptor set per (N, C, P)";
}

// ---- linear -------------------------------------------------------------------------------------

void check_linear(gpu::Dnn& dnn, cudaStream_t stream, std::int64_t N, std::int64_t I, std::int64_t O, bool bias,
                  bool accumulate, bool want_dx, std::uint64_t seed, bool tf32 = false) {
  SCOPED_TRACE(::testing::Message() << "linear N " << N << ", I " << I << ", O " << O << (bias ? ", bias" : "")
                                    << (accumulate ? ", accumulate" : "") << (want_dx ? "" : ", no dx"));
  const Data x = random_data(N * I, seed), w = random_data(O * I, seed + 1), b = random_data(O, seed + 2),
             dy = random_data(N * O, seed + 3), dx0 = random_data(N * I, seed + 4), dw0 = random_data(O * I, seed + 5),
             db0 = random_data(O, seed + 6);
  const auto X = tensor({N, I}, x.d), W = tensor({O, I}, w.d), B = tensor({O}, b.d), DY = tensor({N, O}, dy.d);
  const auto aX = tensor({N, I}, abs_of(x.d)), aW = tensor({O, I}, abs_of(w.d)), aB = tensor({O}, abs_of(b.d)),
             aDY = tensor({N, O}, abs_of(dy.d));
  DeviceBuffer dX(x.f), dW(w.f), dB(b.f), dDY(dy.f), dY(nans(N * O)), dDX(accumulate ? dx0.f : nans(N * I)),
      dDW(dw0.f), dDB(db0.f);
  dnn.linear_forward(N, I, O, dX.get(), dW.get(), bias ? dB.get() : nullptr, dY.get());
  dnn.linear_backward(N, I, O, dX.get(), dW.get(), dDY.get(), want_dx ? dDX.get() : nullptr, accumulate, dDW.get(),
                      bias ? dDB.get() : nullptr);
  TASN_CUDA_CHECK(cudaStreamSynchronize(stream));
  const double t = tf32 ? 2 * kTf32U * (1 + kTf32U) : 0;

  const auto ref = nn::linear_forward(X, W, bias ? &B : nullptr);
  const auto mag = nn::linear_forward(aX, aW, bias ? &aB : nullptr);
  std::vector<double> by(mag.data.size());
  for (std::size_t i = 0; i < by.size(); ++i) by[i] = (gamma_k(double(I) + 2) + t) * mag.data[i] + 1e-30;
  expect_within(dY.download(), values(ref), by, "linear y");

  nn::Tensor<double> mdx({N, I}), mdw({O, I}), mdb({O});
  nn::linear_backward(aX, aW, aDY, &mdx, &mdw, &mdb);
  nn::Tensor<double> rdx({N, I}), rdw = tensor({O, I}, dw0.d), rdb = tensor({O}, db0.d);
  if (accumulate) rdx.set(dx0.d);
  nn::linear_backward(X, W, DY, &rdx, &rdw, &rdb);
  if (want_dx) {
    std::vector<double> bx(mdx.data.size());
    for (std::size_t i = 0; i < bx.size(); ++i)
      bx[i] = (gamma_k(double(O) + 2) + t) * (mdx.data[i] + (accumulate ? std::fabs(dx0.d[i]) : 0.0)) + 1e-30;
    expect_within(dDX.download(), values(rdx), bx, "linear dx");
  } else {
    for (float v : dDX.download()) ASSERT_EQ(std::isnan(v), !accumulate) << "dx was not asked for";
  }
  std::vector<double> bw(mdw.data.size()), bb(mdb.data.size());
  for (std::size_t i = 0; i < bw.size(); ++i)
    bw[i] = (gamma_k(double(N) + 2) + t) * (mdw.data[i] + std::fabs(dw0.d[i])) + 1e-30;
  for (std::size_t i = 0; i < bb.size(); ++i)
    bb[i] = gamma_k(double(N) + 2) * (mdb.data[i] + std::fabs(db0.d[i])) + 1e-30;
  expect_within(dDW.download(), values(rdw), bw, "linear dweight");
  if (bias) expect_within(dDB.download(), values(rdb), bb, "linear dbias");
  else EXPECT_EQ(dDB.download(), db0.f) << "dbias was not asked for";
}

TEST_F(TrainerDnnGpu, LinearMatchesReference) {
  std::uint64_t seed = 1000;
  check_linear(*dnn_, stream_, 6, 37, 11, true, false, true, seed += 10);
  check_linear(*dnn_, stream_, 6, 37, 11, false, true, true, seed += 10);
  check_linear(*dnn_, stream_, 1, 5, 3, true, true, true, seed += 10);
  check_linear(*dnn_, stream_, 64, 512, 200, true, true, true, seed += 10);   // the TASN heads' FC
  check_linear(*dnn_, stream_, 16, 2048, 10, true, false, false, seed += 10);  // no dx (the input is an image)
  check_linear(*dnn_, stream_, 1500, 16, 4, true, true, true, seed += 10);   // grows the ones vector
  check_linear(*dnn_, stream_, 7, 9, 5, true, false, true, seed += 10);      // and uses it again
}

TEST_F(TrainerDnnGpu, LinearTf32WithinItsRounding) {
  dnn_->set_tf32(true);
  check_linear(*dnn_, stream_, 64, 512, 200, true, true, true, 1100, true);
}

// ---- bf16 storage (--precision bf16) -------------------------------------------------------------
// Inputs rounded to bf16 first (so the bf16 call and the double reference read the same values);
// the bound of a bf16 result is the float summation bound plus its one rounding, 2^-8 of its value;
// float results (the linear layer's y and dw) keep the float bound.

constexpr double kBf16U = 0x1.0p-8;  // bf16 keeps 8 significant bits: unit roundoff 2^-8

Data bf16_data(std::int64_t n, std::uint64_t seed) {
  Data r = random_data(n, seed);
  for (std::size_t i = 0; i < r.f.size(); ++i) {
    r.f[i] = nn::bf16_to_float(nn::float_to_bf16(r.f[i]));
    r.d[i] = r.f[i];
  }
  return r;
}

// gk * mag + 2^-8 |ref| per element (+ what was accumulated into, in mag_extra).
std::vector<double> bf16_bound(double gk, const std::vector<double>& mag, const std::vector<double>& ref,
                               const std::vector<double>* mag_extra = nullptr) {
  std::vector<double> b(mag.size());
  for (std::size_t i = 0; i < b.size(); ++i) {
    const double m = mag[i] + (mag_extra ? std::fabs((*mag_extra)[i]) : 0.0);
    b[i] = gk * m + kBf16U * (std::fabs(ref[i]) + gk * m) + 1e-30;
  }
  return b;
}

void check_conv_bf16(gpu::Dnn& dnn, const ConvCase& c, std::uint64_t seed) {
  SCOPED_TRACE(describe(c) + " (bf16)");
  const nn::ConvGeometry& g = c.g;
  const std::vector<std::int64_t> xs{g.n, g.cin, g.h, g.w}, ws{g.cout, g.cin, g.kh, g.kw}, ys{g.n, g.cout, g.ho, g.wo};
  const Data x = bf16_data(g.x_numel(), seed), w = bf16_data(g.w_numel(), seed + 1), dy = bf16_data(g.y_numel(), seed + 3),
             dx0 = bf16_data(g.x_numel(), seed + 4);
  const auto X = tensor(xs, x.d), W = tensor(ws, w.d), DY = tensor(ys, dy.d);
  const auto aX = tensor(xs, abs_of(x.d)), aW = tensor(ws, abs_of(w.d)), aDY = tensor(ys, abs_of(dy.d));
  Bf16Buffer dX(x.f), dW(w.f), dDY(dy.f), dY(nans(g.y_numel())), dDX(c.accumulate ? dx0.f : nans(dx0.f.size())),
      dDW(nans(g.w_numel()));
  TestScratch scratch;
  dnn.conv_forward(g, dX.get(), dW.get(), dY.get(), scratch);
  dnn.conv_backward_data(g, dW.get(), dDY.get(), dDX.get(), c.accumulate, scratch);
  dnn.conv_backward_filter(g, dX.get(), dDY.get(), dDW.get(), scratch);
  TASN_CUDA_CHECK(cudaDeviceSynchronize());
  const gpu::ConvAlgorithms algos = dnn.conv_algorithms(g, true);
  SCOPED_TRACE(describe(algos));
  if (std::getenv("TASN_PRINT_ALGOS")) std::printf("%s (bf16): %s\n", describe(c).c_str(), describe(algos).c_str());
  {
    const auto ref = nn::conv2d_forward(X, W, nullptr, nn::Conv2dArgs(g.a));
    const auto mag = nn::conv2d_forward(aX, aW, nullptr, nn::Conv2dArgs(g.a));
    const double gk = gamma_k(double(g.cin * g.kh * g.kw) + 2) * (algos.forward_transform ? kTransformSlack : 1);
    expect_within(dY.download(), values(ref), bf16_bound(gk, values(mag), values(ref)), "bf16 forward y");
  }
  nn::Tensor<double> mdx(xs), mdw(ws);
  nn::conv2d_backward(aX, aW, aDY, nn::Conv2dArgs(g.a), &mdx, &mdw, nullptr);
  nn::Tensor<double> rdx(xs), rdw(ws);
  if (c.accumulate) rdx.set(dx0.d);
  nn::conv2d_backward(X, W, DY, nn::Conv2dArgs(g.a), &rdx, &rdw, nullptr);
  {
    const double gk = gamma_k(double(g.cout * g.kh * g.kw) + 2) * (algos.backward_data_transform ? kTransformSlack : 1);
    expect_within(dDX.download(), values(rdx), bf16_bound(gk, values(mdx), values(rdx), c.accumulate ? &dx0.d : nullptr),
                  "bf16 dx");
  }
  {
    const double gk = gamma_k(double(g.n * g.ho * g.wo) + 2) * (algos.backward_filter_transform ? kTransformSlack : 1);
    expect_within(dDW.download(), values(rdw), bf16_bound(gk, values(mdw), values(rdw)), "bf16 dweight (written)");
  }
}

TEST_F(TrainerDnnGpu, Bf16ConvolutionMatchesReference) {
  std::uint64_t seed = 2000;
  for (const auto& c : conv_cases()) check_conv_bf16(*dnn_, c, seed += 10);  // dilations 1-3, the stem, random
  EXPECT_EQ(dnn_->conv_algorithms(conv_cases()[0].g).forward, "") << "bf16 plans are not the float ones";
}

TEST_F(TrainerDnnGpu, Bf16LinearMatchesReference) {
  for (const bool accumulate : {false, true}) {
    const std::int64_t N = 64, I = 512, O = 200;
    SCOPED_TRACE(::testing::Message() << "bf16 linear, accumulate " << accumulate);
    const Data x = bf16_data(N * I, 3000), w = bf16_data(O * I, 3001), b = random_data(O, 3002),
               dy = bf16_data(N * O, 3003), dx0 = bf16_data(N * I, 3004), dw0 = random_data(O * I, 3005);
    const auto X = tensor({N, I}, x.d), W = tensor({O, I}, w.d), B = tensor({O}, b.d), DY = tensor({N, O}, dy.d);
    const auto aX = tensor({N, I}, abs_of(x.d)), aW = tensor({O, I}, abs_of(w.d)), aB = tensor({O}, abs_of(b.d)),
               aDY = tensor({N, O}, abs_of(dy.d));
    Bf16Buffer dX(x.f), dW(w.f), dDY(dy.f), dDX(accumulate ? dx0.f : nans(N * I));
    DeviceBuffer dB(b.f), dY(nans(N * O)), dDW(dw0.f);
    dnn_->linear_forward(N, I, O, dX.get(), dW.get(), dB.get(), dY.get());
    dnn_->linear_backward(N, I, O, dX.get(), dW.get(), dDY.get(), dDX.get(), accumulate, dDW.get());
    sync();
    const auto ref = nn::linear_forward(X, W, &B), mag = nn::linear_forward(aX, aW, &aB);
    std::vector<double> by(mag.data.size());
    for (std::size_t i = 0; i < by.size(); ++i) by[i] = gamma_k(double(I) + 2) * mag.data[i] + 1e-30;
    expect_within(dY.download(), values(ref), by, "bf16 linear y (float)");
    nn::Tensor<double> mdx({N, I}), mdw({O, I}), mdb({O});
    nn::linear_backward(aX, aW, aDY, &mdx, &mdw, &mdb);
    nn::Tensor<double> rdx({N, I}), rdw = tensor({O, I}, dw0.d), rdb({O});
    if (accumulate) rdx.set(dx0.d);
    nn::linear_backward(X, W, DY, &rdx, &rdw, &rdb);
    expect_within(dDX.download(), values(rdx),
                  bf16_bound(gamma_k(double(O) + 2), values(mdx), values(rdx), accumulate ? &dx0.d : nullptr), "bf16 linear dx");
    std::vector<double> bw(mdw.data.size());
    for (std::size_t i = 0; i < bw.size(); ++i) bw[i] = gamma_k(double(N) + 2) * (mdw.data[i] + std::fabs(dw0.d[i])) + 1e-30;
    expect_within(dDW.download(), values(rdw), bw, "bf16 linear dweight (float, added)");
  }
}

// ---- errors -------------------------------------------------------------------------------------

bool has(const std::string& msg, const char* part) { return msg.find(part) != std::string::npos; }

TEST(TrainerDnnGpuErrors, CudnnCheckNamesTheCallAndTheStatus) {
  // No device needed: cudnnGetErrorString is a table.
  try {
    TASN_CUDNN_CHECK(CUDNN_STATUS_BAD_PARAM);
    FAIL() << "no exception";
  } catch (const tasn::CudaError& e) {
    const std::string msg = e.what();
    EXPECT_TRUE(has(msg, "CUDNN_STATUS_BAD_PARAM failed: CUDNN_STATUS_BAD_PARAM")) << msg;
    EXPECT_TRUE(has(msg, "test_trainer_dnn_gpu.cpp:")) << msg;
    if (std::getenv("TASN_PRINT_ALGOS")) std::printf("%s\n", msg.c_str());
  }
}

TEST(TrainerDnnGpuErrors, WithoutADeviceTheConstructorThrows) {
  std::string why;
  if (tt::gpu::device_available(&why)) GTEST_SKIP() << "a device is usable: nothing to refuse";
  try {
    gpu::Dnn dnn;
    FAIL() << "no exception";
  } catch (const tasn::CudaError& e) {
    EXPECT_TRUE(has(e.what(), "cudnnCreate(&impl_->cudnn) failed: CUDNN_STATUS_")) << e.what();
    if (std::getenv("TASN_PRINT_ALGOS")) std::printf("%s\n", e.what());
  }
}

TEST_F(TrainerDnnGpu, BadArgumentsThrowWithSizes) {
  DeviceBuffer buf(4096);
  float* p = buf.get();
  TestScratch scratch;
  nn::ConvGeometry g = geometry(2, 3, 8, 8, 4, 3, 1, 1, 1);
  g.ho = 7;
  std::string msg = tt::invalid_argument_message([&] { dnn_->conv_forward(g, p, p, nullptr, p, scratch); });
  EXPECT_TRUE(has(msg, "the geometry says the output is 7 x 8 but")) << msg;
  EXPECT_TRUE(has(msg, "gives 8 x 8")) << msg;

  msg = tt::invalid_argument_message([&] {
    dnn_->conv_forward(geometry(2, 3, 8, 8, 4, 3, 1, 1, 1), nullptr, p, nullptr, p, scratch);
  });
  EXPECT_TRUE(has(msg, "Dnn::conv_forward: x is null but must hold 384 elements")) << msg;

  // 3e9 images: n does not fit cuDNN's int
  msg = tt::invalid_argument_message([&] {
    dnn_->conv_forward(geometry(3000000000, 3, 8, 8, 4, 3, 1, 1, 1), p, p, nullptr, p, scratch);
  });
  EXPECT_TRUE(has(msg, "n = 3000000000 exceeds the 32-bit int that cuDNN's legacy API takes")) << msg;
  // every size fits, the tensor does not: 70000 x 64 x 32 x 32 elements
  msg = tt::invalid_argument_message([&] {
    dnn_->conv_backward_data(geometry(70000, 64, 32, 32, 64, 3, 1, 1, 1), p, p, p, false, scratch);
  });
  EXPECT_TRUE(has(msg, "x (70000, 64, 32, 32) holds 4587520000 elements")) << msg;
  EXPECT_TRUE(has(msg, "split the batch")) << msg;

  msg = tt::invalid_argument_message(
      [&] { dnn_->bn_forward_training(1, 4, 1, 1e-5, 0.1, p, p, p, p, p, p, p, p); });
  EXPECT_TRUE(has(msg, "training needs more than one value per channel, got N * P = 1")) << msg;
  msg = tt::invalid_argument_message(
      [&] { dnn_->bn_forward_training(2, 4, 3, 1e-5, 0.1, p, p, p, p, nullptr, p, p, p); });
  EXPECT_TRUE(has(msg, "running_mean and running_var must both be given or both be null")) << msg;
  msg = tt::invalid_argument_message(
      [&] { dnn_->bn_backward(2, 4, 3, 1e-5, p, p, p, p, p, p, false, nullptr, p); });
  EXPECT_TRUE(has(msg, "dx, dgamma and dbeta must all be given")) << msg;
  msg = tt::invalid_argument_message([&] { dnn_->bn_forward_inference(2, 4, 3, NAN, p, p, p, p, p, p); });
  EXPECT_TRUE(has(msg, "eps must be finite")) << msg;

  msg = tt::invalid_argument_message([&] { dnn_->linear_forward(2, 3000000000, 4, p, p, nullptr, p); });
  EXPECT_TRUE(has(msg, "Dnn::linear_forward: I = 3000000000 exceeds the 32-bit int that cuBLAS takes")) << msg;
  msg = tt::invalid_argument_message([&] { dnn_->linear_backward(2, 3, 0, p, p, p, nullptr, false, p, p); });
  EXPECT_TRUE(has(msg, "N, I, O must be >= 1, got (2, 3, 0)")) << msg;
  EXPECT_EQ(dnn_->cached_geometries(), 0) << "nothing is cached for a refused geometry";
}

}  // namespace
