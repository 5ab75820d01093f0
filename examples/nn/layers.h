// examples/nn/layers.h - the reference CPU layers of the example trainer (forward + backward):
// kernels over raw NCHW pointers that write their outputs in place and take scratch from the
// step's Arena (what the modules call through their execution context, nn/exec.h), and
// Tensor-returning wrappers over them (tests, benchmarks). Each weight gradient is ADDED into its
// buffer, so a parameter used several times (weight sharing) accumulates all of them. Tensors are
// dense row-major NCHW (or (N, F) for Linear). Templated on float / double (double for gradient
// checks and the whole-step golden test). Convolutions: batched im2col + one Eigen GEMM (Eigen
// threads it). This is the reference backend; nn/dnnl_layers.h is the fast one (oneDNN).
//
// These serve the example trainer (issue: network building blocks); the library's public API
// stays the TASN operators in include/tasn.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include "tasn/core/common.h"
#include "tasn/core/parallel.h"
#include "tasn/core/resize.h"
#include "nn/arena.h"
#include "nn/elementwise.h"

namespace tasn::nn {

inline std::string shape_string(const std::vector<std::int64_t>& shape) {
  std::string s = "(";
  for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + ")";
}

template <class T>
struct Tensor {
  using value_type = T;
  std::vector<std::int64_t> shape;
  // Aligned to Eigen's packet size, so every tensor starts at the same alignment: Eigen's
  // vectorised loops peel a scalar prologue that depends on the address, and results (and a
  // resumed run) would otherwise depend on where the heap put the tensor.
  std::vector<T, Eigen::aligned_allocator<T>> data;

  Tensor() = default;
  explicit Tensor(std::vector<std::int64_t> s, T fill = T(0)) : shape(std::move(s)) {
    std::int64_t n = 1;
    for (auto d : shape) n = tasn::detail::checked_mul(n, d, "Tensor");
    data.assign(static_cast<std::size_t>(n), fill);
  }
  // Replaces the values (numel of them, in row-major order).
  template <class Container>
  Tensor& set(const Container& values) {
    TASN_CHECK_ARG(static_cast<std::int64_t>(values.size()) == numel(), "Tensor::set: ", values.size(),
                   " values for a tensor of shape ", shape_str(), " (", numel(), " elements)");
    std::copy(values.begin(), values.end(), data.begin());
    return *this;
  }
  std::int64_t numel() const { return static_cast<std::int64_t>(data.size()); }
  std::int64_t dim(std::size_t i) const { return shape.at(i); }
  T* ptr() { return data.data(); }
  const T* ptr() const { return data.data(); }
  std::string shape_str() const { return shape_string(shape); }
};

// Keeps a parameter out of template deduction, so nullptr can be passed for optional tensors.
template <class T>
struct NonDeduced {
  using type = T;
};
template <class T>
using Opt = typename NonDeduced<Tensor<T>>::type*;
template <class T>
using OptConst = const typename NonDeduced<Tensor<T>>::type*;

template <class T>
using Mat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

namespace detail {
template <class T>
void check_rank(const Tensor<T>& t, std::size_t rank, const char* name, const char* op) {
  TASN_CHECK_ARG(t.shape.size() == rank, op, ": ", name, " must have ", rank, " dimensions, got ", t.shape_str());
}
template <class T>
void check_same(const Tensor<T>& a, const Tensor<T>& b, const char* an, const char* bn, const char* op) {
  TASN_CHECK_ARG(a.shape == b.shape, op, ": ", an, " has shape ", a.shape_str(), " but ", bn, " has ", b.shape_str());
}
}  // namespace detail


// f(b, e) over [0, n) in one contiguous block per thread; serial below 32K elements, where a
// parallel region costs more than the loop.
template <class F>
void parallel_for_blocks(std::int64_t n, F&& f) {
  constexpr std::int64_t kMin = 1 << 15;
  const std::int64_t blocks = std::max<std::int64_t>(1, std::min<std::int64_t>(cpu::num_threads(), n / kMin));
  if (blocks == 1) {
    if (n > 0) f(std::int64_t(0), n);
    return;
  }
  cpu::parallel_for(0, blocks, [&](std::int64_t k) { f(n * k / blocks, n * (k + 1) / blocks); });
}

// ---- Conv2d -------------------------------------------------------------------------------------
//
// Every layer comes twice: the kernel over raw NCHW pointers (what the trainer's modules call
// through their execution context, scratch from the step's Arena, outputs written in place), and a
// Tensor-returning wrapper over it (tests, benchmarks, one-off use).

struct Conv2dArgs {
  std::int64_t stride = 1, padding = 0, dilation = 1;
};

struct ConvGeometry {
  std::int64_t n, cin, h, w, cout, kh, kw, ho, wo;
  Conv2dArgs a;
  std::int64_t x_numel() const { return n * cin * h * w; }
  std::int64_t y_numel() const { return n * cout * ho * wo; }
  std::int64_t w_numel() const { return cout * cin * kh * kw; }
};

// The geometry of x (n, cin, h, w) convolved with weight (cout, cin, kh, kw); throws with the sizes.
inline ConvGeometry conv_geometry(const std::int64_t* xs, const std::int64_t* ws, const Conv2dArgs& a, const char* op) {
  TASN_CHECK_ARG(ws[1] == xs[1], op, ": weight (", ws[0], ", ", ws[1], ", ", ws[2], ", ", ws[3], ") expects ", ws[1],
                 " input channels but x (", xs[0], ", ", xs[1], ", ", xs[2], ", ", xs[3], ") has ", xs[1]);
  TASN_CHECK_ARG(a.stride >= 1 && a.dilation >= 1 && a.padding >= 0, op,
                 ": stride and dilation must be >= 1 and padding >= 0, got stride ", a.stride, ", dilation ",
                 a.dilation, ", padding ", a.padding);
  ConvGeometry g{xs[0], xs[1], xs[2], xs[3], ws[0], ws[2], ws[3], 0, 0, a};
  g.ho = (g.h + 2 * a.padding - a.dilation * (g.kh - 1) - 1) / a.stride + 1;
  g.wo = (g.w + 2 * a.padding - a.dilation * (g.kw - 1) - 1) / a.stride + 1;
  TASN_CHECK_ARG(g.ho >= 1 && g.wo >= 1, op, ": input (", xs[0], ", ", xs[1], ", ", xs[2], ", ", xs[3],
                 ") is smaller than the kernel (", ws[0], ", ", ws[1], ", ", ws[2], ", ", ws[3], ") with dilation ",
                 a.dilation, " and padding ", a.padding);
  return g;
}
template <class T>
ConvGeometry conv_geometry(const Tensor<T>& x, const Tensor<T>& weight, const Conv2dArgs& a, const char* op) {
  detail::check_rank(x, 4, "x", op);
  detail::check_rank(weight, 4, "weight", op);
  return conv_geometry(x.shape.data(), weight.shape.data(), a, op);
}

// 1x1, stride 1, no padding: the convolution is a plain GEMM per sample.
inline bool is_pointwise(const ConvGeometry& g) {
  return g.kh == 1 && g.kw == 1 && g.a.stride == 1 && g.a.padding == 0;
}

// Output columns [lo, hi) whose input column ox * stride + off lies inside [0, size).
inline void valid_range(std::int64_t off, std::int64_t size, std::int64_t stride, std::int64_t out, std::int64_t& lo,
                        std::int64_t& hi) {
  // lo is clamped to the output: with padding wider than the input (a dilated 3x3 on a 1x1 or
  // 2x2 map) no output column may be valid, and lo would point past the row.
  lo = std::min(out, off >= 0 ? 0 : (-off + stride - 1) / stride);
  hi = size - 1 - off < 0 ? 0 : std::min(out, (size - 1 - off) / stride + 1);
  if (hi < lo) hi = lo;
}

// col (cin*kh*kw, n*ho*wo): column j = (sample, output pixel), row r = (channel, ky, kx).
template <class T>
void im2col(const T* x, const ConvGeometry& g, T* col) {
  const Conv2dArgs& a = g.a;
  const std::int64_t P = g.ho * g.wo, cols = g.n * P;
  cpu::parallel_for(0, g.cin * g.kh * g.kw, [&](std::int64_t r) {
    const std::int64_t c = r / (g.kh * g.kw), ky = (r / g.kw) % g.kh, kx = r % g.kw;
    const std::int64_t offx = kx * a.dilation - a.padding;
    std::int64_t lo, hi;
    valid_range(offx, g.w, a.stride, g.wo, lo, hi);
    T* out = col + r * cols;
    for (std::int64_t n = 0; n < g.n; ++n)
      for (std::int64_t oy = 0; oy < g.ho; ++oy) {
        const std::int64_t iy = oy * a.stride - a.padding + ky * a.dilation;
        T* o = out + n * P + oy * g.wo;
        if (iy < 0 || iy >= g.h) {
          std::fill(o, o + g.wo, T(0));
          continue;
        }
        const T* in = x + ((n * g.cin + c) * g.h + iy) * g.w;  // input row; column ox * stride + offx
        std::fill(o, o + lo, T(0));
        if (a.stride == 1) std::copy(in + lo + offx, in + hi + offx, o + lo);
        else
          for (std::int64_t ox = lo; ox < hi; ++ox) o[ox] = in[ox * a.stride + offx];
        std::fill(o + hi, o + g.wo, T(0));
      }
  });
}

// dx += col2im(dcol); parallel over (sample, channel) planes, so no two threads touch one element.
template <class T>
void col2im_add(const T* dcol, const ConvGeometry& g, T* dx) {
  const Conv2dArgs& a = g.a;
  const std::int64_t P = g.ho * g.wo, cols = g.n * P;
  cpu::parallel_for(0, g.n * g.cin, [&](std::int64_t nc) {
    const std::int64_t n = nc / g.cin, c = nc % g.cin;
    T* plane = dx + nc * g.h * g.w;
    for (std::int64_t ky = 0; ky < g.kh; ++ky)
      for (std::int64_t kx = 0; kx < g.kw; ++kx) {
        const T* in = dcol + ((c * g.kh + ky) * g.kw + kx) * cols + n * P;
        const std::int64_t offx = kx * a.dilation - a.padding;
        std::int64_t lo, hi;
        valid_range(offx, g.w, a.stride, g.wo, lo, hi);
        for (std::int64_t oy = 0; oy < g.ho; ++oy) {
          const std::int64_t iy = oy * a.stride - a.padding + ky * a.dilation;
          if (iy < 0 || iy >= g.h) continue;
          T* row = plane + iy * g.w;
          const T* src = in + oy * g.wo;
          for (std::int64_t ox = lo; ox < hi; ++ox) row[ox * a.stride + offx] += src[ox];
        }
      }
  });
}

namespace ref {  // the reference kernels (Eigen im2col + GEMM), float and double

// y (n, cout, ho, wo) = conv(x, weight) + bias (bias may be null).
template <class T>
void conv2d_forward(Arena& ar, const ConvGeometry& g, const T* x, const T* weight, const T* bias, T* y) {
  const std::int64_t K = g.cin * g.kh * g.kw, P = g.ho * g.wo, cols = g.n * P;
  if (is_pointwise(g)) {  // 1x1, stride 1, no padding: y_n = W x_n, no im2col
    Eigen::Map<const Mat<T>> W(weight, g.cout, g.cin);
    for (std::int64_t n = 0; n < g.n; ++n) {
      Eigen::Map<Mat<T>> Y(y + n * g.cout * P, g.cout, P);
      {
        const LibraryCall gemm;  // Eigen allocates its blocking
        Y.noalias() = W * Eigen::Map<const Mat<T>>(x + n * g.cin * P, g.cin, P);
      }
      if (bias) Y.colwise() += Eigen::Map<const Eigen::Matrix<T, Eigen::Dynamic, 1>>(bias, g.cout);
    }
    return;
  }
  const auto mark = ar.mark();
  T* col = ar.alloc<T>(K * cols);
  im2col(x, g, col);
  Eigen::Map<Mat<T>> ym(ar.alloc<T>(g.cout * cols), g.cout, cols);
  {
    const LibraryCall gemm;  // Eigen allocates its blocking
    ym.noalias() = Eigen::Map<const Mat<T>>(weight, g.cout, K) * Eigen::Map<const Mat<T>>(col, K, cols);
  }
  cpu::parallel_for(0, g.n * g.cout, [&](std::int64_t nc) {
    const std::int64_t n = nc / g.cout, o = nc % g.cout;
    const T b = bias ? bias[o] : T(0);
    for (std::int64_t p = 0; p < P; ++p) y[nc * P + p] = ym(o, n * P + p) + b;
  });
  ar.rewind(mark);
}

// Adds the gradients of conv2d_forward for upstream dy into the non-null dx, dweight, dbias.
template <class T>
void conv2d_backward(Arena& ar, const ConvGeometry& g, const T* x, const T* weight, const T* dy, T* dx, T* dweight,
                     T* dbias) {
  const std::int64_t K = g.cin * g.kh * g.kw, P = g.ho * g.wo, cols = g.n * P;
  if (is_pointwise(g)) {  // dW += dy_n x_n^T, dx_n += W^T dy_n, per sample, no im2col
    Eigen::Map<const Mat<T>> W(weight, g.cout, g.cin);
    for (std::int64_t n = 0; n < g.n; ++n) {
      Eigen::Map<const Mat<T>> dY(dy + n * g.cout * P, g.cout, P), X(x + n * g.cin * P, g.cin, P);
      if (dbias) Eigen::Map<Eigen::Matrix<T, Eigen::Dynamic, 1>>(dbias, g.cout) += dY.rowwise().sum();
      if (dweight) {
        const LibraryCall gemm;  // Eigen allocates its blocking
        Eigen::Map<Mat<T>>(dweight, g.cout, g.cin).noalias() += dY * X.transpose();
      }
      if (dx) {
        const LibraryCall gemm;  // Eigen allocates its blocking
        Eigen::Map<Mat<T>>(dx + n * g.cin * P, g.cin, P).noalias() += W.transpose() * dY;
      }
    }
    return;
  }
  const auto mark = ar.mark();
  Eigen::Map<Mat<T>> dyc(ar.alloc<T>(g.cout * cols), g.cout, cols);  // dy as (cout, n*P)
  cpu::parallel_for(0, g.n * g.cout, [&](std::int64_t nc) {
    const std::int64_t n = nc / g.cout, o = nc % g.cout;
    for (std::int64_t p = 0; p < P; ++p) dyc(o, n * P + p) = dy[nc * P + p];
  });
  if (dbias)
    for (std::int64_t o = 0; o < g.cout; ++o) dbias[o] += dyc.row(o).sum();
  if (dweight) {
    const auto m2 = ar.mark();
    T* col = ar.alloc<T>(K * cols);
    im2col(x, g, col);
    {
      const LibraryCall gemm;  // Eigen allocates its blocking
      Eigen::Map<Mat<T>>(dweight, g.cout, K).noalias() += dyc * Eigen::Map<const Mat<T>>(col, K, cols).transpose();
    }
    ar.rewind(m2);
  }
  if (dx) {
    Eigen::Map<Mat<T>> dcol(ar.alloc<T>(K * cols), K, cols);
    {
      const LibraryCall gemm;  // Eigen allocates its blocking
      dcol.noalias() = Eigen::Map<const Mat<T>>(weight, g.cout, K).transpose() * dyc;
    }
    col2im_add(dcol.data(), g, dx);
  }
  ar.rewind(mark);
}

}  // namespace ref

template <class T>
Tensor<T> conv2d_forward(const Tensor<T>& x, const Tensor<T>& weight, OptConst<T> bias, const Conv2dArgs& a) {
  const ConvGeometry g = conv_geometry(x, weight, a, "conv2d_forward");
  if (bias)
    TASN_CHECK_ARG(bias->numel() == g.cout, "conv2d_forward: bias holds ", bias->numel(), " values for ", g.cout,
                   " output channels");
  Tensor<T> out({g.n, g.cout, g.ho, g.wo});
  Arena ar;
  ref::conv2d_forward(ar, g, x.ptr(), weight.ptr(), bias ? bias->ptr() : nullptr, out.ptr());
  return out;
}

// Adds the gradients of conv2d_forward for upstream dy: dx (may be null), dweight, dbias (may be null).
template <class T>
void conv2d_backward(const Tensor<T>& x, const Tensor<T>& weight, const Tensor<T>& dy, const Conv2dArgs& a,
                     Opt<T> dx, Opt<T> dweight, Opt<T> dbias) {
  constexpr const char* op = "conv2d_backward";
  const ConvGeometry g = conv_geometry(x, weight, a, op);
  TASN_CHECK_ARG(dy.shape == std::vector<std::int64_t>({g.n, g.cout, g.ho, g.wo}), op, ": dy has shape ",
                 dy.shape_str(), " but the output is (", g.n, ", ", g.cout, ", ", g.ho, ", ", g.wo, ")");
  Arena ar;
  ref::conv2d_backward(ar, g, x.ptr(), weight.ptr(), dy.ptr(), dx ? dx->ptr() : nullptr,
                       dweight ? dweight->ptr() : nullptr, dbias ? dbias->ptr() : nullptr);
}

// ---- BatchNorm2d ------------------------------------------------------------------------------

struct BatchNormState {
  bool training = true;
  double momentum = 0.1, eps = 1e-5;
};

// What backward needs from the forward: per channel mean and 1 / sqrt(var + eps) (batch
// statistics in training, running ones in evaluation).
template <class T>
struct BatchNormCache {
  std::vector<T> mean, invstd;
};

namespace ref {

// y = (x - mean) / sqrt(var + eps) * gamma + beta per channel, x (N, C, P). Training: batch
// statistics (biased variance), running stats updated with momentum (unbiased variance, as
// PyTorch); evaluation: running statistics. Writes mean / invstd (C each) for backward.
// y = x invstd gamma + (beta - mean invstd gamma) per channel (both batch-norm forwards).
template <class T>
void bn_normalise(std::int64_t N, std::int64_t C, std::int64_t P, const T* x, const T* gamma, const T* beta,
                  const T* mean, const T* invstd, T* y) {
  cpu::parallel_for(0, N * C, [&](std::int64_t nc) {
    const std::int64_t c = nc % C;
    const T sc = invstd[c] * gamma[c], sh = beta[c] - mean[c] * sc;
    for (std::int64_t p = 0; p < P; ++p) y[nc * P + p] = x[nc * P + p] * sc + sh;
  });
}

// Channel c's sums of dy and dy x^ (both batch-norm backwards).
template <class T>
void bn_grad_sums(std::int64_t N, std::int64_t C, std::int64_t P, const T* x, const T* dy, const T* mean,
                  const T* invstd, std::int64_t c, double& sdy, double& sdyxh) {
  for (std::int64_t n = 0; n < N; ++n)
    for (std::int64_t p = 0; p < P; ++p) {
      const std::int64_t i = (n * C + c) * P + p;
      const double xh = (x[i] - mean[c]) * double(invstd[c]);
      sdy += dy[i];
      sdyxh += dy[i] * xh;
    }
}

// Channel c's dx (written, or added when accumulate) from the sums over M elements; training:
// through the batch statistics, else through the fixed running ones.
template <class T>
void bn_grad_input(std::int64_t N, std::int64_t C, std::int64_t P, const T* x, const T* gamma, const T* dy,
                   const T* mean, const T* invstd, std::int64_t c, bool training, double sdy, double sdyxh, double M,
                   T* dx, bool accumulate) {
  const double k = double(gamma[c]) * invstd[c];
  for (std::int64_t n = 0; n < N; ++n)
    for (std::int64_t p = 0; p < P; ++p) {
      const std::int64_t i = (n * C + c) * P + p;
      const double xh = (x[i] - mean[c]) * double(invstd[c]);
      const T v = static_cast<T>(training ? k * (dy[i] - sdy / M - xh * sdyxh / M) : k * dy[i]);
      dx[i] = accumulate ? dx[i] + v : v;
    }
}

template <class T>
void batchnorm2d_forward(std::int64_t N, std::int64_t C, std::int64_t P, const T* x, const T* gamma, const T* beta,
                         T* running_mean, T* running_var, const BatchNormState& s, T* mean, T* invstd, T* y) {
  cpu::parallel_for(0, C, [&](std::int64_t c) {
    if (s.training) {
      double sum = 0, sq = 0;
      for (std::int64_t n = 0; n < N; ++n)
        for (std::int64_t p = 0; p < P; ++p) sum += x[(n * C + c) * P + p];
      const double m = sum / double(N * P);
      for (std::int64_t n = 0; n < N; ++n)
        for (std::int64_t p = 0; p < P; ++p) {
          const double d = x[(n * C + c) * P + p] - m;
          sq += d * d;
        }
      const double var = sq / double(N * P);
      mean[c] = static_cast<T>(m);
      invstd[c] = static_cast<T>(1.0 / std::sqrt(var + s.eps));
      const double unbiased = N * P > 1 ? sq / double(N * P - 1) : var;
      running_mean[c] = static_cast<T>((1 - s.momentum) * running_mean[c] + s.momentum * m);
      running_var[c] = static_cast<T>((1 - s.momentum) * running_var[c] + s.momentum * unbiased);
    } else {
      mean[c] = running_mean[c];
      invstd[c] = static_cast<T>(1.0 / std::sqrt(double(running_var[c]) + s.eps));
    }
  });
  bn_normalise(N, C, P, x, gamma, beta, mean, invstd, y);
}

// dx (added to, or written when !accumulate; may be null), dgamma, dbeta (added to; may be null).
// `training` must match the forward (batch statistics or running ones).
template <class T>
void batchnorm2d_backward(std::int64_t N, std::int64_t C, std::int64_t P, const T* x, const T* gamma, const T* dy,
                          const T* mean, const T* invstd, bool training, T* dx, bool accumulate, T* dgamma, T* dbeta) {
  const double M = double(N * P);
  cpu::parallel_for(0, C, [&](std::int64_t c) {
    double sdy = 0, sdyxh = 0;
    bn_grad_sums(N, C, P, x, dy, mean, invstd, c, sdy, sdyxh);
    if (dgamma) dgamma[c] += static_cast<T>(sdyxh);
    if (dbeta) dbeta[c] += static_cast<T>(sdy);
    if (dx) bn_grad_input(N, C, P, x, gamma, dy, mean, invstd, c, training, sdy, sdyxh, M, dx, accumulate);
  });
}

// Synchronised batch norm (training): the statistics of the batch of every rank, each rank
// holding its part x (N, C, P). `reduce(v, n)` sums n doubles over the ranks in place (a no-op on
// one rank, where the results are bit for bit those of batchnorm2d_forward: the same sums in the
// same order). Two reductions: the sums with the element count (C + 1), then the squared
// deviations from the global mean (C): the two-pass variance of the whole batch. The running
// statistics use the global count (unbiased variance). scratch: 2C + 1 doubles.
template <class T, class Reduce>
void batchnorm2d_forward_synced(std::int64_t N, std::int64_t C, std::int64_t P, const T* x, const T* gamma,
                                const T* beta, T* running_mean, T* running_var, const BatchNormState& s, T* mean,
                                T* invstd, T* y, double* scratch, Reduce&& reduce) {
  double* sum = scratch;         // C sums, then the count
  double* sq = scratch + C + 1;  // C squared deviations
  cpu::parallel_for(0, C, [&](std::int64_t c) {
    double a = 0;
    for (std::int64_t n = 0; n < N; ++n)
      for (std::int64_t p = 0; p < P; ++p) a += x[(n * C + c) * P + p];
    sum[c] = a;
  });
  sum[C] = double(N * P);
  reduce(sum, C + 1);
  const double M = sum[C];
  cpu::parallel_for(0, C, [&](std::int64_t c) {
    const double m = sum[c] / M;
    double a = 0;
    for (std::int64_t n = 0; n < N; ++n)
      for (std::int64_t p = 0; p < P; ++p) {
        const double d = x[(n * C + c) * P + p] - m;
        a += d * d;
      }
    sq[c] = a;
  });
  reduce(sq, C);
  for (std::int64_t c = 0; c < C; ++c) {
    const double m = sum[c] / M, var = sq[c] / M;
    mean[c] = static_cast<T>(m);
    invstd[c] = static_cast<T>(1.0 / std::sqrt(var + s.eps));
    const double unbiased = M > 1 ? sq[c] / (M - 1) : var;
    running_mean[c] = static_cast<T>((1 - s.momentum) * running_mean[c] + s.momentum * m);
    running_var[c] = static_cast<T>((1 - s.momentum) * running_var[c] + s.momentum * unbiased);
  }
  bn_normalise(N, C, P, x, gamma, beta, mean, invstd, y);
}

// The backward of batchnorm2d_forward_synced: dx from the sums of dy and dy x^ over every rank
// (one reduction of 2C + 1 doubles), dgamma / dbeta from this rank's part only (the gradient
// all-reduce before the update adds the ranks' parts). scratch: 2C + 1 doubles.
template <class T, class Reduce>
void batchnorm2d_backward_synced(std::int64_t N, std::int64_t C, std::int64_t P, const T* x, const T* gamma,
                                 const T* dy, const T* mean, const T* invstd, T* dx, bool accumulate, T* dgamma,
                                 T* dbeta, double* scratch, Reduce&& reduce) {
  double* sdy = scratch;
  double* sdyxh = scratch + C;
  cpu::parallel_for(0, C, [&](std::int64_t c) {
    double a = 0, b = 0;
    bn_grad_sums(N, C, P, x, dy, mean, invstd, c, a, b);
    sdy[c] = a;
    sdyxh[c] = b;
    if (dgamma) dgamma[c] += static_cast<T>(b);
    if (dbeta) dbeta[c] += static_cast<T>(a);
  });
  scratch[2 * C] = double(N * P);
  reduce(scratch, 2 * C + 1);
  if (!dx) return;
  const double M = scratch[2 * C];
  cpu::parallel_for(0, C, [&](std::int64_t c) {
    bn_grad_input(N, C, P, x, gamma, dy, mean, invstd, c, true, sdy[c], sdyxh[c], M, dx, accumulate);
  });
}

}  // namespace ref

template <class T>
Tensor<T> batchnorm2d_forward(const Tensor<T>& x, const Tensor<T>& gamma, const Tensor<T>& beta,
                              Tensor<T>& running_mean, Tensor<T>& running_var, const BatchNormState& s,
                              typename NonDeduced<BatchNormCache<T>>::type* cache) {
  constexpr const char* op = "batchnorm2d_forward";
  detail::check_rank(x, 4, "x", op);
  const std::int64_t N = x.dim(0), C = x.dim(1), P = x.dim(2) * x.dim(3);
  TASN_CHECK_ARG(gamma.numel() == C && beta.numel() == C && running_mean.numel() == C && running_var.numel() == C,
                 op, ": gamma, beta and running statistics must hold C = ", C, " values, got ", gamma.numel(), ", ",
                 beta.numel(), ", ", running_mean.numel(), ", ", running_var.numel());
  std::vector<T> mean(C), invstd(C);
  Tensor<T> y(x.shape);
  ref::batchnorm2d_forward(N, C, P, x.ptr(), gamma.ptr(), beta.ptr(), running_mean.ptr(), running_var.ptr(), s,
                           mean.data(), invstd.data(), y.ptr());
  if (cache) *cache = {std::move(mean), std::move(invstd)};
  return y;
}

// Adds dx, dgamma, dbeta. `training` must match the forward (batch statistics or running ones).
template <class T>
void batchnorm2d_backward(const Tensor<T>& x, const Tensor<T>& gamma, const Tensor<T>& dy,
                          const BatchNormCache<T>& cache, bool training, Opt<T> dx, Opt<T> dgamma,
                          Opt<T> dbeta) {
  constexpr const char* op = "batchnorm2d_backward";
  detail::check_same(dy, x, "dy", "x", op);
  const std::int64_t N = x.dim(0), C = x.dim(1), P = x.dim(2) * x.dim(3);
  TASN_CHECK_ARG(static_cast<std::int64_t>(cache.mean.size()) == C && static_cast<std::int64_t>(cache.invstd.size()) == C,
                 op, ": the cache holds ", cache.mean.size(), " channels but x has ", C);
  ref::batchnorm2d_backward(N, C, P, x.ptr(), gamma.ptr(), dy.ptr(), cache.mean.data(), cache.invstd.data(), training,
                            dx ? dx->ptr() : nullptr, true, dgamma ? dgamma->ptr() : nullptr,
                            dbeta ? dbeta->ptr() : nullptr);
}

// ---- element-wise, pooling, linear ---------------------------------------------------------------

// The per-element math of this section (relu_value, relu_grad_value, maxpool_window, layer_tap,
// resize_blend) lives in nn/elementwise.h, shared with the CUDA kernels (examples/gpu/kernels.cu).

// y = max(x, 0) (y may be x). NaN propagates (x <= 0 is false for NaN), as in PyTorch: a diverged
// layer must not look healthy.
template <class T>
void relu(const T* x, T* y, std::int64_t n) {
  parallel_for_blocks(n, [&](std::int64_t b, std::int64_t e) {
    for (std::int64_t i = b; i < e; ++i) y[i] = relu_value(x[i]);
  });
}
// dx (+)= dy where the forward output y (or input: the same sign) was positive; dx may be dy.
template <class T>
void relu_grad(const T* y, const T* dy, T* dx, std::int64_t n, bool accumulate) {
  parallel_for_blocks(n, [&](std::int64_t b, std::int64_t e) {
    if (accumulate)
      for (std::int64_t i = b; i < e; ++i) dx[i] += relu_grad_value(y[i], dy[i]);
    else
      for (std::int64_t i = b; i < e; ++i) dx[i] = relu_grad_value(y[i], dy[i]);
  });
}

template <class T>
Tensor<T> relu_forward(const Tensor<T>& x) {
  Tensor<T> y(x.shape);
  relu(x.ptr(), y.ptr(), x.numel());
  return y;
}

// dx += dy where the forward input was positive.
template <class T>
void relu_backward(const Tensor<T>& x, const Tensor<T>& dy, Tensor<T>& dx) {
  detail::check_same(dy, x, "dy", "x", "relu_backward");
  detail::check_same(dx, x, "dx", "x", "relu_backward");
  relu_grad(x.ptr(), dy.ptr(), dx.ptr(), x.numel(), true);
}

template <class T>
Tensor<T> add_forward(const Tensor<T>& a, const Tensor<T>& b) {
  detail::check_same(a, b, "a", "b", "add_forward");
  Tensor<T> y(a.shape);
  for (std::int64_t i = 0; i < a.numel(); ++i) y.data[i] = a.data[i] + b.data[i];
  return y;
}

struct PoolArgs {
  std::int64_t kernel = 3, stride = 2, padding = 1;
};

inline void pool_output(std::int64_t H, std::int64_t W, const PoolArgs& a, std::int64_t& Ho, std::int64_t& Wo) {
  TASN_CHECK_ARG(a.kernel >= 1 && a.stride >= 1, "maxpool2d: kernel and stride must be >= 1, got kernel ", a.kernel,
                 ", stride ", a.stride);
  Ho = pool_extent(H, a.kernel, a.stride, a.padding);
  Wo = pool_extent(W, a.kernel, a.stride, a.padding);
  TASN_CHECK_ARG(Ho >= 1 && Wo >= 1, "maxpool2d: input (", H, ", ", W,
                 ") is smaller than the pooling window ", a.kernel, " (stride ", a.stride, ", padding ", a.padding, ")");
}

// Max pooling of NC planes (H, W) -> (Ho, Wo) (padding never wins, NaN propagates); argmax (flat
// input index per output, may be null) for backward.
template <class T>
void maxpool2d(std::int64_t NC, std::int64_t H, std::int64_t W, const PoolArgs& a, const T* x, T* y,
               std::int64_t* argmax) {
  std::int64_t Ho, Wo;
  pool_output(H, W, a, Ho, Wo);
  cpu::parallel_for(0, NC, [&](std::int64_t nc) {
    for (std::int64_t oy = 0; oy < Ho; ++oy)
      for (std::int64_t ox = 0; ox < Wo; ++ox) {
        const PoolPick<T> p = maxpool_window(x, nc, H, W, oy, ox, a.kernel, a.stride, a.padding);
        const std::int64_t o = (nc * Ho + oy) * Wo + ox;
        y[o] = p.value;
        if (argmax) argmax[o] = p.index;
      }
  });
}

// dx += the routed dy. Parallel over planes: a window never leaves its plane, so no two threads
// touch one element (overlapping windows of one plane stay in one thread, in order).
template <class T>
void maxpool2d_grad(std::int64_t NC, std::int64_t out_plane, const T* dy, const std::int64_t* argmax, T* dx) {
  cpu::parallel_for(0, NC, [&](std::int64_t nc) {
    for (std::int64_t o = nc * out_plane; o < (nc + 1) * out_plane; ++o) dx[argmax[o]] += dy[o];
  });
}

template <class T>
Tensor<T> maxpool2d_forward(const Tensor<T>& x, const PoolArgs& a, std::vector<std::int64_t>* argmax = nullptr) {
  detail::check_rank(x, 4, "x", "maxpool2d_forward");
  std::int64_t Ho, Wo;
  pool_output(x.dim(2), x.dim(3), a, Ho, Wo);
  Tensor<T> y({x.dim(0), x.dim(1), Ho, Wo});
  if (argmax) argmax->assign(static_cast<std::size_t>(y.numel()), -1);
  maxpool2d(x.dim(0) * x.dim(1), x.dim(2), x.dim(3), a, x.ptr(), y.ptr(), argmax ? argmax->data() : nullptr);
  return y;
}

template <class T>
void maxpool2d_backward(const Tensor<T>& dy, const std::vector<std::int64_t>& argmax, Tensor<T>& dx) {
  TASN_CHECK_ARG(static_cast<std::int64_t>(argmax.size()) == dy.numel(), "maxpool2d_backward: argmax holds ",
                 argmax.size(), " entries but dy has ", dy.numel());
  // serial: the wrapper does not know the planes (argmax indexes the whole input)
  for (std::int64_t o = 0; o < dy.numel(); ++o) dx.data[argmax[o]] += dy.data[o];
}

// (NC planes of P) -> NC means.
template <class T>
void global_avgpool(std::int64_t NC, std::int64_t P, const T* x, T* y) {
  parallel_for_blocks(NC, [&](std::int64_t b, std::int64_t e) {
    for (std::int64_t nc = b; nc < e; ++nc) {
      double s = 0;
      for (std::int64_t p = 0; p < P; ++p) s += x[nc * P + p];
      y[nc] = static_cast<T>(s / double(P));
    }
  });
}
// dx (+)= dy / P, broadcast over each plane.
template <class T>
void global_avgpool_grad(std::int64_t NC, std::int64_t P, const T* dy, T* dx, bool accumulate) {
  parallel_for_blocks(NC, [&](std::int64_t b, std::int64_t e) {
    for (std::int64_t nc = b; nc < e; ++nc) {
      const T v = dy[nc] / T(P);
      if (accumulate)
        for (std::int64_t p = 0; p < P; ++p) dx[nc * P + p] += v;
      else
        for (std::int64_t p = 0; p < P; ++p) dx[nc * P + p] = v;
    }
  });
}

// (N, C, H, W) -> (N, C)
template <class T>
Tensor<T> global_avgpool_forward(const Tensor<T>& x) {
  detail::check_rank(x, 4, "x", "global_avgpool_forward");
  Tensor<T> y({x.dim(0), x.dim(1)});
  global_avgpool(x.dim(0) * x.dim(1), x.dim(2) * x.dim(3), x.ptr(), y.ptr());
  return y;
}

template <class T>
void global_avgpool_backward(const Tensor<T>& dy, Tensor<T>& dx) {
  const std::int64_t NC = dy.numel(), P = dx.numel() / NC;
  global_avgpool_grad(NC, P, dy.ptr(), dx.ptr(), true);
}

// y (N, out) = x (N, in) weight^T + bias (bias may be null); weight (out, in).
template <class T>
void linear(std::int64_t N, std::int64_t I, std::int64_t O, const T* x, const T* weight, const T* bias, T* y) {
  Eigen::Map<Mat<T>> Y(y, N, O);
  {
    const LibraryCall gemm;  // Eigen allocates its blocking
    Y.noalias() = Eigen::Map<const Mat<T>>(x, N, I) * Eigen::Map<const Mat<T>>(weight, O, I).transpose();
  }
  if (bias) Y.rowwise() += Eigen::Map<const Eigen::Matrix<T, 1, Eigen::Dynamic>>(bias, O);
}
// dx, dweight, dbias (each may be null) += the gradients of linear for upstream dy.
template <class T>
void linear_grad(std::int64_t N, std::int64_t I, std::int64_t O, const T* x, const T* weight, const T* dy, T* dx,
                 T* dweight, T* dbias) {
  Eigen::Map<const Mat<T>> X(x, N, I), Wt(weight, O, I), dY(dy, N, O);
  if (dx) {
    const LibraryCall gemm;  // Eigen allocates its blocking
    Eigen::Map<Mat<T>>(dx, N, I).noalias() += dY * Wt;
  }
  if (dweight) {
    const LibraryCall gemm;  // Eigen allocates its blocking
    Eigen::Map<Mat<T>>(dweight, O, I).noalias() += dY.transpose() * X;
  }
  if (dbias) Eigen::Map<Eigen::Matrix<T, 1, Eigen::Dynamic>>(dbias, O) += dY.colwise().sum();
}

template <class T>
Tensor<T> linear_forward(const Tensor<T>& x, const Tensor<T>& weight, OptConst<T> bias) {
  constexpr const char* op = "linear_forward";
  detail::check_rank(x, 2, "x", op);
  detail::check_rank(weight, 2, "weight", op);
  TASN_CHECK_ARG(weight.dim(1) == x.dim(1), op, ": weight ", weight.shape_str(), " expects ", weight.dim(1),
                 " features but x ", x.shape_str(), " has ", x.dim(1));
  Tensor<T> y({x.dim(0), weight.dim(0)});
  linear(x.dim(0), x.dim(1), weight.dim(0), x.ptr(), weight.ptr(), bias ? bias->ptr() : nullptr, y.ptr());
  return y;
}

template <class T>
void linear_backward(const Tensor<T>& x, const Tensor<T>& weight, const Tensor<T>& dy, Opt<T> dx,
                     Opt<T> dweight, Opt<T> dbias) {
  const std::int64_t N = x.dim(0), I = x.dim(1), O = weight.dim(0);
  TASN_CHECK_ARG(dy.shape == std::vector<std::int64_t>({N, O}), "linear_backward: dy has shape ", dy.shape_str(),
                 " but the output is (", N, ", ", O, ")");
  linear_grad(N, I, O, x.ptr(), weight.ptr(), dy.ptr(), dx ? dx->ptr() : nullptr, dweight ? dweight->ptr() : nullptr,
              dbias ? dbias->ptr() : nullptr);
}

// ---- bilinear resize (align_corners true or false), batch concat / slice -----------------------

// Taps: layer_tap (nn/elementwise.h), in double, weights in T; the blend: resize_blend.

// NC planes (H, W) -> (Ho, Wo).
template <class T>
void resize_bilinear(std::int64_t NC, std::int64_t H, std::int64_t W, std::int64_t Ho, std::int64_t Wo,
                     bool align_corners, const T* x, T* y) {
  cpu::parallel_for(0, NC, [&](std::int64_t nc) {
    const T* in = x + nc * H * W;
    for (std::int64_t oy = 0; oy < Ho; ++oy) {
      const auto ty = layer_tap<T>(oy, H, Ho, align_corners);
      for (std::int64_t ox = 0; ox < Wo; ++ox) {
        const auto tx = layer_tap<T>(ox, W, Wo, align_corners);
        y[(nc * Ho + oy) * Wo + ox] = resize_blend(in, W, ty, tx);
      }
    }
  });
}

template <class T>
Tensor<T> resize_bilinear_forward(const Tensor<T>& x, std::int64_t Ho, std::int64_t Wo, bool align_corners) {
  detail::check_rank(x, 4, "x", "resize_bilinear_forward");
  TASN_CHECK_ARG(Ho >= 1 && Wo >= 1, "resize_bilinear_forward: output size must be >= 1, got (", Ho, ", ", Wo, ")");
  Tensor<T> y({x.dim(0), x.dim(1), Ho, Wo});
  resize_bilinear(x.dim(0) * x.dim(1), x.dim(2), x.dim(3), Ho, Wo, align_corners, x.ptr(), y.ptr());
  return y;
}

template <class T>
void resize_bilinear_backward(const Tensor<T>& dy, bool align_corners, Tensor<T>& dx) {
  const std::int64_t NC = dx.dim(0) * dx.dim(1), H = dx.dim(2), W = dx.dim(3), Ho = dy.dim(2), Wo = dy.dim(3);
  cpu::parallel_for(0, NC, [&](std::int64_t nc) {
    T* g = dx.ptr() + nc * H * W;
    for (std::int64_t oy = 0; oy < Ho; ++oy) {
      const auto ty = layer_tap<T>(oy, H, Ho, align_corners);
      for (std::int64_t ox = 0; ox < Wo; ++ox) {
        const auto tx = layer_tap<T>(ox, W, Wo, align_corners);
        const T d = dy.data[(nc * Ho + oy) * Wo + ox];
        g[ty.i0 * W + tx.i0] += (1 - ty.w1) * (1 - tx.w1) * d;
        g[ty.i0 * W + tx.i1] += (1 - ty.w1) * tx.w1 * d;
        g[ty.i1 * W + tx.i0] += ty.w1 * (1 - tx.w1) * d;
        g[ty.i1 * W + tx.i1] += ty.w1 * tx.w1 * d;
      }
    }
  });
}

// Concatenate along the batch axis (all other sizes must agree).
template <class T>
Tensor<T> concat_batch(const Tensor<T>& a, const Tensor<T>& b) {
  TASN_CHECK_ARG(a.shape.size() == b.shape.size() && std::equal(a.shape.begin() + 1, a.shape.end(), b.shape.begin() + 1),
                 "concat_batch: a ", a.shape_str(), " and b ", b.shape_str(), " differ beyond the batch axis");
  auto shape = a.shape;
  shape[0] += b.shape[0];
  Tensor<T> y(shape);
  std::copy(a.data.begin(), a.data.end(), y.data.begin());
  std::copy(b.data.begin(), b.data.end(), y.data.begin() + a.numel());
  return y;
}

// Rows [begin, begin + count) of the batch axis.
template <class T>
Tensor<T> slice_batch(const Tensor<T>& x, std::int64_t begin, std::int64_t count) {
  TASN_CHECK_ARG(begin >= 0 && count >= 0 && begin + count <= x.dim(0), "slice_batch: rows [", begin, ", ",
                 begin + count, ") out of a batch of ", x.dim(0));
  auto shape = x.shape;
  shape[0] = count;
  Tensor<T> y(shape);
  const std::int64_t per = x.numel() / x.dim(0);
  std::copy(x.data.begin() + begin * per, x.data.begin() + (begin + count) * per, y.data.begin());
  return y;
}

}  // namespace tasn::nn
