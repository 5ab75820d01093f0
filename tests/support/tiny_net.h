// tests/support/tiny_net.h - the small TASN configuration the trainer tests train in seconds:
// `image` px inputs, 16 px attention-net input and sampler output, the demo backbones at width
// 1/8 (channels 8 / 16).
#pragma once

#include <cstdint>

#include "train/model.h"
#include "train/presets.h"

namespace tasn::test {

inline tasn::train::NetConfig tiny_net(std::int64_t image = 48) {
  tasn::train::NetConfig n;
  n.image = image;
  n.att_input = 16;
  n.out = 16;
  n.att_backbone = n.master_backbone = tasn::train::demo_backbone();
  n.att_backbone.width = n.master_backbone.width = 0.125;
  return n;
}

}  // namespace tasn::test
