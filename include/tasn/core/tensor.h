// tasn/core/tensor.h - the library's calling convention: strided tensor views, workspaces and
// the shape checks every operator runs on them. Shared by the CPU path and the CUDA path: no
// Eigen, no CUDA headers.
//
// Every operator is called the same way on both backends:
//
//   tasn::cpu::op(args);                          // allocates its scratch memory itself
//   tasn::cpu::op(args, {ptr, bytes});            // or uses a caller's workspace
//   tasn::cuda::op(ctx, args, {ptr, bytes});      // device workspace, enqueued on ctx.stream
//   std::size_t b = tasn::cpu::workspace_bytes(args);   // tasn::cuda::workspace_bytes(args)
//
// where `args` is the operator's arguments struct (views + an options struct), identical for
// both backends. A view is a pointer with sizes and strides (in elements), on the host or the
// device; a default-constructed view is "absent" (for optional arguments).
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <sstream>
#include <string>
#include <type_traits>

#include "tasn/core/common.h"

namespace tasn {

// A non-owning view of a Rank-dimensional tensor: data, size[d] and stride[d] (in elements).
// Indexing works on the host and the device (TASN_HD). Operators accept views whose layout they
// document (the built-in operators: packed row-major, see is_contiguous()); a batch slice of a
// packed tensor (slice()) is packed again, so a caller can hand half of a buffer to an operator
// without copying it.
template <class T, int Rank>
struct TensorRef {
  static_assert(Rank >= 1 && Rank <= 4, "TensorRef supports ranks 1 to 4");
  using value_type = T;
  static constexpr int rank = Rank;

  T* data = nullptr;
  std::int64_t size[Rank] = {};
  std::int64_t stride[Rank] = {};

  constexpr TensorRef() = default;

  // Packed row-major view of `sizes`: stride[Rank-1] = 1, stride[d] = stride[d+1] * size[d+1].
  TensorRef(T* d, std::initializer_list<std::int64_t> sizes) : data(d) {
    TASN_CHECK_ARG(static_cast<int>(sizes.size()) == Rank, "TensorRef: ", sizes.size(), " sizes given for a rank-",
                   Rank, " view");
    int i = 0;
    for (std::int64_t s : sizes) size[i++] = s;
    std::int64_t st = 1;
    for (int k = Rank - 1; k >= 0; --k) {
      stride[k] = st;
      if (size[k] > 0 && st <= std::numeric_limits<std::int64_t>::max() / size[k]) st *= size[k];
    }
  }

  // View with explicit sizes and strides (in elements).
  TensorRef(T* d, std::initializer_list<std::int64_t> sizes, std::initializer_list<std::int64_t> strides)
      : data(d) {
    TASN_CHECK_ARG(static_cast<int>(sizes.size()) == Rank && static_cast<int>(strides.size()) == Rank,
                   "TensorRef: ", sizes.size(), " sizes and ", strides.size(), " strides given for a rank-", Rank,
                   " view");
    int i = 0;
    for (std::int64_t s : sizes) size[i++] = s;
    i = 0;
    for (std::int64_t s : strides) stride[i++] = s;
  }

  // A view of T from a view of U where U* converts to T* (non-const to const).
  template <class U, class = std::enable_if_t<std::is_convertible_v<U*, T*>>>
  constexpr TensorRef(const TensorRef<U, Rank>& o) : data(o.data) {  // NOLINT: implicit on purpose
    for (int k = 0; k < Rank; ++k) {
      size[k] = o.size[k];
      stride[k] = o.stride[k];
    }
  }

  bool present() const { return data != nullptr; }

  // Number of elements (product of the sizes; 0 if any size is 0). Valid for checked views.
  TASN_HD std::int64_t numel() const {
    std::int64_t n = 1;
    for (int k = 0; k < Rank; ++k) n *= size[k];
    return n;
  }

  // True when the view is packed row-major (elements contiguous, last index fastest). Sizes of 1
  // have no stride constraint; a view without elements counts as packed.
  bool is_contiguous() const {
    for (int k = 0; k < Rank; ++k)
      if (size[k] == 0) return true;  // no elements: no layout to get wrong
    std::int64_t st = 1;
    for (int k = Rank - 1; k >= 0; --k) {
      if (size[k] != 1 && stride[k] != st) return false;
      st = saturating_mul(st, size[k]);
    }
    return true;
  }

  // numel() that saturates at INT64_MAX instead of overflowing (for checks of untrusted sizes).
  std::int64_t saturating_numel() const {
    std::int64_t n = 1;
    for (int k = 0; k < Rank; ++k) n = saturating_mul(n, size[k]);
    return n;
  }

  TASN_HD T& operator()(std::int64_t i0) const {
    static_assert(Rank == 1, "rank-1 index");
    return data[i0 * stride[0]];
  }
  TASN_HD T& operator()(std::int64_t i0, std::int64_t i1) const {
    static_assert(Rank == 2, "rank-2 index");
    return data[i0 * stride[0] + i1 * stride[1]];
  }
  TASN_HD T& operator()(std::int64_t i0, std::int64_t i1, std::int64_t i2) const {
    static_assert(Rank == 3, "rank-3 index");
    return data[i0 * stride[0] + i1 * stride[1] + i2 * stride[2]];
  }
  TASN_HD T& operator()(std::int64_t i0, std::int64_t i1, std::int64_t i2, std::int64_t i3) const {
    static_assert(Rank == 4, "rank-4 index");
    return data[i0 * stride[0] + i1 * stride[1] + i2 * stride[2] + i3 * stride[3]];
  }

  // Elements [begin, end) along dimension 0 (a batch slice); throws when out of range.
  TensorRef slice(std::int64_t begin, std::int64_t end) const {
    TASN_CHECK_ARG(0 <= begin && begin <= end && end <= size[0], "TensorRef::slice: [", begin, ", ", end,
                   ") is not inside [0, ", size[0], ")");
    TensorRef r = *this;
    r.data = data ? data + begin * stride[0] : nullptr;
    r.size[0] = end - begin;
    return r;
  }

  // a * b for sizes, INT64_MAX when the product would overflow (negative sizes give 0).
  static std::int64_t saturating_mul(std::int64_t a, std::int64_t b) {
    if (a <= 0 || b <= 0) return 0;
    return a > std::numeric_limits<std::int64_t>::max() / b ? std::numeric_limits<std::int64_t>::max() : a * b;
  }

  // "(2, 3, 4)": for messages.
  std::string shape_string() const {
    std::ostringstream os;
    os << '(';
    for (int k = 0; k < Rank; ++k) os << (k ? ", " : "") << size[k];
    os << ')';
    return os.str();
  }
  std::string stride_string() const {
    std::ostringstream os;
    os << '(';
    for (int k = 0; k < Rank; ++k) os << (k ? ", " : "") << stride[k];
    os << ')';
    return os.str();
  }
};

template <class T>
using Tensor1 = TensorRef<T, 1>;
template <class T>
using Tensor2 = TensorRef<T, 2>;
template <class T>
using Tensor3 = TensorRef<T, 3>;
template <class T>
using Tensor4 = TensorRef<T, 4>;

// The type an operator computes in for storage type T, and the type of the small tensors that
// go with images of T (attention maps, marginals, grids): T itself for float and double (the CPU
// path), float for the CUDA path's __half and __nv_bfloat16 (specialised in tasn/core/dtype.cuh).
// So the same arguments struct holds the same types on both backends for float.
template <class T>
struct compute_type {
  using type = std::remove_const_t<T>;
};
template <class T>
using compute_type_t = typename compute_type<T>::type;

// Scratch memory a caller lends an operator: `bytes` bytes at `data` (host memory for cpu::,
// device memory for cuda::). Query the size with workspace_bytes(args). The CPU path allocates
// its own when given none (data == nullptr); the CUDA path never allocates.
struct Workspace {
  void* data = nullptr;
  std::size_t bytes = 0;
};

namespace detail {

// Sizes as "(a, b, c)".
inline std::string sizes_string(std::initializer_list<std::int64_t> dims) {
  std::ostringstream os;
  os << '(';
  const char* sep = "";
  for (std::int64_t d : dims) {
    os << sep << d;
    sep = ", ";
  }
  os << ')';
  return os.str();
}

// The checks every tensor argument gets, before anything is allocated, launched or written:
//  - `expected` holds the sizes the other arguments imply (layout names them, e.g. "(N, C, H, W)");
//  - the view is packed row-major;
//  - its data pointer is non-null unless it holds no elements.
// Messages name the operator, the argument, what was expected and what was seen.
template <class T, int R>
void check_tensor(const char* op, const char* name, const TensorRef<T, R>& v, const char* layout,
                  std::initializer_list<std::int64_t> expected) {
  int k = 0;
  bool same = static_cast<int>(expected.size()) == R;
  for (std::int64_t e : expected) same = same && k < R && v.size[k++] == e;
  TASN_CHECK_ARG(same, op, ": ", name, " has shape ", v.shape_string(), " but ", layout, " = ",
                 sizes_string(expected), " is required");
  TASN_CHECK_ARG(v.is_contiguous(), op, ": ", name, " of shape ", v.shape_string(), " has strides ",
                 v.stride_string(), "; the operator needs it packed row-major");
  TASN_CHECK_ARG(v.data != nullptr || v.saturating_numel() == 0, op, ": ", name, " is null but must hold ",
                 v.saturating_numel(), " elements");
}

// As check_tensor, for an optional argument: an absent view passes.
template <class T, int R>
void check_optional_tensor(const char* op, const char* name, const TensorRef<T, R>& v, const char* layout,
                           std::initializer_list<std::int64_t> expected) {
  if (v.present()) check_tensor(op, name, v, layout, expected);
}

// A required argument must be present (even when it would hold no elements).
template <class T, int R>
void check_present(const char* op, const char* name, const TensorRef<T, R>& v) {
  TASN_CHECK_ARG(v.present(), op, ": ", name, " is absent (a null view) but is required");
}

// Sizes of a tensor the caller defines (the first argument of an operator): each must be >= 1
// (>= 0 where min_size says so) and their product must fit 64-bit indexing; packed and non-null.
template <class T, int R>
std::int64_t check_leading_tensor(const char* op, const char* name, const TensorRef<T, R>& v, const char* layout,
                                  std::int64_t min_batch = 1) {
  check_present(op, name, v);
  std::int64_t p = 1;
  for (int k = 0; k < R; ++k) {
    const std::int64_t lo = k == 0 ? min_batch : 1;
    TASN_CHECK_ARG(v.size[k] >= lo, op, ": ", name, " must have shape ", layout, " with ",
                   min_batch == 0 ? "N >= 0 and the other sizes >= 1" : "every size >= 1", ", got ",
                   v.shape_string());
  }
  for (int k = 0; k < R; ++k) {
    TASN_CHECK_ARG(v.size[k] == 0 || p <= std::numeric_limits<std::int64_t>::max() / v.size[k], op, ": ", name,
                   " of shape ", v.shape_string(), " overflows 64-bit indexing");
    p *= v.size[k];
  }
  TASN_CHECK_ARG(v.is_contiguous(), op, ": ", name, " of shape ", v.shape_string(), " has strides ",
                 v.stride_string(), "; the operator needs it packed row-major");
  return p;
}

// Alignment of workspaces and of every region carved from one (256: cudaMalloc's guarantee, and a
// multiple of every CPU cache line and vector width).
constexpr std::size_t kWorkspaceAlign = 256;

inline std::size_t align_up(std::size_t v) { return (v + kWorkspaceAlign - 1) / kWorkspaceAlign * kWorkspaceAlign; }

// Carves aligned regions off a workspace; with a null base it only counts the bytes a layout
// needs, so the workspace_bytes queries run the same code as the operators. The byte arithmetic
// is checked: a region whose size is negative or overflows throws tasn::InvalidArgument.
class WorkspaceCarver {
 public:
  explicit WorkspaceCarver(void* base = nullptr) : base_(static_cast<unsigned char*>(base)) {}

  template <class T>
  T* take(std::int64_t elems) {
    constexpr std::size_t kMax = static_cast<std::size_t>(std::numeric_limits<std::int64_t>::max());
    TASN_CHECK_ARG(elems >= 0, "workspace layout: a region of ", elems, " elements (negative size)");
    TASN_CHECK_ARG(used_ <= kMax - kWorkspaceAlign &&
                       static_cast<std::size_t>(elems) <= (kMax - kWorkspaceAlign - used_) / sizeof(T),
                   "workspace layout: a region of ", elems, " elements of ", sizeof(T), " bytes after ", used_,
                   " bytes overflows 64-bit sizes");
    const std::size_t at = used_;
    used_ = align_up(used_ + static_cast<std::size_t>(elems) * sizeof(T));
    return base_ ? reinterpret_cast<T*>(base_ + at) : nullptr;
  }
  std::size_t bytes() const { return used_; }

 private:
  unsigned char* base_;
  std::size_t used_ = 0;
};

// A caller's workspace must be at least `need` bytes, non-null when need > 0, and aligned.
inline void check_workspace(const Workspace& ws, std::size_t need, const char* op) {
  TASN_CHECK_ARG(ws.bytes >= need, op, ": workspace holds ", ws.bytes, " bytes but ", need,
                 " are needed (query workspace_bytes(args))");
  TASN_CHECK_ARG(need == 0 || ws.data != nullptr, op, ": workspace is null but ", need, " bytes are needed");
  TASN_CHECK_ARG(reinterpret_cast<std::uintptr_t>(ws.data) % kWorkspaceAlign == 0, op, ": workspace must be ",
                 kWorkspaceAlign, "-byte aligned (cudaMalloc memory is; on the host use std::aligned_alloc)");
}

// The message both backends give for a non-finite input value (check_finite).
template <class V>
std::string nonfinite_message(const char* op, const char* name, V value, std::int64_t index, std::int64_t numel) {
  return concat(op, ": ", name, " holds a non-finite value (", value, ") at flat index ", index, " of ", numel);
}

// The message both backends give for a label that is neither ignore_index nor in [0, k).
inline std::string bad_label_message(const char* op, std::int64_t row, std::int64_t label, std::int64_t k,
                                     std::int64_t ignore_index) {
  return concat(op, ": labels[", row, "] = ", label, " is out of range [0, ", k, ") and is not ignore_index (",
                ignore_index, ")");
}

}  // namespace detail
}  // namespace tasn
