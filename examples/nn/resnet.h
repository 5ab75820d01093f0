// examples/nn/resnet.h - torchvision-form ResNets (BasicBlock: ResNet-18/34, Bottleneck:
// ResNet-50/101) as modules on an execution context (nn/exec.h), forward and backward, with
// torchvision's parameter names (conv1.weight, layer1.0.bn2.running_var,
// layer2.0.downsample.0.weight, fc.bias, ...) so ImageNet weights converted from a torchvision
// state_dict load by name. A width multiplier and per-stage depth and stride make small variants
// (the CPU demo) and the TASN attention-net strides.
//
// Modules: forward(ex, x, training) returns its output (from the step's arena) and keeps views of
// what its backward needs (no copies; valid until the arena is reset); backward(ex, dy, dx, acc)
// ADDS every parameter gradient into the flat gradient buffer and writes (acc = false) or adds
// (acc = true) the input gradient into dx, or computes none when dx is absent (the images).
//
// The official TASN MXNet code used pre-activation ResNets; we use torchvision's post-activation
// form so that its ImageNet weights can be used.
#pragma once

#include <array>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "nn/exec.h"
#include "nn/layers.h"
#include "nn/params.h"

namespace tasn::nn {

// The one layer-with-parameters building block: convolution (+ bias), optional batch norm and
// ReLU. ResNet units are conv (no bias) + BN (+ ReLU); the attention head's convolutions are conv
// + bias (+ ReLU) without BN.
//
// T: the parameters' type (float master weights, BN statistics, gradients); A: the activations'
// storage (the context's act_type: T, or nn::bf16 for --precision bf16, where the convolution reads
// the context's bf16 copy of the weights, ex.weight()).
template <class T, class A = T>
class ConvBN {
 public:
  ConvBN(ParamStore<T>& ps, const std::string& conv, const std::string& bn, std::int64_t cin, std::int64_t cout,
         std::int64_t k, Conv2dArgs a, bool relu)
      : w_(&ps.add(conv + ".weight", {cout, cin, k, k})),
        g_(&ps.add(bn + ".weight", {cout}, true, T(1))),
        b_(&ps.add(bn + ".bias", {cout})),
        rm_(&ps.add(bn + ".running_mean", {cout}, false)),
        rv_(&ps.add(bn + ".running_var", {cout}, false, T(1))),
        a_(a),
        relu_(relu) {}

  template <class Ex>
  Tensor4<A> forward(Ex& ex, Tensor4<const A> x, bool training) {
    const std::int64_t ws[4] = {w_->value.dim(0), w_->value.dim(1), w_->value.dim(2), w_->value.dim(3)};
    geo_ = conv_geometry(x.size, ws, a_, "ConvBN::forward");
    x_ = x;
    c_ = ex.act(geo_.n, geo_.cout, geo_.ho, geo_.wo);
    ex.conv_forward(geo_, x.data, ex.weight(*w_), nullptr, c_.data);
    y_ = ex.act(geo_.n, geo_.cout, geo_.ho, geo_.wo);
    BatchNormState s;
    s.training = training;
    eps_ = s.eps;
    saved_ = ex.bn_forward(geo_.n, geo_.cout, geo_.ho * geo_.wo, c_.data, ex.value(*g_), ex.value(*b_), ex.value(*rm_),
                           ex.value(*rv_), s, relu_, y_.data);
    return y_;
  }

  // dx: absent (no input gradient), or written (acc false) / added to (acc true).
  template <class Ex>
  void backward(Ex& ex, Tensor4<const A> dy, Tensor4<A> dx, bool acc) {
    const auto mark = ex.arena().mark();
    A* dc = ex.template buffer<A>(y_.numel());
    ex.bn_backward(geo_.n, geo_.cout, geo_.ho * geo_.wo, c_.data, ex.value(*g_), dy.data, saved_, eps_, dc, false,
                   ex.grad(*g_), ex.grad(*b_));
    ex.conv_backward(geo_, x_.data, ex.weight(*w_), dc, dx.data, acc, ex.grad(*w_), nullptr);
    ex.arena().rewind(mark);
  }
  Tensor4<A> output() const { return y_; }

 private:
  Param<T>*w_, *g_, *b_, *rm_, *rv_;
  Conv2dArgs a_;
  bool relu_;
  ConvGeometry geo_{};
  Tensor4<const A> x_;
  Tensor4<A> c_, y_;
  BnSaved<T, A> saved_;
  double eps_ = 1e-5;
};

// y = x weight^T + bias, weight (out, in): the classifier heads. x (and its gradient) in the
// activation type A, the logits and their gradient in T (the loss math runs in float).
template <class T, class A = T>
class Linear {
 public:
  Linear() = default;
  Linear(ParamStore<T>& ps, const std::string& name, std::int64_t in, std::int64_t out)
      : w_(&ps.add(name + ".weight", {out, in})), b_(&ps.add(name + ".bias", {out})) {}

  template <class Ex>
  Tensor2<T> forward(Ex& ex, Tensor2<const A> x) {
    TASN_CHECK_ARG(x.size[1] == w_->value.dim(1), "Linear::forward: weight ", w_->value.shape_str(), " expects ",
                   w_->value.dim(1), " features but x ", x.shape_string(), " has ", x.size[1]);
    x_ = x;
    Tensor2<T> y = ex.template mat<T>(x.size[0], w_->value.dim(0));
    ex.linear(x.size[0], x.size[1], y.size[1], x.data, ex.weight(*w_), ex.value(*b_), y.data);
    return y;
  }
  // dx (may be absent) += dL/dx; the parameter gradients are added.
  template <class Ex>
  void backward(Ex& ex, Tensor2<const T> dy, Tensor2<A> dx) {
    ex.linear_grad(x_.size[0], x_.size[1], dy.size[1], x_.data, ex.weight(*w_), dy.data, dx.data, ex.grad(*w_),
                   ex.grad(*b_));
  }
  std::int64_t out_features() const { return w_->value.dim(0); }

 private:
  Param<T>*w_ = nullptr, *b_ = nullptr;
  Tensor2<const A> x_;
};

// Residual unit: main branch units, optional downsample (conv1x1 + BN), ReLU after the sum.
template <class T, class A = T>
class ResidualBlock {
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
      down_ = std::make_unique<ConvBN<T, A>>(ps, p + "downsample.0", p + "downsample.1", cin, cout, 1,
                                          Conv2dArgs{stride, 0, 1}, false);
  }

  template <class Ex>
  Tensor4<A> forward(Ex& ex, Tensor4<const A> x, bool training) {
    Tensor4<const A> h = x;
    for (auto& u : units_) h = u.forward(ex, h, training);
    const Tensor4<const A> skip = down_ ? Tensor4<const A>(down_->forward(ex, x, training)) : x;
    TASN_CHECK_ARG(skip.numel() == h.numel(), "ResidualBlock: the branch gives ", h.shape_string(),
                   " but the shortcut ", skip.shape_string());
    y_ = ex.act(h.size[0], h.size[1], h.size[2], h.size[3]);
    ex.add_relu(h.data, skip.data, y_.data, y_.numel());
    return y_;
  }

  template <class Ex>
  void backward(Ex& ex, Tensor4<const A> dy, Tensor4<A> dx, bool acc) {
    const auto mark = ex.arena().mark();
    const std::int64_t n = y_.numel();
    A* ds = ex.template buffer<A>(n);
    ex.relu_grad(y_.data, dy.data, ds, n, false);
    const Tensor4<const A> ds4(ds, {y_.size[0], y_.size[1], y_.size[2], y_.size[3]});
    // the branch first (its first unit writes dx when !acc), then the shortcut adds
    Tensor4<const A> g = ds4;
    for (std::size_t k = units_.size(); k-- > 1;) {
      const Tensor4<const A> in = units_[k - 1].output();
      Tensor4<A> dprev = ex.act(in.size[0], in.size[1], in.size[2], in.size[3]);
      units_[k].backward(ex, g, dprev, false);
      g = dprev;
    }
    units_[0].backward(ex, g, dx, acc);
    if (down_) {
      down_->backward(ex, ds4, dx, true);
    } else {
      ex.add_inplace(dx.data, ds, n);
    }
    ex.arena().rewind(mark);
  }

 private:
  std::vector<ConvBN<T, A>> units_;
  std::unique_ptr<ConvBN<T, A>> down_;
  Tensor4<A> y_;

 public:
  Tensor4<A> output() const { return y_; }
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

// conv1 7x7/2 + bn1 + relu + maxpool 3/2 -> layer1..4 -> global average pool -> fc. Parameters T,
// activations A (see ConvBN); the pooled features are A, the logits T.
template <class T, class A = T>
class ResNet {
 public:
  ResNet(ParamStore<T>& ps, const ResNetConfig& cfg, const std::string& prefix = "") : cfg_(cfg) {
    const auto ch = [&](std::int64_t base) { return std::max<std::int64_t>(1, std::int64_t(base * cfg.width + 0.5)); };
    TASN_CHECK_ARG(cfg.stem_kernel >= 1 && cfg.stem_stride >= 1 && cfg.depth.size() == cfg.stride.size() &&
                       !cfg.depth.empty() && cfg.depth.size() <= 4,
                   "ResNet: need stem kernel and stride >= 1 and 1..4 stages with one stride each, got ",
                   cfg.depth.size(), " depths and ", cfg.stride.size(), " strides");
    stem_ = std::make_unique<ConvBN<T, A>>(ps, prefix + "conv1", prefix + "bn1", 3, ch(64), cfg.stem_kernel,
                                        Conv2dArgs{cfg.stem_stride, cfg.stem_kernel / 2, 1}, true);
    std::int64_t cin = ch(64);
    const std::int64_t base[4] = {64, 128, 256, 512};
    for (std::size_t s = 0; s < cfg.depth.size(); ++s) {
      const std::int64_t planes = ch(base[s]);
      for (std::int64_t u = 0; u < cfg.depth[s]; ++u) {
        const std::string p = prefix + "layer" + std::to_string(s + 1) + "." + std::to_string(u) + ".";
        blocks_.push_back(std::make_unique<ResidualBlock<T, A>>(ps, p, cin, planes, u == 0 ? cfg.stride[s] : 1, cfg.bottleneck));
        cin = cfg.bottleneck ? planes * 4 : planes;
      }
    }
    features_ = cin;
    if (cfg.num_classes > 0) fc_ = Linear<T, A>(ps, prefix + "fc", cin, cfg.num_classes);
  }

  std::int64_t features() const { return features_; }

  // The feature map before pooling (N, features, h, w).
  template <class Ex>
  Tensor4<A> forward_features(Ex& ex, Tensor4<const A> x, bool training) {
    TASN_CHECK_ARG(x.size[1] == 3, "ResNet: the input must have 3 channels, got ", x.shape_string());
    Tensor4<A> h = stem_->forward(ex, x, training);
    stem_out_ = h;
    if (cfg_.stem_pool) {
      std::int64_t Ho, Wo;
      pool_output(h.size[2], h.size[3], PoolArgs{3, 2, 1}, Ho, Wo);
      Tensor4<A> p = ex.act(h.size[0], h.size[1], Ho, Wo);
      argmax_ = ex.template buffer<std::int64_t>(p.numel());
      ex.maxpool2d(h.size[0] * h.size[1], h.size[2], h.size[3], PoolArgs{3, 2, 1}, h.data, p.data, argmax_);
      pool_out_ = p;
      h = p;
    }
    for (auto& b : blocks_) h = b->forward(ex, h, training);
    feat_ = h;
    return h;
  }
  // Backward from the feature map's gradient; the input gradient only when dx is given (written).
  template <class Ex>
  void backward_features(Ex& ex, Tensor4<const A> dfeat, Tensor4<A> dx = {}) {
    const auto mark = ex.arena().mark();
    Tensor4<const A> d = dfeat;
    for (std::size_t k = blocks_.size(); k-- > 0;) {
      const Tensor4<const A> in = k > 0 ? Tensor4<const A>(blocks_[k - 1]->output()) : block_input();
      Tensor4<A> dprev = ex.act(in.size[0], in.size[1], in.size[2], in.size[3]);
      blocks_[k]->backward(ex, d, dprev, false);
      d = dprev;
    }
    if (cfg_.stem_pool) {
      Tensor4<A> dstem = ex.act(stem_out_.size[0], stem_out_.size[1], stem_out_.size[2], stem_out_.size[3], true);
      ex.maxpool2d_grad(stem_out_.size[0] * stem_out_.size[1], stem_out_.size[2], stem_out_.size[3], pool_out_.size[2],
                        pool_out_.size[3], PoolArgs{3, 2, 1}, d.data, argmax_, dstem.data);
      d = dstem;
    }
    stem_->backward(ex, d, dx, false);
    ex.arena().rewind(mark);
  }

  // The globally pooled features (N, features).
  template <class Ex>
  Tensor2<A> forward_pooled(Ex& ex, Tensor4<const A> x, bool training) {
    const Tensor4<A> f = forward_features(ex, x, training);
    pooled_ = ex.template mat<A>(f.size[0], f.size[1]);
    ex.global_avgpool(f.size[0] * f.size[1], f.size[2] * f.size[3], f.data, pooled_.data);
    return pooled_;
  }
  // Backward from the pooled features' gradient (the input gradient only when dx is given).
  template <class Ex>
  void backward_pooled(Ex& ex, Tensor2<const A> dpooled, Tensor4<A> dx = {}) {
    const auto mark = ex.arena().mark();
    Tensor4<A> df = ex.act(feat_.size[0], feat_.size[1], feat_.size[2], feat_.size[3]);
    ex.global_avgpool_grad(feat_.size[0] * feat_.size[1], feat_.size[2] * feat_.size[3], dpooled.data, df.data, false);
    backward_features(ex, df, dx);
    ex.arena().rewind(mark);
  }

  // Logits (N, num_classes), or pooled features when num_classes == 0 (then A must be T; a context
  // with another activation type calls forward_pooled).
  template <class Ex>
  Tensor2<T> forward(Ex& ex, Tensor4<const A> x, bool training) {
    const Tensor2<A> p = forward_pooled(ex, x, training);
    if (cfg_.num_classes > 0) return fc_.forward(ex, p);
    if constexpr (std::is_same_v<A, T>) return p;
    else throw InvalidArgument("ResNet::forward: a net without fc gives pooled features: use forward_pooled");
  }
  template <class Ex>
  void backward(Ex& ex, Tensor2<const T> dy, Tensor4<A> dx = {}) {
    const auto mark = ex.arena().mark();
    if (cfg_.num_classes > 0) {
      Tensor2<A> d = ex.template mat<A>(pooled_.size[0], pooled_.size[1], true);
      fc_.backward(ex, dy, d);
      backward_pooled(ex, d, dx);
    } else if constexpr (std::is_same_v<A, T>) {
      backward_pooled(ex, dy, dx);
    } else {
      throw InvalidArgument("ResNet::backward: a net without fc takes the pooled gradient: use backward_pooled");
    }
    ex.arena().rewind(mark);
  }

 private:
  Tensor4<const A> block_input() const { return cfg_.stem_pool ? Tensor4<const A>(pool_out_) : Tensor4<const A>(stem_out_); }

  ResNetConfig cfg_;
  std::unique_ptr<ConvBN<T, A>> stem_;
  std::vector<std::unique_ptr<ResidualBlock<T, A>>> blocks_;
  Linear<T, A> fc_;
  std::int64_t features_ = 0;
  Tensor4<A> stem_out_, pool_out_, feat_;
  Tensor2<A> pooled_;
  std::int64_t* argmax_ = nullptr;
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
      for (auto& x : v) x = static_cast<T>(nd(rng));
    } else if (const std::int64_t fan_in = linear_fan_in(name); fan_in > 0) {
      const double bound = 1.0 / std::sqrt(double(fan_in));
      std::uniform_real_distribution<double> ud(-bound, bound);
      for (auto& x : v) x = static_cast<T>(ud(rng));
    } else if (ends_with(name, "running_var") || ends_with(name, ".weight")) {
      std::fill(v.begin(), v.end(), T(1));
      if (zero_init_residual && ends_with(name, last_bn) && name.rfind("layer", 0) != std::string::npos)
        std::fill(v.begin(), v.end(), T(0));
    } else {
      std::fill(v.begin(), v.end(), T(0));  // BN bias, running mean, conv biases
    }
  }
}

}  // namespace tasn::nn
