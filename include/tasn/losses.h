// tasn/losses.h - distillation loss and softmax cross-entropy, CPU path (Eigen + OpenMP, float
// and double). Math and options: tasn/losses_common.h and docs/losses.md.
//
// Each call computes the loss and, where the caller passes gradient buffers, the gradients, in
// one pass over the logits. Outputs:
//   loss   Reduction::None: N values (per sample); Sum / Mean: 1 value. May be nullptr.
//   dloss  upstream gradient of `loss` (None: N values, Sum / Mean: 1 value); nullptr means 1.
// Inputs are checked before anything is written: on an exception no output was touched.
// Rows are split over the OpenMP threads; the reduction over rows is serial, in double, in row
// order (deterministic).
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "tasn/core/parallel.h"
#include "tasn/core/scratch.h"
#include "tasn/core/softmax_cpu.h"
#include "tasn/losses_common.h"

namespace tasn::cpu {

namespace detail_losses {

constexpr std::int64_t kRowsPerTask = 8;

// Runs row(i, scratch) for all rows, kRowsPerTask rows per task, each task with its own scratch.
template <class T, class Row>
void for_rows(const char* op, std::int64_t n, std::int64_t scratch_elems, Row&& row) {
  const std::int64_t tasks = (n + kRowsPerTask - 1) / kRowsPerTask;
  parallel_for(0, tasks, [&](std::int64_t t) {
    auto scratch = tasn::detail::scratch_vector<T>(op, "the row scratch", scratch_elems);
    const std::int64_t end = std::min(n, (t + 1) * kRowsPerTask);
    for (std::int64_t i = t * kRowsPerTask; i < end; ++i) row(i, scratch.data());
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

// Upstream gradient of row i's loss term.
template <class T>
T upstream(const T* dloss, Reduction r, std::int64_t i) {
  if (!dloss) return T(1);
  return r == Reduction::None ? dloss[i] : dloss[0];
}

template <class T>
void write_loss(const std::vector<double>& row_loss, Reduction r, double mean_den, T* loss) {
  if (!loss) return;
  if (r == Reduction::None) {
    for (std::size_t i = 0; i < row_loss.size(); ++i) loss[i] = static_cast<T>(row_loss[i]);
    return;
  }
  double s = 0.0;
  for (double v : row_loss) s += v;
  loss[0] = static_cast<T>(r == Reduction::Mean ? (mean_den > 0 ? s / mean_den : 0.0) : s);
}

template <class T>
void check_type() {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                "the CPU losses support float and double");
}

}  // namespace detail_losses

// Teacher-student distillation (SPEC 4). student, teacher: (n, k) logits. dstudent (n, k) and
// dteacher (n, k) are optional (nullptr: not computed); the teacher gradient is off by default.
template <class T>
void distillation_loss(const T* student, const T* teacher, std::int64_t n, std::int64_t k,
                       const DistillationOptions& opt, T* loss, T* dstudent, T* dteacher = nullptr,
                       const T* dloss = nullptr) {
  constexpr const char* op = "distillation_loss";
  detail_losses::check_type<T>();
  validate_logits_shape(n, k, op);
  opt.validate(op);
  tasn::detail::check_pointer(student, "student", n * k, op);
  tasn::detail::check_pointer(teacher, "teacher", n * k, op);
  check_all_finite(student, n * k, "student", op);
  check_all_finite(teacher, n * k, "teacher", op);
  if (dloss) check_all_finite(dloss, loss_elems(n, opt.reduction), "dloss", op);

  const T inv_t = static_cast<T>(1.0 / opt.temperature);
  const T gf = static_cast<T>(opt.grad_factor());  // T with t_squared, else 1/T
  const double lf = opt.loss_factor();            // T^2 with t_squared, else 1
  const T mean_scale = static_cast<T>(opt.reduction == Reduction::Mean ? 1.0 / double(n) : 1.0);
  auto row_loss = tasn::detail::scratch_vector<double>(op, "the row losses", n);

  detail_losses::for_rows<T>(op, n, 2 * k, [&](std::int64_t i, T* scratch) {
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
    row_loss[i] = (opt.kl ? terms(std::true_type{}) : terms(std::false_type{})) * lf;
    if (dstudent) {
      T* g = dstudent + i * k;
      for (std::int64_t j = 0; j < k; ++j) g[j] = distill_student_grad(q[j], p[j], gf, w);
    }
  });
  detail_losses::write_loss(row_loss, opt.reduction, double(n), loss);
}

// Throws naming the first label that is neither ignore_index nor in [0, k).
inline void check_labels(const std::int64_t* labels, std::int64_t n, std::int64_t k,
                         std::int64_t ignore_index, const char* op) {
  for (std::int64_t i = 0; i < n; ++i) {
    const std::int64_t y = labels[i];
    TASN_CHECK_ARG(y == ignore_index || (y >= 0 && y < k), tasn::detail::bad_label_message(op, i, y, k, ignore_index));
  }
}

// Softmax cross-entropy with integer labels (n values), optional label smoothing. dlogits
// (n, k) is optional. Mean divides by the number of rows whose label is not ignore_index (a batch
// with none gives loss 0 and zero gradients, not NaN).
template <class T>
void softmax_cross_entropy(const T* logits, const std::int64_t* labels, std::int64_t n,
                           std::int64_t k, const CrossEntropyOptions& opt, T* loss, T* dlogits,
                           const T* dloss = nullptr) {
  constexpr const char* op = "softmax_cross_entropy";
  detail_losses::check_type<T>();
  validate_logits_shape(n, k, op);
  opt.validate(op);
  tasn::detail::check_pointer(logits, "logits", n * k, op);
  tasn::detail::check_pointer(labels, "labels", n, op);
  check_labels(labels, n, k, opt.ignore_index, op);
  check_all_finite(logits, n * k, "logits", op);
  if (dloss) check_all_finite(dloss, loss_elems(n, opt.reduction), "dloss", op);

  std::int64_t valid = 0;
  for (std::int64_t i = 0; i < n; ++i) valid += labels[i] != opt.ignore_index;
  const T eps = static_cast<T>(opt.label_smoothing), inv_k = static_cast<T>(1.0 / double(k));
  const T scale = static_cast<T>(opt.grad_scale);
  const T mean_scale =
      static_cast<T>(opt.reduction == Reduction::Mean ? (valid > 0 ? 1.0 / double(valid) : 0.0) : 1.0);
  auto row_loss = tasn::detail::scratch_vector<double>(op, "the row losses", n);

  detail_losses::for_rows<T>(op, n, k, [&](std::int64_t i, T* q) {
    const std::int64_t y = labels[i];
    if (y == opt.ignore_index) {
      row_loss[i] = 0.0;
      if (dlogits) std::fill(dlogits + i * k, dlogits + (i + 1) * k, T(0));
      return;
    }
    const T* z = logits + i * k;
    const auto st = softmax_row(z, q, k, T(1));
    const T nll = -(z[y] - st.m - st.log_sum);
    // -(1/K) sum_j log q_j = -(mean(z) - m - log_sum)
    const T smooth = eps > 0 ? -(vec::sum(z, k) / T(k) - st.m - st.log_sum) : T(0);
    // grad_scale applied in double: the float product can overflow where the reduced loss does not
    row_loss[i] = opt.grad_scale * static_cast<double>((T(1) - eps) * nll + eps * smooth);
    if (dlogits) {
      const T w = mean_scale * detail_losses::upstream(dloss, opt.reduction, i);
      T* g = dlogits + i * k;
      const T off_target = smoothed_target(false, eps, inv_k);
      for (std::int64_t j = 0; j < k; ++j) g[j] = cross_entropy_grad(q[j], off_target, scale, w);
      g[y] = cross_entropy_grad(q[y], smoothed_target(true, eps, inv_k), scale, w);
    }
  });
  detail_losses::write_loss(row_loss, opt.reduction, double(valid), loss);
}

// Overloads on views: the same operators, with every tensor's shape checked against the others
// (a mismatch throws tasn::InvalidArgument naming both tensors and their shapes).
template <class T>
void distillation_loss(MatrixView<const T> student, MatrixView<const T> teacher,
                       const DistillationOptions& opt, VectorView<T> loss, MatrixView<T> dstudent,
                       MatrixView<T> dteacher = {}, VectorView<const T> dloss = {}) {
  tasn::detail::check_distillation_views(student, teacher, opt, loss, dstudent, dteacher, dloss,
                                         "distillation_loss");
  distillation_loss(student.data, teacher.data, student.rows, student.cols, opt, loss.data,
                    dstudent.data, dteacher.data, dloss.data);
}

template <class T>
void softmax_cross_entropy(MatrixView<const T> logits, VectorView<const std::int64_t> labels,
                           const CrossEntropyOptions& opt, VectorView<T> loss,
                           MatrixView<T> dlogits, VectorView<const T> dloss = {}) {
  tasn::detail::check_cross_entropy_views(logits, labels, opt, loss, dlogits, dloss,
                                          "softmax_cross_entropy");
  softmax_cross_entropy(logits.data, labels.data, logits.rows, logits.cols, opt, loss.data,
                        dlogits.data, dloss.data);
}

// Evaluation counts: correct[j] = number of rows (label != ignore_index) whose label is among
// the top j+1 logits, for j < max_k. Rank of the label = number of logits strictly greater
// than the label's logit, so ties count in the label's favour; NaN logits rank above the label
// and a row whose label logit is NaN is never counted, for any max_k.
template <class T>
void topk_correct(const T* logits, const std::int64_t* labels, std::int64_t n, std::int64_t k,
                  std::int64_t max_k, std::int64_t ignore_index, std::int64_t* correct) {
  constexpr const char* op = "topk_correct";
  validate_logits_shape(n, k, op);
  TASN_CHECK_ARG(max_k >= 1, op, ": max_k must be >= 1, got ", max_k);
  tasn::detail::check_pointer(logits, "logits", n * k, op);
  tasn::detail::check_pointer(labels, "labels", n, op);
  tasn::detail::check_pointer(correct, "correct", max_k, op);
  check_labels(labels, n, k, ignore_index, op);
  auto rank = tasn::detail::scratch_vector<std::int64_t>(op, "the label ranks", n, -1);
  parallel_for(0, n, [&](std::int64_t i) {
    const std::int64_t y = labels[i];
    const T* z = logits + i * k;
    if (y == ignore_index || std::isnan(z[y])) return;  // a NaN label logit is never correct
    std::int64_t r = 0;
    for (std::int64_t j = 0; j < k; ++j) r += ranks_above_label(z[j], z[y]);
    rank[i] = r;
  });
  std::fill(correct, correct + max_k, 0);
  for (std::int64_t r : rank)
    for (std::int64_t j = std::max<std::int64_t>(r, 0); r >= 0 && j < max_k; ++j) ++correct[j];
}

}  // namespace tasn::cpu
