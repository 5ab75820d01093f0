// tests/support/thread_comm.h - a dist::Communicator for R ranks that are threads of one process
// (tests of the data parallelism without MPI: every machine, the sanitizer build). Each rank's
// thread calls its own ThreadComm; a collective waits until all R have arrived, then each rank
// reads the result. Sums go in rank order (0 + 1 + ... in double or float, as called), so every
// rank gets the same bits. Ranks that call different collectives (kind, size or root) at the same
// point fail with a message instead of corrupting memory, and a rank that throws poisons the
// group: the others' waits throw instead of hanging.
#pragma once

#include <algorithm>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "dist/comm.h"

namespace tasn::test {

class ThreadGroup {
 public:
  explicit ThreadGroup(int ranks) : ranks_(ranks), in_(static_cast<std::size_t>(ranks)) {}
  int ranks() const { return ranks_; }

  // All ranks deposit their buffer; `combine(bufs, out)` runs once on the last to arrive; every
  // rank then copies `out` back. `what` names the call (kind, size, root): it must match.
  void collective(int rank, const std::string& what, void* data, std::size_t bytes,
                  const std::function<void(const std::vector<const unsigned char*>&, unsigned char*)>& combine) {
    std::unique_lock<std::mutex> lock(m_);
    check_poison();
    const std::uint64_t gen = gen_;
    if (arrived_ == 0) {
      what_ = what;
    } else if (what != what_) {
      poison_locked("rank " + std::to_string(rank) + " called " + what + " while another rank called " + what_);
      check_poison();
    }
    in_[static_cast<std::size_t>(rank)] = static_cast<const unsigned char*>(data);
    if (++arrived_ == ranks_) {
      out_.assign(bytes, 0);
      combine(in_, out_.data());
      arrived_ = 0;
      left_ = ranks_;
      ++gen_;
      cv_.notify_all();
    } else {
      cv_.wait(lock, [&] { return gen_ != gen || !poison_.empty(); });
      check_poison();
    }
    std::memcpy(data, out_.data(), bytes);
    // the last rank to read lets the next collective start (out_ is reused)
    if (--left_ == 0) cv_.notify_all();
    else cv_.wait(lock, [&] { return left_ == 0 || !poison_.empty(); });
  }
  // Ends every wait of the group with an exception (a rank failed).
  void poison(const std::string& why) {
    std::lock_guard<std::mutex> lock(m_);
    poison_locked(why);
  }

 private:
  int ranks_;
  std::mutex m_;
  std::condition_variable cv_;
  std::vector<const unsigned char*> in_;
  std::vector<unsigned char> out_;
  int arrived_ = 0, left_ = 0;
  std::uint64_t gen_ = 0;
  std::string what_;
  std::string poison_;  // why the group failed ("" while it has not); under m_

  void poison_locked(const std::string& why) {
    if (poison_.empty()) poison_ = why;
    cv_.notify_all();
  }
  void check_poison() const {
    if (!poison_.empty()) throw std::runtime_error("ThreadGroup: " + poison_);
  }
};

class ThreadComm final : public dist::Communicator {
 public:
  ThreadComm(ThreadGroup& g, int rank) : g_(&g), rank_(rank) {}
  int rank() const override { return rank_; }
  int size() const override { return g_->ranks(); }
  int local_size() const override { return g_->ranks(); }
  int local_rank() const override { return rank_; }
  std::string describe() const override { return "threads (" + std::to_string(size()) + " ranks)"; }
  void allreduce_sum(float* v, std::int64_t n) override { sum(v, n); }
  void allreduce_sum(double* v, std::int64_t n) override { sum(v, n); }
  void allreduce_max(std::uint64_t* v, std::int64_t n) override {
    g_->collective(rank_, "allreduce_max of " + std::to_string(n), v, sizeof(*v) * std::size_t(n),
                   [n](const auto& in, unsigned char* out) {
      auto* o = reinterpret_cast<std::uint64_t*>(out);
      for (std::int64_t i = 0; i < n; ++i) {
        std::uint64_t m = 0;
        for (const auto* b : in) m = std::max(m, reinterpret_cast<const std::uint64_t*>(b)[i]);
        o[i] = m;
      }
    });
  }
  void broadcast(void* data, std::int64_t bytes, int root) override {
    g_->collective(rank_, "broadcast of " + std::to_string(bytes) + " bytes from " + std::to_string(root), data,
                   std::size_t(bytes),
                   [=](const auto& in, unsigned char* out) { std::memcpy(out, in[std::size_t(root)], std::size_t(bytes)); });
  }
  [[noreturn]] void abort(int code) override {
    g_->poison("rank " + std::to_string(rank_) + " aborted (" + std::to_string(code) + ")");
    throw std::runtime_error("ThreadComm::abort(" + std::to_string(code) + ")");
  }

 private:
  template <class T>
  void sum(T* v, std::int64_t n) {
    g_->collective(rank_, std::string("allreduce_sum of ") + std::to_string(n) + (sizeof(T) == 4 ? " float" : " double"),
                   v, sizeof(T) * std::size_t(n), [n](const auto& in, unsigned char* out) {
      auto* o = reinterpret_cast<T*>(out);
      for (std::int64_t i = 0; i < n; ++i) {
        T s = 0;
        for (const auto* b : in) s += reinterpret_cast<const T*>(b)[i];
        o[i] = s;
      }
    });
  }
  ThreadGroup* g_;
  int rank_;
};

// Runs f(rank, comm) on R threads at once; rethrows the first exception.
template <class F>
void run_ranks(int ranks, F&& f) {
  ThreadGroup g(ranks);
  std::vector<std::thread> t;
  std::vector<std::exception_ptr> err(static_cast<std::size_t>(ranks));
  for (int r = 0; r < ranks; ++r)
    t.emplace_back([&, r] {
      ThreadComm c(g, r);
      try {
        f(r, c);
      } catch (const std::exception& e) {
        err[static_cast<std::size_t>(r)] = std::current_exception();
        g.poison("rank " + std::to_string(r) + " failed: " + e.what());
      } catch (...) {
        err[static_cast<std::size_t>(r)] = std::current_exception();
        g.poison("rank " + std::to_string(r) + " failed");
      }
    });
  for (auto& x : t) x.join();
  for (auto& e : err)
    if (e) std::rethrow_exception(e);
}

}  // namespace tasn::test
