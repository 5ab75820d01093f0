// CUDA attention sampler at the TASN sizes: N = 96, image 3 x 512 x 512, attention 28 x 28
// upsampled to 512 x 512, output 224 x 224.
//
// Counters and baselines (measured in the same run):
//   marginals  fused (no upsampled map in memory) vs materialised (upsample kernel + marginals of
//              the 512 x 512 maps): x_materialised = materialised time / fused time; and the
//              fused kernels (a block per (sample, 32 rows or columns) with per-block resize-tap
//              tables, then a normalisation) against the old one-block-per-sample kernel
//              (bench/sampler_cuda_baseline.cuh): x_old = old time / new time
//   tap lists  the separable backward's transposed tap lists, one launch with a block per
//              (sample, axis), against the old kernel (one thread per sample, one launch per
//              axis): x_old = old time / new time
//   grid       the block-parallel grid kernel vs a serial per-sample generator (one thread per
//              sample, as the official PyTorch port): x_serial = serial time / parallel time
//   sampling   forward and backward in GB/s of the compulsory traffic (image read once + output
//              written once; backward: dout read once + dimg written once) and x_memcpy against a
//              device memcpy of the same bytes; the general-grid sampler (N, Ho, Wo, 2) as the
//              baseline of the separable one: x_general = general time / separable time
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "bench_cuda_common.cuh"
#include "sampler_cuda_baseline.cuh"
#include "tasn/attention_sampler.cuh"

namespace {

using tasn::bench::EventTimer;
using tasn::bench::random_device;
using tasn::bench::Stream;
using tasn::cuda::DeviceBuffer;
using tasn::Tensor2;
using tasn::Tensor4;

// The benchmarks time the operators without value checks (no read-back in the timed loop).
template <class Args>
Args unchecked(Args a) {
  a.options.check_finite = false;
  return a;
}

constexpr std::int64_t kN = 96, kC = 3, kHi = 512, kWi = 512, kHa = 28, kWa = 28, kO = 224;

// Baseline: the whole grid of a sample in one thread, like the official port: the library's own
// per-sample routine (sampler::grid_of_sample) run by a single thread (SerialGroup) per sample.
__global__ void serial_grid_kernel(const float* my, const float* mx, std::int64_t N, std::int64_t S, std::int64_t O,
                                   tasn::GridOptions opt, double* scratch, float* gy, float* gx) {
  const std::int64_t n = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n >= N) return;
  tasn::sampler::SerialGroup g;
  tasn::sampler::grid_of_sample(g, my + n * S, mx + n * S, S, S, O, O, opt, scratch + n * tasn::sampler::grid_scratch_elems(S, S),
                                gy + n * O, gx + n * O);
}

void BM_Marginals(benchmark::State& state) {
  TASN_BENCH_REQUIRE_DEVICE(state);
  Stream stream;
  const tasn::cuda::Context ctx{stream.get(), nullptr};
  auto att = random_device<float>(kN * kHa * kWa, 0.f, 1.f, 1);
  DeviceBuffer<float> up(kN * kHi * kWi), my(kN * kHi), mx(kN * kWi);
  const auto fused_args = unchecked(tasn::MarginalsArgs<float>{
      {att.get(), {kN, kHa, kWa}}, {my.get(), {kN, kHi}}, {mx.get(), {kN, kWi}}, {}, {}});
  const auto up_args =
      unchecked(tasn::UpsampleArgs<float>{{att.get(), {kN, kHa, kWa}}, {up.get(), {kN, kHi, kWi}}, {}});
  const auto mat_args = unchecked(tasn::MarginalsArgs<float>{
      {up.get(), {kN, kHi, kWi}}, {my.get(), {kN, kHi}}, {mx.get(), {kN, kWi}}, {}, {}});
  auto fused = [&] { tasn::cuda::attention_marginals(ctx, fused_args); };
  auto materialised = [&] {
    tasn::cuda::upsample_bilinear(ctx, up_args);
    tasn::cuda::attention_marginals(ctx, mat_args);
  };
  auto old = [&] {
    tasn::bench::sampler_baseline::marginals_kernel<<<kN, tasn::cuda::sampler_kernels::kBlock, 0, stream.get()>>>(
        att.get(), kHa, kWa, kHi, kWi, my.get(), mx.get(), nullptr);
  };
  EventTimer timer(stream.get());
  fused();
  materialised();
  old();
  const double mat = timer.best_of(5, materialised);
  const double old_s = timer.best_of(5, old);
  const double sec = tasn::bench::run_timed(state, timer, fused);
  state.counters["materialised_us"] = mat * 1e6;
  state.counters["x_materialised"] = mat / sec;
  state.counters["old_us"] = old_s * 1e6;
  state.counters["x_old"] = old_s / sec;
}

void BM_Grid(benchmark::State& state) {
  TASN_BENCH_REQUIRE_DEVICE(state);
  Stream stream;
  const tasn::cuda::Context ctx{stream.get(), nullptr};
  auto my = random_device<float>(kN * kHi, 0.f, 1.f / kHi * 2, 2), mx = random_device<float>(kN * kWi, 0.f, 1.f / kWi * 2, 3);
  DeviceBuffer<float> gy(kN * kO), gx(kN * kO);
  DeviceBuffer<double> scratch(kN * 4 * kHi);
  tasn::GridOptions opt;
  const auto args = unchecked(tasn::GridArgs<float>{
      {my.get(), {kN, kHi}}, {mx.get(), {kN, kWi}}, {gy.get(), {kN, kO}}, {gx.get(), {kN, kO}}, opt});
  auto parallel = [&] { tasn::cuda::sampling_grid(ctx, args); };
  auto serial = [&] {
    serial_grid_kernel<<<(kN + 31) / 32, 32, 0, stream.get()>>>(my.get(), mx.get(), kN, kHi, kO, opt, scratch.get(),
                                                           gy.get(), gx.get());
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
  tasn::cuda::attention_marginals(ctx, unchecked(tasn::MarginalsArgs<float>{
                                          {att.get(), {kN, kHa, kWa}}, {my.get(), {kN, kHi}}, {mx.get(), {kN, kWi}}, {}, {}}));
  tasn::cuda::sampling_grid(ctx, unchecked(tasn::GridArgs<float>{
                                     {my.get(), {kN, kHi}}, {mx.get(), {kN, kWi}}, {gy.get(), {kN, kO}}, {gx.get(), {kN, kO}}, {}}));
  {  // the same grid in general form
    const auto hy = gy.to_host(), hx = gx.to_host();
    std::vector<float> hg(kN * kO * kO * 2);
    tasn::detail::separable_to_general_grid(hy.data(), hx.data(), kN, kO, kO, hg.data());
    grid = DeviceBuffer<float>::from_host(hg);
  }
  const Tensor4<const T> imgv(img.get(), {kN, kC, kHi, kWi}), doutv(dout.get(), {kN, kC, kO, kO});
  const Tensor2<const float> gyv(gy.get(), {kN, kO}), gxv(gx.get(), {kN, kO});
  const Tensor4<const float> gridv(grid.get(), {kN, kO, kO, 2});
  const Tensor4<T> outv(out.get(), {kN, kC, kO, kO}), dimgv(dimg.get(), {kN, kC, kHi, kWi});
  const auto sep_fwd = unchecked(tasn::SampleSeparableArgs<T>{imgv, gyv, gxv, outv, {}});
  const auto sep_bwd = unchecked(tasn::SampleSeparableBackwardArgs<T>{doutv, gyv, gxv, dimgv, {}});
  const auto gen_fwd = unchecked(tasn::SampleGridArgs<T>{imgv, gridv, outv, {}});
  const auto gen_bwd = unchecked(tasn::SampleGridBackwardArgs<T>{imgv, gridv, doutv, dimgv, {}, {}});
  const std::size_t wsb = std::max(tasn::cuda::workspace_bytes(sep_bwd), tasn::cuda::workspace_bytes(gen_bwd));
  DeviceBuffer<unsigned char> ws(wsb);
  const tasn::Workspace w{ws.get(), wsb};
  auto separable = [&] {
    if (backward) tasn::cuda::sample_separable_backward(ctx, sep_bwd, w);
    else tasn::cuda::sample_separable(ctx, sep_fwd);
  };
  auto general = [&] {
    if (backward) tasn::cuda::sample_grid_backward(ctx, gen_bwd, w);
    else tasn::cuda::sample_grid(ctx, gen_fwd);
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

// The separable backward's tap lists of both axes: the one-launch kernel against the old one
// (a thread per sample, a launch per axis), on the structure grid of random attention.
void BM_TapLists(benchmark::State& state) {
  TASN_BENCH_REQUIRE_DEVICE(state);
  Stream stream;
  const tasn::cuda::Context ctx{stream.get(), nullptr};
  auto att = random_device<float>(kN * kHa * kWa, 0.f, 1.f, 7);
  DeviceBuffer<float> my(kN * kHi), mx(kN * kWi), gy(kN * kO), gx(kN * kO);
  tasn::cuda::attention_marginals(ctx, unchecked(tasn::MarginalsArgs<float>{
                                          {att.get(), {kN, kHa, kWa}}, {my.get(), {kN, kHi}}, {mx.get(), {kN, kWi}}, {}, {}}));
  tasn::cuda::sampling_grid(ctx, unchecked(tasn::GridArgs<float>{
                                     {my.get(), {kN, kHi}}, {mx.get(), {kN, kWi}}, {gy.get(), {kN, kO}}, {gx.get(), {kN, kO}}, {}}));
  DeviceBuffer<int> yo(kN * (kHi + 1)), ye(kN * 2 * kO), xo(kN * (kWi + 1)), xe(kN * 2 * kO);
  DeviceBuffer<float> yw(kN * 2 * kO), xw(kN * 2 * kO);
  const tasn::cuda::sampler_kernels::TapLists ly{yo.get(), ye.get(), yw.get()}, lx{xo.get(), xe.get(), xw.get()};
  auto fresh = [&] { tasn::cuda::detail_sampler::build_tap_lists(ctx, gy.get(), gx.get(), kN, kO, kO, kHi, kWi, ly, lx); };
  auto old = [&] {
    namespace b = tasn::bench::sampler_baseline;
    b::tap_lists_kernel<<<(kN + 63) / 64, 64, 0, stream.get()>>>(gx.get(), kN, kO, kWi, lx);
    b::tap_lists_kernel<<<(kN + 63) / 64, 64, 0, stream.get()>>>(gy.get(), kN, kO, kHi, ly);
  };
  EventTimer timer(stream.get());
  fresh();
  old();
  const double old_s = timer.best_of(5, old);
  const double sec = tasn::bench::run_timed(state, timer, fresh);
  state.counters["old_us"] = old_s * 1e6;
  state.counters["x_old"] = old_s / sec;
}

void BM_SampleF32(benchmark::State& s, bool b) { BM_Sample<float>(s, b); }
void BM_SampleF16(benchmark::State& s, bool b) { BM_Sample<__half>(s, b); }
void BM_SampleBF16(benchmark::State& s, bool b) { BM_Sample<__nv_bfloat16>(s, b); }

BENCHMARK(BM_Marginals)->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_Grid)->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_TapLists)->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(BM_SampleF32, forward, false)->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(BM_SampleF32, backward, true)->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(BM_SampleF16, forward, false)->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(BM_SampleF16, backward, true)->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(BM_SampleBF16, forward, false)->UseManualTime()->Unit(benchmark::kMicrosecond);

}  // namespace

BENCHMARK_MAIN();
