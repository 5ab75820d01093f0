// tasn/core/view.h - non-owning views that carry their sizes, so operators can check that the
// tensors a caller passes agree (shape mismatches become clear errors instead of overruns).
// Host or device memory alike; no Eigen, no CUDA.
#pragma once

#include <cstdint>

#include "tasn/core/common.h"

namespace tasn {

// Contiguous row-major matrix (rows x cols). A default-constructed view is "absent".
template <class T>
struct MatrixView {
  T* data = nullptr;
  std::int64_t rows = 0, cols = 0;

  constexpr MatrixView() = default;
  constexpr MatrixView(T* d, std::int64_t r, std::int64_t c) : data(d), rows(r), cols(c) {}
  template <class U>
  constexpr MatrixView(const MatrixView<U>& o) : data(o.data), rows(o.rows), cols(o.cols) {}  // T* from U*
  bool present() const { return data != nullptr; }
};

// Contiguous vector. A default-constructed view is "absent".
template <class T>
struct VectorView {
  T* data = nullptr;
  std::int64_t size = 0;

  constexpr VectorView() = default;
  constexpr VectorView(T* d, std::int64_t n) : data(d), size(n) {}
  template <class U>
  constexpr VectorView(const VectorView<U>& o) : data(o.data), size(o.size) {}
  bool present() const { return data != nullptr; }
};

namespace detail {

// `name` must have the shape of `ref_name` when present.
template <class A, class B>
void check_same_shape(const MatrixView<A>& v, const char* name, const MatrixView<B>& ref,
                      const char* ref_name, const char* op) {
  if (!v.present()) return;
  TASN_CHECK_ARG(v.rows == ref.rows && v.cols == ref.cols, op, ": ", name, " has shape (", v.rows, ", ",
                 v.cols, ") but ", ref_name, " has shape (", ref.rows, ", ", ref.cols, ")");
}

template <class A>
void check_size(const VectorView<A>& v, const char* name, std::int64_t expected, const char* why,
                const char* op) {
  if (!v.present()) return;
  TASN_CHECK_ARG(v.size == expected, op, ": ", name, " holds ", v.size, " elements but ", expected,
                 " are needed (", why, ")");
}

}  // namespace detail
}  // namespace tasn
