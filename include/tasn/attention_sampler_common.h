// tasn/attention_sampler_common.h - attention maps, marginals, the inverse-CDF grid and bilinear
// sampling: options, argument checks and the per-element / per-sample math shared by the CPU path
// (tasn/attention_sampler.h) and the CUDA path (tasn/attention_sampler.cuh). SPEC sections 2, 3.
// No Eigen, no CUDA.
#pragma once

#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <sstream>
#include <string>

#include "tasn/core/common.h"
#include "tasn/core/tensor.h"
#include "tasn/core/random.h"
#include "tasn/core/resize.h"
#include "tasn/core/softmax_math.h"

namespace tasn {

enum class GridMode {
  Exact,     // default: inverse of the piecewise-linear CDF, endpoints exactly -1 and +1
  Official,  // the MXNet AttSampler grid (c[0] = 1, step c[S-1]/O), may leave [-1, 1] slightly
};

inline const char* to_string(GridMode m) { return m == GridMode::Exact ? "exact" : "official"; }

// The grid of SPEC 3b, 3c. The output size (Ho, Wo) is that of the gy / gx (or out) views.
struct GridOptions {
  double dense = 4.0;              // largest magnification the limit allows, finite and > 0
  int iters = 5;                   // magnification-limit iterations, >= 0
  GridMode mode = GridMode::Exact;
  // Refuse NaN/Inf marginals. With false a sample with a non-finite marginal gets the identity
  // grid (both backends).
  bool check_finite = true;

  void validate(const char* op) const {
    TASN_CHECK_ARG(std::isfinite(dense) && dense > 0.0, op, ": dense must be finite and > 0, got ", dense);
    TASN_CHECK_ARG(iters >= 0, op, ": iters must be >= 0, got ", iters);
  }
};

struct StructureMapOptions {
  bool distinct = false;     // channels whose spatial sums equal an earlier channel's count once
  bool check_finite = true;  // refuse NaN/Inf in m (false: they reach the map)
};

struct DetailMapOptions {
  bool training = true;      // one channel per sample (channels, or the seeded pick); false: the plain sum
  std::uint64_t seed = 0;    // the pick when no channels are given (sampler::pick_index)
  // The index of this batch's first sample in a larger batch: sample n picks as sample
  // first_sample + n would (a batch split over data-parallel ranks picks what the whole would).
  std::int64_t first_sample = 0;
  bool check_finite = true;  // refuse NaN/Inf in m
};

struct UpsampleOptions {
  bool squared = false;      // square after upsampling (the official structure map)
  bool check_finite = true;  // refuse NaN/Inf in the input map
};

struct MarginalsOptions {
  // Refuse NaN/Inf in the map. With false a sample whose (upsampled) map holds one falls back to
  // the uniform marginals (fallback[n] = 1), on both backends.
  bool check_finite = true;
};

struct SampleOptions {
  // Refuse NaN/Inf in the image and the grid (and dout in the backward passes). With false a
  // non-finite grid coordinate gives NaN outputs, as torch.nn.functional.grid_sample.
  bool check_finite = true;
};

// attention_sample: marginals of the attention map (upsampled to (upsample_h, upsample_w), 0: the
// image size), the grid, and separable sampling to the size of `out`.
struct AttentionSampleOptions {
  GridOptions grid;                             // dense, iters, mode (grid.check_finite is not used)
  std::int64_t upsample_h = 0, upsample_w = 0;  // marginals of the map upsampled to this size (0: image size)
  bool squared = false;                         // square the upsampled map first (official structure map)
  bool check_finite = true;                     // refuse NaN/Inf in img and attention

  void validate(const char* op) const {
    grid.validate(op);
    TASN_CHECK_ARG(upsample_h >= 0 && upsample_w >= 0, op, ": upsample size must be >= 0 (0: the image size), got (",
                   upsample_h, ", ", upsample_w, ")");
  }

  // The size (Hs, Ws) the marginals are taken at for an image of (Hi, Wi).
  std::int64_t marginal_h(std::int64_t Hi) const { return upsample_h > 0 ? upsample_h : Hi; }
  std::int64_t marginal_w(std::int64_t Wi) const { return upsample_w > 0 ? upsample_w : Wi; }
};

// ---- arguments (the same struct for tasn::cpu:: and tasn::cuda::) ------------------------------
// T: the image / feature type (CPU: float, double; CUDA: float, __half, __nv_bfloat16).
// Maps, marginals and grids have type compute_type_t<T> (T on the CPU, float on CUDA).

// out (N, h, w) = sum over the channels of m (N, C, h, w).
template <class T>
struct StructureMapArgs {
  Tensor4<const T> m;
  Tensor3<compute_type_t<T>> out;
  StructureMapOptions options;
};

// out (N, h, w) = one channel of m per sample (training), or the plain sum (evaluation).
template <class T>
struct DetailMapArgs {
  Tensor4<const T> m;                   // (N, C, h, w)
  Tensor1<const std::int64_t> channels;  // optional (N): the channel of each sample, in [0, C)
  Tensor3<compute_type_t<T>> out;       // (N, h, w)
  Tensor1<std::int64_t> chosen;         // optional (N): the channels used (-1: out of range, CUDA)
  DetailMapOptions options;
};

// out (N, H, W) = bilinear upsampling (align_corners) of in (N, h, w). V: float or double.
template <class V>
struct UpsampleArgs {
  Tensor3<const V> in;
  Tensor3<V> out;
  UpsampleOptions options;
};

// my (N, Hs), mx (N, Ws): marginals of map (N, h, w) upsampled to (Hs, Ws).
template <class V>
struct MarginalsArgs {
  Tensor3<const V> map;
  Tensor2<V> my, mx;
  Tensor1<unsigned char> fallback;  // optional (N): 1 where the uniform marginals were used
  MarginalsOptions options;
};

// gy (N, Ho), gx (N, Wo): the separable sampling grid from marginals my (N, Hs), mx (N, Ws).
template <class V>
struct GridArgs {
  Tensor2<const V> my, mx;
  Tensor2<V> gy, gx;
  GridOptions options;
};

// out (N, C, Ho, Wo) = img (N, C, Hi, Wi) sampled at (gx[n, x], gy[n, y]); zeros padding.
template <class T>
struct SampleSeparableArgs {
  Tensor4<const T> img;
  Tensor2<const compute_type_t<T>> gy, gx;  // (N, Ho), (N, Wo)
  Tensor4<T> out;
  SampleOptions options;
};

// dimg (N, C, Hi, Wi) = the transpose of sample_separable applied to dout (N, C, Ho, Wo).
template <class T>
struct SampleSeparableBackwardArgs {
  Tensor4<const T> dout;
  Tensor2<const compute_type_t<T>> gy, gx;
  Tensor4<T> dimg;
  SampleOptions options;
};

// out (N, C, Ho, Wo) = grid_sample(img, grid (N, Ho, Wo, 2) of (x, y), bilinear, zeros, align_corners).
template <class T>
struct SampleGridArgs {
  Tensor4<const T> img;
  Tensor4<const compute_type_t<T>> grid;
  Tensor4<T> out;
  SampleOptions options;
};

// Backward of sample_grid: dimg (optional) and dgrid (optional); img is needed for dgrid only.
template <class T>
struct SampleGridBackwardArgs {
  Tensor4<const T> img;                   // (N, C, Hi, Wi); may be absent without dgrid
  Tensor4<const compute_type_t<T>> grid;  // (N, Ho, Wo, 2)
  Tensor4<const T> dout;                  // (N, C, Ho, Wo)
  Tensor4<T> dimg;                        // optional (N, C, Hi, Wi); its shape also gives (Hi, Wi) without img
  Tensor4<compute_type_t<T>> dgrid;       // optional (N, Ho, Wo, 2)
  SampleOptions options;
};

// out (N, C, Ho, Wo) sampled from img (N, C, Hi, Wi) where attention (N, Ha, Wa) is high.
template <class T>
struct AttentionSampleArgs {
  Tensor4<const T> img;
  Tensor3<const compute_type_t<T>> attention;
  Tensor4<T> out;
  Tensor2<compute_type_t<T>> gy, gx;  // optional (N, Ho), (N, Wo): the grid used
  Tensor1<unsigned char> fallback;    // optional (N), as MarginalsArgs::fallback
  AttentionSampleOptions options;
};

namespace detail {
// grid (N, Ho, Wo, 2) with grid[n, y, x] = (gx[n, x], gy[n, y]): a separable grid in general form.
// For tests and benchmarks (sample_grid against sample_separable on the same grid).
template <class T>
void separable_to_general_grid(const T* gy, const T* gx, std::int64_t N, std::int64_t Ho, std::int64_t Wo, T* grid) {
  for (std::int64_t n = 0; n < N; ++n)
    for (std::int64_t y = 0; y < Ho; ++y)
      for (std::int64_t x = 0; x < Wo; ++x) {
        grid[((n * Ho + y) * Wo + x) * 2] = gx[n * Wo + x];
        grid[((n * Ho + y) * Wo + x) * 2 + 1] = gy[n * Ho + y];
      }
}
}  // namespace detail

namespace sampler {

// Sum of x[0, p) in double in the order of a 32-lane warp: lane l adds x[l], x[l + 32], ...,
// then the lanes combine in a butterfly (s_l + s_{l^16}, then ^8, ^4, ^2, ^1). The CUDA channel-sum
// kernel computes exactly this in parallel, so "equal spatial sums" (the distinct test) is
// decided identically on CPU and GPU.
template <class T, class ToDouble>
inline double warp_order_sum(const T* x, std::int64_t p, ToDouble to_double) {
  double s[32];
  for (int l = 0; l < 32; ++l) {
    s[l] = 0.0;
    for (std::int64_t i = l; i < p; i += 32) s[l] += to_double(x[i]);
  }
  for (int o = 16; o > 0; o /= 2) {
    double t[32];
    for (int l = 0; l < 32; ++l) t[l] = s[l] + s[l ^ o];
    for (int l = 0; l < 32; ++l) s[l] = t[l];
  }
  return s[0];
}

// ---- argument checks (CPU and CUDA run the same ones, before any allocation or launch) --------

// Elements of an argument of sizes `dims`: every size must be >= 1 and their product must fit
// 64-bit indexing. The message names the operator, the argument and the sizes.
inline std::int64_t checked_elems(const char* op, const char* what, std::initializer_list<std::int64_t> dims) {
  auto list = [&](const char* sep) {
    std::ostringstream os;
    const char* s = "";
    for (std::int64_t d : dims) {
      os << s << d;
      s = sep;
    }
    return os.str();
  };
  for (std::int64_t d : dims)
    TASN_CHECK_ARG(d >= 1, op, ": ", what, " must have positive sizes, got (", list(", "), ")");
  std::int64_t p = 1;
  for (std::int64_t d : dims) {
    TASN_CHECK_ARG(d <= std::numeric_limits<std::int64_t>::max() / p, op, ": ", what, " of ", list(" x "),
                   " elements overflows 64-bit indexing");
    p *= d;
  }
  return p;
}

// Sampling taps are computed for pixel coordinates up to this bound (see taps_of), so an image
// axis may hold at most this many pixels (no real image comes near: 2^62 elements of 4 bytes
// exceed any address space).
constexpr std::int64_t kMaxSampledAxis = std::int64_t(1) << 62;

// ---- view checks (CPU and CUDA run the same ones, before any allocation, launch or write) -------
// One overload of check_args per arguments struct: the options, then every view's presence,
// shape (from the views: the leading tensor defines the sizes, the others must agree), layout
// (packed row-major) and data pointer, then the sizes every internal buffer needs. They return
// the sizes; messages name the operator (its `op` argument), the argument and the sizes, so the
// cpu:: and cuda:: operators give the same messages (prefix aside).

// A tensor whose sizes are partly free (`expected` entries of -1: any size >= 1) and partly fixed
// by other arguments; present, packed, non-null, and its element count fits 64-bit indexing
// (checked before the layout, so a view of any sizes is safe to pass).
template <class T, int R>
void check_sized_tensor(const char* op, const char* name, const TensorRef<T, R>& v, const char* layout,
                        std::initializer_list<std::int64_t> expected) {
  detail::check_present(op, name, v);
  std::int64_t want[R] = {};
  int k = 0;
  for (std::int64_t e : expected) {
    if (k < R) want[k] = e;
    ++k;
  }
  for (k = 0; k < R; ++k)
    TASN_CHECK_ARG(want[k] != -1 || v.size[k] >= 1, op, ": ", name, " has shape ", v.shape_string(), " but ", layout,
                   " with every size >= 1 is required");
  for (k = 0; k < R; ++k)
    if (want[k] == -1) want[k] = v.size[k];
  std::int64_t p = 1;
  for (k = 0; k < R; ++k) {
    TASN_CHECK_ARG(v.size[k] < 1 || p <= std::numeric_limits<std::int64_t>::max() / v.size[k], op, ": ", name,
                   " of shape ", v.shape_string(), " overflows 64-bit indexing");
    if (v.size[k] >= 1) p *= v.size[k];
  }
  if constexpr (R == 1) detail::check_tensor(op, name, v, layout, {want[0]});
  if constexpr (R == 2) detail::check_tensor(op, name, v, layout, {want[0], want[1]});
  if constexpr (R == 3) detail::check_tensor(op, name, v, layout, {want[0], want[1], want[2]});
  if constexpr (R == 4) detail::check_tensor(op, name, v, layout, {want[0], want[1], want[2], want[3]});
}

// A required tensor whose sizes other arguments fix (none of its products can overflow: they are
// sub-products of checked tensors): present, then detail::check_tensor.
template <class T, int R>
void check_required_tensor(const char* op, const char* name, const TensorRef<T, R>& v, const char* layout,
                           std::initializer_list<std::int64_t> expected) {
  detail::check_present(op, name, v);
  detail::check_tensor(op, name, v, layout, expected);
}

// Image axes longer than kMaxSampledAxis pixels are refused (see taps_of).
inline void check_sampled_axes(const char* op, std::int64_t Hi, std::int64_t Wi) {
  TASN_CHECK_ARG(Hi <= kMaxSampledAxis && Wi <= kMaxSampledAxis, op, ": image sizes (", Hi, ", ", Wi,
                 ") exceed the ", kMaxSampledAxis, " pixels per axis sampling supports");
}

struct MapSizes {
  std::int64_t N, C, h, w;
};
struct UpsampleSizes {
  std::int64_t N, h, w, H, W;
};
struct MarginalSizes {
  std::int64_t N, h, w, Hs, Ws;
};
struct GridSizes {
  std::int64_t N, Hs, Ws, Ho, Wo;
};
struct SampleSizes {
  std::int64_t N, C, Hi, Wi, Ho, Wo;
};
struct AttentionSampleSizes {
  std::int64_t N, C, Hi, Wi, Ha, Wa, Hs, Ws, Ho, Wo;
};

// structure_map: m (N, C, h, w), out (N, h, w).
template <class T>
MapSizes check_args(const char* op, const StructureMapArgs<T>& a) {
  detail::check_leading_tensor(op, "m", a.m, "(N, C, h, w)");
  const MapSizes s{a.m.size[0], a.m.size[1], a.m.size[2], a.m.size[3]};
  check_required_tensor(op, "out", a.out, "(N, h, w)", {s.N, s.h, s.w});
  return s;
}

// detail_map: m (N, C, h, w), channels (N) optional, out (N, h, w), chosen (N) optional.
template <class T>
MapSizes check_args(const char* op, const DetailMapArgs<T>& a) {
  detail::check_leading_tensor(op, "m", a.m, "(N, C, h, w)");
  const MapSizes s{a.m.size[0], a.m.size[1], a.m.size[2], a.m.size[3]};
  detail::check_optional_tensor(op, "channels", a.channels, "(N)", {s.N});
  check_required_tensor(op, "out", a.out, "(N, h, w)", {s.N, s.h, s.w});
  detail::check_optional_tensor(op, "chosen", a.chosen, "(N)", {s.N});
  return s;
}

// The message both backends give for channels[n] outside [0, C) (detail_map, check_finite).
inline std::string bad_channel_message(const char* op, std::int64_t n, std::int64_t c, std::int64_t C) {
  return detail::concat(op, ": channels[", n, "] = ", c, " is out of range [0, ", C, ")");
}

// upsample_bilinear: in (N, h, w), out (N, H, W) (its sizes give H, W).
template <class V>
UpsampleSizes check_args(const char* op, const UpsampleArgs<V>& a) {
  detail::check_leading_tensor(op, "in", a.in, "(N, h, w)");
  check_sized_tensor(op, "out", a.out, "(N, H, W)", {a.in.size[0], -1, -1});
  return {a.in.size[0], a.in.size[1], a.in.size[2], a.out.size[1], a.out.size[2]};
}

// attention_marginals: map (N, h, w), my (N, Hs), mx (N, Ws) (their sizes give Hs, Ws), fallback (N)
// optional.
template <class V>
MarginalSizes check_args(const char* op, const MarginalsArgs<V>& a) {
  detail::check_leading_tensor(op, "map", a.map, "(N, h, w)");
  const std::int64_t N = a.map.size[0];
  check_sized_tensor(op, "my", a.my, "(N, Hs)", {N, -1});
  check_sized_tensor(op, "mx", a.mx, "(N, Ws)", {N, -1});
  detail::check_optional_tensor(op, "fallback", a.fallback, "(N)", {N});
  const MarginalSizes s{N, a.map.size[1], a.map.size[2], a.my.size[1], a.mx.size[1]};
  checked_elems(op, "the upsampled map (N, Hs, Ws)", {s.N, s.Hs, s.Ws});
  return s;
}

// sampling_grid: options, my (N, Hs), mx (N, Ws), gy (N, Ho), gx (N, Wo) (their sizes give Ho, Wo).
template <class V>
GridSizes check_args(const char* op, const GridArgs<V>& a) {
  a.options.validate(op);
  detail::check_leading_tensor(op, "my", a.my, "(N, Hs)");
  const std::int64_t N = a.my.size[0];
  check_sized_tensor(op, "mx", a.mx, "(N, Ws)", {N, -1});
  check_sized_tensor(op, "gy", a.gy, "(N, Ho)", {N, -1});
  check_sized_tensor(op, "gx", a.gx, "(N, Wo)", {N, -1});
  const GridSizes s{N, a.my.size[1], a.mx.size[1], a.gy.size[1], a.gx.size[1]};
  checked_elems(op, "the grid scratch (N, 2, Hs + Ws)", {N, 2, detail::checked_add(s.Hs, s.Ws, op)});
  return s;
}

// sample_separable: img (N, C, Hi, Wi), gy (N, Ho), gx (N, Wo), out (N, C, Ho, Wo).
template <class T>
SampleSizes check_args(const char* op, const SampleSeparableArgs<T>& a) {
  detail::check_leading_tensor(op, "img", a.img, "(N, C, Hi, Wi)");
  SampleSizes s{a.img.size[0], a.img.size[1], a.img.size[2], a.img.size[3], 0, 0};
  check_sampled_axes(op, s.Hi, s.Wi);
  check_sized_tensor(op, "gy", a.gy, "(N, Ho)", {s.N, -1});
  check_sized_tensor(op, "gx", a.gx, "(N, Wo)", {s.N, -1});
  s.Ho = a.gy.size[1];
  s.Wo = a.gx.size[1];
  check_sized_tensor(op, "out", a.out, "(N, C, Ho, Wo)", {s.N, s.C, s.Ho, s.Wo});
  return s;
}

// sample_separable_backward: dout (N, C, Ho, Wo), gy (N, Ho), gx (N, Wo), dimg (N, C, Hi, Wi) (its
// sizes give Hi, Wi). The pass-1 row buffer (N, C, Ho, Wi) and (CUDA) the per-sample tap lists of
// Hi + 1 / Wi + 1 offsets and 2 Ho / 2 Wo entries must fit 64-bit sizes too.
template <class T>
SampleSizes check_args(const char* op, const SampleSeparableBackwardArgs<T>& a) {
  detail::check_leading_tensor(op, "dout", a.dout, "(N, C, Ho, Wo)");
  SampleSizes s{a.dout.size[0], a.dout.size[1], 0, 0, a.dout.size[2], a.dout.size[3]};
  check_required_tensor(op, "gy", a.gy, "(N, Ho)", {s.N, s.Ho});
  check_required_tensor(op, "gx", a.gx, "(N, Wo)", {s.N, s.Wo});
  check_sized_tensor(op, "dimg", a.dimg, "(N, C, Hi, Wi)", {s.N, s.C, -1, -1});
  s.Hi = a.dimg.size[2];
  s.Wi = a.dimg.size[3];
  check_sampled_axes(op, s.Hi, s.Wi);
  checked_elems(op, "the row buffer (N, C, Ho, Wi)", {s.N, s.C, s.Ho, s.Wi});
  checked_elems(op, "the tap list offsets (N, Hi + 1)", {s.N, detail::checked_add(s.Hi, 1, op)});
  checked_elems(op, "the tap list offsets (N, Wi + 1)", {s.N, detail::checked_add(s.Wi, 1, op)});
  checked_elems(op, "the tap lists (N, 2, Ho)", {s.N, 2, s.Ho});
  checked_elems(op, "the tap lists (N, 2, Wo)", {s.N, 2, s.Wo});
  return s;
}

// sample_grid: img (N, C, Hi, Wi), grid (N, Ho, Wo, 2), out (N, C, Ho, Wo).
template <class T>
SampleSizes check_args(const char* op, const SampleGridArgs<T>& a) {
  detail::check_leading_tensor(op, "img", a.img, "(N, C, Hi, Wi)");
  SampleSizes s{a.img.size[0], a.img.size[1], a.img.size[2], a.img.size[3], 0, 0};
  check_sampled_axes(op, s.Hi, s.Wi);
  check_sized_tensor(op, "grid", a.grid, "(N, Ho, Wo, 2)", {s.N, -1, -1, 2});
  s.Ho = a.grid.size[1];
  s.Wo = a.grid.size[2];
  check_sized_tensor(op, "out", a.out, "(N, C, Ho, Wo)", {s.N, s.C, s.Ho, s.Wo});
  return s;
}

// sample_grid_backward: dout (N, C, Ho, Wo), grid (N, Ho, Wo, 2), img (N, C, Hi, Wi) (required
// with dgrid; else optional), dimg (N, C, Hi, Wi) optional (its sizes give Hi, Wi without img),
// dgrid (N, Ho, Wo, 2) optional. Hi = Wi = 0 when neither img nor dimg is given.
template <class T>
SampleSizes check_args(const char* op, const SampleGridBackwardArgs<T>& a) {
  detail::check_leading_tensor(op, "dout", a.dout, "(N, C, Ho, Wo)");
  SampleSizes s{a.dout.size[0], a.dout.size[1], 0, 0, a.dout.size[2], a.dout.size[3]};
  check_sized_tensor(op, "grid", a.grid, "(N, Ho, Wo, 2)", {s.N, s.Ho, s.Wo, 2});
  TASN_CHECK_ARG(!a.dgrid.present() || a.img.present(), op,
                 ": img is absent (a null view) but is required when dgrid is given");
  if (a.img.present()) {
    check_sized_tensor(op, "img", a.img, "(N, C, Hi, Wi)", {s.N, s.C, -1, -1});
    s.Hi = a.img.size[2];
    s.Wi = a.img.size[3];
    detail::check_optional_tensor(op, "dimg", a.dimg, "(N, C, Hi, Wi)", {s.N, s.C, s.Hi, s.Wi});
  } else if (a.dimg.present()) {
    check_sized_tensor(op, "dimg", a.dimg, "(N, C, Hi, Wi)", {s.N, s.C, -1, -1});
    s.Hi = a.dimg.size[2];
    s.Wi = a.dimg.size[3];
  }
  check_sampled_axes(op, s.Hi, s.Wi);
  if (a.dgrid.present()) check_sized_tensor(op, "dgrid", a.dgrid, "(N, Ho, Wo, 2)", {s.N, s.Ho, s.Wo, 2});
  return s;
}

// attention_sample: options, img (N, C, Hi, Wi), attention (N, Ha, Wa), out (N, C, Ho, Wo) (its
// sizes give Ho, Wo), gy (N, Ho), gx (N, Wo), fallback (N) optional; the upsampled map
// (N, Hs, Ws) (Hs, Ws: options.marginal_h / marginal_w) must fit 64-bit sizes.
template <class T>
AttentionSampleSizes check_args(const char* op, const AttentionSampleArgs<T>& a) {
  a.options.validate(op);
  detail::check_leading_tensor(op, "img", a.img, "(N, C, Hi, Wi)");
  AttentionSampleSizes s{};
  s.N = a.img.size[0];
  s.C = a.img.size[1];
  s.Hi = a.img.size[2];
  s.Wi = a.img.size[3];
  check_sampled_axes(op, s.Hi, s.Wi);
  check_sized_tensor(op, "attention", a.attention, "(N, Ha, Wa)", {s.N, -1, -1});
  s.Ha = a.attention.size[1];
  s.Wa = a.attention.size[2];
  check_sized_tensor(op, "out", a.out, "(N, C, Ho, Wo)", {s.N, s.C, -1, -1});
  s.Ho = a.out.size[2];
  s.Wo = a.out.size[3];
  detail::check_optional_tensor(op, "gy", a.gy, "(N, Ho)", {s.N, s.Ho});
  detail::check_optional_tensor(op, "gx", a.gx, "(N, Wo)", {s.N, s.Wo});
  detail::check_optional_tensor(op, "fallback", a.fallback, "(N)", {s.N});
  s.Hs = a.options.marginal_h(s.Hi);
  s.Ws = a.options.marginal_w(s.Wi);
  checked_elems(op, "the upsampled attention map (N, Hs, Ws)", {s.N, s.Hs, s.Ws});
  checked_elems(op, "the grid scratch (N, 2, Hs + Ws)", {s.N, 2, detail::checked_add(s.Hs, s.Ws, op)});
  return s;
}

// ---- bilinear interpolation, align_corners = true --------------------------------------------

// Value of the bilinear upsampling (align_corners) of map (h x w) to (H x W) at destination
// (y, x): tasn::resize_at. The same function serves the materialised upsample and the fused
// marginals, on CPU and GPU, so all agree bit for bit.
template <class T, class Acc = float>
TASN_HD Acc upsample_at(const T* map, std::int64_t h, std::int64_t w, std::int64_t H, std::int64_t W,
                        std::int64_t y, std::int64_t x) {
  return resize_at<Acc>(map, h, w, H, W, y, x, true);
}

// ---- sampling taps: grid value g in [-1, 1] (align_corners) over `size` pixels ----------------

template <class Acc>
struct Taps {
  std::int64_t i0;  // first tap; the second is i0 + 1
  Acc w0, w1;       // weights of i0 and i0 + 1 (taps outside [0, size) contribute 0)
  Acc scale;        // d(pixel coordinate) / d(g) = (size - 1) / 2
};

// Taps of grid value g. A coordinate beyond the image (finite, however large) gives taps outside
// it: they contribute 0 (zeros padding). The pixel coordinate is clamped to [-2, 2^62] before the
// conversion to int64, so that conversion is defined for every input; every image axis is
// shorter than 2^62 (kMaxSampledAxis), so clamped taps stay outside. A NaN or infinite g gives
// taps at pixels 0 and 1 with NaN weights: everything computed from them is NaN (see sample_plane
// and grid_point_grad), the same on CPU and GPU.
template <class Acc>
TASN_HD Taps<Acc> taps_of(Acc g, std::int64_t size) {
  const Acc scale = Acc(0.5) * static_cast<Acc>(size - 1);
  if (!hd_isfinite(g)) return {0, quiet_nan<Acc>(), quiet_nan<Acc>(), scale};
  const Acc lo = Acc(-2), hi = static_cast<Acc>(kMaxSampledAxis);  // both exact in float and double
  Acc c = (g + Acc(1)) * scale;  // may overflow to +-inf for a huge g: clamped like any far value
  c = c < lo ? lo : (c > hi ? hi : c);
  const Acc f = hd_floor(c);
  const Acc frac = c - f;
  return {static_cast<std::int64_t>(f), Acc(1) - frac, frac, scale};
}

// True for the taps of a NaN or infinite grid value.
template <class Acc>
TASN_HD bool taps_nan(const Taps<Acc>& t) {
  return hd_isnan(t.w0);
}

TASN_HD bool tap_in(std::int64_t i, std::int64_t size) { return i >= 0 && i < size; }

// Bilinear sample of plane (H x W) at taps (ty, tx) with zero padding, in the order
// torch.nn.functional.grid_sample uses (nw, ne, sw, se). NaN when either coordinate is not
// finite (as grid_sample), even where the other one lies outside the image.
template <class T, class Acc>
TASN_HD Acc sample_plane(const T* plane, std::int64_t H, std::int64_t W, const Taps<Acc>& ty,
                         const Taps<Acc>& tx) {
  if (taps_nan(ty) || taps_nan(tx)) return quiet_nan<Acc>();
  const std::int64_t y0 = ty.i0, y1 = ty.i0 + 1, x0 = tx.i0, x1 = tx.i0 + 1;
  Acc v = Acc(0);
  if (tap_in(y0, H) && tap_in(x0, W)) v += static_cast<Acc>(plane[y0 * W + x0]) * (tx.w0 * ty.w0);
  if (tap_in(y0, H) && tap_in(x1, W)) v += static_cast<Acc>(plane[y0 * W + x1]) * (tx.w1 * ty.w0);
  if (tap_in(y1, H) && tap_in(x0, W)) v += static_cast<Acc>(plane[y1 * W + x0]) * (tx.w0 * ty.w1);
  if (tap_in(y1, H) && tap_in(x1, W)) v += static_cast<Acc>(plane[y1 * W + x1]) * (tx.w1 * ty.w1);
  return v;
}

// dgrid of one grid point from the sums over channels of d * (dout/dx pixel differences) (gxs,
// gys): times d(pixel)/d(g). Both components NaN when either coordinate is not finite (the
// gradient is undefined there; grid_sample gives NaN for one and 0 for the other).
template <class Acc>
TASN_HD void grid_point_grad(Acc gxs, Acc gys, const Taps<Acc>& tx, const Taps<Acc>& ty, Acc& dgx, Acc& dgy) {
  const bool bad = taps_nan(tx) || taps_nan(ty);
  dgx = bad ? quiet_nan<Acc>() : gxs * tx.scale;
  dgy = bad ? quiet_nan<Acc>() : gys * ty.scale;
}

// Value at (y, x) of a plane with zero padding.
template <class T, class Acc>
TASN_HD Acc pixel_or_zero(const T* plane, std::int64_t H, std::int64_t W, std::int64_t y, std::int64_t x) {
  return tap_in(y, H) && tap_in(x, W) ? static_cast<Acc>(plane[y * W + x]) : Acc(0);
}

// ---- normalisation of the marginals sampling_grid is given (SPEC 3a) --------------------------
// Per sample and axis: negatives count as 0, the sum is taken in double; when that sum overflows,
// the values are first divided by their maximum (`pre`), so marginals near DBL_MAX normalise too.
// A marginal without positive mass (or, on the GPU, with a non-finite value) makes both axes of
// the sample uniform: the identity grid, as attention_marginals' fallback.

TASN_HD double marginal_weight(double v) { return v > 0.0 ? v : 0.0; }

// Whether a marginal whose weights sum to `mass` (after the pre-division) can be normalised.
TASN_HD bool marginal_usable(double mass) { return mass > 0.0 && hd_isfinite(mass); }

// Normalised value of weight w of a marginal of S entries: w / pre / mass, or 1/S on fallback.
TASN_HD double normalised_marginal(double w, double pre, double mass, std::int64_t S, bool fallback) {
  return fallback ? 1.0 / static_cast<double>(S) : w / pre / mass;
}

// ---- magnification limit (SPEC 3b) -----------------------------------------------------------

// One iteration's threshold for an axis: t shared by both axes, capped by t0 on the first one.
TASN_HD double limit_threshold(double max_y, double max_x, double t0_axis, int iter) {
  double t = max_y < max_x ? max_y : max_x;
  if (iter == 0 && t0_axis < t) t = t0_axis;
  return t;
}

// ---- inverse CDF (SPEC 3c) -------------------------------------------------------------------

// First index k in [0, n) with c[k] >= t (n if none): a plain binary search, the same on CPU and GPU.
TASN_HD std::int64_t lower_bound(const double* c, std::int64_t n, double t) {
  std::int64_t lo = 0, hi = n;
  while (lo < hi) {
    const std::int64_t mid = lo + (hi - lo) / 2;
    if (c[mid] < t) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

// linspace(-1, 1, O)[i]; 0 for O = 1 (the centre).
TASN_HD double linspace_value(std::int64_t O, std::int64_t i) {
  return O > 1 ? -1.0 + 2.0 * static_cast<double>(i) / static_cast<double>(O - 1) : 0.0;
}

// Exact mode, output i of O for the knot CDF c[0..S-1] (c[0] = 0, c[k] = c[k-1] + (m[k-1]+m[k])/2).
TASN_HD double exact_grid_value(const double* c, std::int64_t S, std::int64_t O, std::int64_t i) {
  if (O == 1 || S == 1) return linspace_value(O, i);  // a single input pixel: any grid samples it
  if (i == 0) return -1.0;
  if (i == O - 1) return 1.0;
  const double t = static_cast<double>(i) / static_cast<double>(O - 1) * c[S - 1];
  std::int64_t k = lower_bound(c, S, t);
  if (k >= S) k = S - 1;
  double u;
  if (k == 0) {
    u = 0.0;
  } else {
    u = static_cast<double>(k - 1) + (t - c[k - 1]) / (c[k] - c[k - 1]);
  }
  return 2.0 * u / static_cast<double>(S - 1) - 1.0;
}

// Official mode, output i of O for c[0] = 1, c[j] = c[j-1] + m[j]; c[-1] taken as 0.
TASN_HD double official_grid_value(const double* c, std::int64_t S, std::int64_t O, std::int64_t i) {
  if (S == 1) return linspace_value(O, i);
  const double step = c[S - 1] / static_cast<double>(O);
  const double target = static_cast<double>(i) * step;
  std::int64_t j = lower_bound(c, S, target);
  if (j >= S) j = S - 1;
  const double prev = j > 0 ? c[j - 1] : 0.0;
  const double u = static_cast<double>(j) + (target - c[j]) / (c[j] - prev);
  return 2.0 * u / static_cast<double>(S - 1) - 1.0;
}

// ---- one sample's grid: normalisation, limit and CDF inversion (SPEC 3a-3c) ------------------

// The threads that cooperate on one sample. The CPU runs grid_of_sample with SerialGroup (one
// thread), the CUDA grid kernel with a block (tasn::cuda::kernels::BlockRowGroup, the same
// interface): the same routine, so the CPU tests execute the code the kernel runs. Every member
// calls every reduction (uniform control flow); reductions return the group's result to all.
struct SerialGroup {
  TASN_HD int rank() const { return 0; }
  TASN_HD int size() const { return 1; }
  TASN_HD double sum(double v) { return v; }
  TASN_HD double max(double v) { return v; }
  TASN_HD bool any(bool v) { return v; }
  TASN_HD void sync() {}
  // In-place inclusive prefix sum of v[0, n), in index order.
  TASN_HD void inclusive_scan(double* v, std::int64_t n) {
    for (std::int64_t i = 1; i < n; ++i) v[i] += v[i - 1];
  }
};

// Doubles of scratch grid_of_sample needs: the limited marginals and the knot CDFs of both axes.
TASN_HD std::int64_t grid_scratch_elems(std::int64_t Hs, std::int64_t Ws) { return 2 * (Hs + Ws); }

// When the weights t[0, len) sum to infinity: pre = their maximum and mass = the sum of t / pre.
template <class Group>
TASN_HD void rescale_overflowed_mass(Group& g, const double* t, std::int64_t len, double& mass, double& pre) {
  if (hd_isfinite(mass)) return;  // mass is the group's sum: the branch is uniform
  double a = 0.0;
  for (std::int64_t i = g.rank(); i < len; i += g.size()) a = t[i] > a ? t[i] : a;
  pre = g.max(a);
  a = 0.0;
  for (std::int64_t i = g.rank(); i < len; i += g.size()) a += t[i] / pre;
  mass = g.sum(a);
}

// The grid gy[0, Ho), gx[0, Wo) of one sample from its marginals my[0, Hs), mx[0, Ws):
//  1. normalisation: weights max(m, 0), summed in double (pre-divided by their maximum when the
//     sum overflows); a non-finite value or no positive mass on either axis makes both axes
//     uniform (the identity grid; callers with check_finite refuse non-finite marginals first);
//  2. the magnification limit (opt.iters iterations, cap opt.dense * O / S on the first);
//  3. the knot CDF of each axis (exact: trapezoids from 0; official: c[0] = 1, c[k] += m[k]) and
//     its inversion at every output coordinate (exact_grid_value / official_grid_value).
// scratch: grid_scratch_elems(Hs, Ws) doubles. Returns whether the sample fell back to uniform.
template <class Group, class V, class G>
TASN_HD bool grid_of_sample(Group& g, const V* my, const V* mx, std::int64_t Hs, std::int64_t Ws, std::int64_t Ho,
                            std::int64_t Wo, const GridOptions& opt, double* scratch, G* gy, G* gx) {
  double* ty = scratch;
  double* tx = ty + Hs;
  double* cdf_y = tx + Ws;
  double* cdf_x = cdf_y + Hs;
  bool bad_local = false;
  double sum_y = 0.0, sum_x = 0.0;
  for (std::int64_t i = g.rank(); i < Hs; i += g.size()) {
    const double v = static_cast<double>(my[i]);
    bad_local = bad_local || !hd_isfinite(v);
    sum_y += (ty[i] = marginal_weight(v));
  }
  for (std::int64_t i = g.rank(); i < Ws; i += g.size()) {
    const double v = static_cast<double>(mx[i]);
    bad_local = bad_local || !hd_isfinite(v);
    sum_x += (tx[i] = marginal_weight(v));
  }
  const bool bad = g.any(bad_local);
  double mass_y = g.sum(sum_y), mass_x = g.sum(sum_x);
  double pre_y = 1.0, pre_x = 1.0;
  if (!bad) {  // uniform across the group
    rescale_overflowed_mass(g, ty, Hs, mass_y, pre_y);
    rescale_overflowed_mass(g, tx, Ws, mass_x, pre_x);
  }
  const bool fallback = bad || !marginal_usable(mass_y) || !marginal_usable(mass_x);
  for (std::int64_t i = g.rank(); i < Hs; i += g.size())
    ty[i] = normalised_marginal(ty[i], pre_y, mass_y, Hs, fallback) * static_cast<double>(Ho);
  for (std::int64_t i = g.rank(); i < Ws; i += g.size())
    tx[i] = normalised_marginal(tx[i], pre_x, mass_x, Ws, fallback) * static_cast<double>(Wo);
  g.sync();
  const double t0y = opt.dense * static_cast<double>(Ho) / static_cast<double>(Hs);
  const double t0x = opt.dense * static_cast<double>(Wo) / static_cast<double>(Ws);
  for (int it = 0; it < opt.iters; ++it) {
    double a = 0.0, b = 0.0;
    for (std::int64_t i = g.rank(); i < Hs; i += g.size()) a = ty[i] > a ? ty[i] : a;
    for (std::int64_t i = g.rank(); i < Ws; i += g.size()) b = tx[i] > b ? tx[i] : b;
    const double max_y = g.max(a), max_x = g.max(b);
    const double cy = limit_threshold(max_y, max_x, t0y, it), cx = limit_threshold(max_y, max_x, t0x, it);
    a = 0.0;
    b = 0.0;
    for (std::int64_t i = g.rank(); i < Hs; i += g.size()) a += (ty[i] = ty[i] < cy ? ty[i] : cy);
    for (std::int64_t i = g.rank(); i < Ws; i += g.size()) b += (tx[i] = tx[i] < cx ? tx[i] : cx);
    const double add_y = (static_cast<double>(Ho) - g.sum(a)) / static_cast<double>(Hs);
    const double add_x = (static_cast<double>(Wo) - g.sum(b)) / static_cast<double>(Ws);
    for (std::int64_t i = g.rank(); i < Hs; i += g.size()) ty[i] += add_y;
    for (std::int64_t i = g.rank(); i < Ws; i += g.size()) tx[i] += add_x;
    g.sync();
  }
  const bool official = opt.mode == GridMode::Official;
  for (int axis = 0; axis < 2; ++axis) {
    const double* t = axis == 0 ? ty : tx;
    double* c = axis == 0 ? cdf_y : cdf_x;
    const std::int64_t S = axis == 0 ? Hs : Ws, O = axis == 0 ? Ho : Wo;
    G* out = axis == 0 ? gy : gx;
    for (std::int64_t i = g.rank(); i < S; i += g.size())
      c[i] = official ? (i == 0 ? 1.0 : t[i]) : (i == 0 ? 0.0 : 0.5 * (t[i - 1] + t[i]));
    g.sync();
    g.inclusive_scan(c, S);
    for (std::int64_t i = g.rank(); i < O; i += g.size())
      out[i] = static_cast<G>(official ? official_grid_value(c, S, O, i) : exact_grid_value(c, S, O, i));
    g.sync();
  }
  return fallback;
}

// ---- counter-based channel choice (SPEC 2) ---------------------------------------------------

// Which of `count` candidates sample n picks for `seed`: the same on CPU and GPU.
TASN_HD std::int64_t pick_index(std::uint64_t seed, std::int64_t n, std::int64_t count) {
  return static_cast<std::int64_t>(mix64(mix64(seed) ^ static_cast<std::uint64_t>(n)) %
                                    static_cast<std::uint64_t>(count));
}

// Whether channel c counts as distinct (SPEC 2): its spatial sum differs from every earlier
// channel's. sums: the channels' sums in warp_order_sum's order (the same on CPU and GPU).
TASN_HD bool channel_is_distinct(const double* sums, std::int64_t c) {
  for (std::int64_t e = 0; e < c; ++e)
    if (sums[e] == sums[c]) return false;
  return true;
}

// The channel sample n uses in training: the pick_index(seed, n, count)-th of the `count`
// channels with keep[c] != 0 (channel 0 is always kept, so count >= 1).
TASN_HD std::int64_t pick_kept_channel(const unsigned char* keep, std::int64_t C, std::uint64_t seed, std::int64_t n) {
  std::int64_t count = 0;
  for (std::int64_t e = 0; e < C; ++e) count += keep[e];
  std::int64_t r = pick_index(seed, n, count), c = 0;
  for (; c < C; ++c)
    if (keep[c] && r-- == 0) break;
  return c;
}

}  // namespace sampler
}  // namespace tasn
