// The example trainer's background batch loader (examples/data/batch_loader.h): order, errors,
// restarts, and its worker pool — the same batches for any worker count (generated data and real
// JPEG / PNG files), the first failing example's exception, prompt shutdown without leaked threads.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <memory>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "data/batch_loader.h"
#include "support/test_support.h"
#include "train/datasets.h"
#if defined(TASN_HAVE_STB)
#include <stb/stb_image_write.h>

#include "data/image_folder.h"
#include "png.h"
#include "train/folder_data.h"
#endif

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

// Data parallelism: rank r of R loads its part of every global batch of R x batch examples, so
// the ranks' batches k, side by side in rank order, are batch k of one loader of R x batch.
TEST(BatchLoader, ShardsSplitEveryGlobalBatchInRankOrder) {
  td::BatchLoader::Options whole;
  whole.batch = 12;
  whole.seed = 9;
  whole.drop_last = true;
  td::BatchLoader one(53, example, whole);
  std::vector<std::int64_t> sizes;
  const auto all = run_epoch(one, 3, &sizes);
  ASSERT_EQ(all.size(), 48u);  // 4 global batches of 12; 5 examples dropped
  for (std::int64_t ranks : {2, 3, 4}) {
    std::vector<std::vector<std::int64_t>> parts;
    for (std::int64_t r = 0; r < ranks; ++r) {
      td::BatchLoader::Options o = whole;
      o.batch = 12 / ranks;
      o.shard = r;
      o.shards = ranks;
      o.workers = 1 + r;  // any worker count: the same batches
      td::BatchLoader l(53, example, o);
      EXPECT_EQ(l.batches_per_epoch(), 4);
      std::vector<std::int64_t> s;
      parts.push_back(run_epoch(l, 3, &s));
      EXPECT_EQ(s, std::vector<std::int64_t>(4, 12 / ranks));
    }
    std::vector<std::int64_t> joined;
    for (std::int64_t k = 0; k < 4; ++k)
      for (std::int64_t r = 0; r < ranks; ++r) {
        const auto at = parts[r].begin() + k * (12 / ranks);
        joined.insert(joined.end(), at, at + 12 / ranks);
      }
    EXPECT_EQ(joined, all) << ranks << " ranks";
  }
  td::BatchLoader::Options bad = whole;
  bad.shards = 2;
  bad.shard = 2;
  EXPECT_THROW(td::BatchLoader(53, example, bad), tasn::InvalidArgument);
  bad.shard = 1;
  bad.drop_last = false;
  EXPECT_THROW(td::BatchLoader(53, example, bad), tasn::InvalidArgument);
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

// The error is found while another example of its batch still loads: when that one finishes the
// consumer must hear of it (it waited for the batch's last running example; before the fix it was
// never woken and hung: seen under ASan, where loading is slow enough for this order).
TEST(BatchLoader, ErrorWhileAnotherExampleOfItsBatchLoads) {
  td::BatchLoader::Options o;
  o.batch = 4;
  o.shuffle = false;
  o.workers = 2;
  std::atomic<bool> failed{false};
  td::BatchLoader l(8, [&](std::int64_t i) -> td::Example {
    if (i == 1) {
      failed = true;
      throw std::runtime_error("cannot decode image img1.jpg");
    }
    if (i == 0)  // still loading when example 1 fails
      while (!failed) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    return example(i);
  }, o);
  l.start_epoch(0);
  td::Batch b;
  try {
    l.next(b);
    FAIL() << "no exception";
  } catch (const std::runtime_error& e) {
    EXPECT_EQ(std::string(e.what()), "cannot decode image img1.jpg");
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

// ---- the worker pool ------------------------------------------------------------------------------

// Every batch of `epochs` epochs, whole (images, labels, indices).
std::vector<td::Batch> all_batches(td::BatchLoader& l, std::int64_t epochs) {
  std::vector<td::Batch> out;
  for (std::int64_t e = 0; e < epochs; ++e) {
    l.start_epoch(e);
    for (td::Batch b; l.next(b);) out.push_back(std::move(b));
  }
  return out;
}

void expect_same_batches(const std::vector<td::Batch>& a, const std::vector<td::Batch>& b, const std::string& what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  for (std::size_t k = 0; k < a.size(); ++k) {
    EXPECT_EQ(a[k].indices, b[k].indices) << what << ", batch " << k;
    EXPECT_EQ(a[k].labels, b[k].labels) << what << ", batch " << k;
    EXPECT_TRUE(a[k].images == b[k].images) << what << ", batch " << k << ": other pixels";  // bit for bit
  }
}

// The threads of this process (Linux), to see that none is left behind; -1 elsewhere.
std::int64_t thread_count() {
  std::error_code ec;
  std::int64_t n = 0;
  for (std::filesystem::directory_iterator it("/proc/self/task", ec), end; !ec && it != end; it.increment(ec)) ++n;
  return ec ? -1 : n;
}

// thread_count() once it reaches `want`, or after 2 s: a thread that pthread_join has returned for
// can stay listed in /proc/self/task for a moment while the kernel finishes its exit (seen once in
// CI: one extra thread 0 ms after the join). A thread left running stays and fails the check.
std::int64_t thread_count_settled(std::int64_t want) {
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(2);
  std::int64_t n = thread_count();
  while (n != want && std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    n = thread_count();
  }
  return n;
}

// An example that depends on (index, epoch), loaded in a time that varies with the index, so the
// workers finish out of order.
td::Example slow_example(std::int64_t i, std::int64_t epoch) {
  std::this_thread::sleep_for(std::chrono::microseconds(tasn::mix64(static_cast<std::uint64_t>(i)) % 300));
  td::Example e;
  for (int k = 0; k < 5; ++k) e.image.push_back(float(i) * 10.0f + float(epoch) + 0.125f * float(k));
  e.label = (i + epoch) % 3;
  return e;
}

TEST(BatchLoader, SameBatchesForAnyWorkerCount) {
  for (const bool drop_last : {false, true}) {
    for (const std::size_t prefetch : {std::size_t(1), std::size_t(3)}) {
      td::BatchLoader::Options o;
      o.batch = 7;  // 7 does not divide 61: a partial last batch (or a dropped one)
      o.seed = 9;
      o.drop_last = drop_last;
      o.prefetch = prefetch;
      o.workers = 1;
      td::BatchLoader one(61, slow_example, o);
      const auto ref = all_batches(one, 3);
      ASSERT_EQ(ref.size(), drop_last ? 3u * 8 : 3u * 9);
      EXPECT_EQ(ref.back().size(), drop_last ? 7 : 61 - 8 * 7);
      EXPECT_EQ(ref[0].images[0], float(ref[0].indices[0]) * 10.0f) << "the epoch reaches the load function";
      EXPECT_EQ(ref[9].images[0], float(ref[9].indices[0]) * 10.0f + 1.0f) << "batch 9 is of epoch 1";
      for (const std::int64_t w : {2, 5}) {
        o.workers = w;
        td::BatchLoader many(61, slow_example, o);
        EXPECT_EQ(many.workers(), w);
        expect_same_batches(ref, all_batches(many, 3),
                            std::to_string(w) + " workers, drop_last " + std::to_string(drop_last) + ", prefetch " +
                                std::to_string(prefetch));
      }
    }
  }
}

// The trainer's generated data set, read the way train_model reads it.
TEST(BatchLoader, SameBatchesOfGeneratedDataForAnyWorkerCount) {
  tasn::data::SyntheticConfig c;
  c.size = 24;
  c.patch = 6;
  c.seed = 3;
  const tasn::train::SyntheticDataset d(c, tasn::data::Split::Train, 40);
  std::vector<td::Batch> ref;
  for (const std::int64_t w : {1, 2, 5}) {
    td::BatchLoader::Options o;
    o.batch = 16;
    o.drop_last = true;
    o.seed = 4;
    o.workers = w;
    td::BatchLoader l(d.size(), [&](std::int64_t i, std::int64_t epoch) { return d.get(i, epoch); }, o);
    const auto got = all_batches(l, 2);
    if (w == 1) {
      ref = got;
      ASSERT_EQ(ref.size(), 4u);
      ASSERT_EQ(ref[0].images.size(), 16u * 3 * 24 * 24);
      const auto e = d.get(ref[1].indices[3], 0);  // a batch holds its examples' pixels in order
      EXPECT_TRUE(std::equal(e.image.begin(), e.image.end(), ref[1].images.begin() + 3 * 3 * 24 * 24));
    } else {
      expect_same_batches(ref, got, std::to_string(w) + " workers");
    }
  }
}

#if defined(TASN_HAVE_STB)
// Real files: JPEGs and PNGs decoded and augmented (random crop + flip per epoch) by the workers.
// The batches are the same for any worker count and equal to loading every example alone, in any
// order: the augmentation depends only on (seed, epoch, index).
TEST(BatchLoader, SameBatchesOfRealImagesForAnyWorkerCount) {
  namespace fs = std::filesystem;
  const fs::path root = fs::path(::testing::TempDir()) / ("tasn_loader_images_" + std::to_string(::getpid()));
  fs::remove_all(root);
  fs::create_directories(root);
  std::vector<td::ImageRecord> recs;
  for (int k = 0; k < 14; ++k) {
    const int w = 20 + 3 * k, h = 34 - k;  // landscape and portrait sizes
    std::vector<unsigned char> rgb(static_cast<std::size_t>(w * h * 3));
    for (std::size_t i = 0; i < rgb.size(); ++i) rgb[i] = static_cast<unsigned char>(tasn::test::splitmix64(k * 1000003ull + i) >> 56);
    const bool jpeg = k % 2 == 0;
    const std::string name = "img" + std::to_string(k) + (jpeg ? ".jpg" : ".png");
    if (jpeg) ASSERT_NE(stbi_write_jpg((root / name).string().c_str(), w, h, 3, rgb.data(), 90), 0) << name;
    else tasn::examples::write_png((root / name).string(), rgb, w, h);
    recs.push_back({(root / name).string(), k % 3, k < 11, name});
  }
  const auto splits = tasn::train::folder_datasets(recs, 16, 7, false);
  const tasn::train::Dataset& train = *splits.train;
  ASSERT_EQ(train.size(), 11);
  std::vector<td::Batch> ref;
  for (const std::int64_t w : {1, 2, 5}) {
    td::BatchLoader::Options o;
    o.batch = 4;
    o.seed = 7;
    o.workers = w;
    td::BatchLoader l(train.size(), [&](std::int64_t i, std::int64_t epoch) { return train.get(i, epoch); }, o);
    const auto got = all_batches(l, 3);
    if (w == 1) {
      ref = got;
      ASSERT_EQ(ref.size(), 9u);
    } else {
      expect_same_batches(ref, got, std::to_string(w) + " workers");
    }
  }
  // each example alone, last epoch first and backwards: the same pixels
  const std::int64_t per = 3 * 16 * 16;
  bool epochs_differ = false;
  for (std::int64_t b = static_cast<std::int64_t>(ref.size()) - 1; b >= 0; --b) {
    const std::int64_t epoch = b / 3;
    for (std::int64_t k = ref[b].size() - 1; k >= 0; --k) {
      const auto e = train.get(ref[b].indices[k], epoch);
      ASSERT_TRUE(std::equal(e.image.begin(), e.image.end(), ref[b].images.begin() + k * per)) << "batch " << b << ", " << k;
      epochs_differ = epochs_differ || e.image != train.get(ref[b].indices[k], epoch + 1).image;
    }
  }
  EXPECT_TRUE(epochs_differ) << "the crops / flips should vary with the epoch";
  std::error_code ec;
  fs::remove_all(root, ec);
}
#endif

struct DecodeError : std::runtime_error {
  std::int64_t index;
  explicit DecodeError(std::int64_t i) : std::runtime_error("cannot decode example " + std::to_string(i)), index(i) {}
};

// With several workers the batches before the failing example arrive whole, then its exception
// itself (same type, same object); when several examples fail, the first in the epoch's order is
// reported, though another fails before it and another after it.
TEST(BatchLoader, AnExceptionInAWorkerReachesTheConsumerUnchanged) {
  for (const std::int64_t w : {1, 2, 5}) {
    td::BatchLoader::Options o;
    o.batch = 4;
    o.shuffle = false;
    o.workers = w;
    const DecodeError* thrown = nullptr;
    std::atomic<const DecodeError*> first{nullptr};
    td::BatchLoader l(40, [&](std::int64_t i) -> td::Example {
      if (i == 13) {  // slow, and earlier in the order than 14
        std::this_thread::sleep_for(std::chrono::milliseconds(30));
        try {
          throw DecodeError(13);
        } catch (const DecodeError& e) {
          first = &e;  // libstdc++'s exception_ptr holds the thrown object itself, not a copy
          throw;
        }
      }
      if (i == 14 || i == 15) {  // fails first (14) or last (15), both later in the order than 13
        std::this_thread::sleep_for(std::chrono::milliseconds(i == 14 ? 5 : 60));
        throw DecodeError(i);
      }
      return example(i);
    }, o);
    for (int round = 0; round < 2; ++round) {  // again after a restart
      l.start_epoch(round);
      td::Batch b;
      for (int k = 0; k < 3; ++k) {
        ASSERT_TRUE(l.next(b)) << w << " workers";
        EXPECT_EQ(b.indices, (std::vector<std::int64_t>{4 * k, 4 * k + 1, 4 * k + 2, 4 * k + 3}));
      }
      try {
        l.next(b);
        ADD_FAILURE() << "no exception, " << w << " workers";
      } catch (const DecodeError& e) {
        EXPECT_EQ(e.index, 13) << w << " workers";
        EXPECT_EQ(std::string(e.what()), "cannot decode example 13");
        thrown = &e;
      }
      EXPECT_EQ(thrown, first.load()) << "the very exception thrown by the load function";
      EXPECT_THROW(l.next(b), DecodeError) << "and again on the next call";
    }
  }
}

// The destructor and start_epoch never wait for the rest of an epoch: workers blocked on a full
// prefetch window, or in the middle of a slow example, stop (the latter after that example), and
// every thread is joined.
TEST(BatchLoader, ShutdownMidEpochIsPromptAndLeavesNoThreads) {
  using clock = std::chrono::steady_clock;
  const std::int64_t threads0 = thread_count();
  std::atomic<std::int64_t> loads{0};
  {
    td::BatchLoader::Options o;
    o.batch = 3;
    o.prefetch = 1;
    o.workers = 5;
    td::BatchLoader l(100000, [&](std::int64_t i) { ++loads; return example(i); }, o);
    l.start_epoch(0);
    td::Batch b;
    ASSERT_TRUE(l.next(b));
    // the window (prefetch + 1 batches ahead) fills and every worker blocks
    for (std::int64_t last = -1; last != loads.load();) {
      last = loads.load();
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    EXPECT_LE(loads.load(), 3 + 2 * 3) << "bounded prefetch";
    if (threads0 >= 0) {
      EXPECT_EQ(thread_count(), threads0 + 5);
    }
    const auto t0 = clock::now();
    l.start_epoch(1);  // restart: the blocked epoch-0 workers go
    ASSERT_TRUE(l.next(b));
    EXPECT_LT(std::chrono::duration<double>(clock::now() - t0).count(), 2.0);
  }  // destroyed with the epoch-1 workers blocked
  if (threads0 >= 0) {
    EXPECT_EQ(thread_count_settled(threads0), threads0);
  }

  std::atomic<bool> entered{false};
  td::BatchLoader::Options so;
  so.batch = 8;
  so.workers = 4;
  auto slow = std::make_unique<td::BatchLoader>(1000, [&](std::int64_t i) {
    entered = true;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    return example(i);
  }, so);
  slow->start_epoch(0);
  while (!entered) std::this_thread::yield();
  const auto t0 = clock::now();
  slow.reset();  // mid-example: each worker finishes its one example (100 ms), then exits
  EXPECT_LT(std::chrono::duration<double>(clock::now() - t0).count(), 2.0);
  if (threads0 >= 0) {
    EXPECT_EQ(thread_count_settled(threads0), threads0);
  }

  {  // destroyed after a loading error, the error never taken
    td::BatchLoader::Options o;
    o.workers = 3;
    td::BatchLoader l(50, [](std::int64_t i) -> td::Example {
      if (i % 2) throw std::runtime_error("bad");
      return example(i);
    }, o);
    l.start_epoch(0);
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  if (threads0 >= 0) {
    EXPECT_EQ(thread_count_settled(threads0), threads0);
  }
}

TEST(BatchLoader, RefusesBadWorkerCounts) {
  td::BatchLoader::Options o;
  EXPECT_GE(o.workers, 1);
  EXPECT_LE(o.workers, 8);
  for (const std::int64_t w : {std::int64_t(0), std::int64_t(-1), td::BatchLoader::kMaxWorkers + 1}) {
    o.workers = w;
    const auto m = tasn::test::invalid_argument_message([&] { td::BatchLoader(10, example, o); });
    EXPECT_NE(m.find("workers must be in [1, 1024], got " + std::to_string(w)), std::string::npos) << m;
  }
}

}  // namespace
