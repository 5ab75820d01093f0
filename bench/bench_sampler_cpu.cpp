// CPU attention sampler at the TASN sizes (N = 96, image 3 x 512 x 512, attention 28 x 28
// upsampled to 512, output 224 x 224), float, all threads.
//
// Baselines measured in the same run: marginals fused vs materialised (x_materialised), the
// separable sampler vs the general-grid sampler (x_general), and a threaded memcpy of the
// compulsory bytes (image read once + output written once; backward: dout + dimg) for x_memcpy.
#include <benchmark/benchmark.h>

#include <cstddef>
#include <cstdint>
#include <vector>

#include "bench_common.h"

#include "tasn/attention_sampler.h"

namespace {

using tasn::bench::best_seconds;
using tasn::bench::filled;
using tasn::bench::loop_seconds;
constexpr std::int64_t kN = 96, kC = 3, kHi = 512, kWi = 512, kHa = 28, kWa = 28, kO = 224;

// Each operator runs in a caller workspace allocated once (workspace_bytes(args)), as a training
// loop would: the timings leave the allocation out.
struct BenchWorkspace {
  std::size_t bytes;
  std::vector<unsigned char> raw;
  template <class Args>
  explicit BenchWorkspace(const Args& args)
      : bytes(tasn::cpu::workspace_bytes(args)), raw(bytes + tasn::detail::kWorkspaceAlign) {}
  tasn::Workspace get() {
    const auto at = reinterpret_cast<std::uintptr_t>(raw.data()) % tasn::detail::kWorkspaceAlign;
    return {raw.data() + (at ? tasn::detail::kWorkspaceAlign - at : 0), bytes};
  }
};

void BM_Marginals(benchmark::State& state) {
  const auto att = filled<float>(kN * kHa * kWa, 1, 0.f, 1.f);
  std::vector<float> up(kN * kHi * kWi), my(kN * kHi), mx(kN * kWi);
  const tasn::UpsampleArgs<float> ua{{att.data(), {kN, kHa, kWa}}, {up.data(), {kN, kHi, kWi}}, {}};
  const tasn::MarginalsArgs<float> mat_args{{up.data(), {kN, kHi, kWi}}, {my.data(), {kN, kHi}}, {mx.data(), {kN, kWi}}, {}, {}};
  const tasn::MarginalsArgs<float> fused{{att.data(), {kN, kHa, kWa}}, {my.data(), {kN, kHi}}, {mx.data(), {kN, kWi}}, {}, {}};
  const double mat = best_seconds(2, [&] {
    tasn::cpu::upsample_bilinear(ua);
    tasn::cpu::attention_marginals(mat_args);
  });
  const double sec = loop_seconds(state, [&] { tasn::cpu::attention_marginals(fused); });
  state.counters["materialised_ms"] = mat * 1e3;
  state.counters["x_materialised"] = mat / sec;
}

void BM_Grid(benchmark::State& state) {
  const auto my = filled<float>(kN * kHi, 2, 0.f, 2.f / kHi), mx = filled<float>(kN * kWi, 3, 0.f, 2.f / kWi);
  std::vector<float> gy(kN * kO), gx(kN * kO);
  const tasn::GridArgs<float> args{
      {my.data(), {kN, kHi}}, {mx.data(), {kN, kWi}}, {gy.data(), {kN, kO}}, {gx.data(), {kN, kO}}, {}};
  BenchWorkspace ws(args);
  loop_seconds(state, [&] { tasn::cpu::sampling_grid(args, ws.get()); });
}

void BM_Sample(benchmark::State& state, bool backward) {
  const auto img = filled<float>(kN * kC * kHi * kWi, 4, 0.f, 1.f), dout = filled<float>(kN * kC * kO * kO, 5, -1.f, 1.f);
  const auto att = filled<float>(kN * kHa * kWa, 6, 0.f, 1.f);
  std::vector<float> my(kN * kHi), mx(kN * kWi), gy(kN * kO), gx(kN * kO), out(kN * kC * kO * kO), dimg(img.size());
  tasn::cpu::attention_marginals(tasn::MarginalsArgs<float>{
      {att.data(), {kN, kHa, kWa}}, {my.data(), {kN, kHi}}, {mx.data(), {kN, kWi}}, {}, {}});
  tasn::cpu::sampling_grid(tasn::GridArgs<float>{
      {my.data(), {kN, kHi}}, {mx.data(), {kN, kWi}}, {gy.data(), {kN, kO}}, {gx.data(), {kN, kO}}, {}});
  std::vector<float> grid(kN * kO * kO * 2);
  tasn::detail::separable_to_general_grid(gy.data(), gx.data(), kN, kO, kO, grid.data());
  const tasn::SampleSeparableArgs<float> fwd{{img.data(), {kN, kC, kHi, kWi}}, {gy.data(), {kN, kO}}, {gx.data(), {kN, kO}},
                                             {out.data(), {kN, kC, kO, kO}}, {}};
  const tasn::SampleSeparableBackwardArgs<float> bwd{{dout.data(), {kN, kC, kO, kO}}, {gy.data(), {kN, kO}},
                                                     {gx.data(), {kN, kO}}, {dimg.data(), {kN, kC, kHi, kWi}}, {}};
  const tasn::SampleGridArgs<float> gfwd{{img.data(), {kN, kC, kHi, kWi}}, {grid.data(), {kN, kO, kO, 2}},
                                         {out.data(), {kN, kC, kO, kO}}, {}};
  tasn::SampleGridBackwardArgs<float> gbwd{};
  gbwd.grid = {grid.data(), {kN, kO, kO, 2}};
  gbwd.dout = {dout.data(), {kN, kC, kO, kO}};
  gbwd.dimg = {dimg.data(), {kN, kC, kHi, kWi}};
  // The timed loop skips the value checks (check_finite = false: the work of the operator itself,
  // comparable with earlier versions, which did not scan); `checked_ms` is the default call, which
  // also scans img / dout and the grid for NaN and Inf.
  auto fwd_unchecked = fwd;
  auto bwd_unchecked = bwd;
  fwd_unchecked.options.check_finite = bwd_unchecked.options.check_finite = false;
  BenchWorkspace fws(fwd), bws(bwd);
  auto separable = [&] {
    if (backward)
      tasn::cpu::sample_separable_backward(bwd_unchecked, bws.get());
    else
      tasn::cpu::sample_separable(fwd_unchecked, fws.get());
  };
  auto checked = [&] {
    if (backward)
      tasn::cpu::sample_separable_backward(bwd, bws.get());
    else
      tasn::cpu::sample_separable(fwd, fws.get());
  };
  auto general = [&] {
    if (backward)
      tasn::cpu::sample_grid_backward(gbwd);
    else
      tasn::cpu::sample_grid(gfwd);
  };
  const double bytes = sizeof(float) * double(kN * kC * kHi * kWi + kN * kC * kO * kO);
  const double copy_s = tasn::bench::memcpy_seconds(bytes);
  const double gen = best_seconds(2, general);
  const double chk = best_seconds(2, checked);
  const double sec = loop_seconds(state, separable);
  tasn::bench::set_bandwidth_counters(state, bytes, sec, copy_s);
  state.counters["general_ms"] = gen * 1e3;
  state.counters["x_general"] = gen / sec;
  state.counters["checked_ms"] = chk * 1e3;
}

BENCHMARK(BM_Marginals)->UseRealTime()->Unit(benchmark::kMillisecond)->Iterations(3);
BENCHMARK(BM_Grid)->UseRealTime()->Unit(benchmark::kMillisecond)->Iterations(5);
BENCHMARK_CAPTURE(BM_Sample, forward, false)->UseRealTime()->Unit(benchmark::kMillisecond)->Iterations(3);
BENCHMARK_CAPTURE(BM_Sample, backward, true)->UseRealTime()->Unit(benchmark::kMillisecond)->Iterations(3);

}  // namespace

BENCHMARK_MAIN();
