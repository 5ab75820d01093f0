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
TrilinearResult trilinear(Dtype d, const std::vector<float>& x, const std::vector<float>& dm,
                          const TrilinearShape& s, double beta, Kernel k);

std::vector<float> softmax_rows(Dtype d, const std::vector<float>& in, long rows, long len,
                                float scale, Kernel k);
// dx = scale * y * (dy - <y, dy>) + add; y and dx in the storage type, dy and add in float.
std::vector<float> softmax_backward_rows(Dtype d, const std::vector<float>& y,
                                         const std::vector<float>& dy,
                                         const std::vector<float>& add, long rows, long len,
                                         float scale, Kernel k);

// Calls the CUDA forward with fake device pointers (validation must reject the call before any
// device work). Used to test the error paths on machines without a GPU.
void trilinear_forward_validation_only(const TrilinearShape& s, double beta,
                                       std::size_t workspace_bytes, bool null_workspace,
                                       bool null_cublas, bool null_x);
std::size_t trilinear_workspace_bytes(Dtype d, const TrilinearShape& s, bool backward,
                                      bool saved_given);
// Runs TASN_CUDA_CHECK on a failing status so the test sees the exception it produces.
void raise_cuda_error();

// ---- losses (gpu_runners.cu) ----
struct LossResult {
  std::vector<float> loss, grad, grad_teacher;
  std::vector<long long> status;  // cross-entropy: first bad row + 1 (or 0), its label
};
// dloss empty: no upstream gradient (1). Gradient buffers are always passed (teacher if asked).
LossResult distillation(Dtype d, const std::vector<float>& zs, const std::vector<float>& zt, long n,
                        long k, const DistillationOptions& opt, const std::vector<float>& dloss,
                        bool teacher_grad, Kernel kernel);
LossResult cross_entropy(Dtype d, const std::vector<float>& z, const std::vector<long long>& labels,
                         long n, long k, const CrossEntropyOptions& opt,
                         const std::vector<float>& dloss, Kernel kernel);
// Runs cross_entropy on the device, then check_label_status (throws on a bad label).
void cross_entropy_and_check(const std::vector<float>& z, const std::vector<long long>& labels,
                             long n, long k, const CrossEntropyOptions& opt);
std::vector<long long> topk(Dtype d, const std::vector<float>& z, const std::vector<long long>& labels,
                            long n, long k, long max_k, long ignore_index);
// Validation only (fake pointers): must throw before any device work.
void distillation_validation_only(long n, long k, const DistillationOptions& opt,
                                  std::size_t workspace_bytes);

// ---- attention sampler (gpu_runners.cu); maps, marginals and grids are float ----
// mode 0: structure_map(distinct), 1: detail_map(training), 2: detail_map(evaluation)
std::vector<float> attention_map(Dtype d, const std::vector<float>& m, long N, long C, long h, long w,
                                 int mode, bool distinct, const std::vector<long long>& channels,
                                 unsigned long long seed, std::vector<long long>* chosen);
std::vector<float> upsample(const std::vector<float>& in, long N, long h, long w, long H, long W, bool squared);
struct Marginals {
  std::vector<float> my, mx;
  std::vector<unsigned char> fallback;
};
Marginals marginals(const std::vector<float>& map, long N, long h, long w, long Hs, long Ws);
struct SepGrid {
  std::vector<float> gy, gx;
};
SepGrid sampling_grid(const std::vector<float>& my, const std::vector<float>& mx, long N, long Hs, long Ws,
                      const GridOptions& opt);
std::vector<float> sample_separable(Dtype d, const std::vector<float>& img, long N, long C, long Hi, long Wi,
                                   const std::vector<float>& gy, const std::vector<float>& gx, long Ho, long Wo);
std::vector<float> sample_separable_backward(Dtype d, const std::vector<float>& dout, long N, long C, long Hi,
                                             long Wi, const std::vector<float>& gy, const std::vector<float>& gx,
                                             long Ho, long Wo);
std::vector<float> sample_grid(Dtype d, const std::vector<float>& img, long N, long C, long Hi, long Wi,
                               const std::vector<float>& grid, long Ho, long Wo);
struct GridGrads {
  std::vector<float> dimg, dgrid;
};
// attention_sample on the device; returns the sampled image (gy, gx and fallback through pointers).
std::vector<float> attention_sample(Dtype d, const std::vector<float>& img, long N, long C, long Hi, long Wi,
                                    const std::vector<float>& attention, long Ha, long Wa,
                                    const AttentionSampleOptions& opt, SepGrid* grid,
                                    std::vector<unsigned char>* fallback);
GridGrads sample_grid_backward(Dtype d, const std::vector<float>& img, const std::vector<float>& grid,
                               const std::vector<float>& dout, long N, long C, long Hi, long Wi, long Ho, long Wo);

// ---- robustness (test_robustness_gpu.cpp): validation only, with fake device pointers that are
// never dereferenced; each call must throw before any device work ----
void attention_sample_validation_only(long N, long C, long Hi, long Wi, long Ha, long Wa,
                                      const AttentionSampleOptions& opt);
void sampling_grid_validation_only(long N, long Hs, long Ws, const GridOptions& opt);
// general: sample_grid (forward and backward); else sample_separable (forward and backward)
void sampling_validation_only(bool general, bool backward, long N, long C, long Hi, long Wi, long Ho, long Wo);
std::size_t attention_sample_workspace_bytes(long N, long Hi, long Wi, const AttentionSampleOptions& opt);
std::size_t sample_separable_backward_workspace_bytes(long N, long C, long Hi, long Wi, long Ho, long Wo);
std::size_t sample_grid_backward_workspace_bytes(long N, long C, long Hi, long Wi);
void cross_entropy_validation_only(long n, long k, const CrossEntropyOptions& opt);

}  // namespace tasn::test::gpu
