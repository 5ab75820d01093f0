// examples/train/folder_data.h - real images for the trainer: records from read_cub / read_list
// become a training split (random crop + flip, varying per epoch) and an evaluation split (centre
// crop), decoded on the batch loader's background thread. Needs Debian's stb (libstb-dev).
//
// Before training, every image file is checked (present, readable, a JPEG / PNG header stb can
// read; with `decode_all` every image is decoded once), so a missing or broken file stops the
// run before its first step, not after an epoch.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "data/image_folder.h"
#include "train/trainer.h"

namespace tasn::train {

struct FolderSplits {
  std::unique_ptr<Dataset> train, eval;
};

// The training data's identity for the training signature: sizes, seed, and a hash of every
// training record's path (relative to the root, so the root may be spelled or moved freely) and
// label, plus the first and last path for people reading it.
inline std::string folder_description(const std::vector<data::ImageRecord>& tr, std::int64_t side, std::uint64_t seed,
                                      bool val) {
  std::string all;
  for (const auto& r : tr) all += r.rel + '\n' + std::to_string(r.label) + '\n';
  return "folder side=" + std::to_string(side) + " seed=" + std::to_string(seed) + " val=" + std::to_string(val) +
         " n=" + std::to_string(tr.size()) + " records=" + fnv1a_hex(all) + " first=" + tr.front().rel + " last=" + tr.back().rel;
}

// val: evaluate on every 10th training image (held out of training) instead of the test split.
inline FolderSplits folder_datasets(const std::vector<data::ImageRecord>& recs, std::int64_t side, std::uint64_t seed,
                                    bool val, bool decode_all = false) {
  std::vector<data::ImageRecord> tr, ev;
  std::int64_t k = 0;
  for (const auto& r : recs) {
    if (r.train && val) (k++ % 10 == 9 ? ev : tr).push_back(r);
    else if (!val || r.train) (r.train ? tr : ev).push_back(r);
  }
  TASN_CHECK_ARG(!tr.empty() && !ev.empty(), "data: the training or the ", val ? "validation" : "test",
                 " split is empty (", tr.size(), " / ", ev.size(), " images)");
  {
    std::vector<data::ImageRecord> used = tr;  // the images this run reads
    used.insert(used.end(), ev.begin(), ev.end());
    data::verify_images(used, decode_all);
  }
  auto loader = [side, seed](std::vector<data::ImageRecord> v, bool train) {
    return [side, seed, train, v = std::move(v)](std::int64_t i, std::int64_t epoch) {
      data::Preprocess p;
      p.resize_shorter = side;
      p.crop = side;
      p.train = train;
      data::Example e;
      const auto& r = v.at(static_cast<std::size_t>(i));
      e.image = data::preprocess(data::decode_image(r.path), p, mix64(mix64(seed) ^ static_cast<std::uint64_t>(epoch)), i);
      e.label = r.label;
      return e;
    };
  };
  FolderSplits s;
  const auto ntr = static_cast<std::int64_t>(tr.size()), nev = static_cast<std::int64_t>(ev.size());
  const std::string desc = folder_description(tr, side, seed, val);
  s.train = std::make_unique<FunctionDataset>(ntr, side, loader(std::move(tr), true), desc);
  s.eval = std::make_unique<FunctionDataset>(nev, side, loader(std::move(ev), false));
  return s;
}

}  // namespace tasn::train
