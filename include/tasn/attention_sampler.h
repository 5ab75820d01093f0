// tasn/attention_sampler.h - attention maps, marginals, inverse-CDF grids and bilinear sampling,
// CPU path (OpenMP over samples / planes), float and double. SPEC sections 2 and 3; math, modes
// and API in docs/attention_sampler.md. Arguments, view checks and per-element math:
// tasn/attention_sampler_common.h (shared with the CUDA path).
//
// Every operator is called as
//   tasn::cpu::op(args);            // allocates its scratch itself (one HostWorkspace)
//   tasn::cpu::op(args, {ptr, n});  // or computes in the caller's workspace of
//                                   // tasn::cpu::workspace_bytes(args) bytes (256-byte aligned)
// with the op's arguments struct (StructureMapArgs, ..., AttentionSampleArgs). Sizes come from
// the views. Per-thread scratch is sized for cpu::num_slots() threads: query workspace_bytes in
// the same threading context (inside or outside a parallel region) as the call.
//
// Layouts (row-major): maps (N, h, w); trilinear output M (N, C, h, w); images (N, C, H, W);
// marginals my (N, Hs), mx (N, Ws); separable grid gy (N, Ho), gx (N, Wo); general grid
// (N, Ho, Wo, 2) holding (x, y) like torch.nn.functional.grid_sample.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "tasn/attention_sampler_common.h"
#include "tasn/core/parallel.h"
#include "tasn/core/scratch.h"
#include "tasn/core/softmax_cpu.h"
#include "tasn/core/tensor.h"

namespace tasn::cpu {

namespace detail_sampler {

using tasn::detail::WorkspaceCarver;

template <class T>
void check_type() {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                "the CPU sampler supports float and double");
}

// `per` elements for each of `slots` threads (parallel_for_slots), carved as one region.
template <class U>
struct Slots {
  U* base = nullptr;
  std::int64_t per = 0;
  U* at(int slot) const { return base + static_cast<std::int64_t>(slot) * per; }
};

template <class U>
Slots<U> take_slots(WorkspaceCarver& c, std::int64_t per, int slots, const char* op) {
  return {c.take<U>(tasn::detail::checked_mul(per, slots, op)), per};
}

// ---- workspace layouts: run by workspace_bytes (null base) and by the operators ----------------

// structure_map / detail_map: per thread, the C channel sums and the distinct-channel mask, when
// distinct channels are needed.
struct MapLayout {
  Slots<double> sums;
  Slots<unsigned char> keep;
};
inline MapLayout map_layout(WorkspaceCarver& c, const sampler::MapSizes& s, bool need_distinct, int slots, const char* op) {
  MapLayout l;
  if (!need_distinct) return l;
  l.sums = take_slots<double>(c, s.C, slots, op);
  l.keep = take_slots<unsigned char>(c, s.C, slots, op);
  return l;
}

// sampling_grid: per thread, sampler::grid_scratch_elems(Hs, Ws) doubles.
inline Slots<double> grid_layout(WorkspaceCarver& c, std::int64_t Hs, std::int64_t Ws, int slots, const char* op) {
  return take_slots<double>(c, sampler::grid_scratch_elems(Hs, Ws), slots, op);
}

// sample_separable: per thread, the Wo column taps.
template <class T>
Slots<sampler::Taps<T>> taps_layout(WorkspaceCarver& c, std::int64_t Wo, int slots, const char* op) {
  return take_slots<sampler::Taps<T>>(c, Wo, slots, op);
}

// sample_separable_backward: per thread, the pass-1 row buffer (Ho, Wi).
template <class T>
Slots<T> rows_layout(WorkspaceCarver& c, const sampler::SampleSizes& s, int slots, const char* op) {
  return take_slots<T>(c, tasn::detail::checked_mul(s.Ho, s.Wi, op), slots, op);
}

// attention_sample: the upsampled map (when squared), the marginals, the grid (where the caller
// gives no gy / gx), then the grid's and the sampling's per-thread scratch. The ONE layout of
// its workspace, for workspace_bytes and the operator.
template <class T>
struct AttentionSampleLayout {
  T* map = nullptr;
  T* my = nullptr;
  T* mx = nullptr;
  T* gy = nullptr;
  T* gx = nullptr;
  Slots<double> grid;
  Slots<sampler::Taps<T>> taps;
};
template <class T>
AttentionSampleLayout<T> attention_sample_layout(WorkspaceCarver& c, const sampler::AttentionSampleSizes& s,
                                                 const AttentionSampleArgs<T>& a, int slots, const char* op) {
  AttentionSampleLayout<T> l;
  if (a.options.squared) l.map = c.take<T>(tasn::detail::checked_mul(s.N, s.Hs * s.Ws, op));
  l.my = c.take<T>(tasn::detail::checked_mul(s.N, s.Hs, op));
  l.mx = c.take<T>(tasn::detail::checked_mul(s.N, s.Ws, op));
  if (!a.gy.present()) l.gy = c.take<T>(tasn::detail::checked_mul(s.N, s.Ho, op));
  if (!a.gx.present()) l.gx = c.take<T>(tasn::detail::checked_mul(s.N, s.Wo, op));
  l.grid = grid_layout(c, s.Hs, s.Ws, slots, op);
  l.taps = taps_layout<T>(c, s.Wo, slots, op);
  return l;
}

// ---- computation on checked views ---------------------------------------------------------------

// Which channels of sample mc (C planes of p pixels) count as distinct: a channel whose spatial
// sum equals that of an earlier channel is left out (SPEC 2). Sums in the CUDA kernel's order.
template <class T>
void distinct_channels(const T* mc, std::int64_t C, std::int64_t p, double* sums, unsigned char* keep) {
  for (std::int64_t c = 0; c < C; ++c)
    sums[c] = sampler::warp_order_sum(mc + c * p, p, [](T v) { return static_cast<double>(v); });
  for (std::int64_t c = 0; c < C; ++c) keep[c] = sampler::channel_is_distinct(sums, c) ? 1 : 0;
}

// out[n] = sum of the channels of m[n] (only the distinct ones when l.sums is set).
template <class T>
void channel_sum(const T* m, const sampler::MapSizes& s, const MapLayout& l, T* out) {
  const std::int64_t p = s.h * s.w, C = s.C;
  parallel_for_slots(0, s.N, [&](std::int64_t n, int slot) {
    const T* mc = m + n * C * p;
    unsigned char* keep = l.sums.base ? l.keep.at(slot) : nullptr;
    if (keep) distinct_channels(mc, C, p, l.sums.at(slot), keep);
    T* o = out + n * p;
    std::fill(o, o + p, T(0));
    for (std::int64_t c = 0; c < C; ++c)
      if (!keep || keep[c])
        for (std::int64_t i = 0; i < p; ++i) o[i] += mc[c * p + i];
  });
}

template <class T>
void upsample(const T* in, std::int64_t N, std::int64_t h, std::int64_t w, std::int64_t H, std::int64_t W,
              bool squared, T* out) {
  parallel_for(0, N * H, [&](std::int64_t r) {
    const std::int64_t n = r / H, y = r % H;
    for (std::int64_t x = 0; x < W; ++x) {
      const T v = sampler::upsample_at<T, T>(in + n * h * w, h, w, H, W, y, x);
      out[r * W + x] = squared ? v * v : v;
    }
  });
}

// Marginals of map (N, h, w) upsampled to (Hs, Ws), without materialising the upsampled map.
// A non-finite value or no positive mass on either axis: both axes uniform, fallback[n] = 1.
template <class T>
void marginals(const T* map, const sampler::MarginalSizes& s, T* my, T* mx, unsigned char* fallback) {
  const std::int64_t h = s.h, w = s.w, Hs = s.Hs, Ws = s.Ws;
  parallel_for(0, s.N, [&](std::int64_t n) {
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
    double mass_y = 0.0, mass_x = 0.0;
    for (std::int64_t i = 0; i < Hs; ++i) mass_y += static_cast<double>(ry[i]);
    for (std::int64_t i = 0; i < Ws; ++i) mass_x += static_cast<double>(rx[i]);
    // Either axis degenerate: both fall back together, so the grid becomes the identity.
    const bool fell_back = !finite || !sampler::marginal_usable(mass_y) || !sampler::marginal_usable(mass_x);
    for (std::int64_t i = 0; i < Hs; ++i)
      ry[i] = static_cast<T>(fell_back ? 1.0 / double(Hs) : static_cast<double>(ry[i]) / mass_y);
    for (std::int64_t i = 0; i < Ws; ++i)
      rx[i] = static_cast<T>(fell_back ? 1.0 / double(Ws) : static_cast<double>(rx[i]) / mass_x);
    if (fallback) fallback[n] = fell_back ? 1 : 0;
  });
}

// The grid of every sample: sampler::grid_of_sample, the routine the CUDA grid kernel runs.
template <class T>
void grid(const T* my, const T* mx, const sampler::GridSizes& s, const GridOptions& opt, const Slots<double>& scratch, T* gy,
          T* gx) {
  parallel_for_slots(0, s.N, [&](std::int64_t n, int slot) {
    sampler::SerialGroup g;
    sampler::grid_of_sample(g, my + n * s.Hs, mx + n * s.Ws, s.Hs, s.Ws, s.Ho, s.Wo, opt, scratch.at(slot),
                            gy + n * s.Ho, gx + n * s.Wo);
  });
}

template <class T>
void separable(const T* img, const sampler::SampleSizes& s, const T* gy, const T* gx, const Slots<sampler::Taps<T>>& taps,
               T* out) {
  const std::int64_t C = s.C, Hi = s.Hi, Wi = s.Wi, Ho = s.Ho, Wo = s.Wo;
  parallel_for_slots(0, s.N * C, [&](std::int64_t nc, int slot) {
    const std::int64_t n = nc / C;
    const T* plane = img + nc * Hi * Wi;
    sampler::Taps<T>* tx = taps.at(slot);
    for (std::int64_t x = 0; x < Wo; ++x) tx[x] = sampler::taps_of<T>(gx[n * Wo + x], Wi);
    for (std::int64_t y = 0; y < Ho; ++y) {
      const auto ty = sampler::taps_of<T>(gy[n * Ho + y], Hi);
      T* o = out + (nc * Ho + y) * Wo;
      for (std::int64_t x = 0; x < Wo; ++x) o[x] = sampler::sample_plane<T, T>(plane, Hi, Wi, ty, tx[x]);
    }
  });
}

}  // namespace detail_sampler

// ---- SPEC 2: attention maps ---------------------------------------------------------------------

// out (N, h, w) = sum over the channels of m (N, C, h, w); options.distinct: channels whose
// spatial sums equal an earlier channel's are counted once. Workspace: with distinct, C sums and
// C mask bytes per thread.
template <class T>
std::size_t workspace_bytes(const StructureMapArgs<T>& args) {
  constexpr const char* op = "structure_map";
  const auto s = sampler::check_args(op, args);
  tasn::detail::WorkspaceCarver c;
  detail_sampler::map_layout(c, s, args.options.distinct, num_slots(), op);
  return c.bytes();
}

template <class T>
void structure_map(const StructureMapArgs<T>& args, Workspace ws = {}) {
  constexpr const char* op = "structure_map";
  detail_sampler::check_type<T>();
  const auto s = sampler::check_args(op, args);
  tasn::detail::HostWorkspace hw(ws, workspace_bytes(args), op);
  if (args.options.check_finite) check_all_finite(args.m.data, args.m.numel(), "m", op);
  tasn::detail::WorkspaceCarver c(hw.data());
  const auto l = detail_sampler::map_layout(c, s, args.options.distinct, num_slots(), op);
  detail_sampler::channel_sum(args.m.data, s, l, args.out.data);
}

// Detail map (N, h, w). Training: one channel of m per sample: channels[n] when `channels` is
// given, else the pick_index(seed, first_sample + n, count)-th distinct channel; the chosen indices go to
// `chosen` when given. Evaluation (training = false): the plain sum (channels, chosen unused).
// A channels[n] outside [0, C) is refused with check_finite; without, that sample's map is NaN
// and chosen[n] = -1 (as on CUDA). Workspace: without channels, C sums and C mask bytes per thread.
template <class T>
std::size_t workspace_bytes(const DetailMapArgs<T>& args) {
  constexpr const char* op = "detail_map";
  const auto s = sampler::check_args(op, args);
  tasn::detail::WorkspaceCarver c;
  detail_sampler::map_layout(c, s, args.options.training && !args.channels.present(), num_slots(), op);
  return c.bytes();
}

template <class T>
void detail_map(const DetailMapArgs<T>& args, Workspace ws = {}) {
  constexpr const char* op = "detail_map";
  detail_sampler::check_type<T>();
  const auto s = sampler::check_args(op, args);
  const bool training = args.options.training;
  tasn::detail::HostWorkspace hw(ws, workspace_bytes(args), op);
  const std::int64_t* channels = training ? args.channels.data : nullptr;
  if (args.options.check_finite) {
    check_all_finite(args.m.data, args.m.numel(), "m", op);
    if (channels)
      for (std::int64_t n = 0; n < s.N; ++n)
        TASN_CHECK_ARG(channels[n] >= 0 && channels[n] < s.C, sampler::bad_channel_message(op, n, channels[n], s.C));
  }
  tasn::detail::WorkspaceCarver c(hw.data());
  const auto l = detail_sampler::map_layout(c, s, training && !channels, num_slots(), op);
  if (!training) {
    detail_sampler::channel_sum(args.m.data, s, l, args.out.data);
    return;
  }
  const std::int64_t p = s.h * s.w, C = s.C;
  const T* m = args.m.data;
  T* out = args.out.data;
  std::int64_t* chosen = args.chosen.data;
  const std::uint64_t seed = args.options.seed;
  const std::int64_t first = args.options.first_sample;
  parallel_for_slots(0, s.N, [&](std::int64_t n, int slot) {
    const T* mc = m + n * C * p;
    std::int64_t ch = 0;
    if (channels) {
      ch = channels[n];
    } else {
      unsigned char* keep = l.keep.at(slot);
      detail_sampler::distinct_channels(mc, C, p, l.sums.at(slot), keep);
      ch = sampler::pick_kept_channel(keep, C, seed, first + n);
    }
    const bool ok = ch >= 0 && ch < C;
    if (chosen) chosen[n] = ok ? ch : -1;
    if (ok) std::copy(mc + ch * p, mc + (ch + 1) * p, out + n * p);
    else std::fill(out + n * p, out + (n + 1) * p, std::numeric_limits<T>::quiet_NaN());
  });
}

// out (N, H, W) = bilinear upsampling (align_corners = true) of in (N, h, w); options.squared:
// then squared element-wise (the official structure map). No workspace.
template <class V>
std::size_t workspace_bytes(const UpsampleArgs<V>& args) {
  sampler::check_args("upsample_bilinear", args);
  return 0;
}

template <class V>
void upsample_bilinear(const UpsampleArgs<V>& args, Workspace ws = {}) {
  constexpr const char* op = "upsample_bilinear";
  detail_sampler::check_type<V>();
  const auto s = sampler::check_args(op, args);
  tasn::detail::HostWorkspace hw(ws, workspace_bytes(args), op);
  if (args.options.check_finite) check_all_finite(args.in.data, args.in.numel(), "in", op);
  detail_sampler::upsample(args.in.data, s.N, s.h, s.w, s.H, s.W, args.options.squared, args.out.data);
}

// ---- SPEC 3a: marginals -------------------------------------------------------------------------

// Row and column marginals my (N, Hs), mx (N, Ws) of map (N, h, w) bilinearly upsampled to the
// marginals' sizes (Hs = h, Ws = w: none), without materialising the upsampled map:
// my[n, y] = max over x, mx[n, x] = max over y, negatives as 0, each normalised to sum 1. A sample
// whose marginal has zero or non-finite mass (or, with check_finite = false, whose map holds a
// NaN/Inf) gets the uniform marginals; fallback[n] (optional) is then 1 (else 0). No workspace.
template <class V>
std::size_t workspace_bytes(const MarginalsArgs<V>& args) {
  sampler::check_args("attention_marginals", args);
  return 0;
}

template <class V>
void attention_marginals(const MarginalsArgs<V>& args, Workspace ws = {}) {
  constexpr const char* op = "attention_marginals";
  detail_sampler::check_type<V>();
  const auto s = sampler::check_args(op, args);
  tasn::detail::HostWorkspace hw(ws, workspace_bytes(args), op);
  if (args.options.check_finite) check_all_finite(args.map.data, args.map.numel(), "map", op);
  detail_sampler::marginals(args.map.data, s, args.my.data, args.mx.data, args.fallback.data);
}

// ---- SPEC 3b, 3c: the grid ------------------------------------------------------------------------

// Separable sampling grid gy (N, Ho), gx (N, Wo) from marginals my (N, Hs), mx (N, Ws):
// sampler::grid_of_sample per sample (normalisation, magnification limit, CDF inversion). With
// check_finite a NaN/Inf marginal is refused; without, that sample gets the identity grid.
// Workspace: sampler::grid_scratch_elems(Hs, Ws) doubles per thread.
template <class V>
std::size_t workspace_bytes(const GridArgs<V>& args) {
  constexpr const char* op = "sampling_grid";
  const auto s = sampler::check_args(op, args);
  tasn::detail::WorkspaceCarver c;
  detail_sampler::grid_layout(c, s.Hs, s.Ws, num_slots(), op);
  return c.bytes();
}

template <class V>
void sampling_grid(const GridArgs<V>& args, Workspace ws = {}) {
  constexpr const char* op = "sampling_grid";
  detail_sampler::check_type<V>();
  const auto s = sampler::check_args(op, args);
  tasn::detail::HostWorkspace hw(ws, workspace_bytes(args), op);
  if (args.options.check_finite) {
    check_all_finite(args.my.data, args.my.numel(), "my", op);
    check_all_finite(args.mx.data, args.mx.numel(), "mx", op);
  }
  tasn::detail::WorkspaceCarver c(hw.data());
  const auto scratch = detail_sampler::grid_layout(c, s.Hs, s.Ws, num_slots(), op);
  detail_sampler::grid(args.my.data, args.mx.data, s, args.options, scratch, args.gy.data, args.gx.data);
}

// ---- SPEC 3d: bilinear sampling -------------------------------------------------------------------

// out (N, C, Ho, Wo) = img (N, C, Hi, Wi) sampled at (gx[n, x], gy[n, y]); zeros padding; a
// non-finite grid value (check_finite = false) gives NaN outputs. Workspace: Wo taps per thread.
template <class T>
std::size_t workspace_bytes(const SampleSeparableArgs<T>& args) {
  constexpr const char* op = "sample_separable";
  const auto s = sampler::check_args(op, args);
  tasn::detail::WorkspaceCarver c;
  detail_sampler::taps_layout<T>(c, s.Wo, num_slots(), op);
  return c.bytes();
}

template <class T>
void sample_separable(const SampleSeparableArgs<T>& args, Workspace ws = {}) {
  constexpr const char* op = "sample_separable";
  detail_sampler::check_type<T>();
  const auto s = sampler::check_args(op, args);
  tasn::detail::HostWorkspace hw(ws, workspace_bytes(args), op);
  if (args.options.check_finite) {
    check_all_finite(args.img.data, args.img.numel(), "img", op);
    check_all_finite(args.gy.data, args.gy.numel(), "gy", op);
    check_all_finite(args.gx.data, args.gx.numel(), "gx", op);
  }
  tasn::detail::WorkspaceCarver c(hw.data());
  const auto taps = detail_sampler::taps_layout<T>(c, s.Wo, num_slots(), op);
  detail_sampler::separable(args.img.data, s, args.gy.data, args.gx.data, taps, args.out.data);
}

// dimg (N, C, Hi, Wi) = the transpose of sample_separable applied to dout (N, C, Ho, Wo).
// Deterministic: each (n, c) plane is accumulated in a fixed order (two separable passes, first
// along x into a (Ho, Wi) row buffer, then along y), no atomics: same input, bit-identical output.
// Workspace: the row buffer (Ho x Wi values) per thread.
template <class T>
std::size_t workspace_bytes(const SampleSeparableBackwardArgs<T>& args) {
  constexpr const char* op = "sample_separable_backward";
  const auto s = sampler::check_args(op, args);
  tasn::detail::WorkspaceCarver c;
  detail_sampler::rows_layout<T>(c, s, num_slots(), op);
  return c.bytes();
}

template <class T>
void sample_separable_backward(const SampleSeparableBackwardArgs<T>& args, Workspace ws = {}) {
  constexpr const char* op = "sample_separable_backward";
  detail_sampler::check_type<T>();
  const auto s = sampler::check_args(op, args);
  tasn::detail::HostWorkspace hw(ws, workspace_bytes(args), op);
  if (args.options.check_finite) {
    check_all_finite(args.dout.data, args.dout.numel(), "dout", op);
    check_all_finite(args.gy.data, args.gy.numel(), "gy", op);
    check_all_finite(args.gx.data, args.gx.numel(), "gx", op);
  }
  tasn::detail::WorkspaceCarver c(hw.data());
  const auto rows_of = detail_sampler::rows_layout<T>(c, s, num_slots(), op);
  const std::int64_t C = s.C, Hi = s.Hi, Wi = s.Wi, Ho = s.Ho, Wo = s.Wo;
  const T *dout = args.dout.data, *gy = args.gy.data, *gx = args.gx.data;
  T* dimg = args.dimg.data;
  parallel_for_slots(0, s.N * C, [&](std::int64_t nc, int slot) {
    const std::int64_t n = nc / C;
    T* rows = rows_of.at(slot);  // pass 1: along x
    std::fill(rows, rows + Ho * Wi, T(0));
    for (std::int64_t y = 0; y < Ho; ++y) {
      const T* d = dout + (nc * Ho + y) * Wo;
      T* r = rows + y * Wi;
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
      const T* r = rows + y * Wi;
      if (sampler::tap_in(t.i0, Hi))
        for (std::int64_t x = 0; x < Wi; ++x) di[t.i0 * Wi + x] += t.w0 * r[x];
      if (sampler::tap_in(t.i0 + 1, Hi))
        for (std::int64_t x = 0; x < Wi; ++x) di[(t.i0 + 1) * Wi + x] += t.w1 * r[x];
    }
  });
}

// General grid (N, Ho, Wo, 2) of (x, y): out = grid_sample(img, grid, bilinear, zeros,
// align_corners). No workspace.
template <class T>
std::size_t workspace_bytes(const SampleGridArgs<T>& args) {
  sampler::check_args("sample_grid", args);
  return 0;
}

template <class T>
void sample_grid(const SampleGridArgs<T>& args, Workspace ws = {}) {
  constexpr const char* op = "sample_grid";
  detail_sampler::check_type<T>();
  const auto s = sampler::check_args(op, args);
  tasn::detail::HostWorkspace hw(ws, workspace_bytes(args), op);
  if (args.options.check_finite) {
    check_all_finite(args.img.data, args.img.numel(), "img", op);
    check_all_finite(args.grid.data, args.grid.numel(), "grid", op);
  }
  const std::int64_t C = s.C, Hi = s.Hi, Wi = s.Wi, P = s.Ho * s.Wo;
  const T *img = args.img.data, *grid = args.grid.data;
  T* out = args.out.data;
  parallel_for(0, s.N * C, [&](std::int64_t nc) {
    const std::int64_t n = nc / C;
    const T* plane = img + nc * Hi * Wi;
    for (std::int64_t i = 0; i < P; ++i) {
      const T* g = grid + (n * P + i) * 2;
      out[nc * P + i] = sampler::sample_plane<T, T>(plane, Hi, Wi, sampler::taps_of<T>(g[1], Hi),
                                                    sampler::taps_of<T>(g[0], Wi));
    }
  });
}

// Backward of sample_grid: dimg (optional) and dgrid (optional, needs img), as grid_sample.
// Deterministic (each thread owns whole samples). No workspace.
template <class T>
std::size_t workspace_bytes(const SampleGridBackwardArgs<T>& args) {
  sampler::check_args("sample_grid_backward", args);
  return 0;
}

template <class T>
void sample_grid_backward(const SampleGridBackwardArgs<T>& args, Workspace ws = {}) {
  constexpr const char* op = "sample_grid_backward";
  detail_sampler::check_type<T>();
  const auto s = sampler::check_args(op, args);
  tasn::detail::HostWorkspace hw(ws, workspace_bytes(args), op);
  T* dimg = args.dimg.data;
  T* dgrid = args.dgrid.data;
  if (args.options.check_finite) {
    if (dgrid) check_all_finite(args.img.data, args.img.numel(), "img", op);
    check_all_finite(args.grid.data, args.grid.numel(), "grid", op);
    check_all_finite(args.dout.data, args.dout.numel(), "dout", op);
  }
  const std::int64_t C = s.C, Hi = s.Hi, Wi = s.Wi, P = s.Ho * s.Wo;
  const T *img = args.img.data, *grid = args.grid.data, *dout = args.dout.data;
  parallel_for(0, s.N, [&](std::int64_t n) {
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

// Attention map (N, Ha, Wa) + image (N, C, Hi, Wi) -> sampled image out (N, C, Ho, Wo): the
// marginals of the map upsampled to (Hs, Ws) (options.upsample_h / upsample_w, 0: the image
// size; squared first when options.squared), the grid (options.grid: dense, iters, mode) and
// separable sampling. The grid goes to gy (N, Ho) / gx (N, Wo) when given, fallback (N) as in
// attention_marginals. check_finite refuses NaN/Inf in img and attention; without it a non-finite
// attention map gives that sample the identity grid. Workspace: detail_sampler::
// attention_sample_layout (the upsampled map when squared, the marginals, the grid not returned,
// the grid's and the sampling's per-thread scratch).
template <class T>
std::size_t workspace_bytes(const AttentionSampleArgs<T>& args) {
  constexpr const char* op = "attention_sample";
  const auto s = sampler::check_args(op, args);
  tasn::detail::WorkspaceCarver c;
  detail_sampler::attention_sample_layout(c, s, args, num_slots(), op);
  return c.bytes();
}

template <class T>
void attention_sample(const AttentionSampleArgs<T>& args, Workspace ws = {}) {
  constexpr const char* op = "attention_sample";
  detail_sampler::check_type<T>();
  const auto s = sampler::check_args(op, args);
  tasn::detail::HostWorkspace hw(ws, workspace_bytes(args), op);
  if (args.options.check_finite) {
    check_all_finite(args.img.data, args.img.numel(), "img", op);
    check_all_finite(args.attention.data, args.attention.numel(), "attention", op);
  }
  tasn::detail::WorkspaceCarver c(hw.data());
  const auto l = detail_sampler::attention_sample_layout(c, s, args, num_slots(), op);
  const T* a = args.attention.data;
  std::int64_t h = s.Ha, w = s.Wa;
  if (args.options.squared) {  // squaring happens after upsampling: materialise the upsampled map
    detail_sampler::upsample(a, s.N, s.Ha, s.Wa, s.Hs, s.Ws, true, l.map);
    a = l.map;
    h = s.Hs;
    w = s.Ws;
  }
  detail_sampler::marginals(a, sampler::MarginalSizes{s.N, h, w, s.Hs, s.Ws}, l.my, l.mx, args.fallback.data);
  T* gy = args.gy.present() ? args.gy.data : l.gy;
  T* gx = args.gx.present() ? args.gx.data : l.gx;
  detail_sampler::grid(l.my, l.mx, sampler::GridSizes{s.N, s.Hs, s.Ws, s.Ho, s.Wo}, args.options.grid, l.grid, gy, gx);
  detail_sampler::separable(args.img.data, sampler::SampleSizes{s.N, s.C, s.Hi, s.Wi, s.Ho, s.Wo}, gy, gx, l.taps,
                            args.out.data);
}

}  // namespace tasn::cpu
