// See link_a.cu.
#include "tasn/attention_sampler.cuh"
#include "tasn/core/device_buffer.cuh"
#include "tasn/losses.cuh"
#include "tasn/trilinear_attention.cuh"

int tasn_link_b() { return static_cast<int>(tasn::cuda::distillation_workspace_bytes(4, tasn::Reduction::Mean)); }
