// tasn/core/resize.h - bilinear interpolation taps: the one implementation behind every bilinear
// resize in the project (the sampler's map upsampling and fused marginals on CPU and GPU, the
// example network's resize layer, the data loader's image resize). No Eigen, no CUDA.
#pragma once

#include <cstdint>

#include "tasn/core/common.h"

namespace tasn {

// Source position of destination index `dst` when `in` samples are resized to `out`: the two
// source indices (i1 = i0 + 1, clamped to the last one) and the weight w1 of i1 (i0 gets 1 - w1).
// C is the type the coordinate is computed in.
template <class C>
struct ResizeTap {
  std::int64_t i0, i1;
  C w1;
};

//  align_corners = true:  src = dst (in - 1) / (out - 1)   (0 when out == 1)
//  align_corners = false: src = (dst + 0.5) in / out - 0.5, negatives clamped to 0 (PyTorch's
//                         half-pixel centres)
template <class C>
TASN_HD ResizeTap<C> resize_tap(std::int64_t dst, std::int64_t in, std::int64_t out, bool align_corners) {
  C src;
  if (align_corners) {
    src = out > 1 ? static_cast<C>(dst) * static_cast<C>(in - 1) / static_cast<C>(out - 1) : C(0);
  } else {
    src = (static_cast<C>(dst) + C(0.5)) * static_cast<C>(in) / static_cast<C>(out) - C(0.5);
    if (src < C(0)) src = C(0);
  }
  std::int64_t i0 = static_cast<std::int64_t>(src);
  if (i0 > in - 1) i0 = in - 1;
  const std::int64_t i1 = i0 + 1 < in ? i0 + 1 : in - 1;
  return {i0, i1, src - static_cast<C>(i0)};
}

// The bilinear blend of the four taps v(y, x), first along x, then along y.
template <class A>
TASN_HD A bilinear_blend(A v00, A v01, A v10, A v11, A wy, A wx) {
  const A r0 = (A(1) - wx) * v00 + wx * v01;
  const A r1 = (A(1) - wx) * v10 + wx * v11;
  return (A(1) - wy) * r0 + wy * r1;
}

// Value at (y, x) of plane (h x w, row stride w) resized to (H x W), computed in Acc.
template <class Acc, class T>
TASN_HD Acc resize_at(const T* plane, std::int64_t h, std::int64_t w, std::int64_t H, std::int64_t W, std::int64_t y,
                      std::int64_t x, bool align_corners) {
  const ResizeTap<Acc> ty = resize_tap<Acc>(y, h, H, align_corners), tx = resize_tap<Acc>(x, w, W, align_corners);
  return bilinear_blend(static_cast<Acc>(plane[ty.i0 * w + tx.i0]), static_cast<Acc>(plane[ty.i0 * w + tx.i1]),
                        static_cast<Acc>(plane[ty.i1 * w + tx.i0]), static_cast<Acc>(plane[ty.i1 * w + tx.i1]), ty.w1,
                        tx.w1);
}

}  // namespace tasn
