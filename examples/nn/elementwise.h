// examples/nn/elementwise.h - the per-element (and per-output) math of the example trainer's small
// layers and of its SGD update, shared by the CPU layers (nn/layers.h, train/optim.h) and the CUDA
// kernels (examples/gpu/kernels.cu): one definition serves both, so the CPU tests execute exactly
// what the GPU runs. No Eigen and no CUDA headers: g++ and nvcc include this alike.
#pragma once

#include <cmath>
#include <cstdint>

#include "tasn/core/common.h"
#include "tasn/core/resize.h"

namespace tasn::nn {

// NaN / finiteness tests that compile on both sides (the device has its own isnan / isfinite).
template <class T>
TASN_HD bool is_nan_value(T v) {
#if defined(__CUDA_ARCH__)
  return isnan(v);
#else
  return std::isnan(v);
#endif
}
template <class T>
TASN_HD bool is_finite_value(T v) {
#if defined(__CUDA_ARCH__)
  return isfinite(v);
#else
  return std::isfinite(v);
#endif
}

// ---- ReLU and the residual join ------------------------------------------------------------------

// max(x, 0); NaN propagates (x <= 0 is false for NaN), as in PyTorch: a diverged layer must not
// look healthy.
template <class T>
TASN_HD T relu_value(T x) {
  return x <= T(0) ? T(0) : x;
}
// The gradient dy passed where the forward output y (or its input: the same sign) was positive.
template <class T>
TASN_HD T relu_grad_value(T y, T dy) {
  return y > T(0) ? dy : T(0);
}
// max(a + b, 0): a residual block's output (branch + shortcut, then ReLU).
template <class T>
TASN_HD T add_relu_value(T a, T b) {
  return relu_value(a + b);
}

// ---- SGD (PyTorch's form, dampening 0) -------------------------------------------------------------
//
// With momentum:    v = momentum * v + (g * rescale + wd * w);  w -= lr * v
// Without (no buffer): w -= lr * (g * rescale + wd * w)   (the same numbers as momentum 0 with v = 0)
// rescale undoes a loss scale or averages accumulated gradients; the expressions are written once
// here so the CPU loop and the GPU kernel evaluate the same source expression (whether a
// multiply-add is fused is the compiler's choice on each side: nvcc fuses by default, g++ by its
// flags, so the two may differ by an ulp; the GPU tests allow for it).
template <class T>
TASN_HD void sgd_step(T& w, T& v, T g, T lr, T momentum, T wd, T rescale) {
  v = momentum * v + (g * rescale + wd * w);
  w -= lr * v;
}
template <class T>
TASN_HD void sgd_step(T& w, T g, T lr, T wd, T rescale) {
  w -= lr * (g * rescale + wd * w);
}

// ---- max pooling ---------------------------------------------------------------------------------

// Output extent of a pooling window `kernel` with `stride` and `padding` over `in` samples (may be
// < 1 when the window does not fit; the callers check).
TASN_HD std::int64_t pool_extent(std::int64_t in, std::int64_t kernel, std::int64_t stride, std::int64_t padding) {
  return (in + 2 * padding - kernel) / stride + 1;
}

template <class T>
struct PoolPick {
  T value;
  std::int64_t index;  // flat index into the whole input (NC planes of H x W); -1 for an all-padding window
};

// Max pooling output (oy, ox) of plane nc of x (NC planes of H x W): the window's largest value and
// its flat index. Padding never wins (it is skipped, not read as -inf); the first maximum in
// row-major window order wins ties; a NaN wins (the last NaN in window order), as in PyTorch.
template <class T>
TASN_HD PoolPick<T> maxpool_window(const T* x, std::int64_t nc, std::int64_t H, std::int64_t W, std::int64_t oy,
                                   std::int64_t ox, std::int64_t kernel, std::int64_t stride, std::int64_t padding) {
  T best = -static_cast<T>(INFINITY);
  std::int64_t at = -1;
  const std::int64_t y0 = oy * stride - padding, x0 = ox * stride - padding;
  // the window clipped to the plane: the same elements in the same order as skipping the padding
  const std::int64_t ky0 = y0 < 0 ? -y0 : 0, ky1 = H - y0 < kernel ? H - y0 : kernel;
  const std::int64_t kx0 = x0 < 0 ? -x0 : 0, kx1 = W - x0 < kernel ? W - x0 : kernel;
  for (std::int64_t ky = ky0; ky < ky1; ++ky)
    for (std::int64_t kx = kx0; kx < kx1; ++kx) {
      const std::int64_t i = (nc * H + y0 + ky) * W + x0 + kx;
      const T v = x[i];
      if (v > best || at < 0 || is_nan_value(v)) {
        best = v;
        at = i;
      }
    }
  return {best, at};
}

// Pooling outputs [lo, hi) along one axis whose window contains input position i (empty when hi <= lo).
TASN_HD void pool_windows_containing(std::int64_t i, std::int64_t out, std::int64_t kernel, std::int64_t stride,
                                     std::int64_t padding, std::int64_t& lo, std::int64_t& hi) {
  // window o covers [o * stride - padding, o * stride - padding + kernel - 1]
  const std::int64_t first = i + padding - kernel + 1;  // o * stride >= first
  lo = first <= 0 ? 0 : (first + stride - 1) / stride;
  hi = (i + padding) / stride + 1;  // o * stride <= i + padding (i + padding >= 0)
  if (hi > out) hi = out;
}

// The gradient routed to input element (iy, ix) of plane nc, added to its current value dx_i: the dy
// of every output whose argmax is this element, in increasing output order. That is the order (and
// the rounding) of the CPU's scatter (nn::maxpool2d_grad: dx[argmax[o]] += dy[o] for o in order),
// computed as a gather so a GPU thread owns each input element (deterministic, no atomics).
template <class T>
TASN_HD T maxpool_grad_gather(T dx_i, const T* dy, const std::int64_t* argmax, std::int64_t nc, std::int64_t H,
                              std::int64_t W, std::int64_t Ho, std::int64_t Wo, std::int64_t iy, std::int64_t ix,
                              std::int64_t kernel, std::int64_t stride, std::int64_t padding) {
  std::int64_t oy0, oy1, ox0, ox1;
  pool_windows_containing(iy, Ho, kernel, stride, padding, oy0, oy1);
  pool_windows_containing(ix, Wo, kernel, stride, padding, ox0, ox1);
  const std::int64_t i = (nc * H + iy) * W + ix;
  T acc = dx_i;
  for (std::int64_t oy = oy0; oy < oy1; ++oy)
    for (std::int64_t ox = ox0; ox < ox1; ++ox) {
      const std::int64_t o = (nc * Ho + oy) * Wo + ox;
      if (argmax[o] == i) acc += dy[o];
    }
  return acc;
}

// ---- bilinear resize -----------------------------------------------------------------------------

// The resize layer's tap: source position in double (tasn::resize_tap, the library's one bilinear
// implementation), the weight in T.
template <class T>
TASN_HD ResizeTap<T> layer_tap(std::int64_t dst, std::int64_t in, std::int64_t out, bool align_corners) {
  const ResizeTap<double> t = tasn::resize_tap<double>(dst, in, out, align_corners);
  return {t.i0, t.i1, static_cast<T>(t.w1)};
}

// The resized value at taps (ty, tx) of one plane (row stride W): tasn::bilinear_blend in T.
template <class T>
TASN_HD T resize_blend(const T* plane, std::int64_t W, const ResizeTap<T>& ty, const ResizeTap<T>& tx) {
  return tasn::bilinear_blend(plane[ty.i0 * W + tx.i0], plane[ty.i0 * W + tx.i1], plane[ty.i1 * W + tx.i0],
                              plane[ty.i1 * W + tx.i1], ty.w1, tx.w1);
}

}  // namespace tasn::nn
