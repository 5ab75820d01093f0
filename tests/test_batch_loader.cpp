// The example trainer's background batch loader (examples/data/batch_loader.h).
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "data/batch_loader.h"

namespace {
namespace td = tasn::data;

td::Example example(std::int64_t i) { return {{float(i), float(i) + 0.5f}, i % 7}; }

std::vector<std::int64_t> run_epoch(td::BatchLoader& l, std::int64_t epoch, std::vector<std::int64_t>* sizes = nullptr) {
  l.start_epoch(epoch);
  std::vector<std::int64_t> seen;
  td::Batch b;
  while (l.next(b)) {
    if (sizes) sizes->push_back(b.size());
    for (std::int64_t k = 0; k < b.size(); ++k) {  // contents belong to the listed indices
      EXPECT_EQ(b.images[2 * k], float(b.indices[k]));
      EXPECT_EQ(b.labels[k], b.indices[k] % 7);
      seen.push_back(b.indices[k]);
    }
  }
  return seen;
}

TEST(BatchLoader, EveryExampleOncePerEpochInASeededOrder) {
  td::BatchLoader::Options o;
  o.batch = 8;
  o.seed = 5;
  td::BatchLoader l(53, example, o);
  std::vector<std::int64_t> sizes;
  const auto e0 = run_epoch(l, 0, &sizes);
  auto sorted = e0;
  std::sort(sorted.begin(), sorted.end());
  for (std::int64_t i = 0; i < 53; ++i) ASSERT_EQ(sorted[i], i);
  EXPECT_EQ(sizes.size(), 7u);
  EXPECT_EQ(sizes.back(), 53 - 6 * 8);
  EXPECT_EQ(run_epoch(l, 0), e0) << "same seed and epoch: same order";
  EXPECT_NE(run_epoch(l, 1), e0) << "another epoch: another order";
  td::BatchLoader again(53, example, o);
  EXPECT_EQ(run_epoch(again, 0), e0) << "a new loader with the same seed repeats the order (resume)";
}

TEST(BatchLoader, DropLastAndNoShuffle) {
  td::BatchLoader::Options o;
  o.batch = 10;
  o.shuffle = false;
  o.drop_last = true;
  td::BatchLoader l(25, example, o);
  const auto seen = run_epoch(l, 3);
  ASSERT_EQ(seen.size(), 20u);
  for (std::int64_t i = 0; i < 20; ++i) EXPECT_EQ(seen[i], i);
  EXPECT_EQ(l.batches_per_epoch(), 2);
}

TEST(BatchLoader, LoadingErrorsReachTheConsumer) {
  td::BatchLoader::Options o;
  o.batch = 4;
  o.shuffle = false;
  td::BatchLoader l(20, [](std::int64_t i) -> td::Example {
    if (i == 9) throw std::runtime_error("cannot decode image img9.jpg");
    return example(i);
  }, o);
  l.start_epoch(0);
  td::Batch b;
  EXPECT_TRUE(l.next(b));  // 0-3
  EXPECT_TRUE(l.next(b));  // 4-7
  try {
    l.next(b);
    FAIL() << "no exception";
  } catch (const std::runtime_error& e) {
    EXPECT_EQ(std::string(e.what()), "cannot decode image img9.jpg");
  }
}

TEST(BatchLoader, RestartingAnEpochStopsTheOldWorker) {
  std::atomic<int> loads{0};
  td::BatchLoader::Options o;
  o.batch = 2;
  o.prefetch = 1;
  td::BatchLoader l(1000, [&](std::int64_t i) { ++loads; return example(i); }, o);
  l.start_epoch(0);
  td::Batch b;
  ASSERT_TRUE(l.next(b));
  l.start_epoch(1);  // the epoch-0 worker is blocked on a full queue: it must stop, not run on
  EXPECT_LT(loads.load(), 20);
  EXPECT_EQ(run_epoch(l, 2).size(), 1000u);
}

}  // namespace
