// tests/support/loss_curve.h - a few training steps of a small TASN / baseline from fixed weights
// and batches, and the comparison of two loss curves (the GPU against the CPU in
// test_trainer_step_gpu.cpp; the tolerance's power to fail is shown on the CPU in
// test_nn_backends.cpp).
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <vector>

#include "support/test_support.h"
#include "support/train_step_check.h"
#include "train/checkpoint.h"
#include "train/model.h"
#include "train/optim.h"

namespace tasn::test {

namespace tr = tasn::train;

// A small TASN configuration (the golden test's tiny backbones, more classes and a larger batch).
inline tr::NetConfig curve_net() {
  tr::NetConfig n = train_step::step_config().net;
  n.classes = 4;
  n.image = 24;
  return n;
}

struct Batch {
  std::vector<float> images;
  std::vector<std::int64_t> labels;
};

inline std::vector<Batch> curve_batches(const tr::NetConfig& n, int count, std::int64_t batch) {
  std::vector<Batch> out;
  for (int b = 0; b < count; ++b) {
    Batch x;
    const auto v = random_tensor(batch * 3 * n.image * n.image, 100 + b, -1.0, 1.0);
    x.images.assign(v.begin(), v.end());
    for (std::int64_t i = 0; i < batch; ++i) x.labels.push_back((i * 7 + b) % n.classes);
    out.push_back(std::move(x));
  }
  return out;
}

// Losses of `steps` SGD steps (the trainer's loop: train_step, then the model's own update).
inline std::vector<double> loss_curve(tr::Model& m, const std::vector<Batch>& batches, int steps,
                                      tr::SgdOptions so = {0.9, 5e-4}) {
  tr::init_model(m, 7);
  tr::Sgd opt(m.params(), so);
  std::vector<double> out;
  for (int s = 0; s < steps; ++s) {
    const Batch& b = batches[static_cast<std::size_t>(s) % batches.size()];
    const tr::StepStats& st = m.train_step(b.images, b.labels, 1000 + s);
    out.push_back(st.total);
    EXPECT_TRUE(m.sgd_step(opt, 0.05, 1.0 / double(st.n))) << "step " << s << ": " << opt.non_finite_gradient();
  }
  return out;
}

inline void expect_curves_agree(const std::vector<double>& cpu, const std::vector<double>& gpu, double tol = 1e-3) {
  ASSERT_EQ(cpu.size(), gpu.size());
  for (std::size_t s = 0; s < cpu.size(); ++s) {
    std::printf("[ curve   ] step %zu reference %.8g other %.8g relative %.2e\n", s, cpu[s], gpu[s],
                std::fabs(gpu[s] - cpu[s]) / std::fabs(cpu[s]));
    EXPECT_LE(std::fabs(gpu[s] - cpu[s]), tol * std::fabs(cpu[s])) << "step " << s;
  }
}

}  // namespace tasn::test
