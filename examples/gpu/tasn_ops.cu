// examples/gpu/tasn_ops.cu - the one translation unit that instantiates the library's CUDA
// operators for the trainer (see tasn_ops.h).
#include "gpu/tasn_ops.h"

#include "tasn/attention_sampler.cuh"
#include "tasn/losses.cuh"
#include "tasn/trilinear_attention.cuh"

namespace tasn::nn::gpu {

#define TASN_GPU_DEFINE_OP(Args, name)                                                  \
  std::size_t workspace_bytes(const Args<float>& a) { return ::tasn::cuda::workspace_bytes(a); } \
  void name(const ::tasn::cuda::Context& ctx, const Args<float>& a, Workspace ws) { ::tasn::cuda::name(ctx, a, ws); }
TASN_GPU_TRAINER_OPS(TASN_GPU_DEFINE_OP)
#undef TASN_GPU_DEFINE_OP

}  // namespace tasn::nn::gpu
