// examples/nn/exec.h - the CPU execution context the trainer's modules run on: the step's arena
// (activations, what backward keeps, layer scratch; reset at the start of every step, so a
// warmed-up step allocates nothing) and the backend that runs convolution and batch norm:
//   Backend::OneDnn     oneDNN primitives (nn/dnnl_layers.h), float only; the default where built;
//   Backend::Reference  the Eigen im2col layers of nn/layers.h, float and double (the tests' oracle).
// Everything else (ReLU, pooling, linear, resize, the TASN operators) is the same code on both.
//
// The same interface on the GPU is nn::CudaExec (examples/gpu/cuda_exec.h: stream, cuDNN / cuBLAS,
// a device arena, device copies of the parameters). Modules and models take the context as a
// template parameter and do ALL their work through it: the layers below, the element-wise passes,
// the library's operators (run with the context's workspaces), parameter pointers (value() /
// grad()), and moving results to the host (fetch() + synchronize()). So one model source runs on
// both; only the context knows where memory lives.
//
// Two types per context: value_type (parameters, gradients, the library operators' tensors, logits,
// losses) and act_type (the modules' activations; act() allocates them, weight() gives the weights
// convolutions and linear layers compute with). Here both are T; the bf16 contexts
// (nn/bf16_exec.h, gpu/cuda_bf16_exec.h) store activations and a weight copy as nn::bf16.
#pragma once

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <limits>
#include <cstring>
#include <memory>
#include <string>
#include <type_traits>

#include "dist/comm.h"
#include "nn/arena.h"
#include "nn/elementwise.h"
#include "nn/layers.h"
#include "nn/params.h"
#include "tasn/attention_sampler.h"
#include "tasn/core/tensor.h"
#include "tasn/losses.h"
#include "tasn/trilinear_attention.h"

#if defined(TASN_HAVE_DNNL)
#include "nn/dnnl_layers.h"
#endif

namespace tasn::nn {

enum class Backend { Reference, OneDnn };

inline const char* to_string(Backend b) { return b == Backend::OneDnn ? "onednn" : "reference"; }

// True when this build has the oneDNN backend.
constexpr bool onednn_built() {
#if defined(TASN_HAVE_DNNL)
  return true;
#else
  return false;
#endif
}

// The best backend this build has for T.
template <class T>
constexpr Backend default_backend() {
  return onednn_built() && std::is_same_v<T, float> ? Backend::OneDnn : Backend::Reference;
}

// "reference", "onednn" or "auto" (the default backend); a clear error for anything else, or for
// "onednn" in a build without it.
inline Backend parse_backend(const std::string& s) {
  if (s == "auto") return default_backend<float>();
  if (s == "reference") return Backend::Reference;
  if (s == "onednn") {
    TASN_CHECK_ARG(onednn_built(), "--backend onednn: this build has no oneDNN (install libdnnl-dev and rebuild, "
                                   "or use --backend reference)");
    return Backend::OneDnn;
  }
  throw InvalidArgument("--backend must be auto, onednn or reference, got \"" + s + "\"");
}

// What a batch norm forward keeps for its backward: per-channel statistics (2C values: the
// backends keep different ones: mean + 1/sqrt(var + eps) for the reference, mean + variance for
// oneDNN) and, with a fused ReLU, the output (the reference's mask) or oneDNN's bit mask. T: the
// statistics' type, A: the activations' (bf16 contexts keep float statistics).
template <class T, class A = T>
struct BnSaved {
  T* stats = nullptr;
  bool training = true, relu = false;
  const A* y = nullptr;             // the forward's output (reference: its sign is the ReLU mask)
  void* relu_workspace = nullptr;   // oneDNN's fused-ReLU mask (training)
  bool synced = false;              // synchronised batch norm: the reference statistics over all ranks
};

template <class T>
class CpuExec {
 public:
  using value_type = T;  // parameters, gradients, losses, the library operators' tensors
  using act_type = T;    // activations of the modules (nn/bf16_exec.h: bf16)
  // Host memory: the model may read results in place; the library operators check their inputs
  // for NaN/Inf (a device context defers that to the one read-back of the step).
  static constexpr bool kHostMemory = true;

  explicit CpuExec(Backend b = default_backend<T>()) : backend_(b) {
    TASN_CHECK_ARG(b == Backend::Reference || (onednn_built() && std::is_same_v<T, float>),
                   "CpuExec: the oneDNN backend needs float and a build with oneDNN");
#if defined(TASN_HAVE_DNNL)
    if constexpr (std::is_same_v<T, float>)
      if (b == Backend::OneDnn) dnnl_ = std::make_unique<dnnl::Context>();
#endif
  }

  Backend backend() const { return backend_; }
  Arena& arena() { return arena_; }
  // The start of a step (or of an evaluation batch): everything from the arena is released.
  void begin_step() { arena_.reset(); }

  // Activations from the arena (uninitialised, or zero-filled): act() of the activation type by
  // default, mat() of the value type (logits, their gradients); either of any type U.
  template <class U = T>
  Tensor4<U> act(std::int64_t n, std::int64_t c, std::int64_t h, std::int64_t w, bool zero = false) {
    const std::int64_t numel = n * c * h * w;
    return Tensor4<U>(zero ? arena_.zeros<U>(numel) : arena_.alloc<U>(numel), {n, c, h, w});
  }
  template <class U = T>
  Tensor2<U> mat(std::int64_t n, std::int64_t f, bool zero = false) {
    return Tensor2<U>(zero ? arena_.zeros<U>(n * f) : arena_.alloc<U>(n * f), {n, f});
  }
  template <class U>
  U* buffer(std::int64_t n) {
    return arena_.alloc<U>(n);
  }

  // y = conv(x, w) + b (b may be null).
  void conv_forward(const ConvGeometry& g, const T* x, const T* w, const T* b, T* y) {
#if defined(TASN_HAVE_DNNL)
    if constexpr (std::is_same_v<T, float>)
      if (dnnl_) return dnnl::conv2d_forward(*dnnl_, arena_, to_dnnl(g), x, w, b, y);
#endif
    ref::conv2d_forward(arena_, g, x, w, b, y);
  }

  // dx (+)= dL/dx when dx is not null (written when !accumulate), dw += dL/dw, db += dL/db (db may
  // be null).
  void conv_backward(const ConvGeometry& g, const T* x, const T* w, const T* dy, T* dx, bool accumulate, T* dw, T* db) {
#if defined(TASN_HAVE_DNNL)
    if constexpr (std::is_same_v<T, float>)
      if (dnnl_) {
        if (dx) dnnl::conv2d_backward_data(*dnnl_, arena_, to_dnnl(g), dy, w, dx, accumulate);
        if (dw) dnnl::conv2d_backward_weights(*dnnl_, arena_, to_dnnl(g), x, dy, dw, db);
        return;
      }
#endif
    if (dx && !accumulate) std::memset(static_cast<void*>(dx), 0, sizeof(T) * static_cast<std::size_t>(g.x_numel()));
    ref::conv2d_backward(arena_, g, x, w, dy, dx, dw, db);
  }

  // Batch norm of x (N, C, P) into y, then max(y, 0) when relu (fused into the primitive on
  // oneDNN); keeps what bn_backward needs (2C statistics, the mask) in the arena. Training: batch
  // statistics, running ones updated (PyTorch's momentum rule); else the running statistics.
  BnSaved<T> bn_forward(std::int64_t N, std::int64_t C, std::int64_t P, const T* x, const T* gamma, const T* beta,
                        T* running_mean, T* running_var, const BatchNormState& s, bool relu_after, T* y) {
    BnSaved<T> saved{arena_.alloc<T>(2 * C), s.training, relu_after, y, nullptr};
    if (sync_bn_ && s.training) {  // statistics over every rank's batch (on either backend)
      saved.synced = true;
      ref::batchnorm2d_forward_synced(N, C, P, x, gamma, beta, running_mean, running_var, s, saved.stats,
                                      saved.stats + C, y, arena_.alloc<double>(2 * C + 1),
                                      [this](double* v, std::int64_t n) { reduce_stats(v, n); });
      if (relu_after) relu(y, y, N * C * P);
      return saved;
    }
#if defined(TASN_HAVE_DNNL)
    if constexpr (std::is_same_v<T, float>)
      if (dnnl_) {
        // ReLU fused into the training primitive (its mask halves the backward); evaluation applies
        // it here, so a NaN input element stays NaN as in PyTorch.
        const bool fuse = relu_after && s.training;
        const dnnl::BnGeometry g{N, C, P, s.eps, fuse};
        if (fuse) saved.relu_workspace = arena_.bytes(dnnl::batchnorm_relu_workspace_bytes(*dnnl_, g));
        dnnl::batchnorm_forward(*dnnl_, arena_, g, s.training, s.momentum, x, gamma, beta, running_mean, running_var,
                                saved.stats, saved.stats + C, y, saved.relu_workspace);
        if (fuse) {
          // oneDNN's fused ReLU turns NaN into 0; PyTorch (and the reference) propagate it: a
          // non-finite value in a channel makes its batch statistics, so its whole output, NaN.
          for (std::int64_t c = 0; c < C; ++c)
            if (!std::isfinite(saved.stats[c]) || !std::isfinite(saved.stats[C + c]))
              for (std::int64_t n = 0; n < N; ++n)
                std::fill(y + (n * C + c) * P, y + (n * C + c + 1) * P, std::numeric_limits<T>::quiet_NaN());
        } else if (relu_after) {
          relu(y, y, N * C * P);
        }
        return saved;
      }
#endif
    ref::batchnorm2d_forward(N, C, P, x, gamma, beta, running_mean, running_var, s, saved.stats, saved.stats + C, y);
    if (relu_after) relu(y, y, N * C * P);
    return saved;
  }

  // Gradients of bn_forward (and its ReLU) for dy, the gradient of its output: dx (+)= dL/dx
  // (written when !accumulate), dgamma += , dbeta += .
  void bn_backward(std::int64_t N, std::int64_t C, std::int64_t P, const T* x, const T* gamma, const T* dy,
                   const BnSaved<T>& saved, double eps, T* dx, bool accumulate, T* dgamma, T* dbeta) {
    const auto mark = arena_.mark();
    // The ReLU's gradient here unless oneDNN's training primitive applied it (its mask).
    const bool fused = saved.relu_workspace != nullptr;
    const T* d = dy;
    if (saved.relu && !fused) {
      T* r = arena_.alloc<T>(N * C * P);
      relu_grad(saved.y, dy, r, N * C * P, false);
      d = r;
    }
    if (saved.synced) {
      ref::batchnorm2d_backward_synced(N, C, P, x, gamma, d, saved.stats, saved.stats + C, dx, accumulate, dgamma,
                                       dbeta, arena_.alloc<double>(2 * C + 1),
                                       [this](double* v, std::int64_t n) { reduce_stats(v, n); });
      arena_.rewind(mark);
      return;
    }
#if defined(TASN_HAVE_DNNL)
    if constexpr (std::is_same_v<T, float>)
      if (dnnl_) {
        dnnl::batchnorm_backward(*dnnl_, arena_, dnnl::BnGeometry{N, C, P, eps, fused}, saved.training, x, gamma,
                                 saved.stats, saved.stats + C, d, dx, accumulate, dgamma, dbeta, saved.relu_workspace);
        arena_.rewind(mark);
        return;
      }
#endif
    (void)eps;
    ref::batchnorm2d_backward(N, C, P, x, gamma, d, saved.stats, saved.stats + C, saved.training, dx, accumulate,
                              dgamma, dbeta);
    arena_.rewind(mark);
  }

  std::string describe() const { return std::string("cpu (") + to_string(backend_) + ")"; }

  // ---- parameters: where the context keeps a parameter's value and gradient (here: in place) -----
  T* value(const Param<T>& p) { return p.value.ptr(); }
  T* grad(const Param<T>& p) { return p.grad.ptr(); }
  // The weights convolutions and linear layers compute with, in the activation type (a bf16
  // context keeps a rounded copy of the trainable values; here: the values).
  const T* weight(const Param<T>& p) { return p.value.ptr(); }
  // A device context keeps copies of the flat buffers and of the optimiser's momentum; here they
  // are the host buffers themselves, so there is nothing to bind or copy.
  void bind_params(FlatParams<T>&) {}
  template <class Opt>
  void params_to_host(FlatParams<T>&, Opt*) {}
  template <class Opt>
  void params_to_device(FlatParams<T>&, Opt*) {}
  void grads_to_host(FlatParams<T>&) {}
  void zero_grads(FlatParams<T>& p) { p.zero_grad(); }
  // Gradients are checked by the optimiser on the host (a device context flags them in the step).
  void check_grads(FlatParams<T>&) {}
  template <class Opt>
  bool sgd_step(FlatParams<T>& p, Opt& opt, double lr, double rescale) {
    if (comm_ && comm_->size() > 1) {  // the sum of every rank's gradients: the same update on all
      const auto t0 = std::chrono::steady_clock::now();
      comm_->allreduce_sum(p.grads(), p.trainable_size());
      comm_seconds_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    }
    return opt.step(lr, rescale);
  }

  // ---- data parallelism (dist/comm.h) ------------------------------------------------------------
  // Gradients are summed over the ranks of `c` before every update (sgd_step), so every rank
  // applies the same one; sync_bn: training batch norm uses the statistics of every rank's batch
  // (the reference math, on either backend; with one rank bit for bit the reference layer). c may
  // be null (one process).
  void set_comm(dist::Communicator* c, bool sync_bn) {
    comm_ = c;
    sync_bn_ = sync_bn;
  }
  // The gradients [lo, hi) of the flat buffer are final for this step. A device context starts
  // their all-reduce here, overlapping the rest of the backward; the CPU reduces everything in
  // sgd_step (MPI has no progress of its own while the step computes).
  void grads_ready(FlatParams<T>&, std::int64_t lo, std::int64_t hi) { (void)lo, (void)hi; }
  // Seconds the last update spent in the gradient all-reduce; -1 with one process.
  double comm_seconds() const { return comm_ && comm_->size() > 1 ? comm_seconds_ : -1; }

  // ---- element-wise passes, pooling, resize, linear (nn/layers.h) --------------------------------
  void relu(const T* x, T* y, std::int64_t n) { nn::relu(x, y, n); }
  // dx = (or +=) dy where y > 0.
  void relu_grad(const T* y, const T* dy, T* dx, std::int64_t n, bool accumulate) {
    nn::relu_grad(y, dy, dx, n, accumulate);
  }
  // y = max(a + b, 0): the end of a residual unit.
  void add_relu(const T* a, const T* b, T* y, std::int64_t n) {
    parallel_for_blocks(n, [&](std::int64_t lo, std::int64_t hi) {
      for (std::int64_t i = lo; i < hi; ++i) y[i] = add_relu_value(a[i], b[i]);
    });
  }
  // y += x.
  void add_inplace(T* y, const T* x, std::int64_t n) {
    parallel_for_blocks(n, [&](std::int64_t lo, std::int64_t hi) {
      for (std::int64_t i = lo; i < hi; ++i) y[i] += x[i];
    });
  }
  // y += alpha x.
  void axpy(std::int64_t n, T alpha, const T* x, T* y) {
    for (std::int64_t i = 0; i < n; ++i) y[i] += alpha * x[i];
  }
  void maxpool2d(std::int64_t NC, std::int64_t H, std::int64_t W, const PoolArgs& a, const T* x, T* y,
                 std::int64_t* argmax) {
    nn::maxpool2d(NC, H, W, a, x, y, argmax);
  }
  // dx += the routed dy (output planes of Ho x Wo).
  void maxpool2d_grad(std::int64_t NC, std::int64_t H, std::int64_t W, std::int64_t Ho, std::int64_t Wo,
                      const PoolArgs& a, const T* dy, const std::int64_t* argmax, T* dx) {
    (void)H, (void)W, (void)a;
    nn::maxpool2d_grad(NC, Ho * Wo, dy, argmax, dx);
  }
  void global_avgpool(std::int64_t NC, std::int64_t P, const T* x, T* y) { nn::global_avgpool(NC, P, x, y); }
  void global_avgpool_grad(std::int64_t NC, std::int64_t P, const T* dy, T* dx, bool accumulate) {
    nn::global_avgpool_grad(NC, P, dy, dx, accumulate);
  }
  void resize_bilinear(std::int64_t NC, std::int64_t H, std::int64_t W, std::int64_t Ho, std::int64_t Wo,
                       bool align_corners, const T* x, T* y) {
    nn::resize_bilinear(NC, H, W, Ho, Wo, align_corners, x, y);
  }
  // y (N, O) = x (N, I) w^T + b.
  void linear(std::int64_t N, std::int64_t I, std::int64_t O, const T* x, const T* w, const T* b, T* y) {
    nn::linear(N, I, O, x, w, b, y);
  }
  // dx (may be null), dw, db += the gradients of linear.
  void linear_grad(std::int64_t N, std::int64_t I, std::int64_t O, const T* x, const T* w, const T* dy, T* dx, T* dw,
                   T* db) {
    nn::linear_grad(N, I, O, x, w, dy, dx, dw, db);
  }

  // ---- the library's operators, their workspaces from the arena ----------------------------------
  void trilinear_attention_forward(const TrilinearForwardArgs<T>& a) { cpu::trilinear_attention_forward(a, ws(a)); }
  void structure_map(const StructureMapArgs<T>& a) { cpu::structure_map(a, ws(a)); }
  void detail_map(const DetailMapArgs<T>& a) { cpu::detail_map(a, ws(a)); }
  void attention_sample(const AttentionSampleArgs<T>& a) { cpu::attention_sample(a, ws(a)); }
  void softmax_cross_entropy(const CrossEntropyArgs<T>& a) { cpu::softmax_cross_entropy(a, ws(a)); }
  void distillation_loss(const DistillationArgs<T>& a) { cpu::distillation_loss(a, ws(a)); }
  void topk_correct(const TopkArgs<T>& a) { cpu::topk_correct(a, ws(a)); }

  // ---- host <-> context memory -------------------------------------------------------------------
  // The images of a batch as the context's tensor (here: a view of the caller's vector).
  Tensor4<const T> images(const std::vector<T>& v, std::int64_t n, std::int64_t side) {
    return Tensor4<const T>(v.data(), {n, 3, side, side});
  }
  // A small host vector (labels, channel picks) as context memory (here: in place).
  template <class U>
  const U* upload(const std::vector<U>& v) {
    return v.data();
  }
  // Values of the context's memory readable on the host after synchronize() (here: in place).
  template <class U>
  const U* fetch(const U* p, std::int64_t n) {
    (void)n;
    return p;
  }
  void synchronize() {}
  // Time marks of a step (the step's phases for --timing): mark(i) at a point of the step,
  // seconds(i, j) between two marks after synchronize(). Host clock here; device events on a GPU.
  static constexpr int kMarks = 8;
  void mark(int i) { marks_[static_cast<std::size_t>(i)] = std::chrono::steady_clock::now(); }
  double seconds(int i, int j) const {
    return std::chrono::duration<double>(marks_[static_cast<std::size_t>(j)] - marks_[static_cast<std::size_t>(i)]).count();
  }
  double sgd_seconds() const { return -1; }  // the trainer times the update on the host
  std::string memory_report() const {
    return "host arena high water " + std::to_string(arena_.high_water() >> 20) + " MiB";
  }
  // True when every element is finite (a device context answers true and lets NaN reach the
  // losses, which the step reads back once).
  // agree (a training step): with several ranks the answer is every rank's (a collective: a rank
  // that stopped its step alone would leave the others waiting in the synchronised batch norm of
  // the next layer). Evaluation does not agree: its ranks run different numbers of batches.
  template <class U, int R>
  bool all_finite(TensorRef<U, R> t, bool agree = false) {
    const std::int64_t n = t.numel();
    bool ok = true;
    for (std::int64_t i = 0; i < n; ++i) ok &= std::isfinite(t.data[i]);
    if (agree && comm_ && comm_->size() > 1) {
      std::uint64_t bad = ok ? 0 : 1;
      comm_->allreduce_max(&bad, 1);
      ok = bad == 0;
    }
    return ok;
  }

 private:
  // Batch-norm statistics summed over the ranks (sync_bn).
  void reduce_stats(double* v, std::int64_t n) {
    if (comm_ && comm_->size() > 1) comm_->allreduce_sum(v, n);
  }
  // A library operator's workspace from the arena (the operators want 256-byte alignment).
  template <class Args>
  tasn::Workspace ws(const Args& a) {
    const std::size_t bytes = cpu::workspace_bytes(a);
    if (bytes == 0) return {};
    auto* p = static_cast<unsigned char*>(arena_.bytes(bytes + 256));
    const auto at = reinterpret_cast<std::uintptr_t>(p);
    return {p + ((256 - at % 256) % 256), bytes};
  }

 private:
#if defined(TASN_HAVE_DNNL)
  static dnnl::ConvGeometry to_dnnl(const ConvGeometry& g) {
    return {g.n, g.cin, g.h, g.w, g.cout, g.kh, g.kw, g.a.stride, g.a.padding, g.a.dilation};
  }
  std::unique_ptr<dnnl::Context> dnnl_;
#endif
  Backend backend_;
  Arena arena_;
  dist::Communicator* comm_ = nullptr;
  bool sync_bn_ = false;
  double comm_seconds_ = 0;
  std::array<std::chrono::steady_clock::time_point, kMarks> marks_{};
};

}  // namespace tasn::nn
