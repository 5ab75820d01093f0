// A program outside the tasn tree, built against the installed package.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <vector>

#include "tasn/trilinear_attention.h"

int main() {
  const std::int64_t N = 1, C = 3, H = 2, W = 2;
  std::vector<float> x(12), m(12), saved(tasn::trilinear_saved_elems(N, C, H, W));
  for (int i = 0; i < 12; ++i) x[i] = 0.1f * static_cast<float>(i % 5);
  tasn::TrilinearForwardArgs<float> args;
  args.x = tasn::Tensor4<const float>(x.data(), {N, C, H, W});
  args.m = tasn::Tensor4<float>(m.data(), {N, C, H, W});
  args.saved = tasn::Tensor1<float>(saved.data(), {static_cast<std::int64_t>(saved.size())});
  tasn::cpu::trilinear_attention_forward(args);
  for (int r = 0; r < 3; ++r) {
    float sum = 0.f;
    for (int j = 0; j < 3; ++j) sum += saved[12 + r * 3 + j];
    if (std::fabs(sum - 1.f) > 1e-5f) return 1;
  }
  std::printf("tasn consumer: attention rows sum to 1\n");
  return 0;
}
