// tasn/core/common.h - macros, the library's exception types and checked size arithmetic.
//
// This header is shared by the CPU path and the CUDA path: it includes no Eigen and no CUDA
// headers, so it compiles cleanly with g++ and nvcc alike.
#pragma once

#include <cstdint>
#include <limits>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

// Functions marked TASN_HD run on the host and on the device. The CPU path calls them, so the CPU
// tests execute exactly the per-element math that the CUDA kernels run.
#if defined(__CUDACC__)
#define TASN_HD __host__ __device__ __forceinline__
#else
#define TASN_HD inline
#endif

namespace tasn {

// Base of every exception the library throws. Catch this to catch them all.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A caller passed an argument the operator cannot accept (sizes, pointers, scalars).
// The message names the argument and the values that were seen.
class InvalidArgument : public Error {
 public:
  using Error::Error;
};

// A CUDA runtime or cuBLAS call failed. The message names the call, the error and file:line.
class CudaError : public Error {
 public:
  using Error::Error;
};

namespace detail {

// The largest finite float, as a double. Options that the computation uses as float (on the CUDA
// path, and on the CPU path with float data) must not exceed it in magnitude, so both paths
// refuse them alike instead of computing with an infinity.
constexpr double kFloatMax = static_cast<double>(std::numeric_limits<float>::max());

template <class... Parts>
std::string concat(Parts&&... parts) {
  std::ostringstream os;
  (os << ... << std::forward<Parts>(parts));
  return os.str();
}

// Multiply non-negative sizes, throwing instead of overflowing int64_t.
inline std::int64_t checked_mul(std::int64_t a, std::int64_t b, const char* what) {
  if (a < 0 || b < 0) throw InvalidArgument(concat(what, ": negative size (", a, " x ", b, ")"));
  if (a != 0 && b > std::numeric_limits<std::int64_t>::max() / a)
    throw InvalidArgument(concat(what, ": size ", a, " x ", b, " overflows 64-bit indexing"));
  return a * b;
}

inline std::int64_t checked_add(std::int64_t a, std::int64_t b, const char* what) {
  if (a < 0 || b < 0) throw InvalidArgument(concat(what, ": negative size (", a, " + ", b, ")"));
  if (b > std::numeric_limits<std::int64_t>::max() - a)
    throw InvalidArgument(concat(what, ": size ", a, " + ", b, " overflows 64-bit indexing"));
  return a + b;
}

}  // namespace detail
}  // namespace tasn

// Throws tasn::InvalidArgument with a message built from the remaining arguments when cond fails.
#define TASN_CHECK_ARG(cond, ...)                                          \
  do {                                                                     \
    if (!(cond)) throw ::tasn::InvalidArgument(::tasn::detail::concat(__VA_ARGS__)); \
  } while (0)

namespace tasn::detail {

// A pointer argument must be non-null unless it is to hold no elements.
inline void check_pointer(const void* ptr, const char* name, std::int64_t numel, const char* op) {
  TASN_CHECK_ARG(ptr != nullptr || numel == 0, op, ": ", name, " is null but must hold ", numel,
                 " elements");
}

}  // namespace tasn::detail
