// examples/train/diagnostics.h - what TASN's attention does, made visible: how many sampled
// rows and columns land on the fine-grained detail during evaluation (DetailCoverage) and PNG
// dumps of inputs, attention maps and sampled images (--dump-attention). Both read the model's
// attention views (Model::attention_views()), so the training loop needs no knowledge of TasnNet.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "data/batch_loader.h"
#include "data/synthetic.h"
#include "png.h"
#include "tasn/core/common.h"
#include "train/config.h"
#include "train/datasets.h"
#include "train/model.h"

namespace tasn::train {

// DEMO-NOTES diagnostic: output rows + columns of TASN's structure image that fall on the detail
// patch, per image whose data set knows the patch, against the same count for a uniform grid (the
// baseline's resize). evaluate() feeds it every batch after predict(); a model without attention
// views (the baseline) or data without detail boxes leave the result at -1.
class DetailCoverage {
 public:
  // Counts batch `b` of `d`; the model's attention views must be those of b (call after predict).
  void add(const Model& m, const Dataset& d, const data::Batch& b) {
    const TasnViews* views = m.attention_views();
    if (!views) return;
    const TasnViews& v = *views;
    const std::int64_t O = v.structure_image.size[2], S = d.side();
    for (std::int64_t i = 0; i < b.size(); ++i) {
      data::Box box;
      if (!d.detail_box(b.indices[i], box)) continue;
      ++boxed_;
      for (std::int64_t o = 0; o < O; ++o) {
        const double y = (v.gy_structure.data[i * O + o] + 1.0) * double(S - 1) / 2, x = (v.gx_structure.data[i * O + o] + 1.0) * double(S - 1) / 2;
        const double uy = (double(o) / double(O - 1)) * double(S - 1);
        // pixel k covers [k - 0.5, k + 0.5): count samples inside the patch's pixel area
        rows_ += (y >= box.y0 - 0.5 && y < box.y1 - 0.5) + (x >= box.x0 - 0.5 && x < box.x1 - 0.5);
        uniform_ += (uy >= box.y0 - 0.5 && uy < box.y1 - 0.5) + (uy >= box.x0 - 0.5 && uy < box.x1 - 0.5);
      }
    }
  }
  // The counts as kSums doubles (to sum them over data-parallel ranks) and back.
  static constexpr std::size_t kSums = 3;
  void save(double* v) const {
    v[0] = rows_;
    v[1] = uniform_;
    v[2] = double(boxed_);
  }
  void load(const double* v) {
    rows_ = v[0];
    uniform_ = v[1];
    boxed_ = static_cast<std::int64_t>(v[2]);
  }
  // The means per counted image into r.detail_rows / r.uniform_rows (unchanged when none was counted).
  void finish(EvalResult& r) const {
    if (!boxed_) return;
    r.detail_rows = rows_ / double(boxed_);
    r.uniform_rows = uniform_ / double(boxed_);
  }

 private:
  double rows_ = 0, uniform_ = 0;
  std::int64_t boxed_ = 0;
};

// ---- attention dumps ----------------------------------------------------------------------------

namespace detail_dump {

// (3, h, w) network-normalised floats -> RGB bytes, stretched to the image's own range.
inline std::vector<unsigned char> to_rgb(const float* x, std::int64_t h, std::int64_t w) {
  const auto [lo, hi] = std::minmax_element(x, x + 3 * h * w);
  const float a = *lo, s = *hi > *lo ? 255.0f / (*hi - *lo) : 0.0f;
  std::vector<unsigned char> rgb(static_cast<std::size_t>(3 * h * w));
  for (std::int64_t p = 0; p < h * w; ++p)
    for (int c = 0; c < 3; ++c) rgb[p * 3 + c] = static_cast<unsigned char>(std::lround((x[c * h * w + p] - a) * s));
  return rgb;
}

// (h, w) map -> grey RGB, nearest-neighbour enlarged to (H, W).
inline std::vector<unsigned char> map_rgb(const float* m, std::int64_t h, std::int64_t w, std::int64_t H, std::int64_t W) {
  const auto [lo, hi] = std::minmax_element(m, m + h * w);
  const float s = *hi > *lo ? 255.0f / (*hi - *lo) : 0.0f;
  std::vector<unsigned char> rgb(static_cast<std::size_t>(3 * H * W));
  for (std::int64_t y = 0; y < H; ++y)
    for (std::int64_t x = 0; x < W; ++x) {
      const auto v = static_cast<unsigned char>(std::lround((m[(y * h / H) * w + x * w / W] - *lo) * s));
      for (int c = 0; c < 3; ++c) rgb[(y * W + x) * 3 + c] = v;
    }
  return rgb;
}

}  // namespace detail_dump

// For the first `count` images of the split: NNN-input.png, NNN-structure-map.png,
// NNN-detail-map.png, NNN-structure.png, NNN-detail.png (evaluation mode). `m` must have
// attention views (TASN); InvalidArgument otherwise, before anything is written.
inline std::vector<std::string> dump_attention(Model& m, const Dataset& d, std::int64_t count, const std::string& dir) {
  TASN_CHECK_ARG(m.attention_views(), "dump_attention: the ", m.name(), " model has no attention maps to dump");
  std::filesystem::create_directories(dir);
  const std::int64_t n = std::min(count, d.size());
  std::vector<float> images;
  for (std::int64_t i = 0; i < n; ++i) {
    const auto e = d.get(i, 0);
    images.insert(images.end(), e.image.begin(), e.image.end());
  }
  m.predict(images, n);
  const TasnViews& v = *m.attention_views();
  const std::int64_t S = d.side(), O = v.structure_image.size[2], h = v.structure_map.size[1], w = v.structure_map.size[2];
  std::vector<std::string> files;
  for (std::int64_t i = 0; i < n; ++i) {
    char pre[32];
    std::snprintf(pre, sizeof pre, "%03lld-", (long long)i);
    auto put = [&](const std::string& name, const std::vector<unsigned char>& rgb, std::int64_t W, std::int64_t H) {
      files.push_back(dir + "/" + pre + name + ".png");
      tasn::examples::write_png(files.back(), rgb, static_cast<int>(W), static_cast<int>(H));
    };
    put("input", detail_dump::to_rgb(images.data() + i * 3 * S * S, S, S), S, S);
    put("structure-map", detail_dump::map_rgb(v.structure_map.data + i * h * w, h, w, S, S), S, S);
    put("detail-map", detail_dump::map_rgb(v.detail_map.data + i * h * w, h, w, S, S), S, S);
    put("structure", detail_dump::to_rgb(v.structure_image.data + i * 3 * O * O, O, O), O, O);
    put("detail", detail_dump::to_rgb(v.detail_image.data + i * 3 * O * O, O, O), O, O);
  }
  return files;
}

}  // namespace tasn::train
