// CPU losses at (N = 96, K = 200) and (N = 256, K = 5089), fused loss + gradient, float.
//
// Counters: GB/s of the compulsory traffic (logits read once, gradient written once; distillation
// reads both logit tensors) and x_memcpy = std::memcpy time of the same byte count (split over the
// same threads) / operator time, measured in the same run (1.0 = at the memory-traffic bound).
#include <benchmark/benchmark.h>

#include <chrono>
#include <cstring>
#include <vector>

#include "tasn/losses.h"

namespace {

using Clock = std::chrono::steady_clock;

std::vector<float> filled(std::int64_t n, std::uint64_t seed) {
  std::vector<float> v(static_cast<std::size_t>(n));
  for (auto& x : v) {
    seed = seed * 6364136223846793005ull + 1442695040888963407ull;
    x = -10.f + 20.f * static_cast<float>((seed >> 40) * 0x1.0p-24);
  }
  return v;
}

// Best of 5 threaded memcpy of bytes/2 (read) into bytes/2 (written).
double memcpy_seconds(double bytes) {
  const std::int64_t half = static_cast<std::int64_t>(bytes / 2);
  std::vector<char> a(half, 1), b(half);
  const std::int64_t chunks = 64, per = (half + chunks - 1) / chunks;
  double best = 1e30;
  for (int r = 0; r < 5; ++r) {
    const auto t0 = Clock::now();
    tasn::cpu::parallel_for(0, chunks, [&](std::int64_t c) {
      const std::int64_t b0 = c * per, len = std::min(per, half - b0);
      if (len > 0) std::memcpy(b.data() + b0, a.data() + b0, static_cast<std::size_t>(len));
    });
    best = std::min(best, std::chrono::duration<double>(Clock::now() - t0).count());
    benchmark::DoNotOptimize(b.data());
  }
  return best;
}

template <class F>
void timed(benchmark::State& state, double bytes, F&& op) {
  op();
  const double copy_s = memcpy_seconds(bytes);
  const auto t0 = Clock::now();
  for (auto _ : state) {
    op();
    benchmark::ClobberMemory();
  }
  const double sec = std::chrono::duration<double>(Clock::now() - t0).count() / static_cast<double>(state.iterations());
  state.counters["GB/s"] = bytes / sec * 1e-9;
  state.counters["memcpy_GB/s"] = bytes / copy_s * 1e-9;
  state.counters["x_memcpy"] = copy_s / sec;
}

void BM_Distillation(benchmark::State& state) {
  const std::int64_t n = state.range(0), k = state.range(1);
  const auto zs = filled(n * k, 1), zt = filled(n * k, 2);
  std::vector<float> g(n * k);
  float loss = 0;
  timed(state, 3.0 * n * k * sizeof(float), [&] {
    tasn::cpu::distillation_loss<float>(zs.data(), zt.data(), n, k, tasn::DistillationOptions{}, &loss, g.data());
  });
}

void BM_CrossEntropy(benchmark::State& state) {
  const std::int64_t n = state.range(0), k = state.range(1);
  const auto z = filled(n * k, 3);
  std::vector<std::int64_t> y(n);
  for (std::int64_t i = 0; i < n; ++i) y[i] = (i * 7919) % k;
  std::vector<float> g(n * k);
  float loss = 0;
  tasn::CrossEntropyOptions opt;
  opt.grad_scale = 0.5;
  timed(state, 2.0 * n * k * sizeof(float), [&] {
    tasn::cpu::softmax_cross_entropy<float>(z.data(), y.data(), n, k, opt, &loss, g.data());
  });
}

BENCHMARK(BM_Distillation)->Args({96, 200})->Args({256, 5089})->UseRealTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_CrossEntropy)->Args({96, 200})->Args({256, 5089})->UseRealTime()->Unit(benchmark::kMicrosecond);

}  // namespace

BENCHMARK_MAIN();
