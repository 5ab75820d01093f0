// CUDA attention sampler at the TASN sizes: N = 96, image 3 x 512 x 512, attention 28 x 28
// upsampled to 512 x 512, output 224 x 224.
//
// Counters and baselines (measured in the same run):
//   marginals  fused (no upsampled map in memory) vs materialised (upsample kernel + marginals of
//              the 512 x 512 maps): x_materialised = materialised time / fused time
//   grid       the block-parallel grid kernel vs a serial per-sample generator (one thread per
//              sample, as the official PyTorch port): x_serial = serial time / parallel time
//   sampling   forward and backward in GB/s of the compulsory traffic (image read once + output
//              written once; backward: dout read once + dimg written once) and x_memcpy against a
//              device memcpy of the same bytes; the general-grid sampler (N, Ho, Wo, 2) as the
//              baseline of the separable one: x_general = general time / separable time
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "bench_cuda_common.cuh"
#include "tasn/attention_sampler.cuh"

namespace {

using tasn::bench::EventTimer;
using tasn::bench::random_device;
using tasn::bench::Stream;
using tasn::cuda::DeviceBuffer;

constexpr std::int64_t kN = 96, kC = 3, kHi = 512, kWi = 512, kHa = 28, kWa = 28, kO = 224;

// Baseline: the whole grid of a sample in one thread (limit, CDF, search), like the official port.
__global__ void serial_grid_kernel(const float* my, const float* mx, std::int64_t N, std::int64_t S, std::int64_t O,
                                   double dense, int iters, double* scratch, float* gy, float* gx) {
  const std::int64_t n = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n >= N) return;
  double* ty = scratch + n * 4 * S;
  double* tx = ty + S;
  double* cy = tx + S;
  double* cx = cy + S;
  for (std::int64_t i = 0; i < S; ++i) {
    ty[i] = fmax(double(my[n * S + i]), 0.0) * double(O);
    tx[i] = fmax(double(mx[n * S + i]), 0.0) * double(O);
  }
  const double t0 = dense * double(O) / double(S);
  for (int it = 0; it < iters; ++it) {
    double a = 0, b = 0;
    for (std::int64_t i = 0; i < S; ++i) {
      a = fmax(a, ty[i]);
      b = fmax(b, tx[i]);
    }
    const double t = tasn::sampler::limit_threshold(a, b, t0, it);
    a = 0;
    b = 0;
    for (std::int64_t i = 0; i < S; ++i) {
      a += (ty[i] = fmin(ty[i], t));
      b += (tx[i] = fmin(tx[i], t));
    }
    for (std::int64_t i = 0; i < S; ++i) {
      ty[i] += (double(O) - a) / double(S);
      tx[i] += (double(O) - b) / double(S);
    }
  }
  cy[0] = cx[0] = 0.0;
  for (std::int64_t i = 1; i < S; ++i) {
    cy[i] = cy[i - 1] + 0.5 * (ty[i - 1] + ty[i]);
    cx[i] = cx[i - 1] + 0.5 * (tx[i - 1] + tx[i]);
  }
  for (std::int64_t i = 0; i < O; ++i) {
    gy[n * O + i] = static_cast<float>(tasn::sampler::exact_grid_value(cy, S, O, i));
    gx[n * O + i] = static_cast<float>(tasn::sampler::exact_grid_value(cx, S, O, i));
  }
}

void BM_Marginals(benchmark::State& state) {
  TASN_BENCH_REQUIRE_DEVICE(state);
  Stream stream;
  const tasn::cuda::Context ctx{stream.get(), nullptr};
  auto att = random_device<float>(kN * kHa * kWa, 0.f, 1.f, 1);
  DeviceBuffer<float> up(kN * kHi * kWi), my(kN * kHi), mx(kN * kWi);
  auto fused = [&] { tasn::cuda::attention_marginals(att.get(), kN, kHa, kWa, kHi, kWi, my.get(), mx.get(), nullptr, ctx); };
  auto materialised = [&] {
    tasn::cuda::upsample_bilinear(att.get(), kN, kHa, kWa, kHi, kWi, false, up.get(), ctx);
    tasn::cuda::attention_marginals(up.get(), kN, kHi, kWi, kHi, kWi, my.get(), mx.get(), nullptr, ctx);
  };
  EventTimer timer(stream.get());
  fused();
  materialised();
  const double mat = timer.best_of(5, materialised);
  const double sec = tasn::bench::run_timed(state, timer, fused);
  state.counters["materialised_us"] = mat * 1e6;
  state.counters["x_materialised"] = mat / sec;
}

void BM_Grid(benchmark::State& state) {
  TASN_BENCH_REQUIRE_DEVICE(state);
  Stream stream;
  const tasn::cuda::Context ctx{stream.get(), nullptr};
  auto my = random_device<float>(kN * kHi, 0.f, 1.f / kHi * 2, 2), mx = random_device<float>(kN * kWi, 0.f, 1.f / kWi * 2, 3);
  DeviceBuffer<float> gy(kN * kO), gx(kN * kO);
  DeviceBuffer<double> scratch(kN * 4 * kHi);
  tasn::GridOptions opt;
  opt.out_h = opt.out_w = kO;
  auto parallel = [&] { tasn::cuda::sampling_grid(my.get(), mx.get(), kN, kHi, kWi, opt, gy.get(), gx.get(), ctx); };
  auto serial = [&] {
    serial_grid_kernel<<<(kN + 31) / 32, 32, 0, stream.get()>>>(my.get(), mx.get(), kN, kHi, kO, opt.dense, opt.iters,
                                                           scratch.get(), gy.get(), gx.get());
  };
  EventTimer timer(stream.get());
  parallel();
  serial();
  const double ser = timer.best_of(5, serial);
  const double sec = tasn::bench::run_timed(state, timer, parallel);
  state.counters["serial_us"] = ser * 1e6;
  state.counters["x_serial"] = ser / sec;
}

template <class T>
void BM_Sample(benchmark::State& state, bool backward) {
  TASN_BENCH_REQUIRE_DEVICE(state);
  Stream stream;
  const tasn::cuda::Context ctx{stream.get(), nullptr};
  auto img = random_device<T>(kN * kC * kHi * kWi, 0.f, 1.f, 4);
  auto dout = random_device<T>(kN * kC * kO * kO, -1.f, 1.f, 5);
  DeviceBuffer<T> out(kN * kC * kO * kO), dimg(kN * kC * kHi * kWi);
  // a realistic non-uniform grid: the structure grid of random attention
  auto att = random_device<float>(kN * kHa * kWa, 0.f, 1.f, 6);
  DeviceBuffer<float> my(kN * kHi), mx(kN * kWi), gy(kN * kO), gx(kN * kO), grid(kN * kO * kO * 2);
  tasn::GridOptions opt;
  opt.out_h = opt.out_w = kO;
  tasn::cuda::attention_marginals(att.get(), kN, kHa, kWa, kHi, kWi, my.get(), mx.get(), nullptr, ctx);
  tasn::cuda::sampling_grid(my.get(), mx.get(), kN, kHi, kWi, opt, gy.get(), gx.get(), ctx);
  {  // the same grid in general form
    const auto hy = gy.to_host(), hx = gx.to_host();
    std::vector<float> hg(kN * kO * kO * 2);
    tasn::detail::separable_to_general_grid(hy.data(), hx.data(), kN, kO, kO, hg.data());
    grid = DeviceBuffer<float>::from_host(hg);
  }
  const std::size_t wsb = std::max(tasn::cuda::sample_separable_backward_workspace_bytes(kN, kC, kHi, kWi, kO, kO),
                                   tasn::cuda::sample_grid_backward_workspace_bytes(kN, kC, kHi, kWi, std::is_same_v<T, float>));
  DeviceBuffer<unsigned char> ws(wsb);
  auto separable = [&] {
    if (backward)
      tasn::cuda::sample_separable_backward<T>(dout.get(), kN, kC, kHi, kWi, gy.get(), gx.get(), kO, kO, dimg.get(),
                                               ws.get(), wsb, ctx);
    else
      tasn::cuda::sample_separable<T>(img.get(), kN, kC, kHi, kWi, gy.get(), gx.get(), kO, kO, out.get(), ctx);
  };
  auto general = [&] {
    if (backward)
      tasn::cuda::sample_grid_backward<T>(img.get(), grid.get(), dout.get(), kN, kC, kHi, kWi, kO, kO, dimg.get(),
                                          nullptr, ws.get(), wsb, ctx);
    else
      tasn::cuda::sample_grid<T>(img.get(), kN, kC, kHi, kWi, grid.get(), kO, kO, out.get(), ctx);
  };
  EventTimer timer(stream.get());
  separable();
  general();
  const double bytes = double(sizeof(T)) * (kN * kC * kHi * kWi + kN * kC * kO * kO);
  const double copy_s = tasn::bench::memcpy_seconds(timer, stream.get(), bytes);
  const double gen = timer.best_of(5, general);
  const double sec = tasn::bench::run_timed(state, timer, separable);
  tasn::bench::set_bandwidth_counters(state, bytes, sec, copy_s);
  state.counters["general_us"] = gen * 1e6;
  state.counters["x_general"] = gen / sec;
}

void BM_SampleF32(benchmark::State& s, bool b) { BM_Sample<float>(s, b); }
void BM_SampleF16(benchmark::State& s, bool b) { BM_Sample<__half>(s, b); }
void BM_SampleBF16(benchmark::State& s, bool b) { BM_Sample<__nv_bfloat16>(s, b); }

BENCHMARK(BM_Marginals)->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_Grid)->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(BM_SampleF32, forward, false)->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(BM_SampleF32, backward, true)->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(BM_SampleF16, forward, false)->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(BM_SampleF16, backward, true)->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(BM_SampleBF16, forward, false)->UseManualTime()->Unit(benchmark::kMicrosecond);

}  // namespace

BENCHMARK_MAIN();
