// tasn/losses_common.h - options, checks and per-element math of the loss operators, shared by
// the CPU path (tasn/losses.h) and the CUDA path (tasn/losses.cuh). No Eigen, no CUDA.
//
// SPEC section 4. For logits z (N, K):
//   distillation   p = softmax(zt / T), log q = log_softmax(zs / T)
//                  loss[n] = -sum_k p log q            (soft-target cross-entropy, official)
//                  loss[n] = sum_k p (log p - log q)   (kl = true)
//                  times T^2 when t_squared
//                  d/dzs = (q - p) / T;  d/dzt = -(1/T) p (r - sum_k p r),  r = log q (- log p for KL)
//                  p log q is 0 where p = 0, even where log q = -inf (xlogy)
//   cross-entropy  t = (1 - eps) onehot(y) + eps / K;  loss[n] = -grad_scale * sum_k t log q
//                  (q = softmax(z)); d/dz = grad_scale (q - t); rows with y == ignore_index: 0
//
// Calling convention (both backends, the same argument structs below):
//   tasn::cpu::distillation_loss(args, ws)          tasn::cuda::distillation_loss(ctx, args, ws)
//   tasn::cpu::softmax_cross_entropy(args, ws)      tasn::cuda::softmax_cross_entropy(ctx, args, ws)
//   tasn::cpu::topk_correct(args, ws)               tasn::cuda::topk_correct(ctx, args, ws)
//   tasn::cpu::workspace_bytes(args)                tasn::cuda::workspace_bytes(args)
// Every call checks, in this order and before anything is written: the options (validate()),
// the shapes of every view (detail::check_*_args below: the same code and messages on both
// backends), the workspace, then the values when options.check_finite.
//
// Non-finite values and bad labels (options.check_finite):
//   true (default): NaN/Inf in student, teacher, logits or dloss, and a label that is neither
//     ignore_index nor in [0, K), throw the same tasn::InvalidArgument on both backends
//     (detail::nonfinite_message / detail::bad_label_message) before anything is written. On
//     CUDA that costs a scan per input and one read-back (one stream synchronisation) per call.
//     topk_correct checks only its labels (NaN logits are ranked, see ranks_above_label).
//   false: no scan, no CUDA synchronisation. Non-finite values propagate (NaN losses and
//     gradients). A bad label gives its row a NaN loss (so a reduced loss is NaN too; the row
//     still counts in the mean's denominator) and a zero gradient, on both backends; a bad label
//     is never used as an index. topk_correct never counts a bad label's row.
#pragma once

#include <cmath>
#include <cstdint>
#include <string>

#include "tasn/core/common.h"
#include "tasn/core/softmax_math.h"
#include "tasn/core/tensor.h"

namespace tasn {

enum class Reduction { None, Sum, Mean };

inline const char* to_string(Reduction r) {
  return r == Reduction::None ? "none" : r == Reduction::Sum ? "sum" : "mean";
}

struct DistillationOptions {
  // T > 0 (official: 10). 1/T, and T^2 with t_squared, are used as floats, so they must be finite
  // in float: T >= 1/FLT_MAX, and T <= sqrt(FLT_MAX) with t_squared.
  double temperature = 10.0;
  bool kl = false;            // KL divergence instead of the soft-target cross-entropy
  bool t_squared = false;     // multiply loss and gradients by T^2 (Hinton et al.)
  Reduction reduction = Reduction::Mean;
  // Refuse NaN/Inf in student, teacher and dloss (tasn/core/value_checks.cuh on CUDA).
  bool check_finite = true;

  void validate(const char* op) const {
    TASN_CHECK_ARG(std::isfinite(temperature) && temperature > 0.0, op,
                   ": temperature must be finite and > 0, got ", temperature);
    TASN_CHECK_ARG(1.0 / temperature <= detail::kFloatMax, op, ": temperature must be >= ", 1.0 / detail::kFloatMax,
                   " (1/temperature finite in float), got ", temperature);
    TASN_CHECK_ARG(!t_squared || temperature * temperature <= detail::kFloatMax, op, ": temperature must be <= ",
                   std::sqrt(detail::kFloatMax), " with t_squared (temperature^2 finite in float), got ", temperature);
  }

  // The factor of the gradients' (q - p): T^2 * (1/T) = T with t_squared, else 1/T. Formed
  // directly, never as T^2 times the rest of the row weight (which can overflow float).
  double grad_factor() const { return t_squared ? temperature : 1.0 / temperature; }
  // The factor of the row losses: T^2 with t_squared, else 1 (applied in double).
  double loss_factor() const { return t_squared ? temperature * temperature : 1.0; }
};

struct CrossEntropyOptions {
  std::int64_t ignore_index = -100;  // rows with this label get loss 0 and gradient 0
  // Weight of the loss and so of its gradient (MXNet SoftmaxOutput's grad_scale; TASN's heads
  // use 0.5). The loss is scaled too, so loss and gradient stay a consistent pair.
  double grad_scale = 1.0;
  double label_smoothing = 0.0;  // eps in [0, 1]
  Reduction reduction = Reduction::Mean;
  // Refuse NaN/Inf in logits and dloss, and labels that are neither ignore_index nor in [0, K),
  // with the same tasn::InvalidArgument on both backends. With false: no scan, no CUDA
  // synchronisation; a bad label gives its row a NaN loss and zero gradient.
  bool check_finite = true;

  void validate(const char* op) const {
    TASN_CHECK_ARG(std::isfinite(grad_scale), op, ": grad_scale must be finite, got ", grad_scale);
    TASN_CHECK_ARG(std::fabs(grad_scale) <= detail::kFloatMax, op, ": grad_scale must be finite in float (|grad_scale| <= ",
                   detail::kFloatMax, "), got ", grad_scale);
    TASN_CHECK_ARG(label_smoothing >= 0.0 && label_smoothing <= 1.0, op,
                   ": label_smoothing must be in [0, 1], got ", label_smoothing);
  }
};

// Elements of the loss output for a reduction: N for None, else 1.
inline std::int64_t loss_elems(std::int64_t n, Reduction r) { return r == Reduction::None ? n : 1; }

// Options of topk_correct.
struct TopkOptions {
  std::int64_t ignore_index = -100;  // rows with this label are not counted
  // Refuse labels that are neither ignore_index nor in [0, K) (NaN logits are allowed: they rank
  // above the label, see ranks_above_label). With false a bad label's row is not counted.
  bool check_finite = true;
};

// ---- arguments (the same struct for tasn::cpu:: and tasn::cuda::) ------------------------------
// Outputs: loss (Reduction::None: N values, Sum / Mean: 1), optional; gradients optional;
// dloss: upstream gradient of loss (same size as loss), absent = 1.

template <class T>
struct DistillationArgs {
  Tensor2<const T> student;  // (N, K) logits
  Tensor2<const T> teacher;  // (N, K) logits
  Tensor1<T> loss;           // optional: (N) or (1)
  Tensor2<T> dstudent;       // optional: (N, K)
  Tensor2<T> dteacher;       // optional: (N, K) (off by default: the teacher is usually detached)
  Tensor1<const T> dloss;    // optional: (N) or (1)
  DistillationOptions options;
};

template <class T>
struct CrossEntropyArgs {
  Tensor2<const T> logits;              // (N, K)
  Tensor1<const std::int64_t> labels;   // (N)
  Tensor1<T> loss;                      // optional: (N) or (1)
  Tensor2<T> dlogits;                   // optional: (N, K)
  Tensor1<const T> dloss;               // optional: (N) or (1)
  CrossEntropyOptions options;
};

// correct[j] = rows (label != ignore_index) whose label is among the top j+1 logits, j < max_k
// = correct.size[0]. Counts are int64 on both backends.
template <class T>
struct TopkArgs {
  Tensor2<const T> logits;              // (N, K)
  Tensor1<const std::int64_t> labels;   // (N)
  Tensor1<std::int64_t> correct;        // (max_k), max_k >= 1; overwritten
  TopkOptions options;
};

// ---- shape checks (CPU and CUDA: the same code, so the same messages) ---------------------------

namespace detail {

// Layout of loss and dloss for a reduction, for the shape messages.
inline const char* loss_layout(Reduction r) {
  return r == Reduction::None ? "(N)" : r == Reduction::Sum ? "(1) (reduction sum)" : "(1) (reduction mean)";
}

// Options, then every view's shape: student defines (N, K); the other views must agree.
template <class T>
void check_distillation_args(const DistillationArgs<T>& a, const char* op) {
  a.options.validate(op);
  check_leading_tensor(op, "student", a.student, "(N, K)");
  const std::int64_t n = a.student.size[0], k = a.student.size[1], nl = loss_elems(n, a.options.reduction);
  const char* ll = loss_layout(a.options.reduction);
  check_present(op, "teacher", a.teacher);
  check_tensor(op, "teacher", a.teacher, "(N, K)", {n, k});
  check_optional_tensor(op, "loss", a.loss, ll, {nl});
  check_optional_tensor(op, "dstudent", a.dstudent, "(N, K)", {n, k});
  check_optional_tensor(op, "dteacher", a.dteacher, "(N, K)", {n, k});
  check_optional_tensor(op, "dloss", a.dloss, ll, {nl});
}

// Options, then every view's shape: logits defines (N, K).
template <class T>
void check_cross_entropy_args(const CrossEntropyArgs<T>& a, const char* op) {
  a.options.validate(op);
  check_leading_tensor(op, "logits", a.logits, "(N, K)");
  const std::int64_t n = a.logits.size[0], k = a.logits.size[1], nl = loss_elems(n, a.options.reduction);
  const char* ll = loss_layout(a.options.reduction);
  check_present(op, "labels", a.labels);
  check_tensor(op, "labels", a.labels, "(N)", {n});
  check_optional_tensor(op, "loss", a.loss, ll, {nl});
  check_optional_tensor(op, "dlogits", a.dlogits, "(N, K)", {n, k});
  check_optional_tensor(op, "dloss", a.dloss, ll, {nl});
}

// logits defines (N, K); correct (max_k) with max_k >= 1.
template <class T>
void check_topk_args(const TopkArgs<T>& a, const char* op) {
  check_leading_tensor(op, "logits", a.logits, "(N, K)");
  const std::int64_t n = a.logits.size[0];
  check_present(op, "labels", a.labels);
  check_tensor(op, "labels", a.labels, "(N)", {n});
  check_present(op, "correct", a.correct);
  TASN_CHECK_ARG(a.correct.size[0] >= 1, op, ": correct must have shape (max_k) with max_k >= 1, got ",
                 a.correct.shape_string());
  check_tensor(op, "correct", a.correct, "(max_k)", {a.correct.size[0]});
}

// A label that is neither ignore_index nor in [0, k): refused with check_finite, else its row
// gets a NaN loss and no gradient (never used as an index).
TASN_HD bool is_bad_label(std::int64_t y, std::int64_t k, std::int64_t ignore_index) {
  return y != ignore_index && (y < 0 || y >= k);
}

}  // namespace detail

// ---- per-element math (CPU and CUDA) ---------------------------------------------------------
// Row weights are split so that no intermediate product can overflow into inf * 0 = NaN: the
// gradient of a row is (difference of probabilities, |.| <= 1) * (an option's factor, a finite
// float) * (the rest of the weight: 1/N for the mean times the upstream gradient).

// p * v with p == 0 giving 0 for every v, -inf included (scipy's xlogy): a class to which the
// target gives probability 0 contributes nothing, even where log q = -inf. The v of a zero p is
// replaced by +0 with integer operations only (no branch, no conditional floating-point
// operation, which GCC will not if-convert under the default -ftrapping-math), so the CPU loops
// vectorise. A NaN p or v still gives NaN.
TASN_HD double xlogy(double p, double v) {
  const std::uint64_t keep = std::uint64_t(0) - static_cast<std::uint64_t>((hd_bits(p) << 1) != 0);  // 0 iff p == +-0
  return p * hd_from_bits(hd_bits(v) & keep);
}

// log softmax(scale * z)_k from the row's maximum m and log-sum, in double: scale * (z - m)
// overflows float for legal scales (1/T up to FLT_MAX) but never double.
template <class Acc>
TASN_HD double log_softmax_at(Acc z, Acc m, Acc scale, Acc log_sum) {
  return static_cast<double>(scale) * (static_cast<double>(z) - static_cast<double>(m)) - static_cast<double>(log_sum);
}

// One class's term of a row's unscaled distillation loss (before T^2): -p log q, or p (log p -
// log q) for the KL form; 0 where p = 0.
TASN_HD double distill_loss_term(double p, double lq, double lp, bool kl) {
  return kl ? xlogy(p, lp - lq) : -xlogy(p, lq);
}

// d loss / d zs_k for one row: (q_k - p_k) * g * w, g = DistillationOptions::grad_factor(),
// w = 1/N (mean) times the upstream gradient.
template <class Acc>
TASN_HD Acc distill_student_grad(Acc q, Acc p, Acc g, Acc w) {
  return (q - p) * g * w;
}

// d loss / d zt_k for one row: -p_k (r_k - sum_j p_j r_j) * g * w, in double, 0 where p_k = 0;
// r = log q (log q - log p for KL) from log_softmax_at, sum_j p_j r_j = -(the unscaled row loss).
TASN_HD double distill_teacher_grad(double p, double r, double p_dot_r, double g, double w) {
  return -xlogy(p, r - p_dot_r) * g * w;
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

// d loss / d z_k for one row: (q_k - t_k) * s * w, s = grad_scale, w = 1/valid (mean) times the
// upstream gradient.
template <class Acc>
TASN_HD Acc cross_entropy_grad(Acc q, Acc target, Acc s, Acc w) {
  return (q - target) * s * w;
}

}  // namespace tasn
