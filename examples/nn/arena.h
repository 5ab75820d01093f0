// examples/nn/arena.h - the per-step memory of the trainer: a bump allocator that hands out
// 64-byte aligned blocks (activations, what backward keeps, layer scratch) and is reset at the
// start of every step. The first steps grow it in chunks; a reset that finds more than one chunk
// replaces them by a single chunk of the high-water size, so from then on a step allocates nothing
// from the heap (tested in test_trainer_core.cpp with a counting operator new).
//
// Scratch inside a layer: `auto m = arena.mark(); ... arena.rewind(m);` frees what was taken after
// the mark (stack order).
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <vector>

#include "tasn/core/common.h"

namespace tasn::nn {

// Marks a call into a third-party library whose internal allocations the project does not control
// (Eigen's parallel GEMM allocates its blocking per product; oneDNN 2.6 its argument map per
// primitive execution), so the allocation test (tests/test_trainer_allocations.cpp) can tell them
// apart from the project's own, which must be zero after warm-up.
namespace detail {
inline std::atomic<int> library_calls{0};
}
struct LibraryCall {
  LibraryCall() { detail::library_calls.fetch_add(1, std::memory_order_relaxed); }
  ~LibraryCall() { detail::library_calls.fetch_sub(1, std::memory_order_relaxed); }
  LibraryCall(const LibraryCall&) = delete;
  LibraryCall& operator=(const LibraryCall&) = delete;
};
inline bool in_library_call() { return detail::library_calls.load(std::memory_order_relaxed) > 0; }

// Where an arena's chunks come from: host memory (here) or device memory (the CUDA context's
// DeviceMemory in examples/gpu/cuda_exec.h). allocate() throws on failure and counts.
struct HostMemory {
  static constexpr bool kHost = true;
  static void* allocate(std::size_t align, std::size_t size) {
    void* p = std::aligned_alloc(align, size);
    if (!p) throw std::bad_alloc();
    return p;
  }
  static void release(void* p) { std::free(p); }
};

template <class Memory>
class BasicArena {
 public:
  // 256 on the device: cuDNN and the library's CUDA operators want 256-byte aligned workspaces.
  static constexpr std::size_t kAlign = Memory::kHost ? 64 : 256;

  BasicArena() = default;
  explicit BasicArena(std::size_t initial_bytes) { reserve(initial_bytes); }
  BasicArena(const BasicArena&) = delete;
  BasicArena& operator=(const BasicArena&) = delete;
  BasicArena(BasicArena&&) noexcept = default;
  BasicArena& operator=(BasicArena&&) noexcept = default;

  // n elements of T, uninitialised, aligned to 64 bytes; valid until reset() or a rewind() past it.
  template <class T>
  T* alloc(std::int64_t n) {
    TASN_CHECK_ARG(n >= 0, "Arena::alloc: negative element count ", n);
    return static_cast<T*>(bytes(static_cast<std::size_t>(n) * sizeof(T)));
  }
  // n elements of T set to zero (host arenas; a device context zeroes on its stream).
  template <class T>
  T* zeros(std::int64_t n) {
    static_assert(Memory::kHost, "BasicArena::zeros: device memory is zeroed by the context, on its stream");
    T* p = alloc<T>(n);
    if (n > 0) std::memset(static_cast<void*>(p), 0, static_cast<std::size_t>(n) * sizeof(T));
    return p;
  }

  void* bytes(std::size_t size) {
    size = round_up(size == 0 ? 1 : size);
    if (chunks_.empty() || chunks_[cur_].used + size > chunks_[cur_].size) next_chunk(size);
    Chunk& c = chunks_[cur_];
    void* p = c.data.get() + c.used;
    c.used += size;
    live_ += size;
    high_ = std::max(high_, live_);
    return p;
  }

  // A position to rewind to (stack order).
  struct Mark {
    std::size_t chunk, used, live;
  };
  Mark mark() const { return {cur_, chunks_.empty() ? 0 : chunks_[cur_].used, live_}; }
  void rewind(const Mark& m) {
    if (chunks_.empty()) return;
    for (std::size_t i = m.chunk + 1; i <= cur_ && i < chunks_.size(); ++i) chunks_[i].used = 0;
    cur_ = m.chunk;
    chunks_[cur_].used = m.used;
    live_ = m.live;
  }

  // Frees everything (the start of a step). Several chunks become one of the high-water size, so
  // a step that needs no more than the largest earlier one allocates nothing.
  void reset() {
    if (chunks_.size() > 1) {
      const std::size_t want = round_up(high_ + high_ / 8);
      chunks_.clear();
      chunks_.push_back(make_chunk(want));
    }
    for (auto& c : chunks_) c.used = 0;
    cur_ = 0;
    live_ = 0;
  }
  void reserve(std::size_t bytes) {
    if (capacity() >= bytes) return;
    chunks_.clear();
    chunks_.push_back(make_chunk(round_up(bytes)));
    cur_ = 0;
    live_ = 0;
  }

  std::size_t high_water() const { return high_; }
  std::size_t capacity() const {
    std::size_t s = 0;
    for (const auto& c : chunks_) s += c.size;
    return s;
  }
  // Allocations made so far (chunks: heap, or cudaMalloc on the device); a warmed-up step adds none.
  std::int64_t heap_allocations() const { return heap_allocs_; }

 private:
  struct Free {
    void operator()(unsigned char* p) const { Memory::release(p); }
  };
  struct Chunk {
    std::unique_ptr<unsigned char, Free> data;
    std::size_t size = 0, used = 0;
  };
  static std::size_t round_up(std::size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

  Chunk make_chunk(std::size_t size) {
    void* p = Memory::allocate(kAlign, size);
    ++heap_allocs_;
    Chunk c;
    c.data.reset(static_cast<unsigned char*>(p));
    c.size = size;
    return c;
  }
  void next_chunk(std::size_t need) {
    for (std::size_t i = chunks_.empty() ? 0 : cur_ + 1; i < chunks_.size(); ++i)
      if (chunks_[i].size >= need) {
        cur_ = i;
        chunks_[i].used = 0;
        return;
      }
    const std::size_t last = chunks_.empty() ? 0 : chunks_.back().size;
    chunks_.push_back(make_chunk(std::max({need, last * 2, std::size_t(1) << 20})));
    cur_ = chunks_.size() - 1;
  }

  std::vector<Chunk> chunks_;
  std::size_t cur_ = 0, live_ = 0, high_ = 0;
  std::int64_t heap_allocs_ = 0;
};
using Arena = BasicArena<HostMemory>;

}  // namespace tasn::nn
