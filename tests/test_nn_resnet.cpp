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

  // Same trainable parameter names as torchvision.
  std::set<std::string> ours, theirs(names.begin(), names.end());
  for (auto& [name, p] : ps.all())
    if (p.trainable) ours.insert(name);
  EXPECT_EQ(ours, theirs);
  for (auto& [name, p] : ps.all()) p.value.data = tt::formula_values(name, p.value.shape);

  nn::Tensor<T> x({2, 3, 64, 64});
  x.data = tt::random_tensor(x.numel(), 900, -1.0, 1.0);
  nn::Tensor<T> w({2, 10});
  w.data = tt::random_tensor(w.numel(), 901, -1.0, 1.0);

  nn::BatchNormState eval;
  eval.training = false;
  auto r = tt::compare(net.forward(x, eval).data, g.at("logits_eval").data, 1e-10, 1e-9);
  EXPECT_TRUE(r.ok) << "eval logits: " << r.message();

  nn::BatchNormState train;
  const auto logits = net.forward(x, train);
  r = tt::compare(logits.data, g.at("logits_train").data, 1e-10, 1e-9);
  EXPECT_TRUE(r.ok) << "train logits: " << r.message();
  ps.zero_grad();
  const auto dx = net.backward(w);
  r = tt::compare(dx.data, g.at("dx").data, 1e-12 * tt::max_abs(g.at("dx").data), 1e-8);
  EXPECT_TRUE(r.ok) << "input gradient: " << r.message();
  r = tt::compare(ps.at("bn1.running_var").value.data, g.at("bn1.running_var").data, 1e-12, 1e-10);
  EXPECT_TRUE(r.ok) << "running var: " << r.message();
  r = tt::compare(ps.at("conv1.weight").grad.data, g.at("conv1.weight.grad").data, 1e-10, 1e-8);
  EXPECT_TRUE(r.ok) << "conv1.weight grad: " << r.message();
  r = tt::compare(ps.at("fc.weight").grad.data, g.at("fc.weight.grad").data, 1e-12, 1e-9);
  EXPECT_TRUE(r.ok) << "fc.weight grad: " << r.message();
  const auto& norms = g.at("grad_norms").data;
  ASSERT_EQ(norms.size(), names.size());
  for (std::size_t i = 0; i < names.size(); ++i) {
    double s = 0;
    for (double v : ps.at(names[i]).grad.data) s += v * v;
    EXPECT_NEAR(std::sqrt(s), norms[i], 1e-8 * (1 + norms[i])) << names[i];
  }
}

TEST(NnResNet, ResNet18EqualsTorchvision) { check_against_torchvision("resnet18", nn::ResNetConfig::resnet18()); }
TEST(NnResNet, ResNet50EqualsTorchvision) { check_against_torchvision("resnet50", nn::ResNetConfig::resnet50()); }

}  // namespace
