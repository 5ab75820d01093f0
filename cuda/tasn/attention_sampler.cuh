// tasn/attention_sampler.cuh - attention maps, marginals, inverse-CDF grids and bilinear sampling,
// CUDA path. Images in float, __half or __nv_bfloat16 storage; maps, marginals and grids in float
// (compute_type_t<T>); all math in float (grid construction in double). SPEC sections 2 and 3,
// docs/attention_sampler.md.
//
// Every operator is called as tasn::cuda::op(ctx, args, ws) with the arguments struct of
// tasn/attention_sampler_common.h (the same struct tasn::cpu::op takes) and a device workspace of
// tasn::cuda::workspace_bytes(args) bytes. Everything is enqueued on ctx.stream: no allocation, no
// host copies, no synchronisation except the one read-back of the value checks
// (options.check_finite). The per-element and per-sample math is tasn/attention_sampler_common.h,
// the functions the CPU path runs:
//  - the grid kernel runs sampler::grid_of_sample over a block (kernels::BlockRowGroup<256>);
//  - the fused marginals run a block per (sample, chunk of 32 rows or 32 columns) with the resize
//    taps of every row and column computed once per block with tasn::resize_tap, then a block per
//    sample normalises them in a fixed summation order (see marginal_normalise_kernel);
//  - the separable backward is a gather through per-sample transposed tap lists, built by one
//    launch (a block per (sample, axis)) in shared memory with a deterministic fill: no atomics on
//    values, bit-identical run to run.
#pragma once

#include <cub/block/block_scan.cuh>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "tasn/attention_sampler_common.h"
#include "tasn/core/context.cuh"
#include "tasn/core/cuda_check.cuh"
#include "tasn/core/dtype.cuh"
#include "tasn/core/resize.h"
#include "tasn/core/row_group.cuh"
#include "tasn/core/value_checks.cuh"

namespace tasn::cuda {

namespace sampler_kernels {

constexpr int kBlock = 256;
// Dynamic shared memory the per-sample kernels may ask for: the default 48 KiB per block less
// room for their static shared memory (CUB temp storage etc.).
constexpr std::size_t kMaxSharedBytes = 40 * 1024;

// Blocks for n threads' work (grid-stride loops cover the rest): the row kernels' grid_for.
inline unsigned blocks_for(std::int64_t n, int per_block = kBlock) { return kernels::grid_for(n, per_block); }

#define TASN_GRID_STRIDE(i, n)                                                                 \
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < (n); \
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x)

// ---- SPEC 2: one block per sample ----------------------------------------------------------------

// mode 0: structure (sum, distinct optional); 1: detail, training (one channel); 2: plain sum.
template <class T>
__global__ void __launch_bounds__(kBlock)
    attention_map_kernel(const T* __restrict__ m, std::int64_t C, std::int64_t p, int mode, bool distinct,
                         const std::int64_t* __restrict__ channels, std::uint64_t seed, std::int64_t first,
                         float* __restrict__ out, std::int64_t* __restrict__ chosen) {
  extern __shared__ __align__(16) unsigned char smem[];
  double* sums = reinterpret_cast<double*>(smem);
  unsigned char* keep = smem + C * sizeof(double);
  __shared__ std::int64_t pick;
  const std::int64_t n = blockIdx.x;
  const T* mc = m + n * C * p;
  const bool need_keep = (mode == 0 && distinct) || (mode == 1 && !channels);
  if (need_keep) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = kBlock / 32;
    for (std::int64_t c = warp; c < C; c += warps) {  // sampler::warp_order_sum, in parallel
      double s = 0.0;
      for (std::int64_t i = lane; i < p; i += 32) s += static_cast<double>(to_float(mc[c * p + i]));
      for (int o = 16; o > 0; o /= 2) s = s + __shfl_xor_sync(0xffffffffu, s, o);
      if (lane == 0) sums[c] = s;
    }
    __syncthreads();
    for (std::int64_t c = threadIdx.x; c < C; c += kBlock) keep[c] = sampler::channel_is_distinct(sums, c) ? 1 : 0;
    __syncthreads();
  }
  if (mode == 1) {
    if (threadIdx.x == 0) {
      std::int64_t c = 0;
      if (channels) {
        c = channels[n];  // device data: an out-of-range index gives a NaN map and chosen = -1
      } else {
        c = sampler::pick_kept_channel(keep, C, seed, first + n);
      }
      const bool ok = c >= 0 && c < C;
      pick = ok ? c : -1;
      if (chosen) chosen[n] = pick;
    }
    __syncthreads();
    for (std::int64_t i = threadIdx.x; i < p; i += kBlock)
      out[n * p + i] = pick >= 0 ? to_float(mc[pick * p + i]) : __int_as_float(0x7fc00000);
    return;
  }
  for (std::int64_t i = threadIdx.x; i < p; i += kBlock) {
    float acc = 0.f;
    for (std::int64_t c = 0; c < C; ++c)
      if (!need_keep || keep[c]) acc += to_float(mc[c * p + i]);
    out[n * p + i] = acc;
  }
}

static __global__ void upsample_kernel(const float* __restrict__ in, std::int64_t N, std::int64_t h, std::int64_t w,
                                std::int64_t H, std::int64_t W, bool squared, float* __restrict__ out) {
  TASN_GRID_STRIDE(i, N * H * W) {
    const std::int64_t n = i / (H * W), y = (i / W) % H, x = i % W;
    const float v = sampler::upsample_at<float, float>(in + n * h * w, h, w, H, W, y, x);
    out[i] = squared ? v * v : v;
  }
}

// ---- SPEC 3a: fused marginals ------------------------------------------------------------------------
//
// Pass 1 (marginal_maxima_kernel): a block per (sample, chunk): the first ceil(Hs / 32) chunks of a
// sample are 32 rows each (row maxima into my), the next ceil(Ws / 32) are 32 columns each (column
// maxima into mx). The block computes the resize taps (tasn::resize_tap, align_corners) of its 32
// rows / columns once, and those of the other axis in tiles of kTapTile, and evaluates every
// upsampled value as tasn::resize_at does (bilinear_blend of the same taps): the CPU's upsample_at
// bit for bit. A maximum starts at +0 and takes v only when v > max, so it does not depend on the
// order (negatives and NaN never enter). A row or column holding a non-finite value gets NaN.
// Pass 2 (marginal_normalise_kernel): a block per sample sums each axis in double in a fixed order
// (thread t adds entries t, t + 256, ... in index order; then the 256 partials pairwise,
// p[t] += p[t + s] for s = 128, 64, ..., 1) and divides; a NaN entry or no positive / finite mass
// on either axis makes both uniform (fallback). tests/test_gpu_tolerances.cpp replays this order.

constexpr int kMarginalChunk = 32;  // rows or columns per block
constexpr int kTapTile = 512;       // resize taps of the other axis held in shared memory at a time

__device__ __forceinline__ float blend_at(const float* a, std::int64_t w, const ResizeTap<float>& ty,
                                          const ResizeTap<float>& tx) {
  return bilinear_blend<float>(a[ty.i0 * w + tx.i0], a[ty.i0 * w + tx.i1], a[ty.i1 * w + tx.i0],
                               a[ty.i1 * w + tx.i1], ty.w1, tx.w1);
}

static __global__ void __launch_bounds__(kBlock)
    marginal_maxima_kernel(const float* __restrict__ map, std::int64_t h, std::int64_t w, std::int64_t Hs,
                           std::int64_t Ws, std::int64_t row_chunks, std::int64_t chunks, float* __restrict__ my,
                           float* __restrict__ mx) {
  constexpr int kWarps = kBlock / 32;
  __shared__ ResizeTap<float> own[kMarginalChunk];
  __shared__ ResizeTap<float> other[kTapTile];
  __shared__ float part[kWarps][kMarginalChunk];
  __shared__ int part_bad[kWarps][kMarginalChunk];
  const std::int64_t n = static_cast<std::int64_t>(blockIdx.x) / chunks, c = static_cast<std::int64_t>(blockIdx.x) % chunks;
  const bool rows = c < row_chunks;
  const std::int64_t first = (rows ? c : c - row_chunks) * kMarginalChunk;
  const std::int64_t len_own = rows ? Hs : Ws, len_other = rows ? Ws : Hs;
  const std::int64_t in_own = rows ? h : w, in_other = rows ? w : h;
  const bool direct = Hs == h && Ws == w;
  const float* a = map + n * h * w;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (!direct && threadIdx.x < kMarginalChunk && first + threadIdx.x < len_own)
    own[threadIdx.x] = resize_tap<float>(first + threadIdx.x, in_own, len_own, true);
  // rows: warp k owns rows first + k + 8 j (j < 4), its lanes stride the columns;
  // columns: lane l owns column first + l, the warps stride the rows.
  constexpr int kPerWarp = kMarginalChunk / kWarps;
  float r[kPerWarp];
  bool bad[kPerWarp];
  for (int j = 0; j < kPerWarp; ++j) {
    r[j] = 0.f;
    bad[j] = false;
  }
  for (std::int64_t tile = 0; tile < len_other; tile += kTapTile) {
    const std::int64_t tile_len = len_other - tile < kTapTile ? len_other - tile : kTapTile;
    if (!direct) {
      __syncthreads();  // the previous tile is done (and `own` is written)
      for (std::int64_t j = threadIdx.x; j < tile_len; j += kBlock)
        other[j] = resize_tap<float>(tile + j, in_other, len_other, true);
      __syncthreads();
    }
    if (rows) {
      for (int j = 0; j < kPerWarp; ++j) {
        const int yl = warp + kWarps * j;
        const std::int64_t y = first + yl;
        if (y >= Hs) continue;
        for (std::int64_t k = lane; k < tile_len; k += 32) {
          const std::int64_t x = tile + k;
          const float v = direct ? a[y * w + x] : blend_at(a, w, own[yl], other[k]);
          bad[j] = bad[j] || !isfinite(v);
          r[j] = v > r[j] ? v : r[j];
        }
      }
    } else {
      const std::int64_t x = first + lane;
      if (x < Ws)
        for (std::int64_t k = warp; k < tile_len; k += kWarps) {
          const std::int64_t y = tile + k;
          const float v = direct ? a[y * w + x] : blend_at(a, w, other[k], own[lane]);
          bad[0] = bad[0] || !isfinite(v);
          r[0] = v > r[0] ? v : r[0];
        }
    }
  }
  const float nan = __int_as_float(0x7fc00000);
  if (rows) {
    for (int j = 0; j < kPerWarp; ++j) {
      float m = r[j];
      for (int o = 16; o > 0; o /= 2) {
        const float t = __shfl_xor_sync(0xffffffffu, m, o);
        m = t > m ? t : m;
      }
      const bool b = __any_sync(0xffffffffu, bad[j]);
      const std::int64_t y = first + warp + kWarps * j;
      if (lane == 0 && y < Hs) my[n * Hs + y] = b ? nan : m;
    }
  } else {
    part[warp][lane] = r[0];
    part_bad[warp][lane] = bad[0] ? 1 : 0;
    __syncthreads();
    if (warp == 0) {
      float m = 0.f;
      int b = 0;
      for (int k = 0; k < kWarps; ++k) {
        m = part[k][lane] > m ? part[k][lane] : m;
        b |= part_bad[k][lane];
      }
      const std::int64_t x = first + lane;
      if (x < Ws) mx[n * Ws + x] = b ? nan : m;
    }
  }
}

// Sum of v over the block in double: thread partials, then p[t] += p[t + s] for s = kBlock/2, ..., 1.
__device__ __forceinline__ double tree_sum(double* part, double v) {
  part[threadIdx.x] = v;
  __syncthreads();
  for (int s = kBlock / 2; s > 0; s /= 2) {
    if (static_cast<int>(threadIdx.x) < s) part[threadIdx.x] += part[threadIdx.x + s];
    __syncthreads();
  }
  const double r = part[0];
  __syncthreads();
  return r;
}

static __global__ void __launch_bounds__(kBlock)
    marginal_normalise_kernel(std::int64_t Hs, std::int64_t Ws, float* __restrict__ my, float* __restrict__ mx,
                              unsigned char* __restrict__ fallback) {
  __shared__ double part[kBlock];
  const std::int64_t n = blockIdx.x;
  float* ry = my + n * Hs;
  float* rx = mx + n * Ws;
  int local_bad = 0;
  double sy = 0.0, sx = 0.0;
  for (std::int64_t i = threadIdx.x; i < Hs; i += kBlock) {
    local_bad |= !isfinite(ry[i]);
    sy += static_cast<double>(ry[i]);
  }
  for (std::int64_t i = threadIdx.x; i < Ws; i += kBlock) {
    local_bad |= !isfinite(rx[i]);
    sx += static_cast<double>(rx[i]);
  }
  const bool bad = __syncthreads_or(local_bad) != 0;
  const double mass_y = tree_sum(part, sy), mass_x = tree_sum(part, sx);
  const bool fell_back = bad || !(mass_y > 0.0) || !(mass_x > 0.0) || !isfinite(mass_y) || !isfinite(mass_x);
  for (std::int64_t i = threadIdx.x; i < Hs; i += kBlock)
    ry[i] = fell_back ? static_cast<float>(1.0 / double(Hs)) : static_cast<float>(double(ry[i]) / mass_y);
  for (std::int64_t i = threadIdx.x; i < Ws; i += kBlock)
    rx[i] = fell_back ? static_cast<float>(1.0 / double(Ws)) : static_cast<float>(double(rx[i]) / mass_x);
  if (fallback && threadIdx.x == 0) fallback[n] = fell_back ? 1 : 0;
}

// ---- SPEC 3b, 3c: the grid, one block per sample: sampler::grid_of_sample over the block --------

static __global__ void __launch_bounds__(kBlock)
    grid_kernel(const float* __restrict__ my, const float* __restrict__ mx, std::int64_t Hs, std::int64_t Ws,
                std::int64_t Ho, std::int64_t Wo, GridOptions opt, float* __restrict__ gy, float* __restrict__ gx) {
  extern __shared__ double scratch[];  // sampler::grid_scratch_elems(Hs, Ws)
  using Group = kernels::BlockRowGroup<kBlock>;
  __shared__ typename Group::TempStorage temp;
  Group g(temp);
  const std::int64_t n = blockIdx.x;
  sampler::grid_of_sample(g, my + n * Hs, mx + n * Ws, Hs, Ws, Ho, Wo, opt, scratch, gy + n * Ho, gx + n * Wo);
}

// ---- SPEC 3d: sampling ----------------------------------------------------------------------------

template <class T>
__global__ void sample_separable_kernel(const T* __restrict__ img, std::int64_t N, std::int64_t C,
                                        std::int64_t Hi, std::int64_t Wi, const float* __restrict__ gy,
                                        const float* __restrict__ gx, std::int64_t Ho, std::int64_t Wo,
                                        T* __restrict__ out) {
  TASN_GRID_STRIDE(i, N * C * Ho * Wo) {
    const std::int64_t x = i % Wo, y = (i / Wo) % Ho, nc = i / (Ho * Wo), n = nc / C;
    out[i] = from_float<T>(sampler::sample_plane<T, float>(img + nc * Hi * Wi, Hi, Wi,
                                                           sampler::taps_of<float>(gy[n * Ho + y], Hi),
                                                           sampler::taps_of<float>(gx[n * Wo + x], Wi)));
  }
}

template <class T>
__global__ void sample_grid_kernel(const T* __restrict__ img, std::int64_t N, std::int64_t C, std::int64_t Hi,
                                   std::int64_t Wi, const float* __restrict__ grid, std::int64_t Ho,
                                   std::int64_t Wo, T* __restrict__ out) {
  TASN_GRID_STRIDE(i, N * C * Ho * Wo) {
    const std::int64_t pix = i % (Ho * Wo), nc = i / (Ho * Wo), n = nc / C;
    const float* g = grid + (n * Ho * Wo + pix) * 2;
    out[i] = from_float<T>(sampler::sample_plane<T, float>(img + nc * Hi * Wi, Hi, Wi, sampler::taps_of<float>(g[1], Hi),
                                                           sampler::taps_of<float>(g[0], Wi)));
  }
}

// ---- separable backward: transposed tap lists --------------------------------------------------
//
// For source index s of one axis of one sample: the outputs o that read it, ascending, and their
// weights (offsets (S + 1), then 2 O entries). One launch builds both axes: a block per
// (sample, axis). Counts by shared-memory atomics (integers: order-free), an exclusive block scan
// into the offsets, then a deterministic fill: outputs in chunks of 256, each warp ranks its 32
// outputs' entries per source index by shuffles (earlier lanes first) and the 8 warps of a chunk
// write in warp order, advancing the shared cursors. So each list holds its outputs in ascending
// order, exactly as a serial construction: the backward gathers stay bit-reproducible. The
// cursors live in shared memory: S <= kMaxTapSources source pixels per axis (else refused).

struct TapLists {
  int* offsets;  // (S + 1) per sample
  int* outputs;  // 2 O per sample
  float* weights;
};

constexpr std::int64_t kMaxTapSources = static_cast<std::int64_t>(kMaxSharedBytes / sizeof(int)) - 1;

static __global__ void __launch_bounds__(kBlock)
    tap_lists_kernel(const float* __restrict__ gy, const float* __restrict__ gx, std::int64_t Ho, std::int64_t Wo,
                     std::int64_t Hi, std::int64_t Wi, TapLists ly, TapLists lx) {
  extern __shared__ int cur[];  // S + 1
  using Scan = cub::BlockScan<int, kBlock>;
  __shared__ typename Scan::TempStorage scan;
  constexpr int kWarps = kBlock / 32;
  const std::int64_t n = blockIdx.x / 2;
  const bool y_axis = blockIdx.x % 2 == 0;
  const std::int64_t O = y_axis ? Ho : Wo, S = y_axis ? Hi : Wi;
  const float* g = y_axis ? gy + n * Ho : gx + n * Wo;
  const TapLists l = y_axis ? ly : lx;
  int* off = l.offsets + n * (S + 1);
  int* outs = l.outputs + n * 2 * O;
  float* wts = l.weights + n * 2 * O;
  for (std::int64_t s = threadIdx.x; s <= S; s += kBlock) cur[s] = 0;
  __syncthreads();
  for (std::int64_t o = threadIdx.x; o < O; o += kBlock) {
    const auto t = sampler::taps_of<float>(g[o], S);
    if (sampler::tap_in(t.i0, S)) atomicAdd(&cur[t.i0], 1);
    if (sampler::tap_in(t.i0 + 1, S)) atomicAdd(&cur[t.i0 + 1], 1);
  }
  __syncthreads();
  int carry = 0;
  for (std::int64_t base = 0; base <= S; base += kBlock) {  // exclusive scan; cur[S] = 0 gets the total
    const std::int64_t i = base + threadIdx.x;
    int x = i <= S ? cur[i] : 0, total;
    Scan(scan).ExclusiveSum(x, x, total);
    if (i <= S) {
      cur[i] = x + carry;
      off[i] = x + carry;
    }
    carry += total;
    __syncthreads();
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (std::int64_t base = 0; base < O; base += kBlock) {
    const std::int64_t o = base + threadIdx.x;
    sampler::Taps<float> t{0, 0.f, 0.f, 0.f};
    if (o < O) t = sampler::taps_of<float>(g[o], S);
    const std::int64_t k0 = o < O && sampler::tap_in(t.i0, S) ? t.i0 : -1;
    const std::int64_t k1 = o < O && sampler::tap_in(t.i0 + 1, S) ? t.i0 + 1 : -1;
    int before0 = 0, before1 = 0, after0 = 0, after1 = 0;  // same-key entries of earlier / later lanes
    for (int j = 0; j < 32; ++j) {
      const std::int64_t a0 = __shfl_sync(0xffffffffu, k0, j), a1 = __shfl_sync(0xffffffffu, k1, j);
      const int m0 = k0 >= 0 && (a0 == k0 || a1 == k0), m1 = k1 >= 0 && (a0 == k1 || a1 == k1);
      if (j < lane) {
        before0 += m0;
        before1 += m1;
      } else if (j > lane) {
        after0 += m0;
        after1 += m1;
      }
    }
    for (int w = 0; w < kWarps; ++w) {
      if (warp == w) {
        if (k0 >= 0) {
          const int p = cur[k0] + before0;
          outs[p] = static_cast<int>(o);
          wts[p] = t.w0;
        }
        if (k1 >= 0) {
          const int p = cur[k1] + before1;
          outs[p] = static_cast<int>(o);
          wts[p] = t.w1;
        }
        __syncwarp();
        if (k0 >= 0 && after0 == 0) cur[k0] += before0 + 1;  // the key's last lane advances its cursor
        if (k1 >= 0 && after1 == 0) cur[k1] += before1 + 1;
      }
      __syncthreads();
    }
  }
}

// rows[n, c, y, xi] = sum over the x-tap list of xi of w * dout[n, c, y, o]
template <class T>
__global__ void backward_x_kernel(const T* __restrict__ dout, std::int64_t N, std::int64_t C, std::int64_t Ho,
                                  std::int64_t Wo, std::int64_t Wi, TapLists lx, float* __restrict__ rows) {
  TASN_GRID_STRIDE(i, N * C * Ho * Wi) {
    const std::int64_t xi = i % Wi, ncy = i / Wi, n = ncy / (C * Ho);
    const int* off = lx.offsets + n * (Wi + 1);
    const T* d = dout + ncy * Wo;
    float acc = 0.f;
    for (int e = off[xi]; e < off[xi + 1]; ++e) acc += lx.weights[n * 2 * Wo + e] * to_float(d[lx.outputs[n * 2 * Wo + e]]);
    rows[i] = acc;
  }
}

// dimg[n, c, yi, x] = sum over the y-tap list of yi of w * rows[n, c, o, x]
template <class T>
__global__ void backward_y_kernel(const float* __restrict__ rows, std::int64_t N, std::int64_t C, std::int64_t Ho,
                                  std::int64_t Hi, std::int64_t Wi, TapLists ly, T* __restrict__ dimg) {
  TASN_GRID_STRIDE(i, N * C * Hi * Wi) {
    const std::int64_t x = i % Wi, yi = (i / Wi) % Hi, nc = i / (Hi * Wi), n = nc / C;
    const int* off = ly.offsets + n * (Hi + 1);
    float acc = 0.f;
    for (int e = off[yi]; e < off[yi + 1]; ++e)
      acc += ly.weights[n * 2 * Ho + e] * rows[(nc * Ho + ly.outputs[n * 2 * Ho + e]) * Wi + x];
    dimg[i] = from_float<T>(acc);
  }
}

// General-grid backward: one thread per output pixel (all channels): dgrid directly, dimg by
// float atomics into `acc` (dimg itself when T is float).
template <class T>
__global__ void sample_grid_backward_kernel(const T* __restrict__ img, const float* __restrict__ grid,
                                            const T* __restrict__ dout, std::int64_t N, std::int64_t C,
                                            std::int64_t Hi, std::int64_t Wi, std::int64_t Ho, std::int64_t Wo,
                                            float* acc, float* __restrict__ dgrid) {
  const std::int64_t P = Ho * Wo;
  TASN_GRID_STRIDE(i, N * P) {
    const std::int64_t n = i / P, pix = i % P;
    const float* g = grid + i * 2;
    const auto tx = sampler::taps_of<float>(g[0], Wi);
    const auto ty = sampler::taps_of<float>(g[1], Hi);
    const std::int64_t x0 = tx.i0, x1 = tx.i0 + 1, y0 = ty.i0, y1 = ty.i0 + 1;
    float gxs = 0.f, gys = 0.f;
    for (std::int64_t c = 0; c < C; ++c) {
      const float d = to_float(dout[(n * C + c) * P + pix]);
      if (acc) {
        float* di = acc + (n * C + c) * Hi * Wi;
        if (sampler::tap_in(y0, Hi) && sampler::tap_in(x0, Wi)) atomicAdd(di + y0 * Wi + x0, tx.w0 * ty.w0 * d);
        if (sampler::tap_in(y0, Hi) && sampler::tap_in(x1, Wi)) atomicAdd(di + y0 * Wi + x1, tx.w1 * ty.w0 * d);
        if (sampler::tap_in(y1, Hi) && sampler::tap_in(x0, Wi)) atomicAdd(di + y1 * Wi + x0, tx.w0 * ty.w1 * d);
        if (sampler::tap_in(y1, Hi) && sampler::tap_in(x1, Wi)) atomicAdd(di + y1 * Wi + x1, tx.w1 * ty.w1 * d);
      }
      if (dgrid) {
        const T* pl = img + (n * C + c) * Hi * Wi;
        const float nw = sampler::pixel_or_zero<T, float>(pl, Hi, Wi, y0, x0);
        const float ne = sampler::pixel_or_zero<T, float>(pl, Hi, Wi, y0, x1);
        const float sw = sampler::pixel_or_zero<T, float>(pl, Hi, Wi, y1, x0);
        const float se = sampler::pixel_or_zero<T, float>(pl, Hi, Wi, y1, x1);
        gxs += d * (ty.w0 * (ne - nw) + ty.w1 * (se - sw));
        gys += d * (tx.w0 * (sw - nw) + tx.w1 * (se - ne));
      }
    }
    if (dgrid) sampler::grid_point_grad(gxs, gys, tx, ty, dgrid[i * 2], dgrid[i * 2 + 1]);
  }
}

template <class T>
__global__ void cast_kernel(const float* __restrict__ in, std::int64_t n, T* __restrict__ out) {
  TASN_GRID_STRIDE(i, n) out[i] = from_float<T>(in[i]);
}

#undef TASN_GRID_STRIDE

}  // namespace sampler_kernels

// ---- launches without checks (the operators below check, then call these) -------------------------

namespace detail_sampler {

namespace k = sampler_kernels;

template <class T>
void check_image_type() {
  static_assert(is_storage_type_v<T>, "T must be float, __half or __nv_bfloat16");
}

// A one-block-per-sample (or per-(sample, part)) kernel: `blocks` must fit the grid's x dimension.
inline void check_blocks(const char* op, std::int64_t N, std::int64_t per_sample, const char* what) {
  TASN_CHECK_ARG(N <= std::int64_t(INT32_MAX) / per_sample, op, ": N = ", N, " samples of ", per_sample, " ", what,
                 " exceed the ", INT32_MAX, " blocks of a launch");
}

// Blocks per sample of the fused marginals' pass 1.
inline std::int64_t marginal_row_chunks(std::int64_t Hs) { return (Hs + k::kMarginalChunk - 1) / k::kMarginalChunk; }
inline std::int64_t marginal_chunks(std::int64_t Hs, std::int64_t Ws) {
  return marginal_row_chunks(Hs) + (Ws + k::kMarginalChunk - 1) / k::kMarginalChunk;
}

// The CUDA-only limits of the grid kernel (its scratch lives in shared memory).
inline void check_grid_limits(const char* op, std::int64_t N, std::int64_t Hs, std::int64_t Ws) {
  check_blocks(op, N, 1, "blocks (one per sample)");
  TASN_CHECK_ARG(Hs + Ws <= static_cast<std::int64_t>(k::kMaxSharedBytes / (2 * sizeof(double))), op,
                 ": Hs + Ws = ", Hs + Ws, " exceeds the ", k::kMaxSharedBytes / (2 * sizeof(double)),
                 " marginal entries the grid kernel holds in shared memory");
}

inline void check_marginal_limits(const char* op, std::int64_t N, std::int64_t Hs, std::int64_t Ws) {
  check_blocks(op, N, marginal_chunks(Hs, Ws), "blocks (one per 32 rows or columns)");
}

inline void launch_upsample(const Context& ctx, const float* in, std::int64_t N, std::int64_t h, std::int64_t w,
                            std::int64_t H, std::int64_t W, bool squared, float* out) {
  k::upsample_kernel<<<k::blocks_for(N * H * W), k::kBlock, 0, ctx.stream>>>(in, N, h, w, H, W, squared, out);
  TASN_CUDA_CHECK_LAUNCH("upsample_kernel");
}

inline void launch_marginals(const Context& ctx, const float* map, std::int64_t N, std::int64_t h, std::int64_t w,
                             std::int64_t Hs, std::int64_t Ws, float* my, float* mx, unsigned char* fallback) {
  const std::int64_t chunks = marginal_chunks(Hs, Ws);
  k::marginal_maxima_kernel<<<static_cast<unsigned>(N * chunks), k::kBlock, 0, ctx.stream>>>(
      map, h, w, Hs, Ws, marginal_row_chunks(Hs), chunks, my, mx);
  TASN_CUDA_CHECK_LAUNCH("marginal_maxima_kernel");
  k::marginal_normalise_kernel<<<static_cast<unsigned>(N), k::kBlock, 0, ctx.stream>>>(Hs, Ws, my, mx, fallback);
  TASN_CUDA_CHECK_LAUNCH("marginal_normalise_kernel");
}

inline void launch_grid(const Context& ctx, const float* my, const float* mx, std::int64_t N, std::int64_t Hs,
                        std::int64_t Ws, std::int64_t Ho, std::int64_t Wo, const GridOptions& opt, float* gy,
                        float* gx) {
  const std::size_t shm = static_cast<std::size_t>(sampler::grid_scratch_elems(Hs, Ws)) * sizeof(double);
  k::grid_kernel<<<static_cast<unsigned>(N), k::kBlock, shm, ctx.stream>>>(my, mx, Hs, Ws, Ho, Wo, opt, gy, gx);
  TASN_CUDA_CHECK_LAUNCH("grid_kernel");
}

template <class T>
void launch_sample_separable(const Context& ctx, const T* img, std::int64_t N, std::int64_t C, std::int64_t Hi,
                             std::int64_t Wi, const float* gy, const float* gx, std::int64_t Ho, std::int64_t Wo,
                             T* out) {
  k::sample_separable_kernel<T><<<k::blocks_for(N * C * Ho * Wo), k::kBlock, 0, ctx.stream>>>(img, N, C, Hi, Wi, gy,
                                                                                              gx, Ho, Wo, out);
  TASN_CUDA_CHECK_LAUNCH("sample_separable_kernel");
}

// The CUDA-only limits of the tap lists (32-bit entries, cursors in shared memory).
inline void check_tap_list_limits(const char* op, std::int64_t N, std::int64_t Hi, std::int64_t Wi, std::int64_t Ho,
                                  std::int64_t Wo) {
  check_blocks(op, N, 2, "blocks (one per sample and axis)");
  TASN_CHECK_ARG(Wo < INT32_MAX / 2 && Ho < INT32_MAX / 2, op, ": output sizes (", Ho, ", ", Wo,
                 ") too large for 32-bit tap lists (each must be below ", INT32_MAX / 2, ")");
  TASN_CHECK_ARG(Hi <= k::kMaxTapSources && Wi <= k::kMaxTapSources, op, ": image sizes (", Hi, ", ", Wi,
                 ") exceed the ", k::kMaxTapSources, " pixels per axis the tap lists hold in shared memory");
}

// The workspace of sample_separable_backward: value-check slots first, then the tap lists of both
// axes and the pass-1 row buffer (N, C, Ho, Wi).
struct BackwardLayout {
  unsigned long long* slots;
  k::TapLists x, y;
  float* rows;
};
inline BackwardLayout backward_layout(detail::WorkspaceCarver& ws, const sampler::SampleSizes& s, bool check_finite) {
  BackwardLayout l{};
  l.slots = detail::take_value_check_slots(ws, check_finite);
  l.x = {ws.take<int>(s.N * (s.Wi + 1)), ws.take<int>(s.N * 2 * s.Wo), ws.take<float>(s.N * 2 * s.Wo)};
  l.y = {ws.take<int>(s.N * (s.Hi + 1)), ws.take<int>(s.N * 2 * s.Ho), ws.take<float>(s.N * 2 * s.Ho)};
  l.rows = ws.take<float>(s.N * s.C * s.Ho * s.Wi);
  return l;
}

// Both axes' tap lists of every sample in one launch (a block per (sample, axis)).
inline void build_tap_lists(const Context& ctx, const float* gy, const float* gx, std::int64_t N, std::int64_t Ho,
                            std::int64_t Wo, std::int64_t Hi, std::int64_t Wi, const k::TapLists& ly,
                            const k::TapLists& lx) {
  const std::size_t shm = static_cast<std::size_t>((Hi > Wi ? Hi : Wi) + 1) * sizeof(int);
  k::tap_lists_kernel<<<static_cast<unsigned>(2 * N), k::kBlock, shm, ctx.stream>>>(gy, gx, Ho, Wo, Hi, Wi, ly, lx);
  TASN_CUDA_CHECK_LAUNCH("tap_lists_kernel");
}

// The workspace of sample_grid_backward: slots, then the float accumulator of dimg (not for float images).
template <class T>
float* grid_backward_layout(detail::WorkspaceCarver& ws, const sampler::SampleSizes& s, const SampleGridBackwardArgs<T>& a,
                            unsigned long long** slots) {
  *slots = detail::take_value_check_slots(ws, a.options.check_finite);
  if (a.dimg.present() && !std::is_same_v<T, float>) return ws.take<float>(s.N * s.C * s.Hi * s.Wi);
  return nullptr;
}

// The ONE workspace layout of attention_sample (workspace_bytes and the operator run it): slots,
// the upsampled map when squared, the marginals, and the grid where gy / gx are not given.
struct AttentionSampleLayout {
  unsigned long long* slots;
  float *up, *my, *mx, *gy, *gx;
};
template <class T>
AttentionSampleLayout attention_sample_layout(detail::WorkspaceCarver& ws, const sampler::AttentionSampleSizes& s,
                                              const AttentionSampleArgs<T>& a) {
  AttentionSampleLayout l{};
  l.slots = detail::take_value_check_slots(ws, a.options.check_finite);
  l.up = a.options.squared ? ws.take<float>(s.N * s.Hs * s.Ws) : nullptr;
  l.my = ws.take<float>(s.N * s.Hs);
  l.mx = ws.take<float>(s.N * s.Ws);
  l.gy = a.gy.present() ? a.gy.data : ws.take<float>(s.N * s.Ho);
  l.gx = a.gx.present() ? a.gx.data : ws.take<float>(s.N * s.Wo);
  return l;
}

// Bytes of a workspace that holds only the value-check slots.
inline std::size_t slots_only_bytes(bool check_finite) {
  detail::WorkspaceCarver ws;
  detail::take_value_check_slots(ws, check_finite);
  return ws.bytes();
}

}  // namespace detail_sampler

// ---- workspace sizes ---------------------------------------------------------------------------------

template <class T>
std::size_t workspace_bytes(const StructureMapArgs<T>& a) {
  sampler::check_args("cuda::structure_map", a);
  return detail_sampler::slots_only_bytes(a.options.check_finite);
}
template <class T>
std::size_t workspace_bytes(const DetailMapArgs<T>& a) {
  sampler::check_args("cuda::detail_map", a);
  return detail_sampler::slots_only_bytes(a.options.check_finite);
}
inline std::size_t workspace_bytes(const UpsampleArgs<float>& a) {
  sampler::check_args("cuda::upsample_bilinear", a);
  return detail_sampler::slots_only_bytes(a.options.check_finite);
}
inline std::size_t workspace_bytes(const MarginalsArgs<float>& a) {
  sampler::check_args("cuda::attention_marginals", a);
  return detail_sampler::slots_only_bytes(a.options.check_finite);
}
inline std::size_t workspace_bytes(const GridArgs<float>& a) {
  sampler::check_args("cuda::sampling_grid", a);
  return detail_sampler::slots_only_bytes(a.options.check_finite);
}
template <class T>
std::size_t workspace_bytes(const SampleSeparableArgs<T>& a) {
  sampler::check_args("cuda::sample_separable", a);
  return detail_sampler::slots_only_bytes(a.options.check_finite);
}
template <class T>
std::size_t workspace_bytes(const SampleSeparableBackwardArgs<T>& a) {
  const auto s = sampler::check_args("cuda::sample_separable_backward", a);
  detail::WorkspaceCarver ws;
  detail_sampler::backward_layout(ws, s, a.options.check_finite);
  return ws.bytes();
}
template <class T>
std::size_t workspace_bytes(const SampleGridArgs<T>& a) {
  sampler::check_args("cuda::sample_grid", a);
  return detail_sampler::slots_only_bytes(a.options.check_finite);
}
template <class T>
std::size_t workspace_bytes(const SampleGridBackwardArgs<T>& a) {
  const auto s = sampler::check_args("cuda::sample_grid_backward", a);
  detail::WorkspaceCarver ws;
  unsigned long long* slots = nullptr;
  detail_sampler::grid_backward_layout(ws, s, a, &slots);
  return ws.bytes();
}
template <class T>
std::size_t workspace_bytes(const AttentionSampleArgs<T>& a) {
  const auto s = sampler::check_args("cuda::attention_sample", a);
  detail::WorkspaceCarver ws;
  detail_sampler::attention_sample_layout(ws, s, a);
  return ws.bytes();
}

// ---- SPEC 2 ---------------------------------------------------------------------------------------

namespace detail_sampler {
// mode as attention_map_kernel: 0 structure, 1 detail (training), 2 plain sum.
template <class T>
void launch_attention_map(const Context& ctx, const sampler::MapSizes& s, const T* m, int mode,
                          bool distinct, const std::int64_t* channels, std::uint64_t seed, std::int64_t first,
                          float* out, std::int64_t* chosen) {
  const std::size_t shm = static_cast<std::size_t>(s.C) * (sizeof(double) + 1);
  k::attention_map_kernel<T><<<static_cast<unsigned>(s.N), k::kBlock, shm, ctx.stream>>>(m, s.C, s.h * s.w, mode,
                                                                                        distinct, channels, seed, first,
                                                                                        out, chosen);
  TASN_CUDA_CHECK_LAUNCH("attention_map_kernel");
}
inline void check_map_limits(const char* op, const sampler::MapSizes& s) {
  check_blocks(op, s.N, 1, "blocks (one per sample)");
  TASN_CHECK_ARG(static_cast<std::size_t>(s.C) <= k::kMaxSharedBytes / 9, op, ": C = ", s.C, " channels exceed the ",
                 k::kMaxSharedBytes / 9, " the kernel holds in shared memory");
}
}  // namespace detail_sampler

// out (N, h, w) float = channel sum of m (N, C, h, w) (distinct: equal-sum channels counted once).
template <class T>
void structure_map(const Context& ctx, const StructureMapArgs<T>& a, Workspace ws = {}) {
  constexpr const char* op = "cuda::structure_map";
  detail_sampler::check_image_type<T>();
  const auto s = sampler::check_args(op, a);
  detail_sampler::check_map_limits(op, s);
  detail::check_workspace(ws, workspace_bytes(a), op);
  detail::WorkspaceCarver carver(ws.data);
  detail::ValueChecks vc(ctx, detail::take_value_check_slots(carver, a.options.check_finite), op);
  vc.finite(a.m.data, a.m.numel(), "m");
  vc.finish();
  detail_sampler::launch_attention_map(ctx, s, a.m.data, 0, a.options.distinct, nullptr, 0, 0, a.out.data, nullptr);
}

// Detail map, as cpu::detail_map: channels (optional) or the seeded pick among the distinct
// channels in training, the plain sum in evaluation; chosen (optional). With check_finite a
// channel outside [0, C) is refused (the CPU's message); without, it gives that sample a NaN map
// and chosen = -1.
template <class T>
void detail_map(const Context& ctx, const DetailMapArgs<T>& a, Workspace ws = {}) {
  constexpr const char* op = "cuda::detail_map";
  detail_sampler::check_image_type<T>();
  const auto s = sampler::check_args(op, a);
  detail_sampler::check_map_limits(op, s);
  detail::check_workspace(ws, workspace_bytes(a), op);
  detail::WorkspaceCarver carver(ws.data);
  detail::ValueChecks vc(ctx, detail::take_value_check_slots(carver, a.options.check_finite), op);
  vc.finite(a.m.data, a.m.numel(), "m");
  if (a.options.training && a.channels.present()) vc.indices(a.channels.data, s.N, s.C, &sampler::bad_channel_message);
  vc.finish();
  detail_sampler::launch_attention_map(ctx, s, a.m.data, a.options.training ? 1 : 2, false,
                                       a.options.training ? a.channels.data : nullptr, a.options.seed,
                                       a.options.first_sample, a.out.data,
                                       a.chosen.data);
}

// out (N, H, W) = bilinear upsampling (align_corners) of in (N, h, w); squared: then squared.
inline void upsample_bilinear(const Context& ctx, const UpsampleArgs<float>& a, Workspace ws = {}) {
  constexpr const char* op = "cuda::upsample_bilinear";
  const auto s = sampler::check_args(op, a);
  detail::check_workspace(ws, workspace_bytes(a), op);
  detail::WorkspaceCarver carver(ws.data);
  detail::ValueChecks vc(ctx, detail::take_value_check_slots(carver, a.options.check_finite), op);
  vc.finite(a.in.data, a.in.numel(), "in");
  vc.finish();
  detail_sampler::launch_upsample(ctx, a.in.data, s.N, s.h, s.w, s.H, s.W, a.options.squared, a.out.data);
}

// ---- SPEC 3a, 3b, 3c --------------------------------------------------------------------------------

// Fused marginals my (N, Hs), mx (N, Ws) of map (N, h, w) upsampled to (Hs, Ws); as cpu::attention_marginals.
inline void attention_marginals(const Context& ctx, const MarginalsArgs<float>& a, Workspace ws = {}) {
  constexpr const char* op = "cuda::attention_marginals";
  const auto s = sampler::check_args(op, a);
  detail_sampler::check_marginal_limits(op, s.N, s.Hs, s.Ws);
  detail::check_workspace(ws, workspace_bytes(a), op);
  detail::WorkspaceCarver carver(ws.data);
  detail::ValueChecks vc(ctx, detail::take_value_check_slots(carver, a.options.check_finite), op);
  vc.finite(a.map.data, a.map.numel(), "map");
  vc.finish();
  detail_sampler::launch_marginals(ctx, a.map.data, s.N, s.h, s.w, s.Hs, s.Ws, a.my.data, a.mx.data, a.fallback.data);
}

// Separable grid gy (N, Ho), gx (N, Wo) from marginals my (N, Hs), mx (N, Ws); as cpu::sampling_grid.
inline void sampling_grid(const Context& ctx, const GridArgs<float>& a, Workspace ws = {}) {
  constexpr const char* op = "cuda::sampling_grid";
  const auto s = sampler::check_args(op, a);
  detail_sampler::check_grid_limits(op, s.N, s.Hs, s.Ws);
  detail::check_workspace(ws, workspace_bytes(a), op);
  detail::WorkspaceCarver carver(ws.data);
  detail::ValueChecks vc(ctx, detail::take_value_check_slots(carver, a.options.check_finite), op);
  vc.finite(a.my.data, a.my.numel(), "my");
  vc.finite(a.mx.data, a.mx.numel(), "mx");
  vc.finish();
  detail_sampler::launch_grid(ctx, a.my.data, a.mx.data, s.N, s.Hs, s.Ws, s.Ho, s.Wo, a.options, a.gy.data, a.gx.data);
}

// ---- SPEC 3d ------------------------------------------------------------------------------------------

template <class T>
void sample_separable(const Context& ctx, const SampleSeparableArgs<T>& a, Workspace ws = {}) {
  constexpr const char* op = "cuda::sample_separable";
  detail_sampler::check_image_type<T>();
  const auto s = sampler::check_args(op, a);
  detail::check_workspace(ws, workspace_bytes(a), op);
  detail::WorkspaceCarver carver(ws.data);
  detail::ValueChecks vc(ctx, detail::take_value_check_slots(carver, a.options.check_finite), op);
  vc.finite(a.img.data, a.img.numel(), "img");
  vc.finite(a.gy.data, a.gy.numel(), "gy");
  vc.finite(a.gx.data, a.gx.numel(), "gx");
  vc.finish();
  detail_sampler::launch_sample_separable(ctx, a.img.data, s.N, s.C, s.Hi, s.Wi, a.gy.data, a.gx.data, s.Ho, s.Wo,
                                          a.out.data);
}

// dimg = the transpose of sample_separable applied to dout; deterministic (gather through the tap
// lists, no atomics on values): bit-identical run to run.
template <class T>
void sample_separable_backward(const Context& ctx, const SampleSeparableBackwardArgs<T>& a, Workspace ws = {}) {
  constexpr const char* op = "cuda::sample_separable_backward";
  detail_sampler::check_image_type<T>();
  const auto s = sampler::check_args(op, a);
  detail_sampler::check_tap_list_limits(op, s.N, s.Hi, s.Wi, s.Ho, s.Wo);
  detail::check_workspace(ws, workspace_bytes(a), op);
  detail::WorkspaceCarver carver(ws.data);
  const auto l = detail_sampler::backward_layout(carver, s, a.options.check_finite);
  detail::ValueChecks vc(ctx, l.slots, op);
  vc.finite(a.dout.data, a.dout.numel(), "dout");
  vc.finite(a.gy.data, a.gy.numel(), "gy");
  vc.finite(a.gx.data, a.gx.numel(), "gx");
  vc.finish();
  namespace k = sampler_kernels;
  detail_sampler::build_tap_lists(ctx, a.gy.data, a.gx.data, s.N, s.Ho, s.Wo, s.Hi, s.Wi, l.y, l.x);
  k::backward_x_kernel<T><<<k::blocks_for(s.N * s.C * s.Ho * s.Wi), k::kBlock, 0, ctx.stream>>>(
      a.dout.data, s.N, s.C, s.Ho, s.Wo, s.Wi, l.x, l.rows);
  TASN_CUDA_CHECK_LAUNCH("backward_x_kernel");
  k::backward_y_kernel<T><<<k::blocks_for(s.N * s.C * s.Hi * s.Wi), k::kBlock, 0, ctx.stream>>>(
      l.rows, s.N, s.C, s.Ho, s.Hi, s.Wi, l.y, a.dimg.data);
  TASN_CUDA_CHECK_LAUNCH("backward_y_kernel");
}

// General grid (N, Ho, Wo, 2) of (x, y): out = grid_sample(img, grid, bilinear, zeros, align_corners).
template <class T>
void sample_grid(const Context& ctx, const SampleGridArgs<T>& a, Workspace ws = {}) {
  constexpr const char* op = "cuda::sample_grid";
  detail_sampler::check_image_type<T>();
  const auto s = sampler::check_args(op, a);
  detail::check_workspace(ws, workspace_bytes(a), op);
  detail::WorkspaceCarver carver(ws.data);
  detail::ValueChecks vc(ctx, detail::take_value_check_slots(carver, a.options.check_finite), op);
  vc.finite(a.img.data, a.img.numel(), "img");
  vc.finite(a.grid.data, a.grid.numel(), "grid");
  vc.finish();
  namespace k = sampler_kernels;
  k::sample_grid_kernel<T><<<k::blocks_for(s.N * s.C * s.Ho * s.Wo), k::kBlock, 0, ctx.stream>>>(
      a.img.data, s.N, s.C, s.Hi, s.Wi, a.grid.data, s.Ho, s.Wo, a.out.data);
  TASN_CUDA_CHECK_LAUNCH("sample_grid_kernel");
}

// Backward of sample_grid: dimg (optional; float atomics, so not bit-reproducible) and dgrid
// (optional, float (N, Ho, Wo, 2)).
template <class T>
void sample_grid_backward(const Context& ctx, const SampleGridBackwardArgs<T>& a, Workspace ws = {}) {
  constexpr const char* op = "cuda::sample_grid_backward";
  detail_sampler::check_image_type<T>();
  const auto s = sampler::check_args(op, a);
  detail::check_workspace(ws, workspace_bytes(a), op);
  detail::WorkspaceCarver carver(ws.data);
  unsigned long long* slots = nullptr;
  float* acc = detail_sampler::grid_backward_layout(carver, s, a, &slots);
  detail::ValueChecks vc(ctx, slots, op);
  if (a.dgrid.present()) vc.finite(a.img.data, a.img.numel(), "img");
  vc.finite(a.grid.data, a.grid.numel(), "grid");
  vc.finite(a.dout.data, a.dout.numel(), "dout");
  vc.finish();
  if (!a.dimg.present() && !a.dgrid.present()) return;
  if constexpr (std::is_same_v<T, float>) acc = a.dimg.data;
  if (acc) TASN_CUDA_CHECK(cudaMemsetAsync(acc, 0, sizeof(float) * s.N * s.C * s.Hi * s.Wi, ctx.stream));
  namespace k = sampler_kernels;
  k::sample_grid_backward_kernel<T><<<k::blocks_for(s.N * s.Ho * s.Wo), k::kBlock, 0, ctx.stream>>>(
      a.img.data, a.grid.data, a.dout.data, s.N, s.C, s.Hi, s.Wi, s.Ho, s.Wo, acc, a.dgrid.data);
  TASN_CUDA_CHECK_LAUNCH("sample_grid_backward_kernel");
  if constexpr (!std::is_same_v<T, float>) {
    if (acc) {
      const std::int64_t n = s.N * s.C * s.Hi * s.Wi;
      k::cast_kernel<T><<<k::blocks_for(n), k::kBlock, 0, ctx.stream>>>(acc, n, a.dimg.data);
      TASN_CUDA_CHECK_LAUNCH("cast_kernel");
    }
  }
}

// ---- convenience ----------------------------------------------------------------------------------------

// Attention map (N, Ha, Wa) + image (N, C, Hi, Wi) -> sampled image out (N, C, Ho, Wo): the
// marginals of the map upsampled to (Hs, Ws) (squared first when options.squared), the grid
// (written to gy / gx when given), separable sampling; fallback (N) as in attention_marginals.
template <class T>
void attention_sample(const Context& ctx, const AttentionSampleArgs<T>& a, Workspace ws = {}) {
  constexpr const char* op = "cuda::attention_sample";
  detail_sampler::check_image_type<T>();
  const auto s = sampler::check_args(op, a);
  detail_sampler::check_marginal_limits(op, s.N, s.Hs, s.Ws);
  detail_sampler::check_grid_limits(op, s.N, s.Hs, s.Ws);
  detail::check_workspace(ws, workspace_bytes(a), op);
  detail::WorkspaceCarver carver(ws.data);
  const auto l = detail_sampler::attention_sample_layout(carver, s, a);
  detail::ValueChecks vc(ctx, l.slots, op);
  vc.finite(a.img.data, a.img.numel(), "img");
  vc.finite(a.attention.data, a.attention.numel(), "attention");
  vc.finish();
  const float* map = a.attention.data;
  std::int64_t h = s.Ha, w = s.Wa;
  if (a.options.squared) {  // squaring happens after upsampling: materialise the upsampled map
    detail_sampler::launch_upsample(ctx, a.attention.data, s.N, s.Ha, s.Wa, s.Hs, s.Ws, true, l.up);
    map = l.up;
    h = s.Hs;
    w = s.Ws;
  }
  detail_sampler::launch_marginals(ctx, map, s.N, h, w, s.Hs, s.Ws, l.my, l.mx, a.fallback.data);
  detail_sampler::launch_grid(ctx, l.my, l.mx, s.N, s.Hs, s.Ws, s.Ho, s.Wo, a.options.grid, l.gy, l.gx);
  detail_sampler::launch_sample_separable(ctx, a.img.data, s.N, s.C, s.Hi, s.Wi, l.gy, l.gx, s.Ho, s.Wo, a.out.data);
}

}  // namespace tasn::cuda
