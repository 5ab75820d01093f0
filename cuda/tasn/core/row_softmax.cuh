// tasn/core/row_softmax.cuh - row-wise softmax forward and backward kernels (CUDA).
//
// Rows are contiguous, `len` elements each; math in float whatever the storage type.
// Two variants, chosen by row length (or forced, for tests and benchmarks):
//  - warp per row (len <= 1024): each lane keeps its ceil(len/32) <= VPT elements in registers, so
//    the row is read once and written once; reductions with cub::WarpReduce.
//  - block per row (any len): one pass computes the max and the exp-sum together (online softmax,
//    tasn::SoftmaxStats merged with cub::BlockReduce), a second pass writes: 2 reads + 1 write.
// Per-element math comes from tasn/core/softmax_math.h, the functions the CPU path runs.
#pragma once

#include <cub/block/block_reduce.cuh>
#include <cub/warp/warp_reduce.cuh>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "tasn/core/cuda_check.cuh"
#include "tasn/core/dtype.cuh"
#include "tasn/core/softmax_math.h"

namespace tasn::cuda {

enum class RowKernel { Auto, Warp, Block };

inline const char* to_string(RowKernel k) {
  return k == RowKernel::Warp ? "warp" : k == RowKernel::Block ? "block" : "auto";
}

// For tests and benchmarks only: the row-kernel variant every operator uses (Auto: by row
// length). Process-wide and not synchronised; set it through ScopedRowKernel.
namespace testing {
inline RowKernel& forced_row_kernel() {
  static RowKernel kernel = RowKernel::Auto;
  return kernel;
}
// Forces `kernel` for its lifetime, then restores the previous choice.
class ScopedRowKernel {
 public:
  explicit ScopedRowKernel(RowKernel kernel) : old_(forced_row_kernel()) { forced_row_kernel() = kernel; }
  ~ScopedRowKernel() { forced_row_kernel() = old_; }
  ScopedRowKernel(const ScopedRowKernel&) = delete;
  ScopedRowKernel& operator=(const ScopedRowKernel&) = delete;

 private:
  RowKernel old_;
};
}  // namespace testing

namespace kernels {

constexpr int kWarp = 32;
constexpr int kWarpRowsPerBlock = 4;           // warp-per-row kernels: 128 threads, 4 rows a block
constexpr int kRowBlockThreads = 256;          // block-per-row kernels
constexpr std::int64_t kMaxWarpRowLen = 1024;  // longest row the warp variant holds in registers
constexpr unsigned kFullMask = 0xffffffffu;

struct MaxOp {
  __device__ __forceinline__ float operator()(float a, float b) const { return fmaxf(a, b); }
};
struct SumOp {
  __device__ __forceinline__ float operator()(float a, float b) const { return a + b; }
};

// ---- forward: out = softmax(scale * in) ---------------------------------------------------------

template <int VPT, class TIn, class TOut>
__global__ void __launch_bounds__(kWarp* kWarpRowsPerBlock)
    softmax_rows_warp(const TIn* __restrict__ in, TOut* __restrict__ out, std::int64_t rows,
                      int len, float scale) {
  using WarpReduce = cub::WarpReduce<float>;
  __shared__ typename WarpReduce::TempStorage temp[kWarpRowsPerBlock];
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
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
    m = __shfl_sync(kFullMask, WarpReduce(temp[warp]).Reduce(m, MaxOp{}), 0);
    float s = 0.f;
#pragma unroll
    for (int i = 0; i < VPT; ++i) {
      if (lane + i * kWarp < len) {
        v[i] = softmax_term(v[i], m, scale);
        s += v[i];
      }
    }
    __syncwarp();
    s = __shfl_sync(kFullMask, WarpReduce(temp[warp]).Sum(s), 0);
    const float inv = 1.f / s;
    TOut* y = out + row * len;
#pragma unroll
    for (int i = 0; i < VPT; ++i) {
      const int k = lane + i * kWarp;
      if (k < len) y[k] = from_float<TOut>(v[i] * inv);
    }
    __syncwarp();
  }
}

template <int BLOCK, class TIn, class TOut>
__global__ void __launch_bounds__(BLOCK)
    softmax_rows_block(const TIn* __restrict__ in, TOut* __restrict__ out, std::int64_t rows,
                       std::int64_t len, float scale) {
  using Stats = SoftmaxStats<float>;
  using BlockReduce = cub::BlockReduce<Stats, BLOCK>;
  __shared__ typename BlockReduce::TempStorage temp;
  __shared__ Stats row_stats;
  for (std::int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const TIn* x = in + row * len;
    Stats st = Stats::empty();
    for (std::int64_t k = threadIdx.x; k < len; k += BLOCK) st.push(to_float(x[k]), scale);
    st = BlockReduce(temp).Reduce(st, SoftmaxStatsCombine<float>{scale});
    if (threadIdx.x == 0) row_stats = st;
    __syncthreads();
    const float m = row_stats.m, inv = 1.f / row_stats.s;
    TOut* y = out + row * len;
    for (std::int64_t k = threadIdx.x; k < len; k += BLOCK)
      y[k] = from_float<TOut>(softmax_term(to_float(x[k]), m, scale) * inv);
    __syncthreads();  // row_stats and temp are reused by the next row
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
  using WarpReduce = cub::WarpReduce<float>;
  __shared__ typename WarpReduce::TempStorage temp[kWarpRowsPerBlock];
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
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
    dot = __shfl_sync(kFullMask, WarpReduce(temp[warp]).Sum(dot), 0);
#pragma unroll
    for (int i = 0; i < VPT; ++i) {
      const int k = lane + i * kWarp;
      if (k < len)
        dx[base + k] = from_float<TOut>(softmax_backward_term(yv[i], gv[i], dot, scale) +
                                        load_add(add, base + k));
    }
    __syncwarp();
  }
}

template <int BLOCK, class TY, class TDY, class TAdd, class TOut>
__global__ void __launch_bounds__(BLOCK)
    softmax_backward_rows_block(const TY* __restrict__ y, const TDY* __restrict__ dy,
                                const TAdd* add, TOut* dx,  // add may alias dx
                                std::int64_t rows, std::int64_t len, float scale) {
  using BlockReduce = cub::BlockReduce<float, BLOCK>;
  __shared__ typename BlockReduce::TempStorage temp;
  __shared__ float row_dot;
  for (std::int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const std::int64_t base = row * len;
    float dot = 0.f;
    for (std::int64_t k = threadIdx.x; k < len; k += BLOCK)
      dot += to_float(y[base + k]) * to_float(dy[base + k]);
    dot = BlockReduce(temp).Sum(dot);
    if (threadIdx.x == 0) row_dot = dot;
    __syncthreads();
    dot = row_dot;
    for (std::int64_t k = threadIdx.x; k < len; k += BLOCK)
      dx[base + k] = from_float<TOut>(softmax_backward_term(to_float(y[base + k]),
                                                            to_float(dy[base + k]), dot, scale) +
                                      load_add(add, base + k));
    __syncthreads();
  }
}

// Calls f(std::integral_constant<int, VPT>) with the smallest VPT in {1,2,4,8,16,32} such that
// 32 * VPT >= len (len <= kMaxWarpRowLen).
template <class F>
void dispatch_vpt(std::int64_t len, F&& f) {
  const std::int64_t per_lane = (len + kWarp - 1) / kWarp;
  if (per_lane <= 1) f(std::integral_constant<int, 1>{});
  else if (per_lane <= 2) f(std::integral_constant<int, 2>{});
  else if (per_lane <= 4) f(std::integral_constant<int, 4>{});
  else if (per_lane <= 8) f(std::integral_constant<int, 8>{});
  else if (per_lane <= 16) f(std::integral_constant<int, 16>{});
  else f(std::integral_constant<int, 32>{});
}

constexpr std::int64_t kMaxGridBlocks = std::int64_t(1) << 20;  // grid-stride beyond this

inline unsigned grid_for(std::int64_t units, std::int64_t per_block) {
  return static_cast<unsigned>(std::min(kMaxGridBlocks, (units + per_block - 1) / per_block));
}

}  // namespace kernels

// The variant `kernel` resolves to for rows of `len` elements.
inline RowKernel resolve_row_kernel(RowKernel kernel, std::int64_t len) {
  if (kernel == RowKernel::Auto) return len <= kernels::kMaxWarpRowLen ? RowKernel::Warp : RowKernel::Block;
  TASN_CHECK_ARG(kernel != RowKernel::Warp || len <= kernels::kMaxWarpRowLen,
                 "row softmax: the warp-per-row kernel holds rows of at most ",
                 kernels::kMaxWarpRowLen, " elements, got len = ", len);
  return kernel;
}

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
