// examples/gpu/tasn_ops.h - the library's CUDA operators (cuda/tasn/*.cuh) for the trainer's GPU
// context, as plain functions: the kernels compile once, in tasn_ops.cu (nvcc), and the host code
// that calls them (nn::CudaExec, compiled by the host compiler with Eigen around) sees only the
// argument structs of include/tasn/*_common.h. float storage; each call runs on ctx.stream with a
// workspace of workspace_bytes(args) bytes and never synchronises when the args' check_finite is
// false (the trainer's setting: one read-back per step).
#pragma once

#include <cstddef>

#include "tasn/attention_sampler_common.h"
#include "tasn/core/context.cuh"  // tasn::cuda::Context: stream + cuBLAS handle (host declarations only)
#include "tasn/losses_common.h"
#include "tasn/trilinear_attention_common.h"

namespace tasn::nn::gpu {

#define TASN_GPU_TRAINER_OPS(X)       \
  X(TrilinearForwardArgs, trilinear_attention_forward) \
  X(StructureMapArgs, structure_map)  \
  X(DetailMapArgs, detail_map)        \
  X(AttentionSampleArgs, attention_sample) \
  X(CrossEntropyArgs, softmax_cross_entropy) \
  X(DistillationArgs, distillation_loss) \
  X(TopkArgs, topk_correct)

#define TASN_GPU_DECLARE_OP(Args, name)                       \
  std::size_t workspace_bytes(const Args<float>& a);          \
  void name(const ::tasn::cuda::Context& ctx, const Args<float>& a, Workspace ws);
TASN_GPU_TRAINER_OPS(TASN_GPU_DECLARE_OP)
#undef TASN_GPU_DECLARE_OP

}  // namespace tasn::nn::gpu
