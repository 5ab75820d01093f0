// python/csrc/ops_cuda.cu - the CUDA kernels of torch.ops.tasn: python/csrc/plumbing.h on the
// library's CUDA path (tasn::cuda; float, float16 and bfloat16 storage, float math). Each call runs
// on PyTorch's current stream of the input's device, with its cuBLAS handle; the workspace comes
// from PyTorch's caching allocator (stream-ordered, so freeing it after the launch is safe). With
// options.check_finite = false no call synchronises. Built only against a CUDA PyTorch.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <torch/library.h>

#include <algorithm>

#include "plumbing.h"
#include "tasn/attention_sampler.cuh"
#include "tasn/losses.cuh"
#include "tasn/trilinear_attention.cuh"

namespace tasn_torch {

template <>
struct scalar_of<__half> {
  static constexpr at::ScalarType value = at::kHalf;
};
template <>
struct scalar_of<__nv_bfloat16> {
  static constexpr at::ScalarType value = at::kBFloat16;
};

namespace {

struct CudaBackend {
  template <class F>
  static void dispatch(const at::Tensor& t, const char* op, const char* name, F&& f) {
    const c10::cuda::CUDAGuard guard(t.device());
    translate_errors([&] {
      switch (const at::ScalarType st = t.scalar_type()) {
        case at::kFloat: f(float{}); break;
        case at::kHalf: f(__half{}); break;
        case at::kBFloat16: f(__nv_bfloat16{}); break;
        default:
          TORCH_CHECK(false, op, ": expected ", name,
                      " to have dtype float32, float16 or bfloat16 on CUDA (the kernels compute in float), got ", st);
      }
    });
  }

  // Runs tasn::cuda::fn(ctx, args, ws) on the current stream with a workspace from PyTorch.
  template <class Args, class Fn>
  static void launch(Args& a, Fn fn) {
    const std::size_t bytes = tasn::cuda::workspace_bytes(a);
    at::Tensor ws;
    if (bytes > 0) ws = at::empty({static_cast<std::int64_t>(bytes)}, at::TensorOptions().dtype(at::kByte).device(at::kCUDA, c10::cuda::current_device()));
    tasn::cuda::Context ctx;
    ctx.stream = at::cuda::getCurrentCUDAStream().stream();
    ctx.cublas = at::cuda::getCurrentCUDABlasHandle();
    fn(ctx, a, tasn::Workspace{bytes > 0 ? ws.data_ptr() : nullptr, bytes});
  }

#define TASN_CUDA_RUN(Args, fn)                                                                   \
  template <class T>                                                                              \
  static void run(tasn::Args<T>& a) {                                                             \
    launch(a, [](const tasn::cuda::Context& c, const tasn::Args<T>& x, tasn::Workspace w) {       \
      tasn::cuda::fn(c, x, w);                                                                    \
    });                                                                                           \
  }
  TASN_CUDA_RUN(TrilinearForwardArgs, trilinear_attention_forward)
  TASN_CUDA_RUN(TrilinearBackwardArgs, trilinear_attention_backward)
  TASN_CUDA_RUN(StructureMapArgs, structure_map)
  TASN_CUDA_RUN(DetailMapArgs, detail_map)
  TASN_CUDA_RUN(UpsampleArgs, upsample_bilinear)
  TASN_CUDA_RUN(MarginalsArgs, attention_marginals)
  TASN_CUDA_RUN(GridArgs, sampling_grid)
  TASN_CUDA_RUN(SampleSeparableArgs, sample_separable)
  TASN_CUDA_RUN(SampleSeparableBackwardArgs, sample_separable_backward)
  TASN_CUDA_RUN(SampleGridArgs, sample_grid)
  TASN_CUDA_RUN(SampleGridBackwardArgs, sample_grid_backward)
  TASN_CUDA_RUN(AttentionSampleArgs, attention_sample)
  TASN_CUDA_RUN(DistillationArgs, distillation_loss)
  TASN_CUDA_RUN(CrossEntropyArgs, softmax_cross_entropy)
  TASN_CUDA_RUN(TopkArgs, topk_correct)
#undef TASN_CUDA_RUN

  // No host-side index checks on CUDA (they would synchronise): a bad label gives its row a NaN
  // loss and no gradient, a bad channel a NaN map and chosen = -1 (the library's unchecked mode).
  template <class L>
  static void check_labels(const L&, std::int64_t, std::int64_t, const char*) {}
  template <class L>
  static void check_channels(const L&, std::int64_t, const char*) {}
};

}  // namespace
}  // namespace tasn_torch

TORCH_LIBRARY_IMPL(tasn, CUDA, m) { tasn_torch::register_kernels<tasn_torch::CudaBackend>(m); }
