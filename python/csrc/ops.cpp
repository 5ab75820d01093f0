// python/csrc/ops.cpp - the schemas of torch.ops.tasn and their autograd: a torch::autograd::Function per differentiable operator, registered for the Autograd
// key as torchvision registers its operators, so the same code serves PyTorch 1.13 and 2.x.
// The CPU kernels are in ops_cpu.cpp, the CUDA kernels in ops_cuda.cu; all three are
// python/csrc/plumbing.h instantiated for a backend.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include "plumbing.h"

TORCH_LIBRARY(tasn, m) {
  // trilinear attention (SPEC 1); _forward also returns the saved S and A, _backward takes them
  m.def("trilinear_attention(Tensor x, float beta=7.0) -> Tensor");
  m.def("trilinear_attention_forward(Tensor x, float beta=7.0) -> (Tensor, Tensor)");
  m.def("trilinear_attention_backward(Tensor dm, Tensor x, Tensor? saved, float beta=7.0) -> Tensor");
  // attention maps (SPEC 2): no gradient
  m.def("structure_map(Tensor m, bool distinct=True) -> Tensor");
  m.def("detail_map(Tensor m, Tensor? channels=None, bool training=True, int seed=0, int first_sample=0)"
        " -> (Tensor, Tensor)");
  m.def("upsample_bilinear(Tensor input, int H, int W, bool squared=False) -> Tensor");
  // sampler (SPEC 3)
  m.def("attention_marginals(Tensor map, int Hs, int Ws) -> (Tensor, Tensor, Tensor)");
  m.def("sampling_grid(Tensor my, Tensor mx, int Ho, int Wo, float dense=4.0, int iters=5, str mode=\"exact\")"
        " -> (Tensor, Tensor)");
  m.def("sample_separable(Tensor img, Tensor gy, Tensor gx) -> Tensor");
  m.def("sample_separable_backward(Tensor dout, Tensor gy, Tensor gx, int Hi, int Wi) -> Tensor");
  m.def("sample_grid(Tensor img, Tensor grid) -> Tensor");
  m.def("sample_grid_backward(Tensor dout, Tensor img, Tensor grid, bool img_grad=True, bool grid_grad=True)"
        " -> (Tensor, Tensor)");
  m.def("attention_sample(Tensor img, Tensor attention, int Ho, int Wo, float dense=4.0, int iters=5,"
        " str mode=\"exact\", int upsample_h=0, int upsample_w=0, bool squared=False)"
        " -> (Tensor, Tensor, Tensor, Tensor)");
  // losses (SPEC 4)
  m.def("distillation_loss(Tensor student, Tensor teacher, float temperature=10.0, bool kl=False,"
        " bool t_squared=False, str reduction=\"mean\") -> Tensor");
  m.def("distillation_loss_backward(Tensor dloss, Tensor student, Tensor teacher, float temperature, bool kl,"
        " bool t_squared, str reduction, bool student_grad, bool teacher_grad) -> (Tensor, Tensor)");
  m.def("softmax_cross_entropy(Tensor logits, Tensor labels, int ignore_index=-100, float grad_scale=1.0,"
        " float label_smoothing=0.0, str reduction=\"mean\") -> Tensor");
  m.def("softmax_cross_entropy_backward(Tensor dloss, Tensor logits, Tensor labels, int ignore_index,"
        " float grad_scale, float label_smoothing, str reduction) -> Tensor");
  m.def("topk_correct(Tensor logits, Tensor labels, int max_k=5, int ignore_index=-100) -> Tensor");
}

namespace tasn_torch {
namespace {

// ---- the kernels' signatures ------------------------------------------------------------------
// The Autograd kernels below take their signatures from plumbing.h's templates named with this
// tag (only in decltype: never instantiated, never registered). The shape-only kernels torch.compile
// traces with are Python (tasn_torch/_fake.py, PyTorch 2.x): they must handle symbolic sizes,
// which a C++ Meta kernel built on plumbing.h cannot.
struct Signatures {};

// ---- calling an operator below the Autograd key ------------------------------------------------

template <class Sig>
c10::TypedOperatorHandle<Sig> handle(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").template typed<Sig>();
}

template <class Sig, class... A>
auto call_below(const c10::TypedOperatorHandle<Sig>& op, A&&... a) {
  at::AutoDispatchBelowADInplaceOrView guard;
  return op.call(std::forward<A>(a)...);
}

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

inline bool wants_grad(const at::Tensor& t) {
  return t.defined() && t.requires_grad() && torch::autograd::GradMode::is_enabled();
}

// ---- differentiable operators ------------------------------------------------------------------

struct TrilinearFn : torch::autograd::Function<TrilinearFn> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, double beta) {
    static const auto op = handle<decltype(trilinear_attention_forward<Signatures>)>("tasn::trilinear_attention_forward");
    auto [m, saved] = call_below(op, x, beta);
    ctx->save_for_backward({x, saved});
    ctx->saved_data["beta"] = beta;
    return m;
  }
  static variable_list backward(AutogradContext* ctx, variable_list g) {
    static const auto op =
        handle<decltype(trilinear_attention_backward<Signatures>)>("tasn::trilinear_attention_backward");
    const auto s = ctx->get_saved_variables();
    const at::Tensor dx = op.call(g[0].contiguous(), s[0], c10::optional<at::Tensor>(s[1]),
                                  ctx->saved_data["beta"].toDouble());
    return {dx, at::Tensor()};
  }
};
at::Tensor trilinear_attention_autograd(const at::Tensor& x, double beta) {
  if (!wants_grad(x)) {  // no graph: no S and A to save (N*C*(H*W + C) elements)
    static const auto op = handle<decltype(trilinear_attention<Signatures>)>("tasn::trilinear_attention");
    return call_below(op, x, beta);
  }
  return TrilinearFn::apply(x, beta);
}

struct SampleSeparableFn : torch::autograd::Function<SampleSeparableFn> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& img, const at::Tensor& gy, const at::Tensor& gx) {
    static const auto op = handle<decltype(sample_separable<Signatures>)>("tasn::sample_separable");
    at::Tensor out = call_below(op, img, gy, gx);  // checks img first
    ctx->save_for_backward({gy, gx});
    ctx->saved_data["Hi"] = img.size(2);
    ctx->saved_data["Wi"] = img.size(3);
    return out;
  }
  static variable_list backward(AutogradContext* ctx, variable_list g) {
    static const auto op =
        handle<decltype(sample_separable_backward<Signatures>)>("tasn::sample_separable_backward");
    const auto s = ctx->get_saved_variables();
    at::Tensor dimg;
    if (ctx->needs_input_grad(0))
      dimg = op.call(g[0].contiguous(), s[0], s[1], ctx->saved_data["Hi"].toInt(), ctx->saved_data["Wi"].toInt());
    return {dimg, at::Tensor(), at::Tensor()};
  }
};
at::Tensor sample_separable_autograd(const at::Tensor& img, const at::Tensor& gy, const at::Tensor& gx) {
  TORCH_CHECK(!wants_grad(gy) && !wants_grad(gx),
              "tasn::sample_separable: no gradient flows to gy and gx (the separable sampler's backward gives the "
              "image gradient only); pass gy.detach() and gx.detach(), or use tasn::sample_grid for a grid gradient");
  return SampleSeparableFn::apply(img, gy, gx);
}

struct SampleGridFn : torch::autograd::Function<SampleGridFn> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& img, const at::Tensor& grid) {
    static const auto op = handle<decltype(sample_grid<Signatures>)>("tasn::sample_grid");
    ctx->save_for_backward({img, grid});
    return call_below(op, img, grid);
  }
  static variable_list backward(AutogradContext* ctx, variable_list g) {
    static const auto op = handle<decltype(sample_grid_backward<Signatures>)>("tasn::sample_grid_backward");
    const auto s = ctx->get_saved_variables();
    const bool gi = ctx->needs_input_grad(0), gg = ctx->needs_input_grad(1);
    auto [dimg, dgrid] = op.call(g[0].contiguous(), s[0], s[1], gi, gg);
    return {gi ? dimg : at::Tensor(), gg ? dgrid : at::Tensor()};
  }
};
at::Tensor sample_grid_autograd(const at::Tensor& img, const at::Tensor& grid) { return SampleGridFn::apply(img, grid); }

struct AttentionSampleFn : torch::autograd::Function<AttentionSampleFn> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& img, const at::Tensor& attention, std::int64_t Ho,
                               std::int64_t Wo, double dense, std::int64_t iters, std::string mode,
                               std::int64_t upsample_h, std::int64_t upsample_w, bool squared) {
    static const auto op = handle<decltype(attention_sample<Signatures>)>("tasn::attention_sample");
    auto [out, gy, gx, fallback] =
        call_below(op, img, attention, Ho, Wo, dense, iters, c10::string_view(mode), upsample_h, upsample_w, squared);
    ctx->save_for_backward({gy, gx});
    ctx->saved_data["Hi"] = img.size(2);
    ctx->saved_data["Wi"] = img.size(3);
    ctx->mark_non_differentiable({gy, gx, fallback});
    return {out, gy, gx, fallback};
  }
  static variable_list backward(AutogradContext* ctx, variable_list g) {
    static const auto op =
        handle<decltype(sample_separable_backward<Signatures>)>("tasn::sample_separable_backward");
    const auto s = ctx->get_saved_variables();
    at::Tensor dimg;
    if (ctx->needs_input_grad(0) && g[0].defined())
      dimg = op.call(g[0].contiguous(), s[0], s[1], ctx->saved_data["Hi"].toInt(), ctx->saved_data["Wi"].toInt());
    variable_list r(10);
    r[0] = dimg;
    return r;
  }
};
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> attention_sample_autograd(
    const at::Tensor& img, const at::Tensor& attention, std::int64_t Ho, std::int64_t Wo, double dense,
    std::int64_t iters, c10::string_view mode, std::int64_t upsample_h, std::int64_t upsample_w, bool squared) {
  TORCH_CHECK(!wants_grad(attention),
              "tasn::attention_sample: no gradient flows to attention (SPEC: the attention maps carry no gradient, "
              "the official BlockGrad); pass attention.detach()");
  auto r = AttentionSampleFn::apply(img, attention, Ho, Wo, dense, iters, std::string(mode.data(), mode.size()),
                                    upsample_h, upsample_w, squared);
  return {r[0], r[1], r[2], r[3]};
}

struct DistillationFn : torch::autograd::Function<DistillationFn> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& student, const at::Tensor& teacher,
                            double temperature, bool kl, bool t_squared, std::string reduction) {
    static const auto op = handle<decltype(distillation_loss<Signatures>)>("tasn::distillation_loss");
    ctx->save_for_backward({student, teacher});
    ctx->saved_data["temperature"] = temperature;
    ctx->saved_data["kl"] = kl;
    ctx->saved_data["t_squared"] = t_squared;
    ctx->saved_data["reduction"] = reduction;
    return call_below(op, student, teacher, temperature, kl, t_squared, c10::string_view(reduction));
  }
  static variable_list backward(AutogradContext* ctx, variable_list g) {
    static const auto op =
        handle<decltype(distillation_loss_backward<Signatures>)>("tasn::distillation_loss_backward");
    const auto s = ctx->get_saved_variables();
    const std::string reduction = ctx->saved_data["reduction"].toStringRef();
    const bool gs = ctx->needs_input_grad(0), gt = ctx->needs_input_grad(1);
    auto [ds, dt] = op.call(g[0], s[0], s[1], ctx->saved_data["temperature"].toDouble(),
                            ctx->saved_data["kl"].toBool(), ctx->saved_data["t_squared"].toBool(),
                            c10::string_view(reduction), gs, gt);
    return {gs ? ds : at::Tensor(), gt ? dt : at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};
at::Tensor distillation_loss_autograd(const at::Tensor& student, const at::Tensor& teacher, double temperature, bool kl,
                                      bool t_squared, c10::string_view reduction) {
  return DistillationFn::apply(student, teacher, temperature, kl, t_squared,
                               std::string(reduction.data(), reduction.size()));
}

struct CrossEntropyFn : torch::autograd::Function<CrossEntropyFn> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& logits, const at::Tensor& labels,
                            std::int64_t ignore_index, double grad_scale, double label_smoothing,
                            std::string reduction) {
    static const auto op = handle<decltype(softmax_cross_entropy<Signatures>)>("tasn::softmax_cross_entropy");
    ctx->save_for_backward({logits, labels});
    ctx->saved_data["ignore_index"] = ignore_index;
    ctx->saved_data["grad_scale"] = grad_scale;
    ctx->saved_data["label_smoothing"] = label_smoothing;
    ctx->saved_data["reduction"] = reduction;
    return call_below(op, logits, labels, ignore_index, grad_scale, label_smoothing, c10::string_view(reduction));
  }
  static variable_list backward(AutogradContext* ctx, variable_list g) {
    static const auto op =
        handle<decltype(softmax_cross_entropy_backward<Signatures>)>("tasn::softmax_cross_entropy_backward");
    const auto s = ctx->get_saved_variables();
    const std::string reduction = ctx->saved_data["reduction"].toStringRef();
    at::Tensor d;
    if (ctx->needs_input_grad(0))
      d = op.call(g[0], s[0], s[1], ctx->saved_data["ignore_index"].toInt(), ctx->saved_data["grad_scale"].toDouble(),
                  ctx->saved_data["label_smoothing"].toDouble(), c10::string_view(reduction));
    return {d, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};
at::Tensor softmax_cross_entropy_autograd(const at::Tensor& logits, const at::Tensor& labels, std::int64_t ignore_index,
                                          double grad_scale, double label_smoothing, c10::string_view reduction) {
  return CrossEntropyFn::apply(logits, labels, ignore_index, grad_scale, label_smoothing,
                               std::string(reduction.data(), reduction.size()));
}

// ---- operators without a gradient: below the Autograd key, their outputs need no grad ------------

inline bool any_wants_grad() { return false; }
template <class A0, class... A>
bool any_wants_grad(const A0& a0, const A&... a) {
  bool w = false;
  if constexpr (std::is_same_v<std::decay_t<A0>, at::Tensor>) w = wants_grad(a0);
  if constexpr (std::is_same_v<std::decay_t<A0>, c10::optional<at::Tensor>>) w = a0 && wants_grad(*a0);
  return w || any_wants_grad(a...);
}

// Strict: the operator is a backward pass, and a graph through it (double backward) is refused
// instead of silently missing.
template <const char* Name, bool Strict, class Fn>
struct NoGrad;
template <const char* Name, bool Strict, class R, class... A>
struct NoGrad<Name, Strict, R(A...)> {
  static R kernel(A... a) {
    static const auto op = handle<R(A...)>(Name);
    if constexpr (Strict)
      TORCH_CHECK(!any_wants_grad(a...), Name,
                  ": is not differentiable (a pass of the public operators' autograd; double backward is not supported)");
    return call_below(op, a...);
  }
};

constexpr char kStructureMap[] = "tasn::structure_map";
constexpr char kDetailMap[] = "tasn::detail_map";
constexpr char kUpsample[] = "tasn::upsample_bilinear";
constexpr char kMarginals[] = "tasn::attention_marginals";
constexpr char kGrid[] = "tasn::sampling_grid";
constexpr char kTopk[] = "tasn::topk_correct";
constexpr char kTrilinearForward[] = "tasn::trilinear_attention_forward";
constexpr char kTrilinearBackward[] = "tasn::trilinear_attention_backward";
constexpr char kSeparableBackward[] = "tasn::sample_separable_backward";
constexpr char kGridBackward[] = "tasn::sample_grid_backward";
constexpr char kDistillBackward[] = "tasn::distillation_loss_backward";
constexpr char kCrossEntropyBackward[] = "tasn::softmax_cross_entropy_backward";

template <const char* Name, class F>
auto no_grad_kernel() {
  return &NoGrad<Name, false, F>::kernel;
}
template <const char* Name, class F>
auto backward_kernel() {
  return &NoGrad<Name, true, F>::kernel;
}

}  // namespace
}  // namespace tasn_torch

TORCH_LIBRARY_IMPL(tasn, Autograd, m) {
  using namespace tasn_torch;
  using B = Signatures;  // only the signatures of the kernels are taken from it
  m.impl("trilinear_attention", &trilinear_attention_autograd);
  m.impl("sample_separable", &sample_separable_autograd);
  m.impl("sample_grid", &sample_grid_autograd);
  m.impl("attention_sample", &attention_sample_autograd);
  m.impl("distillation_loss", &distillation_loss_autograd);
  m.impl("softmax_cross_entropy", &softmax_cross_entropy_autograd);
  m.impl("structure_map", no_grad_kernel<kStructureMap, decltype(structure_map<B>)>());
  m.impl("detail_map", no_grad_kernel<kDetailMap, decltype(detail_map<B>)>());
  m.impl("upsample_bilinear", no_grad_kernel<kUpsample, decltype(upsample_bilinear<B>)>());
  m.impl("attention_marginals", no_grad_kernel<kMarginals, decltype(attention_marginals<B>)>());
  m.impl("sampling_grid", no_grad_kernel<kGrid, decltype(sampling_grid<B>)>());
  m.impl("topk_correct", no_grad_kernel<kTopk, decltype(topk_correct<B>)>());
  // The backward operators are first derivatives only (no double backward): their outputs
  // carry no graph.
  m.impl("trilinear_attention_forward", backward_kernel<kTrilinearForward, decltype(trilinear_attention_forward<B>)>());
  m.impl("trilinear_attention_backward", backward_kernel<kTrilinearBackward, decltype(trilinear_attention_backward<B>)>());
  m.impl("sample_separable_backward", backward_kernel<kSeparableBackward, decltype(sample_separable_backward<B>)>());
  m.impl("sample_grid_backward", backward_kernel<kGridBackward, decltype(sample_grid_backward<B>)>());
  m.impl("distillation_loss_backward", backward_kernel<kDistillBackward, decltype(distillation_loss_backward<B>)>());
  m.impl("softmax_cross_entropy_backward", backward_kernel<kCrossEntropyBackward, decltype(softmax_cross_entropy_backward<B>)>());
}
