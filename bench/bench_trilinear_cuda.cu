// CUDA trilinear attention and row-softmax kernels, timed with CUDA events (manual time).
//
// Counters:
//   FLOP/s   GEMM flops of the pass (forward 2 products, backward 4, 2*C*C*P each)
//   gemm_ms  the pass's cuBLAS GEMMs alone, same buffers, timed in the same run just before
//   x_gemm   operator time / GEMM-only time (>= 1; what the softmax kernels add)
//   GB/s     (row kernels) compulsory bytes / time; x_memcpy = that / device-to-device cudaMemcpy
//            bandwidth of the same byte count measured in the same run (the traffic bound)
// Without a usable device every benchmark reports an error row with the reason and the program
// exits 0.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "bench_cuda_common.cuh"
#include "tasn/core/device_buffer.cuh"
#include "tasn/trilinear_attention.cuh"

namespace {

using tasn::TrilinearShape;
using tasn::bench::EventTimer;
using tasn::bench::random_device;
using tasn::bench::Stream;
using tasn::cuda::Context;
using tasn::cuda::DeviceBuffer;
using tasn::cuda::RowKernel;

constexpr std::int64_t kC = 512, kH = 28, kW = 28;

template <class T>
void BM_TrilinearCuda(benchmark::State& state, bool backward) {
  TASN_BENCH_REQUIRE_DEVICE(state);
  const TrilinearShape s{state.range(0), kC, kH, kW};
  const std::int64_t N = s.n, C = s.c, P = s.p(), ncp = s.numel();
  Stream stream;
  tasn::cuda::CublasHandle cublas;
  const Context ctx{stream.get(), cublas.get()};
  auto x = random_device<T>(ncp, 0.f, 3.f, 1);
  auto dm = random_device<T>(ncp, -1.f, 1.f, 2);
  const std::int64_t ns = tasn::trilinear_saved_elems(N, C, kH, kW);
  DeviceBuffer<T> m(ncp), dx(ncp), saved(ns);
  // check_finite = false: the pass alone, as before the value checks existed (with them each call
  // adds a scan of x (and dm) and one stream synchronisation).
  tasn::TrilinearAttentionOptions opt;
  opt.check_finite = false;
  const tasn::Tensor4<const T> xv(x.get(), {N, C, kH, kW});
  const tasn::TrilinearForwardArgs<T> fa{xv, tasn::Tensor4<T>(m.get(), {N, C, kH, kW}), tasn::Tensor1<T>(saved.get(), {ns}),
                                         opt};
  const tasn::TrilinearBackwardArgs<T> ba{xv, tasn::Tensor4<const T>(dm.get(), {N, C, kH, kW}),
                                          tasn::Tensor1<const T>(saved.get(), {ns}),
                                          tasn::Tensor4<T>(dx.get(), {N, C, kH, kW}), opt};
  const std::size_t wf = tasn::cuda::workspace_bytes(fa);
  const std::size_t wb = tasn::cuda::workspace_bytes(ba);
  DeviceBuffer<unsigned char> ws(std::max(wf, wb));
  DeviceBuffer<float> f1(N * C * std::max(C, P)), f2(ncp);

  auto op = [&] {
    if (backward)
      tasn::cuda::trilinear_attention_backward(ctx, ba, {ws.get(), wb});
    else
      tasn::cuda::trilinear_attention_forward(ctx, fa, {ws.get(), wf});
  };
  const cudaDataType_t t = tasn::cuda::data_type<T>();
  const T* sp = saved.get();
  const T* ap = saved.get() + ncp;
  auto gemms = [&] {
    using tasn::cuda::gemm_rm_batched;
    if (!backward) {
      gemm_rm_batched(cublas, stream.get(), C, C, P, 1.f, {sp, t, false, P, C * P}, {x.get(), t, true, P, C * P},
                      0.f, f1.get(), CUDA_R_32F, C, C * C, N);
      gemm_rm_batched(cublas, stream.get(), C, P, C, 1.f, {ap, t, false, C, C * C}, {x.get(), t, false, P, C * P},
                      0.f, m.get(), t, P, C * P, N);
    } else {
      gemm_rm_batched(cublas, stream.get(), C, C, P, 1.f, {dm.get(), t, false, P, C * P}, {x.get(), t, true, P, C * P},
                      0.f, f1.get(), CUDA_R_32F, C, C * C, N);
      gemm_rm_batched(cublas, stream.get(), C, P, C, 1.f, {ap, t, true, C, C * C}, {dm.get(), t, false, P, C * P},
                      0.f, f2.get(), CUDA_R_32F, P, C * P, N);
      gemm_rm_batched(cublas, stream.get(), C, P, C, 1.f, {ap, t, false, C, C * C}, {x.get(), t, false, P, C * P},
                      0.f, f1.get(), CUDA_R_32F, P, C * P, N);
      gemm_rm_batched(cublas, stream.get(), C, P, C, 1.f, {ap, t, true, C, C * C}, {sp, t, false, P, C * P},
                      1.f, f2.get(), CUDA_R_32F, P, C * P, N);
    }
  };
  tasn::cuda::trilinear_attention_forward(ctx, fa, {ws.get(), wf});
  op();
  gemms();
  EventTimer timer(stream.get());
  const double gemm_s = timer.best_of(5, gemms);
  const double per_iter = tasn::bench::run_timed(state, timer, op);
  const double flops = (backward ? 8.0 : 4.0) * N * double(C) * C * P;
  state.counters["FLOP/s"] = benchmark::Counter(flops * state.iterations(), benchmark::Counter::kIsRate);
  state.counters["gemm_ms"] = gemm_s * 1e3;
  state.counters["x_gemm"] = per_iter / gemm_s;
}

// Row softmax over N*C rows of `len` (P = 784: the spatial softmax; C = 512: the channel one).
template <class T>
void BM_SoftmaxRows(benchmark::State& state, RowKernel kernel, bool backward) {
  TASN_BENCH_REQUIRE_DEVICE(state);
  const std::int64_t rows = state.range(0), len = state.range(1), n = rows * len;
  Stream stream;
  auto in = random_device<T>(n, -4.f, 4.f, 3);
  auto dyf = random_device<float>(n, -1.f, 1.f, 4);
  auto addf = random_device<float>(n, -1.f, 1.f, 5);
  DeviceBuffer<T> out(n);
  auto op = [&] {
    if (backward)
      tasn::cuda::softmax_backward_rows(in.get(), dyf.get(), addf.get(), out.get(), rows, len, 7.f, stream.get(), kernel);
    else
      tasn::cuda::softmax_rows(in.get(), out.get(), rows, len, 7.f, stream.get(), kernel);
  };
  // Compulsory bytes: forward reads and writes T; backward reads y (T), dy and add (float), writes T.
  const double bytes = backward ? double(n) * (2 * sizeof(T) + 2 * sizeof(float)) : double(n) * 2 * sizeof(T);
  EventTimer timer(stream.get());
  op();
  const double copy_s = tasn::bench::memcpy_seconds(timer, stream.get(), bytes);
  const double per_iter = tasn::bench::run_timed(state, timer, op);
  tasn::bench::set_bandwidth_counters(state, bytes, per_iter, copy_s);
}

void trilinear_args(benchmark::internal::Benchmark* b) {
  b->Arg(8)->Arg(32)->UseManualTime()->Unit(benchmark::kMicrosecond);
}
void row_args(benchmark::internal::Benchmark* b) {
  b->Args({32 * kC, kH * kW})->Args({32 * kC, kC})->Args({4096, 8192})->UseManualTime()->Unit(benchmark::kMicrosecond);
}

// BENCHMARK_CAPTURE takes a plain function name: one wrapper per storage type.
void BM_TrilinearF32(benchmark::State& st, bool bwd) { BM_TrilinearCuda<float>(st, bwd); }
void BM_TrilinearF16(benchmark::State& st, bool bwd) { BM_TrilinearCuda<__half>(st, bwd); }
void BM_TrilinearBF16(benchmark::State& st, bool bwd) { BM_TrilinearCuda<__nv_bfloat16>(st, bwd); }
void BM_SoftmaxRowsF32(benchmark::State& st, RowKernel k, bool bwd) { BM_SoftmaxRows<float>(st, k, bwd); }
void BM_SoftmaxRowsF16(benchmark::State& st, RowKernel k, bool bwd) { BM_SoftmaxRows<__half>(st, k, bwd); }

BENCHMARK_CAPTURE(BM_TrilinearF32, forward, false)->Apply(trilinear_args);
BENCHMARK_CAPTURE(BM_TrilinearF16, forward, false)->Apply(trilinear_args);
BENCHMARK_CAPTURE(BM_TrilinearBF16, forward, false)->Apply(trilinear_args);
BENCHMARK_CAPTURE(BM_TrilinearF32, backward, true)->Apply(trilinear_args);
BENCHMARK_CAPTURE(BM_TrilinearF16, backward, true)->Apply(trilinear_args);
BENCHMARK_CAPTURE(BM_TrilinearBF16, backward, true)->Apply(trilinear_args);

BENCHMARK_CAPTURE(BM_SoftmaxRowsF32, fwd_auto, RowKernel::Auto, false)->Apply(row_args);
BENCHMARK_CAPTURE(BM_SoftmaxRowsF32, fwd_block, RowKernel::Block, false)->Apply(row_args);
BENCHMARK_CAPTURE(BM_SoftmaxRowsF16, fwd_auto, RowKernel::Auto, false)->Apply(row_args);
BENCHMARK_CAPTURE(BM_SoftmaxRowsF16, fwd_block, RowKernel::Block, false)->Apply(row_args);
BENCHMARK_CAPTURE(BM_SoftmaxRowsF32, bwd_auto, RowKernel::Auto, true)->Apply(row_args);
BENCHMARK_CAPTURE(BM_SoftmaxRowsF32, bwd_block, RowKernel::Block, true)->Apply(row_args);

}  // namespace

BENCHMARK_MAIN();
