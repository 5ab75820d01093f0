// The example trainer's ResNets equal torchvision's: same parameter names, and with the same
// (formula-generated) weights the same logits in evaluation and training mode, input gradient,
// BN running-statistics update and parameter gradients (golden data from
// tests/golden/gen_golden.py, torchvision 0.14 in float64).
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include "nn/resnet.h"
#include "support/formula_weights.h"
#include "support/test_support.h"

namespace {
namespace tt = tasn::test;
namespace nn = tasn::nn;
using T = double;

std::vector<std::string> read_names(const std::string& file) {
  std::ifstream in(tt::golden_path(file));
  std::vector<std::string> names;
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) names.push_back(line);
  return names;
}

void check_against_torchvision(const char* arch, const nn::ResNetConfig& cfg_in) {
  SCOPED_TRACE(arch);
  const tt::GoldenFile g(tt::golden_path(std::string("resnet_") + arch + ".bin"));
  const auto names = read_names(std::string("resnet_") + arch + "_names.txt");
  nn::ParamStore<T> ps;
  nn::ResNetConfig cfg = cfg_in;
  cfg.num_classes = 10;
  nn::ResNet<T> net(ps, cfg);
  ps.allocate();
  nn::CpuExec<T> ex(nn::Backend::Reference);

  // Same trainable parameter names as torchvision.
  std::set<std::string> ours, theirs(names.begin(), names.end());
  for (auto& [name, p] : ps.all())
    if (p.trainable) ours.insert(name);
  EXPECT_EQ(ours, theirs);
  for (auto& [name, p] : ps.all()) p.value.set(tt::formula_values(name, p.value.shape));

  nn::Tensor<T> x({2, 3, 64, 64});
  x.set(tt::random_tensor(x.numel(), 900, -1.0, 1.0));
  nn::Tensor<T> w({2, 10});
  w.set(tt::random_tensor(w.numel(), 901, -1.0, 1.0));

  const tasn::Tensor4<const T> xv(x.ptr(), {2, 3, 64, 64});
  auto r = tt::compare(tt::values(net.forward(ex, xv, false)), g.at("logits_eval").data, 1e-10, 1e-9);
  EXPECT_TRUE(r.ok) << "eval logits: " << r.message();

  const auto logits = net.forward(ex, xv, true);
  r = tt::compare(tt::values(logits), g.at("logits_train").data, 1e-10, 1e-9);
  EXPECT_TRUE(r.ok) << "train logits: " << r.message();
  ps.zero_grad();
  nn::Tensor<T> dx(x.shape);
  net.backward(ex, tasn::Tensor2<const T>(w.ptr(), {2, 10}), tasn::Tensor4<T>(dx.ptr(), {2, 3, 64, 64}));
  r = tt::compare(dx.data, g.at("dx").data, 1e-12 * tt::max_abs(g.at("dx").data), 1e-8);
  EXPECT_TRUE(r.ok) << "input gradient: " << r.message();
  r = tt::compare(ps.at("bn1.running_var").value.to_vector(), g.at("bn1.running_var").data, 1e-12, 1e-10);
  EXPECT_TRUE(r.ok) << "running var: " << r.message();
  r = tt::compare(ps.at("conv1.weight").grad.to_vector(), g.at("conv1.weight.grad").data, 1e-10, 1e-8);
  EXPECT_TRUE(r.ok) << "conv1.weight grad: " << r.message();
  r = tt::compare(ps.at("fc.weight").grad.to_vector(), g.at("fc.weight.grad").data, 1e-12, 1e-9);
  EXPECT_TRUE(r.ok) << "fc.weight grad: " << r.message();
  const auto& norms = g.at("grad_norms").data;
  ASSERT_EQ(norms.size(), names.size());
  for (std::size_t i = 0; i < names.size(); ++i) {
    double s = 0;
    for (double v : ps.at(names[i]).grad) s += v * v;
    EXPECT_NEAR(std::sqrt(s), norms[i], 1e-8 * (1 + norms[i])) << names[i];
  }
}

TEST(NnResNet, ResNet18EqualsTorchvision) { check_against_torchvision("resnet18", nn::ResNetConfig::resnet18()); }
TEST(NnResNet, ResNet50EqualsTorchvision) { check_against_torchvision("resnet50", nn::ResNetConfig::resnet50()); }

}  // namespace

#include "nn/attention_net.h"

namespace {

TEST(NnAttentionNet, EqualsPyTorchTransliteration) {
  const tt::GoldenFile g(tt::golden_path("attention_net.bin"));
  nn::ParamStore<T> ps;
  nn::AttentionNetConfig cfg;
  cfg.num_classes = 10;
  nn::AttentionNet<T> net(ps, cfg);
  ps.allocate();
  nn::CpuExec<T> ex(nn::Backend::Reference);
  for (auto& [name, p] : ps.all()) p.value.set(tt::formula_values(name, p.value.shape));
  nn::Tensor<T> x({2, 3, 64, 64});
  x.set(tt::random_tensor(x.numel(), 910, -1.0, 1.0));
  nn::Tensor<T> w({2, 10});
  w.set(tt::random_tensor(w.numel(), 911, -1.0, 1.0));
  const auto logits = net.forward(ex, tasn::Tensor4<const T>(x.ptr(), {2, 3, 64, 64}), true);
  auto r = tt::compare(tt::values(logits), g.at("logits_train").data, 1e-10, 1e-9);
  EXPECT_TRUE(r.ok) << "logits: " << r.message();
  const auto f = net.feature_map();
  EXPECT_EQ(f.shape_string(), "(2, 512, 8, 8)");  // 64 / 8: the TASN 224 -> 28 pattern
  std::vector<double> fsum(2 * 8 * 8, 0.0);
  for (std::int64_t n = 0; n < 2; ++n)
    for (std::int64_t c = 0; c < 512; ++c)
      for (std::int64_t p = 0; p < 64; ++p) fsum[n * 64 + p] += f.data[(n * 512 + c) * 64 + p];
  r = tt::compare(fsum, g.at("feature_sum").data, 1e-9, 1e-9);
  EXPECT_TRUE(r.ok) << "feature map: " << r.message();
  ps.zero_grad();
  nn::Tensor<T> dx(x.shape);
  net.backward(ex, tasn::Tensor2<const T>(w.ptr(), {2, 10}), {}, tasn::Tensor4<T>(dx.ptr(), {2, 3, 64, 64}));
  r = tt::compare(dx.data, g.at("dx").data, 1e-12 * tt::max_abs(g.at("dx").data), 1e-8);
  EXPECT_TRUE(r.ok) << "input gradient: " << r.message();
  auto norm = [&](const char* n) {
    double s = 0;
    for (double v : ps.at(n).grad) s += v * v;
    return std::sqrt(s);
  };
  EXPECT_NEAR(norm("head.conv1.weight"), g.scalar("head_conv1_grad_norm"), 1e-8 * g.scalar("head_conv1_grad_norm"));
  EXPECT_NEAR(norm("head.conv2.weight"), g.scalar("head_conv2_grad_norm"), 1e-8 * g.scalar("head_conv2_grad_norm"));
  EXPECT_NEAR(norm("conv1.weight"), g.scalar("conv1_grad_norm"), 1e-8 * g.scalar("conv1_grad_norm"));
}

TEST(NnResNet, TorchvisionInitialisation) {
  nn::ParamStore<float> ps;
  nn::ResNet<float> net(ps, nn::ResNetConfig::resnet50());
  ps.allocate();
  nn::init_torchvision(ps, 42, /*zero_init_residual=*/true, ".bn3.weight");
  auto stats = [](const auto& v) {
    double m = 0, q = 0;
    for (float x : v) m += x;
    m /= v.size();
    for (float x : v) q += (x - m) * (x - m);
    return std::pair<double, double>{m, std::sqrt(q / v.size())};
  };
  const auto& w = ps.at("layer3.0.conv2.weight").value;  // (256, 256, 3, 3): fan_out 2304
  const auto [m, sd] = stats(w.to_vector());
  EXPECT_NEAR(m, 0.0, 0.002);
  EXPECT_NEAR(sd, std::sqrt(2.0 / 2304), 0.02 * std::sqrt(2.0 / 2304));
  for (float v : ps.at("bn1.weight").value) EXPECT_EQ(v, 1.f);
  for (float v : ps.at("layer1.0.bn3.weight").value) EXPECT_EQ(v, 0.f);  // zero-init residual
  for (float v : ps.at("layer1.0.bn2.weight").value) EXPECT_EQ(v, 1.f);
  for (float v : ps.at("layer1.0.bn1.bias").value) EXPECT_EQ(v, 0.f);
  const float bound = 1.f / std::sqrt(2048.f);
  for (float v : ps.at("fc.weight").value) ASSERT_LE(std::fabs(v), bound);
  for (float v : ps.at("fc.bias").value) ASSERT_LE(std::fabs(v), bound);
  // deterministic per seed
  nn::ParamStore<float> ps2;
  nn::ResNet<float> net2(ps2, nn::ResNetConfig::resnet50());
  ps2.allocate();
  nn::init_torchvision(ps2, 42, true, ".bn3.weight");
  EXPECT_EQ(ps2.at("layer4.2.conv3.weight").value.to_vector(), ps.at("layer4.2.conv3.weight").value.to_vector());
}

}  // namespace
