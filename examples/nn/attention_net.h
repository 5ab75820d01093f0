// examples/nn/attention_net.h - TASN's attention network (SPEC section 5): a ResNet-18-form
// backbone whose stages have strides (1, 1, 2, 1) (224 -> 28 x 28 after the stride-2 stem and
// max-pool), then a multi-dilation head: one 3x3 conv applied with dilation 1 and 2 (shared
// weights), ReLU each, summed; a second shared conv applied with dilation 1, 2 and 3, ReLU each,
// summed; BN, ReLU -> the feature map the trilinear attention reads; global average pool, FC.
// Backbone parameters keep torchvision's names (ImageNet weights load); the head's are "head.*".
#pragma once

#include <array>
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

// Parameters T, activations A (see nn/resnet.h); the logits are T.
template <class T, class A = T>
class AttentionNet {
 public:
  AttentionNet(ParamStore<T>& ps, const AttentionNetConfig& cfg) : backbone_(ps, cfg.backbone) {
    const std::int64_t c = backbone_.features();
    w1_ = &ps.add("head.conv1.weight", {c, c, 3, 3});
    b1_ = &ps.add("head.conv1.bias", {c});
    w2_ = &ps.add("head.conv2.weight", {c, c, 3, 3});
    b2_ = &ps.add("head.conv2.bias", {c});
    g_ = &ps.add("head.bn.weight", {c}, true, T(1));
    bt_ = &ps.add("head.bn.bias", {c});
    rm_ = &ps.add("head.bn.running_mean", {c}, false);
    rv_ = &ps.add("head.bn.running_var", {c}, false, T(1));
    fc_ = Linear<T, A>(ps, "head.fc", c, cfg.num_classes);
  }

  // Logits (N, classes); feature_map() then holds the head output (N, C, h, w).
  template <class Ex>
  Tensor2<T> forward(Ex& ex, Tensor4<const A> x, bool training) {
    x0_ = backbone_.forward_features(ex, x, training);
    h1_ = dilated_sum(ex, x0_, *w1_, *b1_, 2, pre1_);
    h2_ = dilated_sum(ex, h1_, *w2_, *b2_, 3, pre2_);
    const std::int64_t N = h2_.size[0], C = h2_.size[1], P = h2_.size[2] * h2_.size[3];
    feat_ = ex.act(N, C, h2_.size[2], h2_.size[3]);
    BatchNormState s;
    s.training = training;
    eps_ = s.eps;
    saved_ = ex.bn_forward(N, C, P, h2_.data, ex.value(*g_), ex.value(*bt_), ex.value(*rm_), ex.value(*rv_), s, true,
                           feat_.data);
    pooled_ = ex.template mat<A>(N, C);
    ex.global_avgpool(N * C, P, feat_.data, pooled_.data);
    return fc_.forward(ex, pooled_);
  }
  Tensor4<const A> feature_map() const { return feat_; }

  // Backward from the logits' gradient (and, optionally, a gradient on the feature map; TASN
  // stops the gradient after the trilinear attention, so it passes none). The input gradient only
  // when dx is given (written).
  template <class Ex>
  void backward(Ex& ex, Tensor2<const T> dlogits, Tensor4<const A> dfeature = {}, Tensor4<A> dx = {}) {
    const auto mark = ex.arena().mark();
    const std::int64_t N = feat_.size[0], C = feat_.size[1], P = feat_.size[2] * feat_.size[3];
    Tensor2<A> dp = ex.template mat<A>(N, C, true);
    fc_.backward(ex, dlogits, dp);
    Tensor4<A> df = ex.act(N, C, feat_.size[2], feat_.size[3]);
    ex.global_avgpool_grad(N * C, P, dp.data, df.data, false);
    if (dfeature.present()) ex.add_inplace(df.data, dfeature.data, df.numel());
    Tensor4<A> dh2 = ex.act(N, C, feat_.size[2], feat_.size[3]);
    ex.bn_backward(N, C, P, h2_.data, ex.value(*g_), df.data, saved_, eps_, dh2.data, false, ex.grad(*g_),
                   ex.grad(*bt_));
    Tensor4<A> dh1 = ex.act(h1_.size[0], h1_.size[1], h1_.size[2], h1_.size[3]);
    dilated_sum_backward(ex, h1_, *w2_, *b2_, 3, pre2_, dh2, dh1);
    Tensor4<A> dx0 = ex.act(x0_.size[0], x0_.size[1], x0_.size[2], x0_.size[3]);
    dilated_sum_backward(ex, x0_, *w1_, *b1_, 2, pre1_, dh1, dx0);
    backbone_.backward_features(ex, dx0, dx);
    ex.arena().rewind(mark);
  }

 private:
  static constexpr int kMaxDilation = 3;
  using Pre = std::array<Tensor4<A>, kMaxDilation>;

  // sum over d = 1..count of relu(conv_d(x) + b), conv_d: 3x3 with dilation d and padding d (same
  // size). pre[d - 1] keeps relu(conv_d(x) + b) (its sign is the ReLU mask).
  template <class Ex>
  static Tensor4<A> dilated_sum(Ex& ex, Tensor4<const A> x, Param<T>& w, Param<T>& b, int count, Pre& pre) {
    const std::int64_t ws[4] = {w.value.dim(0), w.value.dim(1), w.value.dim(2), w.value.dim(3)};
    Tensor4<A> out;
    for (int d = 1; d <= count; ++d) {
      const ConvGeometry g = conv_geometry(x.size, ws, Conv2dArgs{1, d, d}, "AttentionNet head");
      Tensor4<A>& p = pre[d - 1];
      p = ex.act(g.n, g.cout, g.ho, g.wo);
      ex.conv_forward(g, x.data, ex.weight(w), ex.value(b), p.data);
      ex.relu(p.data, p.data, p.numel());
      if (d == 1) out = ex.act(g.n, g.cout, g.ho, g.wo, true);
      ex.add_inplace(out.data, p.data, out.numel());
    }
    return out;
  }
  template <class Ex>
  static void dilated_sum_backward(Ex& ex, Tensor4<const A> x, Param<T>& w, Param<T>& b, int count, const Pre& pre,
                                   Tensor4<const A> dy, Tensor4<A> dx) {
    const std::int64_t ws[4] = {w.value.dim(0), w.value.dim(1), w.value.dim(2), w.value.dim(3)};
    const auto mark = ex.arena().mark();
    A* dpre = ex.template buffer<A>(dy.numel());
    for (int d = 1; d <= count; ++d) {
      const ConvGeometry g = conv_geometry(x.size, ws, Conv2dArgs{1, d, d}, "AttentionNet head");
      ex.relu_grad(pre[d - 1].data, dy.data, dpre, dy.numel(), false);
      ex.conv_backward(g, x.data, ex.weight(w), dpre, dx.data, d > 1, ex.grad(w), ex.grad(b));
    }
    ex.arena().rewind(mark);
  }

  ResNet<T, A> backbone_;
  Param<T>*w1_, *b1_, *w2_, *b2_, *g_, *bt_, *rm_, *rv_;
  Linear<T, A> fc_;
  Tensor4<A> x0_, h1_, h2_, feat_;
  Tensor2<A> pooled_;
  Pre pre1_, pre2_;
  BnSaved<T, A> saved_;
  double eps_ = 1e-5;
};

}  // namespace tasn::nn
