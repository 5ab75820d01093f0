// tasn/losses.cuh - distillation loss and softmax cross-entropy, CUDA path (float, __half and
// __nv_bfloat16 logits; float math). Math and options: tasn/losses_common.h, docs/losses.md.
//
// One fused kernel per call computes each row's loss and, when gradient buffers are given, its
// gradients (one read of the logits per pass, passes served from L1/L2, one write of the
// gradients). Rows go to a warp (K <= 1024) or a block of 256 threads (longer rows), or as forced
// by ctx.row_kernel; both variants handle any K. Sum / Mean reductions finish in a one-block
// kernel that adds the per-row losses in a fixed order (deterministic).
//
// Outputs and upstream gradient as in the CPU path (tasn/losses.h), all device pointers:
//   loss   None: N values of T; Sum / Mean: 1 value. May be nullptr.
//   dloss  upstream gradient of `loss` (None: N values, Sum / Mean: 1 value) or nullptr (= 1).
// Everything is enqueued on ctx.stream (ctx.cublas is not used); nothing synchronises.
//
// Labels are int64 device values. The host cannot see them without a round trip, so a label that
// is neither ignore_index nor in [0, K) makes that row's loss NaN (so a reduced loss is NaN too,
// never silently wrong) and its gradient 0, and is reported through the optional `status`
// (2 int64 on the device: first bad row + 1, or 0; and its label): check_label_status() syncs
// and throws the CPU path's message.
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

// status (may be null): [first bad row + 1 or 0, its label]; valid: rows not ignored.
static __global__ void __launch_bounds__(kFinalizeBlock)
    check_labels_kernel(const std::int64_t* __restrict__ labels, std::int64_t n, std::int64_t k,
                        std::int64_t ignore_index, long long* valid, std::int64_t* status) {
  using Reduce = cub::BlockReduce<long long, kFinalizeBlock>;
  __shared__ typename Reduce::TempStorage temp;
  long long count = 0, first_bad = n;  // min over bad rows
  for (std::int64_t i = threadIdx.x; i < n; i += kFinalizeBlock) {
    const std::int64_t y = labels[i];
    if (y == ignore_index) continue;
    ++count;  // every non-ignored row counts for the mean, as on the CPU (bad rows poison it)
    if (y < 0 || y >= k) first_bad = first_bad < i ? first_bad : i;
  }
  count = Reduce(temp).Sum(count);
  __syncthreads();
  struct MinOp {
    __device__ long long operator()(long long a, long long b) const { return a < b ? a : b; }
  };
  first_bad = Reduce(temp).Reduce(first_bad, MinOp{});
  if (threadIdx.x == 0) {
    *valid = count;
    if (status) {
      status[0] = first_bad < n ? first_bad + 1 : 0;
      status[1] = first_bad < n ? labels[first_bad] : 0;
    }
  }
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
    if (y == p.ignore_index || y < 0 || y >= p.k) {
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
    if (y == ignore_index || y < 0 || y >= k) continue;  // warp-uniform
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

// ---- workspace -------------------------------------------------------------------------------

// Bytes of workspace distillation_loss needs (per-row losses for Sum / Mean).
inline std::size_t distillation_workspace_bytes(std::int64_t n, Reduction r) {
  detail::WorkspaceCarver ws;
  if (r != Reduction::None) ws.take<float>(n);
  return ws.bytes();
}

// Bytes of workspace softmax_cross_entropy needs (valid-row count, per-row losses).
inline std::size_t cross_entropy_workspace_bytes(std::int64_t n, Reduction r) {
  detail::WorkspaceCarver ws;
  ws.take<long long>(1);
  if (r != Reduction::None) ws.take<float>(n);
  return ws.bytes();
}

// ---- operators ---------------------------------------------------------------------------------

template <class T>
void distillation_loss(const T* student, const T* teacher, std::int64_t n, std::int64_t k,
                       const DistillationOptions& opt, T* loss, T* dstudent, T* dteacher,
                       const T* dloss, void* workspace, std::size_t workspace_bytes, const Context& ctx) {
  constexpr const char* op = "cuda::distillation_loss";
  static_assert(is_storage_type_v<T>, "T must be float, __half or __nv_bfloat16");
  validate_logits_shape(n, k, op);
  opt.validate(op);
  tasn::detail::check_pointer(student, "student", n * k, op);
  tasn::detail::check_pointer(teacher, "teacher", n * k, op);
  detail::check_workspace(workspace, workspace_bytes, distillation_workspace_bytes(n, opt.reduction), op);
  kernels::DistillParams p{n,
                           k,
                           static_cast<float>(1.0 / opt.temperature),
                           static_cast<float>(opt.grad_factor()),
                           static_cast<float>(opt.reduction == Reduction::Mean ? 1.0 / double(n) : 1.0),
                           opt.loss_factor(),
                           opt.kl,
                           opt.reduction == Reduction::None};
  detail::WorkspaceCarver ws(workspace);
  float* rows = opt.reduction == Reduction::None ? nullptr : ws.take<float>(n);
  T* loss_none = opt.reduction == Reduction::None ? loss : nullptr;
  kernels::launch_rows(n, k, ctx.row_kernel, [&](auto* group_tag, unsigned grid, int block) {
    using Group = std::remove_pointer_t<decltype(group_tag)>;
    kernels::distillation_kernel<Group, T><<<grid, block, 0, ctx.stream>>>(
        student, teacher, p, dloss, rows, loss_none, dstudent, dteacher);
  });
  TASN_CUDA_CHECK_LAUNCH("distillation_kernel");
  if (rows && loss) {
    kernels::finalize_loss_kernel<T><<<1, kernels::kFinalizeBlock, 0, ctx.stream>>>(
        rows, n, opt.loss_factor(), nullptr, opt.reduction == Reduction::Mean ? double(n) : 1.0, loss);
    TASN_CUDA_CHECK_LAUNCH("finalize_loss_kernel");
  }
}

template <class T>
void softmax_cross_entropy(const T* logits, const std::int64_t* labels, std::int64_t n,
                           std::int64_t k, const CrossEntropyOptions& opt, T* loss, T* dlogits,
                           const T* dloss, std::int64_t* status, void* workspace,
                           std::size_t workspace_bytes, const Context& ctx) {
  constexpr const char* op = "cuda::softmax_cross_entropy";
  static_assert(is_storage_type_v<T>, "T must be float, __half or __nv_bfloat16");
  validate_logits_shape(n, k, op);
  opt.validate(op);
  tasn::detail::check_pointer(logits, "logits", n * k, op);
  tasn::detail::check_pointer(labels, "labels", n, op);
  detail::check_workspace(workspace, workspace_bytes, cross_entropy_workspace_bytes(n, opt.reduction), op);
  detail::WorkspaceCarver ws(workspace);
  long long* valid = ws.take<long long>(1);
  float* rows = opt.reduction == Reduction::None ? nullptr : ws.take<float>(n);
  T* loss_none = opt.reduction == Reduction::None ? loss : nullptr;
  kernels::check_labels_kernel<<<1, kernels::kFinalizeBlock, 0, ctx.stream>>>(labels, n, k, opt.ignore_index,
                                                                              valid, status);
  TASN_CUDA_CHECK_LAUNCH("check_labels_kernel");
  kernels::CrossEntropyParams p{n,
                                k,
                                opt.ignore_index,
                                static_cast<float>(opt.label_smoothing),
                                static_cast<float>(1.0 / double(k)),
                                static_cast<float>(opt.grad_scale),
                                opt.grad_scale,
                                opt.reduction == Reduction::Mean,
                                opt.reduction == Reduction::None};
  kernels::launch_rows(n, k, ctx.row_kernel, [&](auto* group_tag, unsigned grid, int block) {
    using Group = std::remove_pointer_t<decltype(group_tag)>;
    kernels::cross_entropy_kernel<Group, T><<<grid, block, 0, ctx.stream>>>(
        logits, labels, p, valid, dloss, rows, loss_none, dlogits);
  });
  TASN_CUDA_CHECK_LAUNCH("cross_entropy_kernel");
  if (rows && loss) {
    kernels::finalize_loss_kernel<T><<<1, kernels::kFinalizeBlock, 0, ctx.stream>>>(
        rows, n, opt.grad_scale, opt.reduction == Reduction::Mean ? valid : nullptr, 1.0, loss);
    TASN_CUDA_CHECK_LAUNCH("finalize_loss_kernel");
  }
}

// Overloads on views (device memory): every tensor's shape is checked against the others.
template <class T>
void distillation_loss(MatrixView<const T> student, MatrixView<const T> teacher,
                       const DistillationOptions& opt, VectorView<T> loss, MatrixView<T> dstudent,
                       MatrixView<T> dteacher, VectorView<const T> dloss, void* workspace,
                       std::size_t workspace_bytes, const Context& ctx) {
  tasn::detail::check_distillation_views(student, teacher, opt, loss, dstudent, dteacher, dloss,
                                         "cuda::distillation_loss");
  distillation_loss(student.data, teacher.data, student.rows, student.cols, opt, loss.data,
                    dstudent.data, dteacher.data, dloss.data, workspace, workspace_bytes, ctx);
}

template <class T>
void softmax_cross_entropy(MatrixView<const T> logits, VectorView<const std::int64_t> labels,
                           const CrossEntropyOptions& opt, VectorView<T> loss,
                           MatrixView<T> dlogits, VectorView<const T> dloss, std::int64_t* status,
                           void* workspace, std::size_t workspace_bytes, const Context& ctx) {
  tasn::detail::check_cross_entropy_views(logits, labels, opt, loss, dlogits, dloss,
                                          "cuda::softmax_cross_entropy");
  softmax_cross_entropy(logits.data, labels.data, logits.rows, logits.cols, opt, loss.data,
                        dlogits.data, dloss.data, status, workspace, workspace_bytes, ctx);
}

// correct[j] (device, max_k values, overwritten) = rows (label != ignore_index) whose label is
// among the top j+1 logits; ties count in the label's favour (as the CPU topk_correct).
template <class T>
void topk_correct(const T* logits, const std::int64_t* labels, std::int64_t n, std::int64_t k,
                  std::int64_t max_k, std::int64_t ignore_index, unsigned long long* correct,
                  const Context& ctx) {
  constexpr const char* op = "cuda::topk_correct";
  validate_logits_shape(n, k, op);
  TASN_CHECK_ARG(max_k >= 1, op, ": max_k must be >= 1, got ", max_k);
  tasn::detail::check_pointer(logits, "logits", n * k, op);
  tasn::detail::check_pointer(labels, "labels", n, op);
  tasn::detail::check_pointer(correct, "correct", max_k, op);
  TASN_CUDA_CHECK(cudaMemsetAsync(correct, 0, sizeof(unsigned long long) * max_k, ctx.stream));
  kernels::topk_kernel<T><<<kernels::grid_for(n, kernels::kWarpRowsPerBlock),
                            kernels::kWarp * kernels::kWarpRowsPerBlock, 0, ctx.stream>>>(
      logits, labels, n, k, max_k, ignore_index, correct);
  TASN_CUDA_CHECK_LAUNCH("topk_kernel");
}

// Synchronises `stream` and throws tasn::InvalidArgument naming the first bad label when the
// `status` written by softmax_cross_entropy reports one.
inline void check_label_status(const std::int64_t* status, std::int64_t k, std::int64_t ignore_index,
                               cudaStream_t stream) {
  std::int64_t h[2] = {0, 0};
  TASN_CUDA_CHECK(cudaMemcpyAsync(h, status, sizeof(h), cudaMemcpyDeviceToHost, stream));
  TASN_CUDA_CHECK(cudaStreamSynchronize(stream));
  TASN_CHECK_ARG(h[0] == 0, tasn::detail::bad_label_message("cuda::softmax_cross_entropy", h[0] - 1, h[1], k, ignore_index));
}

}  // namespace tasn::cuda
