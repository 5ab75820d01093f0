// tasn/attention_sampler.h - attention maps, marginals, inverse-CDF grids and bilinear sampling,
// CPU path (OpenMP over samples / planes), float and double. SPEC sections 2 and 3; math, modes
// and API in docs/attention_sampler.md. Per-element math: tasn/attention_sampler_common.h.
//
// Layouts (row-major): maps (N, h, w); trilinear output M (N, C, h, w); images (N, C, H, W);
// marginals my (N, Hs), mx (N, Ws); separable grid gy (N, Ho), gx (N, Wo); general grid
// (N, Ho, Wo, 2) holding (x, y) like torch.nn.functional.grid_sample.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <tuple>
#include <type_traits>
#include <vector>

#include "tasn/attention_sampler_common.h"
#include "tasn/core/parallel.h"
#include "tasn/core/scratch.h"
#include "tasn/core/softmax_cpu.h"

namespace tasn::cpu {

namespace detail_sampler {

template <class T>
void check_type() {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                "the CPU sampler supports float and double");
}

using tasn::detail::scratch_vector;

// Channels of sample mc (C planes of p pixels) that count as distinct: a channel whose spatial
// sum equals that of an earlier channel is left out (SPEC 2).
template <class T>
std::vector<unsigned char> distinct_channels(const T* mc, std::int64_t C, std::int64_t p, const char* op) {
  auto sums = scratch_vector<double>(op, "the channel sums", C);
  for (std::int64_t c = 0; c < C; ++c)  // in the CUDA kernel's order: the same decisions there
    sums[c] = sampler::warp_order_sum(mc + c * p, p, [](T v) { return static_cast<double>(v); });
  auto keep = scratch_vector<unsigned char>(op, "the distinct-channel mask", C, 1);
  for (std::int64_t c = 1; c < C; ++c)
    for (std::int64_t e = 0; e < c; ++e)
      if (sums[e] == sums[c]) {
        keep[c] = 0;
        break;
      }
  return keep;
}

}  // namespace detail_sampler

// ---- SPEC 2: attention maps ---------------------------------------------------------------------

// out (N, h, w) = sum over channels of m (N, C, h, w); with `distinct`, channels whose spatial
// sums equal an earlier channel's are counted once.
template <class T>
void structure_map(const T* m, std::int64_t N, std::int64_t C, std::int64_t h, std::int64_t w,
                   bool distinct, T* out) {
  constexpr const char* op = "structure_map";
  detail_sampler::check_type<T>();
  sampler::check_map_args(op, N, C, h, w);
  tasn::detail::check_pointer(m, "m", N * C * h * w, op);
  tasn::detail::check_pointer(out, "out", N * h * w, op);
  const std::int64_t p = h * w;
  parallel_for(0, N, [&](std::int64_t n) {
    const T* mc = m + n * C * p;
    const auto keep = distinct ? detail_sampler::distinct_channels(mc, C, p, op)
                               : detail_sampler::scratch_vector<unsigned char>(op, "the channel mask", C, 1);
    T* o = out + n * p;
    std::fill(o, o + p, T(0));
    for (std::int64_t c = 0; c < C; ++c)
      if (keep[c])
        for (std::int64_t i = 0; i < p; ++i) o[i] += mc[c * p + i];
  });
}

// Detail map (N, h, w). Training: one channel of m per sample: channels[n] when `channels` is
// given (each in [0, C)), else the pick_index(seed, n, count)-th distinct channel. The chosen
// indices go to `chosen` (N values) when given. Evaluation (training = false): the plain sum.
template <class T>
void detail_map(const T* m, std::int64_t N, std::int64_t C, std::int64_t h, std::int64_t w,
                bool training, const std::int64_t* channels, std::uint64_t seed, T* out,
                std::int64_t* chosen = nullptr) {
  constexpr const char* op = "detail_map";
  detail_sampler::check_type<T>();
  if (!training) {
    structure_map(m, N, C, h, w, false, out);
    return;
  }
  sampler::check_map_args(op, N, C, h, w);
  tasn::detail::check_pointer(m, "m", N * C * h * w, op);
  tasn::detail::check_pointer(out, "out", N * h * w, op);
  if (channels)
    for (std::int64_t n = 0; n < N; ++n)
      TASN_CHECK_ARG(channels[n] >= 0 && channels[n] < C, op, ": channels[", n, "] = ", channels[n],
                     " is out of range [0, ", C, ")");
  const std::int64_t p = h * w;
  parallel_for(0, N, [&](std::int64_t n) {
    const T* mc = m + n * C * p;
    std::int64_t c = 0;
    if (channels) {
      c = channels[n];
    } else {
      const auto keep = detail_sampler::distinct_channels(mc, C, p, op);
      std::int64_t count = 0;
      for (unsigned char k : keep) count += k;
      std::int64_t r = sampler::pick_index(seed, n, count);
      for (c = 0; c < C; ++c)
        if (keep[c] && r-- == 0) break;
    }
    if (chosen) chosen[n] = c;
    std::copy(mc + c * p, mc + (c + 1) * p, out + n * p);
  });
}

// out (N, H, W) = bilinear upsampling (align_corners = true) of in (N, h, w); squared: then
// squared element-wise (the official structure map).
template <class T>
void upsample_bilinear(const T* in, std::int64_t N, std::int64_t h, std::int64_t w, std::int64_t H,
                       std::int64_t W, bool squared, T* out) {
  constexpr const char* op = "upsample_bilinear";
  detail_sampler::check_type<T>();
  sampler::check_upsample_args(op, N, h, w, H, W);
  tasn::detail::check_pointer(in, "in", N * h * w, op);
  tasn::detail::check_pointer(out, "out", N * H * W, op);
  parallel_for(0, N * H, [&](std::int64_t r) {
    const std::int64_t n = r / H, y = r % H;
    for (std::int64_t x = 0; x < W; ++x) {
      const T v = sampler::upsample_at<T, T>(in + n * h * w, h, w, H, W, y, x);
      out[r * W + x] = squared ? v * v : v;
    }
  });
}

// ---- SPEC 3a: marginals -------------------------------------------------------------------------

// Row and column marginals of map (N, h, w) bilinearly upsampled to (Hs, Ws) (pass Hs = h,
// Ws = w for none), computed without materialising the upsampled map: my[n, y] = max_x,
// mx[n, x] = max_y, negatives as 0, each normalised to sum 1. A sample whose marginal has zero or
// non-finite mass gets the uniform marginal; fallback[n] (optional) is then 1 (else 0).
template <class T>
void attention_marginals(const T* map, std::int64_t N, std::int64_t h, std::int64_t w,
                         std::int64_t Hs, std::int64_t Ws, T* my, T* mx,
                         unsigned char* fallback = nullptr) {
  constexpr const char* op = "attention_marginals";
  detail_sampler::check_type<T>();
  sampler::check_marginal_args(op, N, h, w, Hs, Ws);
  tasn::detail::check_pointer(map, "map", N * h * w, op);
  tasn::detail::check_pointer(my, "my", N * Hs, op);
  tasn::detail::check_pointer(mx, "mx", N * Ws, op);
  parallel_for(0, N, [&](std::int64_t n) {
    const T* a = map + n * h * w;
    T* ry = my + n * Hs;
    T* rx = mx + n * Ws;
    std::fill(ry, ry + Hs, T(0));
    std::fill(rx, rx + Ws, T(0));
    bool finite = true;
    for (std::int64_t y = 0; y < Hs; ++y)
      for (std::int64_t x = 0; x < Ws; ++x) {
        const T v = (Hs == h && Ws == w) ? a[y * w + x] : sampler::upsample_at<T, T>(a, h, w, Hs, Ws, y, x);
        if (!std::isfinite(v)) finite = false;
        ry[y] = std::max(ry[y], v);  // starts at 0: negatives count as 0
        rx[x] = std::max(rx[x], v);
      }
    const double mass_y = std::accumulate(ry, ry + Hs, 0.0), mass_x = std::accumulate(rx, rx + Ws, 0.0);
    // Either axis degenerate: both fall back together, so the grid becomes the identity.
    const bool fell_back = !finite || !(mass_y > 0.0 && std::isfinite(mass_y)) || !(mass_x > 0.0 && std::isfinite(mass_x));
    for (auto [r, len, mass] : {std::tuple<T*, std::int64_t, double>{ry, Hs, mass_y}, std::tuple<T*, std::int64_t, double>{rx, Ws, mass_x}}) {
      for (std::int64_t i = 0; i < len; ++i)
        r[i] = static_cast<T>(fell_back ? 1.0 / double(len) : static_cast<double>(r[i]) / mass);
    }
    if (fallback) fallback[n] = fell_back ? 1 : 0;
  });
}

// ---- SPEC 3b, 3c: the grid ------------------------------------------------------------------------

namespace detail_sampler {

// Magnification limit on one sample's marginals (in place, scaled to sum Ho and Wo), in double.
inline void limit_marginals(std::vector<double>& my, std::vector<double>& mx, std::int64_t Ho,
                            std::int64_t Wo, const GridOptions& opt) {
  const auto Hs = static_cast<std::int64_t>(my.size()), Ws = static_cast<std::int64_t>(mx.size());
  for (auto& v : my) v *= double(Ho);
  for (auto& v : mx) v *= double(Wo);
  const double t0y = opt.dense * double(Ho) / double(Hs), t0x = opt.dense * double(Wo) / double(Ws);
  for (int it = 0; it < opt.iters; ++it) {
    const double max_y = *std::max_element(my.begin(), my.end());
    const double max_x = *std::max_element(mx.begin(), mx.end());
    for (auto [m, t0, O] : {std::tuple<std::vector<double>*, double, std::int64_t>{&my, t0y, Ho},
                            std::tuple<std::vector<double>*, double, std::int64_t>{&mx, t0x, Wo}}) {
      const double t = sampler::limit_threshold(max_y, max_x, t0, it);
      double sum = 0.0;
      for (auto& v : *m) {
        v = std::min(v, t);
        sum += v;
      }
      const double add = (double(O) - sum) / double(m->size());
      for (auto& v : *m) v += add;
    }
  }
}

// Normalises one sample's marginals in place (sampler::normalised_marginal: negatives as 0, sum
// in double, pre-divided by the maximum when that sum overflows); a marginal without positive
// mass makes both uniform. The CUDA grid kernel does the same with block reductions.
inline void normalise_marginals(std::vector<double>& my, std::vector<double>& mx) {
  double pre[2] = {1.0, 1.0}, mass[2] = {0.0, 0.0};
  std::vector<double>* m[2] = {&my, &mx};
  for (int a = 0; a < 2; ++a) {
    for (auto& v : *m[a]) mass[a] += (v = sampler::marginal_weight(v));
    if (!std::isfinite(mass[a])) {
      pre[a] = *std::max_element(m[a]->begin(), m[a]->end());
      mass[a] = 0.0;
      for (double v : *m[a]) mass[a] += v / pre[a];
    }
  }
  const bool fallback = !sampler::marginal_usable(mass[0]) || !sampler::marginal_usable(mass[1]);
  for (int a = 0; a < 2; ++a) {
    const auto S = static_cast<std::int64_t>(m[a]->size());
    for (auto& v : *m[a]) v = sampler::normalised_marginal(v, pre[a], mass[a], S, fallback);
  }
}

// Knot CDF of one axis for the chosen mode.
inline std::vector<double> knot_cdf(const std::vector<double>& m, GridMode mode, const char* op) {
  auto c = scratch_vector<double>(op, "the knot CDF", static_cast<std::int64_t>(m.size()));
  if (mode == GridMode::Exact) {
    c[0] = 0.0;
    for (std::size_t k = 1; k < m.size(); ++k) c[k] = c[k - 1] + 0.5 * (m[k - 1] + m[k]);
  } else {
    c[0] = 1.0;  // the official code replaces the first mass by 1
    for (std::size_t k = 1; k < m.size(); ++k) c[k] = c[k - 1] + m[k];
  }
  return c;
}

}  // namespace detail_sampler

// Separable sampling grid from marginals my (N, Hs), mx (N, Ws): gy (N, Ho), gx (N, Wo). The
// marginals are normalised per sample first (detail_sampler::normalise_marginals); non-finite
// marginals are refused.
template <class T>
void sampling_grid(const T* my, const T* mx, std::int64_t N, std::int64_t Hs, std::int64_t Ws,
                   const GridOptions& opt, T* gy, T* gx) {
  constexpr const char* op = "sampling_grid";
  detail_sampler::check_type<T>();
  sampler::check_grid_args(op, N, Hs, Ws, opt);
  tasn::detail::check_pointer(my, "my", N * Hs, op);
  tasn::detail::check_pointer(mx, "mx", N * Ws, op);
  tasn::detail::check_pointer(gy, "gy", N * opt.out_h, op);
  tasn::detail::check_pointer(gx, "gx", N * opt.out_w, op);
  check_all_finite(my, N * Hs, "my", op);
  check_all_finite(mx, N * Ws, "mx", op);
  parallel_for(0, N, [&](std::int64_t n) {
    auto scratch = detail_sampler::scratch_vector<double>(op, "the grid scratch", sampler::grid_scratch_elems(Hs, Ws));
    sampler::SerialGroup g;
    sampler::grid_of_sample(g, my + n * Hs, mx + n * Ws, Hs, Ws, opt.out_h, opt.out_w, opt, scratch.data(),
                            gy + n * opt.out_h, gx + n * opt.out_w);
  });
}

// ---- SPEC 3d: bilinear sampling -------------------------------------------------------------------

// out (N, C, Ho, Wo) = img (N, C, Hi, Wi) sampled at (gx[n, w], gy[n, h]); zeros padding.
template <class T>
void sample_separable(const T* img, std::int64_t N, std::int64_t C, std::int64_t Hi, std::int64_t Wi,
                      const T* gy, const T* gx, std::int64_t Ho, std::int64_t Wo, T* out) {
  constexpr const char* op = "sample_separable";
  detail_sampler::check_type<T>();
  sampler::check_sample_args(op, sampler::SampleCall::SeparableForward, N, C, Hi, Wi, Ho, Wo);
  tasn::detail::check_pointer(img, "img", N * C * Hi * Wi, op);
  tasn::detail::check_pointer(gy, "gy", N * Ho, op);
  tasn::detail::check_pointer(gx, "gx", N * Wo, op);
  tasn::detail::check_pointer(out, "out", N * C * Ho * Wo, op);
  parallel_for(0, N * C, [&](std::int64_t nc) {
    const std::int64_t n = nc / C;
    const T* plane = img + nc * Hi * Wi;
    auto tx = detail_sampler::scratch_vector<sampler::Taps<T>>(op, "the column taps", Wo);
    for (std::int64_t x = 0; x < Wo; ++x) tx[x] = sampler::taps_of<T>(gx[n * Wo + x], Wi);
    for (std::int64_t y = 0; y < Ho; ++y) {
      const auto ty = sampler::taps_of<T>(gy[n * Ho + y], Hi);
      T* o = out + (nc * Ho + y) * Wo;
      for (std::int64_t x = 0; x < Wo; ++x) o[x] = sampler::sample_plane<T, T>(plane, Hi, Wi, ty, tx[x]);
    }
  });
}

// dimg (N, C, Hi, Wi) = the transpose of sample_separable applied to dout (N, C, Ho, Wo).
// Deterministic: each (n, c) plane is accumulated in a fixed order (two separable passes, first
// along x into (Ho, Wi), then along y), no atomics: same input, bit-identical output.
template <class T>
void sample_separable_backward(const T* dout, std::int64_t N, std::int64_t C, std::int64_t Hi,
                               std::int64_t Wi, const T* gy, const T* gx, std::int64_t Ho,
                               std::int64_t Wo, T* dimg) {
  constexpr const char* op = "sample_separable_backward";
  detail_sampler::check_type<T>();
  sampler::check_sample_args(op, sampler::SampleCall::SeparableBackward, N, C, Hi, Wi, Ho, Wo);
  tasn::detail::check_pointer(dout, "dout", N * C * Ho * Wo, op);
  tasn::detail::check_pointer(gy, "gy", N * Ho, op);
  tasn::detail::check_pointer(gx, "gx", N * Wo, op);
  tasn::detail::check_pointer(dimg, "dimg", N * C * Hi * Wi, op);
  parallel_for(0, N * C, [&](std::int64_t nc) {
    const std::int64_t n = nc / C;
    auto rows = detail_sampler::scratch_vector<T>(op, "the row buffer (Ho, Wi)", Ho * Wi, T(0));  // pass 1: along x
    for (std::int64_t y = 0; y < Ho; ++y) {
      const T* d = dout + (nc * Ho + y) * Wo;
      T* r = rows.data() + y * Wi;
      for (std::int64_t x = 0; x < Wo; ++x) {
        const auto t = sampler::taps_of<T>(gx[n * Wo + x], Wi);
        if (sampler::tap_in(t.i0, Wi)) r[t.i0] += t.w0 * d[x];
        if (sampler::tap_in(t.i0 + 1, Wi)) r[t.i0 + 1] += t.w1 * d[x];
      }
    }
    T* di = dimg + nc * Hi * Wi;  // pass 2: along y
    std::fill(di, di + Hi * Wi, T(0));
    for (std::int64_t y = 0; y < Ho; ++y) {
      const auto t = sampler::taps_of<T>(gy[n * Ho + y], Hi);
      const T* r = rows.data() + y * Wi;
      if (sampler::tap_in(t.i0, Hi))
        for (std::int64_t x = 0; x < Wi; ++x) di[t.i0 * Wi + x] += t.w0 * r[x];
      if (sampler::tap_in(t.i0 + 1, Hi))
        for (std::int64_t x = 0; x < Wi; ++x) di[(t.i0 + 1) * Wi + x] += t.w1 * r[x];
    }
  });
}

// General grid (N, Ho, Wo, 2) of (x, y): out = grid_sample(img, grid, bilinear, zeros, align_corners).
template <class T>
void sample_grid(const T* img, std::int64_t N, std::int64_t C, std::int64_t Hi, std::int64_t Wi,
                 const T* grid, std::int64_t Ho, std::int64_t Wo, T* out) {
  constexpr const char* op = "sample_grid";
  detail_sampler::check_type<T>();
  sampler::check_sample_args(op, sampler::SampleCall::GridForward, N, C, Hi, Wi, Ho, Wo);
  tasn::detail::check_pointer(img, "img", N * C * Hi * Wi, op);
  tasn::detail::check_pointer(grid, "grid", N * Ho * Wo * 2, op);
  tasn::detail::check_pointer(out, "out", N * C * Ho * Wo, op);
  parallel_for(0, N * C, [&](std::int64_t nc) {
    const std::int64_t n = nc / C;
    const T* plane = img + nc * Hi * Wi;
    for (std::int64_t i = 0; i < Ho * Wo; ++i) {
      const T* g = grid + (n * Ho * Wo + i) * 2;
      out[nc * Ho * Wo + i] = sampler::sample_plane<T, T>(plane, Hi, Wi, sampler::taps_of<T>(g[1], Hi),
                                                          sampler::taps_of<T>(g[0], Wi));
    }
  });
}

// Backward of sample_grid: dimg (optional) and dgrid (optional, (N, Ho, Wo, 2)), as grid_sample.
template <class T>
void sample_grid_backward(const T* img, const T* grid, const T* dout, std::int64_t N, std::int64_t C,
                          std::int64_t Hi, std::int64_t Wi, std::int64_t Ho, std::int64_t Wo, T* dimg,
                          T* dgrid) {
  constexpr const char* op = "sample_grid_backward";
  detail_sampler::check_type<T>();
  sampler::check_sample_args(op, sampler::SampleCall::GridBackward, N, C, Hi, Wi, Ho, Wo);
  tasn::detail::check_pointer(img, "img", dgrid ? N * C * Hi * Wi : 0, op);
  tasn::detail::check_pointer(grid, "grid", N * Ho * Wo * 2, op);
  tasn::detail::check_pointer(dout, "dout", N * C * Ho * Wo, op);
  const std::int64_t P = Ho * Wo;
  // Per sample: each thread owns whole samples, so dimg and dgrid accumulate without races.
  parallel_for(0, N, [&](std::int64_t n) {
    if (dimg) std::fill(dimg + n * C * Hi * Wi, dimg + (n + 1) * C * Hi * Wi, T(0));
    for (std::int64_t i = 0; i < P; ++i) {
      const T* g = grid + (n * P + i) * 2;
      const auto tx = sampler::taps_of<T>(g[0], Wi);
      const auto ty = sampler::taps_of<T>(g[1], Hi);
      const std::int64_t x0 = tx.i0, x1 = tx.i0 + 1, y0 = ty.i0, y1 = ty.i0 + 1;
      T gxs = 0, gys = 0;
      for (std::int64_t c = 0; c < C; ++c) {
        const T d = dout[(n * C + c) * P + i];
        if (dimg) {
          T* di = dimg + (n * C + c) * Hi * Wi;
          if (sampler::tap_in(y0, Hi) && sampler::tap_in(x0, Wi)) di[y0 * Wi + x0] += tx.w0 * ty.w0 * d;
          if (sampler::tap_in(y0, Hi) && sampler::tap_in(x1, Wi)) di[y0 * Wi + x1] += tx.w1 * ty.w0 * d;
          if (sampler::tap_in(y1, Hi) && sampler::tap_in(x0, Wi)) di[y1 * Wi + x0] += tx.w0 * ty.w1 * d;
          if (sampler::tap_in(y1, Hi) && sampler::tap_in(x1, Wi)) di[y1 * Wi + x1] += tx.w1 * ty.w1 * d;
        }
        if (dgrid) {
          const T* pl = img + (n * C + c) * Hi * Wi;
          const T nw = sampler::pixel_or_zero<T, T>(pl, Hi, Wi, y0, x0), ne = sampler::pixel_or_zero<T, T>(pl, Hi, Wi, y0, x1);
          const T sw = sampler::pixel_or_zero<T, T>(pl, Hi, Wi, y1, x0), se = sampler::pixel_or_zero<T, T>(pl, Hi, Wi, y1, x1);
          gxs += d * (ty.w0 * (ne - nw) + ty.w1 * (se - sw));
          gys += d * (tx.w0 * (sw - nw) + tx.w1 * (se - ne));
        }
      }
      if (dgrid) sampler::grid_point_grad(gxs, gys, tx, ty, dgrid[(n * P + i) * 2], dgrid[(n * P + i) * 2 + 1]);
    }
  });
}

// ---- convenience ------------------------------------------------------------------------------------

// Attention map (N, Ha, Wa) + image (N, C, Hi, Wi) -> sampled image (N, C, Ho, Wo); the grid is
// returned in gy (N, Ho) and gx (N, Wo) when those are given, fallback (N) as in attention_marginals.
// Every size (and every internal buffer's size) is checked before anything is allocated; the
// internal buffers (the upsampled map when squared, the marginals, the grid when not returned)
// are allocated through tasn::detail::scratch_vector.
template <class T>
void attention_sample(const T* img, std::int64_t N, std::int64_t C, std::int64_t Hi, std::int64_t Wi,
                      const T* attention, std::int64_t Ha, std::int64_t Wa,
                      const AttentionSampleOptions& opt, T* out, T* gy = nullptr, T* gx = nullptr,
                      unsigned char* fallback = nullptr) {
  constexpr const char* op = "attention_sample";
  detail_sampler::check_type<T>();
  sampler::check_attention_sample_args(op, N, C, Hi, Wi, Ha, Wa, opt);
  const std::int64_t Hs = opt.marginal_h(Hi), Ws = opt.marginal_w(Wi), Ho = opt.grid.out_h, Wo = opt.grid.out_w;
  tasn::detail::check_pointer(img, "img", N * C * Hi * Wi, op);
  tasn::detail::check_pointer(attention, "attention", N * Ha * Wa, op);
  tasn::detail::check_pointer(out, "out", N * C * Ho * Wo, op);
  using detail_sampler::scratch_vector;
  std::vector<T> map;
  const T* a = attention;
  std::int64_t h = Ha, w = Wa;
  if (opt.squared) {  // squaring happens after upsampling, so materialise the upsampled map
    map = scratch_vector<T>(op, "the upsampled attention map", N * Hs * Ws);
    upsample_bilinear(attention, N, Ha, Wa, Hs, Ws, true, map.data());
    a = map.data();
    h = Hs;
    w = Ws;
  }
  auto my = scratch_vector<T>(op, "the row marginals", N * Hs), mx = scratch_vector<T>(op, "the column marginals", N * Ws);
  attention_marginals(a, N, h, w, Hs, Ws, my.data(), mx.data(), fallback);
  std::vector<T> gy_local, gx_local;
  if (!gy) {
    gy_local = scratch_vector<T>(op, "the grid gy", N * Ho);
    gy = gy_local.data();
  }
  if (!gx) {
    gx_local = scratch_vector<T>(op, "the grid gx", N * Wo);
    gx = gx_local.data();
  }
  sampling_grid(my.data(), mx.data(), N, Hs, Ws, opt.grid, gy, gx);
  sample_separable(img, N, C, Hi, Wi, gy, gx, Ho, Wo, out);
}

}  // namespace tasn::cpu
