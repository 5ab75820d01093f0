// examples/nn/bf16_exec.h - --precision bf16 on the CPU: nn::CpuBf16Exec, the CPU context with
// bfloat16 activations, emulated.
//
// The modules' activations (every convolution, batch-norm, ReLU, pooling output and their
// gradients) are stored as nn::bf16 and the convolutions and linear layers compute with a bf16 copy
// of the weights; everything else stays float: the master weights, their gradients and the SGD
// update, batch-norm statistics, the library's TASN operators (trilinear attention, maps, sampler
// with its float images), the logits and the losses. Each layer converts its bf16 inputs to float,
// runs the float layer of CpuExec (oneDNN or the reference) and rounds its output once (round to
// nearest even) - the semantics of a GPU bf16 layer (bf16 operands, float accumulation, one rounding
// per stored tensor), as nn::CudaBf16Exec implements them on the device (gpu/cuda_bf16_exec.h):
//
//   convolution      y = bf16(conv(x, w_bf16)), with a bias bf16(that + b);  dx = bf16(conv_data(dy, w_bf16) [+ dx]);
//                    dw += float(bf16(conv_filter(x, dy)))  (cuDNN writes a bf16 weight gradient);
//                    db += sum(dy) (the float layer's sum here, a double sum on the GPU)
//   batch norm       statistics and normalisation in float, y = bf16(relu?(bn(x))); backward in
//                    float from the bf16 x, dy and output (the ReLU mask), dx rounded once
//   linear           logits (float) = x_bf16 w_bf16^T + b; dx = bf16(bf16(dy) w_bf16 + dx);
//                    dw += bf16(dy)^T x_bf16 in float; db += column sums of the float dy
//   ReLU, residual join, pooling: float math on the loaded values, one rounding
//
// This is an emulation: every layer pays two conversions, so it is slower than float, not faster.
// It exists to measure what bf16 storage does to training (docs/gpu.md, "Precision") on any
// machine, and as the CPU reference the GPU's bf16 step is tested against (TrainerGpu.Bf16*).
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "nn/bf16.h"
#include "nn/exec.h"

namespace tasn::nn {

// Host array conversions (parallel over blocks).
inline void to_float(const bf16* x, float* y, std::int64_t n) {
  parallel_for_blocks(n, [&](std::int64_t lo, std::int64_t hi) {
    for (std::int64_t i = lo; i < hi; ++i) y[i] = bf16_to_float(x[i]);
  });
}
inline void to_bf16(const float* x, bf16* y, std::int64_t n) {
  parallel_for_blocks(n, [&](std::int64_t lo, std::int64_t hi) {
    for (std::int64_t i = lo; i < hi; ++i) y[i] = float_to_bf16(x[i]);
  });
}

class CpuBf16Exec : public CpuExec<float> {
  using Base = CpuExec<float>;
  using T = float;
  using A = bf16;

 public:
  using value_type = float;
  using act_type = bf16;

  explicit CpuBf16Exec(Backend b = default_backend<float>()) : Base(b) {}

  std::string describe() const {
    std::string d = Base::describe();
    d.insert(d.size() - 1, ", bf16 activations emulated");
    return d;
  }

  // The start of a step: the arena released, and the bf16 copy of the weights taken from the
  // current values (the optimiser updated them on the host since the last step).
  void begin_step() {
    Base::begin_step();
    TASN_CHECK_ARG(params_ != nullptr, "CpuBf16Exec: parameters not bound (bind_params)");
    weights_.resize(static_cast<std::size_t>(params_->trainable_size()));
    to_bf16(params_->values(), weights_.data(), params_->trainable_size());
  }
  void bind_params(FlatParams<T>& p) { params_ = &p; }

  template <class U = A>
  Tensor4<U> act(std::int64_t n, std::int64_t c, std::int64_t h, std::int64_t w, bool zero = false) {
    return Base::act<U>(n, c, h, w, zero);
  }

  // The bf16 copy of a trainable parameter's values (taken at begin_step).
  const A* weight(const Param<T>& p) {
    TASN_CHECK_ARG(params_ != nullptr, "CpuBf16Exec::weight: parameters not bound (bind_params)");
    const std::int64_t at = p.value.ptr() - params_->values();
    TASN_CHECK_ARG(at >= 0 && at + p.value.numel() <= params_->trainable_size(),
                   "CpuBf16Exec::weight: not a trainable parameter of the bound model");
    return weights_.data() + at;
  }

  void convert(const T* x, A* y, std::int64_t n) { to_bf16(x, y, n); }
  void convert(const A* x, T* y, std::int64_t n) { to_float(x, y, n); }

  void conv_forward(const ConvGeometry& g, const A* x, const A* w, const T* b, A* y) {
    const auto mark = arena().mark();
    T* yf = arena().alloc<T>(g.y_numel());
    Base::conv_forward(g, widen(x, g.x_numel()), widen(w, g.w_numel()), nullptr, yf);
    if (b) {  // the GPU's order: the convolution rounded, then its float bias added and rounded again
      const std::int64_t P = g.ho * g.wo;
      each(g.y_numel(), [&](std::int64_t i) { yf[i] = bf16_to_float(float_to_bf16(yf[i])) + b[(i / P) % g.cout]; });
    }
    to_bf16(yf, y, g.y_numel());
    arena().rewind(mark);
  }
  void conv_backward(const ConvGeometry& g, const A* x, const A* w, const A* dy, A* dx, bool accumulate, T* dw, T* db) {
    const auto mark = arena().mark();
    T* dxf = !dx ? nullptr : accumulate ? widen(dx, g.x_numel()) : arena().alloc<T>(g.x_numel());
    T* dwf = dw ? arena().zeros<T>(g.w_numel()) : nullptr;
    Base::conv_backward(g, widen(x, g.x_numel()), widen(w, g.w_numel()), widen(dy, g.y_numel()), dxf, accumulate, dwf,
                        db);
    if (dx) to_bf16(dxf, dx, g.x_numel());
    if (dw)  // the weight gradient arrives as bf16 (cuDNN's bf16 filter gradient), added in float
      for (std::int64_t i = 0; i < g.w_numel(); ++i) dw[i] += bf16_to_float(float_to_bf16(dwf[i]));
    arena().rewind(mark);
  }

  BnSaved<T, A> bn_forward(std::int64_t N, std::int64_t C, std::int64_t P, const A* x, const T* gamma, const T* beta,
                           T* running_mean, T* running_var, const BatchNormState& s, bool relu_after, A* y) {
    T* stats = arena().alloc<T>(2 * C);  // kept for the backward (the rest is released below)
    const auto mark = arena().mark();
    const std::int64_t n = N * C * P;
    T* yf = arena().alloc<T>(n);
    const BnSaved<T> f =
        Base::bn_forward(N, C, P, widen(x, n), gamma, beta, running_mean, running_var, s, false, yf);
    std::memcpy(stats, f.stats, sizeof(T) * static_cast<std::size_t>(2 * C));
    parallel_for_blocks(n, [&](std::int64_t lo, std::int64_t hi) {
      for (std::int64_t i = lo; i < hi; ++i) y[i] = float_to_bf16(relu_after ? relu_value(yf[i]) : yf[i]);
    });
    arena().rewind(mark);
    BnSaved<T, A> saved;
    saved.stats = stats;
    saved.training = f.training;
    saved.relu = relu_after;
    saved.y = y;
    saved.synced = f.synced;
    return saved;
  }
  void bn_backward(std::int64_t N, std::int64_t C, std::int64_t P, const A* x, const T* gamma, const A* dy,
                   const BnSaved<T, A>& saved, double eps, A* dx, bool accumulate, T* dgamma, T* dbeta) {
    const auto mark = arena().mark();
    const std::int64_t n = N * C * P;
    T* d = arena().alloc<T>(n);  // the ReLU's gradient in float from the bf16 output and dy
    parallel_for_blocks(n, [&](std::int64_t lo, std::int64_t hi) {
      for (std::int64_t i = lo; i < hi; ++i)
        d[i] = saved.relu ? relu_grad_value(bf16_to_float(saved.y[i]), bf16_to_float(dy[i])) : bf16_to_float(dy[i]);
    });
    BnSaved<T> f;
    f.stats = saved.stats;
    f.training = saved.training;
    f.synced = saved.synced;
    T* dxf = accumulate ? widen(dx, n) : arena().alloc<T>(n);
    Base::bn_backward(N, C, P, widen(x, n), gamma, d, f, eps, dxf, accumulate, dgamma, dbeta);
    to_bf16(dxf, dx, n);
    arena().rewind(mark);
  }

  void relu(const A* x, A* y, std::int64_t n) {
    each(n, [&](std::int64_t i) { y[i] = float_to_bf16(relu_value(bf16_to_float(x[i]))); });
  }
  void relu_grad(const A* y, const A* dy, A* dx, std::int64_t n, bool accumulate) {
    each(n, [&](std::int64_t i) {
      const T g = relu_grad_value(bf16_to_float(y[i]), bf16_to_float(dy[i]));
      dx[i] = float_to_bf16(accumulate ? bf16_to_float(dx[i]) + g : g);
    });
  }
  void add_relu(const A* a, const A* b, A* y, std::int64_t n) {
    each(n, [&](std::int64_t i) { y[i] = float_to_bf16(add_relu_value(bf16_to_float(a[i]), bf16_to_float(b[i]))); });
  }
  void add_inplace(A* y, const A* x, std::int64_t n) {
    each(n, [&](std::int64_t i) { y[i] = float_to_bf16(bf16_to_float(y[i]) + bf16_to_float(x[i])); });
  }
  void maxpool2d(std::int64_t NC, std::int64_t H, std::int64_t W, const PoolArgs& a, const A* x, A* y,
                 std::int64_t* argmax) {
    std::int64_t Ho, Wo;
    pool_output(H, W, a, Ho, Wo);
    const auto mark = arena().mark();
    T* yf = arena().alloc<T>(NC * Ho * Wo);
    Base::maxpool2d(NC, H, W, a, widen(x, NC * H * W), yf, argmax);
    to_bf16(yf, y, NC * Ho * Wo);
    arena().rewind(mark);
  }
  void maxpool2d_grad(std::int64_t NC, std::int64_t H, std::int64_t W, std::int64_t Ho, std::int64_t Wo,
                      const PoolArgs& a, const A* dy, const std::int64_t* argmax, A* dx) {
    const auto mark = arena().mark();
    T* dxf = widen(dx, NC * H * W);
    Base::maxpool2d_grad(NC, H, W, Ho, Wo, a, widen(dy, NC * Ho * Wo), argmax, dxf);
    to_bf16(dxf, dx, NC * H * W);
    arena().rewind(mark);
  }
  void global_avgpool(std::int64_t NC, std::int64_t P, const A* x, A* y) {
    const auto mark = arena().mark();
    T* yf = arena().alloc<T>(NC);
    Base::global_avgpool(NC, P, widen(x, NC * P), yf);
    to_bf16(yf, y, NC);
    arena().rewind(mark);
  }
  void global_avgpool_grad(std::int64_t NC, std::int64_t P, const A* dy, A* dx, bool accumulate) {
    const auto mark = arena().mark();
    T* dxf = accumulate ? widen(dx, NC * P) : arena().alloc<T>(NC * P);
    Base::global_avgpool_grad(NC, P, widen(dy, NC), dxf, accumulate);
    to_bf16(dxf, dx, NC * P);
    arena().rewind(mark);
  }
  // Logits in float from bf16 features and weights.
  void linear(std::int64_t N, std::int64_t I, std::int64_t O, const A* x, const A* w, const T* b, T* y) {
    const auto mark = arena().mark();
    Base::linear(N, I, O, widen(x, N * I), widen(w, O * I), b, y);
    arena().rewind(mark);
  }
  // dx (bf16, may be null) +=, dw +=, db += (float): the GEMMs read dy rounded to bf16 (as a bf16
  // GEMM on the GPU), the bias gradient sums the float dy.
  void linear_grad(std::int64_t N, std::int64_t I, std::int64_t O, const A* x, const A* w, const T* dy, A* dx, T* dw,
                   T* db) {
    const auto mark = arena().mark();
    T* dyr = arena().alloc<T>(N * O);
    for (std::int64_t i = 0; i < N * O; ++i) dyr[i] = bf16_to_float(float_to_bf16(dy[i]));
    T* dxf = dx ? widen(dx, N * I) : nullptr;
    const T *xf = widen(x, N * I), *wf = widen(w, O * I);
    Base::linear_grad(N, I, O, xf, wf, dyr, dxf, dw, nullptr);
    if (db) Base::linear_grad(N, I, O, xf, wf, dy, nullptr, nullptr, db);  // from the float dy
    if (dx) to_bf16(dxf, dx, N * I);
    arena().rewind(mark);
  }

 private:
  // A float copy of n bf16 values from the arena (released by the caller's rewind).
  T* widen(const A* x, std::int64_t n) {
    T* y = arena().alloc<T>(n);
    to_float(x, y, n);
    return y;
  }
  template <class F>
  static void each(std::int64_t n, F&& f) {
    parallel_for_blocks(n, [&](std::int64_t lo, std::int64_t hi) {
      for (std::int64_t i = lo; i < hi; ++i) f(i);
    });
  }

  FlatParams<T>* params_ = nullptr;
  std::vector<A> weights_;
};

}  // namespace tasn::nn
