// examples/gpu/kernels.h - the example trainer's small CUDA kernels (examples/gpu/kernels.cu): ReLU,
// the residual join, pooling, bilinear resize, the SGD update and a non-finite check, float only,
// on raw device pointers. The GPU execution context (gpu/cuda_exec.h) calls them; convolutions,
// batch norm and GEMMs are cuDNN / cuBLAS (gpu/dnn.cpp).
//
// Every launcher is asynchronous on `stream` (it never synchronises), validates its sizes on the
// host first (tasn::InvalidArgument naming the argument), checks the launch
// (tasn::CudaError) and launches nothing when there is nothing to do. The per-element math is that
// of the CPU layers (nn/elementwise.h, shared with nn/layers.h and train/optim.h), so results match
// the CPU element for element (up to FMA contraction, which nvcc and the host compiler may apply
// differently to the same expression); every reduction has a fixed order, so results are
// deterministic run to run. Host header: no Eigen, no CUDA kernels.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "nn/bf16.h"

namespace tasn::nn::gpu {

// y = max(x, 0) (y may be x); NaN propagates.
void relu(cudaStream_t stream, const float* x, float* y, std::int64_t n);
// dx = dy where y > 0, else 0 (dx += that when accumulate); dx may be dy.
void relu_grad(cudaStream_t stream, const float* y, const float* dy, float* dx, std::int64_t n, bool accumulate);
// y = max(a + b, 0) (y may be a or b): a residual block's output.
void add_relu(cudaStream_t stream, const float* a, const float* b, float* y, std::int64_t n);
// y += x.
void add_inplace(cudaStream_t stream, float* y, const float* x, std::int64_t n);
// y += alpha x.
void axpy(cudaStream_t stream, std::int64_t n, float alpha, const float* x, float* y);
// p[i] = v.
void fill(cudaStream_t stream, float* p, std::int64_t n, float v);

// Max pooling of NC planes (H, W) -> (Ho, Wo) = the pooling extents (nn::pool_extent), as
// nn::maxpool2d: padding never wins, NaN wins, the first maximum wins ties. argmax (may be null):
// per output, the flat index of the winner into the whole input (NC * H * W).
void maxpool2d(cudaStream_t stream, std::int64_t NC, std::int64_t H, std::int64_t W, std::int64_t kernel,
               std::int64_t stride, std::int64_t padding, const float* x, float* y, std::int64_t* argmax);
// dx (NC, H, W) += the gradient dy (NC, Ho, Wo) routed through argmax (from maxpool2d with the same
// geometry). One thread per input element gathers the dy of the windows that chose it, in output
// order: deterministic, no atomics, the CPU scatter's rounding (nn::maxpool_grad_gather).
void maxpool2d_grad(cudaStream_t stream, std::int64_t NC, std::int64_t H, std::int64_t W, std::int64_t Ho,
                    std::int64_t Wo, std::int64_t kernel, std::int64_t stride, std::int64_t padding, const float* dy,
                    const std::int64_t* argmax, float* dx);

// y[nc] = mean of plane nc (NC planes of P values). One warp per plane, summed in double in a fixed
// order (deterministic; agrees with the CPU's double sum to the float rounding of the mean).
void global_avgpool(cudaStream_t stream, std::int64_t NC, std::int64_t P, const float* x, float* y);
// dx (NC planes of P) = dy[nc] / P broadcast over plane nc (dx += that when accumulate).
void global_avgpool_grad(cudaStream_t stream, std::int64_t NC, std::int64_t P, const float* dy, float* dx,
                         bool accumulate);

// NC planes (H, W) -> (Ho, Wo), bilinear, as nn::resize_bilinear (taps in double, blend in float).
void resize_bilinear(cudaStream_t stream, std::int64_t NC, std::int64_t H, std::int64_t W, std::int64_t Ho,
                     std::int64_t Wo, bool align_corners, const float* x, float* y);

// One SGD update of n parameters (nn::sgd_step, PyTorch's form): with a momentum buffer v,
// v = momentum v + (g rescale + wd w), w -= lr v; with v null, w -= lr (g rescale + wd w) (then
// momentum must be 0: a momentum without its buffer is refused).
void sgd(cudaStream_t stream, std::int64_t n, float* w, const float* g, float* v, float lr, float momentum,
         float wd, float rescale);

// Sets *flag (device memory) to 1 when any of the n values is NaN or infinite; never clears it (the
// caller zeroes it, and may check several buffers into one flag).
void nonfinite_any(cudaStream_t stream, const float* p, std::int64_t n, int* flag);

// ---- bf16 storage (--precision bf16, gpu/cuda_bf16_exec.h) ----------------------------------------
// The same per-element math on values loaded as float, each result rounded once to bf16 (round to
// nearest even: nn::float_to_bf16, the CPU emulation's function). Pooling in bf16 runs the float
// kernels above on converted copies (gpu/cuda_bf16_exec.h), as the CPU emulation does.
void relu(cudaStream_t stream, const bf16* x, bf16* y, std::int64_t n);
void relu_grad(cudaStream_t stream, const bf16* y, const bf16* dy, bf16* dx, std::int64_t n, bool accumulate);
void add_relu(cudaStream_t stream, const bf16* a, const bf16* b, bf16* y, std::int64_t n);
void add_inplace(cudaStream_t stream, bf16* y, const bf16* x, std::int64_t n);
// y = bf16(x), or bf16(max(x, 0)) when relu (NaN stays NaN).
void convert(cudaStream_t stream, const float* x, bf16* y, std::int64_t n, bool relu = false);
// y = float(x) (exact).
void convert(cudaStream_t stream, const bf16* x, float* y, std::int64_t n);
// y = bf16(x + float(y)) when accumulate, else bf16(x): a float result stored into a bf16 tensor.
void round_into(cudaStream_t stream, const float* x, bf16* y, std::int64_t n, bool accumulate);
// y += float(x): a bf16 weight gradient added to the float gradient.
void add_widened(cudaStream_t stream, const bf16* x, float* y, std::int64_t n);
// d = relu_grad_value(y, dy) when relu, else dy, as float: the gradient a float batch norm's
// backward reads from a bf16 output y and its bf16 gradient dy.
void relu_grad_widened(cudaStream_t stream, const bf16* y, const bf16* dy, float* d, std::int64_t n, bool relu);
// y (N, C, P) = bf16(y + b[c]): a convolution's bias, b float.
void bias_add(cudaStream_t stream, std::int64_t N, std::int64_t C, std::int64_t P, const float* b, bf16* y);
// db[c] += the sum of dy over (N, P) for channel c, in double in a fixed order (deterministic).
void bias_grad(cudaStream_t stream, std::int64_t N, std::int64_t C, std::int64_t P, const bf16* dy, float* db);

}  // namespace tasn::nn::gpu
