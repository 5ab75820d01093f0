// examples/gpu/dnn.h - the example trainer's GPU convolution, batch norm and linear layers: cuDNN 9
// (its legacy convolution and batch-norm API, still present in 9.x and exported by libcudnn.so.9)
// and cuBLAS, on NCHW float tensors in device memory. The GPU twin of the CPU backends of
// examples/nn/exec.h (oneDNN, the Eigen reference): same arguments, same accumulation rules, same
// PyTorch semantics; tests/test_trainer_dnn_gpu.cpp holds it to the reference layers.
//
// Every call is asynchronous on the stream given to set_stream() and never synchronises, except the
// first call of a convolution geometry in benchmark mode (cudnnFind*Ex times the candidates).
// Descriptors and the chosen algorithms are cached per geometry: after the first call of a geometry
// (and direction) a call allocates nothing and searches nothing. Workspace comes from the caller's
// DeviceScratch (the step's arena), requested once per call.
//
// Host header: no Eigen (nn/layers.h, which defines ConvGeometry, is included by dnn.cpp only), so
// nvcc-compiled files may include it too.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <cudnn.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "nn/bf16.h"
#include "tasn/core/common.h"

namespace tasn::nn {
struct ConvGeometry;  // nn/layers.h: n, cin, h, w, cout, kh, kw, ho, wo, a{stride, padding, dilation}
}

namespace tasn::nn::gpu::detail {
// Throws tasn::CudaError naming the call, cuDNN's status and its last error message, file:line.
[[noreturn]] void throw_cudnn(cudnnStatus_t status, const char* call, const char* file, int line);
}  // namespace tasn::nn::gpu::detail

// Checks a cuDNN call; throws tasn::CudaError with cudnnGetErrorString, cuDNN's own explanation
// (cudnnGetLastErrorString) and the call.
#define TASN_CUDNN_CHECK(call)                                                      \
  do {                                                                              \
    const cudnnStatus_t tasn_cudnn_st_ = (call);                                    \
    if (tasn_cudnn_st_ != CUDNN_STATUS_SUCCESS)                                     \
      ::tasn::nn::gpu::detail::throw_cudnn(tasn_cudnn_st_, #call, __FILE__, __LINE__); \
  } while (0)

namespace tasn::nn::gpu {

// Device memory from the step's arena, valid until the Dnn call that asked for it returns (the
// work queued on the stream may still use it: the arena is stream-ordered). A Dnn call asks at
// most once, for all it needs; the block must be 256-byte aligned.
struct DeviceScratch {
  virtual void* get(std::size_t bytes) = 0;

 protected:
  ~DeviceScratch() = default;
};

// How a convolution geometry's algorithms are chosen, on its first call per direction.
enum class ConvSearch {
  // cudnnGet*Algorithm_v7: cuDNN's heuristic ranking; no timing, no synchronisation, the same
  // choice on every run of a given GPU and cuDNN (so a run's numbers repeat). The default, as
  // PyTorch's (torch.backends.cudnn.benchmark = False).
  heuristic,
  // cudnnFind*AlgorithmEx: every candidate that fits the workspace cap is run and timed on the
  // call's own data (outputs that must not be overwritten are replaced by scratch); the fastest
  // wins. Synchronises once per geometry and direction; the choice may differ between runs.
  benchmark,
};

// What was chosen for one convolution geometry ("" for a direction not run yet).
struct ConvAlgorithms {
  std::string forward, backward_data, backward_filter;  // e.g. "IMPLICIT_PRECOMP_GEMM (FMA)"
  std::size_t forward_workspace = 0, backward_data_workspace = 0, backward_filter_workspace = 0;
  bool backward_data_deterministic = false, backward_filter_deterministic = false;
  // A transform algorithm (FFT, Winograd) whose rounding error is not that of a plain sum.
  bool forward_transform = false, backward_data_transform = false, backward_filter_transform = false;
};

// One per execution context: owns a cuDNN and a cuBLAS handle, the descriptor and algorithm cache,
// and a small device vector of ones (the linear layer's bias row). Not copyable, not thread-safe.
class Dnn {
 public:
  static constexpr std::size_t kDefaultWorkspaceCap = std::size_t(512) << 20;

  Dnn();  // cuDNN + cuBLAS handles on the current device; throws tasn::CudaError without one
  ~Dnn();
  Dnn(const Dnn&) = delete;
  Dnn& operator=(const Dnn&) = delete;

  void set_stream(cudaStream_t s);  // both handles
  cudaStream_t stream() const;
  // TF32 tensor-core math for convolutions (cuDNN math type) and GEMMs (cuBLAS math mode). Default
  // off: plain FP32 (cuDNN's FMA math; its default math would allow TF32 on Ampere and newer).
  void set_tf32(bool on);
  bool tf32() const;
  // Largest workspace an algorithm may use (default kDefaultWorkspaceCap); forgets the choices made.
  void set_workspace_cap(std::size_t bytes);
  void set_search(ConvSearch s);  // forgets the choices made
  cublasHandle_t cublas() const;
  cudnnHandle_t cudnn() const;

  // ---- convolution: cross-correlation, groups 1, NCHW float; g.ho, g.wo must match the formula ----
  // y = conv(x, w) + b (b may be null).
  void conv_forward(const ConvGeometry& g, const float* x, const float* w, const float* b, float* y,
                    DeviceScratch& ws);
  // dx (+)= the input gradient (written when !accumulate).
  void conv_backward_data(const ConvGeometry& g, const float* w, const float* dy, float* dx, bool accumulate,
                          DeviceScratch& ws);
  // dw += the weight gradient (dw may be null: none), db += the bias gradient (may be null).
  void conv_backward_weights(const ConvGeometry& g, const float* x, const float* dy, float* dw, float* db,
                             DeviceScratch& ws);

  // ---- the same in bf16 storage (--precision bf16): x, w, y and their gradients bf16, float
  // accumulation, tensor-core math (cuDNN's PSEUDO_BFLOAT16 configuration); no bias (the context
  // adds it with its own kernel, the bias being float). The filter gradient is WRITTEN (bf16; the
  // context adds it to the float gradient).
  void conv_forward(const ConvGeometry& g, const bf16* x, const bf16* w, bf16* y, DeviceScratch& ws);
  void conv_backward_data(const ConvGeometry& g, const bf16* w, const bf16* dy, bf16* dx, bool accumulate,
                          DeviceScratch& ws);
  void conv_backward_filter(const ConvGeometry& g, const bf16* x, const bf16* dy, bf16* dw, DeviceScratch& ws);

  // ---- batch norm over x (N, C, P), per channel, spatial ----
  // Training: y from the batch statistics (biased variance); saved_mean, saved_invstd (C each) =
  // mean and 1 / sqrt(var + eps) for bn_backward; running_mean / running_var (both or neither) =
  // (1 - momentum) running + momentum * batch, the variance unbiased (M / (M - 1), M = N P): PyTorch's
  // rule, which cuDNN's exponentialAverageFactor = momentum implements. Needs M > 1.
  void bn_forward_training(std::int64_t N, std::int64_t C, std::int64_t P, double eps, double momentum,
                           const float* x, const float* gamma, const float* beta, float* running_mean,
                           float* running_var, float* saved_mean, float* saved_invstd, float* y);
  // Evaluation: y from the running statistics.
  void bn_forward_inference(std::int64_t N, std::int64_t C, std::int64_t P, double eps, const float* x,
                            const float* gamma, const float* beta, const float* running_mean,
                            const float* running_var, float* y);
  // Gradient of bn_forward_training (batch statistics saved by it): dx (+)= (written when
  // !accumulate), dgamma +=, dbeta += (all three required: cuDNN computes them together).
  void bn_backward(std::int64_t N, std::int64_t C, std::int64_t P, double eps, const float* x, const float* gamma,
                   const float* dy, const float* saved_mean, const float* saved_invstd, float* dx, bool accumulate,
                   float* dgamma, float* dbeta);

  // ---- linear: y (N, O) = x (N, I) W^T + b, W (O, I) row-major, b (O) may be null ----
  void linear_forward(std::int64_t N, std::int64_t I, std::int64_t O, const float* x, const float* w, const float* b,
                      float* y);
  // dx (+)= dy W (may be null; written when !accumulate), dw += dy^T x (may be null), db += the
  // column sums of dy (may be null).
  void linear_backward(std::int64_t N, std::int64_t I, std::int64_t O, const float* x, const float* w,
                       const float* dy, float* dx, bool accumulate, float* dw, float* db);

  // bf16 operands, float accumulation (cublasGemmEx, CUBLAS_COMPUTE_32F): y float; dx bf16 (+)=,
  // dw (float) +=. The bias gradient is the float version's (db from a float dy).
  void linear_forward(std::int64_t N, std::int64_t I, std::int64_t O, const bf16* x, const bf16* w, const float* b,
                      float* y);
  void linear_backward(std::int64_t N, std::int64_t I, std::int64_t O, const bf16* x, const bf16* w, const bf16* dy,
                       bf16* dx, bool accumulate, float* dw);

  // ---- introspection (tests, logs) ----
  // For the current TF32 setting, or the bf16 plans.
  ConvAlgorithms conv_algorithms(const ConvGeometry& g, bool bf16 = false) const;
  std::int64_t conv_searches() const;    // algorithm searches so far (one per geometry and direction)
  std::int64_t cached_geometries() const;  // convolution + batch-norm descriptor sets

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace tasn::nn::gpu
