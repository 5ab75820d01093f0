// tasn/attention_sampler.cuh - attention maps, marginals, inverse-CDF grids and bilinear sampling,
// CUDA path. Images in float, __half or __nv_bfloat16 storage; maps, marginals and grids in float;
// all math in float (grid construction in double). SPEC sections 2 and 3, docs/attention_sampler.md.
//
// Everything stays on the device and is enqueued on ctx.stream: no host copies, no
// synchronisation. Per-sample work (channel selection, marginals, the grid) runs one block per
// sample with block-wide CUB reductions and scans and a parallel binary search per output
// coordinate; sampling runs one thread per output element. The separable backward is a gather
// through per-sample transposed tap lists: no atomics, bit-identical run to run.
// The per-element math is tasn/attention_sampler_common.h, the functions the CPU path runs.
#pragma once

#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "tasn/attention_sampler_common.h"
#include "tasn/core/context.cuh"
#include "tasn/core/cuda_check.cuh"
#include "tasn/core/dtype.cuh"
#include "tasn/core/row_softmax.cuh"

namespace tasn::cuda {

namespace sampler_kernels {

constexpr int kBlock = 256;
// Dynamic shared memory the per-sample kernels may ask for: the default 48 KiB per block less
// room for their static shared memory (CUB temp storage etc., 2.5 KiB for the grid kernel).
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
                         const std::int64_t* __restrict__ channels, std::uint64_t seed, float* __restrict__ out,
                         std::int64_t* __restrict__ chosen) {
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
    for (std::int64_t c = threadIdx.x; c < C; c += kBlock) {
      unsigned char k = 1;
      for (std::int64_t e = 0; e < c && k; ++e) k = sums[e] != sums[c];
      keep[c] = k;
    }
    __syncthreads();
  }
  if (mode == 1) {
    if (threadIdx.x == 0) {
      std::int64_t c = 0;
      if (channels) {
        c = channels[n];  // device data: an out-of-range index gives a NaN map and chosen = -1
      } else {
        std::int64_t count = 0;
        for (std::int64_t e = 0; e < C; ++e) count += keep[e];
        std::int64_t r = sampler::pick_index(seed, n, count);
        for (c = 0; c < C; ++c)
          if (keep[c] && r-- == 0) break;
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

// ---- SPEC 3a: fused marginals, one block per sample ------------------------------------------------

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

// ---- SPEC 3b, 3c: the grid, one block per sample -----------------------------------------------------

// Inclusive scan of v[0..S) in place (blocks of kBlock with a running carry).
__device__ inline void block_inclusive_scan(double* v, std::int64_t S) {
  using Scan = cub::BlockScan<double, kBlock>;
  __shared__ typename Scan::TempStorage temp;
  __shared__ double carry;
  if (threadIdx.x == 0) carry = 0.0;
  __syncthreads();
  for (std::int64_t base = 0; base < S; base += kBlock) {
    const std::int64_t i = base + threadIdx.x;
    double x = i < S ? v[i] : 0.0, total;
    Scan(temp).InclusiveSum(x, x, total);
    if (i < S) v[i] = x + carry;
    __syncthreads();
    if (threadIdx.x == 0) carry += total;
    __syncthreads();
  }
}

__device__ inline double block_max(double v) {
  using Reduce = cub::BlockReduce<double, kBlock>;
  __shared__ typename Reduce::TempStorage temp;
  __shared__ double out;
  struct MaxOp {
    __device__ double operator()(double a, double b) const { return a > b ? a : b; }
  };
  v = Reduce(temp).Reduce(v, MaxOp{});
  if (threadIdx.x == 0) out = v;
  __syncthreads();
  const double r = out;
  __syncthreads();
  return r;
}

__device__ inline double block_sum(double v) {
  using Reduce = cub::BlockReduce<double, kBlock>;
  __shared__ typename Reduce::TempStorage temp;
  __shared__ double out;
  v = Reduce(temp).Sum(v);
  if (threadIdx.x == 0) out = v;
  __syncthreads();
  const double r = out;
  __syncthreads();
  return r;
}

// When the weights t[0, len) sum to infinity: pre = their maximum and mass = the sum of t / pre
// (the CPU's normalise_marginals). Otherwise nothing changes. Every thread of the block calls it.
__device__ inline void rescale_overflowed_mass(const double* t, std::int64_t len, double& mass, double& pre) {
  if (isfinite(mass)) return;  // mass is the block's sum: the branch is uniform
  double a = 0.0;
  for (std::int64_t i = threadIdx.x; i < len; i += kBlock) a = fmax(a, t[i]);
  pre = block_max(a);
  a = 0.0;
  for (std::int64_t i = threadIdx.x; i < len; i += kBlock) a += t[i] / pre;
  mass = block_sum(a);
}

static __global__ void __launch_bounds__(kBlock)
    grid_kernel(const float* __restrict__ my, const float* __restrict__ mx, std::int64_t Hs, std::int64_t Ws,
                std::int64_t Ho, std::int64_t Wo, double dense, int iters, int official,
                float* __restrict__ gy, float* __restrict__ gx) {
  extern __shared__ double sm[];
  double* ty = sm;                  // limited marginals, Hs
  double* tx = sm + Hs;             // Ws
  double* cdf_y = sm + Hs + Ws;     // knot CDFs
  double* cdf_x = cdf_y + Hs;
  __shared__ int bad;
  const std::int64_t n = blockIdx.x;
  if (threadIdx.x == 0) bad = 0;
  __syncthreads();
  // Normalisation (sampler::normalised_marginal, as the CPU's normalise_marginals): weights
  // max(m, 0), sum in double, pre-divided by the maximum if that sum overflows (float marginals
  // never make it overflow; kept for parity). A non-finite value or no positive mass on either
  // axis: both axes uniform (the identity grid) - the kernel cannot throw, and NaN must not reach
  // the grid.
  int local_bad = 0;
  double sum_y = 0.0, sum_x = 0.0;
  for (std::int64_t i = threadIdx.x; i < Hs; i += kBlock) {
    const double v = double(my[n * Hs + i]);
    local_bad |= !isfinite(v);
    sum_y += (ty[i] = sampler::marginal_weight(v));
  }
  for (std::int64_t i = threadIdx.x; i < Ws; i += kBlock) {
    const double v = double(mx[n * Ws + i]);
    local_bad |= !isfinite(v);
    sum_x += (tx[i] = sampler::marginal_weight(v));
  }
  if (local_bad) atomicOr(&bad, 1);
  double mass_y = block_sum(sum_y), mass_x = block_sum(sum_x);  // block_sum synchronises: `bad` is final
  double pre_y = 1.0, pre_x = 1.0;
  if (!bad) {  // uniform across the block
    rescale_overflowed_mass(ty, Hs, mass_y, pre_y);
    rescale_overflowed_mass(tx, Ws, mass_x, pre_x);
  }
  const bool fallback = bad || !sampler::marginal_usable(mass_y) || !sampler::marginal_usable(mass_x);
  for (std::int64_t i = threadIdx.x; i < Hs; i += kBlock)
    ty[i] = sampler::normalised_marginal(ty[i], pre_y, mass_y, Hs, fallback) * double(Ho);
  for (std::int64_t i = threadIdx.x; i < Ws; i += kBlock)
    tx[i] = sampler::normalised_marginal(tx[i], pre_x, mass_x, Ws, fallback) * double(Wo);
  __syncthreads();
  const double t0y = dense * double(Ho) / double(Hs), t0x = dense * double(Wo) / double(Ws);
  for (int it = 0; it < iters; ++it) {
    double a = 0.0, b = 0.0;
    for (std::int64_t i = threadIdx.x; i < Hs; i += kBlock) a = fmax(a, ty[i]);
    for (std::int64_t i = threadIdx.x; i < Ws; i += kBlock) b = fmax(b, tx[i]);
    const double max_y = block_max(a), max_x = block_max(b);
    const double cy = sampler::limit_threshold(max_y, max_x, t0y, it);
    const double cx = sampler::limit_threshold(max_y, max_x, t0x, it);
    a = 0.0;
    b = 0.0;
    for (std::int64_t i = threadIdx.x; i < Hs; i += kBlock) a += (ty[i] = fmin(ty[i], cy));
    for (std::int64_t i = threadIdx.x; i < Ws; i += kBlock) b += (tx[i] = fmin(tx[i], cx));
    const double add_y = (double(Ho) - block_sum(a)) / double(Hs), add_x = (double(Wo) - block_sum(b)) / double(Ws);
    for (std::int64_t i = threadIdx.x; i < Hs; i += kBlock) ty[i] += add_y;
    for (std::int64_t i = threadIdx.x; i < Ws; i += kBlock) tx[i] += add_x;
    __syncthreads();
  }
  // Knot CDF of each axis (terms into cy / cx, then an inclusive block scan), then one thread per
  // output coordinate searches it.
  for (int axis = 0; axis < 2; ++axis) {
    const double* t = axis == 0 ? ty : tx;
    double* c = axis == 0 ? cdf_y : cdf_x;
    const std::int64_t S = axis == 0 ? Hs : Ws, O = axis == 0 ? Ho : Wo;
    float* g = axis == 0 ? gy + n * Ho : gx + n * Wo;
    for (std::int64_t i = threadIdx.x; i < S; i += kBlock)
      c[i] = official ? (i == 0 ? 1.0 : t[i]) : (i == 0 ? 0.0 : 0.5 * (t[i - 1] + t[i]));
    __syncthreads();
    block_inclusive_scan(c, S);
    for (std::int64_t i = threadIdx.x; i < O; i += kBlock)
      g[i] = static_cast<float>(official ? sampler::official_grid_value(c, S, O, i)
                                         : sampler::exact_grid_value(c, S, O, i));
    __syncthreads();
  }
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

// Transposed taps of one axis of one sample: for source index s, the outputs o (ascending) that
// read it and their weights. One thread per (sample, axis); O(O + S) serial work each.
struct TapLists {
  int* offsets;  // (S + 1) per sample
  int* outputs;  // 2 O per sample
  float* weights;
};

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

namespace detail_sampler {

template <class T>
void check_image_type() {
  static_assert(is_storage_type_v<T>, "T must be float, __half or __nv_bfloat16");
}

// The per-sample kernels run one block per sample: N must fit the grid's x dimension.
inline void check_blocks(const char* op, std::int64_t N) {
  TASN_CHECK_ARG(N <= std::int64_t(INT32_MAX), op, ": N = ", N, " samples exceed the ", INT32_MAX,
                 " blocks of a one-block-per-sample kernel");
}

}  // namespace detail_sampler

// ---- SPEC 2 ---------------------------------------------------------------------------------------

namespace detail_sampler {

// Checks and launches the one-block-per-sample map kernel (mode as attention_map_kernel).
template <class T>
void launch_attention_map(const char* op, const T* m, std::int64_t N, std::int64_t C, std::int64_t h, std::int64_t w,
                          int mode, bool distinct, const std::int64_t* channels, std::uint64_t seed, float* out,
                          std::int64_t* chosen, const Context& ctx) {
  check_image_type<T>();
  sampler::check_map_args(op, N, C, h, w);
  check_blocks(op, N);
  tasn::detail::check_pointer(m, "m", N * C * h * w, op);
  tasn::detail::check_pointer(out, "out", N * h * w, op);
  const std::size_t shm = static_cast<std::size_t>(C) * (sizeof(double) + 1);
  TASN_CHECK_ARG(shm <= sampler_kernels::kMaxSharedBytes, op, ": C = ", C, " channels exceed the ",
                 sampler_kernels::kMaxSharedBytes / 9, " the kernel holds in shared memory");
  sampler_kernels::attention_map_kernel<T><<<static_cast<unsigned>(N), sampler_kernels::kBlock, shm, ctx.stream>>>(
      m, C, h * w, mode, distinct, channels, seed, out, chosen);
  TASN_CUDA_CHECK_LAUNCH("attention_map_kernel");
}

}  // namespace detail_sampler

// out (N, h, w) float: channel sum of m (N, C, h, w) (distinct: equal-sum channels counted once).
template <class T>
void structure_map(const T* m, std::int64_t N, std::int64_t C, std::int64_t h, std::int64_t w, bool distinct,
                   float* out, const Context& ctx) {
  detail_sampler::launch_attention_map("cuda::structure_map", m, N, C, h, w, 0, distinct, nullptr, 0, out, nullptr,
                                       ctx);
}

// Detail map, as the CPU detail_map: channels (device, optional) or the seeded pick among the
// distinct channels in training, the plain sum in evaluation; chosen (device, optional).
template <class T>
void detail_map(const T* m, std::int64_t N, std::int64_t C, std::int64_t h, std::int64_t w, bool training,
                const std::int64_t* channels, std::uint64_t seed, float* out, std::int64_t* chosen,
                const Context& ctx) {
  detail_sampler::launch_attention_map("cuda::detail_map", m, N, C, h, w, training ? 1 : 2, false, channels, seed,
                                       out, chosen, ctx);
}

inline void upsample_bilinear(const float* in, std::int64_t N, std::int64_t h, std::int64_t w, std::int64_t H,
                              std::int64_t W, bool squared, float* out, const Context& ctx) {
  constexpr const char* op = "cuda::upsample_bilinear";
  sampler::check_upsample_args(op, N, h, w, H, W);
  tasn::detail::check_pointer(in, "in", N * h * w, op);
  tasn::detail::check_pointer(out, "out", N * H * W, op);
  sampler_kernels::upsample_kernel<<<sampler_kernels::blocks_for(N * H * W), sampler_kernels::kBlock, 0, ctx.stream>>>(
      in, N, h, w, H, W, squared, out);
  TASN_CUDA_CHECK_LAUNCH("upsample_kernel");
}

// ---- SPEC 3a, 3b, 3c --------------------------------------------------------------------------------

// Fused marginals of map (N, h, w) upsampled to (Hs, Ws); as the CPU attention_marginals.
inline void attention_marginals(const float* map, std::int64_t N, std::int64_t h, std::int64_t w, std::int64_t Hs,
                                std::int64_t Ws, float* my, float* mx, unsigned char* fallback,
                                const Context& ctx) {
  constexpr const char* op = "cuda::attention_marginals";
  sampler::check_marginal_args(op, N, h, w, Hs, Ws);
  detail_sampler::check_blocks(op, N);
  tasn::detail::check_pointer(map, "map", N * h * w, op);
  tasn::detail::check_pointer(my, "my", N * Hs, op);
  tasn::detail::check_pointer(mx, "mx", N * Ws, op);
  sampler_kernels::marginals_kernel<<<static_cast<unsigned>(N), sampler_kernels::kBlock, 0, ctx.stream>>>(
      map, h, w, Hs, Ws, my, mx, fallback);
  TASN_CUDA_CHECK_LAUNCH("marginals_kernel");
}

// Separable grid gy (N, Ho), gx (N, Wo) from marginals; as the CPU sampling_grid (marginals
// normalised per sample), except that a sample with a non-finite marginal value gets the identity
// grid (the CPU refuses such marginals; the device data cannot be checked without a round trip).
inline void sampling_grid(const float* my, const float* mx, std::int64_t N, std::int64_t Hs, std::int64_t Ws,
                          const GridOptions& opt, float* gy, float* gx, const Context& ctx) {
  constexpr const char* op = "cuda::sampling_grid";
  sampler::check_grid_args(op, N, Hs, Ws, opt);
  detail_sampler::check_blocks(op, N);
  tasn::detail::check_pointer(my, "my", N * Hs, op);
  tasn::detail::check_pointer(mx, "mx", N * Ws, op);
  tasn::detail::check_pointer(gy, "gy", N * opt.out_h, op);
  tasn::detail::check_pointer(gx, "gx", N * opt.out_w, op);
  const std::size_t shm = 2 * static_cast<std::size_t>(Hs + Ws) * sizeof(double);
  TASN_CHECK_ARG(shm <= sampler_kernels::kMaxSharedBytes, op, ": Hs + Ws = ", Hs + Ws,
                 " exceeds the ", sampler_kernels::kMaxSharedBytes / (2 * sizeof(double)),
                 " marginal entries the kernel holds in shared memory");
  sampler_kernels::grid_kernel<<<static_cast<unsigned>(N), sampler_kernels::kBlock, shm, ctx.stream>>>(
      my, mx, Hs, Ws, opt.out_h, opt.out_w, opt.dense, opt.iters, opt.mode == GridMode::Official ? 1 : 0, gy, gx);
  TASN_CUDA_CHECK_LAUNCH("grid_kernel");
}

// ---- SPEC 3d ------------------------------------------------------------------------------------------

template <class T>
void sample_separable(const T* img, std::int64_t N, std::int64_t C, std::int64_t Hi, std::int64_t Wi,
                      const float* gy, const float* gx, std::int64_t Ho, std::int64_t Wo, T* out,
                      const Context& ctx) {
  constexpr const char* op = "cuda::sample_separable";
  detail_sampler::check_image_type<T>();
  sampler::check_sample_args(op, sampler::SampleCall::SeparableForward, N, C, Hi, Wi, Ho, Wo);
  tasn::detail::check_pointer(img, "img", N * C * Hi * Wi, op);
  tasn::detail::check_pointer(gy, "gy", N * Ho, op);
  tasn::detail::check_pointer(gx, "gx", N * Wo, op);
  tasn::detail::check_pointer(out, "out", N * C * Ho * Wo, op);
  sampler_kernels::sample_separable_kernel<T>
      <<<sampler_kernels::blocks_for(N * C * Ho * Wo), sampler_kernels::kBlock, 0, ctx.stream>>>(img, N, C, Hi, Wi, gy, gx,
                                                                                            Ho, Wo, out);
  TASN_CUDA_CHECK_LAUNCH("sample_separable_kernel");
}

namespace detail_sampler {
struct BackwardLayout {
  sampler_kernels::TapLists x, y;
  float* rows;
};
inline BackwardLayout backward_layout(detail::WorkspaceCarver& ws, std::int64_t N, std::int64_t C, std::int64_t Hi,
                                      std::int64_t Wi, std::int64_t Ho, std::int64_t Wo) {
  BackwardLayout l{};
  l.x = {ws.take<int>(N * (Wi + 1)), ws.take<int>(N * 2 * Wo), ws.take<float>(N * 2 * Wo)};
  l.y = {ws.take<int>(N * (Hi + 1)), ws.take<int>(N * 2 * Ho), ws.take<float>(N * 2 * Ho)};
  l.rows = ws.take<float>(N * C * Ho * Wi);
  return l;
}
}  // namespace detail_sampler

inline std::size_t sample_separable_backward_workspace_bytes(std::int64_t N, std::int64_t C, std::int64_t Hi,
                                                             std::int64_t Wi, std::int64_t Ho, std::int64_t Wo) {
  sampler::check_sample_args("cuda::sample_separable_backward_workspace_bytes", sampler::SampleCall::SeparableBackward, N,
                             C, Hi, Wi, Ho, Wo);
  detail::WorkspaceCarver ws;
  detail_sampler::backward_layout(ws, N, C, Hi, Wi, Ho, Wo);
  return ws.bytes();
}

// dimg = transpose of sample_separable applied to dout; deterministic (gather, no atomics).
template <class T>
void sample_separable_backward(const T* dout, std::int64_t N, std::int64_t C, std::int64_t Hi, std::int64_t Wi,
                               const float* gy, const float* gx, std::int64_t Ho, std::int64_t Wo, T* dimg,
                               void* workspace, std::size_t workspace_bytes, const Context& ctx) {
  constexpr const char* op = "cuda::sample_separable_backward";
  detail_sampler::check_image_type<T>();
  sampler::check_sample_args(op, sampler::SampleCall::SeparableBackward, N, C, Hi, Wi, Ho, Wo);
  TASN_CHECK_ARG(Wo < INT32_MAX / 2 && Ho < INT32_MAX / 2, op, ": output sizes (", Ho, ", ", Wo,
                 ") too large for 32-bit tap lists (each must be below ", INT32_MAX / 2, ")");
  tasn::detail::check_pointer(dout, "dout", N * C * Ho * Wo, op);
  tasn::detail::check_pointer(gy, "gy", N * Ho, op);
  tasn::detail::check_pointer(gx, "gx", N * Wo, op);
  tasn::detail::check_pointer(dimg, "dimg", N * C * Hi * Wi, op);
  detail::check_workspace(workspace, workspace_bytes, sample_separable_backward_workspace_bytes(N, C, Hi, Wi, Ho, Wo), op);
  detail::WorkspaceCarver ws(workspace);
  const auto l = detail_sampler::backward_layout(ws, N, C, Hi, Wi, Ho, Wo);
  namespace k = sampler_kernels;
  k::tap_lists_kernel<<<k::blocks_for(N, 64), 64, 0, ctx.stream>>>(gx, N, Wo, Wi, l.x);
  k::tap_lists_kernel<<<k::blocks_for(N, 64), 64, 0, ctx.stream>>>(gy, N, Ho, Hi, l.y);
  TASN_CUDA_CHECK_LAUNCH("tap_lists_kernel");
  k::backward_x_kernel<T><<<k::blocks_for(N * C * Ho * Wi), k::kBlock, 0, ctx.stream>>>(dout, N, C, Ho, Wo, Wi, l.x, l.rows);
  TASN_CUDA_CHECK_LAUNCH("backward_x_kernel");
  k::backward_y_kernel<T><<<k::blocks_for(N * C * Hi * Wi), k::kBlock, 0, ctx.stream>>>(l.rows, N, C, Ho, Hi, Wi, l.y, dimg);
  TASN_CUDA_CHECK_LAUNCH("backward_y_kernel");
}

// General grid (N, Ho, Wo, 2) of (x, y), float: out = grid_sample(img, grid, bilinear, zeros, align_corners).
template <class T>
void sample_grid(const T* img, std::int64_t N, std::int64_t C, std::int64_t Hi, std::int64_t Wi, const float* grid,
                 std::int64_t Ho, std::int64_t Wo, T* out, const Context& ctx) {
  constexpr const char* op = "cuda::sample_grid";
  detail_sampler::check_image_type<T>();
  sampler::check_sample_args(op, sampler::SampleCall::GridForward, N, C, Hi, Wi, Ho, Wo);
  tasn::detail::check_pointer(img, "img", N * C * Hi * Wi, op);
  tasn::detail::check_pointer(grid, "grid", N * Ho * Wo * 2, op);
  tasn::detail::check_pointer(out, "out", N * C * Ho * Wo, op);
  sampler_kernels::sample_grid_kernel<T>
      <<<sampler_kernels::blocks_for(N * C * Ho * Wo), sampler_kernels::kBlock, 0, ctx.stream>>>(img, N, C, Hi, Wi, grid,
                                                                                            Ho, Wo, out);
  TASN_CUDA_CHECK_LAUNCH("sample_grid_kernel");
}

inline std::size_t sample_grid_backward_workspace_bytes(std::int64_t N, std::int64_t C, std::int64_t Hi,
                                                        std::int64_t Wi, bool image_is_float) {
  sampler::checked_elems("cuda::sample_grid_backward_workspace_bytes", "img", {N, C, Hi, Wi});
  detail::WorkspaceCarver ws;
  if (!image_is_float) ws.take<float>(N * C * Hi * Wi);
  return ws.bytes();
}

// Backward of sample_grid: dimg (optional; float atomics, so not bit-reproducible) and dgrid
// (optional, float (N, Ho, Wo, 2)).
template <class T>
void sample_grid_backward(const T* img, const float* grid, const T* dout, std::int64_t N, std::int64_t C,
                          std::int64_t Hi, std::int64_t Wi, std::int64_t Ho, std::int64_t Wo, T* dimg, float* dgrid,
                          void* workspace, std::size_t workspace_bytes, const Context& ctx) {
  constexpr const char* op = "cuda::sample_grid_backward";
  detail_sampler::check_image_type<T>();
  sampler::check_sample_args(op, sampler::SampleCall::GridBackward, N, C, Hi, Wi, Ho, Wo);
  tasn::detail::check_pointer(img, "img", dgrid ? N * C * Hi * Wi : 0, op);
  tasn::detail::check_pointer(grid, "grid", N * Ho * Wo * 2, op);
  tasn::detail::check_pointer(dout, "dout", N * C * Ho * Wo, op);
  constexpr bool is_float = std::is_same_v<T, float>;
  detail::check_workspace(workspace, workspace_bytes,
                          dimg ? sample_grid_backward_workspace_bytes(N, C, Hi, Wi, is_float) : 0, op);
  float* acc = nullptr;
  if (dimg) {
    detail::WorkspaceCarver ws(workspace);
    if constexpr (is_float) acc = dimg;
    else acc = ws.take<float>(N * C * Hi * Wi);
    TASN_CUDA_CHECK(cudaMemsetAsync(acc, 0, sizeof(float) * N * C * Hi * Wi, ctx.stream));
  }
  namespace k = sampler_kernels;
  k::sample_grid_backward_kernel<T><<<k::blocks_for(N * Ho * Wo), k::kBlock, 0, ctx.stream>>>(
      img, grid, dout, N, C, Hi, Wi, Ho, Wo, acc, dgrid);
  TASN_CUDA_CHECK_LAUNCH("sample_grid_backward_kernel");
  if constexpr (!is_float) {
    if (dimg) {
      k::cast_kernel<T><<<k::blocks_for(N * C * Hi * Wi), k::kBlock, 0, ctx.stream>>>(acc, N * C * Hi * Wi, dimg);
      TASN_CUDA_CHECK_LAUNCH("cast_kernel");
    }
  }
}

// ---- convenience ----------------------------------------------------------------------------------------

inline std::size_t attention_sample_workspace_bytes(std::int64_t N, std::int64_t Hi, std::int64_t Wi,
                                                    const AttentionSampleOptions& opt) {
  sampler::check_attention_sample_buffers("cuda::attention_sample_workspace_bytes", N, Hi, Wi, opt);
  const std::int64_t Hs = opt.marginal_h(Hi), Ws = opt.marginal_w(Wi);
  detail::WorkspaceCarver ws;
  if (opt.squared) ws.take<float>(N * Hs * Ws);
  ws.take<float>(N * Hs);
  ws.take<float>(N * Ws);
  ws.take<float>(N * opt.grid.out_h);
  ws.take<float>(N * opt.grid.out_w);
  return ws.bytes();
}

// Attention map (N, Ha, Wa, float) + image (N, C, Hi, Wi) -> sampled image (N, C, Ho, Wo); the
// grid is also written to gy / gx when given; fallback (N) as in attention_marginals.
template <class T>
void attention_sample(const T* img, std::int64_t N, std::int64_t C, std::int64_t Hi, std::int64_t Wi,
                      const float* attention, std::int64_t Ha, std::int64_t Wa, const AttentionSampleOptions& opt,
                      T* out, float* gy, float* gx, unsigned char* fallback, void* workspace,
                      std::size_t workspace_bytes, const Context& ctx) {
  constexpr const char* op = "cuda::attention_sample";
  detail_sampler::check_image_type<T>();
  sampler::check_attention_sample_args(op, N, C, Hi, Wi, Ha, Wa, opt);
  detail_sampler::check_blocks(op, N);
  tasn::detail::check_pointer(img, "img", N * C * Hi * Wi, op);
  tasn::detail::check_pointer(attention, "attention", N * Ha * Wa, op);
  tasn::detail::check_pointer(out, "out", N * C * opt.grid.out_h * opt.grid.out_w, op);
  detail::check_workspace(workspace, workspace_bytes, attention_sample_workspace_bytes(N, Hi, Wi, opt), op);
  const std::int64_t Hs = opt.marginal_h(Hi), Ws = opt.marginal_w(Wi);
  detail::WorkspaceCarver ws(workspace);
  const float* a = attention;
  std::int64_t h = Ha, w = Wa;
  if (opt.squared) {
    float* up = ws.take<float>(N * Hs * Ws);
    upsample_bilinear(attention, N, Ha, Wa, Hs, Ws, true, up, ctx);
    a = up;
    h = Hs;
    w = Ws;
  }
  float* my = ws.take<float>(N * Hs);
  float* mx = ws.take<float>(N * Ws);
  float* gy_ws = ws.take<float>(N * opt.grid.out_h);
  float* gx_ws = ws.take<float>(N * opt.grid.out_w);
  if (!gy) gy = gy_ws;
  if (!gx) gx = gx_ws;
  attention_marginals(a, N, h, w, Hs, Ws, my, mx, fallback, ctx);
  sampling_grid(my, mx, N, Hs, Ws, opt.grid, gy, gx, ctx);
  sample_separable(img, N, C, Hi, Wi, gy, gx, opt.grid.out_h, opt.grid.out_w, out, ctx);
}

}  // namespace tasn::cuda
