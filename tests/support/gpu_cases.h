// Test cases shared by a GPU test and its CPU replay in tests/test_gpu_tolerances.cpp: the replay
// must see exactly the data and options the GPU test uses, so both take them from here.
#pragma once

#include <vector>

#include "support/test_support.h"
#include "tasn/attention_sampler_common.h"
#include "tasn/losses_common.h"

namespace tasn::test::gpu_cases {

// Row lengths for the loss tests: one-element rows, warp- and block-sized rows, and K = 8192.
inline const std::vector<long> kLossLengths = {1, 31, 200, 1000, 5089, 8192};
inline constexpr long kLossRows = 13;

inline CrossEntropyOptions cross_entropy_options(Reduction red) {
  CrossEntropyOptions opt;
  opt.grad_scale = 0.5;
  opt.label_smoothing = 0.1;
  opt.reduction = red;
  return opt;
}

// Every fourth row ignored (-100), the others spread over the k classes.
inline std::vector<long long> cross_entropy_labels(long n, long k) {
  std::vector<long long> y(n);
  for (long i = 0; i < n; ++i) y[i] = i % 4 == 1 ? -100 : (i * 7919) % k;
  return y;
}

// The grid tests' output size (the gy / gx views): 224 x 200; options in the given mode.
inline constexpr long kGridHo = 224, kGridWo = 200;
inline GridOptions grid_options(GridMode mode) {
  GridOptions opt;
  opt.mode = mode;
  return opt;
}

// attention_sample on (3, 3, 160, 192) images with 14 x 14 maps to (3, 3, 64, 80); sample 2's map is all zero, so it
// falls back to the identity grid.
struct AttentionSampleCase {
  static constexpr long N = 3, C = 3, Hi = 160, Wi = 192, Ha = 14, Wa = 14, Ho = 64, Wo = 80;

  static std::vector<float> attention() {
    auto att = cast_vector<float>(random_tensor(N * Ha * Wa, 112, 0.0, 1.0));
    for (long i = 0; i < Ha * Wa; ++i) att[2 * Ha * Wa + i] = 0.f;
    return att;
  }
  static std::vector<double> image() { return random_tensor(N * C * Hi * Wi, 111, 0.0, 1.0); }
  static AttentionSampleOptions options(bool squared) {
    AttentionSampleOptions opt;
    opt.upsample_h = 128;
    opt.squared = squared;
    return opt;
  }
};

}  // namespace tasn::test::gpu_cases
