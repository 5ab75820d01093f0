// python/csrc/ops_cpu.cpp - the CPU kernels of torch.ops.tasn: python/csrc/plumbing.h on the
// library's CPU path (tasn::cpu, Eigen + OpenMP; float and double).
#include <torch/library.h>

#include "plumbing.h"
#include "tasn/attention_sampler.h"
#include "tasn/losses.h"
#include "tasn/trilinear_attention.h"

namespace tasn_torch {
namespace {

struct CpuBackend {
  template <class F>
  static void dispatch(const at::Tensor& t, const char* op, const char* name, F&& f) {
    translate_errors([&] {
      switch (const at::ScalarType st = t.scalar_type()) {
        case at::kFloat: f(float{}); break;
        case at::kDouble: f(double{}); break;
        default:
          TORCH_CHECK(false, op, ": expected ", name, " to have dtype float32 or float64 on the CPU, got ", st);
      }
    });
  }

#define TASN_CPU_RUN(Args, fn) \
  template <class T>           \
  static void run(tasn::Args<T>& a) { tasn::cpu::fn(a); }
  TASN_CPU_RUN(TrilinearForwardArgs, trilinear_attention_forward)
  TASN_CPU_RUN(TrilinearBackwardArgs, trilinear_attention_backward)
  TASN_CPU_RUN(StructureMapArgs, structure_map)
  TASN_CPU_RUN(DetailMapArgs, detail_map)
  TASN_CPU_RUN(UpsampleArgs, upsample_bilinear)
  TASN_CPU_RUN(MarginalsArgs, attention_marginals)
  TASN_CPU_RUN(GridArgs, sampling_grid)
  TASN_CPU_RUN(SampleSeparableArgs, sample_separable)
  TASN_CPU_RUN(SampleSeparableBackwardArgs, sample_separable_backward)
  TASN_CPU_RUN(SampleGridArgs, sample_grid)
  TASN_CPU_RUN(SampleGridBackwardArgs, sample_grid_backward)
  TASN_CPU_RUN(AttentionSampleArgs, attention_sample)
  TASN_CPU_RUN(DistillationArgs, distillation_loss)
  TASN_CPU_RUN(CrossEntropyArgs, softmax_cross_entropy)
  TASN_CPU_RUN(TopkArgs, topk_correct)
#undef TASN_CPU_RUN

  // A label that is neither ignore_index nor in [0, k) is an error on the CPU, as in PyTorch
  // (the library's unchecked mode would give its row a NaN loss).
  static void check_labels(const tasn::Tensor1<const std::int64_t>& labels, std::int64_t k, std::int64_t ignore_index,
                           const char* op) {
    for (std::int64_t i = 0; i < labels.size[0]; ++i) {
      const std::int64_t y = labels.data[i];
      TORCH_CHECK(!tasn::detail::is_bad_label(y, k, ignore_index),
                  tasn::detail::bad_label_message(op, i, y, k, ignore_index));
    }
  }
  static void check_channels(const tasn::Tensor1<const std::int64_t>& channels, std::int64_t C, const char* op) {
    for (std::int64_t n = 0; n < channels.size[0]; ++n)
      TORCH_CHECK(channels.data[n] >= 0 && channels.data[n] < C,
                  tasn::sampler::bad_channel_message(op, n, channels.data[n], C));
  }
};

}  // namespace
}  // namespace tasn_torch

TORCH_LIBRARY_IMPL(tasn, CPU, m) { tasn_torch::register_kernels<tasn_torch::CpuBackend>(m); }
