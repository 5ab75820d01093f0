// python/csrc/data.cpp - tasn::synthetic_images: the example trainer's built-in generated data set
// (examples/data/synthetic.h, ../shared/DEMO-NOTES.md) as tensors, so the PyTorch trainer
// (examples/pytorch/train_tasn.py) trains on the very images the C++ trainer does. Sample i of a
// split depends only on (seed, split, i). A catch-all kernel (no tensor inputs), CPU tensors out.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <string>

#include "data/synthetic.h"
#include "tasn/core/parallel.h"

namespace tasn_torch {
namespace {

tasn::data::Split split_of(c10::string_view s) {
  if (s == "train") return tasn::data::Split::Train;
  if (s == "test") return tasn::data::Split::Test;
  if (s == "val") return tasn::data::Split::Val;
  TORCH_CHECK(false, "tasn::synthetic_images: split must be 'train', 'test' or 'val', got '",
              std::string(s.data(), s.size()), "'");
}

// images (count, 3, size, size) uint8 (round(255 v) of the generator's [0, 1] values, as the C++
// trainer stores them), labels (count) int64, boxes (count, 4) int64: the detail patch
// [y0, x0, y1, x1) (for diagnostics; never a training input).
std::tuple<at::Tensor, at::Tensor, at::Tensor> synthetic_images(std::int64_t count, c10::string_view split,
                                                                std::int64_t seed, std::int64_t size,
                                                                std::int64_t patch, std::int64_t clutter,
                                                                std::int64_t classes, std::int64_t first) {
  TORCH_CHECK(count >= 0 && first >= 0, "tasn::synthetic_images: count and first must be >= 0, got ", count, " and ",
              first);
  TORCH_CHECK(first <= std::numeric_limits<std::int64_t>::max() - count,
              "tasn::synthetic_images: first + count overflows int64 (first ", first, ", count ", count, ")");
  tasn::data::SyntheticConfig c;
  c.size = size;
  c.patch = patch;
  c.clutter = clutter;
  c.classes = classes;
  c.seed = static_cast<std::uint64_t>(seed);
  const tasn::data::Split sp = split_of(split);
  try {
    c.validate();
  } catch (const tasn::Error& e) {
    TORCH_CHECK(false, "tasn::synthetic_images: ", e.what());
  }
  at::Tensor images = at::empty({count, 3, size, size}, at::kByte);
  at::Tensor labels = at::empty({count}, at::kLong), boxes = at::empty({count, 4}, at::kLong);
  const std::int64_t per = 3 * size * size;
  unsigned char* px = images.data_ptr<unsigned char>();
  std::int64_t* lb = labels.data_ptr<std::int64_t>();
  std::int64_t* bx = boxes.data_ptr<std::int64_t>();
  tasn::cpu::parallel_for(0, count, [&](std::int64_t i) {
    const tasn::data::SyntheticSample s = tasn::data::make_sample(c, sp, first + i);
    for (std::int64_t k = 0; k < per; ++k) px[i * per + k] = static_cast<unsigned char>(std::lround(s.image[k] * 255.0f));
    lb[i] = s.label;
    bx[i * 4 + 0] = s.patch.y0;
    bx[i * 4 + 1] = s.patch.x0;
    bx[i * 4 + 2] = s.patch.y1;
    bx[i * 4 + 3] = s.patch.x1;
  });
  return {images, labels, boxes};
}

}  // namespace
}  // namespace tasn_torch

TORCH_LIBRARY_FRAGMENT(tasn, m) {
  m.def("synthetic_images(int count, str split=\"train\", int seed=1, int size=96, int patch=16, int clutter=6,"
        " int classes=8, int first=0) -> (Tensor, Tensor, Tensor)",
        &tasn_torch::synthetic_images);
}
