// tests/support/train_step_check.h - the whole-step comparison against PyTorch's golden data
// (tests/golden/gen_train_step.py), for any execution context: test_train_step_golden.cpp runs it
// on the CPU backends, test_trainer_step_gpu.cpp on the CUDA context. The tolerances and their
// derivation are in test_train_step_golden.cpp's header comment.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <set>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "support/formula_weights.h"
#include "support/test_support.h"
#include "train/model.h"
#include "train/optim.h"

namespace tasn::test::train_step {

namespace tt = tasn::test;
namespace nn = tasn::nn;
namespace tr = tasn::train;

// ---- parameter access: the only code that knows how the model stores its parameters ------------
// Names are checkpoint names, "<store>.<parameter>" ("att.conv1.weight", "heads.part_fc.bias").

struct Entry {
  std::string name;
  std::vector<std::int64_t> shape;
  bool trainable;
};

// Every parameter and buffer of the model: its flat table.
template <class Net>
std::vector<Entry> entries_of(Net& model) {
  std::vector<Entry> out;
  for (const auto& e : model.params().table()) out.push_back({e.name, e.shape, e.trainable});
  return out;
}

template <class Net>
auto& param_at(Net& model, const std::string& name) {
  const auto dot = name.find('.');
  for (auto& [prefix, store] : model.stores())
    if (name.compare(0, dot, prefix) == 0 && dot == prefix.size()) return store->at(name.substr(dot + 1));
  throw std::runtime_error("no parameter store for " + name);
}

template <class Net>
using scalar_of = std::remove_pointer_t<decltype(std::declval<Net&>().params().values())>;

template <class Net>
void set_param(Net& model, const std::string& name, const std::vector<double>& values) {
  auto& p = param_at(model, name);
  ASSERT_EQ(static_cast<std::int64_t>(values.size()), p.value.numel()) << name;
  std::transform(values.begin(), values.end(), p.value.begin(), [](double v) { return static_cast<scalar_of<Net>>(v); });
}

template <class Net>
std::vector<double> grad_of(Net& model, const std::string& name) {
  const auto& g = param_at(model, name).grad;
  return {g.begin(), g.end()};
}

template <class Net>
std::vector<double> value_of(Net& model, const std::string& name) {
  const auto& v = param_at(model, name).value;
  return {v.begin(), v.end()};
}

// One SGD step of the trainer's optimiser over all trainable parameters, where the model keeps
// them (the host, or a device), then the values back on the host.
template <class Net>
void sgd_step(Net& model, double lr, double rescale, double momentum, double weight_decay) {
  tr::BasicSgd<scalar_of<Net>> opt(model.params(), tr::SgdOptions{momentum, weight_decay});
  ASSERT_TRUE(model.sgd_step(opt, lr, rescale)) << "non-finite gradient in " << opt.non_finite_gradient();
  model.params_to_host(&opt);
}

// ---- configuration (gen_train_step.py: CONFIG, ATT_BACKBONE, MASTER_BACKBONE) --------------------

inline nn::ResNetConfig tiny_backbone(bool bottleneck) {
  nn::ResNetConfig c;
  c.bottleneck = bottleneck;
  c.depth = {1, 1};
  c.stride = {1, 2};
  c.width = 0.0625;  // 4 and 8 channels (x4 for the bottleneck's output)
  c.stem_kernel = 3;
  c.stem_stride = 1;
  c.stem_pool = false;
  c.num_classes = 0;
  return c;
}

struct StepConfig {
  tr::NetConfig net;
  std::int64_t batch = 2;
  double lr = 0.1, momentum = 0.9, weight_decay = 5e-4;
};

inline StepConfig step_config() {
  StepConfig s;
  s.net.classes = 3;
  s.net.image = 20;
  s.net.att_input = 16;
  s.net.out = 12;
  s.net.att_backbone = tiny_backbone(false);    // the paper's ResNet-18 form
  s.net.master_backbone = tiny_backbone(true);  // the paper's ResNet-50 form
  // everything else: NetConfig's defaults (beta 7, dense 4, iters 5, exact grid, squared and
  // distinct structure map, T 10, head scale 0.5, attention scale 1, distillation 1, teacher grad)
  return s;
}

// The generator's CONFIG vector, in its CONFIG_KEYS order.
inline std::vector<double> config_vector(const StepConfig& s) {
  const tr::NetConfig& n = s.net;
  return {double(n.classes), double(s.batch), double(n.image), double(n.att_input), double(n.out), n.beta, n.dense,
          double(n.iters), n.temperature, n.head_grad_scale, n.att_grad_scale, n.distill_weight,
          n.teacher_grad ? 1.0 : 0.0, s.lr, s.momentum, s.weight_decay};
}

// ---- comparison ------------------------------------------------------------------------------------

struct Tolerances {
  double loss, grad, running, after, view;
  double floor;  // added to max |ref|, so an all-zero reference tensor still has a scale
};

// The model's scalar type is float today (see the header comment for the derivation). A double
// model needs its own (measure, then allow ~10x: expect ~1e-12 relative).
template <class T>
Tolerances tolerances();
template <>
inline Tolerances tolerances<float>() {
  return {1e-5, 2e-4, 1e-5, 1e-6, 1e-4, 1e-6};
}
// double: the same computation as the float64 reference up to summation order; measured errors
// are below 1e-13 relative (see the [ worst ] lines); 1e-10 leaves room for other BLAS blockings
// and thread counts while any real fault (>= 1e-3, above) still fails by 7 orders of magnitude.
template <>
inline Tolerances tolerances<double>() {
  return {1e-10, 1e-10, 1e-10, 1e-12, 1e-10, 1e-12};
}

// Worst error of each category, relative to its tolerance scale, for the report on failure.
struct Worst {
  std::map<std::string, std::pair<double, std::string>> by_category;  // relative error, tensor
  void note(const std::string& cat, const std::string& name, double rel) {
    auto& w = by_category[cat];
    if (w.second.empty() || rel > w.first) w = {rel, name};
  }
  std::string str() const {
    std::string s;
    char buf[64];
    for (const auto& [c, w] : by_category) {
      std::snprintf(buf, sizeof buf, "%.2e", w.first);
      s += " " + c + " " + buf + " (" + w.second + ")";
    }
    return s;
  }
};

// max |got - ref| <= tol * (max |ref| + floor) + allowance (an error inherited from an input
// compared before); records max |got - ref| / (max |ref| + floor).
template <class Got>
void expect_close(const std::string& cat, const std::string& name, const Got& got, const tt::GoldenTensor& ref,
                  double tol, double floor, Worst& worst, double allowance = 0) {
  ASSERT_EQ(got.size(), ref.data.size()) << name;
  double scale = floor, err = 0;
  std::size_t at = 0;
  for (double r : ref.data) scale = std::max(scale, std::fabs(r) + floor);
  for (std::size_t i = 0; i < got.size(); ++i) {
    const double e = std::fabs(static_cast<double>(got[i]) - ref.data[i]);
    if (!(e <= err)) {  // NaN counts as the worst
      err = std::isnan(e) ? INFINITY : e;
      at = i;
    }
  }
  worst.note(cat, name, err / scale);
  EXPECT_LE(err, tol * scale + allowance) << cat << " " << name << ": max |err| " << err << " at " << at << " (got "
                              << static_cast<double>(got[at]) << ", expected " << ref.data[at] << "), "
                              << "max |ref| " << scale - floor << ", relative " << err / scale << " > " << tol
                              << (allowance > 0 ? " (+ allowance " + std::to_string(allowance) + ")" : "");
}

// Golden tensor names under a prefix ("grad/"), with the prefix removed.
inline std::set<std::string> golden_names(const tt::GoldenFile& g, const std::string& prefix) {
  std::set<std::string> out;
  for (const auto& n : g.names())
    if (n.compare(0, prefix.size(), prefix) == 0) out.insert(n.substr(prefix.size()));
  return out;
}

template <class T>
std::vector<T> golden_images(const tt::GoldenFile& g, const tr::NetConfig& n, std::int64_t batch) {
  const auto v = tt::random_tensor(batch * 3 * n.image * n.image, static_cast<std::uint64_t>(g.scalar("image_seed")), -1.0, 1.0);
  return {v.begin(), v.end()};  // float-rounded by random_tensor: exact in float
}

// Sets every parameter and buffer from its formula, runs one training step, compares losses,
// gradients and running statistics; then one SGD step and the updated parameters. `after_step`
// compares whatever else the network exposes (TASN's maps and images). A model on a device gets
// the values before the step (params_to_device) and returns gradients, statistics and updated
// values after it (grads_to_host, params_to_host); the optimiser step is the model's own.
template <class T, class Net, class AfterStep>
void check_step(Net& net, const StepConfig& cfg, const tt::GoldenFile& g, AfterStep after_step) {
  const Tolerances tol = tolerances<T>();
  Worst worst;
  {
    const auto gc = g.at("config").data;
    ASSERT_EQ(gc, config_vector(cfg)) << "the golden file was generated for another configuration";
  }
  std::set<std::string> trainable, buffers;
  for (const Entry& e : entries_of(net)) {
    set_param(net, e.name, tt::formula_values(e.name, e.shape));
    (e.trainable ? trainable : buffers).insert(e.name);
  }
  EXPECT_EQ(trainable, golden_names(g, "grad/")) << "trainable parameter names differ from the reference's";
  EXPECT_EQ(trainable, golden_names(g, "after/"));
  EXPECT_EQ(buffers, golden_names(g, "running/")) << "buffer names differ from the reference's";
  net.params_to_device(nullptr);

  std::vector<std::int64_t> labels;
  for (double l : g.at("labels").data) labels.push_back(static_cast<std::int64_t>(l));
  const tr::StepStats st = net.train_step(golden_images<T>(g, cfg.net, cfg.batch), labels, 0);
  net.grads_to_host();
  net.params_to_host(nullptr);

  std::set<std::string> loss_names;
  for (const auto& [name, value] : st.losses) {
    loss_names.insert(name);
    expect_close("loss", name, std::vector<double>{value}, g.at("loss/" + name), tol.loss, tol.floor, worst);
  }
  loss_names.insert("total");
  EXPECT_EQ(loss_names, golden_names(g, "loss/")) << "loss terms differ from the reference's";
  expect_close("loss", "total", std::vector<double>{st.total}, g.at("loss/total"), tol.loss, tol.floor, worst);

  for (const auto& name : trainable)
    expect_close("grad", name, grad_of(net, name), g.at("grad/" + name), tol.grad, tol.floor, worst);
  for (const auto& name : buffers)
    expect_close("running", name, value_of(net, name), g.at("running/" + name), tol.running, tol.floor, worst);
  after_step(tol, worst);

  const double rescale = 1.0 / double(cfg.batch);
  sgd_step(net, cfg.lr, rescale, cfg.momentum, cfg.weight_decay);
  for (const auto& name : trainable) {
    // w - lr (g rescale + wd w): the gradient's admitted error enters times lr * rescale
    const double inherited = cfg.lr * rescale * tol.grad * (tt::max_abs(g.at("grad/" + name).data) + tol.floor);
    expect_close("after", name, value_of(net, name), g.at("after/" + name), tol.after, tol.floor, worst, inherited);
  }
  // Shown on success too: the margins the tolerances leave (worst error / tolerance scale).
  std::printf("[ worst   ]%s\n", worst.str().c_str());
}

// TASN / the baseline on context Ex (nn::CpuExec<T> by default), constructed from ex_args.
template <class T, class Ex = nn::CpuExec<T>, class... ExArgs>
void tasn_step(ExArgs&&... ex_args) {
  const tt::GoldenFile g(tt::golden_path("train_step_tasn.bin"));
  const StepConfig cfg = step_config();
  tr::BasicTasnNet<T, Ex> net(cfg.net, std::forward<ExArgs>(ex_args)...);
  std::vector<std::int64_t> channels;
  for (double c : g.at("detail_channels").data) channels.push_back(static_cast<std::int64_t>(c));
  net.set_detail_channels(channels);
  check_step<T>(net, cfg, g, [&](const Tolerances& tol, Worst& worst) {
    const tr::BasicTasnViews<T> v = net.views_on_host();
    expect_close("view", "structure_map", tt::values(v.structure_map), g.at("view/structure_map"), tol.view, tol.floor, worst);
    expect_close("view", "detail_map", tt::values(v.detail_map), g.at("view/detail_map"), tol.view, tol.floor, worst);
    expect_close("view", "gy_structure", tt::values(v.gy_structure), g.at("view/gy_structure"), tol.view, tol.floor, worst);
    expect_close("view", "gx_structure", tt::values(v.gx_structure), g.at("view/gx_structure"), tol.view, tol.floor, worst);
    expect_close("view", "structure_image", tt::values(v.structure_image), g.at("view/structure_image"), tol.view,
                 tol.floor, worst);
    expect_close("view", "detail_image", tt::values(v.detail_image), g.at("view/detail_image"), tol.view, tol.floor,
                 worst);
  });
}

template <class T, class Ex = nn::CpuExec<T>, class... ExArgs>
void baseline_step(ExArgs&&... ex_args) {
  const tt::GoldenFile g(tt::golden_path("train_step_baseline.bin"));
  const StepConfig cfg = step_config();
  tr::BasicBaselineNet<T, Ex> net(cfg.net, std::forward<ExArgs>(ex_args)...);
  check_step<T>(net, cfg, g, [](const Tolerances&, Worst&) {});
}

}  // namespace tasn::test::train_step
