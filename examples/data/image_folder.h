// examples/data/image_folder.h - real data for the example trainer: the CUB-200-2011 directory
// layout (images.txt, image_class_labels.txt, train_test_split.txt, images/) and a generic list
// file ("relative/path label train|test" per line) for Stanford Cars, iNaturalist or anything
// else; JPEG/PNG decoding with Debian's stb (libstb-dev); SPEC 5 preprocessing (shorter side
// resized, random or centre crop, horizontal flip, per-channel mean subtracted, no std scaling).
//
// Every problem is a tasn::InvalidArgument naming the file (and line): a missing directory or
// file, a malformed line (ids and labels are whole numbers: "3x" is refused), a label out of
// range, inconsistent ids (an id of image_class_labels.txt or train_test_split.txt missing from
// images.txt, or the other way round), an empty split, an unreadable or corrupt image. Paths may
// hold spaces (images.txt: everything after the id; list files: everything before the last two
// fields). The root is made absolute and canonical, so "cub", "./cub" and "/abs/cub" name the
// same records.
#pragma once

#include <stb/stb_image.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "data/parse.h"
#include "data/synthetic.h"  // sample_key
#include "tasn/core/common.h"
#include "tasn/core/parallel.h"
#include "tasn/core/random.h"
#include "tasn/core/resize.h"

namespace tasn::data {

struct ImageRecord {
  std::string path;  // absolute (the canonical root joined with `rel`)
  std::int64_t label = 0;
  bool train = true;
  std::string rel;   // as listed: relative to the root (CUB: to root/images)
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

// Splits a line into whitespace-separated fields.
inline std::vector<std::string> fields(const std::string& line) {
  std::vector<std::string> f;
  std::istringstream ss(line);
  for (std::string t; ss >> t;) f.push_back(t);
  return f;
}

inline std::string trim(const std::string& s) {
  const auto b = s.find_first_not_of(" \t"), e = s.find_last_not_of(" \t");
  return b == std::string::npos ? std::string() : s.substr(b, e - b + 1);
}

struct IdValue {
  std::string value;
  std::size_t line = 0;  // 1-based, for messages
};

// "id value" lines -> map id -> value. The id is a whole integer; the value is the rest of the
// line, trimmed (so it may hold spaces: an image path), or, with `single`, exactly one field.
inline std::map<std::int64_t, IdValue> read_id_table(const std::filesystem::path& p, bool single) {
  std::map<std::int64_t, IdValue> t;
  const auto lines = read_lines(p);
  for (std::size_t i = 0; i < lines.size(); ++i) {
    const std::string l = trim(lines[i]);
    if (l.empty()) continue;
    const std::string where = p.string() + ":" + std::to_string(i + 1);
    const auto sp = l.find_first_of(" \t");
    const std::string id_text = l.substr(0, sp), value = sp == std::string::npos ? "" : trim(l.substr(sp));
    TASN_CHECK_ARG(!value.empty() && (!single || fields(value).size() == 1), "data: ", where,
                   ": expected \"id ", single ? "value" : "path", "\", got \"", lines[i], "\"");
    const std::int64_t id = parse_int(id_text, "data: " + where + ": id");
    TASN_CHECK_ARG(t.emplace(id, IdValue{value, i + 1}).second, "data: ", where, ": id ", id, " appears twice");
  }
  return t;
}

// Absolute, canonical (existing parts resolved) form of a root folder.
inline std::filesystem::path canonical_root(const std::string& root) {
  std::error_code ec;
  auto p = std::filesystem::weakly_canonical(std::filesystem::absolute(root), ec);
  return ec ? std::filesystem::absolute(root) : p;
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
  const fs::path r = detail_folder::canonical_root(root);
  const fs::path images_txt = r / "images.txt", labels_txt = r / "image_class_labels.txt",
                 split_txt = r / "train_test_split.txt";
  const auto images = detail_folder::read_id_table(images_txt, false);
  const auto labels = detail_folder::read_id_table(labels_txt, true);
  const auto split = detail_folder::read_id_table(split_txt, true);
  for (const auto* table : {&labels, &split})
    for (const auto& [id, v] : *table)
      TASN_CHECK_ARG(images.count(id), "data: ", (table == &labels ? labels_txt : split_txt).string(), ":", v.line,
                     ": image id ", id, " is not in ", images_txt.string());
  std::vector<ImageRecord> out;
  for (const auto& [id, rel] : images) {
    const auto l = labels.find(id), s = split.find(id);
    TASN_CHECK_ARG(l != labels.end(), "data: ", labels_txt.string(), ": no label for image id ", id, " (",
                   images_txt.string(), ":", rel.line, ")");
    TASN_CHECK_ARG(s != split.end(), "data: ", split_txt.string(), ": no split for image id ", id, " (",
                   images_txt.string(), ":", rel.line, ")");
    const std::string lw = labels_txt.string() + ":" + std::to_string(l->second.line);
    const std::int64_t y = parse_int(l->second.value, "data: " + lw + ": label");
    TASN_CHECK_ARG(y >= 1 && (num_classes <= 0 || y <= num_classes), "data: ", lw, ": image id ", id, " has label ", y,
                   ", outside 1..", num_classes);
    const std::string sw = split_txt.string() + ":" + std::to_string(s->second.line);
    const std::int64_t t = parse_int(s->second.value, "data: " + sw + ": split");
    TASN_CHECK_ARG(t == 0 || t == 1, "data: ", sw, ": image id ", id, " has split ", t, " (expected 0 or 1)");
    out.push_back({(r / "images" / rel.value).string(), y - 1, t == 1, rel.value});
  }
  TASN_CHECK_ARG(!out.empty(), "data: ", images_txt.string(), " lists no images");
  detail_folder::check_splits(out, root);
  return out;
}

// Generic list file: "relative/path label split" per line (split: train or test; the path is
// everything before the last two fields, so it may hold spaces); paths are relative to root;
// labels 0..num_classes-1.
inline std::vector<ImageRecord> read_list(const std::string& list_file, const std::string& root,
                                          std::int64_t num_classes) {
  const auto lines = detail_folder::read_lines(list_file);
  const std::filesystem::path r = detail_folder::canonical_root(root);
  std::vector<ImageRecord> out;
  for (std::size_t i = 0; i < lines.size(); ++i) {
    const std::string l = detail_folder::trim(lines[i]);
    if (l.empty()) continue;
    const std::string where = list_file + ":" + std::to_string(i + 1);
    const auto f = detail_folder::fields(l);
    TASN_CHECK_ARG(f.size() >= 3, "data: ", where, ": expected \"path label train|test\", got \"", lines[i], "\"");
    const std::string& split = f[f.size() - 1];
    const std::string& label = f[f.size() - 2];
    // the path: the line before the label field (l ends with "label<blanks>split"), trimmed
    std::size_t e = l.size() - split.size();
    while (e > 0 && (l[e - 1] == ' ' || l[e - 1] == '\t')) --e;
    const std::string path = detail_folder::trim(l.substr(0, e - label.size()));
    const std::int64_t y = parse_int(label, "data: " + where + ": label");
    TASN_CHECK_ARG(y >= 0 && y < num_classes, "data: ", where, ": label ", y, " is outside 0..", num_classes - 1);
    TASN_CHECK_ARG(split == "train" || split == "test", "data: ", where, ": split \"", split, "\" is not train or test");
    out.push_back({(r / path).string(), y, split == "train", path});
  }
  TASN_CHECK_ARG(!out.empty(), "data: ", list_file, " lists no images");
  detail_folder::check_splits(out, list_file);
  return out;
}

// Checks before training that every record's file exists, is readable and starts like a JPEG /
// PNG image stb can decode (its header: cheap), or, with `decode`, decodes every image fully
// (finds corrupt data too; costs a full pass over the data). Threads over the records; throws
// naming up to 5 bad files and how many there are in all.
inline void verify_images(const std::vector<ImageRecord>& recs, bool decode);

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

inline void verify_images(const std::vector<ImageRecord>& recs, bool decode) {
  const auto n = static_cast<std::int64_t>(recs.size());
  std::vector<unsigned char> ok(recs.size(), 0);
  cpu::parallel_for(0, n, [&](std::int64_t i) {
    int w = 0, h = 0, c = 0;
    if (decode) {
      unsigned char* p = stbi_load(recs[i].path.c_str(), &w, &h, &c, 3);
      ok[i] = p != nullptr && w > 0 && h > 0;
      stbi_image_free(p);
    } else {
      ok[i] = stbi_info(recs[i].path.c_str(), &w, &h, &c) != 0 && w > 0 && h > 0;
    }
  });
  std::string bad;
  std::int64_t count = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    if (ok[i]) continue;
    if (++count > 5) continue;
    // the reason, found again serially (stb's failure reason is one global)
    std::string why;
    if (std::FILE* f = std::fopen(recs[i].path.c_str(), "rb")) {
      std::fclose(f);
      int w = 0, h = 0, c = 0;
      if (decode) stbi_image_free(stbi_load(recs[i].path.c_str(), &w, &h, &c, 3));
      else stbi_info(recs[i].path.c_str(), &w, &h, &c);
      why = stbi_failure_reason() ? stbi_failure_reason() : "not an image stb can decode";
    } else {
      why = std::strerror(errno);
    }
    bad += "\n  " + recs[i].path + ": " + why;
  }
  TASN_CHECK_ARG(count == 0, "data: ", count, " of ", n, " images cannot be ", decode ? "decoded" : "read", " (",
                 count > 5 ? "first 5" : "all", " listed):", bad);
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
  // The library's bilinear taps; the horizontal ones (flip folded in) are the same for every row,
  // so they are computed once: the loader's cost per image is decode + this loop (bench_loader).
  std::vector<tasn::ResizeTap<double>> txs(static_cast<std::size_t>(p.crop));
  for (std::int64_t x = 0; x < p.crop; ++x) txs[x] = tasn::resize_tap<double>((flip ? p.crop - 1 - x : x) + x0, img.w, W, false);
  const std::int64_t plane = p.crop * p.crop;
  std::vector<float> out(static_cast<std::size_t>(3 * plane));
  for (std::int64_t y = 0; y < p.crop; ++y) {
    const auto ty = tasn::resize_tap<double>(y + y0, img.h, H, false);
    const unsigned char* r0 = img.pixels.data() + ty.i0 * img.w * 3;
    const unsigned char* r1 = img.pixels.data() + ty.i1 * img.w * 3;
    float* o = out.data() + y * p.crop;
    for (std::int64_t x = 0; x < p.crop; ++x) {
      const auto& tx = txs[static_cast<std::size_t>(x)];
      for (int c = 0; c < 3; ++c) {
        const double v = tasn::bilinear_blend(double(r0[tx.i0 * 3 + c]), double(r0[tx.i1 * 3 + c]), double(r1[tx.i0 * 3 + c]),
                                              double(r1[tx.i1 * 3 + c]), ty.w1, tx.w1);
        o[c * plane + x] = static_cast<float>(v) - p.mean[c];
      }
    }
  }
  return out;
}

}  // namespace tasn::data
