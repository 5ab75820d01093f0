// tasn/losses.h - distillation loss, softmax cross-entropy and top-k counts, CPU path (Eigen +
// OpenMP, float and double). Math, options, argument structs and the non-finite policy:
// tasn/losses_common.h and docs/losses.md.
//
//   tasn::cpu::distillation_loss(args, ws = {});      // DistillationArgs<T>
//   tasn::cpu::softmax_cross_entropy(args, ws = {});  // CrossEntropyArgs<T>
//   tasn::cpu::topk_correct(args, ws = {});           // TopkArgs<T>
//   std::size_t b = tasn::cpu::workspace_bytes(args); // the bytes ws must hold (each op)
//
// Each loss call computes the loss and, where the caller passes gradient views, the gradients,
// in one pass over the logits. Outputs:
//   loss   Reduction::None: (N) per-sample values; Sum / Mean: (1). Optional.
//   dloss  upstream gradient of `loss` (the same shape); absent means 1.
// Everything is checked before anything is written: on an exception no output was touched.
// The only allocation is the workspace (when the caller gives none): row losses, the label ranks
// and one row scratch per thread slot are carved from it. Rows are split over the OpenMP
// threads; the reduction over rows is serial, in double, in row order (deterministic).
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "tasn/core/parallel.h"
#include "tasn/core/scratch.h"
#include "tasn/core/softmax_cpu.h"
#include "tasn/core/tensor.h"
#include "tasn/losses_common.h"

namespace tasn::cpu {

namespace detail_losses {

constexpr std::int64_t kRowsPerTask = 8;

template <class T>
void check_type() {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                "the CPU losses support float and double");
}

// num_slots() regions of `elems` elements each, every one aligned; slot s at base + s * stride.
template <class T>
struct SlotScratch {
  T* base = nullptr;
  std::int64_t stride = 0;
  T* operator[](int slot) const { return base + static_cast<std::int64_t>(slot) * stride; }
};

template <class T>
SlotScratch<T> take_slot_scratch(tasn::detail::WorkspaceCarver& c, std::int64_t elems) {
  SlotScratch<T> s;
  const int slots = num_slots();
  for (int i = 0; i < slots; ++i) {
    T* p = c.take<T>(elems);  // consecutive regions, each aligned: equally spaced
    if (i == 0) s.base = p;
  }
  s.stride = static_cast<std::int64_t>(tasn::detail::align_up(static_cast<std::size_t>(elems) * sizeof(T)) / sizeof(T));
  return s;
}

// ---- workspace layouts (the ops and workspace_bytes run the same code) ----------------------------

template <class T>
struct DistillationLayout {
  double* row_loss = nullptr;  // (N) when loss is present
  SlotScratch<T> rows;         // 2K per slot: q and p
};
template <class T>
DistillationLayout<T> layout(tasn::detail::WorkspaceCarver& c, const DistillationArgs<T>& a) {
  DistillationLayout<T> l;
  if (a.loss.present()) l.row_loss = c.take<double>(a.student.size[0]);
  l.rows = take_slot_scratch<T>(c, tasn::detail::checked_mul(2, a.student.size[1], "distillation_loss"));
  return l;
}

template <class T>
struct CrossEntropyLayout {
  double* row_loss = nullptr;  // (N) when loss is present
  SlotScratch<T> rows;         // K per slot: q
};
template <class T>
CrossEntropyLayout<T> layout(tasn::detail::WorkspaceCarver& c, const CrossEntropyArgs<T>& a) {
  CrossEntropyLayout<T> l;
  if (a.loss.present()) l.row_loss = c.take<double>(a.logits.size[0]);
  l.rows = take_slot_scratch<T>(c, a.logits.size[1]);
  return l;
}

struct TopkLayout {
  std::int64_t* rank = nullptr;  // (N): the label's rank, -1 where the row is not counted
};
template <class T>
TopkLayout layout(tasn::detail::WorkspaceCarver& c, const TopkArgs<T>& a) {
  TopkLayout l;
  l.rank = c.take<std::int64_t>(a.logits.size[0]);
  return l;
}

// ---- helpers ------------------------------------------------------------------------------------

// Runs row(i, scratch) for all rows, kRowsPerTask rows per task, with the scratch of the task's slot.
template <class T, class Row>
void for_rows(std::int64_t n, const SlotScratch<T>& scratch, Row&& row) {
  const std::int64_t tasks = (n + kRowsPerTask - 1) / kRowsPerTask;
  parallel_for_slots(0, tasks, [&](std::int64_t t, int slot) {
    T* s = scratch[slot];
    const std::int64_t end = std::min(n, (t + 1) * kRowsPerTask);
    for (std::int64_t i = t * kRowsPerTask; i < end; ++i) row(i, s);
  });
}

// Sum of term(j) for j in [0, k) in double, in a fixed order: kLanes interleaved partial sums
// (independent chains the compiler can vectorise), then added in lane order. Deterministic.
template <class Term>
double sum_over(std::int64_t k, Term&& term) {
  constexpr int kLanes = 8;
  double lane[kLanes] = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0};
  std::int64_t j = 0;
  for (; j + kLanes <= k; j += kLanes)
    for (int l = 0; l < kLanes; ++l) lane[l] += term(j + l);
  for (; j < k; ++j) lane[j % kLanes] += term(j);
  double s = 0.0;
  for (double v : lane) s += v;
  return s;
}

// Upstream gradient of row i's loss term (dloss absent: 1).
template <class T>
T upstream(const T* dloss, Reduction r, std::int64_t i) {
  if (!dloss) return T(1);
  return r == Reduction::None ? dloss[i] : dloss[0];
}

// loss = the row losses (None) or their sum / mean, summed serially in double, in row order.
template <class T>
void write_loss(const double* row_loss, std::int64_t n, Reduction r, double mean_den, T* loss) {
  if (!loss) return;
  if (r == Reduction::None) {
    for (std::int64_t i = 0; i < n; ++i) loss[i] = static_cast<T>(row_loss[i]);
    return;
  }
  double s = 0.0;
  for (std::int64_t i = 0; i < n; ++i) s += row_loss[i];
  loss[0] = static_cast<T>(r == Reduction::Mean ? (mean_den > 0 ? s / mean_den : 0.0) : s);
}

// Throws naming the first label that is neither ignore_index nor in [0, k).
inline void check_labels(const std::int64_t* labels, std::int64_t n, std::int64_t k, std::int64_t ignore_index,
                         const char* op) {
  for (std::int64_t i = 0; i < n; ++i) {
    const std::int64_t y = labels[i];
    TASN_CHECK_ARG(!tasn::detail::is_bad_label(y, k, ignore_index),
                   tasn::detail::bad_label_message(op, i, y, k, ignore_index));
  }
}


// Bytes of a layout (a carver with a null base runs the ops' own layout code).
template <class Args>
std::size_t layout_bytes(const Args& args) {
  tasn::detail::WorkspaceCarver c;
  layout(c, args);
  return c.bytes();
}

}  // namespace detail_losses

// ---- workspace ----------------------------------------------------------------------------------

// Bytes of workspace each operator uses for `args` (with the current thread count: one row
// scratch per slot of cpu::num_slots()). Runs the operator's option and shape checks first, so
// invalid args throw the operator's message.
template <class T>
std::size_t workspace_bytes(const DistillationArgs<T>& args) {
  ::tasn::detail::check_distillation_args(args, "distillation_loss");
  return detail_losses::layout_bytes(args);
}
template <class T>
std::size_t workspace_bytes(const CrossEntropyArgs<T>& args) {
  ::tasn::detail::check_cross_entropy_args(args, "softmax_cross_entropy");
  return detail_losses::layout_bytes(args);
}
template <class T>
std::size_t workspace_bytes(const TopkArgs<T>& args) {
  ::tasn::detail::check_topk_args(args, "topk_correct");
  return detail_losses::layout_bytes(args);
}

// ---- operators ----------------------------------------------------------------------------------

// Teacher-student distillation (SPEC 4). student, teacher: (N, K) logits. dstudent and dteacher
// are optional (absent: not computed); the teacher gradient is off by default.
template <class T>
void distillation_loss(const DistillationArgs<T>& args, Workspace ws = {}) {
  constexpr const char* op = "distillation_loss";
  detail_losses::check_type<T>();
  tasn::detail::check_distillation_args(args, op);
  tasn::detail::HostWorkspace hw(ws, detail_losses::layout_bytes(args), op);
  const DistillationOptions& opt = args.options;
  const std::int64_t n = args.student.size[0], k = args.student.size[1];
  const T* student = args.student.data;
  const T* teacher = args.teacher.data;
  const T* dloss = args.dloss.data;
  T* dstudent = args.dstudent.data;
  T* dteacher = args.dteacher.data;
  if (opt.check_finite) {
    check_all_finite(student, n * k, "student", op);
    check_all_finite(teacher, n * k, "teacher", op);
    if (dloss) check_all_finite(dloss, loss_elems(n, opt.reduction), "dloss", op);
  }
  tasn::detail::WorkspaceCarver carver(hw.data());
  const auto l = detail_losses::layout(carver, args);
  double* row_loss = l.row_loss;

  const T inv_t = static_cast<T>(1.0 / opt.temperature);
  const T gf = static_cast<T>(opt.grad_factor());  // T with t_squared, else 1/T
  const double lf = opt.loss_factor();            // T^2 with t_squared, else 1
  const T mean_scale = static_cast<T>(opt.reduction == Reduction::Mean ? 1.0 / double(n) : 1.0);

  detail_losses::for_rows(n, l.rows, [&](std::int64_t i, T* scratch) {
    const T* zs = student + i * k;
    const T* zt = teacher + i * k;
    const auto ss = softmax_row(zs, scratch, k, inv_t);      // q
    const auto st = softmax_row(zt, scratch + k, k, inv_t);  // p
    const T* q = scratch;
    const T* p = scratch + k;
    // Loss terms in double (log-probabilities can overflow float for legal T), p log q = 0 where
    // p = 0; the form (kl) is a compile-time constant inside, so the loops vectorise.
    const T w = mean_scale * detail_losses::upstream(dloss, opt.reduction, i);
    auto terms = [&](auto kl_tag) {
      constexpr bool kl = decltype(kl_tag)::value;
      const double unscaled = detail_losses::sum_over(k, [&](std::int64_t j) {
        return distill_loss_term(static_cast<double>(p[j]), log_softmax_at(zs[j], ss.m, inv_t, ss.log_sum),
                                 log_softmax_at(zt[j], st.m, inv_t, st.log_sum), kl);
      });
      if (dteacher) {
        T* g = dteacher + i * k;
        for (std::int64_t j = 0; j < k; ++j) {
          const double lq = log_softmax_at(zs[j], ss.m, inv_t, ss.log_sum);
          const double r = kl ? lq - log_softmax_at(zt[j], st.m, inv_t, st.log_sum) : lq;
          // sum_k p r = -(unscaled loss) for both forms
          g[j] = static_cast<T>(distill_teacher_grad(static_cast<double>(p[j]), r, -unscaled,
                                                     static_cast<double>(gf), static_cast<double>(w)));
        }
      }
      return unscaled;
    };
    const double unscaled = opt.kl ? terms(std::true_type{}) : terms(std::false_type{});
    if (row_loss) row_loss[i] = unscaled * lf;
    if (dstudent) {
      T* g = dstudent + i * k;
      for (std::int64_t j = 0; j < k; ++j) g[j] = distill_student_grad(q[j], p[j], gf, w);
    }
  });
  detail_losses::write_loss(row_loss, n, opt.reduction, double(n), args.loss.data);
}

// Softmax cross-entropy with integer labels (N), optional label smoothing; dlogits (N, K) is
// optional. Mean divides by the number of rows whose label is not ignore_index (a batch with none
// gives loss 0 and zero gradients, not NaN). With check_finite = false a bad label's row gets a
// NaN loss and a zero gradient (and counts in the mean's denominator), as on CUDA.
template <class T>
void softmax_cross_entropy(const CrossEntropyArgs<T>& args, Workspace ws = {}) {
  constexpr const char* op = "softmax_cross_entropy";
  detail_losses::check_type<T>();
  tasn::detail::check_cross_entropy_args(args, op);
  tasn::detail::HostWorkspace hw(ws, detail_losses::layout_bytes(args), op);
  const CrossEntropyOptions& opt = args.options;
  const std::int64_t n = args.logits.size[0], k = args.logits.size[1];
  const T* logits = args.logits.data;
  const std::int64_t* labels = args.labels.data;
  const T* dloss = args.dloss.data;
  T* dlogits = args.dlogits.data;
  if (opt.check_finite) {
    detail_losses::check_labels(labels, n, k, opt.ignore_index, op);
    check_all_finite(logits, n * k, "logits", op);
    if (dloss) check_all_finite(dloss, loss_elems(n, opt.reduction), "dloss", op);
  }
  tasn::detail::WorkspaceCarver carver(hw.data());
  const auto l = detail_losses::layout(carver, args);
  double* row_loss = l.row_loss;

  std::int64_t valid = 0;  // rows not ignored (bad labels included, as on CUDA)
  for (std::int64_t i = 0; i < n; ++i) valid += labels[i] != opt.ignore_index;
  const T eps = static_cast<T>(opt.label_smoothing), inv_k = static_cast<T>(1.0 / double(k));
  const T scale = static_cast<T>(opt.grad_scale);
  const T mean_scale =
      static_cast<T>(opt.reduction == Reduction::Mean ? (valid > 0 ? 1.0 / double(valid) : 0.0) : 1.0);

  detail_losses::for_rows(n, l.rows, [&](std::int64_t i, T* q) {
    const std::int64_t y = labels[i];
    if (y == opt.ignore_index || tasn::detail::is_bad_label(y, k, opt.ignore_index)) {
      if (row_loss) row_loss[i] = y == opt.ignore_index ? 0.0 : std::numeric_limits<double>::quiet_NaN();
      if (dlogits) std::fill(dlogits + i * k, dlogits + (i + 1) * k, T(0));
      return;
    }
    const T* z = logits + i * k;
    const auto st = softmax_row(z, q, k, T(1));
    const T nll = -(z[y] - st.m - st.log_sum);
    // -(1/K) sum_j log q_j = -(mean(z) - m - log_sum)
    const T smooth = eps > 0 ? -(vec::sum(z, k) / T(k) - st.m - st.log_sum) : T(0);
    // grad_scale applied in double: the float product can overflow where the reduced loss does not
    if (row_loss) row_loss[i] = opt.grad_scale * static_cast<double>((T(1) - eps) * nll + eps * smooth);
    if (dlogits) {
      const T w = mean_scale * detail_losses::upstream(dloss, opt.reduction, i);
      T* g = dlogits + i * k;
      const T off_target = smoothed_target(false, eps, inv_k);
      for (std::int64_t j = 0; j < k; ++j) g[j] = cross_entropy_grad(q[j], off_target, scale, w);
      g[y] = cross_entropy_grad(q[y], smoothed_target(true, eps, inv_k), scale, w);
    }
  });
  detail_losses::write_loss(row_loss, n, opt.reduction, double(valid), args.loss.data);
}

// Evaluation counts: correct[j] = number of rows (label != ignore_index) whose label is among
// the top j+1 logits, for j < max_k = correct.size[0] (int64, overwritten). Rank of the label =
// number of logits strictly greater than the label's logit, so ties count in the label's favour;
// NaN logits rank above the label and a row whose label logit is NaN is never counted, for any
// max_k. A bad label is refused (check_finite) or its row is not counted.
template <class T>
void topk_correct(const TopkArgs<T>& args, Workspace ws = {}) {
  constexpr const char* op = "topk_correct";
  detail_losses::check_type<T>();
  tasn::detail::check_topk_args(args, op);
  tasn::detail::HostWorkspace hw(ws, detail_losses::layout_bytes(args), op);
  const TopkOptions& opt = args.options;
  const std::int64_t n = args.logits.size[0], k = args.logits.size[1], max_k = args.correct.size[0];
  const T* logits = args.logits.data;
  const std::int64_t* labels = args.labels.data;
  std::int64_t* correct = args.correct.data;
  if (opt.check_finite) detail_losses::check_labels(labels, n, k, opt.ignore_index, op);
  tasn::detail::WorkspaceCarver carver(hw.data());
  std::int64_t* rank = detail_losses::layout(carver, args).rank;
  parallel_for(0, n, [&](std::int64_t i) {
    rank[i] = -1;
    const std::int64_t y = labels[i];
    if (y == opt.ignore_index || tasn::detail::is_bad_label(y, k, opt.ignore_index)) return;
    const T* z = logits + i * k;
    if (std::isnan(z[y])) return;  // a NaN label logit is never correct
    std::int64_t r = 0;
    for (std::int64_t j = 0; j < k; ++j) r += ranks_above_label(z[j], z[y]);
    rank[i] = r;
  });
  std::fill(correct, correct + max_k, std::int64_t(0));
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t j = std::max<std::int64_t>(rank[i], 0); rank[i] >= 0 && j < max_k; ++j) ++correct[j];
}

}  // namespace tasn::cpu
