// examples/train/datasets.h - what the trainer trains and evaluates on: the Dataset interface
// (normalised images with labels, the augmentation keyed by epoch, the detail box when known), the
// generated fine-grained set held as 8-bit pixels, and data sets given as loader functions (the
// real-image folders of train/folder_data.h).
#pragma once

#include <cmath>
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "data/batch_loader.h"
#include "data/synthetic.h"
#include "tasn/core/common.h"
#include "tasn/core/parallel.h"

namespace tasn::train {

// A split of images (3, side, side), already normalised for the network.
class Dataset {
 public:
  virtual ~Dataset() = default;
  virtual std::int64_t size() const = 0;
  virtual std::int64_t side() const = 0;
  // Example i; `epoch` varies the augmentation of training splits (ignored elsewhere).
  virtual data::Example get(std::int64_t i, std::int64_t epoch) const = 0;
  // Where the fine-grained detail is, when the data set knows (the generated set does).
  virtual bool detail_box(std::int64_t, data::Box&) const { return false; }
  // What the data are (part of a resumed run's training signature).
  virtual std::string describe() const { return ""; }
};

// The generated set, made once (in parallel) and kept as 8-bit pixels; values (x - 0.5) / 0.25.
class SyntheticDataset : public Dataset {
 public:
  SyntheticDataset(const data::SyntheticConfig& c, data::Split split, std::int64_t n) : side_(c.size) {
    desc_ = "synthetic seed=" + std::to_string(c.seed) + " split=" + std::to_string(static_cast<std::uint64_t>(split)) +
            " size=" + std::to_string(c.size) + " patch=" + std::to_string(c.patch) + " clutter=" +
            std::to_string(c.clutter) + " classes=" + std::to_string(c.classes);
    TASN_CHECK_ARG(n >= 1, "synthetic data: the split must hold >= 1 images, got ", n);
    c.validate();  // before the parallel loop: an exception must not leave an OpenMP region
    const std::int64_t per = 3 * c.size * c.size;
    pixels_.resize(static_cast<std::size_t>(n * per));
    labels_.resize(static_cast<std::size_t>(n));
    boxes_.resize(static_cast<std::size_t>(n));
    cpu::parallel_for(0, n, [&](std::int64_t i) {
      const data::SyntheticSample s = data::make_sample(c, split, i);
      for (std::int64_t k = 0; k < per; ++k)
        pixels_[i * per + k] = static_cast<unsigned char>(std::lround(s.image[k] * 255.0f));
      labels_[i] = s.label;
      boxes_[i] = s.patch;
    });
  }
  std::int64_t size() const override { return static_cast<std::int64_t>(labels_.size()); }
  std::int64_t side() const override { return side_; }
  data::Example get(std::int64_t i, std::int64_t) const override {
    const std::int64_t per = 3 * side_ * side_;
    data::Example e;
    e.label = labels_.at(static_cast<std::size_t>(i));
    e.image.resize(static_cast<std::size_t>(per));
    for (std::int64_t k = 0; k < per; ++k) e.image[k] = (pixels_[i * per + k] / 255.0f - 0.5f) * 4.0f;
    return e;
  }
  bool detail_box(std::int64_t i, data::Box& b) const override {
    b = boxes_.at(static_cast<std::size_t>(i));
    return true;
  }
  std::string describe() const override { return desc_; }

 private:
  std::int64_t side_;
  std::string desc_;
  std::vector<unsigned char> pixels_;
  std::vector<std::int64_t> labels_;
  std::vector<data::Box> boxes_;
};

// Any data set given as a loader function (real images: see tasn_train.cpp).
class FunctionDataset : public Dataset {
 public:
  FunctionDataset(std::int64_t n, std::int64_t side, std::function<data::Example(std::int64_t, std::int64_t)> f,
                  std::string description = "")
      : n_(n), side_(side), f_(std::move(f)), desc_(std::move(description)) {}
  std::string describe() const override { return desc_; }
  std::int64_t size() const override { return n_; }
  std::int64_t side() const override { return side_; }
  data::Example get(std::int64_t i, std::int64_t epoch) const override { return f_(i, epoch); }

 private:
  std::int64_t n_, side_;
  std::function<data::Example(std::int64_t, std::int64_t)> f_;
  std::string desc_;
};

}  // namespace tasn::train
