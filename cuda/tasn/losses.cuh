// tasn/losses.cuh - distillation loss, softmax cross-entropy and top-k counts, CUDA path (float,
// __half and __nv_bfloat16 logits; float math). Math, options, argument structs and the
// non-finite policy: tasn/losses_common.h, docs/losses.md.
//
//   tasn::cuda::distillation_loss(ctx, args, ws);      // DistillationArgs<T>, device views
//   tasn::cuda::softmax_cross_entropy(ctx, args, ws);  // CrossEntropyArgs<T>
//   tasn::cuda::topk_correct(ctx, args, ws);           // TopkArgs<T>, int64 counts
//   std::size_t b = tasn::cuda::workspace_bytes(args); // device workspace the call needs
//
// One fused kernel per call computes each row's loss and, when gradient views are given, its
// gradients (one read of the logits per pass, passes served from L1/L2, one write of the
// gradients). Rows go to a warp (K <= 1024) or a block of 256 threads (longer rows), or as forced
// by tasn::cuda::testing::forced_row_kernel(); both variants handle any K. Sum / Mean reductions
// finish in a one-block kernel that adds the per-row losses in a fixed order (deterministic).
//
// Everything is enqueued on ctx.stream (ctx.cublas is not used); nothing is allocated. With
// options.check_finite (the default) the inputs (and the labels) are scanned first and read back
// with one stream synchronisation (tasn/core/value_checks.cuh), so NaN/Inf and bad labels throw
// the CPU path's tasn::InvalidArgument before anything is written; with check_finite = false
// nothing synchronises, and a bad label gives its row a NaN loss and a zero gradient (top-k does
// not count it), as on the CPU.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "tasn/core/context.cuh"
#include "tasn/core/cuda_check.cuh"
#include "tasn/core/dtype.cuh"
#include "tasn/core/row_group.cuh"
#include "tasn/core/row_softmax.cuh"
#include "tasn/core/tensor.h"
#include "tasn/core/value_checks.cuh"
#include "tasn/losses_common.h"

namespace tasn::cuda {

namespace kernels {

constexpr int kLossBlock = 256;
constexpr int kFinalizeBlock = 512;

template <class T>
__device__ __forceinline__ float upstream(const T* dloss, bool per_row, std::int64_t row) {
  return dloss ? to_float(dloss[per_row ? row : 0]) : 1.f;
}

// ---- row bodies (one per group kind via the Group template) ------------------------------------

struct DistillParams {
  std::int64_t n, k;
  float inv_t, grad_factor, mean_scale;  // 1/T; T (t_squared) or 1/T; 1/N (mean) or 1
  double loss_factor;                    // T^2 (t_squared) or 1, applied to the row losses in double
  bool kl, per_row_upstream;
};

// Returns the row's unscaled loss (before T^2), in double; writes the row's gradients when asked.
// Loss terms and the teacher gradient are formed in double from log_softmax_at, with xlogy's
// 0 log 0 = 0, as on the CPU (tasn/losses_common.h).
template <class Group, class T>
__device__ double distill_row(Group& g, const T* zs, const T* zt, const DistillParams& p, float w,
                              T* dzs, T* dzt) {
  Stats ss = Stats::empty(), st = Stats::empty();
  for (std::int64_t j = g.rank(); j < p.k; j += g.size()) {
    ss.push(to_float(zs[j]), p.inv_t);
    st.push(to_float(zt[j]), p.inv_t);
  }
  ss = g.stats(ss, p.inv_t);
  st = g.stats(st, p.inv_t);
  const float log_ss = logf(ss.s), log_st = logf(st.s);
  double part = 0.0;
  for (std::int64_t j = g.rank(); j < p.k; j += g.size()) {
    const float zsj = to_float(zs[j]), ztj = to_float(zt[j]);
    const float pj = expf(p.inv_t * (ztj - st.m) - log_st);
    part += distill_loss_term(static_cast<double>(pj), log_softmax_at(zsj, ss.m, p.inv_t, log_ss),
                              log_softmax_at(ztj, st.m, p.inv_t, log_st), p.kl);
  }
  const double unscaled = g.sum(part);
  if (dzs || dzt) {
    for (std::int64_t j = g.rank(); j < p.k; j += g.size()) {
      const float zsj = to_float(zs[j]), ztj = to_float(zt[j]);
      const float pj = expf(p.inv_t * (ztj - st.m) - log_st);
      if (dzs) dzs[j] = from_float<T>(distill_student_grad(expf(p.inv_t * (zsj - ss.m) - log_ss), pj, p.grad_factor, w));
      if (dzt) {
        const double lq = log_softmax_at(zsj, ss.m, p.inv_t, log_ss);
        const double r = p.kl ? lq - log_softmax_at(ztj, st.m, p.inv_t, log_st) : lq;
        dzt[j] = from_float<T>(static_cast<float>(distill_teacher_grad(static_cast<double>(pj), r, -unscaled,
                                                                       static_cast<double>(p.grad_factor),
                                                                       static_cast<double>(w))));
      }
    }
  }
  return unscaled;
}

struct CrossEntropyParams {
  std::int64_t n, k, ignore_index;
  float eps, inv_k, scale;  // scale: grad_scale
  double loss_scale;        // grad_scale, applied to the row losses in double
  bool mean, per_row_upstream;
};

// Returns the row's loss before grad_scale (applied in double by the caller).

template <class Group, class T>
__device__ float cross_entropy_row(Group& g, const T* z, std::int64_t y, const CrossEntropyParams& p,
                                   float w, T* dz) {
  Stats st = Stats::empty();
  for (std::int64_t j = g.rank(); j < p.k; j += g.size()) st.push(to_float(z[j]), 1.f);
  st = g.stats(st, 1.f);
  const float log_s = logf(st.s);
  // sum_j log q_j = sum_j (z_j - m) - K log_s: one subtraction of the large term, not K
  float sum_shift = 0.f;
  if (p.eps > 0.f)
    for (std::int64_t j = g.rank(); j < p.k; j += g.size()) sum_shift += to_float(z[j]) - st.m;
  const float sum_lq = g.sum(sum_shift) - static_cast<float>(p.k) * log_s;
  const float nll = -(to_float(z[y]) - st.m - log_s);
  if (dz)
    for (std::int64_t j = g.rank(); j < p.k; j += g.size())
      dz[j] = from_float<T>(cross_entropy_grad(expf(to_float(z[j]) - st.m - log_s),
                                               smoothed_target(j == y, p.eps, p.inv_k), p.scale, w));
  return (1.f - p.eps) * nll - p.eps * sum_lq * p.inv_k;
}

// ---- kernels -------------------------------------------------------------------------------------

// Rows of a grid: for the warp variant a warp per row, for the block variant a block per row.
template <class Group>
struct RowSchedule;
template <>
struct RowSchedule<WarpRowGroup> {
  __device__ static std::int64_t first() {
    return static_cast<std::int64_t>(blockIdx.x) * kWarpRowsPerBlock + threadIdx.x / kWarp;
  }
  __device__ static std::int64_t stride() { return static_cast<std::int64_t>(gridDim.x) * kWarpRowsPerBlock; }
};
template <int B>
struct RowSchedule<BlockRowGroup<B>> {
  __device__ static std::int64_t first() { return blockIdx.x; }
  __device__ static std::int64_t stride() { return gridDim.x; }
};

template <class Group>
__device__ typename Group::TempStorage& group_storage() {
  if constexpr (std::is_same_v<Group, WarpRowGroup>) {
    __shared__ typename Group::TempStorage t[kWarpRowsPerBlock];
    return t[threadIdx.x / kWarp];
  } else {
    __shared__ typename Group::TempStorage t;
    return t;
  }
}

// row_out: per-row unscaled losses (float, Sum/Mean: scaled in double by finalize_loss_kernel)
// or nullptr; loss_none: per-row losses in T (None), scaled in double before the rounding.
template <class Group, class T>
__global__ void __launch_bounds__(Group::kBlockThreads) distillation_kernel(const T* __restrict__ zs, const T* __restrict__ zt,
                                    DistillParams p, const T* __restrict__ dloss, float* row_out,
                                    T* loss_none, T* dzs, T* dzt) {
  Group g(group_storage<Group>());
  for (std::int64_t row = RowSchedule<Group>::first(); row < p.n; row += RowSchedule<Group>::stride()) {
    const std::int64_t off = row * p.k;
    const float w = p.mean_scale * upstream(dloss, p.per_row_upstream, row);
    const double l = distill_row(g, zs + off, zt + off, p, w, dzs ? dzs + off : nullptr,
                                 dzt ? dzt + off : nullptr);
    if (g.rank() == 0) {
      if (row_out) row_out[row] = static_cast<float>(l);
      if (loss_none) loss_none[row] = from_float<T>(static_cast<float>(l * p.loss_factor));
    }
  }
}

// valid: rows not ignored (bad labels included: they poison the mean, as on the CPU).
static __global__ void __launch_bounds__(kFinalizeBlock)
    count_valid_kernel(const std::int64_t* __restrict__ labels, std::int64_t n, std::int64_t ignore_index,
                       long long* valid) {
  using Reduce = cub::BlockReduce<long long, kFinalizeBlock>;
  __shared__ typename Reduce::TempStorage temp;
  long long count = 0;
  for (std::int64_t i = threadIdx.x; i < n; i += kFinalizeBlock) count += labels[i] != ignore_index;
  count = Reduce(temp).Sum(count);
  if (threadIdx.x == 0) *valid = count;
}

template <class Group, class T>
__global__ void __launch_bounds__(Group::kBlockThreads) cross_entropy_kernel(const T* __restrict__ z, const std::int64_t* __restrict__ labels,
                                     CrossEntropyParams p, const long long* __restrict__ valid,
                                     const T* __restrict__ dloss, float* row_out, T* loss_none, T* dz) {
  Group g(group_storage<Group>());
  const long long nv = *valid;
  const float mean_scale = p.mean ? (nv > 0 ? 1.f / static_cast<float>(nv) : 0.f) : 1.f;
  for (std::int64_t row = RowSchedule<Group>::first(); row < p.n; row += RowSchedule<Group>::stride()) {
    const std::int64_t off = row * p.k, y = labels[row];
    float l;
    if (y == p.ignore_index || ::tasn::detail::is_bad_label(y, p.k, p.ignore_index)) {
      l = y == p.ignore_index ? 0.f : __int_as_float(0x7fc00000);  // NaN marks a bad label
      if (dz)
        for (std::int64_t j = g.rank(); j < p.k; j += g.size()) dz[off + j] = from_float<T>(0.f);
    } else {
      const float w = mean_scale * upstream(dloss, p.per_row_upstream, row);
      l = cross_entropy_row(g, z + off, y, p, w, dz ? dz + off : nullptr);
    }
    if (g.rank() == 0) {
      if (row_out) row_out[row] = l;
      if (loss_none) loss_none[row] = from_float<T>(static_cast<float>(static_cast<double>(l) * p.loss_scale));
    }
  }
}

// loss[0] = sum of row losses (in row-strided then tree order: deterministic) times row_scale
// (T^2 or grad_scale, in double: the float products could overflow), divided by *den (if den)
// or by den_value.
template <class T>
__global__ void __launch_bounds__(kFinalizeBlock)
    finalize_loss_kernel(const float* __restrict__ rows, std::int64_t n, double row_scale, const long long* den,
                         double den_value, T* loss) {
  using Reduce = cub::BlockReduce<double, kFinalizeBlock>;
  __shared__ typename Reduce::TempStorage temp;
  double s = 0.0;
  for (std::int64_t i = threadIdx.x; i < n; i += kFinalizeBlock) s += rows[i];
  s = Reduce(temp).Sum(s) * row_scale;
  if (threadIdx.x == 0) {
    const double d = den ? static_cast<double>(*den) : den_value;
    // Mean over no rows is 0, unless a bad row made the sum NaN: that must stay visible.
    loss[0] = from_float<T>(static_cast<float>(d > 0 ? s / d : (den && !isnan(s) ? 0.0 : s)));
  }
}

template <class T>
__global__ void __launch_bounds__(WarpRowGroup::kBlockThreads) topk_kernel(const T* __restrict__ z, const std::int64_t* __restrict__ labels,
                            std::int64_t n, std::int64_t k, std::int64_t max_k,
                            std::int64_t ignore_index, unsigned long long* correct) {
  WarpRowGroup g(group_storage<WarpRowGroup>());
  for (std::int64_t row = RowSchedule<WarpRowGroup>::first(); row < n; row += RowSchedule<WarpRowGroup>::stride()) {
    const std::int64_t y = labels[row];
    if (y == ignore_index || ::tasn::detail::is_bad_label(y, k, ignore_index)) continue;  // warp-uniform
    const float zy = to_float(z[row * k + y]);
    if (zy != zy) continue;  // a NaN label logit is never correct (warp-uniform)
    float greater = 0.f;
    for (std::int64_t j = g.rank(); j < k; j += g.size()) greater += ranks_above_label(to_float(z[row * k + j]), zy);
    const auto rank = static_cast<std::int64_t>(g.sum(greater));  // exact below 2^24 classes
    if (g.rank() == 0)
      for (std::int64_t j = rank; j < max_k; ++j) atomicAdd(correct + j, 1ull);
  }
}

// Launches kernel<Group> with the warp or block schedule chosen for rows of k elements.
// Both variants loop over the row, so either handles any k; Auto picks the warp for k <= 1024.
template <class Launch>
void launch_rows(std::int64_t n, std::int64_t k, RowKernel kernel, Launch&& launch) {
  const bool warp = kernel == RowKernel::Warp || (kernel == RowKernel::Auto && k <= kMaxWarpRowLen);
  if (warp) {
    launch(static_cast<WarpRowGroup*>(nullptr), grid_for(n, kWarpRowsPerBlock), kWarp * kWarpRowsPerBlock);
  } else {
    launch(static_cast<BlockRowGroup<kLossBlock>*>(nullptr), grid_for(n, 1), kLossBlock);
  }
}

}  // namespace kernels

// ---- workspace layouts (the ops and workspace_bytes run the same code) --------------------------

namespace detail_losses {

// Value-check slots first (only with check_finite), then the per-row losses of Sum / Mean.
struct DistillationLayout {
  unsigned long long* checks = nullptr;
  float* rows = nullptr;
};
template <class T>
DistillationLayout layout(detail::WorkspaceCarver& c, const DistillationArgs<T>& a) {
  DistillationLayout l;
  l.checks = detail::take_value_check_slots(c, a.options.check_finite);
  if (a.options.reduction != Reduction::None && a.loss.present()) l.rows = c.take<float>(a.student.size[0]);
  return l;
}

// Value-check slots, the count of rows not ignored (the mean's denominator), per-row losses.
struct CrossEntropyLayout {
  unsigned long long* checks = nullptr;
  long long* valid = nullptr;
  float* rows = nullptr;
};
template <class T>
CrossEntropyLayout layout(detail::WorkspaceCarver& c, const CrossEntropyArgs<T>& a) {
  CrossEntropyLayout l;
  l.checks = detail::take_value_check_slots(c, a.options.check_finite);
  l.valid = c.take<long long>(1);
  if (a.options.reduction != Reduction::None && a.loss.present()) l.rows = c.take<float>(a.logits.size[0]);
  return l;
}

// Value-check slots only (the label check).
struct TopkLayout {
  unsigned long long* checks = nullptr;
};
template <class T>
TopkLayout layout(detail::WorkspaceCarver& c, const TopkArgs<T>& a) {
  TopkLayout l;
  l.checks = detail::take_value_check_slots(c, a.options.check_finite);
  return l;
}

template <class T>
void check_type() {
  static_assert(is_storage_type_v<T>, "T must be float, __half or __nv_bfloat16");
}


// Bytes of a layout (a carver with a null base runs the ops' own layout code).
template <class Args>
std::size_t layout_bytes(const Args& args) {
  detail::WorkspaceCarver c;
  layout(c, args);
  return c.bytes();
}

}  // namespace detail_losses

// Bytes of device workspace each operator needs for `args` (value-check slots with check_finite;
// per-row losses for Sum / Mean; the valid-row count of cross-entropy). Runs the operator's
// option and shape checks first, so invalid args throw the operator's message.
template <class T>
std::size_t workspace_bytes(const DistillationArgs<T>& args) {
  ::tasn::detail::check_distillation_args(args, "cuda::distillation_loss");
  return detail_losses::layout_bytes(args);
}
template <class T>
std::size_t workspace_bytes(const CrossEntropyArgs<T>& args) {
  ::tasn::detail::check_cross_entropy_args(args, "cuda::softmax_cross_entropy");
  return detail_losses::layout_bytes(args);
}
template <class T>
std::size_t workspace_bytes(const TopkArgs<T>& args) {
  ::tasn::detail::check_topk_args(args, "cuda::topk_correct");
  return detail_losses::layout_bytes(args);
}

// ---- operators ---------------------------------------------------------------------------------

template <class T>
void distillation_loss(const Context& ctx, const DistillationArgs<T>& args, Workspace ws = {}) {
  constexpr const char* op = "cuda::distillation_loss";
  detail_losses::check_type<T>();
  ::tasn::detail::check_distillation_args(args, op);
  detail::check_workspace(ws, detail_losses::layout_bytes(args), op);
  const DistillationOptions& opt = args.options;
  const std::int64_t n = args.student.size[0], k = args.student.size[1];
  detail::WorkspaceCarver carver(ws.data);
  const auto l = detail_losses::layout(carver, args);
  detail::ValueChecks vc(ctx, l.checks, op);
  vc.finite(args.student.data, n * k, "student");
  vc.finite(args.teacher.data, n * k, "teacher");
  vc.finite(args.dloss.data, loss_elems(n, opt.reduction), "dloss");
  vc.finish();

  kernels::DistillParams p{n,
                           k,
                           static_cast<float>(1.0 / opt.temperature),
                           static_cast<float>(opt.grad_factor()),
                           static_cast<float>(opt.reduction == Reduction::Mean ? 1.0 / double(n) : 1.0),
                           opt.loss_factor(),
                           opt.kl,
                           opt.reduction == Reduction::None};
  T* loss_none = opt.reduction == Reduction::None ? args.loss.data : nullptr;
  kernels::launch_rows(n, k, ::tasn::cuda::testing::forced_row_kernel(), [&](auto* group_tag, unsigned grid, int block) {
    using Group = std::remove_pointer_t<decltype(group_tag)>;
    kernels::distillation_kernel<Group, T><<<grid, block, 0, ctx.stream>>>(
        args.student.data, args.teacher.data, p, args.dloss.data, l.rows, loss_none, args.dstudent.data,
        args.dteacher.data);
  });
  TASN_CUDA_CHECK_LAUNCH("distillation_kernel");
  if (l.rows) {
    kernels::finalize_loss_kernel<T><<<1, kernels::kFinalizeBlock, 0, ctx.stream>>>(
        l.rows, n, opt.loss_factor(), nullptr, opt.reduction == Reduction::Mean ? double(n) : 1.0, args.loss.data);
    TASN_CUDA_CHECK_LAUNCH("finalize_loss_kernel");
  }
}

template <class T>
void softmax_cross_entropy(const Context& ctx, const CrossEntropyArgs<T>& args, Workspace ws = {}) {
  constexpr const char* op = "cuda::softmax_cross_entropy";
  detail_losses::check_type<T>();
  ::tasn::detail::check_cross_entropy_args(args, op);
  detail::check_workspace(ws, detail_losses::layout_bytes(args), op);
  const CrossEntropyOptions& opt = args.options;
  const std::int64_t n = args.logits.size[0], k = args.logits.size[1];
  detail::WorkspaceCarver carver(ws.data);
  const auto l = detail_losses::layout(carver, args);
  detail::ValueChecks vc(ctx, l.checks, op);
  vc.labels(args.labels.data, n, k, opt.ignore_index);
  vc.finite(args.logits.data, n * k, "logits");
  vc.finite(args.dloss.data, loss_elems(n, opt.reduction), "dloss");
  vc.finish();

  kernels::count_valid_kernel<<<1, kernels::kFinalizeBlock, 0, ctx.stream>>>(args.labels.data, n, opt.ignore_index,
                                                                             l.valid);
  TASN_CUDA_CHECK_LAUNCH("count_valid_kernel");
  kernels::CrossEntropyParams p{n,
                                k,
                                opt.ignore_index,
                                static_cast<float>(opt.label_smoothing),
                                static_cast<float>(1.0 / double(k)),
                                static_cast<float>(opt.grad_scale),
                                opt.grad_scale,
                                opt.reduction == Reduction::Mean,
                                opt.reduction == Reduction::None};
  T* loss_none = opt.reduction == Reduction::None ? args.loss.data : nullptr;
  kernels::launch_rows(n, k, ::tasn::cuda::testing::forced_row_kernel(), [&](auto* group_tag, unsigned grid, int block) {
    using Group = std::remove_pointer_t<decltype(group_tag)>;
    kernels::cross_entropy_kernel<Group, T><<<grid, block, 0, ctx.stream>>>(
        args.logits.data, args.labels.data, p, l.valid, args.dloss.data, l.rows, loss_none, args.dlogits.data);
  });
  TASN_CUDA_CHECK_LAUNCH("cross_entropy_kernel");
  if (l.rows) {
    kernels::finalize_loss_kernel<T><<<1, kernels::kFinalizeBlock, 0, ctx.stream>>>(
        l.rows, n, opt.grad_scale, opt.reduction == Reduction::Mean ? l.valid : nullptr, 1.0, args.loss.data);
    TASN_CUDA_CHECK_LAUNCH("finalize_loss_kernel");
  }
}

// correct[j] (device, int64, max_k = correct.size[0] values, overwritten) = rows (label !=
// ignore_index) whose label is among the top j+1 logits; ties count in the label's favour (as the
// CPU topk_correct). The counts are added with 64-bit atomics on the int64 values.
template <class T>
void topk_correct(const Context& ctx, const TopkArgs<T>& args, Workspace ws = {}) {
  constexpr const char* op = "cuda::topk_correct";
  static_assert(sizeof(std::int64_t) == sizeof(unsigned long long) && alignof(std::int64_t) == alignof(unsigned long long),
                "top-k counts are int64 updated with unsigned long long atomics on the same 8 bytes");
  detail_losses::check_type<T>();
  ::tasn::detail::check_topk_args(args, op);
  detail::check_workspace(ws, detail_losses::layout_bytes(args), op);
  const TopkOptions& opt = args.options;
  const std::int64_t n = args.logits.size[0], k = args.logits.size[1], max_k = args.correct.size[0];
  detail::WorkspaceCarver carver(ws.data);
  const auto l = detail_losses::layout(carver, args);
  detail::ValueChecks vc(ctx, l.checks, op);
  vc.labels(args.labels.data, n, k, opt.ignore_index);
  vc.finish();

  // two's complement: counts below 2^63 read the same as int64 and as unsigned long long
  auto* counts = reinterpret_cast<unsigned long long*>(args.correct.data);
  TASN_CUDA_CHECK(cudaMemsetAsync(counts, 0, sizeof(std::int64_t) * static_cast<std::size_t>(max_k), ctx.stream));
  kernels::topk_kernel<T><<<kernels::grid_for(n, kernels::kWarpRowsPerBlock),
                            kernels::kWarp * kernels::kWarpRowsPerBlock, 0, ctx.stream>>>(
      args.logits.data, args.labels.data, n, k, max_k, opt.ignore_index, counts);
  TASN_CUDA_CHECK_LAUNCH("topk_kernel");
}

}  // namespace tasn::cuda
