// Compile-time proof that the CUDA operators take the very arguments structs the CPU operators
// take, with the types docs/api.md states (built by tasn_cuda_link_check; nothing runs).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>
#include <utility>

#include "tasn/attention_sampler.cuh"
#include "tasn/losses.cuh"
#include "tasn/trilinear_attention.cuh"

namespace {

template <class Args>
constexpr bool cuda_accepts = std::is_same_v<decltype(tasn::cuda::workspace_bytes(std::declval<const Args&>())),
                                             std::size_t>;

// Maps, marginals and grids: T on the CPU (float, double), float with half / bfloat16 images.
static_assert(std::is_same_v<tasn::compute_type_t<float>, float>);
static_assert(std::is_same_v<tasn::compute_type_t<double>, double>);
static_assert(std::is_same_v<tasn::compute_type_t<__half>, float>);
static_assert(std::is_same_v<tasn::compute_type_t<__nv_bfloat16>, float>);
static_assert(std::is_same_v<decltype(tasn::AttentionSampleArgs<__half>::attention), tasn::Tensor3<const float>>);
static_assert(std::is_same_v<decltype(tasn::SampleGridArgs<__nv_bfloat16>::grid), tasn::Tensor4<const float>>);
static_assert(std::is_same_v<decltype(tasn::AttentionSampleArgs<float>::gy), tasn::Tensor2<float>>);
// One count type, one label type on both backends.
static_assert(std::is_same_v<decltype(tasn::TopkArgs<float>::correct), tasn::Tensor1<std::int64_t>>);
static_assert(std::is_same_v<decltype(tasn::CrossEntropyArgs<__half>::labels), tasn::Tensor1<const std::int64_t>>);
static_assert(std::is_same_v<decltype(tasn::DetailMapArgs<float>::chosen), tasn::Tensor1<std::int64_t>>);
// Every options struct has check_finite, on by default.
static_assert(std::is_same_v<decltype(tasn::TrilinearAttentionOptions::check_finite), bool>);
static_assert(tasn::TrilinearAttentionOptions{}.check_finite && tasn::DistillationOptions{}.check_finite &&
              tasn::CrossEntropyOptions{}.check_finite && tasn::TopkOptions{}.check_finite &&
              tasn::StructureMapOptions{}.check_finite && tasn::DetailMapOptions{}.check_finite &&
              tasn::UpsampleOptions{}.check_finite && tasn::MarginalsOptions{}.check_finite &&
              tasn::GridOptions{}.check_finite && tasn::SampleOptions{}.check_finite &&
              tasn::AttentionSampleOptions{}.check_finite);
// The CUDA path takes every family's float arguments struct (the CPU path's own types).
static_assert(cuda_accepts<tasn::TrilinearForwardArgs<float>> && cuda_accepts<tasn::TrilinearBackwardArgs<float>>);
static_assert(cuda_accepts<tasn::DistillationArgs<float>> && cuda_accepts<tasn::CrossEntropyArgs<float>> &&
              cuda_accepts<tasn::TopkArgs<float>>);
static_assert(cuda_accepts<tasn::StructureMapArgs<float>> && cuda_accepts<tasn::DetailMapArgs<float>> &&
              cuda_accepts<tasn::UpsampleArgs<float>> && cuda_accepts<tasn::MarginalsArgs<float>> &&
              cuda_accepts<tasn::GridArgs<float>> && cuda_accepts<tasn::SampleSeparableArgs<float>> &&
              cuda_accepts<tasn::SampleSeparableBackwardArgs<float>> && cuda_accepts<tasn::SampleGridArgs<float>> &&
              cuda_accepts<tasn::SampleGridBackwardArgs<float>> && cuda_accepts<tasn::AttentionSampleArgs<float>>);
static_assert(cuda_accepts<tasn::AttentionSampleArgs<__half>> && cuda_accepts<tasn::CrossEntropyArgs<__nv_bfloat16>>);

}  // namespace
