// tests/gpu/gpu_runners.h - host-side entry points into the CUDA operators for the GPU tests.
//
// The .cu file compiles with nvcc and holds all CUDA code; the tests themselves are host C++ that
// compare these results with the CPU path (which uses Eigen, kept out of nvcc-compiled files).
// Data crosses as float vectors; the runner converts to and from the storage type.
#pragma once

#include <cstddef>
#include <ostream>
#include <string>
#include <vector>

#include "tasn/attention_sampler_common.h"
#include "tasn/losses_common.h"
#include "tasn/trilinear_attention_common.h"

namespace tasn::test::gpu {

enum class Dtype { F32, F16, BF16 };
enum class Kernel { Auto = 0, Warp = 1, Block = 2 };  // tasn::cuda::RowKernel

const char* dtype_name(Dtype d);
const char* kernel_name(Kernel k);

// Readable parameter values in gtest listings.
inline void PrintTo(Dtype d, std::ostream* os) { *os << dtype_name(d); }
inline void PrintTo(Kernel k, std::ostream* os) { *os << kernel_name(k); }
// Test-name suffix of a (dtype, kernel) parameter, e.g. "half_warp".
inline std::string label(Dtype d, Kernel k) { return std::string(dtype_name(d)) + "_" + kernel_name(k); }

// True when a CUDA device can be used; otherwise `reason` says why (for GTEST_SKIP).
bool device_available(std::string* reason);

// "name, compute capability X.Y, N GiB" of device 0 (call only when device_available()).
std::string device_description();

// Rounds values to the storage type and back (host conversion, round to nearest even).
std::vector<float> round_to(Dtype d, const std::vector<float>& v);

struct TrilinearResult {
  std::vector<float> m, saved, dx_saved, dx_recompute;
};
// cuda::trilinear_attention_forward (with saved) and _backward (with saved, and recomputing), the
// row-kernel variant forced to k (tasn::cuda::testing::ScopedRowKernel) for the call.
TrilinearResult trilinear(Dtype d, const std::vector<float>& x, const std::vector<float>& dm,
                          const TrilinearShape& s, const TrilinearAttentionOptions& opt, Kernel k);

std::vector<float> softmax_rows(Dtype d, const std::vector<float>& in, long rows, long len,
                                float scale, Kernel k);
// dx = scale * y * (dy - <y, dy>) + add; y and dx in the storage type, dy and add in float.
std::vector<float> softmax_backward_rows(Dtype d, const std::vector<float>& y,
                                         const std::vector<float>& dy,
                                         const std::vector<float>& add, long rows, long len,
                                         float scale, Kernel k);

// Call cuda::trilinear_attention_forward / _backward with `args` (its pointers are never
// dereferenced: they may be host or fake addresses) and workspace `ws`, with a fake cuBLAS handle
// (or none); validation must reject the call before any device work. Used to compare the CUDA
// error messages with the CPU ones on machines without a GPU.
void trilinear_forward_validation_only(const TrilinearForwardArgs<float>& args, Workspace ws,
                                       bool null_cublas = false);
void trilinear_backward_validation_only(const TrilinearBackwardArgs<float>& args, Workspace ws,
                                        bool null_cublas = false);
// cuda::workspace_bytes(args) for float args, and for a storage type from a shape (fake pointers).
std::size_t trilinear_workspace_bytes(const TrilinearForwardArgs<float>& args);
std::size_t trilinear_workspace_bytes(const TrilinearBackwardArgs<float>& args);
std::size_t trilinear_workspace_bytes(Dtype d, const TrilinearShape& s, bool backward, bool saved_given,
                                      bool check_finite);
// Runs TASN_CUDA_CHECK on a failing status so the test sees the exception it produces.
void raise_cuda_error();

// ---- losses (gpu_runners.cu): the cuda:: ops in the one calling convention (args struct, a
// device workspace of cuda::workspace_bytes(args) bytes), the row-kernel variant forced to
// `kernel` for the call (tasn::cuda::testing::ScopedRowKernel). The options are used as given: with
// check_finite a NaN input or a bad label throws the CUDA path's tasn::InvalidArgument. ----
struct LossResult {
  std::vector<float> loss, grad, grad_teacher;
};
// dloss empty: no upstream gradient (1). Gradient buffers are always passed (teacher if asked).
LossResult distillation(Dtype d, const std::vector<float>& zs, const std::vector<float>& zt, long n,
                        long k, const DistillationOptions& opt, const std::vector<float>& dloss,
                        bool teacher_grad, Kernel kernel);
LossResult cross_entropy(Dtype d, const std::vector<float>& z, const std::vector<long long>& labels,
                         long n, long k, const CrossEntropyOptions& opt,
                         const std::vector<float>& dloss, Kernel kernel);
// The int64 counts of cuda::topk_correct.
std::vector<long long> topk(Dtype d, const std::vector<float>& z, const std::vector<long long>& labels,
                            long n, long k, long max_k, const TopkOptions& opt);
// Validation only: the cuda:: op on exactly these args and workspace, with a null stream. The
// args' pointers are never dereferenced (host or fake addresses): every call must throw before
// any device work. Compares the CUDA error messages with the CPU ones on machines without a GPU.
void loss_validation_only(const DistillationArgs<float>& a, Workspace ws);
void loss_validation_only(const CrossEntropyArgs<float>& a, Workspace ws);
void loss_validation_only(const TopkArgs<float>& a, Workspace ws);
// cuda::workspace_bytes(args).
std::size_t loss_workspace_bytes(const DistillationArgs<float>& a);
std::size_t loss_workspace_bytes(const CrossEntropyArgs<float>& a);
std::size_t loss_workspace_bytes(const TopkArgs<float>& a);

// ---- attention sampler (gpu_runners.cu); maps, marginals and grids are float. Each runner calls
// the cuda:: op in the one calling convention (args struct, a device workspace of
// cuda::workspace_bytes(args) bytes) with options.check_finite = check_finite. ----
// mode 0: structure_map(distinct), 1: detail_map(training), 2: detail_map(evaluation)
std::vector<float> attention_map(Dtype d, const std::vector<float>& m, long N, long C, long h, long w,
                                 int mode, bool distinct, const std::vector<long long>& channels,
                                 unsigned long long seed, std::vector<long long>* chosen, bool check_finite = true);
std::vector<float> upsample(const std::vector<float>& in, long N, long h, long w, long H, long W, bool squared,
                            bool check_finite = true);
struct Marginals {
  std::vector<float> my, mx;
  std::vector<unsigned char> fallback;
};
Marginals marginals(const std::vector<float>& map, long N, long h, long w, long Hs, long Ws, bool check_finite = true);
struct SepGrid {
  std::vector<float> gy, gx;
};
// gy (N, Ho), gx (N, Wo); opt.check_finite as given.
SepGrid sampling_grid(const std::vector<float>& my, const std::vector<float>& mx, long N, long Hs, long Ws, long Ho,
                      long Wo, const GridOptions& opt);
std::vector<float> sample_separable(Dtype d, const std::vector<float>& img, long N, long C, long Hi, long Wi,
                                   const std::vector<float>& gy, const std::vector<float>& gx, long Ho, long Wo,
                                   bool check_finite = true);
std::vector<float> sample_separable_backward(Dtype d, const std::vector<float>& dout, long N, long C, long Hi,
                                             long Wi, const std::vector<float>& gy, const std::vector<float>& gx,
                                             long Ho, long Wo, bool check_finite = true);
std::vector<float> sample_grid(Dtype d, const std::vector<float>& img, long N, long C, long Hi, long Wi,
                               const std::vector<float>& grid, long Ho, long Wo, bool check_finite = true);
struct GridGrads {
  std::vector<float> dimg, dgrid;
};
// attention_sample on the device, out (N, C, Ho, Wo); returns the sampled image (gy, gx and
// fallback through pointers).
std::vector<float> attention_sample(Dtype d, const std::vector<float>& img, long N, long C, long Hi, long Wi,
                                    const std::vector<float>& attention, long Ha, long Wa, long Ho, long Wo,
                                    const AttentionSampleOptions& opt, SepGrid* grid,
                                    std::vector<unsigned char>* fallback);
GridGrads sample_grid_backward(Dtype d, const std::vector<float>& img, const std::vector<float>& grid,
                               const std::vector<float>& dout, long N, long C, long Hi, long Wi, long Ho, long Wo,
                               bool check_finite = true);
// The transposed tap lists the separable backward gathers through (tasn::cuda::detail_sampler::
// build_tap_lists, one launch for both axes), per sample: offsets (S + 1), then the outputs and
// weights of each source index's list (2 O entries; only the first offsets[S] are used).
struct TapLists {
  std::vector<int> y_offsets, y_outputs, x_offsets, x_outputs;
  std::vector<float> y_weights, x_weights;
};
TapLists tap_lists(const std::vector<float>& gy, const std::vector<float>& gx, long N, long Ho, long Wo, long Hi,
                   long Wi);

// ---- attention sampler, validation only: the cuda:: op on exactly these args and workspace, with
// a null stream. The args' pointers are never dereferenced (host or fake addresses): every call
// must throw before any device work. Used to compare the CUDA error messages with the CPU ones
// on machines without a GPU. ----
void sampler_validation_only(const StructureMapArgs<float>& a, Workspace ws);
void sampler_validation_only(const DetailMapArgs<float>& a, Workspace ws);
void sampler_validation_only(const UpsampleArgs<float>& a, Workspace ws);
void sampler_validation_only(const MarginalsArgs<float>& a, Workspace ws);
void sampler_validation_only(const GridArgs<float>& a, Workspace ws);
void sampler_validation_only(const SampleSeparableArgs<float>& a, Workspace ws);
void sampler_validation_only(const SampleSeparableBackwardArgs<float>& a, Workspace ws);
void sampler_validation_only(const SampleGridArgs<float>& a, Workspace ws);
void sampler_validation_only(const SampleGridBackwardArgs<float>& a, Workspace ws);
void sampler_validation_only(const AttentionSampleArgs<float>& a, Workspace ws);
// cuda::workspace_bytes(args) (runs the shape checks: throws like the op for invalid args).
std::size_t sampler_workspace_bytes(const StructureMapArgs<float>& a);
std::size_t sampler_workspace_bytes(const DetailMapArgs<float>& a);
std::size_t sampler_workspace_bytes(const UpsampleArgs<float>& a);
std::size_t sampler_workspace_bytes(const MarginalsArgs<float>& a);
std::size_t sampler_workspace_bytes(const GridArgs<float>& a);
std::size_t sampler_workspace_bytes(const SampleSeparableArgs<float>& a);
std::size_t sampler_workspace_bytes(const SampleSeparableBackwardArgs<float>& a);
std::size_t sampler_workspace_bytes(const SampleGridArgs<float>& a);
std::size_t sampler_workspace_bytes(const SampleGridBackwardArgs<float>& a);
std::size_t sampler_workspace_bytes(const AttentionSampleArgs<float>& a);

}  // namespace tasn::test::gpu
