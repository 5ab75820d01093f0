// tasn/core/row_kernel.cuh - what the row kernels share: the warp-per-row / block-per-row variant
// choice (and its test knob), the launch geometry constants and the grid size. Included by
// tasn/core/row_group.cuh (the cooperating threads of one row) and tasn/core/row_softmax.cuh (the
// softmax kernels built on them). No kernels here.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "tasn/core/common.h"

namespace tasn::cuda {

enum class RowKernel { Auto, Warp, Block };

inline const char* to_string(RowKernel k) {
  return k == RowKernel::Warp ? "warp" : k == RowKernel::Block ? "block" : "auto";
}

// For tests and benchmarks only: the row-kernel variant every operator uses (Auto: by row
// length). Process-wide and not synchronised; set it through ScopedRowKernel.
namespace testing {
inline RowKernel& forced_row_kernel() {
  static RowKernel kernel = RowKernel::Auto;
  return kernel;
}
// Forces `kernel` for its lifetime, then restores the previous choice.
class ScopedRowKernel {
 public:
  explicit ScopedRowKernel(RowKernel kernel) : old_(forced_row_kernel()) { forced_row_kernel() = kernel; }
  ~ScopedRowKernel() { forced_row_kernel() = old_; }
  ScopedRowKernel(const ScopedRowKernel&) = delete;
  ScopedRowKernel& operator=(const ScopedRowKernel&) = delete;

 private:
  RowKernel old_;
};
}  // namespace testing

namespace kernels {

constexpr int kWarp = 32;
constexpr int kWarpRowsPerBlock = 4;           // warp-per-row kernels: 128 threads, 4 rows a block
constexpr int kRowBlockThreads = 256;          // block-per-row kernels
constexpr std::int64_t kMaxWarpRowLen = 1024;  // longest row the warp variant holds in registers
constexpr unsigned kFullMask = 0xffffffffu;

// Calls f(std::integral_constant<int, VPT>) with the smallest VPT in {1,2,4,8,16,32} such that
// 32 * VPT >= len (len <= kMaxWarpRowLen).
template <class F>
void dispatch_vpt(std::int64_t len, F&& f) {
  const std::int64_t per_lane = (len + kWarp - 1) / kWarp;
  if (per_lane <= 1) f(std::integral_constant<int, 1>{});
  else if (per_lane <= 2) f(std::integral_constant<int, 2>{});
  else if (per_lane <= 4) f(std::integral_constant<int, 4>{});
  else if (per_lane <= 8) f(std::integral_constant<int, 8>{});
  else if (per_lane <= 16) f(std::integral_constant<int, 16>{});
  else f(std::integral_constant<int, 32>{});
}

constexpr std::int64_t kMaxGridBlocks = std::int64_t(1) << 20;  // grid-stride beyond this

inline unsigned grid_for(std::int64_t units, std::int64_t per_block) {
  return static_cast<unsigned>(std::min(kMaxGridBlocks, (units + per_block - 1) / per_block));
}

}  // namespace kernels

// The variant `kernel` resolves to for rows of `len` elements.
inline RowKernel resolve_row_kernel(RowKernel kernel, std::int64_t len) {
  if (kernel == RowKernel::Auto) return len <= kernels::kMaxWarpRowLen ? RowKernel::Warp : RowKernel::Block;
  TASN_CHECK_ARG(kernel != RowKernel::Warp || len <= kernels::kMaxWarpRowLen,
                 "row softmax: the warp-per-row kernel holds rows of at most ", kernels::kMaxWarpRowLen,
                 " elements, got len = ", len);
  return kernel;
}

}  // namespace tasn::cuda
