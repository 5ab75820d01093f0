// python/csrc/plumbing.h - the kernels behind torch.ops.tasn, written once for every backend.
//
// Each function below takes PyTorch tensors, checks them the PyTorch way (defined, rank, device,
// dtype; non-contiguous inputs are made contiguous), allocates the outputs with the inputs'
// options, fills the library's arguments struct with views of them and hands it to the backend
// `B`:
//
//   B::dispatch(t, op, name, f)      calls f(T{}) with the library type T for t's dtype (on t's
//                                    device: CUDA sets a device guard), or throws
//                                    the backend's dtype error; it also turns tasn::Error into
//                                    c10::Error (RuntimeError in Python) with the library's message
//   B::run(args)                     runs the operator (tasn::cpu::op(args) or tasn::cuda::op(ctx,
//                                    args, ws) on the current stream); the Meta backend does nothing
//   B::check_labels(labels, k, ...)  refuses bad labels and channel indices where that costs no
//   B::check_channels(channels, C)   synchronisation (the CPU); CUDA gives what the library's
//                                    unchecked mode gives (a NaN loss or map, docs/pytorch.md)
//
// So the CPU (ops_cpu.cpp) and CUDA (ops_cuda.cu) kernels are the same code and give the same
// shapes, dtypes and messages. (The shape-only "fake" kernels that torch.compile traces with are
// Python, tasn_torch/_fake.py: they must work on symbolic sizes.) Every call passes options.check_finite = false: as in
// PyTorch, NaN and infinity propagate, and a CUDA call never synchronises (docs/pytorch.md).
// No Eigen here: this header is also compiled by nvcc.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Optional.h>
#include <torch/library.h>

#include <cstdint>
#include <string>
#include <tuple>

#include "tasn/attention_sampler_common.h"
#include "tasn/losses_common.h"
#include "tasn/trilinear_attention_common.h"

// The Meta kernels instantiate the arguments structs with PyTorch's half types: their maps and
// grids are float, as for the CUDA path's __half and __nv_bfloat16 (tasn/core/dtype.cuh).
namespace tasn {
template <>
struct compute_type<c10::Half> {
  using type = float;
};
template <>
struct compute_type<c10::BFloat16> {
  using type = float;
};
}  // namespace tasn

namespace tasn_torch {

// Runs f, turning the library's tasn::Error (a bad argument it found) into a c10::Error, which
// Python sees as RuntimeError, with the library's message under the operator's namespace
// ("tasn::distillation_loss: teacher has shape ...").
template <class F>
void translate_errors(F&& f) {
  try {
    f();
  } catch (const tasn::Error& e) {
    TORCH_CHECK(false, "tasn::", e.what());
  }
}

// The at::ScalarType of a library storage type (the CUDA file adds __half and __nv_bfloat16).
template <class T>
struct scalar_of;
template <>
struct scalar_of<float> {
  static constexpr at::ScalarType value = at::kFloat;
};
template <>
struct scalar_of<double> {
  static constexpr at::ScalarType value = at::kDouble;
};

template <>
struct scalar_of<c10::Half> {
  static constexpr at::ScalarType value = at::kHalf;
};
template <>
struct scalar_of<c10::BFloat16> {
  static constexpr at::ScalarType value = at::kBFloat16;
};

template <class T>
at::ScalarType compute_scalar() {
  return scalar_of<tasn::compute_type_t<T>>::value;
}

// A non-null address for the views of empty tensors (whose data_ptr may be null): the library
// requires required views to be present even when they hold no element, and touches none.
inline void* empty_address() {
  alignas(256) static unsigned char dummy[256];
  return dummy;
}

// A packed view of a contiguous tensor of R dimensions.
template <class T, int R>
tasn::TensorRef<T, R> view(const at::Tensor& t) {
  tasn::TensorRef<T, R> v;
  v.data = reinterpret_cast<T*>(t.numel() ? t.data_ptr() : empty_address());
  std::int64_t st = 1;
  for (int d = R - 1; d >= 0; --d) {
    v.size[d] = t.size(d);
    v.stride[d] = st;
    st *= std::max<std::int64_t>(1, t.size(d));
  }
  return v;
}

// A checked input: defined, `dim` dimensions, on the device of `like`; returned contiguous.
inline at::Tensor input(const at::Tensor& t, const char* op, const char* name, std::int64_t dim, const char* layout,
                        const at::Tensor& like) {
  TORCH_CHECK(t.defined(), op, ": ", name, " is an undefined tensor");
  TORCH_CHECK(t.dim() == dim, op, ": expected ", name, " to be a ", dim, "-D tensor ", layout, ", got a ", t.dim(),
              "-D tensor of shape ", t.sizes());
  TORCH_CHECK(t.device() == like.device(), op, ": expected all tensors on one device, but ", name, " is on ",
              t.device(), " and the first input on ", like.device());
  return t.contiguous();
}

// An input that must hold dtype `st` (the leading input's, or its compute type for maps and grids).
inline at::Tensor typed_input(const at::Tensor& t, const char* op, const char* name, std::int64_t dim,
                              const char* layout, const at::Tensor& like, at::ScalarType st) {
  at::Tensor c = input(t, op, name, dim, layout, like);
  TORCH_CHECK(c.scalar_type() == st, op, ": expected ", name, " to have dtype ", st, ", got ", c.scalar_type());
  return c;
}

inline at::Tensor labels_input(const at::Tensor& t, const char* op, const at::Tensor& like) {
  at::Tensor c = input(t, op, "labels", 1, "(N)", like);
  TORCH_CHECK(c.scalar_type() == at::kLong, op, ": expected labels to have dtype int64 (torch.long), got ",
              c.scalar_type());
  return c;
}

inline tasn::Reduction reduction_of(c10::string_view r, const char* op) {
  if (r == "none") return tasn::Reduction::None;
  if (r == "sum") return tasn::Reduction::Sum;
  if (r == "mean") return tasn::Reduction::Mean;
  TORCH_CHECK(false, op, ": reduction must be 'none', 'sum' or 'mean', got '", std::string(r.data(), r.size()), "'");
}

inline tasn::GridMode grid_mode_of(c10::string_view m, const char* op) {
  if (m == "exact") return tasn::GridMode::Exact;
  if (m == "official") return tasn::GridMode::Official;
  TORCH_CHECK(false, op, ": mode must be 'exact' or 'official', got '", std::string(m.data(), m.size()), "'");
}

inline void check_size(std::int64_t v, const char* op, const char* name) {
  TORCH_CHECK(v >= 1, op, ": ", name, " must be >= 1, got ", v);
}

// The loss tensor of a reduction: (N) for 'none', a 0-dim tensor (as torch.nn.functional's
// losses) for 'sum' and 'mean'; the library's view of it is (1).
inline at::Tensor new_loss(std::int64_t n, tasn::Reduction r, const at::TensorOptions& o) {
  return r == tasn::Reduction::None ? at::empty({n}, o) : at::empty({}, o);
}
inline at::Tensor loss_grad_input(const at::Tensor& dloss, std::int64_t n, tasn::Reduction r, const char* op,
                                  const at::Tensor& like) {
  TORCH_CHECK(dloss.defined(), op, ": dloss is an undefined tensor");
  const std::int64_t want = r == tasn::Reduction::None ? n : 1;
  TORCH_CHECK(dloss.numel() == want, op, ": expected dloss with ", want, " element(s) for reduction ",
              tasn::to_string(r), ", got shape ", dloss.sizes());
  TORCH_CHECK(dloss.device() == like.device(), op, ": expected all tensors on one device, but dloss is on ",
              dloss.device(), " and the first input on ", like.device());
  TORCH_CHECK(dloss.scalar_type() == like.scalar_type(), op, ": expected dloss to have dtype ", like.scalar_type(),
              ", got ", dloss.scalar_type());
  return dloss.reshape({want}).contiguous();
}

// ---- trilinear attention ------------------------------------------------------------------------

// m = trilinear_attention(x); with save, also S then A (the backward pass's saved buffer).
template <class B>
std::tuple<at::Tensor, at::Tensor> trilinear_forward(const at::Tensor& x_, double beta, bool save) {
  const char* op = "tasn::trilinear_attention";
  const at::Tensor x = input(x_, op, "x", 4, "(N, C, H, W)", x_);
  at::Tensor m = at::empty_like(x, at::MemoryFormat::Contiguous), saved;
  B::dispatch(x, op, "x", [&](auto tag) {
    using T = decltype(tag);
    tasn::TrilinearForwardArgs<T> a;
    a.x = view<const T, 4>(x);
    a.m = view<T, 4>(m);
    if (save) {
      saved = at::empty({tasn::trilinear_saved_elems(a.x)}, x.options());
      a.saved = view<T, 1>(saved);
    }
    a.options.beta = beta;
    a.options.check_finite = false;
    B::run(a);
  });
  return {m, saved};
}

template <class B>
at::Tensor trilinear_attention(const at::Tensor& x, double beta) {
  return std::get<0>(trilinear_forward<B>(x, beta, false));
}
template <class B>
std::tuple<at::Tensor, at::Tensor> trilinear_attention_forward(const at::Tensor& x, double beta) {
  return trilinear_forward<B>(x, beta, true);
}

template <class B>
at::Tensor trilinear_attention_backward(const at::Tensor& dm_, const at::Tensor& x_, const c10::optional<at::Tensor>& saved_,
                                        double beta) {
  const char* op = "tasn::trilinear_attention_backward";
  const at::Tensor x = input(x_, op, "x", 4, "(N, C, H, W)", x_);
  const at::Tensor dm = typed_input(dm_, op, "dm", 4, "(N, C, H, W)", x, x.scalar_type());
  at::Tensor saved;
  if (saved_ && saved_->defined()) saved = typed_input(*saved_, op, "saved", 1, "(N*C*(H*W + C))", x, x.scalar_type());
  at::Tensor dx = at::empty_like(x, at::MemoryFormat::Contiguous);
  B::dispatch(x, op, "x", [&](auto tag) {
    using T = decltype(tag);
    tasn::TrilinearBackwardArgs<T> a;
    a.x = view<const T, 4>(x);
    a.dm = view<const T, 4>(dm);
    if (saved.defined()) a.saved = view<const T, 1>(saved);
    a.dx = view<T, 4>(dx);
    a.options.beta = beta;
    a.options.check_finite = false;
    B::run(a);
  });
  return dx;
}

// ---- attention maps -----------------------------------------------------------------------------

template <class B>
at::Tensor structure_map(const at::Tensor& m_, bool distinct) {
  const char* op = "tasn::structure_map";
  const at::Tensor m = input(m_, op, "m", 4, "(N, C, h, w)", m_);
  at::Tensor out;
  B::dispatch(m, op, "m", [&](auto tag) {
    using T = decltype(tag);
    out = at::empty({m.size(0), m.size(2), m.size(3)}, m.options().dtype(compute_scalar<T>()));
    tasn::StructureMapArgs<T> a;
    a.m = view<const T, 4>(m);
    a.out = view<tasn::compute_type_t<T>, 3>(out);
    a.options.distinct = distinct;
    a.options.check_finite = false;
    B::run(a);
  });
  return out;
}

template <class B>
std::tuple<at::Tensor, at::Tensor> detail_map(const at::Tensor& m_, const c10::optional<at::Tensor>& channels_,
                                              bool training, std::int64_t seed, std::int64_t first_sample) {
  const char* op = "tasn::detail_map";
  const at::Tensor m = input(m_, op, "m", 4, "(N, C, h, w)", m_);
  at::Tensor channels;
  if (channels_ && channels_->defined()) {
    channels = input(*channels_, op, "channels", 1, "(N)", m);
    TORCH_CHECK(channels.scalar_type() == at::kLong, op, ": expected channels to have dtype int64, got ",
                channels.scalar_type());
  }
  // chosen: -1 where no single channel was used (evaluation: the plain channel sum; the library
  // leaves it unwritten then)
  at::Tensor out, chosen = training ? at::empty({m.size(0)}, m.options().dtype(at::kLong))
                                    : at::full({m.size(0)}, -1, m.options().dtype(at::kLong));
  B::dispatch(m, op, "m", [&](auto tag) {
    using T = decltype(tag);
    out = at::empty({m.size(0), m.size(2), m.size(3)}, m.options().dtype(compute_scalar<T>()));
    tasn::DetailMapArgs<T> a;
    a.m = view<const T, 4>(m);
    if (channels.defined()) a.channels = view<const std::int64_t, 1>(channels);
    a.out = view<tasn::compute_type_t<T>, 3>(out);
    a.chosen = view<std::int64_t, 1>(chosen);
    a.options.training = training;
    a.options.seed = static_cast<std::uint64_t>(seed);
    a.options.first_sample = first_sample;
    a.options.check_finite = false;
    if (training && channels.defined()) B::check_channels(a.channels, m.size(1), op);
    B::run(a);
  });
  return {out, chosen};
}

template <class B>
at::Tensor upsample_bilinear(const at::Tensor& in_, std::int64_t H, std::int64_t W, bool squared) {
  const char* op = "tasn::upsample_bilinear";
  const at::Tensor in = input(in_, op, "input", 3, "(N, h, w)", in_);
  check_size(H, op, "H");
  check_size(W, op, "W");
  at::Tensor out = at::empty({in.size(0), H, W}, in.options());
  B::dispatch(in, op, "input", [&](auto tag) {
    using V = tasn::compute_type_t<decltype(tag)>;
    TORCH_CHECK(scalar_of<V>::value == in.scalar_type(), op, ": expected input to have dtype ", scalar_of<V>::value,
                " (a map), got ", in.scalar_type());
    tasn::UpsampleArgs<V> a;
    a.in = view<const V, 3>(in);
    a.out = view<V, 3>(out);
    a.options.squared = squared;
    a.options.check_finite = false;
    B::run(a);
  });
  return out;
}

template <class B>
std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_marginals(const at::Tensor& map_, std::int64_t Hs,
                                                                   std::int64_t Ws) {
  const char* op = "tasn::attention_marginals";
  const at::Tensor map = input(map_, op, "map", 3, "(N, h, w)", map_);
  check_size(Hs, op, "Hs");
  check_size(Ws, op, "Ws");
  const std::int64_t N = map.size(0);
  at::Tensor my = at::empty({N, Hs}, map.options()), mx = at::empty({N, Ws}, map.options());
  at::Tensor fallback = at::empty({N}, map.options().dtype(at::kBool));
  B::dispatch(map, op, "map", [&](auto tag) {
    using V = tasn::compute_type_t<decltype(tag)>;
    TORCH_CHECK(scalar_of<V>::value == map.scalar_type(), op, ": expected map to have dtype ", scalar_of<V>::value,
                ", got ", map.scalar_type());
    tasn::MarginalsArgs<V> a;
    a.map = view<const V, 3>(map);
    a.my = view<V, 2>(my);
    a.mx = view<V, 2>(mx);
    a.fallback = view<unsigned char, 1>(fallback);
    a.options.check_finite = false;
    B::run(a);
  });
  return {my, mx, fallback};
}

inline tasn::GridOptions grid_options(double dense, std::int64_t iters, c10::string_view mode, const char* op) {
  TORCH_CHECK(iters >= 0 && iters <= 1000000, op, ": iters must be in [0, 1e6], got ", iters);
  tasn::GridOptions g;
  g.dense = dense;
  g.iters = static_cast<int>(iters);
  g.mode = grid_mode_of(mode, op);
  g.check_finite = false;
  return g;
}

template <class B>
std::tuple<at::Tensor, at::Tensor> sampling_grid(const at::Tensor& my_, const at::Tensor& mx_, std::int64_t Ho,
                                                 std::int64_t Wo, double dense, std::int64_t iters,
                                                 c10::string_view mode) {
  const char* op = "tasn::sampling_grid";
  const at::Tensor my = input(my_, op, "my", 2, "(N, Hs)", my_);
  const at::Tensor mx = typed_input(mx_, op, "mx", 2, "(N, Ws)", my, my.scalar_type());
  check_size(Ho, op, "Ho");
  check_size(Wo, op, "Wo");
  const tasn::GridOptions g = grid_options(dense, iters, mode, op);
  at::Tensor gy = at::empty({my.size(0), Ho}, my.options()), gx = at::empty({my.size(0), Wo}, my.options());
  B::dispatch(my, op, "my", [&](auto tag) {
    using V = tasn::compute_type_t<decltype(tag)>;
    TORCH_CHECK(scalar_of<V>::value == my.scalar_type(), op, ": expected my to have dtype ", scalar_of<V>::value,
                ", got ", my.scalar_type());
    tasn::GridArgs<V> a;
    a.my = view<const V, 2>(my);
    a.mx = view<const V, 2>(mx);
    a.gy = view<V, 2>(gy);
    a.gx = view<V, 2>(gx);
    a.options = g;
    B::run(a);
  });
  return {gy, gx};
}

// ---- sampling -----------------------------------------------------------------------------------

template <class B>
at::Tensor sample_separable(const at::Tensor& img_, const at::Tensor& gy_, const at::Tensor& gx_) {
  const char* op = "tasn::sample_separable";
  const at::Tensor img = input(img_, op, "img", 4, "(N, C, Hi, Wi)", img_);
  at::Tensor out;
  B::dispatch(img, op, "img", [&](auto tag) {
    using T = decltype(tag);
    using V = tasn::compute_type_t<T>;
    const at::Tensor gy = typed_input(gy_, op, "gy", 2, "(N, Ho)", img, scalar_of<V>::value);
    const at::Tensor gx = typed_input(gx_, op, "gx", 2, "(N, Wo)", img, scalar_of<V>::value);
    out = at::empty({img.size(0), img.size(1), gy.size(1), gx.size(1)}, img.options());
    tasn::SampleSeparableArgs<T> a;
    a.img = view<const T, 4>(img);
    a.gy = view<const V, 2>(gy);
    a.gx = view<const V, 2>(gx);
    a.out = view<T, 4>(out);
    a.options.check_finite = false;
    B::run(a);
  });
  return out;
}

template <class B>
at::Tensor sample_separable_backward(const at::Tensor& dout_, const at::Tensor& gy_, const at::Tensor& gx_,
                                     std::int64_t Hi, std::int64_t Wi) {
  const char* op = "tasn::sample_separable_backward";
  const at::Tensor dout = input(dout_, op, "dout", 4, "(N, C, Ho, Wo)", dout_);
  check_size(Hi, op, "Hi");
  check_size(Wi, op, "Wi");
  at::Tensor dimg = at::empty({dout.size(0), dout.size(1), Hi, Wi}, dout.options());
  B::dispatch(dout, op, "dout", [&](auto tag) {
    using T = decltype(tag);
    using V = tasn::compute_type_t<T>;
    const at::Tensor gy = typed_input(gy_, op, "gy", 2, "(N, Ho)", dout, scalar_of<V>::value);
    const at::Tensor gx = typed_input(gx_, op, "gx", 2, "(N, Wo)", dout, scalar_of<V>::value);
    tasn::SampleSeparableBackwardArgs<T> a;
    a.dout = view<const T, 4>(dout);
    a.gy = view<const V, 2>(gy);
    a.gx = view<const V, 2>(gx);
    a.dimg = view<T, 4>(dimg);
    a.options.check_finite = false;
    B::run(a);
  });
  return dimg;
}

template <class B>
at::Tensor sample_grid(const at::Tensor& img_, const at::Tensor& grid_) {
  const char* op = "tasn::sample_grid";
  const at::Tensor img = input(img_, op, "img", 4, "(N, C, Hi, Wi)", img_);
  at::Tensor out;
  B::dispatch(img, op, "img", [&](auto tag) {
    using T = decltype(tag);
    using V = tasn::compute_type_t<T>;
    const at::Tensor grid = typed_input(grid_, op, "grid", 4, "(N, Ho, Wo, 2)", img, scalar_of<V>::value);
    out = at::empty({img.size(0), img.size(1), grid.size(1), grid.size(2)}, img.options());
    tasn::SampleGridArgs<T> a;
    a.img = view<const T, 4>(img);
    a.grid = view<const V, 4>(grid);
    a.out = view<T, 4>(out);
    a.options.check_finite = false;
    B::run(a);
  });
  return out;
}

template <class B>
std::tuple<at::Tensor, at::Tensor> sample_grid_backward(const at::Tensor& dout_, const at::Tensor& img_,
                                                        const at::Tensor& grid_, bool img_grad, bool grid_grad) {
  const char* op = "tasn::sample_grid_backward";
  const at::Tensor img = input(img_, op, "img", 4, "(N, C, Hi, Wi)", img_);
  at::Tensor dimg, dgrid;
  B::dispatch(img, op, "img", [&](auto tag) {
    using T = decltype(tag);
    using V = tasn::compute_type_t<T>;
    const at::Tensor grid = typed_input(grid_, op, "grid", 4, "(N, Ho, Wo, 2)", img, scalar_of<V>::value);
    const at::Tensor dout = typed_input(dout_, op, "dout", 4, "(N, C, Ho, Wo)", img, img.scalar_type());
    tasn::SampleGridBackwardArgs<T> a;
    a.img = view<const T, 4>(img);
    a.grid = view<const V, 4>(grid);
    a.dout = view<const T, 4>(dout);
    // A gradient not asked for comes back as an empty tensor (schemas return Tensor, not Tensor?).
    dimg = img_grad ? at::empty_like(img, at::MemoryFormat::Contiguous) : at::empty({0}, img.options());
    dgrid = grid_grad ? at::empty_like(grid, at::MemoryFormat::Contiguous) : at::empty({0}, grid.options());
    if (img_grad) a.dimg = view<T, 4>(dimg);
    if (grid_grad) a.dgrid = view<V, 4>(dgrid);
    a.options.check_finite = false;
    if (img_grad || grid_grad) B::run(a);
  });
  return {dimg, dgrid};
}

// out, gy, gx, fallback = attention_sample(img, attention, ...): marginals, grid and sampling in one
// call (the separable grid it used comes back for the backward pass and for display).
template <class B>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> attention_sample(
    const at::Tensor& img_, const at::Tensor& attention_, std::int64_t Ho, std::int64_t Wo, double dense,
    std::int64_t iters, c10::string_view mode, std::int64_t upsample_h, std::int64_t upsample_w, bool squared) {
  const char* op = "tasn::attention_sample";
  const at::Tensor img = input(img_, op, "img", 4, "(N, C, Hi, Wi)", img_);
  check_size(Ho, op, "Ho");
  check_size(Wo, op, "Wo");
  TORCH_CHECK(upsample_h >= 0 && upsample_w >= 0, op, ": upsample_h and upsample_w must be >= 0 (0: the image size), got ",
              upsample_h, " and ", upsample_w);
  const tasn::GridOptions g = grid_options(dense, iters, mode, op);
  const std::int64_t N = img.size(0);
  at::Tensor out = at::empty({N, img.size(1), Ho, Wo}, img.options()), gy, gx;
  at::Tensor fallback = at::empty({N}, img.options().dtype(at::kBool));
  B::dispatch(img, op, "img", [&](auto tag) {
    using T = decltype(tag);
    using V = tasn::compute_type_t<T>;
    const at::Tensor attention = typed_input(attention_, op, "attention", 3, "(N, Ha, Wa)", img, scalar_of<V>::value);
    gy = at::empty({N, Ho}, attention.options());
    gx = at::empty({N, Wo}, attention.options());
    tasn::AttentionSampleArgs<T> a;
    a.img = view<const T, 4>(img);
    a.attention = view<const V, 3>(attention);
    a.out = view<T, 4>(out);
    a.gy = view<V, 2>(gy);
    a.gx = view<V, 2>(gx);
    a.fallback = view<unsigned char, 1>(fallback);
    a.options.grid = g;
    a.options.upsample_h = upsample_h;
    a.options.upsample_w = upsample_w;
    a.options.squared = squared;
    a.options.check_finite = false;
    B::run(a);
  });
  return {out, gy, gx, fallback};
}

// ---- losses -------------------------------------------------------------------------------------

inline tasn::DistillationOptions distillation_options(double temperature, bool kl, bool t_squared,
                                                      c10::string_view reduction, const char* op) {
  tasn::DistillationOptions o;
  o.temperature = temperature;
  o.kl = kl;
  o.t_squared = t_squared;
  o.reduction = reduction_of(reduction, op);
  o.check_finite = false;
  return o;
}

template <class B>
at::Tensor distillation_loss(const at::Tensor& student_, const at::Tensor& teacher_, double temperature, bool kl,
                             bool t_squared, c10::string_view reduction) {
  const char* op = "tasn::distillation_loss";
  const tasn::DistillationOptions o = distillation_options(temperature, kl, t_squared, reduction, op);
  const at::Tensor student = input(student_, op, "student", 2, "(N, K)", student_);
  const at::Tensor teacher = typed_input(teacher_, op, "teacher", 2, "(N, K)", student, student.scalar_type());
  at::Tensor loss = new_loss(student.size(0), o.reduction, student.options());
  B::dispatch(student, op, "student", [&](auto tag) {
    using T = decltype(tag);
    tasn::DistillationArgs<T> a;
    a.student = view<const T, 2>(student);
    a.teacher = view<const T, 2>(teacher);
    a.loss = view<T, 1>(loss.view({-1}));
    a.options = o;
    B::run(a);
  });
  return loss;
}

template <class B>
std::tuple<at::Tensor, at::Tensor> distillation_loss_backward(const at::Tensor& dloss_, const at::Tensor& student_,
                                                              const at::Tensor& teacher_, double temperature, bool kl,
                                                              bool t_squared, c10::string_view reduction,
                                                              bool student_grad, bool teacher_grad) {
  const char* op = "tasn::distillation_loss_backward";
  const tasn::DistillationOptions o = distillation_options(temperature, kl, t_squared, reduction, op);
  const at::Tensor student = input(student_, op, "student", 2, "(N, K)", student_);
  const at::Tensor teacher = typed_input(teacher_, op, "teacher", 2, "(N, K)", student, student.scalar_type());
  const at::Tensor dloss = loss_grad_input(dloss_, student.size(0), o.reduction, op, student);
  // A gradient not asked for comes back as an empty tensor (schemas return Tensor, not Tensor?).
  const at::Tensor ds = student_grad ? at::empty_like(student, at::MemoryFormat::Contiguous) : at::empty({0}, student.options());
  const at::Tensor dt = teacher_grad ? at::empty_like(teacher, at::MemoryFormat::Contiguous) : at::empty({0}, teacher.options());
  B::dispatch(student, op, "student", [&](auto tag) {
    using T = decltype(tag);
    tasn::DistillationArgs<T> a;
    a.student = view<const T, 2>(student);
    a.teacher = view<const T, 2>(teacher);
    if (student_grad) a.dstudent = view<T, 2>(ds);
    if (teacher_grad) a.dteacher = view<T, 2>(dt);
    a.dloss = view<const T, 1>(dloss);
    a.options = o;
    if (student_grad || teacher_grad) B::run(a);
  });
  return {ds, dt};
}

inline tasn::CrossEntropyOptions cross_entropy_options(std::int64_t ignore_index, double grad_scale,
                                                       double label_smoothing, c10::string_view reduction,
                                                       const char* op) {
  tasn::CrossEntropyOptions o;
  o.ignore_index = ignore_index;
  o.grad_scale = grad_scale;
  o.label_smoothing = label_smoothing;
  o.reduction = reduction_of(reduction, op);
  o.check_finite = false;
  return o;
}

template <class B>
at::Tensor softmax_cross_entropy(const at::Tensor& logits_, const at::Tensor& labels_, std::int64_t ignore_index,
                                 double grad_scale, double label_smoothing, c10::string_view reduction) {
  const char* op = "tasn::softmax_cross_entropy";
  const tasn::CrossEntropyOptions o = cross_entropy_options(ignore_index, grad_scale, label_smoothing, reduction, op);
  const at::Tensor logits = input(logits_, op, "logits", 2, "(N, K)", logits_);
  const at::Tensor labels = labels_input(labels_, op, logits);
  at::Tensor loss = new_loss(logits.size(0), o.reduction, logits.options());
  B::dispatch(logits, op, "logits", [&](auto tag) {
    using T = decltype(tag);
    tasn::CrossEntropyArgs<T> a;
    a.logits = view<const T, 2>(logits);
    a.labels = view<const std::int64_t, 1>(labels);
    a.loss = view<T, 1>(loss.view({-1}));
    a.options = o;
    B::check_labels(a.labels, logits.size(1), ignore_index, op);
    B::run(a);
  });
  return loss;
}

template <class B>
at::Tensor softmax_cross_entropy_backward(const at::Tensor& dloss_, const at::Tensor& logits_, const at::Tensor& labels_,
                                          std::int64_t ignore_index, double grad_scale, double label_smoothing,
                                          c10::string_view reduction) {
  const char* op = "tasn::softmax_cross_entropy_backward";
  const tasn::CrossEntropyOptions o = cross_entropy_options(ignore_index, grad_scale, label_smoothing, reduction, op);
  const at::Tensor logits = input(logits_, op, "logits", 2, "(N, K)", logits_);
  const at::Tensor labels = labels_input(labels_, op, logits);
  const at::Tensor dloss = loss_grad_input(dloss_, logits.size(0), o.reduction, op, logits);
  at::Tensor dlogits = at::empty_like(logits, at::MemoryFormat::Contiguous);
  B::dispatch(logits, op, "logits", [&](auto tag) {
    using T = decltype(tag);
    tasn::CrossEntropyArgs<T> a;
    a.logits = view<const T, 2>(logits);
    a.labels = view<const std::int64_t, 1>(labels);
    a.dlogits = view<T, 2>(dlogits);
    a.dloss = view<const T, 1>(dloss);
    a.options = o;
    B::check_labels(a.labels, logits.size(1), ignore_index, op);
    B::run(a);
  });
  return dlogits;
}

template <class B>
at::Tensor topk_correct(const at::Tensor& logits_, const at::Tensor& labels_, std::int64_t max_k,
                        std::int64_t ignore_index) {
  const char* op = "tasn::topk_correct";
  const at::Tensor logits = input(logits_, op, "logits", 2, "(N, K)", logits_);
  const at::Tensor labels = labels_input(labels_, op, logits);
  check_size(max_k, op, "max_k");
  at::Tensor correct = at::empty({max_k}, logits.options().dtype(at::kLong));
  B::dispatch(logits, op, "logits", [&](auto tag) {
    using T = decltype(tag);
    tasn::TopkArgs<T> a;
    a.logits = view<const T, 2>(logits);
    a.labels = view<const std::int64_t, 1>(labels);
    a.correct = view<std::int64_t, 1>(correct);
    a.options.ignore_index = ignore_index;
    a.options.check_finite = false;
    B::check_labels(a.labels, logits.size(1), ignore_index, op);
    B::run(a);
  });
  return correct;
}

// Registers every kernel above for one dispatch key (the CPU and CUDA files call this).
template <class B>
void register_kernels(torch::Library& m) {
  m.impl("trilinear_attention", &trilinear_attention<B>);
  m.impl("trilinear_attention_forward", &trilinear_attention_forward<B>);
  m.impl("trilinear_attention_backward", &trilinear_attention_backward<B>);
  m.impl("structure_map", &structure_map<B>);
  m.impl("detail_map", &detail_map<B>);
  m.impl("upsample_bilinear", &upsample_bilinear<B>);
  m.impl("attention_marginals", &attention_marginals<B>);
  m.impl("sampling_grid", &sampling_grid<B>);
  m.impl("sample_separable", &sample_separable<B>);
  m.impl("sample_separable_backward", &sample_separable_backward<B>);
  m.impl("sample_grid", &sample_grid<B>);
  m.impl("sample_grid_backward", &sample_grid_backward<B>);
  m.impl("attention_sample", &attention_sample<B>);
  m.impl("distillation_loss", &distillation_loss<B>);
  m.impl("distillation_loss_backward", &distillation_loss_backward<B>);
  m.impl("softmax_cross_entropy", &softmax_cross_entropy<B>);
  m.impl("softmax_cross_entropy_backward", &softmax_cross_entropy_backward<B>);
  m.impl("topk_correct", &topk_correct<B>);
}

}  // namespace tasn_torch
