// tasn/core/value_checks.cuh - the CUDA half of the library's non-finite policy (check_finite).
//
// With options.check_finite (the default on both backends) an operator refuses NaN/Inf inputs
// (and, for the losses, labels outside [0, K) that are not ignore_index) with the CPU path's
// tasn::InvalidArgument message. On the device that takes a scan kernel per checked input, each
// recording its first bad index with atomicMin in a slot of the operator's workspace, and ONE
// read-back with one stream synchronisation per call, before the operator launches its own
// kernels: on an exception nothing was written, as on the CPU. With check_finite = false there
// is no scan and no synchronisation: non-finite values propagate (NaN outputs) and a bad label
// gives its row a NaN loss and zero gradient, on both backends.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "tasn/core/common.h"
#include "tasn/core/context.cuh"
#include "tasn/core/cuda_check.cuh"
#include "tasn/core/dtype.cuh"
#include "tasn/core/row_kernel.cuh"
#include "tasn/core/tensor.h"

namespace tasn::cuda::detail {

constexpr int kMaxValueChecks = 4;
constexpr unsigned long long kNoBadIndex = ~0ull;

namespace value_check_kernels {

template <class T>
__global__ void first_nonfinite(const T* __restrict__ p, std::int64_t n, unsigned long long* slot) {
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x)
    if (!isfinite(to_float(p[i]))) atomicMin(slot, static_cast<unsigned long long>(i));
}

// First index i with idx[i] outside [0, k); with skip_ignored, idx[i] == ignore is allowed too.
static __global__ void first_out_of_range(const std::int64_t* __restrict__ idx, std::int64_t n, std::int64_t k,
                                          bool skip_ignored, std::int64_t ignore, unsigned long long* slot) {
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t v = idx[i];
    if (!(skip_ignored && v == ignore) && (v < 0 || v >= k)) atomicMin(slot, static_cast<unsigned long long>(i));
  }
}

}  // namespace value_check_kernels

// Workspace slots of the value checks: taken only when `enabled` (same code for the size query).
inline unsigned long long* take_value_check_slots(WorkspaceCarver& ws, bool enabled) {
  return enabled ? ws.take<unsigned long long>(kMaxValueChecks) : nullptr;
}

// Enqueues up to kMaxValueChecks scans on ctx.stream, then finish() reads every slot back with one
// copy and one synchronisation and throws the CPU path's message for the first failed check.
class ValueChecks {
 public:
  ValueChecks(const Context& ctx, unsigned long long* slots, const char* op) : ctx_(ctx), slots_(slots), op_(op) {
    if (slots_) TASN_CUDA_CHECK(cudaMemsetAsync(slots_, 0xff, sizeof(unsigned long long) * kMaxValueChecks, ctx_.stream));
  }

  bool enabled() const { return slots_ != nullptr; }

  // NaN/Inf anywhere in p[0, n) (device memory) fails the check `name`.
  template <class T>
  void finite(const T* p, std::int64_t n, const char* name) {
    if (!slots_ || n == 0 || !p) return;
    Entry& e = next(name, n);
    e.fetch_value = [](const void* q, std::int64_t i, cudaStream_t s) {
      T v{};
      TASN_CUDA_CHECK(cudaMemcpyAsync(&v, static_cast<const T*>(q) + i, sizeof(T), cudaMemcpyDeviceToHost, s));
      TASN_CUDA_CHECK(cudaStreamSynchronize(s));
      return to_float(v);
    };
    e.ptr = p;
    value_check_kernels::first_nonfinite<T><<<kernels::grid_for(n, 256), 256, 0, ctx_.stream>>>(p, n, slot(e));
    TASN_CUDA_CHECK_LAUNCH("first_nonfinite");
  }

  // A label that is neither ignore_index nor in [0, k) fails the check (bad_label_message).
  void labels(const std::int64_t* labels, std::int64_t n, std::int64_t k, std::int64_t ignore_index) {
    range(labels, n, k, true, ignore_index, nullptr);
  }

  // An index outside [0, k) fails the check; message(op, i, value, k) words the error (the CPU
  // path's message for that argument, e.g. sampler::bad_channel_message).
  using IndexMessage = std::string (*)(const char* op, std::int64_t i, std::int64_t value, std::int64_t k);
  void indices(const std::int64_t* idx, std::int64_t n, std::int64_t k, IndexMessage message) {
    range(idx, n, k, false, 0, message);
  }

  // One read-back and one synchronisation; throws tasn::InvalidArgument for the first failed check.
  void finish() {
    if (!slots_ || count_ == 0) return;
    unsigned long long h[kMaxValueChecks];
    TASN_CUDA_CHECK(cudaMemcpyAsync(h, slots_, sizeof(h), cudaMemcpyDeviceToHost, ctx_.stream));
    TASN_CUDA_CHECK(cudaStreamSynchronize(ctx_.stream));
    for (int c = 0; c < count_; ++c) {
      if (h[c] == kNoBadIndex) continue;
      const Entry& e = entries_[c];
      const auto i = static_cast<std::int64_t>(h[c]);
      if (e.is_index) {
        std::int64_t y = 0;
        TASN_CUDA_CHECK(cudaMemcpyAsync(&y, static_cast<const std::int64_t*>(e.ptr) + i, sizeof(y),
                                        cudaMemcpyDeviceToHost, ctx_.stream));
        TASN_CUDA_CHECK(cudaStreamSynchronize(ctx_.stream));
        if (e.index_message) throw InvalidArgument(e.index_message(op_, i, y, e.k));
        throw InvalidArgument(::tasn::detail::bad_label_message(op_, i, y, e.k, e.ignore_index));
      }
      throw InvalidArgument(::tasn::detail::nonfinite_message(op_, e.name, e.fetch_value(e.ptr, i, ctx_.stream), i, e.n));
    }
  }

 private:
  // The one range scan behind labels() and indices().
  void range(const std::int64_t* idx, std::int64_t n, std::int64_t k, bool skip_ignored, std::int64_t ignore,
             IndexMessage message) {
    if (!slots_ || n == 0) return;
    Entry& e = next(skip_ignored ? "labels" : "indices", n);
    e.is_index = true;
    e.index_message = message;
    e.ptr = idx;
    e.k = k;
    e.ignore_index = ignore;
    value_check_kernels::first_out_of_range<<<kernels::grid_for(n, 256), 256, 0, ctx_.stream>>>(
        idx, n, k, skip_ignored, ignore, slot(e));
    TASN_CUDA_CHECK_LAUNCH("first_out_of_range");
  }

  struct Entry {
    const char* name = nullptr;
    std::int64_t n = 0;
    const void* ptr = nullptr;
    float (*fetch_value)(const void*, std::int64_t, cudaStream_t) = nullptr;
    bool is_index = false;  // labels() / indices(); else finite()
    std::int64_t k = 0, ignore_index = 0;
    IndexMessage index_message = nullptr;
  };
  Entry& next(const char* name, std::int64_t n) {
    TASN_CHECK_ARG(count_ < kMaxValueChecks, op_, ": more than ", kMaxValueChecks, " value checks in one call");
    Entry& e = entries_[count_++];
    e.name = name;
    e.n = n;
    return e;
  }
  unsigned long long* slot(const Entry& e) { return slots_ + (&e - entries_); }

  const Context& ctx_;
  unsigned long long* slots_;
  const char* op_;
  Entry entries_[kMaxValueChecks];
  int count_ = 0;
};

}  // namespace tasn::cuda::detail
