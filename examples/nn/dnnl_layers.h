// examples/nn/dnnl_layers.h - convolution and batch norm of the example trainer on the CPU through
// oneDNN (Debian's libdnnl-dev, 2.6; OpenMP threading, so it follows omp_get_max_threads()).
// Compiled only when TASN_HAVE_DNNL is defined (CMake option TASN_DNNL); the Eigen layers in
// layers.h stay the reference backend the tests compare against.
//
// The API works on raw float pointers, dense row-major at the boundary: activations NCHW,
// convolution weights OIHW, per-channel vectors of C values. Inside a call a primitive may work on
// oneDNN's blocked layouts (Layout::blocked): the call then reorders its inputs into arena buffers
// and its outputs back. Which layout each convolution direction uses is a Context setting; the
// defaults are what measured fastest here (bench/bench_nn_dnnl.cpp, numbers in the header of that
// file).
//
// Gradient conventions (as layers.h): conv2d_backward_weights and the batch-norm dgamma / dbeta
// always ADD (a weight may be shared by several convolutions: the TASN attention head applies one
// 3x3 weight with dilation 1, 2 and 3), the data gradients overwrite or add by a flag, so a layer
// whose input feeds one consumer need not zero its gradient buffer first.
//
// Memory: every primitive (and each reorder it needs) is created once per geometry and thread
// count and kept in the Context; a repeated call creates nothing (Context::primitives_created()
// counts). Scratchpads are in "user" mode and come, like the reorder buffers, from the caller's
// nn::Arena, rewound before the call returns. Execution goes through the C API with a stack array of
// arguments (the C++ API builds an std::unordered_map per call); what oneDNN itself still allocates
// per execute is reported by tests/dnnl_allocations.cpp.
//
// A Context is not thread-safe: one per thread that calls these functions.
#pragma once

#if defined(TASN_HAVE_DNNL)

#include <oneapi/dnnl/dnnl.hpp>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include "nn/arena.h"
#include "tasn/core/common.h"

namespace tasn::nn::dnnl {

namespace dn = ::dnnl;  // this namespace hides oneDNN's own `dnnl`

// ---- geometry -----------------------------------------------------------------------------------

// A 2-D convolution: x (n, cin, h, w), weight (cout, cin, kh, kw), y (n, cout, ho(), wo()); the
// same stride, padding (both sides) and dilation along both axes, as in torch.nn.Conv2d.
struct ConvGeometry {
  std::int64_t n = 0, cin = 0, h = 0, w = 0;
  std::int64_t cout = 0, kh = 0, kw = 0;
  std::int64_t stride = 1, padding = 0, dilation = 1;

  // PyTorch's output size; < 1 when the dilated kernel does not fit the padded input (the floor
  // division is taken only on a non-negative numerator: C++ truncates towards zero).
  std::int64_t ho() const { return out_size(h, kh); }
  std::int64_t wo() const { return out_size(w, kw); }
  std::int64_t x_numel() const { return n * cin * h * w; }
  std::int64_t weight_numel() const { return cout * cin * kh * kw; }
  std::int64_t y_numel() const { return n * cout * ho() * wo(); }

 private:
  std::int64_t out_size(std::int64_t in, std::int64_t k) const {
    const std::int64_t room = in + 2 * padding - dilation * (k - 1) - 1;
    return room < 0 ? 0 : room / stride + 1;
  }
};

inline std::string to_string(const ConvGeometry& g) {
  return ::tasn::detail::concat("x (", g.n, ", ", g.cin, ", ", g.h, ", ", g.w, "), weight (", g.cout, ", ", g.cin,
                                ", ", g.kh, ", ", g.kw, "), stride ", g.stride, ", padding ", g.padding, ", dilation ",
                                g.dilation);
}

// Throws tasn::InvalidArgument naming the sizes when g cannot be computed.
inline void check_geometry(const ConvGeometry& g, const char* op) {
  TASN_CHECK_ARG(g.n >= 1 && g.cin >= 1 && g.h >= 1 && g.w >= 1 && g.cout >= 1 && g.kh >= 1 && g.kw >= 1, op,
                 ": every size must be >= 1, got ", to_string(g));
  TASN_CHECK_ARG(g.stride >= 1 && g.dilation >= 1 && g.padding >= 0, op,
                 ": stride and dilation must be >= 1 and padding >= 0, got ", to_string(g));
  // 64-bit element counts (oneDNN indexes with int64 too)
  using ::tasn::detail::checked_add;
  using ::tasn::detail::checked_mul;
  checked_mul(checked_mul(g.n, g.cin, op), checked_mul(g.h, g.w, op), op);
  checked_mul(checked_mul(g.cout, g.cin, op), checked_mul(g.kh, g.kw, op), op);
  checked_add(g.h, checked_mul(2, g.padding, op), op);
  checked_add(g.w, checked_mul(2, g.padding, op), op);
  TASN_CHECK_ARG(g.ho() >= 1 && g.wo() >= 1, op, ": the output would be ", g.ho(), " x ", g.wo(), ": input ", g.h,
                 " x ", g.w, " with padding ", g.padding, " is smaller than the kernel ", g.kh, " x ", g.kw,
                 " with dilation ", g.dilation, " (", to_string(g), ")");
  checked_mul(checked_mul(g.n, g.cout, op), checked_mul(g.ho(), g.wo(), op), op);
}

// The geometry of x (shape N, C, H, W) convolved with weight (shape Cout, Cin, kh, kw); throws when
// the shapes do not fit together (rank, channels, output size).
inline ConvGeometry conv2d_geometry(const std::vector<std::int64_t>& x_shape,
                                      const std::vector<std::int64_t>& weight_shape, std::int64_t stride,
                                      std::int64_t padding, std::int64_t dilation) {
  constexpr const char* op = "dnnl::conv2d_geometry";
  auto str = [](const std::vector<std::int64_t>& s) {
    std::string r = "(";
    for (std::size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
    return r + ")";
  };
  TASN_CHECK_ARG(x_shape.size() == 4, op, ": x must have 4 dimensions (N, C, H, W), got ", str(x_shape));
  TASN_CHECK_ARG(weight_shape.size() == 4, op, ": weight must have 4 dimensions (Cout, Cin, kh, kw), got ",
                 str(weight_shape));
  TASN_CHECK_ARG(weight_shape[1] == x_shape[1], op, ": weight ", str(weight_shape), " expects ", weight_shape[1],
                 " input channels but x ", str(x_shape), " has ", x_shape[1]);
  const ConvGeometry g{x_shape[0], x_shape[1], x_shape[2], x_shape[3], weight_shape[0], weight_shape[2],
                         weight_shape[3], stride, padding, dilation};
  check_geometry(g, op);
  return g;
}

// Batch norm over x (n, c, p): statistics per channel over n * p values (p = h * w), epsilon eps.
// fuse_relu: y = max(bn(x), 0) in the same pass (oneDNN's fuse_norm_relu); training then keeps a
// mask of the positive outputs in a caller buffer of batchnorm_relu_workspace_bytes() that backward
// reads. Worth it with the blocked layout (backward 1.5-2.5x faster than BN then a ReLU pass), not
// on NCHW (oneDNN's NCHW fused kernel is 1.3-3x slower than its plain one).
struct BnGeometry {
  std::int64_t n = 0, c = 0, p = 0;
  double eps = 1e-5;
  bool fuse_relu = false;
  std::int64_t numel() const { return n * c * p; }
};

inline void check_geometry(const BnGeometry& g, const char* op) {
  TASN_CHECK_ARG(g.n >= 1 && g.c >= 1 && g.p >= 1, op, ": every size must be >= 1, got x (", g.n, ", ", g.c, ", ",
                 g.p, ")");
  TASN_CHECK_ARG(g.eps > 0 && g.eps <= ::tasn::detail::kFloatMax, op, ": eps must be > 0 (and a float), got ", g.eps);
  using ::tasn::detail::checked_mul;
  checked_mul(checked_mul(g.n, g.c, op), g.p, op);
}

// ---- context ------------------------------------------------------------------------------------

// plain: the primitive works on NCHW / OIHW directly. blocked: the primitive picks its layout
// (format_tag::any: nChw8c / OIhw8i8o with AVX2; batch norm nChw8c, nChw16c with AVX-512) and the
// call reorders to and from it. automatic (convolutions): plain for 1x1 kernels, blocked otherwise.
enum class Layout { plain, blocked, automatic };

// The defaults measured fastest at 1 and 2 threads on an AVX2 EPYC (bench/bench_nn_dnnl.cpp,
// numbers in its header): 3x3 convolutions run 1.3-3x faster blocked (reorders included) than on
// NCHW, 1x1 ones 1.1-1.8x faster on NCHW. oneDNN 2.6's NCHW batch norm is slower than the Eigen
// reference (0.5-0.95x; with the fused ReLU 0.3-0.6x); blocked with the reorders it is 1.1-2.4x
// faster, and the fused ReLU then halves the backward (it saves a pass over dy).
struct Layouts {
  Layout forward = Layout::automatic, backward_data = Layout::automatic, backward_weights = Layout::automatic;
  Layout batchnorm = Layout::blocked;  // automatic means blocked here
};

namespace detail {

using Key = std::array<std::int64_t, 16>;
constexpr int kMaxSlots = 10;

// Calls into dnnl_primitive_execute in progress (any thread). oneDNN 2.6 allocates inside every
// execute (its argument map and execution context: tests/dnnl_allocations.cpp counts them), so an
// allocation test of the trainer can tell those apart from the project's own with in_execute().
inline std::atomic<int> executing{0};
struct ExecuteScope {
  ExecuteScope() { executing.fetch_add(1, std::memory_order_relaxed); }
  ~ExecuteScope() { executing.fetch_sub(1, std::memory_order_relaxed); }
  ExecuteScope(const ExecuteScope&) = delete;
  ExecuteScope& operator=(const ExecuteScope&) = delete;
};

inline void check_status(dnnl_status_t s, const char* what) {
  if (s != dnnl_success) throw tasn::Error(::tasn::detail::concat("oneDNN: ", what, " failed with status ", int(s)));
}

inline std::int64_t max_threads() {
#if defined(_OPENMP)
  return omp_get_max_threads();
#else
  return 1;
#endif
}

// One argument of a primitive. `mem` is what the primitive sees. When the primitive's layout
// differs from the caller's (or an output must be added into the caller's buffer), `mem` lies in
// an arena buffer and `reorder` converts between it and `user` (the caller's pointer): before the
// primitive for an input, after it for an output (with a sum post-op when accumulating).
struct Slot {
  int arg = 0;
  bool output = false;
  dn::memory mem, user;
  dn::primitive reorder;
  dn::memory reorder_scratch;
  std::size_t bytes = 0, reorder_scratch_bytes = 0;
};

struct Entry {
  dn::primitive prim;
  std::vector<Slot> slots;
  dn::memory scratch;
  std::size_t scratch_bytes = 0;
  std::size_t workspace_bytes = 0;  // batch norm with a fused ReLU (training)
};

}  // namespace detail

// True while some thread is inside oneDNN's dnnl_primitive_execute (see detail::executing).
inline bool in_execute() { return detail::executing.load(std::memory_order_relaxed) > 0; }

class Context {
 public:
  explicit Context(Layouts layouts = {}) : layouts_(layouts), engine_(dn::engine::kind::cpu, 0), stream_(engine_) {}
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;

  const Layouts& layouts() const { return layouts_; }
  // What `automatic` means for a convolution: plain for 1x1 kernels (no reorder beats oneDNN's
  // blocked 1x1 there), blocked otherwise.
  static Layout conv_layout(Layout l, const ConvGeometry& g) {
    if (l != Layout::automatic) return l;
    return g.kh == 1 && g.kw == 1 ? Layout::plain : Layout::blocked;
  }
  // oneDNN primitives (computations and reorders) created so far; a call with a geometry seen
  // before (at the same thread count) adds none.
  std::int64_t primitives_created() const { return created_; }
  std::size_t cached_geometries() const { return cache_.size(); }

  // ---- used by the functions below ----
  const dn::engine& engine() const { return engine_; }

  // The entry for `key`, made by `make(entry)` on first use.
  template <class Make>
  detail::Entry& entry(const detail::Key& key, Make&& make) {
    auto it = cache_.find(key);
    if (it != cache_.end()) return it->second;
    detail::Entry e;
    try {
      make(e);
    } catch (const dn::error& err) {
      throw tasn::Error(::tasn::detail::concat("oneDNN could not create a primitive: ", err.what()));
    }
    return cache_.emplace(key, std::move(e)).first->second;
  }

  // Every primitive (computation or reorder) is created here, so the counter sees all of them.
  template <class PrimitiveDesc>
  dn::primitive create(const PrimitiveDesc& pd) {
    ++created_;
    return dn::primitive(pd.get());
  }

  // Adds an argument: `pd_md` as the primitive wants it, `user_md` as the caller's buffer holds it.
  void add_slot(detail::Entry& e, int arg, const dn::memory::desc& pd_md, const dn::memory::desc& user_md, bool output,
                bool accumulate = false) {
    detail::Slot s;
    s.arg = arg;
    s.output = output;
    s.mem = dn::memory(pd_md, engine_, DNNL_MEMORY_NONE);
    s.bytes = pd_md.get_size();
    if (pd_md != user_md || (output && accumulate)) {
      s.user = dn::memory(user_md, engine_, DNNL_MEMORY_NONE);
      dn::primitive_attr attr;
      attr.set_scratchpad_mode(dn::scratchpad_mode::user);
      if (output && accumulate) {
        dn::post_ops po;
        po.append_sum(1.f);
        attr.set_post_ops(po);
      }
      const auto rpd = output ? dn::reorder::primitive_desc(engine_, pd_md, engine_, user_md, attr)
                              : dn::reorder::primitive_desc(engine_, user_md, engine_, pd_md, attr);
      s.reorder = create(rpd);
      s.reorder_scratch_bytes = rpd.scratchpad_desc().get_size();
      s.reorder_scratch = dn::memory(rpd.scratchpad_desc(), engine_, DNNL_MEMORY_NONE);
    }
    e.slots.push_back(std::move(s));
  }

  void set_primitive(detail::Entry& e, const dn::primitive_desc& pd) {
    e.prim = create(pd);
    e.scratch_bytes = pd.scratchpad_desc().get_size();
    e.scratch = dn::memory(pd.scratchpad_desc(), engine_, DNNL_MEMORY_NONE);
  }

  // Executes e with ptrs[i] the caller's buffer of slot i (nullptr for an output nobody reads).
  // Arena buffers taken here are released before returning.
  void run(detail::Entry& e, Arena& arena, const std::array<const void*, detail::kMaxSlots>& ptrs) {
    const Arena::Mark mark = arena.mark();
    struct Rewind {
      Arena& a;
      Arena::Mark m;
      ~Rewind() { a.rewind(m); }
    } rewind{arena, mark};
    dnnl_exec_arg_t args[detail::kMaxSlots + 1];
    int nargs = 0;
    for (std::size_t i = 0; i < e.slots.size(); ++i) {
      detail::Slot& s = e.slots[i];
      void* p = const_cast<void*>(ptrs[i]);
      TASN_CHECK_ARG(p || s.output, "dnnl: input argument ", s.arg, " is null");
      if (s.reorder || !p) {
        set_handle(s.mem, arena.bytes(s.bytes));
        if (s.reorder && p) set_handle(s.user, p);
        if (!s.output) reorder(s, s.user, s.mem, arena);
      } else {
        set_handle(s.mem, p);
      }
      args[nargs++] = {s.arg, s.mem.get()};
    }
    if (e.scratch_bytes) {
      set_handle(e.scratch, arena.bytes(e.scratch_bytes));
      args[nargs++] = {DNNL_ARG_SCRATCHPAD, e.scratch.get()};
    }
    {
      detail::ExecuteScope in_onednn;
      detail::check_status(dnnl_primitive_execute(e.prim.get(), stream_.get(), nargs, args), "primitive execute");
    }
    for (std::size_t i = 0; i < e.slots.size(); ++i) {
      detail::Slot& s = e.slots[i];
      if (s.output && s.reorder && ptrs[i]) reorder(s, s.mem, s.user, arena);
    }
    detail::check_status(dnnl_stream_wait(stream_.get()), "stream wait");
  }

 private:
  static void set_handle(dn::memory& m, void* p) {
    detail::check_status(dnnl_memory_set_data_handle(m.get(), p), "memory set_data_handle");
  }
  void reorder(detail::Slot& s, const dn::memory& from, const dn::memory& to, Arena& arena) {
    dnnl_exec_arg_t args[3] = {{DNNL_ARG_FROM, from.get()}, {DNNL_ARG_TO, to.get()}, {DNNL_ARG_SCRATCHPAD, nullptr}};
    int nargs = 2;
    if (s.reorder_scratch_bytes) {
      set_handle(s.reorder_scratch, arena.bytes(s.reorder_scratch_bytes));
      args[nargs++].memory = s.reorder_scratch.get();
    }
    detail::ExecuteScope in_onednn;
    detail::check_status(dnnl_primitive_execute(s.reorder.get(), stream_.get(), nargs, args), "reorder execute");
  }

  Layouts layouts_;
  dn::engine engine_;
  dn::stream stream_;
  std::map<detail::Key, detail::Entry> cache_;
  std::int64_t created_ = 0;
};

// ---- convolution --------------------------------------------------------------------------------

namespace detail {

enum Kind : std::int64_t { kConvFwd = 1, kConvBwdData, kConvBwdWeights, kBnFwdTrain, kBnFwdInfer, kBnBwd };

inline Key conv_key(Kind kind, const ConvGeometry& g, Layout layout, bool flag) {
  const std::int64_t l = static_cast<std::int64_t>(layout), f = flag ? 1 : 0;
  return {kind, max_threads(), l, f, g.n, g.cin, g.h, g.w, g.cout, g.kh, g.kw, g.stride, g.padding, g.dilation, 0, 0};
}

struct ConvDescs {
  dn::memory::desc x, weight, bias, y;          // the caller's (plain)
  dn::memory::desc px, pweight, pbias, py;      // what the primitive is asked for
  dn::memory::dims strides, dilates, pad_l, pad_r;
};

inline ConvDescs conv_descs(const ConvGeometry& g, Layout layout) {
  using tag = dn::memory::format_tag;
  const auto f32 = dn::memory::data_type::f32;
  ConvDescs d;
  d.x = dn::memory::desc({g.n, g.cin, g.h, g.w}, f32, tag::nchw);
  d.weight = dn::memory::desc({g.cout, g.cin, g.kh, g.kw}, f32, tag::oihw);
  d.bias = dn::memory::desc({g.cout}, f32, tag::x);
  d.y = dn::memory::desc({g.n, g.cout, g.ho(), g.wo()}, f32, tag::nchw);
  const bool any = layout == Layout::blocked;
  d.px = any ? dn::memory::desc({g.n, g.cin, g.h, g.w}, f32, tag::any) : d.x;
  d.pweight = any ? dn::memory::desc({g.cout, g.cin, g.kh, g.kw}, f32, tag::any) : d.weight;
  d.pbias = d.bias;
  d.py = any ? dn::memory::desc({g.n, g.cout, g.ho(), g.wo()}, f32, tag::any) : d.y;
  d.strides = {g.stride, g.stride};
  d.dilates = {g.dilation - 1, g.dilation - 1};  // oneDNN counts the gaps: 0 = dense kernel
  d.pad_l = {g.padding, g.padding};
  d.pad_r = {g.padding, g.padding};
  return d;
}

inline dn::primitive_attr user_scratchpad() {
  dn::primitive_attr attr;
  attr.set_scratchpad_mode(dn::scratchpad_mode::user);
  return attr;
}

inline dn::convolution_forward::primitive_desc conv_forward_pd(const ConvDescs& d, bool bias, const dn::engine& eng) {
  using desc_t = dn::convolution_forward::desc;
  const auto prop = dn::prop_kind::forward_training;
  const auto algo = dn::algorithm::convolution_direct;
  const auto desc = bias ? desc_t(prop, algo, d.px, d.pweight, d.pbias, d.py, d.strides, d.dilates, d.pad_l, d.pad_r)
                         : desc_t(prop, algo, d.px, d.pweight, d.py, d.strides, d.dilates, d.pad_l, d.pad_r);
  return dn::convolution_forward::primitive_desc(desc, user_scratchpad(), eng);
}

}  // namespace detail

// y (n, cout, ho, wo) = conv(x, weight) + bias (bias may be null). Overwrites y.
inline void conv2d_forward(Context& ctx, Arena& arena, const ConvGeometry& g, const float* x, const float* weight,
                           const float* bias, float* y) {
  check_geometry(g, "dnnl::conv2d_forward");
  TASN_CHECK_ARG(x && weight && y, "dnnl::conv2d_forward: x, weight and y must not be null");
  const Layout layout = Context::conv_layout(ctx.layouts().forward, g);
  auto& e = ctx.entry(detail::conv_key(detail::kConvFwd, g, layout, bias != nullptr), [&](detail::Entry& en) {
    const auto d = detail::conv_descs(g, layout);
    const auto pd = detail::conv_forward_pd(d, bias != nullptr, ctx.engine());
    ctx.set_primitive(en, pd);
    ctx.add_slot(en, DNNL_ARG_SRC, pd.src_desc(), d.x, false);
    ctx.add_slot(en, DNNL_ARG_WEIGHTS, pd.weights_desc(), d.weight, false);
    if (bias) ctx.add_slot(en, DNNL_ARG_BIAS, pd.bias_desc(), d.bias, false);
    ctx.add_slot(en, DNNL_ARG_DST, pd.dst_desc(), d.y, true);
  });
  if (bias) ctx.run(e, arena, {x, weight, bias, y});
  else ctx.run(e, arena, {x, weight, y});
}

// dx = (accumulate ? dx : 0) + the gradient of conv2d_forward's output dy with respect to x.
inline void conv2d_backward_data(Context& ctx, Arena& arena, const ConvGeometry& g, const float* dy,
                                 const float* weight, float* dx, bool accumulate) {
  check_geometry(g, "dnnl::conv2d_backward_data");
  TASN_CHECK_ARG(dy && weight && dx, "dnnl::conv2d_backward_data: dy, weight and dx must not be null");
  const Layout layout = Context::conv_layout(ctx.layouts().backward_data, g);
  auto& e = ctx.entry(detail::conv_key(detail::kConvBwdData, g, layout, accumulate), [&](detail::Entry& en) {
    const auto d = detail::conv_descs(g, layout);
    const auto hint = detail::conv_forward_pd(d, false, ctx.engine());
    const dn::convolution_backward_data::desc desc(dn::algorithm::convolution_direct, d.px, d.pweight, d.py, d.strides,
                                                   d.dilates, d.pad_l, d.pad_r);
    const dn::convolution_backward_data::primitive_desc pd(desc, detail::user_scratchpad(), ctx.engine(), hint);
    ctx.set_primitive(en, pd);
    ctx.add_slot(en, DNNL_ARG_DIFF_DST, pd.diff_dst_desc(), d.y, false);
    ctx.add_slot(en, DNNL_ARG_WEIGHTS, pd.weights_desc(), d.weight, false);
    ctx.add_slot(en, DNNL_ARG_DIFF_SRC, pd.diff_src_desc(), d.x, true, accumulate);
  });
  ctx.run(e, arena, {dy, weight, dx});
}

// dweight += dL/dweight, dbias += dL/dbias (dbias may be null) for conv2d_forward's output dy.
inline void conv2d_backward_weights(Context& ctx, Arena& arena, const ConvGeometry& g, const float* x,
                                    const float* dy, float* dweight, float* dbias) {
  check_geometry(g, "dnnl::conv2d_backward_weights");
  TASN_CHECK_ARG(x && dy && dweight, "dnnl::conv2d_backward_weights: x, dy and dweight must not be null");
  const Layout layout = Context::conv_layout(ctx.layouts().backward_weights, g);
  const bool bias = dbias != nullptr;
  auto& e = ctx.entry(detail::conv_key(detail::kConvBwdWeights, g, layout, bias), [&](detail::Entry& en) {
    const auto d = detail::conv_descs(g, layout);
    const auto hint = detail::conv_forward_pd(d, bias, ctx.engine());
    using desc_t = dn::convolution_backward_weights::desc;
    const auto algo = dn::algorithm::convolution_direct;
    const auto desc = bias ? desc_t(algo, d.px, d.pweight, d.pbias, d.py, d.strides, d.dilates, d.pad_l, d.pad_r)
                           : desc_t(algo, d.px, d.pweight, d.py, d.strides, d.dilates, d.pad_l, d.pad_r);
    const dn::convolution_backward_weights::primitive_desc pd(desc, detail::user_scratchpad(), ctx.engine(), hint);
    ctx.set_primitive(en, pd);
    ctx.add_slot(en, DNNL_ARG_SRC, pd.src_desc(), d.x, false);
    ctx.add_slot(en, DNNL_ARG_DIFF_DST, pd.diff_dst_desc(), d.y, false);
    ctx.add_slot(en, DNNL_ARG_DIFF_WEIGHTS, pd.diff_weights_desc(), d.weight, true, true);
    if (bias) ctx.add_slot(en, DNNL_ARG_DIFF_BIAS, pd.diff_bias_desc(), d.bias, true, true);
  });
  if (bias) ctx.run(e, arena, {x, dy, dweight, dbias});
  else ctx.run(e, arena, {x, dy, dweight});
}

// ---- batch norm ---------------------------------------------------------------------------------

namespace detail {

inline Key bn_key(Kind kind, const BnGeometry& g, Layout layout, bool flag1, bool flag2 = false) {
  const float eps = static_cast<float>(g.eps);  // oneDNN takes epsilon as float
  std::uint32_t eps_bits;
  std::memcpy(&eps_bits, &eps, sizeof eps_bits);
  const std::int64_t l = static_cast<std::int64_t>(layout), r = g.fuse_relu ? 1 : 0;
  return {kind, max_threads(), l, r, flag1 ? 1 : 0, flag2 ? 1 : 0, g.n, g.c, g.p, eps_bits, 0, 0, 0, 0, 0, 0};
}

inline dn::normalization_flags bn_flags(bool global_stats, bool relu) {
  auto f = dn::normalization_flags::use_scale | dn::normalization_flags::use_shift;
  if (global_stats) f = f | dn::normalization_flags::use_global_stats;
  if (relu) f = f | dn::normalization_flags::fuse_norm_relu;
  return f;
}

// x as oneDNN sees it at the boundary: (n, c, p, 1), NCHW.
inline dn::memory::desc bn_data_md(const BnGeometry& g) {
  return dn::memory::desc({g.n, g.c, g.p, 1}, dn::memory::data_type::f32, dn::memory::format_tag::nchw);
}
// What the primitive works on: NCHW, or channels in blocks of the vector width (batch norm takes no
// format_tag::any). nChw8c for AVX2, nChw16c from AVX-512 on.
inline dn::memory::desc bn_prim_md(const BnGeometry& g, Layout layout) {
  if (layout == Layout::plain) return bn_data_md(g);
  const bool avx512 = (static_cast<unsigned>(dn::get_effective_cpu_isa()) & dnnl_cpu_isa_avx512_core) ==
                      static_cast<unsigned>(dnnl_cpu_isa_avx512_core);
  return dn::memory::desc({g.n, g.c, g.p, 1}, dn::memory::data_type::f32,
                          avx512 ? dn::memory::format_tag::nChw16c : dn::memory::format_tag::nChw8c);
}
inline dn::memory::desc bn_channel_md(const BnGeometry& g) {
  return dn::memory::desc({g.c}, dn::memory::data_type::f32, dn::memory::format_tag::x);
}

inline dn::batch_normalization_forward::primitive_desc bn_forward_pd(const BnGeometry& g, Layout layout,
                                                                     dn::prop_kind prop, bool global_stats,
                                                                     const dn::engine& eng) {
  const dn::batch_normalization_forward::desc desc(prop, bn_prim_md(g, layout), static_cast<float>(g.eps),
                                                   bn_flags(global_stats, g.fuse_relu));
  return dn::batch_normalization_forward::primitive_desc(desc, user_scratchpad(), eng);
}

inline Entry& bn_train_entry(Context& ctx, const BnGeometry& g) {
  const Layout layout = ctx.layouts().batchnorm;
  return ctx.entry(bn_key(kBnFwdTrain, g, layout, false), [&](Entry& en) {
    const auto pd = bn_forward_pd(g, layout, dn::prop_kind::forward_training, false, ctx.engine());
    ctx.set_primitive(en, pd);
    const auto c = bn_channel_md(g);
    ctx.add_slot(en, DNNL_ARG_SRC, pd.src_desc(), bn_data_md(g), false);
    ctx.add_slot(en, DNNL_ARG_SCALE, c, c, false);
    ctx.add_slot(en, DNNL_ARG_SHIFT, c, c, false);
    ctx.add_slot(en, DNNL_ARG_DST, pd.dst_desc(), bn_data_md(g), true);
    ctx.add_slot(en, DNNL_ARG_MEAN, pd.mean_desc(), c, true);
    ctx.add_slot(en, DNNL_ARG_VARIANCE, pd.variance_desc(), c, true);
    if (g.fuse_relu) {
      ctx.add_slot(en, DNNL_ARG_WORKSPACE, pd.workspace_desc(), pd.workspace_desc(), true);
      en.workspace_bytes = pd.workspace_desc().get_size();
    }
  });
}

inline Entry& bn_inference_entry(Context& ctx, const BnGeometry& g) {
  const Layout layout = ctx.layouts().batchnorm;
  return ctx.entry(bn_key(kBnFwdInfer, g, layout, false), [&](Entry& en) {
    const auto pd = bn_forward_pd(g, layout, dn::prop_kind::forward_inference, true, ctx.engine());
    ctx.set_primitive(en, pd);
    const auto c = bn_channel_md(g);
    ctx.add_slot(en, DNNL_ARG_SRC, pd.src_desc(), bn_data_md(g), false);
    ctx.add_slot(en, DNNL_ARG_MEAN, pd.mean_desc(), c, false);
    ctx.add_slot(en, DNNL_ARG_VARIANCE, pd.variance_desc(), c, false);
    ctx.add_slot(en, DNNL_ARG_SCALE, c, c, false);
    ctx.add_slot(en, DNNL_ARG_SHIFT, c, c, false);
    ctx.add_slot(en, DNNL_ARG_DST, pd.dst_desc(), bn_data_md(g), true);
  });
}

}  // namespace detail

// Bytes of the ReLU mask that a training batchnorm_forward keeps for backward when g.fuse_relu
// (0 otherwise).
inline std::size_t batchnorm_relu_workspace_bytes(Context& ctx, const BnGeometry& g) {
  check_geometry(g, "dnnl::batchnorm_relu_workspace_bytes");
  return g.fuse_relu ? detail::bn_train_entry(ctx, g).workspace_bytes : 0;
}

// y = (x - mean) / sqrt(var + eps) * gamma + beta per channel (then max(y, 0) when g.fuse_relu).
// Training: the batch's mean and biased variance, written to save_mean / save_var (C values each)
// for backward; running_mean / running_var (may both be null) updated as PyTorch does:
// running = (1 - momentum) * running + momentum * batch, the variance taken unbiased
// (x M / (M - 1), M = n * p values per channel). Evaluation: the running statistics, copied to
// save_mean / save_var when those are given (backward then takes the same arguments either way).
// relu_workspace: batchnorm_relu_workspace_bytes() bytes when training with g.fuse_relu.
inline void batchnorm_forward(Context& ctx, Arena& arena, const BnGeometry& g, bool training, double momentum,
                              const float* x, const float* gamma, const float* beta, float* running_mean,
                              float* running_var, float* save_mean, float* save_var, float* y,
                              void* relu_workspace = nullptr) {
  constexpr const char* op = "dnnl::batchnorm_forward";
  check_geometry(g, op);
  TASN_CHECK_ARG(x && gamma && beta && y, op, ": x, gamma, beta and y must not be null");
  TASN_CHECK_ARG((running_mean == nullptr) == (running_var == nullptr), op,
                 ": running_mean and running_var must both be given or both be null");
  if (!training) {
    TASN_CHECK_ARG(running_mean, op, ": evaluation needs running_mean and running_var");
    auto& e = detail::bn_inference_entry(ctx, g);
    ctx.run(e, arena, {x, running_mean, running_var, gamma, beta, y});
    if (save_mean) std::copy(running_mean, running_mean + g.c, save_mean);
    if (save_var) std::copy(running_var, running_var + g.c, save_var);
    return;
  }
  TASN_CHECK_ARG(save_mean && save_var, op, ": training needs save_mean and save_var (C values each)");
  TASN_CHECK_ARG(!g.fuse_relu || relu_workspace, op, ": fuse_relu needs a workspace of ",
                 "batchnorm_relu_workspace_bytes() bytes");
  TASN_CHECK_ARG(momentum >= 0 && momentum <= 1, op, ": momentum must be in [0, 1], got ", momentum);
  auto& e = detail::bn_train_entry(ctx, g);
  if (g.fuse_relu) ctx.run(e, arena, {x, gamma, beta, y, save_mean, save_var, relu_workspace});
  else ctx.run(e, arena, {x, gamma, beta, y, save_mean, save_var});
  if (!running_mean) return;
  const double m = static_cast<double>(g.n * g.p);
  const double unbias = m > 1 ? m / (m - 1) : 1.0;  // one value per channel: PyTorch keeps the biased one
  for (std::int64_t c = 0; c < g.c; ++c) {
    running_mean[c] = static_cast<float>((1 - momentum) * running_mean[c] + momentum * save_mean[c]);
    running_var[c] = static_cast<float>((1 - momentum) * running_var[c] + momentum * double(save_var[c]) * unbias);
  }
}

// Gradients of batchnorm_forward with the same g and training flag; mean / var are its save_mean /
// save_var. dy is the gradient of y (with g.fuse_relu: of the ReLU's output; relu_workspace is the
// training forward's mask). dx = (accumulate ? dx : 0) + dL/dx (dx may be null: not computed into
// the caller's memory); dgamma += dL/dgamma, dbeta += dL/dbeta (each may be null).
inline void batchnorm_backward(Context& ctx, Arena& arena, const BnGeometry& g, bool training, const float* x,
                               const float* gamma, const float* mean, const float* var, const float* dy, float* dx,
                               bool accumulate, float* dgamma, float* dbeta, const void* relu_workspace = nullptr) {
  constexpr const char* op = "dnnl::batchnorm_backward";
  check_geometry(g, op);
  TASN_CHECK_ARG(x && gamma && mean && var && dy, op, ": x, gamma, mean, var and dy must not be null");
  TASN_CHECK_ARG(!g.fuse_relu || (training && relu_workspace), op,
                 ": fuse_relu needs training = true and the forward's relu_workspace");
  const Layout layout = ctx.layouts().batchnorm;
  auto& e = ctx.entry(detail::bn_key(detail::kBnBwd, g, layout, training, accumulate), [&](detail::Entry& en) {
    const auto hint = detail::bn_forward_pd(g, layout, dn::prop_kind::forward_training, !training, ctx.engine());
    const auto md = detail::bn_prim_md(g, layout);
    const dn::batch_normalization_backward::desc desc(dn::prop_kind::backward, md, md, static_cast<float>(g.eps),
                                                      detail::bn_flags(!training, g.fuse_relu));
    const dn::batch_normalization_backward::primitive_desc pd(desc, detail::user_scratchpad(), ctx.engine(), hint);
    ctx.set_primitive(en, pd);
    const auto c = detail::bn_channel_md(g);
    ctx.add_slot(en, DNNL_ARG_SRC, pd.src_desc(), detail::bn_data_md(g), false);
    ctx.add_slot(en, DNNL_ARG_MEAN, pd.mean_desc(), c, false);
    ctx.add_slot(en, DNNL_ARG_VARIANCE, pd.variance_desc(), c, false);
    ctx.add_slot(en, DNNL_ARG_DIFF_DST, pd.diff_dst_desc(), detail::bn_data_md(g), false);
    ctx.add_slot(en, DNNL_ARG_SCALE, c, c, false);
    // oneDNN 2.6 checks for a shift argument in backward too, though no gradient depends on beta:
    // it is given gamma's buffer (read-only, and the tests would see it if it were used).
    ctx.add_slot(en, DNNL_ARG_SHIFT, c, c, false);
    ctx.add_slot(en, DNNL_ARG_DIFF_SRC, pd.diff_src_desc(), detail::bn_data_md(g), true, accumulate);
    ctx.add_slot(en, DNNL_ARG_DIFF_SCALE, c, c, true, true);
    ctx.add_slot(en, DNNL_ARG_DIFF_SHIFT, c, c, true, true);
    if (g.fuse_relu) ctx.add_slot(en, DNNL_ARG_WORKSPACE, pd.workspace_desc(), pd.workspace_desc(), false);
  });
  if (g.fuse_relu) ctx.run(e, arena, {x, mean, var, dy, gamma, gamma, dx, dgamma, dbeta, relu_workspace});
  else ctx.run(e, arena, {x, mean, var, dy, gamma, gamma, dx, dgamma, dbeta});
}

}  // namespace tasn::nn::dnnl

#endif  // TASN_HAVE_DNNL
