// Two translation units that both include every CUDA header: the program links only if the
// headers define nothing with external linkage twice (non-template kernels must be static).
#include <cstdio>

#include "tasn/attention_sampler.cuh"
#include "tasn/core/device_buffer.cuh"
#include "tasn/losses.cuh"
#include "tasn/trilinear_attention.cuh"

int tasn_link_b();

int main() {
  std::printf("CUDA headers included in two translation units link cleanly (%d)\n", tasn_link_b());
  return 0;
}
