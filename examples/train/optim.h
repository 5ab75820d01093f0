// examples/train/optim.h - SGD with momentum and weight decay (PyTorch's form) and the learning-rate
// schedules of the trainer. The momentum buffers are named like the parameters, so checkpoints
// save and restore them by name.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "nn/elementwise.h"
#include "nn/params.h"

namespace tasn::train {

enum class Schedule { Step, Cosine, OneCycle };

inline Schedule parse_schedule(const std::string& s) {
  if (s == "step") return Schedule::Step;
  if (s == "cosine") return Schedule::Cosine;
  if (s == "onecycle") return Schedule::OneCycle;
  throw InvalidArgument("--schedule must be step, cosine or onecycle, got \"" + s + "\"");
}
inline const char* to_string(Schedule s) {
  return s == Schedule::Step ? "step" : s == Schedule::Cosine ? "cosine" : "onecycle";
}

struct LrSchedule {
  Schedule kind = Schedule::Step;
  double base = 0.1;                      // peak (onecycle) or initial learning rate
  std::vector<double> milestones;         // step: epochs where lr is multiplied by gamma
  double gamma = 0.1;
  double warmup = 0.3;                    // onecycle: fraction of the run spent rising from base / 25
  double final_div = 1e4;                 // onecycle: last lr = base / 25 / final_div

  // lr at training progress `epoch` (fractional: epoch + step / steps_per_epoch) of `epochs`.
  double at(double epoch, double epochs) const {
    const double pi = 3.141592653589793;
    const double t = epochs > 0 ? std::min(1.0, std::max(0.0, epoch / epochs)) : 0.0;
    switch (kind) {
      case Schedule::Step: {
        double lr = base;
        for (double m : milestones)
          if (epoch >= m) lr *= gamma;
        return lr;
      }
      case Schedule::Cosine:
        return 0.5 * base * (1 + std::cos(pi * t));
      case Schedule::OneCycle: {
        const double lo = base / 25, end = lo / final_div;
        if (t < warmup) return lo + (base - lo) * 0.5 * (1 - std::cos(pi * t / warmup));
        const double u = (t - warmup) / (1 - warmup);
        return end + (base - end) * 0.5 * (1 + std::cos(pi * u));
      }
    }
    return base;
  }
};

struct SgdOptions {
  double momentum = 0.9;
  double weight_decay = 5e-4;
};

// v = momentum * v + (g * rescale + weight_decay * w);  w -= lr * v   (PyTorch SGD, dampening 0),
// as one fused loop over the model's flat trainable range (alignment padding is 0 and stays 0); the
// per-element update is nn::sgd_step (nn/elementwise.h), shared with the GPU kernel.
// The momentum buffer is flat too; buffers() names its parts like the parameters
// ("<store>.<parameter>"), so checkpoints save and restore them by name.
template <class T>
class BasicSgd {
 public:
  // No momentum buffer when momentum is 0 (the paper preset): the update is then w -= lr (g r + wd w),
  // the same numbers, and the checkpoints hold no optim.* tensors.
  BasicSgd(nn::FlatParams<T>& params, const SgdOptions& o)
      : params_(&params), opt_(o), v_(o.momentum != 0 ? params.trainable_size() : 0) {
    if (o.momentum != 0)
      for (const auto& e : params.table())
        if (e.trainable) buf_.emplace(e.name, nn::TensorSpan<T>(v_.data() + e.offset, e.shape));
  }

  // Applies one update; returns false (and changes nothing) when a gradient is not finite.
  bool step(double lr, double rescale) {
    const std::int64_t n = params_->trainable_size();
    T* w = params_->values();
    const T* g = params_->grads();
    T* v = v_.data();
    if (const auto* bad = params_->first_non_finite(g, true)) {
      bad_ = bad->name;
      return false;
    }
    const T mu = static_cast<T>(opt_.momentum), wd = static_cast<T>(opt_.weight_decay);
    const T r = static_cast<T>(rescale), a = static_cast<T>(lr);
    nn::parallel_for_blocks(n, [&](std::int64_t lo, std::int64_t hi) {
      if (v)
        for (std::int64_t i = lo; i < hi; ++i) nn::sgd_step(w[i], v[i], g[i], a, mu, wd, r);
      else
        for (std::int64_t i = lo; i < hi; ++i) nn::sgd_step(w[i], g[i], a, wd, r);
    });
    return true;
  }
  // The parameter whose gradient stopped the last step().
  const std::string& non_finite_gradient() const { return bad_; }

  // The flat momentum buffer (trainable_size() values, laid out as the gradients), or nullptr
  // without momentum: a device model keeps its copy in step with it.
  T* momentum() { return v_.size() ? v_.data() : nullptr; }
  const SgdOptions& options() const { return opt_; }

  // Momentum buffers by "<store>.<parameter>" name (views into the flat momentum buffer).
  std::map<std::string, nn::TensorSpan<T>>& buffers() { return buf_; }

 private:
  nn::FlatParams<T>* params_;
  SgdOptions opt_;
  nn::AlignedBuffer<T> v_;
  std::map<std::string, nn::TensorSpan<T>> buf_;
  std::string bad_;
};
using Sgd = BasicSgd<float>;

}  // namespace tasn::train
