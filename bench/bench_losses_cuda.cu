// CUDA losses at TASN sizes (N = 96, K = 200: CUB-200 with batch 96) and iNaturalist-like sizes
// (N = 256, K = 5089). Fused forward + backward, one kernel per call (+ a one-block reduction).
//
// Counters: GB/s of the compulsory traffic (read the logits once, write the gradient once;
// distillation reads both logit tensors) and x_memcpy = device-to-device memcpy time of the same
// byte count / kernel time, measured in the same run (1.0 = at the memory-traffic bound).
// The kernels alone, as before the value checks existed: options.check_finite = false (with it,
// each call adds a scan of its inputs and one read-back with a stream synchronisation).
#include <benchmark/benchmark.h>

#include <cstdint>
#include <vector>

#include "bench_cuda_common.cuh"
#include "tasn/losses.cuh"

namespace {

using tasn::Reduction;
using tasn::bench::EventTimer;
using tasn::bench::random_device;
using tasn::bench::Stream;
using tasn::cuda::DeviceBuffer;
using tasn::cuda::RowKernel;

template <class T>
void BM_Distillation(benchmark::State& state, RowKernel kernel) {
  TASN_BENCH_REQUIRE_DEVICE(state);
  const std::int64_t n = state.range(0), k = state.range(1);
  Stream stream;
  const tasn::cuda::testing::ScopedRowKernel forced(kernel);
  tasn::cuda::Context ctx;
  ctx.stream = stream.get();
  auto zs = random_device<T>(n * k, -10.f, 10.f, 1), zt = random_device<T>(n * k, -10.f, 10.f, 2);
  DeviceBuffer<T> loss(1), g(n * k);
  tasn::DistillationArgs<T> args;
  args.student = {zs.get(), {n, k}};
  args.teacher = {zt.get(), {n, k}};
  args.loss = {loss.get(), {1}};
  args.dstudent = {g.get(), {n, k}};
  args.options.check_finite = false;
  const std::size_t wb = tasn::cuda::workspace_bytes(args);
  DeviceBuffer<unsigned char> ws(wb);
  auto op = [&] { tasn::cuda::distillation_loss(ctx, args, {ws.get(), wb}); };
  EventTimer timer(stream.get());
  op();
  const double bytes = 3.0 * n * k * sizeof(T);
  const double copy_s = tasn::bench::memcpy_seconds(timer, stream.get(), bytes);
  tasn::bench::set_bandwidth_counters(state, bytes, tasn::bench::run_timed(state, timer, op), copy_s);
}

template <class T>
void BM_CrossEntropy(benchmark::State& state, RowKernel kernel) {
  TASN_BENCH_REQUIRE_DEVICE(state);
  const std::int64_t n = state.range(0), k = state.range(1);
  Stream stream;
  const tasn::cuda::testing::ScopedRowKernel forced(kernel);
  tasn::cuda::Context ctx;
  ctx.stream = stream.get();
  auto z = random_device<T>(n * k, -10.f, 10.f, 3);
  std::vector<std::int64_t> y(n);
  for (std::int64_t i = 0; i < n; ++i) y[i] = (i * 7919) % k;
  auto labels = DeviceBuffer<std::int64_t>::from_host(y);
  DeviceBuffer<T> loss(1), g(n * k);
  tasn::CrossEntropyArgs<T> args;
  args.logits = {z.get(), {n, k}};
  args.labels = {labels.get(), {n}};
  args.loss = {loss.get(), {1}};
  args.dlogits = {g.get(), {n, k}};
  args.options.grad_scale = 0.5;
  args.options.check_finite = false;
  const std::size_t wb = tasn::cuda::workspace_bytes(args);
  DeviceBuffer<unsigned char> ws(wb);
  auto op = [&] { tasn::cuda::softmax_cross_entropy(ctx, args, {ws.get(), wb}); };
  EventTimer timer(stream.get());
  op();
  const double bytes = 2.0 * n * k * sizeof(T);
  const double copy_s = tasn::bench::memcpy_seconds(timer, stream.get(), bytes);
  tasn::bench::set_bandwidth_counters(state, bytes, tasn::bench::run_timed(state, timer, op), copy_s);
}

void sizes(benchmark::internal::Benchmark* b) {
  b->Args({96, 200})->Args({256, 5089})->UseManualTime()->Unit(benchmark::kMicrosecond);
}

// BENCHMARK_CAPTURE takes a plain function name: one wrapper per storage type.
void BM_DistillationF32(benchmark::State& s, RowKernel k) { BM_Distillation<float>(s, k); }
void BM_DistillationF16(benchmark::State& s, RowKernel k) { BM_Distillation<__half>(s, k); }
void BM_DistillationBF16(benchmark::State& s, RowKernel k) { BM_Distillation<__nv_bfloat16>(s, k); }
void BM_CrossEntropyF32(benchmark::State& s, RowKernel k) { BM_CrossEntropy<float>(s, k); }
void BM_CrossEntropyF16(benchmark::State& s, RowKernel k) { BM_CrossEntropy<__half>(s, k); }
void BM_CrossEntropyBF16(benchmark::State& s, RowKernel k) { BM_CrossEntropy<__nv_bfloat16>(s, k); }

BENCHMARK_CAPTURE(BM_DistillationF32, auto, RowKernel::Auto)->Apply(sizes);
BENCHMARK_CAPTURE(BM_DistillationF32, warp, RowKernel::Warp)->Apply(sizes);
BENCHMARK_CAPTURE(BM_DistillationF32, block, RowKernel::Block)->Apply(sizes);
BENCHMARK_CAPTURE(BM_DistillationF16, auto, RowKernel::Auto)->Apply(sizes);
BENCHMARK_CAPTURE(BM_DistillationBF16, auto, RowKernel::Auto)->Apply(sizes);
BENCHMARK_CAPTURE(BM_CrossEntropyF32, auto, RowKernel::Auto)->Apply(sizes);
BENCHMARK_CAPTURE(BM_CrossEntropyF32, warp, RowKernel::Warp)->Apply(sizes);
BENCHMARK_CAPTURE(BM_CrossEntropyF32, block, RowKernel::Block)->Apply(sizes);
BENCHMARK_CAPTURE(BM_CrossEntropyF16, auto, RowKernel::Auto)->Apply(sizes);
BENCHMARK_CAPTURE(BM_CrossEntropyBF16, auto, RowKernel::Auto)->Apply(sizes);

}  // namespace

BENCHMARK_MAIN();
