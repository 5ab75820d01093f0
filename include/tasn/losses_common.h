// tasn/losses_common.h - options, checks and per-element math of the loss operators, shared by
// the CPU path (tasn/losses.h) and the CUDA path (tasn/losses.cuh). No Eigen, no CUDA.
//
// SPEC section 4. For logits z (N, K):
//   distillation   p = softmax(zt / T), log q = log_softmax(zs / T)
//                  loss[n] = -sum_k p log q            (soft-target cross-entropy, official)
//                  loss[n] = sum_k p (log p - log q)   (kl = true)
//                  times T^2 when t_squared
//                  d/dzs = (q - p) / T;  d/dzt = -(1/T) p (r - sum_k p r),  r = log q (- log p for KL)
//   cross-entropy  t = (1 - eps) onehot(y) + eps / K;  loss[n] = -grad_scale * sum_k t log q
//                  (q = softmax(z)); d/dz = grad_scale (q - t); rows with y == ignore_index: 0
#pragma once

#include <cmath>
#include <cstdint>
#include <string>

#include "tasn/core/common.h"
#include "tasn/core/view.h"

namespace tasn {

enum class Reduction { None, Sum, Mean };

inline const char* to_string(Reduction r) {
  return r == Reduction::None ? "none" : r == Reduction::Sum ? "sum" : "mean";
}

struct DistillationOptions {
  double temperature = 10.0;  // T > 0 (official: 10)
  bool kl = false;            // KL divergence instead of the soft-target cross-entropy
  bool t_squared = false;     // multiply loss and gradients by T^2 (Hinton et al.)
  Reduction reduction = Reduction::Mean;

  void validate(const char* op) const {
    TASN_CHECK_ARG(std::isfinite(temperature) && temperature > 0.0, op,
                   ": temperature must be finite and > 0, got ", temperature);
  }
};

struct CrossEntropyOptions {
  std::int64_t ignore_index = -100;  // rows with this label get loss 0 and gradient 0
  // Weight of the loss and so of its gradient (MXNet SoftmaxOutput's grad_scale; TASN's heads
  // use 0.5). The loss is scaled too, so loss and gradient stay a consistent pair.
  double grad_scale = 1.0;
  double label_smoothing = 0.0;  // eps in [0, 1]
  Reduction reduction = Reduction::Mean;

  void validate(const char* op) const {
    TASN_CHECK_ARG(std::isfinite(grad_scale), op, ": grad_scale must be finite, got ", grad_scale);
    TASN_CHECK_ARG(label_smoothing >= 0.0 && label_smoothing <= 1.0, op,
                   ": label_smoothing must be in [0, 1], got ", label_smoothing);
  }
};

// (N, K) logits: N >= 1 rows of K >= 1 classes.
inline void validate_logits_shape(std::int64_t n, std::int64_t k, const char* op) {
  TASN_CHECK_ARG(n >= 1 && k >= 1, op, ": logits must have shape (N, K) with N >= 1 and K >= 1, got (",
                 n, ", ", k, ")");
  detail::checked_mul(n, k, op);
}

// Elements of the loss output for a reduction: N for None, else 1.
inline std::int64_t loss_elems(std::int64_t n, Reduction r) { return r == Reduction::None ? n : 1; }

namespace detail {

// The message for a label that is neither ignore_index nor in [0, k) (CPU check and GPU status).
inline std::string bad_label_message(const char* op, std::int64_t row, std::int64_t label, std::int64_t k,
                                     std::int64_t ignore_index) {
  return concat(op, ": labels[", row, "] = ", label, " is out of range [0, ", k, ") and is not ignore_index (",
                ignore_index, ")");
}

inline const char* loss_size_reason(Reduction r) {
  return r == Reduction::None ? "reduction none: one per row" : "reduction sum/mean: one value";
}

// Shape checks of the view overloads (CPU and CUDA): every tensor must agree with `student`.
template <class T>
void check_distillation_views(MatrixView<const T> student, MatrixView<const T> teacher,
                              const DistillationOptions& opt, VectorView<T> loss,
                              MatrixView<T> dstudent, MatrixView<T> dteacher,
                              VectorView<const T> dloss, const char* op) {
  TASN_CHECK_ARG(teacher.present() || student.rows * student.cols == 0, op, ": teacher is absent");
  check_same_shape(teacher, "teacher", student, "student", op);
  check_same_shape(dstudent, "dstudent", student, "student", op);
  check_same_shape(dteacher, "dteacher", student, "student", op);
  check_size(loss, "loss", loss_elems(student.rows, opt.reduction), loss_size_reason(opt.reduction), op);
  check_size(dloss, "dloss", loss_elems(student.rows, opt.reduction), loss_size_reason(opt.reduction), op);
}

template <class T>
void check_cross_entropy_views(MatrixView<const T> logits, VectorView<const std::int64_t> labels,
                               const CrossEntropyOptions& opt, VectorView<T> loss,
                               MatrixView<T> dlogits, VectorView<const T> dloss, const char* op) {
  TASN_CHECK_ARG(labels.present() && labels.size == logits.rows, op, ": labels holds ", labels.size,
                 " elements but logits has ", logits.rows, " rows");
  check_same_shape(dlogits, "dlogits", logits, "logits", op);
  check_size(loss, "loss", loss_elems(logits.rows, opt.reduction), loss_size_reason(opt.reduction), op);
  check_size(dloss, "dloss", loss_elems(logits.rows, opt.reduction), loss_size_reason(opt.reduction), op);
}

}  // namespace detail

// ---- per-element math (CPU and CUDA) ---------------------------------------------------------

// d loss / d zs_k for one row: w (q_k - p_k) / T, w = the row's gradient weight.
template <class Acc>
TASN_HD Acc distill_student_grad(Acc q, Acc p, Acc inv_t, Acc w) {
  return w * inv_t * (q - p);
}

// d loss / d zt_k for one row: -w p_k (r_k - sum_j p_j r_j) / T.
template <class Acc>
TASN_HD Acc distill_teacher_grad(Acc p, Acc r, Acc p_dot_r, Acc inv_t, Acc w) {
  return -w * inv_t * p * (r - p_dot_r);
}

// Smoothed target of class k: (1 - eps) [k == label] + eps / K.
template <class Acc>
TASN_HD Acc smoothed_target(bool is_label, Acc eps, Acc inv_k) {
  return (is_label ? Acc(1) - eps : Acc(0)) + eps * inv_k;
}

// Top-k ranking: logit zj ranks above the label's logit zy unless zj <= zy (ties go to the label),
// so a NaN elsewhere in the row ranks above the label. (Rows whose label logit is NaN are skipped
// by the callers: never counted correct.)
template <class Acc>
TASN_HD bool ranks_above_label(Acc zj, Acc zy) {
  return !(zj <= zy);
}

// d loss / d z_k for one row: w (q_k - t_k).

template <class Acc>
TASN_HD Acc cross_entropy_grad(Acc q, Acc target, Acc w) {
  return w * (q - target);
}

}  // namespace tasn
