// examples/data/image_folder.h - real data for the example trainer: the CUB-200-2011 directory
// layout (images.txt, image_class_labels.txt, train_test_split.txt, images/) and a generic list
// file ("relative/path label train|test" per line) for Stanford Cars, iNaturalist or anything
// else; JPEG/PNG decoding with Debian's stb (libstb-dev); SPEC 5 preprocessing (shorter side
// resized, random or centre crop, horizontal flip, per-channel mean subtracted, no std scaling).
//
// Every problem is a tasn::InvalidArgument naming the file (and line): a missing directory or
// file, a malformed line, a label out of range, inconsistent ids, an empty split, an unreadable or
// corrupt image.
#pragma once

#include <stb/stb_image.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "data/parse.h"
#include "data/synthetic.h"  // sample_key
#include "tasn/core/random.h"
#include "tasn/core/common.h"

namespace tasn::data {

struct ImageRecord {
  std::string path;  // absolute or relative to the working directory
  std::int64_t label = 0;
  bool train = true;
};

namespace detail_folder {

inline std::vector<std::string> read_lines(const std::filesystem::path& p) {
  std::ifstream in(p);
  TASN_CHECK_ARG(static_cast<bool>(in), "data: cannot read ", p.string());
  std::vector<std::string> lines;
  for (std::string l; std::getline(in, l);) {
    if (!l.empty() && l.back() == '\r') l.pop_back();
    lines.push_back(l);
  }
  return lines;
}

// "id value" lines -> map id -> value (value read as a string)
inline std::map<std::int64_t, std::string> read_id_table(const std::filesystem::path& p) {
  std::map<std::int64_t, std::string> t;
  const auto lines = read_lines(p);
  for (std::size_t i = 0; i < lines.size(); ++i) {
    if (lines[i].find_first_not_of(" \t") == std::string::npos) continue;
    std::istringstream ss(lines[i]);
    std::int64_t id;
    std::string v;
    TASN_CHECK_ARG(static_cast<bool>(ss >> id >> v), "data: ", p.string(), ":", i + 1, ": expected \"id value\", got \"",
                   lines[i], "\"");
    TASN_CHECK_ARG(t.emplace(id, v).second, "data: ", p.string(), ":", i + 1, ": id ", id, " appears twice");
  }
  return t;
}

inline void check_splits(const std::vector<ImageRecord>& r, const std::string& where) {
  const auto train = std::count_if(r.begin(), r.end(), [](const ImageRecord& x) { return x.train; });
  TASN_CHECK_ARG(train > 0, "data: ", where, ": the train split is empty");
  TASN_CHECK_ARG(train < static_cast<std::ptrdiff_t>(r.size()), "data: ", where, ": the test split is empty");
}

}  // namespace detail_folder

// CUB-200-2011 layout under root. Labels in image_class_labels.txt are 1..num_classes; returned
// 0-based. num_classes <= 0: taken as the largest label.
inline std::vector<ImageRecord> read_cub(const std::string& root, std::int64_t num_classes = 200) {
  namespace fs = std::filesystem;
  TASN_CHECK_ARG(fs::is_directory(root), "data: CUB root ", root, " is not a directory");
  const fs::path r(root);
  const auto images = detail_folder::read_id_table(r / "images.txt");
  const auto labels = detail_folder::read_id_table(r / "image_class_labels.txt");
  const auto split = detail_folder::read_id_table(r / "train_test_split.txt");
  std::vector<ImageRecord> out;
  for (const auto& [id, rel] : images) {
    const auto l = labels.find(id), s = split.find(id);
    TASN_CHECK_ARG(l != labels.end(), "data: ", (r / "image_class_labels.txt").string(), ": no label for image id ", id);
    TASN_CHECK_ARG(s != split.end(), "data: ", (r / "train_test_split.txt").string(), ": no split for image id ", id);
    const std::int64_t y = parse_int(l->second, "data: " + (r / "image_class_labels.txt").string());
    TASN_CHECK_ARG(y >= 1 && (num_classes <= 0 || y <= num_classes), "data: ", (r / "image_class_labels.txt").string(),
                   ": image id ", id, " has label ", y, ", outside 1..", num_classes);
    const std::int64_t t = parse_int(s->second, "data: " + (r / "train_test_split.txt").string());
    TASN_CHECK_ARG(t == 0 || t == 1, "data: ", (r / "train_test_split.txt").string(), ": image id ", id,
                   " has split ", t, " (expected 0 or 1)");
    out.push_back({(r / "images" / rel).string(), y - 1, t == 1});
  }
  TASN_CHECK_ARG(!out.empty(), "data: ", (r / "images.txt").string(), " lists no images");
  detail_folder::check_splits(out, root);
  return out;
}

// Generic list file: "relative/path label split" per line (split: train or test); paths are
// relative to root; labels 0..num_classes-1.
inline std::vector<ImageRecord> read_list(const std::string& list_file, const std::string& root,
                                          std::int64_t num_classes) {
  const auto lines = detail_folder::read_lines(list_file);
  std::vector<ImageRecord> out;
  for (std::size_t i = 0; i < lines.size(); ++i) {
    if (lines[i].find_first_not_of(" \t") == std::string::npos) continue;
    std::istringstream ss(lines[i]);
    std::string path, label, split;
    const std::string where = list_file + ":" + std::to_string(i + 1);
    TASN_CHECK_ARG(static_cast<bool>(ss >> path >> label >> split), "data: ", where,
                   ": expected \"path label train|test\", got \"", lines[i], "\"");
    const std::int64_t y = parse_int(label, "data: " + where);
    TASN_CHECK_ARG(y >= 0 && y < num_classes, "data: ", where, ": label ", y, " is outside 0..", num_classes - 1);
    TASN_CHECK_ARG(split == "train" || split == "test", "data: ", where, ": split \"", split, "\" is not train or test");
    out.push_back({(std::filesystem::path(root) / path).string(), y, split == "train"});
  }
  TASN_CHECK_ARG(!out.empty(), "data: ", list_file, " lists no images");
  detail_folder::check_splits(out, list_file);
  return out;
}

// An 8-bit RGB image, (h, w, 3) interleaved.
struct RgbImage {
  std::int64_t h = 0, w = 0;
  std::vector<unsigned char> pixels;
};

inline RgbImage decode_image(const std::string& path) {
  int w = 0, h = 0, n = 0;
  unsigned char* p = stbi_load(path.c_str(), &w, &h, &n, 3);
  TASN_CHECK_ARG(p != nullptr, "data: cannot decode image ", path, ": ", stbi_failure_reason() ? stbi_failure_reason() : "unknown error");
  RgbImage img{h, w, std::vector<unsigned char>(p, p + static_cast<std::size_t>(w) * h * 3)};
  stbi_image_free(p);
  return img;
}

struct Preprocess {
  std::int64_t resize_shorter = 512;  // shorter side after resizing
  std::int64_t crop = 512;            // square crop size
  bool train = true;                  // random crop + flip; else centre crop, no flip
  float mean[3] = {123.68f, 116.779f, 103.939f};  // subtracted (0..255 scale), no std scaling
};

// (3, crop, crop) float: resized (bilinear, half-pixel centres), cropped, flipped, mean removed.
// Augmentation draws come from (seed, index), so an epoch is reproducible.
inline std::vector<float> preprocess(const RgbImage& img, const Preprocess& p, std::uint64_t seed, std::int64_t index) {
  TASN_CHECK_ARG(img.h >= 1 && img.w >= 1, "data: empty image");
  TASN_CHECK_ARG(p.crop <= p.resize_shorter, "data: crop ", p.crop, " exceeds the resized shorter side ", p.resize_shorter);
  const double scale = double(p.resize_shorter) / double(std::min(img.h, img.w));
  const std::int64_t H = std::max<std::int64_t>(p.crop, std::llround(img.h * scale));
  const std::int64_t W = std::max<std::int64_t>(p.crop, std::llround(img.w * scale));
  CounterRng r(sample_key(seed, Split::Train, index));
  std::int64_t y0 = (H - p.crop) / 2, x0 = (W - p.crop) / 2;
  bool flip = false;
  if (p.train) {
    y0 = static_cast<std::int64_t>(r.uniform() * double(H - p.crop + 1));
    x0 = static_cast<std::int64_t>(r.uniform() * double(W - p.crop + 1));
    flip = r.uniform() < 0.5;
  }
  std::vector<float> out(static_cast<std::size_t>(3 * p.crop * p.crop));
  for (std::int64_t y = 0; y < p.crop; ++y) {
    const double sy = std::max(0.0, (double(y + y0) + 0.5) * double(img.h) / double(H) - 0.5);
    const std::int64_t iy0 = std::min<std::int64_t>(static_cast<std::int64_t>(sy), img.h - 1), iy1 = std::min(iy0 + 1, img.h - 1);
    const double fy = sy - double(iy0);
    for (std::int64_t x = 0; x < p.crop; ++x) {
      const std::int64_t xs = flip ? p.crop - 1 - x : x;
      const double sx = std::max(0.0, (double(xs + x0) + 0.5) * double(img.w) / double(W) - 0.5);
      const std::int64_t ix0 = std::min<std::int64_t>(static_cast<std::int64_t>(sx), img.w - 1), ix1 = std::min(ix0 + 1, img.w - 1);
      const double fx = sx - double(ix0);
      for (int c = 0; c < 3; ++c) {
        auto px = [&](std::int64_t yy, std::int64_t xx) { return double(img.pixels[(yy * img.w + xx) * 3 + c]); };
        const double v = (1 - fy) * ((1 - fx) * px(iy0, ix0) + fx * px(iy0, ix1)) + fy * ((1 - fx) * px(iy1, ix0) + fx * px(iy1, ix1));
        out[(c * p.crop + y) * p.crop + x] = static_cast<float>(v) - p.mean[c];
      }
    }
  }
  return out;
}

}  // namespace tasn::data
