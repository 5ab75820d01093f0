// examples/data/batch_loader.h - batches assembled by a pool of background worker threads, so
// loading (decoding, augmentation, generation) overlaps training and uses several cores. The order
// of an epoch is a permutation drawn from (seed, epoch) by a counter-based generator; the workers
// take the examples of that order one at a time and each lands in its batch at its own position,
// so the batches are the same (order, pixels, augmentation) for any worker count, as long as
// loading example i depends only on (i, epoch) — the data sets of examples/train do (seed, epoch,
// index). An exception thrown while loading reaches the caller of next() unchanged, after every
// batch before it (the first failing example in epoch order wins, whatever the timing).
//
// Workers are std::threads, not OpenMP: the training step runs OpenMP regions at the same time,
// and an OpenMP team inside a loader thread would nest with them. Workers block on condition
// variables (they never spin), so idle workers cost nothing while the step computes.
#pragma once

#include <algorithm>
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

#include "tasn/core/common.h"
#include "tasn/core/random.h"

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

// The hardware threads, capped at 8: enough to decode JPEGs for a GPU step on most machines
// (docs/trainer.md, "Data loading"), without a thread per core of a large server by default.
inline std::int64_t default_workers() {
  return std::clamp<std::int64_t>(static_cast<std::int64_t>(std::thread::hardware_concurrency()), 1, 8);
}

class BatchLoader {
 public:
  static constexpr std::int64_t kMaxWorkers = 1024;

  struct Options {
    std::int64_t batch = 32;
    bool shuffle = true;
    bool drop_last = false;
    std::uint64_t seed = 1;
    std::size_t prefetch = 2;  // batches ready ahead of the consumer (plus the one being loaded)
    std::int64_t workers = default_workers();  // loading threads; 1: one background thread
    // Data parallelism: this loader is rank `shard` of `shards`. The epoch order is the same on
    // every rank; its global batches of batch x shards examples are split in rank order, so rank
    // r loads positions [k G + r batch, k G + (r + 1) batch) of global batch k (G = batch x
    // shards), and the ranks' batches together are the one-process batches of G. Needs drop_last.
    std::int64_t shard = 0, shards = 1;
  };

  // load(i, epoch): example i as seen in `epoch` (the epoch given to start_epoch).
  BatchLoader(std::int64_t n, std::function<Example(std::int64_t, std::int64_t)> load, const Options& opt)
      : n_(n), load_(std::move(load)), opt_(opt) {
    TASN_CHECK_ARG(n >= 1 && opt.batch >= 1 && opt.prefetch >= 1, "BatchLoader: need n >= 1, batch >= 1 and prefetch >= 1, got n = ", n,
                   ", batch = ", opt.batch, ", prefetch = ", opt.prefetch);
    TASN_CHECK_ARG(opt.workers >= 1 && opt.workers <= kMaxWorkers, "BatchLoader: workers must be in [1, ", kMaxWorkers,
                   "], got ", opt.workers);
    TASN_CHECK_ARG(static_cast<bool>(load_), "BatchLoader: no load function");
    TASN_CHECK_ARG(opt.shards >= 1 && opt.shard >= 0 && opt.shard < opt.shards, "BatchLoader: shard ", opt.shard,
                   " of ", opt.shards, " does not exist");
    TASN_CHECK_ARG(opt.shards == 1 || opt.drop_last, "BatchLoader: ", opt.shards,
                   " shards need drop_last (every rank takes a full part of every global batch)");
    TASN_CHECK_ARG(n / opt.shards >= opt.batch || opt.shards == 1, "BatchLoader: ", n, " examples hold no global batch of ",
                   opt.batch, " x ", opt.shards, " shards");
  }
  // load(i): example i, the same in every epoch.
  BatchLoader(std::int64_t n, std::function<Example(std::int64_t)> load, const Options& opt)
      : BatchLoader(n, epochless(std::move(load)), opt) {}
  BatchLoader(const BatchLoader&) = delete;
  BatchLoader& operator=(const BatchLoader&) = delete;
  ~BatchLoader() { stop(); }

  // Starts producing the batches of `epoch` (stopping any epoch in progress: its workers finish
  // the example each is loading and exit; their batches are dropped).
  void start_epoch(std::int64_t epoch) {
    stop();
    std::vector<std::int64_t> order = epoch_order(n_, opt_.seed, epoch, opt_.shuffle);
    if (opt_.shards > 1) {  // this rank's part of every global batch, in order
      const std::int64_t b = opt_.batch, g = b * opt_.shards;
      std::vector<std::int64_t> mine;
      mine.reserve(static_cast<std::size_t>(batches_per_epoch() * b));
      for (std::int64_t k = 0; k < batches_per_epoch(); ++k) {
        const auto at = order.begin() + (k * g + opt_.shard * b);
        mine.insert(mine.end(), at, at + b);
      }
      order = std::move(mine);
    }
    {
      std::lock_guard<std::mutex> lock(m_);
      order_ = std::move(order);
      epoch_ = epoch;
      batches_ = batches_per_epoch();
      total_ = opt_.drop_last ? batches_ * opt_.batch : n_;
      next_pos_ = 0;
      consumed_ = 0;
      slots_.clear();
      error_ = nullptr;
      error_pos_ = -1;
      stop_ = false;
    }
    try {
      for (std::int64_t w = 0; w < opt_.workers; ++w) workers_.emplace_back([this] { work(); });
    } catch (...) {  // a thread could not be made: stop those that were, then report it
      stop();
      std::lock_guard<std::mutex> lock(m_);
      batches_ = 0;  // next() returns false instead of waiting for workers that are not there
      throw;
    }
  }

  // The next batch of the epoch into `out`; false once the epoch is exhausted (or before any
  // start_epoch). Rethrows a loading error once the batches before it are taken. What `out` held
  // is recycled: a later batch is assembled in its memory (a batch of the paper preset is 300 MB,
  // whose fresh pages the kernel would fault in and zero at every step).
  bool next(Batch& out) {
    std::unique_lock<std::mutex> lock(m_);
    if (consumed_ >= batches_) return false;
    ready_cv_.wait(lock, [&] { return front_ready() || front_failed(); });
    if (!front_ready()) std::rethrow_exception(error_);
    Batch old = std::move(out);
    out = std::move(slots_.front().batch);
    if (old.images.capacity() > 0 && spare_.size() <= opt_.prefetch) spare_.push_back(std::move(old));
    slots_.pop_front();
    ++consumed_;
    work_cv_.notify_all();  // the window moved: blocked workers may take the next batch's examples
    return true;
  }

  std::int64_t batches_per_epoch() const {
    const std::int64_t g = opt_.batch * opt_.shards;
    return opt_.drop_last ? n_ / g : (n_ + g - 1) / g;
  }
  std::int64_t workers() const { return opt_.workers; }

 private:
  // A batch being loaded: its examples by position, filled by any worker.
  struct Slot {
    std::vector<Example> examples;
    std::int64_t left = 0;     // examples not yet loaded
    std::int64_t running = 0;  // examples a worker is loading now
    bool ready = false;        // `batch` is assembled
    Batch batch;
  };

  static std::function<Example(std::int64_t, std::int64_t)> epochless(std::function<Example(std::int64_t)> f) {
    TASN_CHECK_ARG(static_cast<bool>(f), "BatchLoader: no load function");
    return [f = std::move(f)](std::int64_t i, std::int64_t) { return f(i); };
  }

  // Under m_. The slot of batch b (b >= consumed_), made when first needed.
  Slot& slot(std::int64_t b) {
    while (static_cast<std::int64_t>(slots_.size()) <= b - consumed_) {
      const std::int64_t k = consumed_ + static_cast<std::int64_t>(slots_.size());
      Slot s;
      s.left = std::min(total_, (k + 1) * opt_.batch) - k * opt_.batch;
      s.examples.resize(static_cast<std::size_t>(s.left));
      slots_.push_back(std::move(s));
    }
    return slots_[static_cast<std::size_t>(b - consumed_)];
  }
  bool front_ready() const { return !slots_.empty() && slots_.front().ready; }
  // The consumer's batch holds the first failing example and no example of it is still loading
  // (one of those, earlier in the order, may fail too: the earliest error is the one reported).
  bool front_failed() const {
    return error_ && error_pos_ / opt_.batch == consumed_ && (slots_.empty() || slots_.front().running == 0);
  }

  void work() {
    for (;;) {
      std::int64_t pos = 0, b = 0, index = 0, epoch = 0;
      {
        std::unique_lock<std::mutex> lock(m_);
        // Bounded prefetch: examples of at most `prefetch` + 1 batches ahead of the consumer.
        const auto window = static_cast<std::int64_t>(opt_.prefetch) + 1;
        work_cv_.wait(lock, [&] { return stop_ || error_ || next_pos_ >= total_ || next_pos_ / opt_.batch < consumed_ + window; });
        // After an error nothing later is needed: every example before it is already taken.
        if (stop_ || error_ || next_pos_ >= total_) return;
        pos = next_pos_++;
        b = pos / opt_.batch;
        ++slot(b).running;
        index = order_[static_cast<std::size_t>(pos)];
        epoch = epoch_;
      }
      Example e;
      std::exception_ptr err;
      try {
        e = load_(index, epoch);
      } catch (...) {
        err = std::current_exception();
      }
      std::vector<Example> all;  // the whole batch, when this example completes it
      Batch batch;
      {
        std::lock_guard<std::mutex> lock(m_);
        Slot& s = slot(b);  // not consumed yet: it is not ready until every example is in
        --s.running;
        if (err) {
          if (!error_ || pos < error_pos_) {
            error_ = err;
            error_pos_ = pos;
          }
          ready_cv_.notify_all();
          work_cv_.notify_all();  // the others stop taking examples
          continue;
        }
        s.examples[static_cast<std::size_t>(pos - b * opt_.batch)] = std::move(e);
        // After an error the consumer waits for the failing batch's last running example (an
        // earlier one may fail too): this may have been it.
        if (error_ && s.running == 0) ready_cv_.notify_all();
        if (--s.left > 0) continue;
        all = std::move(s.examples);
        if (!spare_.empty()) {  // the memory of a batch the consumer is done with
          batch = std::move(spare_.back());
          spare_.pop_back();
        }
      }
      // assembled outside the lock: the others keep loading meanwhile
      batch.images.clear();
      batch.labels.clear();
      batch.indices.clear();
      batch.images.reserve(all.size() * all.front().image.size());
      for (std::size_t k = 0; k < all.size(); ++k) {
        batch.images.insert(batch.images.end(), all[k].image.begin(), all[k].image.end());
        batch.labels.push_back(all[k].label);
        batch.indices.push_back(order_[static_cast<std::size_t>(b * opt_.batch) + k]);  // order_ is fixed during an epoch
      }
      std::lock_guard<std::mutex> lock(m_);
      Slot& s = slot(b);
      s.batch = std::move(batch);
      s.ready = true;
      ready_cv_.notify_all();
    }
  }

  void stop() {
    {
      std::lock_guard<std::mutex> lock(m_);
      stop_ = true;
      work_cv_.notify_all();
    }
    for (auto& t : workers_) t.join();
    workers_.clear();
  }

  std::int64_t n_;
  std::function<Example(std::int64_t, std::int64_t)> load_;
  Options opt_;
  std::mutex m_;
  std::condition_variable work_cv_, ready_cv_;  // workers wait for room or stop; the consumer for its batch
  // The epoch in progress (under m_).
  std::vector<std::int64_t> order_;
  std::int64_t epoch_ = 0, batches_ = 0, total_ = 0;  // total_: examples used (drop_last leaves the rest)
  std::int64_t next_pos_ = 0;  // the next position of order_ a worker takes
  std::int64_t consumed_ = 0;  // batches handed to the consumer; slots_ holds the next ones
  std::deque<Slot> slots_;
  std::vector<Batch> spare_;  // batches given back by next(), for their memory
  std::exception_ptr error_;
  std::int64_t error_pos_ = -1;  // position in order_ of error_
  bool stop_ = false;
  std::vector<std::thread> workers_;
};

}  // namespace tasn::data
