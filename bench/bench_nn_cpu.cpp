// The example trainer's CPU layers: conv2d forward / backward at ResNet-50 shapes and whole
// ResNet-18 / ResNet-50 forward + backward at 224 x 224, batch 8, float.
//
// Counters: GFLOP/s (2 * MACs; backward counts the dx and dW products) and x_gemm = the layer's
// GFLOP/s / the GFLOP/s of a plain Eigen GEMM of the same M, N, K measured in the same run (the
// im2col + GEMM bound; conv can only approach it). For whole nets the GEMM rate of the largest
// conv of layer3 serves as the reference.
#include <benchmark/benchmark.h>

#include <vector>

#include "bench_common.h"
#include "nn/exec.h"
#include "nn/resnet.h"

namespace {

namespace nn = tasn::nn;
using tasn::bench::best_seconds;
using tasn::bench::loop_seconds;

nn::Tensor<float> rnd(std::vector<std::int64_t> shape, std::uint64_t seed) {
  nn::Tensor<float> t(std::move(shape));
  t.set(tasn::bench::filled<float>(t.numel(), seed, -1.f, 1.f));
  return t;
}

// GFLOP/s of a plain (m x k) * (k x n) Eigen GEMM, best of 3.
double gemm_gflops(std::int64_t m, std::int64_t n, std::int64_t k) {
  nn::Mat<float> a = nn::Mat<float>::Random(m, k), b = nn::Mat<float>::Random(k, n), c(m, n);
  const double s = best_seconds(3, [&] { c.noalias() = a * b; });
  benchmark::DoNotOptimize(c.data());
  return 2.0 * m * n * k / s * 1e-9;
}

// Args: cin, cout, k, stride, H (square input), backward?
void BM_Conv(benchmark::State& state) {
  const std::int64_t cin = state.range(0), cout = state.range(1), k = state.range(2), stride = state.range(3),
                     H = state.range(4), N = 8;
  const bool backward = state.range(5) != 0;
  const auto x = rnd({N, cin, H, H}, 1), w = rnd({cout, cin, k, k}, 2);
  const nn::Conv2dArgs a{stride, k / 2, 1};
  const auto y = nn::conv2d_forward(x, w, nullptr, a);
  const auto dy = rnd(y.shape, 3);
  nn::Tensor<float> dx(x.shape), dw(w.shape);
  const std::int64_t M = cout, K = cin * k * k, P = N * y.dim(2) * y.dim(3);
  const double flops = 2.0 * M * K * P * (backward ? 2 : 1);
  const double sec = loop_seconds(state, [&] {
    if (backward) nn::conv2d_backward(x, w, dy, a, &dx, &dw, nullptr);
    else benchmark::DoNotOptimize(nn::conv2d_forward(x, w, nullptr, a));
  });
  const double gf = flops / sec * 1e-9;
  state.counters["GFLOP/s"] = gf;
  state.counters["gemm_GFLOP/s"] = gemm_gflops(M, P, K);
  state.counters["x_gemm"] = gf / state.counters["gemm_GFLOP/s"];
}

void BM_ResNet(benchmark::State& state) {
  const bool bottleneck = state.range(0) == 50;
  const auto backend = state.range(1) ? nn::Backend::OneDnn : nn::Backend::Reference;
  if (backend == nn::Backend::OneDnn && !nn::onednn_built()) {
    state.SkipWithError("this build has no oneDNN");
    return;
  }
  state.SetLabel(nn::to_string(backend));
  nn::ParamStore<float> ps;
  nn::ResNet<float> net(ps, bottleneck ? nn::ResNetConfig::resnet50() : nn::ResNetConfig::resnet18());
  ps.allocate();
  nn::init_torchvision(ps, 1, false, bottleneck ? ".bn3.weight" : ".bn2.weight");
  nn::CpuExec<float> ex(backend);
  const auto x = rnd({8, 3, 224, 224}, 4);
  const auto dy = rnd({8, 1000}, 5);
  const double sec = loop_seconds(state, [&] {
    ex.begin_step();
    ps.zero_grad();
    net.forward(ex, tasn::Tensor4<const float>(x.ptr(), {8, 3, 224, 224}), true);
    net.backward(ex, tasn::Tensor2<const float>(dy.ptr(), {8, 1000}));
    benchmark::DoNotOptimize(ps.at("conv1.weight").grad.ptr());
  });
  // forward MACs: ResNet-18 1.82 G, ResNet-50 4.11 G per 224 x 224 image; backward ~2x forward
  const double flops = 3.0 * 2.0 * (bottleneck ? 4.11e9 : 1.82e9) * 8;
  const double gf = flops / sec * 1e-9;
  state.counters["GFLOP/s"] = gf;
  state.counters["gemm_GFLOP/s"] = gemm_gflops(256, 8 * 14 * 14, 256 * 9);
  state.counters["x_gemm"] = gf / state.counters["gemm_GFLOP/s"];
  state.counters["images/s"] = benchmark::Counter(8.0 * state.iterations(), benchmark::Counter::kIsRate);
}

void conv_shapes(benchmark::internal::Benchmark* b) {
  for (int bwd : {0, 1}) {
    b->Args({3, 64, 7, 2, 224, bwd});     // conv1
    b->Args({64, 64, 3, 1, 56, bwd});     // layer1 3x3
    b->Args({256, 64, 1, 1, 56, bwd});    // layer1 1x1 reduce
    b->Args({256, 256, 3, 1, 14, bwd});   // layer3 3x3
    b->Args({1024, 2048, 1, 2, 14, bwd}); // layer4 downsample
  }
  b->ArgNames({"cin", "cout", "k", "stride", "H", "bwd"})->UseRealTime()->Unit(benchmark::kMillisecond)->Iterations(3);
}

BENCHMARK(BM_Conv)->Apply(conv_shapes);
BENCHMARK(BM_ResNet)->Args({18, 0})->Args({18, 1})->Args({50, 0})->Args({50, 1})->ArgNames({"depth", "onednn"})->UseRealTime()->Unit(benchmark::kMillisecond)->Iterations(1);

}  // namespace

BENCHMARK_MAIN();
