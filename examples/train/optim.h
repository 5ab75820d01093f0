// examples/train/optim.h - SGD with momentum and weight decay (PyTorch's form) and the learning-rate
// schedules of the trainer. The momentum buffers are named like the parameters, so checkpoints
// save and restore them by name.
#pragma once

#include <cmath>
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "nn/resnet.h"

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

// v = momentum * v + (g * rescale + weight_decay * w);  w -= lr * v   (PyTorch SGD, dampening 0).
class Sgd {
 public:
  Sgd(std::vector<std::pair<std::string, nn::ParamStore<float>*>> stores, const SgdOptions& o)
      : stores_(std::move(stores)), opt_(o) {
    for (auto& [prefix, ps] : stores_)
      for (auto& [name, p] : ps->all())
        if (p.trainable) buf_[prefix + "." + name] = nn::Tensor<float>(p.value.shape);
  }

  // Applies one update; returns false (and changes nothing) when a gradient is not finite.
  bool step(double lr, double rescale) {
    for (auto& [prefix, ps] : stores_)
      for (auto& [name, p] : ps->all())
        if (p.trainable)
          for (float g : p.grad.data)
            if (!std::isfinite(g)) {
              bad_ = prefix + "." + name;
              return false;
            }
    const float mu = static_cast<float>(opt_.momentum), wd = static_cast<float>(opt_.weight_decay);
    const float r = static_cast<float>(rescale), a = static_cast<float>(lr);
    for (auto& [prefix, ps] : stores_)
      for (auto& [name, p] : ps->all()) {
        if (!p.trainable) continue;
        auto& v = buf_.at(prefix + "." + name).data;
        auto& w = p.value.data;
        const auto& g = p.grad.data;
        for (std::size_t i = 0; i < w.size(); ++i) {
          v[i] = mu * v[i] + (g[i] * r + wd * w[i]);
          w[i] -= a * v[i];
        }
      }
    return true;
  }
  // The parameter whose gradient stopped the last step().
  const std::string& non_finite_gradient() const { return bad_; }

  // Momentum buffers by "<store>.<parameter>" name.
  std::map<std::string, nn::Tensor<float>>& buffers() { return buf_; }

 private:
  std::vector<std::pair<std::string, nn::ParamStore<float>*>> stores_;
  SgdOptions opt_;
  std::map<std::string, nn::Tensor<float>> buf_;
  std::string bad_;
};

}  // namespace tasn::train
