// examples/train/folder_data.h - real images for the trainer: records from read_cub / read_list
// become a training split (random crop + flip, varying per epoch) and an evaluation split (centre
// crop), decoded on the batch loader's background thread. Needs Debian's stb (libstb-dev).
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

// val: evaluate on every 10th training image (held out of training) instead of the test split.
inline FolderSplits folder_datasets(const std::vector<data::ImageRecord>& recs, std::int64_t side, std::uint64_t seed,
                                    bool val) {
  std::vector<data::ImageRecord> tr, ev;
  std::int64_t k = 0;
  for (const auto& r : recs) {
    if (r.train && val) (k++ % 10 == 9 ? ev : tr).push_back(r);
    else if (!val || r.train) (r.train ? tr : ev).push_back(r);
  }
  TASN_CHECK_ARG(!tr.empty() && !ev.empty(), "data: the training or the ", val ? "validation" : "test",
                 " split is empty (", tr.size(), " / ", ev.size(), " images)");
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
  const std::string desc = "folder side=" + std::to_string(side) + " seed=" + std::to_string(seed) +
                           " val=" + std::to_string(val) + " first=" + tr.front().path + " last=" + tr.back().path;
  s.train = std::make_unique<FunctionDataset>(ntr, side, loader(std::move(tr), true), desc);
  s.eval = std::make_unique<FunctionDataset>(nev, side, loader(std::move(ev), false));
  return s;
}

}  // namespace tasn::train
