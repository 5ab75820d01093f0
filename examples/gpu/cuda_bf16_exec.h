// examples/gpu/cuda_bf16_exec.h - --precision bf16 on the GPU: nn::CudaBf16Exec, nn::CudaExec with
// bfloat16 activations.
//
// What is bf16: the modules' activations and their gradients (every convolution, batch-norm, ReLU,
// residual and pooling output), and a copy of the trainable values that convolutions and linear
// layers compute with (refreshed after every update and upload). What stays float: the master
// weights, their gradients, the SGD momentum and update, batch-norm statistics and parameters, the
// images, the library's TASN operators (trilinear attention, maps, sampler: the attention net's
// feature map is widened for them and the sampled images rounded for the backbone), the logits,
// losses and softmax math. Every bf16 result is computed in float and rounded once.
//
//   convolution   cuDNN in bf16 (x, w, y bf16; float accumulation; tensor cores); its bias (the
//                 attention head's) added by a kernel in float; the filter gradient comes out bf16
//                 and is added to the float gradient; the bias gradient is summed in double
//   batch norm    cuDNN's float batch norm on a float copy of x; the output rounded (with the ReLU);
//                 backward from float copies of x and of the ReLU-masked dy, dx rounded once. (cuDNN's
//                 legacy batch norm is not documented for bf16 data; a fused bf16 kernel would save
//                 the copies' traffic: the next step once a GPU measures what they cost.)
//   linear        cublasGemmEx with bf16 operands: logits in float; dy rounded to bf16 for the data
//                 and weight GEMMs; the bias gradient from the float dy
//   element-wise  bf16 kernels (gpu/kernels.h) with the CPU's per-element math; pooling through
//                 float copies (one layer per net)
//
// The CPU twin, with the same roundings, is nn::CpuBf16Exec (nn/bf16_exec.h); the GPU's bf16 step
// is tested against it (TrainerGpu.Bf16*). Checkpoints hold the float master weights: the same
// files as fp32 runs, interchangeable.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <exception>
#include <string>

#include "gpu/cuda_exec.h"
#include "nn/bf16.h"

namespace tasn::nn {

// "" when device `device` can run the bf16 trainer, else why not: a usable device (see
// cuda_device_problem) of compute capability 8.0 or newer (bf16 tensor cores; cuDNN's bf16
// convolutions need them).
inline std::string bf16_device_problem(int device = 0) {
  std::string why = cuda_device_problem(device);
  if (!why.empty()) return why;
  cudaDeviceProp p{};
  const cudaError_t e = cudaGetDeviceProperties(&p, device);
  if (e != cudaSuccess) return std::string("cudaGetDeviceProperties failed: ") + cudaGetErrorString(e);
  if (p.major < 8)
    return std::string("--precision bf16 needs compute capability 8.0 or newer; ") + p.name + " has " +
           std::to_string(p.major) + "." + std::to_string(p.minor) + " (use fp32)";
  return "";
}

class CudaBf16Exec : public CudaExec {
  using Base = CudaExec;
  using T = float;
  using A = bf16;

 public:
  using value_type = float;
  using act_type = bf16;

  explicit CudaBf16Exec(const CudaOptions& o = {}) : Base(o) {
    const std::string why = bf16_device_problem(o.device);
    if (!why.empty()) throw CudaError("CudaBf16Exec: " + why);
  }
  ~CudaBf16Exec() {
    if (weights_) {
      // As the base's release(): during an exception, abort NCCL first (the stream may wait on a
      // collective whose peer is gone), then wait for the queued work that may read the copy.
      if (std::uncaught_exceptions() > 0) abort_comm();
      cudaStreamSynchronize(stream());  // errors ignored in a destructor
      DeviceMemory::release(weights_);
    }
  }

  std::string describe() const {
    std::string d = Base::describe();
    const auto at = d.find(opt_.tf32 ? "TF32" : "FP32");
    if (at != std::string::npos) d.replace(at, 4, "bf16 activations, float master weights");
    return d;
  }

  // ---- parameters: the bf16 copy follows every change of the values ------------------------------
  void bind_params(FlatParams<T>& p) {
    Base::bind_params(p);
    weights_ = static_cast<A*>(DeviceMemory::allocate(256, sizeof(A) * static_cast<std::size_t>(std::max<std::int64_t>(trainable_, 1))));
    refresh_weights();
  }
  template <class Opt>
  void params_to_device(FlatParams<T>& p, Opt* opt) {
    Base::params_to_device(p, opt);
    refresh_weights();
  }
  template <class Opt>
  bool sgd_step(FlatParams<T>& p, Opt& opt, double lr, double rescale) {
    const bool done = Base::sgd_step(p, opt, lr, rescale);
    if (done) refresh_weights();
    return done;
  }
  const A* weight(const Param<T>& p) {
    const std::int64_t at = p.value.ptr() - host_values_;
    TASN_CHECK_ARG(weights_ && at >= 0 && at + p.value.numel() <= trainable_,
                   "CudaBf16Exec::weight: not a trainable parameter of the bound model");
    return weights_ + at;
  }

  // ---- activations ---------------------------------------------------------------------------------
  template <class U = A>
  Tensor4<U> act(std::int64_t n, std::int64_t c, std::int64_t h, std::int64_t w, bool zero = false) {
    return Base::act<U>(n, c, h, w, zero);
  }
  void convert(const T* x, A* y, std::int64_t n) { gpu::convert(stream_, x, y, n); }
  void convert(const A* x, T* y, std::int64_t n) { gpu::convert(stream_, x, y, n); }

  // ---- convolution, batch norm -----------------------------------------------------------------------
  void conv_forward(const ConvGeometry& g, const A* x, const A* w, const T* b, A* y) {
    {
      Scratch s(arena_);
      dnn_->conv_forward(g, x, w, y, s);
    }
    if (b) gpu::bias_add(stream_, g.n, g.cout, g.ho * g.wo, b, y);
  }
  void conv_backward(const ConvGeometry& g, const A* x, const A* w, const A* dy, A* dx, bool accumulate, T* dw, T* db) {
    if (dx) {
      Scratch s(arena_);
      dnn_->conv_backward_data(g, w, dy, dx, accumulate, s);
    }
    if (dw) {
      const auto mark = arena_.mark();
      A* dwb = arena_.alloc<A>(g.w_numel());
      {
        Scratch s(arena_);
        dnn_->conv_backward_filter(g, x, dy, dwb, s);
      }
      gpu::add_widened(stream_, dwb, dw, g.w_numel());
      arena_.rewind(mark);
    }
    if (db) gpu::bias_grad(stream_, g.n, g.cout, g.ho * g.wo, dy, db);
  }
  BnSaved<T, A> bn_forward(std::int64_t N, std::int64_t C, std::int64_t P, const A* x, const T* gamma, const T* beta,
                           T* running_mean, T* running_var, const BatchNormState& s, bool relu_after, A* y) {
    T* stats = arena_.alloc<T>(2 * C);  // kept for the backward; the float copies go below
    const auto mark = arena_.mark();
    const std::int64_t n = N * C * P;
    T* xf = arena_.alloc<T>(n);
    T* yf = arena_.alloc<T>(n);
    gpu::convert(stream_, x, xf, n);
    if (s.training)  // the float context's calls, with this context's statistics buffer
      dnn_->bn_forward_training(N, C, P, s.eps, s.momentum, xf, gamma, beta, running_mean, running_var, stats,
                                stats + C, yf);
    else
      dnn_->bn_forward_inference(N, C, P, s.eps, xf, gamma, beta, running_mean, running_var, yf);
    gpu::convert(stream_, yf, y, n, relu_after);
    arena_.rewind(mark);
    BnSaved<T, A> saved;
    saved.stats = stats;
    saved.training = s.training;
    saved.relu = relu_after;
    saved.y = y;
    return saved;
  }
  void bn_backward(std::int64_t N, std::int64_t C, std::int64_t P, const A* x, const T* gamma, const A* dy,
                   const BnSaved<T, A>& saved, double eps, A* dx, bool accumulate, T* dgamma, T* dbeta) {
    TASN_CHECK_ARG(saved.training, "CudaBf16Exec::bn_backward: the forward ran in evaluation mode (no batch statistics)");
    const auto mark = arena_.mark();
    const std::int64_t n = N * C * P;
    T* d = arena_.alloc<T>(n);
    T* xf = arena_.alloc<T>(n);
    T* dxf = arena_.alloc<T>(n);
    gpu::relu_grad_widened(stream_, saved.y, dy, d, n, saved.relu);
    gpu::convert(stream_, x, xf, n);
    BnSaved<T> f;
    f.stats = saved.stats;
    f.training = true;
    Base::bn_backward(N, C, P, xf, gamma, d, f, eps, dxf, false, dgamma, dbeta);
    gpu::round_into(stream_, dxf, dx, n, accumulate);
    arena_.rewind(mark);
  }

  // ---- element-wise passes, pooling, linear ------------------------------------------------------------
  void relu(const A* x, A* y, std::int64_t n) { gpu::relu(stream_, x, y, n); }
  void relu_grad(const A* y, const A* dy, A* dx, std::int64_t n, bool accumulate) {
    gpu::relu_grad(stream_, y, dy, dx, n, accumulate);
  }
  void add_relu(const A* a, const A* b, A* y, std::int64_t n) { gpu::add_relu(stream_, a, b, y, n); }
  void add_inplace(A* y, const A* x, std::int64_t n) { gpu::add_inplace(stream_, y, x, n); }
  void maxpool2d(std::int64_t NC, std::int64_t H, std::int64_t W, const PoolArgs& a, const A* x, A* y,
                 std::int64_t* argmax) {
    std::int64_t Ho, Wo;
    pool_output(H, W, a, Ho, Wo);
    const auto mark = arena_.mark();
    T* yf = arena_.alloc<T>(NC * Ho * Wo);
    Base::maxpool2d(NC, H, W, a, widen(x, NC * H * W), yf, argmax);
    gpu::convert(stream_, yf, y, NC * Ho * Wo);
    arena_.rewind(mark);
  }
  void maxpool2d_grad(std::int64_t NC, std::int64_t H, std::int64_t W, std::int64_t Ho, std::int64_t Wo,
                      const PoolArgs& a, const A* dy, const std::int64_t* argmax, A* dx) {
    const auto mark = arena_.mark();
    T* dxf = widen(dx, NC * H * W);
    Base::maxpool2d_grad(NC, H, W, Ho, Wo, a, widen(dy, NC * Ho * Wo), argmax, dxf);
    gpu::convert(stream_, dxf, dx, NC * H * W);
    arena_.rewind(mark);
  }
  void global_avgpool(std::int64_t NC, std::int64_t P, const A* x, A* y) {
    const auto mark = arena_.mark();
    T* yf = arena_.alloc<T>(NC);
    Base::global_avgpool(NC, P, widen(x, NC * P), yf);
    gpu::convert(stream_, yf, y, NC);
    arena_.rewind(mark);
  }
  void global_avgpool_grad(std::int64_t NC, std::int64_t P, const A* dy, A* dx, bool accumulate) {
    const auto mark = arena_.mark();
    T* dxf = arena_.alloc<T>(NC * P);
    Base::global_avgpool_grad(NC, P, widen(dy, NC), dxf, false);
    gpu::round_into(stream_, dxf, dx, NC * P, accumulate);
    arena_.rewind(mark);
  }
  void linear(std::int64_t N, std::int64_t I, std::int64_t O, const A* x, const A* w, const T* b, T* y) {
    dnn_->linear_forward(N, I, O, x, w, b, y);
  }
  void linear_grad(std::int64_t N, std::int64_t I, std::int64_t O, const A* x, const A* w, const T* dy, A* dx, T* dw,
                   T* db) {
    const auto mark = arena_.mark();
    A* dyb = arena_.alloc<A>(N * O);
    gpu::convert(stream_, dy, dyb, N * O);
    dnn_->linear_backward(N, I, O, x, w, dyb, dx, true, dw);
    if (db) dnn_->linear_backward(N, I, O, static_cast<const T*>(nullptr), nullptr, dy, nullptr, true, nullptr, db);
    arena_.rewind(mark);
  }

 private:
  // The bf16 copy of the trainable values (stream-ordered after the update or upload).
  void refresh_weights() {
    if (trainable_ > 0) gpu::convert(stream_, values_, weights_, trainable_);
  }
  // A float copy of n bf16 values from the arena (released by the caller's rewind).
  T* widen(const A* x, std::int64_t n) {
    T* y = arena_.alloc<T>(n);
    gpu::convert(stream_, x, y, n);
    return y;
  }

  A* weights_ = nullptr;
};

}  // namespace tasn::nn
