// CPU losses at (N = 96, K = 200) and (N = 256, K = 5089), fused loss + gradient, float.
//
// Counters: GB/s of the compulsory traffic (logits read once, gradient written once; distillation
// reads both logit tensors) and x_memcpy = std::memcpy time of the same byte count (split over the
// same threads) / operator time, measured in the same run (1.0 = at the memory-traffic bound).
// The operators run as a caller would: check_finite on (the default), workspace allocated per call.
#include <benchmark/benchmark.h>

#include <vector>

#include "bench_common.h"

#include "tasn/losses.h"

namespace {

using tasn::bench::filled;

template <class F>
void timed(benchmark::State& state, double bytes, F&& op) {
  op();
  const double copy_s = tasn::bench::memcpy_seconds(bytes);
  tasn::bench::set_bandwidth_counters(state, bytes, tasn::bench::loop_seconds(state, op), copy_s);
}

void BM_Distillation(benchmark::State& state) {
  const std::int64_t n = state.range(0), k = state.range(1);
  const auto zs = filled<float>(n * k, 1, -10.f, 10.f), zt = filled<float>(n * k, 2, -10.f, 10.f);
  std::vector<float> g(n * k);
  float loss = 0;
  tasn::DistillationArgs<float> args;
  args.student = {zs.data(), {n, k}};
  args.teacher = {zt.data(), {n, k}};
  args.loss = {&loss, {1}};
  args.dstudent = {g.data(), {n, k}};
  timed(state, 3.0 * n * k * sizeof(float), [&] { tasn::cpu::distillation_loss(args); });
}

void BM_CrossEntropy(benchmark::State& state) {
  const std::int64_t n = state.range(0), k = state.range(1);
  const auto z = filled<float>(n * k, 3, -10.f, 10.f);
  std::vector<std::int64_t> y(n);
  for (std::int64_t i = 0; i < n; ++i) y[i] = (i * 7919) % k;
  std::vector<float> g(n * k);
  float loss = 0;
  tasn::CrossEntropyArgs<float> args;
  args.logits = {z.data(), {n, k}};
  args.labels = {y.data(), {n}};
  args.loss = {&loss, {1}};
  args.dlogits = {g.data(), {n, k}};
  args.options.grad_scale = 0.5;
  timed(state, 2.0 * n * k * sizeof(float), [&] { tasn::cpu::softmax_cross_entropy(args); });
}

BENCHMARK(BM_Distillation)->Args({96, 200})->Args({256, 5089})->UseRealTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_CrossEntropy)->Args({96, 200})->Args({256, 5089})->UseRealTime()->Unit(benchmark::kMicrosecond);

}  // namespace

BENCHMARK_MAIN();
