// examples/train/presets.h - the trainer's two configurations: "demo" (the CPU default on the
// generated data, ../shared/DEMO-NOTES.md) and "paper" (SPEC 5, the official configuration).
#pragma once

#include <string>

#include "train/model.h"
#include "train/optim.h"
#include "train/trainer.h"

namespace tasn::train {

// The demo's CNN: 3x3 stem (stride 1, no pool), two residual stages of width 32 / 64, stride 2
// each: 32 x 32 -> 8 x 8 x 64.
inline nn::ResNetConfig demo_backbone() {
  nn::ResNetConfig c;
  c.depth = {1, 1};
  c.stride = {2, 2};
  c.width = 0.5;
  c.stem_kernel = 3;
  c.stem_stride = 1;
  c.stem_pool = false;
  c.num_classes = 0;
  return c;
}

struct Preset {
  NetConfig net;
  TrainConfig train;
  std::int64_t train_size = 4000, test_size = 1000;
};

inline Preset preset(const std::string& name) {
  Preset s;
  if (name == "demo") {
    s.net.att_backbone = s.net.master_backbone = demo_backbone();
    s.net.att_backbone.width = 0.25;  // attention net 16 / 32 channels: its 5-conv head would cost 2x the trunk
    s.train.epochs = 4;               // 500 steps of 32
    s.train.lr.kind = Schedule::OneCycle;
    s.train.lr.base = 0.1;
    s.train.sgd = {0.9, 5e-4};
  } else if (name == "paper") {
    s.net.classes = 200;
    s.net.image = 512;
    s.net.att_input = 224;
    s.net.out = 224;
    s.net.att_backbone = nn::AttentionNetConfig{}.backbone;
    s.net.master_backbone = nn::ResNetConfig::resnet50();
    s.train.epochs = 300;
    s.train.batch = 96;
    s.train.eval_batch = 32;
    s.train.lr.kind = Schedule::Step;
    s.train.lr.base = 0.1;
    s.train.lr.milestones = {100, 200};
    s.train.sgd = {0.0, 0.0};
  } else {
    throw InvalidArgument("--preset must be demo or paper, got \"" + name + "\"");
  }
  return s;
}

}  // namespace tasn::train
