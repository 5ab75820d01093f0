// tasn/core/scratch.h - the one way the CPU operators allocate internal scratch memory.
//
// The byte count is computed with checked arithmetic, and an allocation the machine cannot serve
// (std::bad_alloc, or std::length_error from a container) becomes tasn::InvalidArgument naming
// the operator, the buffer, the element count and the bytes: a caller that passes sizes too large
// for the machine gets the same kind of error as one that passes sizes too large for 64-bit
// indexing. No Eigen, no CUDA (the CUDA operators never allocate: they take a workspace).
#pragma once

#include <cstddef>
#include <cstdint>
#include <limits>
#include <new>
#include <stdexcept>
#include <vector>

#include "tasn/core/common.h"
#include "tasn/core/tensor.h"

namespace tasn::detail {

// Bytes of `elems` elements of `elem_size` bytes; throws when negative or beyond what one object
// may span (PTRDIFF_MAX bytes, the limit of std::vector and of pointer differences).
inline std::size_t scratch_bytes(const char* op, const char* buffer, std::int64_t elems, std::size_t elem_size) {
  TASN_CHECK_ARG(elems >= 0, op, ": ", buffer, ": negative element count ", elems);
  constexpr auto kMaxBytes = static_cast<std::uint64_t>(std::numeric_limits<std::ptrdiff_t>::max());
  TASN_CHECK_ARG(elem_size == 0 || static_cast<std::uint64_t>(elems) <= kMaxBytes / elem_size, op, ": ", buffer, " of ",
                 elems, " elements of ", elem_size, " bytes exceeds the largest possible allocation (", kMaxBytes,
                 " bytes)");
  return static_cast<std::size_t>(elems) * elem_size;
}

// Runs alloc(), which allocates `elems` elements of `elem_size` bytes for `buffer`, and returns
// its result; a failed allocation becomes tasn::InvalidArgument.
template <class Alloc>
decltype(auto) allocate_scratch(const char* op, const char* buffer, std::int64_t elems, std::size_t elem_size,
                                Alloc&& alloc) {
  const std::size_t bytes = scratch_bytes(op, buffer, elems, elem_size);
  try {
    return alloc();
  } catch (const std::bad_alloc&) {
    throw InvalidArgument(concat(op, ": cannot allocate ", buffer, " (", elems, " elements, ", bytes, " bytes)"));
  } catch (const std::length_error&) {
    throw InvalidArgument(concat(op, ": cannot allocate ", buffer, " (", elems, " elements, ", bytes, " bytes)"));
  }
}

// A std::vector of `elems` copies of `value`, allocated through allocate_scratch.
template <class T>
std::vector<T> scratch_vector(const char* op, const char* buffer, std::int64_t elems, const T& value = T()) {
  return allocate_scratch(op, buffer, elems, sizeof(T),
                          [&] { return std::vector<T>(static_cast<std::size_t>(elems), value); });
}

// The workspace a CPU operator computes in: the caller's (checked: size and alignment) or, when
// the caller gives none (data == nullptr), one of `need` bytes allocated here through
// allocate_scratch and freed with this object. The only allocation a CPU operator makes.
class HostWorkspace {
 public:
  HostWorkspace(const Workspace& given, std::size_t need, const char* op) {
    if (given.data != nullptr || need == 0) {
      check_workspace(given, need, op);
      data_ = given.data;
      return;
    }
    own_ = allocate_scratch(op, "the workspace", static_cast<std::int64_t>(need), 1, [&] {
      return static_cast<unsigned char*>(::operator new(align_up(need), std::align_val_t(kWorkspaceAlign)));
    });
    data_ = own_;
  }
  HostWorkspace(const HostWorkspace&) = delete;
  HostWorkspace& operator=(const HostWorkspace&) = delete;
  ~HostWorkspace() {
    if (own_) ::operator delete(own_, std::align_val_t(kWorkspaceAlign));
  }
  void* data() const { return data_; }

 private:
  void* data_ = nullptr;
  unsigned char* own_ = nullptr;
};

}  // namespace tasn::detail
