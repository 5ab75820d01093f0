// examples/nn/exec.h - the CPU execution context the trainer's modules run on: the step's arena
// (activations, what backward keeps, layer scratch; reset at the start of every step, so a
// warmed-up step allocates nothing) and the backend that runs convolution and batch norm:
//   Backend::OneDnn     oneDNN primitives (nn/dnnl_layers.h), float only; the default where built;
//   Backend::Reference  the Eigen im2col layers of nn/layers.h, float and double (the tests' oracle).
// Everything else (ReLU, pooling, linear, resize, the TASN operators) is the same code on both.
//
// A CUDA context (cuda::Exec: stream, cuBLAS / cuDNN handles, a device arena) is the next step
// (issue "The trainer on the GPU"); modules take the context as a template parameter for that.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <cstring>
#include <memory>
#include <string>
#include <type_traits>

#include "nn/arena.h"
#include "nn/layers.h"
#include "tasn/core/tensor.h"

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
// oneDNN) and, with a fused ReLU, the output (the reference's mask) or oneDNN's bit mask.
template <class T>
struct BnSaved {
  T* stats = nullptr;
  bool training = true, relu = false;
  const T* y = nullptr;             // the forward's output (reference: its sign is the ReLU mask)
  void* relu_workspace = nullptr;   // oneDNN's fused-ReLU mask (training)
};

template <class T>
class CpuExec {
 public:
  using value_type = T;

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

  // Activations from the arena (uninitialised, or zero-filled).
  Tensor4<T> act(std::int64_t n, std::int64_t c, std::int64_t h, std::int64_t w, bool zero = false) {
    const std::int64_t numel = n * c * h * w;
    return Tensor4<T>(zero ? arena_.zeros<T>(numel) : arena_.alloc<T>(numel), {n, c, h, w});
  }
  Tensor2<T> mat(std::int64_t n, std::int64_t f, bool zero = false) {
    return Tensor2<T>(zero ? arena_.zeros<T>(n * f) : arena_.alloc<T>(n * f), {n, f});
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

 private:
#if defined(TASN_HAVE_DNNL)
  static dnnl::ConvGeometry to_dnnl(const ConvGeometry& g) {
    return {g.n, g.cin, g.h, g.w, g.cout, g.kh, g.kw, g.a.stride, g.a.padding, g.a.dilation};
  }
  std::unique_ptr<dnnl::Context> dnnl_;
#endif
  Backend backend_;
  Arena arena_;
};

}  // namespace tasn::nn
