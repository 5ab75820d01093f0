// bench/sampler_cuda_baseline.cuh - the attention sampler's CUDA kernels as they were before the
// restructuring, kept as benchmark baselines only (bench/bench_sampler_cuda.cu times them against
// the library's kernels in the same run). Not part of the library; nothing else includes it.
//  - marginals_kernel: the fused marginals, one block per sample, upsample_at (with its IEEE
//    divisions) per element;
//  - tap_lists_kernel: the separable backward's transposed tap lists, one thread per sample, one
//    launch per axis.
#pragma once

#include <cub/block/block_reduce.cuh>

#include <cstdint>

#include "tasn/attention_sampler.cuh"

namespace tasn::bench::sampler_baseline {

using tasn::cuda::sampler_kernels::kBlock;
using tasn::cuda::sampler_kernels::TapLists;

__device__ __forceinline__ float map_value(const float* a, std::int64_t h, std::int64_t w, std::int64_t Hs,
                                           std::int64_t Ws, std::int64_t y, std::int64_t x) {
  return (Hs == h && Ws == w) ? a[y * w + x] : sampler::upsample_at<float, float>(a, h, w, Hs, Ws, y, x);
}

static __global__ void __launch_bounds__(kBlock)
    marginals_kernel(const float* __restrict__ map, std::int64_t h, std::int64_t w, std::int64_t Hs,
                     std::int64_t Ws, float* __restrict__ my, float* __restrict__ mx,
                     unsigned char* __restrict__ fallback) {
  using Reduce = cub::BlockReduce<double, kBlock>;
  __shared__ typename Reduce::TempStorage temp;
  __shared__ double mass[2];
  __shared__ int bad;
  const std::int64_t n = blockIdx.x;
  const float* a = map + n * h * w;
  float* ry = my + n * Hs;
  float* rx = mx + n * Ws;
  if (threadIdx.x == 0) bad = 0;
  __syncthreads();
  int local_bad = 0;
  double sy = 0.0, sx = 0.0;
  for (std::int64_t y = threadIdx.x; y < Hs; y += kBlock) {  // row maxima
    float r = 0.f;
    for (std::int64_t x = 0; x < Ws; ++x) {
      const float v = map_value(a, h, w, Hs, Ws, y, x);
      local_bad |= !isfinite(v);
      r = fmaxf(r, v);
    }
    ry[y] = r;
    sy += r;
  }
  for (std::int64_t x = threadIdx.x; x < Ws; x += kBlock) {  // column maxima
    float r = 0.f;
    for (std::int64_t y = 0; y < Hs; ++y) r = fmaxf(r, map_value(a, h, w, Hs, Ws, y, x));
    rx[x] = r;
    sx += r;
  }
  if (local_bad) atomicOr(&bad, 1);
  sy = Reduce(temp).Sum(sy);
  __syncthreads();
  sx = Reduce(temp).Sum(sx);
  if (threadIdx.x == 0) {
    mass[0] = sy;
    mass[1] = sx;
  }
  __syncthreads();
  const bool fell_back = bad || !(mass[0] > 0.0) || !(mass[1] > 0.0) || !isfinite(mass[0]) || !isfinite(mass[1]);
  for (std::int64_t y = threadIdx.x; y < Hs; y += kBlock)
    ry[y] = fell_back ? static_cast<float>(1.0 / double(Hs)) : static_cast<float>(double(ry[y]) / mass[0]);
  for (std::int64_t x = threadIdx.x; x < Ws; x += kBlock)
    rx[x] = fell_back ? static_cast<float>(1.0 / double(Ws)) : static_cast<float>(double(rx[x]) / mass[1]);
  if (fallback && threadIdx.x == 0) fallback[n] = fell_back ? 1 : 0;
}

// Transposed taps of one axis of one sample: for source index s, the outputs o (ascending) that
// read it and their weights. One thread per (sample, axis); O(O + S) serial work each.
static __global__ void tap_lists_kernel(const float* __restrict__ g, std::int64_t N, std::int64_t O, std::int64_t S,
                                 TapLists lists) {
  for (std::int64_t n = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; n < N;
       n += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    int* off = lists.offsets + n * (S + 1);
    int* outs = lists.outputs + n * 2 * O;
    float* ws = lists.weights + n * 2 * O;
    for (std::int64_t s = 0; s <= S; ++s) off[s] = 0;
    for (std::int64_t o = 0; o < O; ++o) {
      const auto t = sampler::taps_of<float>(g[n * O + o], S);
      if (sampler::tap_in(t.i0, S)) ++off[t.i0 + 1];
      if (sampler::tap_in(t.i0 + 1, S)) ++off[t.i0 + 2];
    }
    for (std::int64_t s = 0; s < S; ++s) off[s + 1] += off[s];
    for (std::int64_t o = 0; o < O; ++o) {  // fill in output order; off[s] advances as a cursor
      const auto t = sampler::taps_of<float>(g[n * O + o], S);
      if (sampler::tap_in(t.i0, S)) {
        outs[off[t.i0]] = static_cast<int>(o);
        ws[off[t.i0]++] = t.w0;
      }
      if (sampler::tap_in(t.i0 + 1, S)) {
        outs[off[t.i0 + 1]] = static_cast<int>(o);
        ws[off[t.i0 + 1]++] = t.w1;
      }
    }
    for (std::int64_t s = S; s > 0; --s) off[s] = off[s - 1];  // restore the starts
    off[0] = 0;
  }
}


}  // namespace tasn::bench::sampler_baseline
