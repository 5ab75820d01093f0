// See link_a.cu.
#include "tasn/attention_sampler.cuh"
#include "tasn/core/device_buffer.cuh"
#include "tasn/losses.cuh"
#include "tasn/trilinear_attention.cuh"

int tasn_link_b() {
  static float z[12];  // host memory: only the sizes are used
  tasn::DistillationArgs<float> a;
  a.student = {z, {4, 3}};
  a.teacher = {z, {4, 3}};
  return static_cast<int>(tasn::cuda::workspace_bytes(a));
}
