// bench/bench_cuda_common.cuh - shared pieces of the CUDA benchmark programs.
#pragma once

#include <benchmark/benchmark.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "bench_common.h"
#include "tasn/core/device_buffer.cuh"
#include "tasn/core/dtype.cuh"

namespace tasn::bench {

// False (with the reason) when no CUDA device can be used; benchmarks then SkipWithError.
inline bool device_ok(std::string* reason) {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess || n == 0) {
    *reason = std::string("no usable CUDA device: ") + (e != cudaSuccess ? cudaGetErrorString(e) : "0 devices");
    cudaGetLastError();
    return false;
  }
  return true;
}

#define TASN_BENCH_REQUIRE_DEVICE(state)          \
  do {                                            \
    std::string why_;                             \
    if (!::tasn::bench::device_ok(&why_)) {       \
      (state).SkipWithError(why_.c_str());        \
      return;                                     \
    }                                             \
  } while (0)

// n values uniform in [lo, hi) (bench_common.h's filled), converted to T and uploaded.
template <class T>
tasn::cuda::DeviceBuffer<T> random_device(std::int64_t n, float lo, float hi, std::uint64_t seed) {
  const auto f = filled<float>(n, seed, lo, hi);
  std::vector<T> h(f.size());
  for (std::size_t i = 0; i < f.size(); ++i) h[i] = tasn::cuda::from_float<T>(f[i]);
  return tasn::cuda::DeviceBuffer<T>::from_host(h);
}

using tasn::cuda::Stream;

// Times work enqueued on a stream with CUDA events.
class EventTimer {
 public:
  explicit EventTimer(cudaStream_t s) : s_(s) {
    TASN_CUDA_CHECK(cudaEventCreate(&a_));
    TASN_CUDA_CHECK(cudaEventCreate(&b_));
  }
  ~EventTimer() {
    cudaEventDestroy(a_);
    cudaEventDestroy(b_);
  }
  EventTimer(const EventTimer&) = delete;
  EventTimer& operator=(const EventTimer&) = delete;

  template <class F>
  double seconds(F&& f) {
    TASN_CUDA_CHECK(cudaEventRecord(a_, s_));
    f();
    TASN_CUDA_CHECK(cudaEventRecord(b_, s_));
    TASN_CUDA_CHECK(cudaEventSynchronize(b_));
    float ms = 0.f;
    TASN_CUDA_CHECK(cudaEventElapsedTime(&ms, a_, b_));
    return ms * 1e-3;
  }
  template <class F>
  double best_of(int reps, F&& f) {
    double best = 1e30;
    for (int r = 0; r < reps; ++r) best = std::min(best, seconds(f));
    return best;
  }

 private:
  cudaStream_t s_;
  cudaEvent_t a_, b_;
};

// Runs the benchmark loop timing op() with events (manual time); returns seconds per iteration.
template <class F>
double run_timed(benchmark::State& state, EventTimer& timer, F&& op) {
  double total = 0.0;
  for (auto _ : state) {
    const double sec = timer.seconds(op);
    state.SetIterationTime(sec);
    total += sec;
  }
  return total / static_cast<double>(std::max<benchmark::IterationCount>(1, state.iterations()));
}

// Device-to-device copy time of `bytes` bytes read + written in total (the traffic bound), best
// of 5, measured in the same run as the kernel it is compared with.
inline double memcpy_seconds(EventTimer& timer, cudaStream_t s, double bytes) {
  const std::size_t half = static_cast<std::size_t>(bytes / 2);
  tasn::cuda::DeviceBuffer<unsigned char> a(half), b(half);
  return timer.best_of(5, [&] { TASN_CUDA_CHECK(cudaMemcpyAsync(b.get(), a.get(), half, cudaMemcpyDeviceToDevice, s)); });
}


}  // namespace tasn::bench
