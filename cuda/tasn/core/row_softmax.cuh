// tasn/core/row_softmax.cuh - row-wise softmax forward and backward kernels (CUDA).
//
// Rows are contiguous, `len` elements each; math in float whatever the storage type.
// Two variants, chosen by row length (or forced, for tests and benchmarks):
//  - warp per row (len <= 1024): each lane keeps its ceil(len/32) <= VPT elements in registers, so
//    the row is read once and written once; reductions by the warp's WarpRowGroup.
//  - block per row (any len): one pass computes the max and the exp-sum together (online softmax,
//    tasn::SoftmaxStats merged by the block's BlockRowGroup::stats), a second pass writes:
//    2 reads + 1 write.
// The reductions are those of tasn/core/row_group.cuh (the row groups the loss kernels use too);
// the variant choice, its test knob and the launch constants are in tasn/core/row_kernel.cuh.
// Per-element math comes from tasn/core/softmax_math.h, the functions the CPU path runs.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "tasn/core/cuda_check.cuh"
#include "tasn/core/dtype.cuh"
#include "tasn/core/row_group.cuh"
#include "tasn/core/row_kernel.cuh"
#include "tasn/core/softmax_math.h"

namespace tasn::cuda {

namespace kernels {

// ---- forward: out = softmax(scale * in) ---------------------------------------------------------

template <int VPT, class TIn, class TOut>
__global__ void __launch_bounds__(kWarp* kWarpRowsPerBlock)
    softmax_rows_warp(const TIn* __restrict__ in, TOut* __restrict__ out, std::int64_t rows,
                      int len, float scale) {
  __shared__ WarpRowGroup::TempStorage temp[kWarpRowsPerBlock];
  const int warp = threadIdx.x / kWarp;
  WarpRowGroup g(temp[warp]);
  const int lane = g.rank();
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * kWarpRowsPerBlock;
  for (std::int64_t row = static_cast<std::int64_t>(blockIdx.x) * kWarpRowsPerBlock + warp;
       row < rows; row += stride) {
    const TIn* x = in + row * len;
    float v[VPT];
    float m = neg_inf<float>();
#pragma unroll
    for (int i = 0; i < VPT; ++i) {
      const int k = lane + i * kWarp;
      v[i] = k < len ? to_float(x[k]) : neg_inf<float>();
      m = fmaxf(m, v[i]);
    }
    m = g.max(m);
    float s = 0.f;
#pragma unroll
    for (int i = 0; i < VPT; ++i) {
      if (lane + i * kWarp < len) {
        v[i] = softmax_term(v[i], m, scale);
        s += v[i];
      }
    }
    s = g.sum(s);
    const float inv = 1.f / s;
    TOut* y = out + row * len;
#pragma unroll
    for (int i = 0; i < VPT; ++i) {
      const int k = lane + i * kWarp;
      if (k < len) y[k] = from_float<TOut>(v[i] * inv);
    }
  }
}

template <int BLOCK, class TIn, class TOut>
__global__ void __launch_bounds__(BLOCK)
    softmax_rows_block(const TIn* __restrict__ in, TOut* __restrict__ out, std::int64_t rows,
                       std::int64_t len, float scale) {
  __shared__ typename BlockRowGroup<BLOCK>::TempStorage temp;
  BlockRowGroup<BLOCK> g(temp);
  for (std::int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const TIn* x = in + row * len;
    Stats st = Stats::empty();
    for (std::int64_t k = g.rank(); k < len; k += g.size()) st.push(to_float(x[k]), scale);
    st = g.stats(st, scale);  // broadcast; the group's storage is free again on return
    const float m = st.m, inv = 1.f / st.s;
    TOut* y = out + row * len;
    for (std::int64_t k = g.rank(); k < len; k += g.size())
      y[k] = from_float<TOut>(softmax_term(to_float(x[k]), m, scale) * inv);
  }
}

// ---- backward: dx = scale * y * (dy - <y, dy>)  (+ add) -----------------------------------------

template <class TAdd>
__device__ __forceinline__ float load_add(const TAdd* add, std::int64_t i) {
  return add ? to_float(add[i]) : 0.f;
}

template <int VPT, class TY, class TDY, class TAdd, class TOut>
__global__ void __launch_bounds__(kWarp* kWarpRowsPerBlock)
    softmax_backward_rows_warp(const TY* __restrict__ y, const TDY* __restrict__ dy,
                               const TAdd* add, TOut* dx,  // add may alias dx
                               std::int64_t rows, int len, float scale) {
  __shared__ WarpRowGroup::TempStorage temp[kWarpRowsPerBlock];
  const int warp = threadIdx.x / kWarp;
  WarpRowGroup g(temp[warp]);
  const int lane = g.rank();
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * kWarpRowsPerBlock;
  for (std::int64_t row = static_cast<std::int64_t>(blockIdx.x) * kWarpRowsPerBlock + warp;
       row < rows; row += stride) {
    const std::int64_t base = row * len;
    float yv[VPT], gv[VPT];
    float dot = 0.f;
#pragma unroll
    for (int i = 0; i < VPT; ++i) {
      const int k = lane + i * kWarp;
      yv[i] = k < len ? to_float(y[base + k]) : 0.f;
      gv[i] = k < len ? to_float(dy[base + k]) : 0.f;
      dot += yv[i] * gv[i];
    }
    dot = g.sum(dot);
#pragma unroll
    for (int i = 0; i < VPT; ++i) {
      const int k = lane + i * kWarp;
      if (k < len)
        dx[base + k] = from_float<TOut>(softmax_backward_term(yv[i], gv[i], dot, scale) +
                                        load_add(add, base + k));
    }
  }
}

template <int BLOCK, class TY, class TDY, class TAdd, class TOut>
__global__ void __launch_bounds__(BLOCK)
    softmax_backward_rows_block(const TY* __restrict__ y, const TDY* __restrict__ dy,
                                const TAdd* add, TOut* dx,  // add may alias dx
                                std::int64_t rows, std::int64_t len, float scale) {
  __shared__ typename BlockRowGroup<BLOCK>::TempStorage temp;
  BlockRowGroup<BLOCK> g(temp);
  for (std::int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const std::int64_t base = row * len;
    float dot = 0.f;
    for (std::int64_t k = g.rank(); k < len; k += g.size())
      dot += to_float(y[base + k]) * to_float(dy[base + k]);
    dot = g.sum(dot);  // broadcast; the group's storage is free again on return
    for (std::int64_t k = g.rank(); k < len; k += g.size())
      dx[base + k] = from_float<TOut>(softmax_backward_term(to_float(y[base + k]),
                                                            to_float(dy[base + k]), dot, scale) +
                                      load_add(add, base + k));
  }
}

}  // namespace kernels

// out[r, :] = softmax(scale * in[r, :]) for rows rows of len elements (device pointers; in and
// out must not overlap, unlike the CPU softmax_rows).
template <class TIn, class TOut>
void softmax_rows(const TIn* in, TOut* out, std::int64_t rows, std::int64_t len, float scale,
                  cudaStream_t stream, RowKernel kernel = RowKernel::Auto) {
  if (rows == 0) return;
  if (resolve_row_kernel(kernel, len) == RowKernel::Warp) {
    kernels::dispatch_vpt(len, [&](auto vpt) {
      kernels::softmax_rows_warp<decltype(vpt)::value>
          <<<kernels::grid_for(rows, kernels::kWarpRowsPerBlock),
             kernels::kWarp * kernels::kWarpRowsPerBlock, 0, stream>>>(in, out, rows,
                                                                       static_cast<int>(len), scale);
    });
    TASN_CUDA_CHECK_LAUNCH("softmax_rows_warp");
  } else {
    kernels::softmax_rows_block<kernels::kRowBlockThreads>
        <<<kernels::grid_for(rows, 1), kernels::kRowBlockThreads, 0, stream>>>(in, out, rows, len,
                                                                               scale);
    TASN_CUDA_CHECK_LAUNCH("softmax_rows_block");
  }
}

// dx = scale * y * (dy - rowsum(y * dy)) + add  (add may be nullptr), the backward of
// y = softmax(scale * x).
template <class TY, class TDY, class TAdd, class TOut>
void softmax_backward_rows(const TY* y, const TDY* dy, const TAdd* add, TOut* dx,
                           std::int64_t rows, std::int64_t len, float scale, cudaStream_t stream,
                           RowKernel kernel = RowKernel::Auto) {
  if (rows == 0) return;
  if (resolve_row_kernel(kernel, len) == RowKernel::Warp) {
    kernels::dispatch_vpt(len, [&](auto vpt) {
      kernels::softmax_backward_rows_warp<decltype(vpt)::value>
          <<<kernels::grid_for(rows, kernels::kWarpRowsPerBlock),
             kernels::kWarp * kernels::kWarpRowsPerBlock, 0, stream>>>(
              y, dy, add, dx, rows, static_cast<int>(len), scale);
    });
    TASN_CUDA_CHECK_LAUNCH("softmax_backward_rows_warp");
  } else {
    kernels::softmax_backward_rows_block<kernels::kRowBlockThreads>
        <<<kernels::grid_for(rows, 1), kernels::kRowBlockThreads, 0, stream>>>(y, dy, add, dx, rows,
                                                                               len, scale);
    TASN_CUDA_CHECK_LAUNCH("softmax_backward_rows_block");
  }
}

}  // namespace tasn::cuda
