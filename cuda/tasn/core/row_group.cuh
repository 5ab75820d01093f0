// tasn/core/row_group.cuh - the threads that cooperate on one row: a warp or a whole block.
//
// Row kernels written once against this interface run as warp-per-row (short rows, many rows
// per block) or block-per-row (long rows): loops stride by size() from rank(), and sum() /
// stats() return the reduction over the group, broadcast to every member (CUB reductions).
// Every member must call each reduction (uniform control flow within the group).
#pragma once

#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>
#include <cub/warp/warp_reduce.cuh>

#include "tasn/core/row_kernel.cuh"
#include "tasn/core/softmax_math.h"

namespace tasn::cuda::kernels {

using Stats = SoftmaxStats<float>;

class WarpRowGroup {
 public:
  static constexpr int kSize = 32;
  static constexpr int kBlockThreads = kWarp * kWarpRowsPerBlock;  // 4 warps a block, a row each
  struct TempStorage {
    typename cub::WarpReduce<float>::TempStorage f;
    typename cub::WarpReduce<double>::TempStorage d;
    typename cub::WarpReduce<Stats>::TempStorage s;
  };
  __device__ explicit WarpRowGroup(TempStorage& t) : t_(t) {}
  __device__ int rank() const { return threadIdx.x % kSize; }
  __device__ static constexpr int size() { return kSize; }

  __device__ float sum(float v) {
    const float r = cub::WarpReduce<float>(t_.f).Sum(v);
    __syncwarp();
    return __shfl_sync(0xffffffffu, r, 0);
  }
  // fmaxf over the warp (a NaN member is ignored unless all are NaN), broadcast.
  __device__ float max(float v) {
    const float r = cub::WarpReduce<float>(t_.f).Reduce(v, [](float a, float b) { return fmaxf(a, b); });
    __syncwarp();
    return __shfl_sync(0xffffffffu, r, 0);
  }
  __device__ double sum(double v) {
    const double r = cub::WarpReduce<double>(t_.d).Sum(v);
    __syncwarp();
    return __shfl_sync(0xffffffffu, r, 0);
  }
  __device__ Stats stats(Stats v, float scale) {
    Stats r = cub::WarpReduce<Stats>(t_.s).Reduce(v, SoftmaxStatsCombine<float>{scale});
    __syncwarp();
    r.m = __shfl_sync(0xffffffffu, r.m, 0);
    r.s = __shfl_sync(0xffffffffu, r.s, 0);
    return r;
  }

 private:
  TempStorage& t_;
};

template <int BLOCK>
class BlockRowGroup {
 public:
  static constexpr int kBlockThreads = BLOCK;
  struct TempStorage {
    union {
      typename cub::BlockReduce<float, BLOCK>::TempStorage f;
      typename cub::BlockReduce<double, BLOCK>::TempStorage d;
      typename cub::BlockReduce<Stats, BLOCK>::TempStorage s;
      typename cub::BlockReduce<int, BLOCK>::TempStorage i;
      typename cub::BlockScan<double, BLOCK>::TempStorage scan;
    } u;
    Stats bcast;
    double bcast_d;
    int bcast_i;
  };
  __device__ explicit BlockRowGroup(TempStorage& t) : t_(t) {}
  __device__ int rank() const { return threadIdx.x; }
  __device__ static constexpr int size() { return BLOCK; }

  __device__ float sum(float v) {
    const float r = cub::BlockReduce<float, BLOCK>(t_.u.f).Sum(v);
    if (threadIdx.x == 0) t_.bcast.s = r;
    __syncthreads();
    const float out = t_.bcast.s;
    __syncthreads();  // bcast and the CUB storage may be reused right after
    return out;
  }
  __device__ double sum(double v) { return bcast(cub::BlockReduce<double, BLOCK>(t_.u.d).Sum(v)); }
  __device__ double max(double v) {
    return bcast(cub::BlockReduce<double, BLOCK>(t_.u.d).Reduce(v, [](double a, double b) { return a > b ? a : b; }));
  }
  __device__ bool any(bool v) {
    const int r = cub::BlockReduce<int, BLOCK>(t_.u.i).Reduce(v ? 1 : 0, [](int a, int b) { return a | b; });
    if (threadIdx.x == 0) t_.bcast_i = r;
    __syncthreads();
    const int out = t_.bcast_i;
    __syncthreads();
    return out != 0;
  }
  __device__ Stats stats(Stats v, float scale) {
    const Stats r = cub::BlockReduce<Stats, BLOCK>(t_.u.s).Reduce(v, SoftmaxStatsCombine<float>{scale});
    if (threadIdx.x == 0) t_.bcast = r;
    __syncthreads();
    const Stats out = t_.bcast;
    __syncthreads();
    return out;
  }
  __device__ void sync() { __syncthreads(); }
  // In-place inclusive prefix sum of v[0, n) (shared or global memory), BLOCK elements at a time
  // with a running carry; every thread sees the result on return.
  __device__ void inclusive_scan(double* v, std::int64_t n) {
    double carry = 0.0;
    for (std::int64_t base = 0; base < n; base += BLOCK) {
      const std::int64_t i = base + threadIdx.x;
      double x = i < n ? v[i] : 0.0, total;
      cub::BlockScan<double, BLOCK>(t_.u.scan).InclusiveSum(x, x, total);
      if (i < n) v[i] = x + carry;
      carry += total;  // the block aggregate, known to every thread
      __syncthreads();
    }
  }

 private:
  __device__ double bcast(double r) {
    if (threadIdx.x == 0) t_.bcast_d = r;
    __syncthreads();
    const double out = t_.bcast_d;
    __syncthreads();
    return out;
  }
  TempStorage& t_;
};

}  // namespace tasn::cuda::kernels
