// examples/data/synthetic.h - the built-in generated fine-grained data set of the example trainer
// (../shared/DEMO-NOTES.md): every class shares the coarse appearance (a large ellipse "object" of
// random colour and pose on a noisy background with clutter discs) and differs only in a small
// striped patch on the object: 4 orientations (0, 45, 90, 135 degrees) x 2 periods. Period-6
// stripes stay legible after a uniform 3x downsampling, period-2 stripes do not: some classes are
// coarse-separable, some only by details, the case TASN exists for.
//
// Deterministic: sample i of a split depends only on (seed, split, i), through a counter-based
// generator (no std:: distributions, so every platform makes the same images).
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "tasn/core/random.h"
#include "tasn/core/common.h"

namespace tasn::data {

struct SyntheticConfig {
  std::int64_t size = 96;      // image side (pixels)
  std::int64_t patch = 16;     // detail patch side, including its 1-px black border
  std::int64_t clutter = 6;    // background discs
  std::int64_t classes = 8;    // 4 orientations x 2 periods (<= 8)
  std::uint64_t seed = 1;

  void validate() const {
    TASN_CHECK_ARG(classes >= 1 && classes <= 8, "synthetic data: classes must be in [1, 8], got ", classes);
    TASN_CHECK_ARG(size >= 4 * patch && patch >= 4, "synthetic data: size ", size, " must be at least 4 x patch ", patch,
                   " (patch >= 4)");
  }
};

struct Box {
  std::int64_t y0, x0, y1, x1;  // [y0, y1) x [x0, x1)
};

struct SyntheticSample {
  std::vector<float> image;  // (3, size, size), values in [0, 1]
  std::int64_t label;
  Box patch;                 // where the detail is (for diagnostics only; never a training input)
};

enum class Split : std::uint64_t { Train = 1, Test = 2, Val = 3 };  // Val: for tuning, never the test split

// Key of the draws of sample `index` of `split`.
inline std::uint64_t sample_key(std::uint64_t seed, Split split, std::int64_t index) {
  return mix64(mix64(seed) ^ (static_cast<std::uint64_t>(split) << 60) ^ static_cast<std::uint64_t>(index));
}

// Stripe class k: orientation (k % 4) * 45 degrees, period 2 (k < 4) or 6 (k >= 4) pixels.
inline double stripe_period(std::int64_t label) { return label < 4 ? 2.0 : 6.0; }
inline double stripe_angle(std::int64_t label) { return static_cast<double>(label % 4) * 0.7853981633974483; }

inline SyntheticSample make_sample(const SyntheticConfig& c, Split split, std::int64_t index) {
  c.validate();
  CounterRng r(sample_key(c.seed, split, index));
  const std::int64_t S = c.size;
  SyntheticSample out;
  out.label = static_cast<std::int64_t>(r.uniform() * static_cast<double>(c.classes)) % c.classes;
  out.image.assign(static_cast<std::size_t>(3 * S * S), 0.f);
  auto put = [&](std::int64_t y, std::int64_t x, const double rgb[3]) {
    for (int ch = 0; ch < 3; ++ch) out.image[(ch * S + y) * S + x] = static_cast<float>(std::fmin(1.0, std::fmax(0.0, rgb[ch])));
  };
  // background: a random colour with pixel noise
  const double bg[3] = {r.uniform(0.2, 0.6), r.uniform(0.2, 0.6), r.uniform(0.2, 0.6)};
  for (std::int64_t y = 0; y < S; ++y)
    for (std::int64_t x = 0; x < S; ++x) {
      const double v[3] = {bg[0] + 0.08 * r.normal(), bg[1] + 0.08 * r.normal(), bg[2] + 0.08 * r.normal()};
      put(y, x, v);
    }
  // clutter discs
  for (std::int64_t k = 0; k < c.clutter; ++k) {
    const double cy = r.uniform(0, double(S)), cx = r.uniform(0, double(S)), rad = r.uniform(3, double(S) / 10);
    const double col[3] = {r.uniform(), r.uniform(), r.uniform()};
    for (std::int64_t y = 0; y < S; ++y)
      for (std::int64_t x = 0; x < S; ++x)
        if ((y - cy) * (y - cy) + (x - cx) * (x - cx) < rad * rad) put(y, x, col);
  }
  // the object: a rotated ellipse, large
  const double ey = r.uniform(0.4, 0.6) * S, ex = r.uniform(0.4, 0.6) * S;
  const double ay = r.uniform(0.28, 0.4) * S, ax = r.uniform(0.28, 0.4) * S, th = r.uniform(0, 3.141592653589793);
  const double obj[3] = {r.uniform(0.3, 1.0), r.uniform(0.3, 1.0), r.uniform(0.3, 1.0)};
  const double cth = std::cos(th), sth = std::sin(th);
  auto inside = [&](double y, double x) {
    const double dy = y - ey, dx = x - ex;
    const double u = dy * cth + dx * sth, v = -dy * sth + dx * cth;
    return (u * u) / (ay * ay) + (v * v) / (ax * ax) < 1.0;
  };
  for (std::int64_t y = 0; y < S; ++y)
    for (std::int64_t x = 0; x < S; ++x)
      if (inside(y + 0.5, x + 0.5)) {
        const double v[3] = {obj[0] + 0.05 * r.normal(), obj[1] + 0.05 * r.normal(), obj[2] + 0.05 * r.normal()};
        put(y, x, v);
      }
  // the detail: a striped patch whose four corners lie inside the object
  const std::int64_t P = c.patch;
  std::int64_t py = 0, px = 0;
  for (int attempt = 0; attempt < 1000; ++attempt) {
    py = static_cast<std::int64_t>(r.uniform(0, double(S - P)));
    px = static_cast<std::int64_t>(r.uniform(0, double(S - P)));
    if (inside(py, px) && inside(py + P, px) && inside(py, px + P) && inside(py + P, px + P)) break;
  }
  out.patch = {py, px, py + P, px + P};
  const double period = stripe_period(out.label), ang = stripe_angle(out.label);
  const double ca = std::cos(ang), sa = std::sin(ang), phase = r.uniform(0, period);
  for (std::int64_t y = 0; y < P; ++y)
    for (std::int64_t x = 0; x < P; ++x) {
      double v;
      if (y == 0 || x == 0 || y == P - 1 || x == P - 1) {
        v = 0.0;  // 1-px black border
      } else {
        const double t = std::fmod(x * ca + y * sa + phase + 1000 * period, period);
        v = t < period / 2 ? 0.95 : 0.05;
      }
      const double rgb[3] = {v, v, v};
      put(py + y, px + x, rgb);
    }
  return out;
}

}  // namespace tasn::data
