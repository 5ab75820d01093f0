// examples/nn/attention_net.h - TASN's attention network (SPEC section 5): a ResNet-18-form
// backbone whose stages have strides (1, 1, 2, 1) (224 -> 28 x 28 after the stride-2 stem and
// max-pool), then a multi-dilation head: one 3x3 conv applied with dilation 1 and 2 (shared
// weights), ReLU each, summed; a second shared conv applied with dilation 1, 2 and 3, ReLU each,
// summed; BN, ReLU -> the feature map the trilinear attention reads; global average pool, FC.
// Backbone parameters keep torchvision's names (ImageNet weights load); the head's are "head.*".
#pragma once

#include <string>
#include <vector>

#include "nn/resnet.h"

namespace tasn::nn {

struct AttentionNetConfig {
  ResNetConfig backbone = [] {
    ResNetConfig c = ResNetConfig::resnet18();
    c.stride = {1, 1, 2, 1};
    c.num_classes = 0;
    return c;
  }();
  std::int64_t num_classes = 200;
};

template <class T>
class AttentionNet {
 public:
  AttentionNet(ParamStore<T>& ps, const AttentionNetConfig& cfg) : backbone_(ps, cfg.backbone) {
    const std::int64_t c = backbone_.features();
    w1_ = &ps.add("head.conv1.weight", {c, c, 3, 3});
    b1_ = &ps.add("head.conv1.bias", {c});
    w2_ = &ps.add("head.conv2.weight", {c, c, 3, 3});
    b2_ = &ps.add("head.conv2.bias", {c});
    g_ = &ps.add("head.bn.weight", {c});
    bt_ = &ps.add("head.bn.bias", {c});
    rm_ = &ps.add("head.bn.running_mean", {c}, false);
    rv_ = &ps.add("head.bn.running_var", {c}, false);
    fw_ = &ps.add("head.fc.weight", {cfg.num_classes, c});
    fb_ = &ps.add("head.fc.bias", {cfg.num_classes});
    std::fill(g_->value.data.begin(), g_->value.data.end(), T(1));
    std::fill(rv_->value.data.begin(), rv_->value.data.end(), T(1));
  }

  // Logits (N, classes); feature_map() then holds the head output (N, C, h, w).
  Tensor<T> forward(const Tensor<T>& x, const BatchNormState& s) {
    x0_ = backbone_.forward_features(x, s);
    h1_ = dilated_sum(x0_, *w1_, *b1_, {1, 2}, pre1_);
    h2_ = dilated_sum(h1_, *w2_, *b2_, {1, 2, 3}, pre2_);
    training_ = s.training;
    bnout_ = batchnorm2d_forward(h2_, g_->value, bt_->value, rm_->value, rv_->value, s, &cache_);
    feat_ = relu_forward(bnout_);
    pooled_ = global_avgpool_forward(feat_);
    return linear_forward(pooled_, fw_->value, &fb_->value);
  }
  const Tensor<T>& feature_map() const { return feat_; }

  // Backward from the logits' gradient (and, optionally, a gradient on the feature map; TASN
  // stops the gradient after the trilinear attention, so it passes none). Returns d input.
  Tensor<T> backward(const Tensor<T>& dlogits, const Tensor<T>* dfeature = nullptr) {
    Tensor<T> dp(pooled_.shape);
    linear_backward(pooled_, fw_->value, dlogits, &dp, &fw_->grad, &fb_->grad);
    Tensor<T> df(feat_.shape);
    global_avgpool_backward(dp, df);
    if (dfeature)
      for (std::int64_t i = 0; i < df.numel(); ++i) df.data[i] += dfeature->data[i];
    Tensor<T> dbn(bnout_.shape);
    relu_backward(bnout_, df, dbn);
    Tensor<T> dh2(h2_.shape);
    batchnorm2d_backward(h2_, g_->value, dbn, cache_, training_, &dh2, &g_->grad, &bt_->grad);
    const Tensor<T> dh1 = dilated_sum_backward(h1_, *w2_, *b2_, {1, 2, 3}, pre2_, dh2);
    const Tensor<T> dx0 = dilated_sum_backward(x0_, *w1_, *b1_, {1, 2}, pre1_, dh1);
    return backbone_.backward_features(dx0);
  }

 private:
  // sum over d of relu(conv_d(x)), conv_d: 3x3 with dilation d and padding d (same size).
  static Tensor<T> dilated_sum(const Tensor<T>& x, Param<T>& w, Param<T>& b, const std::vector<std::int64_t>& dil,
                               std::vector<Tensor<T>>& pre) {
    pre.clear();
    Tensor<T> out;
    for (std::int64_t d : dil) {
      pre.push_back(conv2d_forward(x, w.value, &b.value, Conv2dArgs{1, d, d}));
      const auto r = relu_forward(pre.back());
      out = out.data.empty() ? r : add_forward(out, r);
    }
    return out;
  }
  static Tensor<T> dilated_sum_backward(const Tensor<T>& x, Param<T>& w, Param<T>& b, const std::vector<std::int64_t>& dil,
                                        const std::vector<Tensor<T>>& pre, const Tensor<T>& dy) {
    Tensor<T> dx(x.shape);
    for (std::size_t i = 0; i < dil.size(); ++i) {
      Tensor<T> dpre(pre[i].shape);
      relu_backward(pre[i], dy, dpre);
      conv2d_backward(x, w.value, dpre, Conv2dArgs{1, dil[i], dil[i]}, &dx, &w.grad, &b.grad);
    }
    return dx;
  }

  ResNet<T> backbone_;
  Param<T>*w1_, *b1_, *w2_, *b2_, *g_, *bt_, *rm_, *rv_, *fw_, *fb_;
  bool training_ = true;
  Tensor<T> x0_, h1_, h2_, bnout_, feat_, pooled_;
  std::vector<Tensor<T>> pre1_, pre2_;
  BatchNormCache<T> cache_;
};

}  // namespace tasn::nn
