// tasn/core/softmax_cpu.h - row-wise softmax forward/backward on the CPU (Eigen, OpenMP).
//
// Rows are contiguous, `len` elements each. The exponentials and sums go through tasn/core/vec_cpu.h
// (Eigen packets, results independent of the rows' addresses); the backward's per-element step is
// tasn::softmax_backward_term, the function the CUDA kernels call.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "tasn/core/common.h"
#include "tasn/core/parallel.h"
#include "tasn/core/tensor.h"
#include "tasn/core/scratch.h"
#include "tasn/core/softmax_math.h"
#include "tasn/core/vec_cpu.h"

namespace tasn::cpu {

template <class T>
using RowMatrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using RowArray = Eigen::Array<T, 1, Eigen::Dynamic>;

// The row's maximum m and log of its exp-sum: log softmax_j = scale (x_j - m) - log_sum.
template <class T>
struct SoftmaxRowStats {
  T m, log_sum;
};

// out = softmax(scale * in) over one row of len elements (one exp per element); in and out may
// alias. Returns the statistics, so log-probabilities need no further exp or log.
template <class T>
SoftmaxRowStats<T> softmax_row(const T* in, T* out, std::int64_t len, T scale) {
  // scale > 0 (the callers' contract), so the maximum of scale * x is scale * max(x)
  const T m = vec::max(in, len);
  const T sum = vec::exp_shifted(in, out, len, m, scale);
  vec::scale(out, len, T(1) / sum);
  return {m, std::log(sum)};
}

template <class T>
void softmax_rows(const T* in, T* out, std::int64_t rows, std::int64_t len, T scale, bool parallel) {
  auto row = [&](std::int64_t r) { softmax_row(in + r * len, out + r * len, len, scale); };
  if (parallel) {
    parallel_for(0, rows, row);
  } else {
    for (std::int64_t r = 0; r < rows; ++r) row(r);
  }
}

// dx[r, k] (+)= scale * y[r, k] * (dy[r, k] - sum_j y[r, j] dy[r, j]): the softmax backward for
// y = softmax(scale * x). With accumulate the result is added to dx instead of stored.
template <class T>
void softmax_backward_row(const T* y, const T* dy, T* dx, std::int64_t len, T scale, bool accumulate) {
  const T dot = vec::dot(y, dy, len);
  if (accumulate) {
    for (std::int64_t k = 0; k < len; ++k) dx[k] += softmax_backward_term(y[k], dy[k], dot, scale);
  } else {
    for (std::int64_t k = 0; k < len; ++k) dx[k] = softmax_backward_term(y[k], dy[k], dot, scale);
  }
}

template <class T>
void softmax_backward_rows(const T* y, const T* dy, T* dx, std::int64_t rows, std::int64_t len,
                           T scale, bool accumulate, bool parallel) {
  auto row = [&](std::int64_t r) {
    softmax_backward_row(y + r * len, dy + r * len, dx + r * len, len, scale, accumulate);
  };
  if (parallel) {
    parallel_for(0, rows, row);
  } else {
    for (std::int64_t r = 0; r < rows; ++r) row(r);
  }
}

// True when no element of data[0, n) is NaN or +-Inf: an exponent-bits test that vectorises.
template <class T>
bool all_finite_serial(const T* data, std::int64_t n) {
  using Bits = std::conditional_t<sizeof(T) == 4, std::uint32_t, std::uint64_t>;
  constexpr Bits exp_mask = sizeof(T) == 4 ? Bits(0x7f800000u) : Bits(0x7ff0000000000000ull);
  Bits bad = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    Bits b;
    std::memcpy(&b, data + i, sizeof(T));
    bad |= static_cast<Bits>((b & exp_mask) == exp_mask);
  }
  return bad == 0;
}

// Throws tasn::InvalidArgument naming `name` and the first offending index when data holds a NaN
// or an infinity. Multi-threaded over chunks.
template <class T>
void check_all_finite(const T* data, std::int64_t numel, const char* name, const char* op) {
  constexpr std::int64_t kChunk = std::int64_t(1) << 16;
  const std::int64_t chunks = (numel + kChunk - 1) / kChunk;
  std::atomic<std::int64_t> first_bad{chunks};  // the first chunk holding a non-finite value
  parallel_for(0, chunks, [&](std::int64_t c) {
    const std::int64_t b = c * kChunk;
    if (all_finite_serial(data + b, std::min(kChunk, numel - b))) return;
    std::int64_t cur = first_bad.load();
    while (c < cur && !first_bad.compare_exchange_weak(cur, c)) {
    }
  });
  for (std::int64_t i = first_bad.load() * kChunk; i < numel; ++i)
    if (!std::isfinite(data[i])) throw InvalidArgument(detail::nonfinite_message(op, name, data[i], i, numel));
}

}  // namespace tasn::cpu
