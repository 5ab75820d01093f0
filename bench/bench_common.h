// bench/bench_common.h - shared pieces of the CPU benchmark programs.
#pragma once

#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <vector>

#include "tasn/core/parallel.h"

namespace tasn::bench {

using Clock = std::chrono::steady_clock;

// n values uniform in [lo, hi) from an LCG (deterministic).
template <class T = float>
std::vector<T> filled(std::int64_t n, std::uint64_t seed, T lo, T hi) {
  std::vector<T> v(static_cast<std::size_t>(n));
  for (auto& x : v) {
    seed = seed * 6364136223846793005ull + 1442695040888963407ull;
    x = lo + (hi - lo) * static_cast<T>((seed >> 11) * 0x1.0p-53);
  }
  return v;
}

// Best wall time of reps calls of f.
template <class F>
double best_seconds(int reps, F&& f) {
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = Clock::now();
    f();
    best = std::min(best, std::chrono::duration<double>(Clock::now() - t0).count());
  }
  return best;
}

// Runs the benchmark loop over f; returns wall seconds per iteration.
template <class F>
double loop_seconds(benchmark::State& state, F&& f) {
  const auto t0 = Clock::now();
  for (auto _ : state) {
    f();
    benchmark::ClobberMemory();
  }
  return std::chrono::duration<double>(Clock::now() - t0).count() /
         static_cast<double>(std::max<benchmark::IterationCount>(1, state.iterations()));
}

// Best of 3 threaded memcpy of bytes/2 read into bytes/2 written: the traffic bound of `bytes`.
inline double memcpy_seconds(double bytes) {
  const std::int64_t half = static_cast<std::int64_t>(bytes / 2), chunks = 64, per = (half + chunks - 1) / chunks;
  std::vector<char> a(static_cast<std::size_t>(half), 1), b(static_cast<std::size_t>(half));
  return best_seconds(3, [&] {
    tasn::cpu::parallel_for(0, chunks, [&](std::int64_t c) {
      const std::int64_t b0 = c * per, len = std::min(per, half - b0);
      if (len > 0) std::memcpy(b.data() + b0, a.data() + b0, static_cast<std::size_t>(len));
    });
    benchmark::DoNotOptimize(b.data());
  });
}

// GB/s of `bytes` in `sec` and x_memcpy against the copy time of the same bytes.
inline void set_bandwidth_counters(benchmark::State& state, double bytes, double sec, double copy_sec) {
  state.counters["GB/s"] = bytes / sec * 1e-9;
  state.counters["memcpy_GB/s"] = bytes / copy_sec * 1e-9;
  state.counters["x_memcpy"] = copy_sec / sec;
}

}  // namespace tasn::bench
