// examples/gpu/kernels.cu - the example trainer's small CUDA kernels (declared in gpu/kernels.h).
//
// Element-wise kernels are one 64-bit grid-stride loop over a functor that applies the shared
// per-element math of nn/elementwise.h (the CPU layers call the same functions). The grid is capped
// at kMaxBlocks blocks: enough to fill any current GPU, and the loop covers larger sizes. Nothing
// here uses atomics on floats or depends on the grid size, so every result is deterministic.
#include "gpu/kernels.h"

#include <algorithm>
#include <initializer_list>
#include <string>
#include <utility>
#include <cstdint>

#include "nn/elementwise.h"
#include "tasn/core/common.h"
#include "tasn/core/cuda_check.cuh"

namespace tasn::nn::gpu {
namespace {

constexpr int kBlock = 256;
constexpr int kWarp = 32;
constexpr std::int64_t kMaxBlocks = 4096;

// Blocks for `items` work items at `per_block` items per block (items > 0).
unsigned grid_for(std::int64_t items, std::int64_t per_block = kBlock) {
  return static_cast<unsigned>(std::min((items + per_block - 1) / per_block, kMaxBlocks));
}

void check_count(std::int64_t n, const char* name, const char* op) {
  TASN_CHECK_ARG(n >= 0, op, ": ", name, " must be >= 0, got ", n);
}

// op(i) for every i in [0, n).
template <class Op>
__global__ void each_index(std::int64_t n, Op op) {
  const std::int64_t step = static_cast<std::int64_t>(blockDim.x) * gridDim.x;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += step) op(i);
}

template <class Op>
void launch_each(cudaStream_t stream, std::int64_t n, const Op& op) {
  each_index<<<grid_for(n), kBlock, 0, stream>>>(n, op);
}

// A failed launch of `op` as tasn::CudaError (TASN_CUDA_CHECK_LAUNCH for a name known at run time).
void check_launch(const char* op) {
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) ::tasn::cuda::detail::throw_cuda(e, (std::string("launch of ") + op).c_str(), __FILE__, __LINE__);
}
// The checks and launch every element-wise entry point shares: n >= 0, each pointer valid for n.
template <class Op>
void launch_checked(cudaStream_t stream, std::int64_t n, const char* op, std::initializer_list<std::pair<const void*, const char*>> ptrs,
                    const Op& f) {
  check_count(n, "n", op);
  for (const auto& [p, name] : ptrs) tasn::detail::check_pointer(p, name, n, op);
  if (n == 0) return;
  launch_each(stream, n, f);
  check_launch(op);
}

// ---- element-wise functors -----------------------------------------------------------------------

// S: the storage (float, or bf16 loaded as float and rounded once when stored: nn/bf16.h).
template <class S>
struct Relu {
  const S* x;
  S* y;
  __device__ void operator()(std::int64_t i) const { y[i] = store_value<S>(relu_value(load_value(x[i]))); }
};

template <class S, bool Accumulate>
struct ReluGrad {
  const S *y, *dy;
  S* dx;
  __device__ void operator()(std::int64_t i) const {
    const float d = relu_grad_value(load_value(y[i]), load_value(dy[i]));
    if constexpr (Accumulate) dx[i] = store_value<S>(load_value(dx[i]) + d);
    else dx[i] = store_value<S>(d);
  }
};

template <class S>
struct AddRelu {
  const S *a, *b;
  S* y;
  __device__ void operator()(std::int64_t i) const {
    y[i] = store_value<S>(add_relu_value(load_value(a[i]), load_value(b[i])));
  }
};

template <class S>
struct AddInplace {
  S* y;
  const S* x;
  __device__ void operator()(std::int64_t i) const { y[i] = store_value<S>(load_value(y[i]) + load_value(x[i])); }
};

// float <-> bf16
struct ToBf16 {
  const float* x;
  bf16* y;
  bool relu;
  __device__ void operator()(std::int64_t i) const { y[i] = float_to_bf16(relu ? relu_value(x[i]) : x[i]); }
};

struct ToFloat {
  const bf16* x;
  float* y;
  __device__ void operator()(std::int64_t i) const { y[i] = bf16_to_float(x[i]); }
};

template <bool Accumulate>
struct RoundInto {
  const float* x;
  bf16* y;
  __device__ void operator()(std::int64_t i) const {
    y[i] = float_to_bf16(Accumulate ? x[i] + bf16_to_float(y[i]) : x[i]);
  }
};

struct AddWidened {
  const bf16* x;
  float* y;
  __device__ void operator()(std::int64_t i) const { y[i] += bf16_to_float(x[i]); }
};

struct ReluGradWidened {
  const bf16 *y, *dy;
  float* d;
  bool relu;
  __device__ void operator()(std::int64_t i) const {
    const float g = bf16_to_float(dy[i]);
    d[i] = relu ? relu_grad_value(bf16_to_float(y[i]), g) : g;
  }
};

struct BiasAdd {
  std::int64_t C, P;
  const float* b;
  bf16* y;
  __device__ void operator()(std::int64_t i) const { y[i] = float_to_bf16(bf16_to_float(y[i]) + b[(i / P) % C]); }
};

struct Axpy {
  float alpha;
  const float* x;
  float* y;
  __device__ void operator()(std::int64_t i) const { y[i] += alpha * x[i]; }
};

struct Fill {
  float* p;
  float v;
  __device__ void operator()(std::int64_t i) const { p[i] = v; }
};

// ---- pooling, resize -----------------------------------------------------------------------------

// One output per index: o = (nc * Ho + oy) * Wo + ox.
struct MaxPool {
  std::int64_t H, W, Ho, Wo, kernel, stride, padding;
  const float* x;
  float* y;
  std::int64_t* argmax;
  __device__ void operator()(std::int64_t o) const {
    const std::int64_t ox = o % Wo, oy = (o / Wo) % Ho, nc = o / (Wo * Ho);
    const PoolPick<float> p = maxpool_window(x, nc, H, W, oy, ox, kernel, stride, padding);
    y[o] = p.value;
    if (argmax) argmax[o] = p.index;
  }
};

// One input element per index: i = (nc * H + iy) * W + ix.
struct MaxPoolGrad {
  std::int64_t H, W, Ho, Wo, kernel, stride, padding;
  const float* dy;
  const std::int64_t* argmax;
  float* dx;
  __device__ void operator()(std::int64_t i) const {
    const std::int64_t ix = i % W, iy = (i / W) % H, nc = i / (W * H);
    dx[i] = maxpool_grad_gather(dx[i], dy, argmax, nc, H, W, Ho, Wo, iy, ix, kernel, stride, padding);
  }
};

// One warp per plane (the warp's lanes stride the plane, then a fixed shuffle tree), in double: the
// order is fixed by the plane size alone, so the result is the same on every run and grid.
__global__ void global_avgpool_kernel(std::int64_t NC, std::int64_t P, const float* x, float* y) {
  const int lane = static_cast<int>(threadIdx.x) % kWarp;
  const std::int64_t warps_per_block = blockDim.x / kWarp;
  const std::int64_t step = warps_per_block * gridDim.x;
  for (std::int64_t nc = blockIdx.x * warps_per_block + threadIdx.x / kWarp; nc < NC; nc += step) {
    const float* plane = x + nc * P;
    double s = 0;
    for (std::int64_t p = lane; p < P; p += kWarp) s += plane[p];
    for (int off = kWarp / 2; off > 0; off /= 2) s += __shfl_down_sync(0xffffffffu, s, off);
    if (lane == 0) y[nc] = static_cast<float>(s / static_cast<double>(P));
  }
}

// db[c] += the sum over (N, P) of channel c: one warp per channel, lanes stride its N planes, then
// the fixed shuffle tree; in double (deterministic).
__global__ void bias_grad_kernel(std::int64_t N, std::int64_t C, std::int64_t P, const bf16* dy, float* db) {
  const int lane = static_cast<int>(threadIdx.x) % kWarp;
  const std::int64_t warps_per_block = blockDim.x / kWarp;
  const std::int64_t step = warps_per_block * gridDim.x;
  for (std::int64_t c = blockIdx.x * warps_per_block + threadIdx.x / kWarp; c < C; c += step) {
    double s = 0;
    for (std::int64_t n = 0; n < N; ++n) {
      const bf16* plane = dy + (n * C + c) * P;
      for (std::int64_t p = lane; p < P; p += kWarp) s += bf16_to_float(plane[p]);
    }
    for (int off = kWarp / 2; off > 0; off /= 2) s += __shfl_down_sync(0xffffffffu, s, off);
    if (lane == 0) db[c] += static_cast<float>(s);
  }
}

template <bool Accumulate>
struct AvgPoolGrad {
  std::int64_t P;
  const float* dy;
  float* dx;
  __device__ void operator()(std::int64_t i) const {
    const float v = dy[i / P] / static_cast<float>(P);  // nn::global_avgpool_grad's dy / T(P)
    if constexpr (Accumulate) dx[i] += v;
    else dx[i] = v;
  }
};

// One output per index: o = (nc * Ho + oy) * Wo + ox.
struct Resize {
  std::int64_t H, W, Ho, Wo;
  bool align_corners;
  const float* x;
  float* y;
  __device__ void operator()(std::int64_t o) const {
    const std::int64_t ox = o % Wo, oy = (o / Wo) % Ho, nc = o / (Wo * Ho);
    const ResizeTap<float> ty = layer_tap<float>(oy, H, Ho, align_corners), tx = layer_tap<float>(ox, W, Wo, align_corners);
    y[o] = resize_blend(x + nc * H * W, W, ty, tx);
  }
};

// ---- optimiser, checks ---------------------------------------------------------------------------

struct SgdMomentum {
  float *w, *v;
  const float* g;
  float lr, momentum, wd, rescale;
  __device__ void operator()(std::int64_t i) const { sgd_step(w[i], v[i], g[i], lr, momentum, wd, rescale); }
};

struct SgdPlain {
  float* w;
  const float* g;
  float lr, wd, rescale;
  __device__ void operator()(std::int64_t i) const { sgd_step(w[i], g[i], lr, wd, rescale); }
};

// Each thread scans its grid-stride share and writes the flag once: racing writers all store 1.
__global__ void nonfinite_kernel(std::int64_t n, const float* p, int* flag) {
  const std::int64_t step = static_cast<std::int64_t>(blockDim.x) * gridDim.x;
  bool bad = false;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += step)
    bad |= !is_finite_value(p[i]);
  if (bad) *flag = 1;
}

// The pooling output extents for (H, W); throws unless the window fits.
void pool_geometry(std::int64_t H, std::int64_t W, std::int64_t kernel, std::int64_t stride, std::int64_t padding,
                   std::int64_t& Ho, std::int64_t& Wo, const char* op) {
  TASN_CHECK_ARG(kernel >= 1 && stride >= 1 && padding >= 0, op,
                 ": kernel and stride must be >= 1 and padding >= 0, got kernel ", kernel, ", stride ", stride,
                 ", padding ", padding);
  Ho = pool_extent(H, kernel, stride, padding);
  Wo = pool_extent(W, kernel, stride, padding);
  TASN_CHECK_ARG(H >= 1 && W >= 1 && Ho >= 1 && Wo >= 1, op, ": input (", H, ", ", W,
                 ") is smaller than the pooling window ", kernel, " (stride ", stride, ", padding ", padding, ")");
}

}  // namespace

void relu(cudaStream_t stream, const float* x, float* y, std::int64_t n) {
  launch_checked(stream, n, "nn::gpu::relu", {{x, "x"}, {y, "y"}}, Relu<float>{x, y});
}

void relu_grad(cudaStream_t stream, const float* y, const float* dy, float* dx, std::int64_t n, bool accumulate) {
  constexpr const char* op = "nn::gpu::relu_grad";
  if (accumulate) launch_checked(stream, n, op, {{y, "y"}, {dy, "dy"}, {dx, "dx"}}, ReluGrad<float, true>{y, dy, dx});
  else launch_checked(stream, n, op, {{y, "y"}, {dy, "dy"}, {dx, "dx"}}, ReluGrad<float, false>{y, dy, dx});
}

void add_relu(cudaStream_t stream, const float* a, const float* b, float* y, std::int64_t n) {
  launch_checked(stream, n, "nn::gpu::add_relu", {{a, "a"}, {b, "b"}, {y, "y"}}, AddRelu<float>{a, b, y});
}

void add_inplace(cudaStream_t stream, float* y, const float* x, std::int64_t n) {
  launch_checked(stream, n, "nn::gpu::add_inplace", {{y, "y"}, {x, "x"}}, AddInplace<float>{y, x});
}

void axpy(cudaStream_t stream, std::int64_t n, float alpha, const float* x, float* y) {
  launch_checked(stream, n, "nn::gpu::axpy", {{x, "x"}, {y, "y"}}, Axpy{alpha, x, y});
}

void fill(cudaStream_t stream, float* p, std::int64_t n, float v) {
  launch_checked(stream, n, "nn::gpu::fill", {{p, "p"}}, Fill{p, v});
}

void maxpool2d(cudaStream_t stream, std::int64_t NC, std::int64_t H, std::int64_t W, std::int64_t kernel,
               std::int64_t stride, std::int64_t padding, const float* x, float* y, std::int64_t* argmax) {
  constexpr const char* op = "nn::gpu::maxpool2d";
  check_count(NC, "NC", op);
  std::int64_t Ho, Wo;
  pool_geometry(H, W, kernel, stride, padding, Ho, Wo, op);
  const std::int64_t in = tasn::detail::checked_mul(tasn::detail::checked_mul(NC, H, op), W, op);
  const std::int64_t out = tasn::detail::checked_mul(tasn::detail::checked_mul(NC, Ho, op), Wo, op);
  tasn::detail::check_pointer(x, "x", in, op);
  tasn::detail::check_pointer(y, "y", out, op);
  if (out == 0) return;
  launch_each(stream, out, MaxPool{H, W, Ho, Wo, kernel, stride, padding, x, y, argmax});
  TASN_CUDA_CHECK_LAUNCH("nn::gpu::maxpool2d");
}

void maxpool2d_grad(cudaStream_t stream, std::int64_t NC, std::int64_t H, std::int64_t W, std::int64_t Ho,
                    std::int64_t Wo, std::int64_t kernel, std::int64_t stride, std::int64_t padding, const float* dy,
                    const std::int64_t* argmax, float* dx) {
  constexpr const char* op = "nn::gpu::maxpool2d_grad";
  check_count(NC, "NC", op);
  std::int64_t ho, wo;
  pool_geometry(H, W, kernel, stride, padding, ho, wo, op);
  TASN_CHECK_ARG(Ho == ho && Wo == wo, op, ": the output (", Ho, ", ", Wo, ") is not the pooling of (", H, ", ", W,
                 ") with kernel ", kernel, ", stride ", stride, ", padding ", padding, ", which gives (", ho, ", ", wo,
                 ")");
  const std::int64_t in = tasn::detail::checked_mul(tasn::detail::checked_mul(NC, H, op), W, op);
  const std::int64_t out = tasn::detail::checked_mul(tasn::detail::checked_mul(NC, Ho, op), Wo, op);
  tasn::detail::check_pointer(dy, "dy", out, op);
  tasn::detail::check_pointer(argmax, "argmax", out, op);
  tasn::detail::check_pointer(dx, "dx", in, op);
  if (in == 0) return;
  launch_each(stream, in, MaxPoolGrad{H, W, Ho, Wo, kernel, stride, padding, dy, argmax, dx});
  TASN_CUDA_CHECK_LAUNCH("nn::gpu::maxpool2d_grad");
}

void global_avgpool(cudaStream_t stream, std::int64_t NC, std::int64_t P, const float* x, float* y) {
  constexpr const char* op = "nn::gpu::global_avgpool";
  check_count(NC, "NC", op);
  check_count(P, "P", op);
  tasn::detail::check_pointer(x, "x", tasn::detail::checked_mul(NC, P, op), op);
  tasn::detail::check_pointer(y, "y", NC, op);
  if (NC == 0) return;
  global_avgpool_kernel<<<grid_for(NC, kBlock / kWarp), kBlock, 0, stream>>>(NC, P, x, y);
  TASN_CUDA_CHECK_LAUNCH("nn::gpu::global_avgpool");
}

void global_avgpool_grad(cudaStream_t stream, std::int64_t NC, std::int64_t P, const float* dy, float* dx,
                         bool accumulate) {
  constexpr const char* op = "nn::gpu::global_avgpool_grad";
  check_count(NC, "NC", op);
  check_count(P, "P", op);
  const std::int64_t n = tasn::detail::checked_mul(NC, P, op);
  tasn::detail::check_pointer(dy, "dy", NC, op);
  tasn::detail::check_pointer(dx, "dx", n, op);
  if (n == 0) return;
  if (accumulate) launch_each(stream, n, AvgPoolGrad<true>{P, dy, dx});
  else launch_each(stream, n, AvgPoolGrad<false>{P, dy, dx});
  TASN_CUDA_CHECK_LAUNCH("nn::gpu::global_avgpool_grad");
}

void resize_bilinear(cudaStream_t stream, std::int64_t NC, std::int64_t H, std::int64_t W, std::int64_t Ho,
                     std::int64_t Wo, bool align_corners, const float* x, float* y) {
  constexpr const char* op = "nn::gpu::resize_bilinear";
  check_count(NC, "NC", op);
  TASN_CHECK_ARG(H >= 1 && W >= 1 && Ho >= 1 && Wo >= 1, op, ": input (", H, ", ", W, ") and output (", Ho, ", ",
                 Wo, ") sizes must be >= 1");
  const std::int64_t in = tasn::detail::checked_mul(tasn::detail::checked_mul(NC, H, op), W, op);
  const std::int64_t out = tasn::detail::checked_mul(tasn::detail::checked_mul(NC, Ho, op), Wo, op);
  tasn::detail::check_pointer(x, "x", in, op);
  tasn::detail::check_pointer(y, "y", out, op);
  if (out == 0) return;
  launch_each(stream, out, Resize{H, W, Ho, Wo, align_corners, x, y});
  TASN_CUDA_CHECK_LAUNCH("nn::gpu::resize_bilinear");
}

void sgd(cudaStream_t stream, std::int64_t n, float* w, const float* g, float* v, float lr, float momentum, float wd,
         float rescale) {
  constexpr const char* op = "nn::gpu::sgd";
  check_count(n, "n", op);
  tasn::detail::check_pointer(w, "w", n, op);
  tasn::detail::check_pointer(g, "g", n, op);
  TASN_CHECK_ARG(v != nullptr || momentum == 0.0f || n == 0, op, ": momentum is ", momentum,
                 " but there is no momentum buffer (v is null)");
  if (n == 0) return;
  if (v) launch_each(stream, n, SgdMomentum{w, v, g, lr, momentum, wd, rescale});
  else launch_each(stream, n, SgdPlain{w, g, lr, wd, rescale});
  TASN_CUDA_CHECK_LAUNCH("nn::gpu::sgd");
}

void nonfinite_any(cudaStream_t stream, const float* p, std::int64_t n, int* flag) {
  constexpr const char* op = "nn::gpu::nonfinite_any";
  check_count(n, "n", op);
  tasn::detail::check_pointer(p, "p", n, op);
  TASN_CHECK_ARG(flag != nullptr, op, ": flag is null");
  if (n == 0) return;
  nonfinite_kernel<<<grid_for(n), kBlock, 0, stream>>>(n, p, flag);
  TASN_CUDA_CHECK_LAUNCH("nn::gpu::nonfinite_any");
}

// ---- bf16 storage ---------------------------------------------------------------------------------

void relu(cudaStream_t stream, const bf16* x, bf16* y, std::int64_t n) {
  launch_checked(stream, n, "nn::gpu::relu (bf16)", {{x, "x"}, {y, "y"}}, Relu<bf16>{x, y});
}
void relu_grad(cudaStream_t stream, const bf16* y, const bf16* dy, bf16* dx, std::int64_t n, bool accumulate) {
  constexpr const char* op = "nn::gpu::relu_grad (bf16)";
  if (accumulate) launch_checked(stream, n, op, {{y, "y"}, {dy, "dy"}, {dx, "dx"}}, ReluGrad<bf16, true>{y, dy, dx});
  else launch_checked(stream, n, op, {{y, "y"}, {dy, "dy"}, {dx, "dx"}}, ReluGrad<bf16, false>{y, dy, dx});
}
void add_relu(cudaStream_t stream, const bf16* a, const bf16* b, bf16* y, std::int64_t n) {
  launch_checked(stream, n, "nn::gpu::add_relu (bf16)", {{a, "a"}, {b, "b"}, {y, "y"}}, AddRelu<bf16>{a, b, y});
}
void add_inplace(cudaStream_t stream, bf16* y, const bf16* x, std::int64_t n) {
  launch_checked(stream, n, "nn::gpu::add_inplace (bf16)", {{y, "y"}, {x, "x"}}, AddInplace<bf16>{y, x});
}
void convert(cudaStream_t stream, const float* x, bf16* y, std::int64_t n, bool relu) {
  launch_checked(stream, n, "nn::gpu::convert (float -> bf16)", {{x, "x"}, {y, "y"}}, ToBf16{x, y, relu});
}
void convert(cudaStream_t stream, const bf16* x, float* y, std::int64_t n) {
  launch_checked(stream, n, "nn::gpu::convert (bf16 -> float)", {{x, "x"}, {y, "y"}}, ToFloat{x, y});
}
void round_into(cudaStream_t stream, const float* x, bf16* y, std::int64_t n, bool accumulate) {
  constexpr const char* op = "nn::gpu::round_into";
  if (accumulate) launch_checked(stream, n, op, {{x, "x"}, {y, "y"}}, RoundInto<true>{x, y});
  else launch_checked(stream, n, op, {{x, "x"}, {y, "y"}}, RoundInto<false>{x, y});
}
void add_widened(cudaStream_t stream, const bf16* x, float* y, std::int64_t n) {
  launch_checked(stream, n, "nn::gpu::add_widened", {{x, "x"}, {y, "y"}}, AddWidened{x, y});
}
void relu_grad_widened(cudaStream_t stream, const bf16* y, const bf16* dy, float* d, std::int64_t n, bool relu) {
  launch_checked(stream, n, "nn::gpu::relu_grad_widened", {{relu ? static_cast<const void*>(y) : d, "y"}, {dy, "dy"}, {d, "d"}},
                 ReluGradWidened{y, dy, d, relu});
}
void bias_add(cudaStream_t stream, std::int64_t N, std::int64_t C, std::int64_t P, const float* b, bf16* y) {
  constexpr const char* op = "nn::gpu::bias_add (bf16)";
  TASN_CHECK_ARG(N >= 0 && C >= 1 && P >= 0, op, ": need N, P >= 0 and C >= 1, got (", N, ", ", C, ", ", P, ")");
  tasn::detail::check_pointer(b, "b", C, op);
  const std::int64_t n = tasn::detail::checked_mul(tasn::detail::checked_mul(N, C, op), P, op);
  launch_checked(stream, n, op, {{y, "y"}}, BiasAdd{C, P, b, y});
}
void bias_grad(cudaStream_t stream, std::int64_t N, std::int64_t C, std::int64_t P, const bf16* dy, float* db) {
  constexpr const char* op = "nn::gpu::bias_grad (bf16)";
  TASN_CHECK_ARG(N >= 0 && C >= 0 && P >= 0, op, ": N, C, P must be >= 0, got (", N, ", ", C, ", ", P, ")");
  tasn::detail::check_pointer(dy, "dy", tasn::detail::checked_mul(tasn::detail::checked_mul(N, C, op), P, op), op);
  tasn::detail::check_pointer(db, "db", C, op);
  if (C == 0) return;
  bias_grad_kernel<<<grid_for(C, kBlock / kWarp), kBlock, 0, stream>>>(N, C, P, dy, db);
  check_launch(op);
}

}  // namespace tasn::nn::gpu
