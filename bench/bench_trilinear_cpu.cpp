// CPU trilinear attention: forward and backward at the TASN sizes (C = 512, 28 x 28).
//
// Counters:
//   FLOP/s     the GEMMs' flops: forward 2 products (B = S X^T, M = A X), backward with saved S, A
//              4 products (dA, dX3, dS, dX2), 2*C*C*P each
//   gemm_ms    the same Eigen GEMMs alone (no softmax), timed in the same run just before
//   x_gemm     time of the operator / time of the GEMMs alone: what the softmax parts add (>= 1)
// Run:  build/bench/bench_trilinear_cpu --benchmark_out=cpu.json --benchmark_out_format=json
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <functional>
#include <memory>
#include <vector>

#include "bench_common.h"
#include "tasn/trilinear_attention.h"

namespace {

using tasn::bench::Clock;
using tasn::TrilinearShape;
using tasn::cpu::RowMatrix;

constexpr std::int64_t kC = 512, kH = 28, kW = 28;

// The operator's GEMMs alone, with the operator's threading policy.
template <class T>
void gemms_only(const T* x, const T* dm, T* out, const TrilinearShape& s, bool backward) {
  const std::int64_t C = s.c, P = s.p();
  auto body = [&](std::int64_t n, int, bool) {
    Eigen::Map<const RowMatrix<T>> X(x + n * C * P, C, P), dM(dm + n * C * P, C, P);
    Eigen::Map<RowMatrix<T>> O(out + n * C * P, C, P);
    RowMatrix<T> B(C, C);
    if (!backward) {
      B.noalias() = X * X.transpose();  // B = S X^T
      O.noalias() = B * X;              // M = A X
    } else {
      B.noalias() = dM * X.transpose();  // dA = dM X^T
      O.noalias() = B.transpose() * dM;  // dX3 = A^T dM
      RowMatrix<T> dS(C, P);
      dS.noalias() = B * X;               // dS = dB X
      O.noalias() += B.transpose() * dS;  // dX2 = dB^T S
    }
  };
  tasn::cpu::detail_trilinear::for_each_sample(s.n, body);
}

template <class T>
void BM_Trilinear(benchmark::State& state, bool backward) {
  const TrilinearShape s{state.range(0), kC, kH, kW};
  const auto x = tasn::bench::filled<T>(s.numel(), 1, T(0), T(3));
  const auto dm = tasn::bench::filled<T>(s.numel(), 2, T(-1), T(1));
  const std::int64_t ns = tasn::trilinear_saved_elems(s.n, s.c, s.h, s.w);
  std::vector<T> m(x.size()), dx(x.size()), saved(static_cast<std::size_t>(ns));
  const tasn::Tensor4<const T> xv(x.data(), {s.n, s.c, s.h, s.w});
  const tasn::TrilinearForwardArgs<T> fa{xv, tasn::Tensor4<T>(m.data(), {s.n, s.c, s.h, s.w}),
                                         tasn::Tensor1<T>(saved.data(), {ns}), {}};
  const tasn::TrilinearBackwardArgs<T> ba{xv, tasn::Tensor4<const T>(dm.data(), {s.n, s.c, s.h, s.w}),
                                          tasn::Tensor1<const T>(saved.data(), {ns}),
                                          tasn::Tensor4<T>(dx.data(), {s.n, s.c, s.h, s.w}), {}};
  // One workspace for the run (the operator would otherwise allocate its own in every call).
  const std::size_t wbytes = std::max(tasn::cpu::workspace_bytes(fa), tasn::cpu::workspace_bytes(ba));
  std::vector<unsigned char> wbuf(wbytes + tasn::detail::kWorkspaceAlign);
  void* wp = wbuf.data();
  std::size_t space = wbuf.size();
  const tasn::Workspace ws{std::align(tasn::detail::kWorkspaceAlign, wbytes, wp, space), wbytes};
  tasn::cpu::trilinear_attention_forward(fa, ws);  // warm-up

  const double gemm_s = tasn::bench::best_seconds(2, [&] { gemms_only<T>(x.data(), dm.data(), m.data(), s, backward); });
  const auto t0 = Clock::now();
  for (auto _ : state) {
    if (backward)
      tasn::cpu::trilinear_attention_backward(ba, ws);
    else
      tasn::cpu::trilinear_attention_forward(fa, ws);
    benchmark::ClobberMemory();
  }
  const double per_iter = std::chrono::duration<double>(Clock::now() - t0).count() /
                          static_cast<double>(state.iterations());
  const double flops = (backward ? 8.0 : 4.0) * s.n * double(kC) * kC * s.p();
  state.counters["FLOP/s"] = benchmark::Counter(flops * state.iterations(), benchmark::Counter::kIsRate);
  state.counters["gemm_ms"] = gemm_s * 1e3;
  state.counters["x_gemm"] = per_iter / gemm_s;
  state.counters["threads"] = tasn::cpu::num_threads();
  // Compulsory traffic: x (+ dm) read, m or dx written, S and A read or written.
  const double bytes = sizeof(T) * double(s.numel() * (backward ? 3 : 2) + ns);
  state.SetBytesProcessed(static_cast<std::int64_t>(bytes * state.iterations()));
}

void args(benchmark::internal::Benchmark* b) {
  b->Arg(8)->Arg(32)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(1.0);
}

// BENCHMARK_CAPTURE takes a plain function name: one wrapper per storage type.
void BM_TrilinearF32(benchmark::State& st, bool backward) { BM_Trilinear<float>(st, backward); }
void BM_TrilinearF64(benchmark::State& st, bool backward) { BM_Trilinear<double>(st, backward); }

BENCHMARK_CAPTURE(BM_TrilinearF32, forward, false)->Apply(args);
BENCHMARK_CAPTURE(BM_TrilinearF32, backward, true)->Apply(args);
BENCHMARK_CAPTURE(BM_TrilinearF64, forward, false)->Arg(8)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(BM_TrilinearF64, backward, true)->Arg(8)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
