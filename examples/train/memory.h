// examples/train/memory.h - a size check before anything is allocated: a rough estimate of the
// memory a training run needs (the cached data set, parameters with gradients and momentum, one
// step's activations), compared with the machine's physical memory, so that `--image 100000` or
// `--train-size 100000000000` get a message with the bytes instead of std::bad_alloc (or the OOM
// killer) after minutes of data generation. The estimate counts only the largest terms, once, so
// it stays below the real peak (tests/test_trainer.cpp checks it against measured peaks: the
// paper preset's step at batch 2 and README command 1): a run it refuses cannot fit.
#pragma once

#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <string>

#include "nn/resnet.h"
#include "train/model.h"

namespace tasn::train {

struct MemoryEstimate {
  double data = 0;    // cached images (generated data: 8-bit pixels)
  double params = 0;  // parameters + gradients + momentum (float)
  double step = 0;    // one training step's activations, gradients and input batches (float)
  double total() const { return data + params + step; }
};

inline std::string format_bytes(double b) {
  char buf[32];
  if (b >= 1024.0 * 1024 * 1024 * 1024) std::snprintf(buf, sizeof buf, "%.3g TiB", b / (1024.0 * 1024 * 1024 * 1024));
  else if (b >= 1024.0 * 1024 * 1024) std::snprintf(buf, sizeof buf, "%.3g GiB", b / (1024.0 * 1024 * 1024));
  else std::snprintf(buf, sizeof buf, "%.3g MiB", b / (1024.0 * 1024));
  return buf;
}

inline double physical_memory_bytes() {
  const long pages = ::sysconf(_SC_PHYS_PAGES), page = ::sysconf(_SC_PAGE_SIZE);
  return pages > 0 && page > 0 ? double(pages) * double(page) : 0.0;
}

namespace detail_memory {

struct NetCost {
  double params = 0;      // parameters (elements)
  double activations = 0; // convolution outputs, per image (elements): the layers keep about
                          // two tensors of this size per convolution for the backward pass
  double im2col = 0;      // the largest im2col buffer, per image (elements)
  std::int64_t features = 0, side = 0;
};

// Mirrors nn::ResNet's construction (channels, strides) in doubles: nothing is allocated.
inline NetCost resnet_cost(const nn::ResNetConfig& c, double side) {
  NetCost n;
  const auto ch = [&](double base) { return std::max(1.0, std::floor(base * c.width + 0.5)); };
  const auto conv = [&](double cin, double cout, double k, double stride) {
    n.params += cin * cout * k * k + 4 * cout;  // weight + BN (weight, bias, running mean / var)
    side = std::floor((side + 2 * std::floor(k / 2) - k) / stride) + 1;
    n.activations += cout * side * side;
    n.im2col = std::max(n.im2col, cin * k * k * side * side);
  };
  conv(3, ch(64), double(c.stem_kernel), double(c.stem_stride));
  if (c.stem_pool) side = std::floor((side - 1) / 2) + 1;
  double cin = ch(64);
  const double base[4] = {64, 128, 256, 512};
  for (std::size_t s = 0; s < c.depth.size() && s < 4; ++s) {
    const double planes = ch(base[s]), cout = c.bottleneck ? 4 * planes : planes;
    for (std::int64_t u = 0; u < c.depth[s]; ++u) {
      const double stride = u == 0 ? double(c.stride[s]) : 1.0, in_side = side;
      if (c.bottleneck) {
        conv(cin, planes, 1, 1);
        conv(planes, planes, 3, stride);
        conv(planes, cout, 1, 1);
      } else {
        conv(cin, planes, 3, stride);
        conv(planes, cout, 3, 1);
      }
      if (stride != 1 || cin != cout) {
        const double keep = side;
        side = in_side;
        conv(cin, cout, 1, stride);
        side = keep;
      }
      cin = cout;
    }
  }
  n.features = static_cast<std::int64_t>(cin);
  n.side = static_cast<std::int64_t>(side);
  return n;
}

}  // namespace detail_memory

// tasn / baseline: which models are built (the larger one decides the step; both are kept).
inline MemoryEstimate estimate_memory(const NetConfig& net, std::int64_t batch, std::int64_t cached_images,
                                      bool tasn, bool baseline) {
  using detail_memory::resnet_cost;
  MemoryEstimate e;
  const double img = 3.0 * double(net.image) * double(net.image);  // elements per input image
  e.data = double(cached_images) * img;                            // 8-bit cache
  const auto master = resnet_cost(net.master_backbone, double(net.out));
  const double heads = 3.0 * (double(master.features) * double(net.classes) + double(net.classes));
  double step = 0, params = 0;
  if (baseline) {
    params += master.params + double(master.features) * double(net.classes);
    // input batch (loader + tensor), resized image, backbone activations (+ their gradients)
    step = std::max(step, double(batch) * (2 * img + master.activations + master.im2col));
  }
  if (tasn) {
    nn::ResNetConfig ab = net.att_backbone;
    const auto att = resnet_cost(ab, double(net.att_input));
    const double c = double(att.features), hw = double(att.side) * double(att.side);
    params += master.params + heads + att.params + 2 * (c * c * 9 + c) + 4 * c + double(net.classes) * (c + 1);
    // input batch (loader + tensor), the squared structure map at image size, two sampled images,
    // the master backbone on 2N images, the attention net and its 5-convolution head
    step = std::max(step, double(batch) * (2 * img + img / 3 + 2 * 3.0 * double(net.out) * double(net.out) +
                                           2 * master.activations + 2 * master.im2col + att.activations +
                                           7 * c * hw));
  }
  e.params = 3 * 4 * params;
  e.step = 4 * step;
  return e;
}

}  // namespace tasn::train
