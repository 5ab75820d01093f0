// examples/data/batch_loader.h - batches assembled by a background thread, so loading (decoding,
// augmentation, generation) overlaps training. The order of an epoch is a permutation drawn from
// (seed, epoch) by a counter-based generator: the same seed gives the same batches, which resuming
// a run needs. An exception thrown while loading reaches the caller of next() unchanged.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <mutex>
#include <numeric>
#include <thread>
#include <utility>
#include <vector>

#include "tasn/core/random.h"
#include "tasn/core/common.h"

namespace tasn::data {

struct Example {
  std::vector<float> image;  // one sample, any fixed size
  std::int64_t label = 0;
};

struct Batch {
  std::vector<float> images;          // size x (one example's image), concatenated
  std::vector<std::int64_t> labels;   // size
  std::vector<std::int64_t> indices;  // which examples, in order
  std::int64_t size() const { return static_cast<std::int64_t>(labels.size()); }
};

// Epoch order: identity, or a Fisher-Yates shuffle driven by mix64(seed, epoch, step).
inline std::vector<std::int64_t> epoch_order(std::int64_t n, std::uint64_t seed, std::int64_t epoch, bool shuffle) {
  std::vector<std::int64_t> order(static_cast<std::size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  if (!shuffle) return order;
  const std::uint64_t key = mix64(mix64(seed) ^ static_cast<std::uint64_t>(epoch) * 0x9E3779B97F4A7C15ull);
  for (std::int64_t i = n - 1; i > 0; --i) {
    const auto j = static_cast<std::int64_t>(mix64(key + static_cast<std::uint64_t>(i)) % static_cast<std::uint64_t>(i + 1));
    std::swap(order[i], order[j]);
  }
  return order;
}

class BatchLoader {
 public:
  struct Options {
    std::int64_t batch = 32;
    bool shuffle = true;
    bool drop_last = false;
    std::uint64_t seed = 1;
    std::size_t prefetch = 2;  // batches ready ahead of the consumer
  };

  BatchLoader(std::int64_t n, std::function<Example(std::int64_t)> load, const Options& opt)
      : n_(n), load_(std::move(load)), opt_(opt) {
    TASN_CHECK_ARG(n >= 1 && opt.batch >= 1 && opt.prefetch >= 1, "BatchLoader: need n >= 1, batch >= 1 and prefetch >= 1, got n = ", n,
                   ", batch = ", opt.batch, ", prefetch = ", opt.prefetch);
  }
  BatchLoader(const BatchLoader&) = delete;
  BatchLoader& operator=(const BatchLoader&) = delete;
  ~BatchLoader() { stop(); }

  // Starts producing the batches of `epoch` (stopping any epoch in progress).
  void start_epoch(std::int64_t epoch) {
    stop();
    std::lock_guard<std::mutex> lock(m_);
    queue_.clear();
    done_ = false;
    stop_ = false;
    error_ = nullptr;
    worker_ = std::thread([this, order = epoch_order(n_, opt_.seed, epoch, opt_.shuffle)] { produce(order); });
  }

  // The next batch of the epoch into `out`; false once the epoch is exhausted. Rethrows a loading error.
  bool next(Batch& out) {
    std::unique_lock<std::mutex> lock(m_);
    cv_.wait(lock, [&] { return !queue_.empty() || done_ || error_; });
    if (!queue_.empty()) {
      out = std::move(queue_.front());
      queue_.pop_front();
      cv_.notify_all();
      return true;
    }
    if (error_) std::rethrow_exception(error_);
    return false;
  }

  std::int64_t batches_per_epoch() const {
    return opt_.drop_last ? n_ / opt_.batch : (n_ + opt_.batch - 1) / opt_.batch;
  }

 private:
  void produce(const std::vector<std::int64_t>& order) {
    try {
      for (std::int64_t b0 = 0; b0 < n_; b0 += opt_.batch) {
        const std::int64_t end = std::min(n_, b0 + opt_.batch);
        if (opt_.drop_last && end - b0 < opt_.batch) break;
        Batch batch;
        for (std::int64_t i = b0; i < end; ++i) {
          Example e = load_(order[i]);
          batch.images.insert(batch.images.end(), e.image.begin(), e.image.end());
          batch.labels.push_back(e.label);
          batch.indices.push_back(order[i]);
        }
        std::unique_lock<std::mutex> lock(m_);
        cv_.wait(lock, [&] { return queue_.size() < opt_.prefetch || stop_; });
        if (stop_) return;
        queue_.push_back(std::move(batch));
        cv_.notify_all();
      }
    } catch (...) {
      std::lock_guard<std::mutex> lock(m_);
      error_ = std::current_exception();
    }
    std::lock_guard<std::mutex> lock(m_);
    done_ = true;
    cv_.notify_all();
  }

  void stop() {
    {
      std::lock_guard<std::mutex> lock(m_);
      stop_ = true;
      cv_.notify_all();
    }
    if (worker_.joinable()) worker_.join();
  }

  std::int64_t n_;
  std::function<Example(std::int64_t)> load_;
  Options opt_;
  std::mutex m_;
  std::condition_variable cv_;
  std::deque<Batch> queue_;
  bool done_ = true, stop_ = false;
  std::exception_ptr error_;
  std::thread worker_;
};

}  // namespace tasn::data
