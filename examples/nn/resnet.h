// examples/nn/resnet.h - torchvision-form ResNets (BasicBlock: ResNet-18/34, Bottleneck:
// ResNet-50/101) on the layers of layers.h, forward and backward, with torchvision's parameter
// names (conv1.weight, layer1.0.bn2.running_var, layer2.0.downsample.0.weight, fc.bias, ...) so
// ImageNet weights converted from a torchvision state_dict load by name. A width multiplier and
// per-stage depth and stride make small variants (the CPU demo) and the TASN attention-net strides.
//
// The official TASN MXNet code used pre-activation ResNets; we use torchvision's post-activation
// form so that its ImageNet weights can be used.
#pragma once

#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "nn/layers.h"

namespace tasn::nn {

// A named tensor with its gradient (parameters) or without (buffers: BN running statistics).
template <class T>
struct Param {
  Tensor<T> value, grad;
  bool trainable = true;
};

// Parameters and buffers by torchvision name, in a stable (sorted) order.
template <class T>
class ParamStore {
 public:
  Param<T>& add(const std::string& name, std::vector<std::int64_t> shape, bool trainable = true) {
    TASN_CHECK_ARG(!map_.count(name), "ParamStore: parameter ", name, " defined twice");
    Param<T>& p = map_[name];
    p.value = Tensor<T>(shape);
    p.grad = trainable ? Tensor<T>(shape) : Tensor<T>();
    p.trainable = trainable;
    return p;
  }
  Param<T>& at(const std::string& name) {
    auto it = map_.find(name);
    TASN_CHECK_ARG(it != map_.end(), "ParamStore: no parameter named ", name);
    return it->second;
  }
  std::map<std::string, Param<T>>& all() { return map_; }
  void zero_grad() {
    for (auto& [n, p] : map_)
      if (p.trainable) std::fill(p.grad.data.begin(), p.grad.data.end(), T(0));
  }

 private:
  std::map<std::string, Param<T>> map_;
};

// Conv (no bias) + BatchNorm (+ ReLU), the unit every ResNet is made of.
template <class T>
class ConvBN {
 public:
  ConvBN(ParamStore<T>& ps, const std::string& conv, const std::string& bn, std::int64_t cin, std::int64_t cout,
         std::int64_t k, Conv2dArgs a, bool relu)
      : w_(&ps.add(conv + ".weight", {cout, cin, k, k})),
        g_(&ps.add(bn + ".weight", {cout})),
        b_(&ps.add(bn + ".bias", {cout})),
        rm_(&ps.add(bn + ".running_mean", {cout}, false)),
        rv_(&ps.add(bn + ".running_var", {cout}, false)),
        a_(a),
        relu_(relu) {
    std::fill(g_->value.data.begin(), g_->value.data.end(), T(1));
    std::fill(rv_->value.data.begin(), rv_->value.data.end(), T(1));
  }

  Tensor<T> forward(const Tensor<T>& x, const BatchNormState& s) {
    x_ = x;
    c_ = conv2d_forward(x, w_->value, nullptr, a_);
    training_ = s.training;
    auto y = batchnorm2d_forward(c_, g_->value, b_->value, rm_->value, rv_->value, s, &cache_);
    if (relu_) {
      pre_ = y;
      return relu_forward(y);
    }
    return y;
  }

  Tensor<T> backward(const Tensor<T>& dy) {
    Tensor<T> d = dy;
    if (relu_) {
      d = Tensor<T>(dy.shape);
      relu_backward(pre_, dy, d);
    }
    Tensor<T> dc(c_.shape);
    batchnorm2d_backward(c_, g_->value, d, cache_, training_, &dc, &g_->grad, &b_->grad);
    Tensor<T> dx(x_.shape);
    conv2d_backward(x_, w_->value, dc, a_, &dx, &w_->grad, nullptr);
    return dx;
  }

 private:
  Param<T>*w_, *g_, *b_, *rm_, *rv_;
  Conv2dArgs a_;
  bool relu_, training_ = true;
  Tensor<T> x_, c_, pre_;
  BatchNormCache<T> cache_;
};

template <class T>
class Block {
 public:
  virtual ~Block() = default;
  virtual Tensor<T> forward(const Tensor<T>& x, const BatchNormState& s) = 0;
  virtual Tensor<T> backward(const Tensor<T>& dy) = 0;
};

// Residual unit: main branch units, optional downsample (conv1x1 + BN), ReLU after the sum.
template <class T>
class ResidualBlock : public Block<T> {
 public:
  // bottleneck: 1x1 -> 3x3 (stride) -> 1x1 (x4); basic: 3x3 (stride) -> 3x3.
  ResidualBlock(ParamStore<T>& ps, const std::string& p, std::int64_t cin, std::int64_t planes, std::int64_t stride,
                bool bottleneck) {
    const std::int64_t cout = bottleneck ? planes * 4 : planes;
    if (bottleneck) {
      units_.emplace_back(ps, p + "conv1", p + "bn1", cin, planes, 1, Conv2dArgs{1, 0, 1}, true);
      units_.emplace_back(ps, p + "conv2", p + "bn2", planes, planes, 3, Conv2dArgs{stride, 1, 1}, true);
      units_.emplace_back(ps, p + "conv3", p + "bn3", planes, cout, 1, Conv2dArgs{1, 0, 1}, false);
    } else {
      units_.emplace_back(ps, p + "conv1", p + "bn1", cin, planes, 3, Conv2dArgs{stride, 1, 1}, true);
      units_.emplace_back(ps, p + "conv2", p + "bn2", planes, cout, 3, Conv2dArgs{1, 1, 1}, false);
    }
    if (stride != 1 || cin != cout)
      down_ = std::make_unique<ConvBN<T>>(ps, p + "downsample.0", p + "downsample.1", cin, cout, 1,
                                          Conv2dArgs{stride, 0, 1}, false);
  }

  Tensor<T> forward(const Tensor<T>& x, const BatchNormState& s) override {
    Tensor<T> h = x;
    for (auto& u : units_) h = u.forward(h, s);
    sum_ = add_forward(h, down_ ? down_->forward(x, s) : x);
    return relu_forward(sum_);
  }

  Tensor<T> backward(const Tensor<T>& dy) override {
    Tensor<T> ds(dy.shape);
    relu_backward(sum_, dy, ds);
    Tensor<T> dh = ds;
    for (auto it = units_.rbegin(); it != units_.rend(); ++it) dh = it->backward(dh);
    const Tensor<T> dskip = down_ ? down_->backward(ds) : ds;
    for (std::int64_t i = 0; i < dh.numel(); ++i) dh.data[i] += dskip.data[i];
    return dh;
  }

 private:
  std::vector<ConvBN<T>> units_;
  std::unique_ptr<ConvBN<T>> down_;
  Tensor<T> sum_;
};

struct ResNetConfig {
  bool bottleneck = false;
  std::vector<std::int64_t> depth = {2, 2, 2, 2};    // units per stage
  std::vector<std::int64_t> stride = {1, 2, 2, 2};   // first-unit stride per stage
  double width = 1.0;                                // channels per stage: 64, 128, 256, 512 x width
  std::int64_t num_classes = 1000;                   // 0: no fc (features only)
  // Stem: conv1 k x k with this stride (padding k / 2), then max-pool 3/2 when stem_pool.
  // torchvision: 7, 2, true; small-image nets (the CPU demo): e.g. 3, 1, false.
  std::int64_t stem_kernel = 7, stem_stride = 2;
  bool stem_pool = true;

  static ResNetConfig resnet18() { return {}; }
  static ResNetConfig resnet34() { return {false, {3, 4, 6, 3}}; }
  static ResNetConfig resnet50() { return {true, {3, 4, 6, 3}}; }
  static ResNetConfig resnet101() { return {true, {3, 4, 23, 3}}; }
};

// conv1 7x7/2 + bn1 + relu + maxpool 3/2 -> layer1..4 -> global average pool -> fc.
template <class T>
class ResNet {
 public:
  ResNet(ParamStore<T>& ps, const ResNetConfig& cfg, const std::string& prefix = "") : cfg_(cfg) {
    const auto ch = [&](std::int64_t base) { return std::max<std::int64_t>(1, std::int64_t(base * cfg.width + 0.5)); };
    TASN_CHECK_ARG(cfg.stem_kernel >= 1 && cfg.stem_stride >= 1 && cfg.depth.size() == cfg.stride.size() &&
                       !cfg.depth.empty() && cfg.depth.size() <= 4,
                   "ResNet: need stem kernel and stride >= 1 and 1..4 stages with one stride each, got ",
                   cfg.depth.size(), " depths and ", cfg.stride.size(), " strides");
    stem_ = std::make_unique<ConvBN<T>>(ps, prefix + "conv1", prefix + "bn1", 3, ch(64), cfg.stem_kernel,
                                        Conv2dArgs{cfg.stem_stride, cfg.stem_kernel / 2, 1}, true);
    std::int64_t cin = ch(64);
    const std::int64_t base[4] = {64, 128, 256, 512};
    for (std::size_t s = 0; s < cfg.depth.size(); ++s) {
      const std::int64_t planes = ch(base[s]);
      for (std::int64_t u = 0; u < cfg.depth[s]; ++u) {
        const std::string p = prefix + "layer" + std::to_string(s + 1) + "." + std::to_string(u) + ".";
        blocks_.push_back(std::make_unique<ResidualBlock<T>>(ps, p, cin, planes, u == 0 ? cfg.stride[s] : 1, cfg.bottleneck));
        cin = cfg.bottleneck ? planes * 4 : planes;
      }
    }
    features_ = cin;
    if (cfg.num_classes > 0) {
      fc_w_ = &ps.add(prefix + "fc.weight", {cfg.num_classes, cin});
      fc_b_ = &ps.add(prefix + "fc.bias", {cfg.num_classes});
    }
  }

  std::int64_t features() const { return features_; }

  // The feature map before pooling (N, features, h, w).
  Tensor<T> forward_features(const Tensor<T>& x, const BatchNormState& s) {
    Tensor<T> h = stem_->forward(x, s);
    stem_out_ = h;
    if (cfg_.stem_pool) h = maxpool2d_forward(h, PoolArgs{3, 2, 1}, &argmax_);
    for (auto& b : blocks_) h = b->forward(h, s);
    return h;
  }
  Tensor<T> backward_features(const Tensor<T>& dfeat) {
    Tensor<T> d = dfeat;
    for (auto it = blocks_.rbegin(); it != blocks_.rend(); ++it) d = (*it)->backward(d);
    if (!cfg_.stem_pool) return stem_->backward(d);
    Tensor<T> dstem(stem_out_.shape);
    maxpool2d_backward(d, argmax_, dstem);
    return stem_->backward(dstem);
  }

  // Logits (N, num_classes), or pooled features when num_classes == 0.
  Tensor<T> forward(const Tensor<T>& x, const BatchNormState& s) {
    feat_ = forward_features(x, s);
    pooled_ = global_avgpool_forward(feat_);
    return fc_w_ ? linear_forward(pooled_, fc_w_->value, &fc_b_->value) : pooled_;
  }
  Tensor<T> backward(const Tensor<T>& dy) {
    Tensor<T> dp(pooled_.shape);
    if (fc_w_) linear_backward(pooled_, fc_w_->value, dy, &dp, &fc_w_->grad, &fc_b_->grad);
    else dp = dy;
    Tensor<T> df(feat_.shape);
    global_avgpool_backward(dp, df);
    return backward_features(df);
  }

 private:
  ResNetConfig cfg_;
  std::unique_ptr<ConvBN<T>> stem_;
  std::vector<std::unique_ptr<Block<T>>> blocks_;
  Param<T>*fc_w_ = nullptr, *fc_b_ = nullptr;
  std::int64_t features_ = 0;
  Tensor<T> stem_out_, feat_, pooled_;
  std::vector<std::int64_t> argmax_;
};

// torchvision's initialisation: convolutions Kaiming normal (fan_out, ReLU gain: std =
// sqrt(2 / (cout * kh * kw))), BN weight 1 and bias 0, running statistics 0 / 1, linear layers
// U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias; optionally the last BN weight of every
// residual branch 0 (zero_init_residual; `last_bn` is ".bn3.weight" for bottleneck nets, ".bn2.weight"
// for basic ones). Deterministic for a seed.
template <class T>
void init_torchvision(ParamStore<T>& ps, std::uint64_t seed, bool zero_init_residual = false,
                      const std::string& last_bn = ".bn2.weight") {
  std::mt19937_64 rng(seed);
  auto ends_with = [](const std::string& s, const std::string& e) {
    return s.size() >= e.size() && s.compare(s.size() - e.size(), e.size(), e) == 0;
  };
  // fan_in of a linear layer's weight (2-d) or of the bias beside it; 0 for anything else
  auto linear_fan_in = [&](const std::string& name) -> std::int64_t {
    const std::string weight = ends_with(name, ".bias") ? name.substr(0, name.size() - 5) + ".weight" : name;
    const auto it = ps.all().find(weight);
    return it != ps.all().end() && it->second.value.shape.size() == 2 ? it->second.value.dim(1) : 0;
  };
  for (auto& [name, p] : ps.all()) {  // sorted by name: a stable order for the generator
    auto& v = p.value;
    if (v.shape.size() == 4) {
      std::normal_distribution<double> nd(0.0, std::sqrt(2.0 / double(v.dim(0) * v.dim(2) * v.dim(3))));
      for (auto& x : v.data) x = static_cast<T>(nd(rng));
    } else if (const std::int64_t fan_in = linear_fan_in(name); fan_in > 0) {
      const double bound = 1.0 / std::sqrt(double(fan_in));
      std::uniform_real_distribution<double> ud(-bound, bound);
      for (auto& x : v.data) x = static_cast<T>(ud(rng));
    } else if (ends_with(name, "running_var") || ends_with(name, ".weight")) {
      std::fill(v.data.begin(), v.data.end(), T(1));
      if (zero_init_residual && ends_with(name, last_bn) && name.rfind("layer", 0) != std::string::npos)
        std::fill(v.data.begin(), v.data.end(), T(0));
    } else {
      std::fill(v.data.begin(), v.data.end(), T(0));  // BN bias, running mean, conv biases
    }
  }
}

}  // namespace tasn::nn
