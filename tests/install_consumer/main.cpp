// A program outside the tasn tree, built against the installed package.
#include <cmath>
#include <cstdio>
#include <vector>

#include "tasn/trilinear_attention.h"

int main() {
  const tasn::TrilinearShape s{1, 3, 2, 2};
  std::vector<float> x(12), m(12), saved(tasn::trilinear_saved_elems(s));
  for (int i = 0; i < 12; ++i) x[i] = 0.1f * static_cast<float>(i % 5);
  tasn::cpu::trilinear_attention_forward<float>(x.data(), m.data(), saved.data(), s);
  for (int r = 0; r < 3; ++r) {
    float sum = 0.f;
    for (int j = 0; j < 3; ++j) sum += saved[12 + r * 3 + j];
    if (std::fabs(sum - 1.f) > 1e-5f) return 1;
  }
  std::printf("tasn consumer: attention rows sum to 1\n");
  return 0;
}
