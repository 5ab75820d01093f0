// examples/train/model.h - the full TASN network of ../shared/SPEC.md section 5, assembled from the
// library's operators (trilinear attention, attention maps, sampler, losses) and the CPU layers of
// examples/nn, plus the baseline it is compared with. Float on the CPU.
//
//   image (N, 3, Hi, Wi) --uniform resize--> attention net --> logits_att (own cross-entropy)
//                                                 \--> feature map F --(gradient stopped)-->
//   trilinear attention M --> structure map (channel sum, distinct, squared after upsampling)
//                         \-> detail map (one random distinct channel per sample; eval: the sum)
//   sampler(image, structure map) -> structure image  --\  one shared backbone, run on the
//   sampler(image, detail map)    -> detail image     --/  2N images [detail; structure]
//   detail features    -> part FC   -> z_part,   shared FC -> z_part_aux
//   structure features -> master FC -> z_master, shared FC -> z_master_aux
//   loss = att CE + 0.5 x (CE z_part + CE z_master + CE z_part_aux + CE z_master_aux)
//        + distillation(student z_master, teacher z_part, T)
//
// Losses are summed over the batch (SPEC 5); the optimiser rescales gradients by 1 / batch, as
// MXNet's rescale_grad does for the official code.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <sstream>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "nn/attention_net.h"
#include "nn/exec.h"
#include "nn/params.h"
#include "nn/resnet.h"
#include "train/optim.h"
#include "tasn/attention_sampler.h"
#include "tasn/core/softmax_cpu.h"
#include "tasn/losses.h"
#include "tasn/trilinear_attention.h"

namespace tasn::train {

using nn::Tensor;

struct NetConfig {
  std::int64_t classes = 8;
  std::int64_t image = 96;      // side of the full-resolution input images (Hi = Wi)
  std::int64_t att_input = 32;  // the attention net sees the image resized to this side
  std::int64_t out = 32;        // sampler output side = part/master input side (and the baseline's)
  nn::ResNetConfig att_backbone;     // attention net backbone (num_classes is ignored)
  nn::ResNetConfig master_backbone;  // shared part/master backbone (and the baseline's)
  double beta = 7.0;                 // trilinear softmax scale
  double dense = 4.0;                // sampler magnification limit
  int iters = 5;
  GridMode mode = GridMode::Exact;
  bool structure_squared = true;  // square the upsampled structure map (official)
  bool distinct = true;           // distinct channels only in the maps
  double temperature = 10.0;      // distillation T
  double head_grad_scale = 0.5;   // the four part/master cross-entropies
  double att_grad_scale = 1.0;    // the attention net's cross-entropy
  double distill_weight = 1.0;
  bool teacher_grad = true;  // official graph: the soft target is not detached

  // Every value in range; the operators' options through the library's own checks (the same
  // ones the operators run at the first step), so a bad option is refused before any work.
  void validate() const {
    TASN_CHECK_ARG(classes >= 2, "NetConfig: classes must be >= 2, got ", classes);
    TASN_CHECK_ARG(image >= 8 && att_input >= 8 && out >= 8, "NetConfig: image, att_input and out sides must be >= 8, got ",
                   image, ", ", att_input, ", ", out);
    for (const auto* b : {&att_backbone, &master_backbone})
      TASN_CHECK_ARG(std::isfinite(b->width) && b->width > 0, "NetConfig: ", b == &att_backbone ? "att-width" : "width",
                     " must be finite and > 0, got ", b->width);
    TrilinearAttentionOptions t;
    t.beta = beta;
    t.validate("NetConfig (--beta)");
    GridOptions g;  // the output size (out) sizes the sampled images' views
    g.dense = dense;
    g.iters = iters;
    g.validate("NetConfig (--dense, --iters)");
    DistillationOptions d;
    d.temperature = temperature;
    d.validate("NetConfig (--temperature)");
    TASN_CHECK_ARG(std::isfinite(head_grad_scale) && std::isfinite(att_grad_scale) && std::isfinite(distill_weight),
                   "NetConfig: loss weights must be finite");
  }
};

// Per-step results of a training step (losses summed over the batch). Reused from step to step
// (short names: no allocation once the vector has its capacity).
struct StepStats {
  std::vector<std::pair<std::string, double>> losses;  // name, sum over the batch
  double total = 0;
  std::int64_t correct = 0;  // of the reported head
  std::int64_t n = 0;
  // Phases of the step (seconds; device time on a GPU): the batch's upload, the forward pass with
  // the losses, the TASN operators within it (trilinear attention, maps, sampling), the backward.
  double seconds_upload = 0, seconds_forward = 0, seconds_tasn = 0, seconds_backward = 0;
};

// Intermediate images and maps of one forward pass (views into the step's arena: valid until the
// next train_step / predict), for diagnostics and --dump-attention.
template <class T>
struct BasicTasnViews {
  Tensor3<const T> structure_map, detail_map;        // (N, h, w) before upsampling
  Tensor4<const T> structure_image, detail_image;    // (N, 3, out, out)
  Tensor2<const T> gy_structure, gx_structure;       // the structure grid (N, out) each
  Tensor1<const unsigned char> fallback_structure, fallback_detail;  // (N)
};
using TasnViews = BasicTasnViews<float>;

// What the trainer needs from a network (T = float; double for the whole-step golden test).
// Parameters live in params() on the host (initialisation, checkpoints, the non-finite lookup);
// a model on a device keeps a copy there: params_to_device() after the host values changed (init,
// a loaded checkpoint), params_to_host() before they are read (a checkpoint).
template <class T>
class BasicModel {
 public:
  virtual ~BasicModel() = default;
  virtual std::string name() const = 0;
  // Every parameter and buffer, in one flat value buffer and one flat gradient buffer.
  virtual nn::FlatParams<T>& params() = 0;
  // (prefix, store) pairs of params(): checkpoint names are "<prefix>.<name>".
  const std::vector<std::pair<std::string, nn::ParamStore<T>*>>& stores() { return params().stores(); }
  // Where the model runs, for the start-up line: "cpu (onednn)", "cuda (NVIDIA H200, ...)".
  virtual std::string device() const { return "cpu"; }
  // Forward + backward of one batch (grads are zeroed first). images: (N, 3, image, image). The
  // result is valid until the next call. After the first step no heap allocation.
  virtual const StepStats& train_step(const std::vector<T>& images, const std::vector<std::int64_t>& labels,
                                      std::uint64_t step_seed) = 0;
  // One optimiser update from the gradients of the last train_step (where the parameters live);
  // false, changing nothing, when a gradient is not finite (opt.non_finite_gradient() names it).
  virtual bool sgd_step(BasicSgd<T>& opt, double lr, double rescale) { return opt.step(lr, rescale); }
  virtual void params_to_host(BasicSgd<T>* opt) { (void)opt; }
  virtual void params_to_device(BasicSgd<T>* opt) { (void)opt; }
  // The gradients of the last train_step into params().grads() (tests, diagnostics).
  virtual void grads_to_host() {}
  // Device time of the last sgd_step (waits for it), or < 0 where the caller's clock measures it.
  virtual double update_seconds() const { return -1; }
  // Memory the model's context uses (--timing).
  virtual std::string memory_report() const { return ""; }
  // Data parallelism (docs/distributed.md): the model's batch is this rank's part of a global
  // batch, every rank's part the same size. sgd_step() sums the gradients over the ranks first;
  // sync_bn: training batch norm over every rank's part; the detail channels are picked as for
  // the whole batch. c: null or a single process for none.
  virtual void set_comm(dist::Communicator* c, bool sync_bn) { (void)c, (void)sync_bn; }
  // Seconds the last sgd_step spent in the gradient all-reduce (device time on a GPU); -1 when
  // there is none (one process).
  virtual double comm_seconds() const { return -1; }
  // Evaluation-mode logits of every head, in head_names() order, each (N, classes).
  virtual std::vector<Tensor<T>> predict(const std::vector<T>& images, std::int64_t n) = 0;
  virtual std::vector<std::string> head_names() const = 0;
  virtual std::size_t reported_head() const = 0;  // the head whose accuracy is "the" accuracy
  // Everything besides parameter shapes that a checkpoint of this model depends on.
  virtual std::string config_string() const = 0;
  // Options that only change training (losses), part of a resumed run's training signature.
  virtual std::string training_string() const { return ""; }
  // Maps, sampled images and grid of the last train_step / predict call, for the diagnostics of
  // train/diagnostics.h (detail coverage in evaluate(), --dump-attention); nullptr: none (baseline).
  // Host memory: a device model copies them in predict() only (after a train_step: empty views).
  virtual const BasicTasnViews<T>* attention_views() const { return nullptr; }
};
using Model = BasicModel<float>;

// Thrown by predict() when a (diverged) model's logits are not finite.
class NonFinite : public InvalidArgument {
 public:
  using InvalidArgument::InvalidArgument;
};

inline std::string net_config_string(const NetConfig& c) {
  std::ostringstream s;
  s << "classes=" << c.classes << " image=" << c.image << " att_input=" << c.att_input << " out=" << c.out
    << " beta=" << c.beta << " dense=" << c.dense << " iters=" << c.iters << " mode=" << to_string(c.mode)
    << " squared=" << c.structure_squared << " distinct=" << c.distinct;
  return s.str();
}

inline std::string loss_config_string(const NetConfig& c) {
  std::ostringstream s;
  s.precision(17);
  s << "T=" << c.temperature << " head_scale=" << c.head_grad_scale << " att_scale=" << c.att_grad_scale
    << " distill=" << c.distill_weight << " teacher_grad=" << c.teacher_grad;
  return s.str();
}

namespace detail_model {

template <class T>
void check_batch(const std::vector<T>& images, const std::vector<std::int64_t>& labels, std::int64_t side,
                 std::int64_t* n, const char* what, bool with_labels) {
  const std::int64_t per = 3 * side * side;
  TASN_CHECK_ARG(per > 0 && !images.empty() && static_cast<std::int64_t>(images.size()) % per == 0, what,
                 ": images hold ", images.size(), " values, not a whole number of (3, ", side, ", ", side, ") images");
  *n = static_cast<std::int64_t>(images.size()) / per;
  if (with_labels)
    TASN_CHECK_ARG(static_cast<std::int64_t>(labels.size()) == *n, what, ": ", labels.size(), " labels for ", *n,
                   " images");
}

// The step's result when a tensor of the forward pass is not finite: the library's operators
// would refuse it (they throw on NaN/Inf input), so the network stops here and reports it.
inline void non_finite(StepStats& st, const char* what, std::int64_t n) {
  st = StepStats();
  st.n = n;
  st.total = std::numeric_limits<double>::quiet_NaN();
  st.losses.push_back({std::string("non-finite ") + what, st.total});
}

// Correct top-1 predictions of host logits z (N, K) (evaluation).
template <class T>
std::int64_t top1(Tensor2<const T> z, const std::vector<std::int64_t>& labels) {
  std::int64_t c = 0;
  const TopkArgs<T> a{z, Tensor1<const std::int64_t>(labels.data(), {z.size[0]}), Tensor1<std::int64_t>(&c, {1}),
                      TopkOptions{}};
  cpu::topk_correct(a, {});
  return c;
}

// x as type U: x itself when U is T, else a converted copy from the step's arena (ex.convert:
// contexts whose activation type differs from their value type, nn/bf16_exec.h).
template <class U, class Ex, class T, int R>
TensorRef<const U, R> as_type(Ex& ex, TensorRef<const T, R> x) {
  if constexpr (std::is_same_v<U, T>) {
    return x;
  } else {
    TensorRef<U, R> y;
    y.data = ex.template buffer<U>(x.numel());
    for (int k = 0; k < R; ++k) y.size[k] = x.size[k], y.stride[k] = x.stride[k];
    ex.convert(x.data, y.data, x.numel());
    return y;
  }
}

template <class T>
Tensor<T> to_tensor(const T* z, std::int64_t n, std::int64_t k) {
  Tensor<T> t({n, k});
  std::copy(z, z + n * k, t.ptr());
  return t;
}

// Summed cross-entropy of z (N, K) into *loss (context memory), gradient dz with grad_scale.
template <class T, class Ex>
void cross_entropy(Ex& ex, Tensor2<const T> z, const std::int64_t* labels, double scale, Tensor2<T> dz, T* loss) {
  CrossEntropyOptions o;
  o.grad_scale = scale;
  o.reduction = Reduction::Sum;
  o.check_finite = Ex::kHostMemory;
  ex.softmax_cross_entropy(
      CrossEntropyArgs<T>{z, Tensor1<const std::int64_t>(labels, {z.size[0]}), Tensor1<T>(loss, {1}), dz, {}, o});
}

// Correct top-1 predictions of z into *count (context memory).
template <class T, class Ex>
void top1(Ex& ex, Tensor2<const T> z, const std::int64_t* labels, std::int64_t* count) {
  TopkOptions o;
  o.check_finite = Ex::kHostMemory;
  ex.topk_correct(TopkArgs<T>{z, Tensor1<const std::int64_t>(labels, {z.size[0]}), Tensor1<std::int64_t>(count, {1}), o});
}

}  // namespace detail_model

// A model on an execution context Ex: nn::CpuExec<T> (default) or nn::CudaExec
// (examples/gpu/cuda_exec.h). It owns the context and the flat parameters and forwards to the
// context what depends on where they live (the update, copies between host and device, timing).
// The derived constructor's extra arguments construct the context. All work goes through the
// context; results come back through ex.fetch() + ONE ex.synchronize() per step.
template <class T, class Ex>
class ModelOn : public BasicModel<T> {
 public:
  nn::FlatParams<T>& params() override { return params_; }
  Ex& exec() { return ex_; }
  std::string device() const override { return ex_.describe(); }
  bool sgd_step(BasicSgd<T>& opt, double lr, double rescale) override { return ex_.sgd_step(params_, opt, lr, rescale); }
  void params_to_host(BasicSgd<T>* opt) override { ex_.params_to_host(params_, opt); }
  void params_to_device(BasicSgd<T>* opt) override { ex_.params_to_device(params_, opt); }
  void grads_to_host() override { ex_.grads_to_host(params_); }
  double update_seconds() const override { return ex_.sgd_seconds(); }
  std::string memory_report() const override { return ex_.memory_report(); }
  void set_comm(dist::Communicator* c, bool sync_bn) override {
    ex_.set_comm(c, sync_bn);
    rank_ = c ? c->rank() : 0;
  }
  double comm_seconds() const override { return ex_.comm_seconds(); }

 protected:
  template <class... ExArgs>
  explicit ModelOn(ExArgs&&... ex_args) : ex_(std::forward<ExArgs>(ex_args)...) {}
  // The stores' tensors laid out in params_, and the context told where (derived constructors).
  void lay_out() {
    params_.allocate();
    ex_.bind_params(params_);
  }
  // The gradients of store `prefix` are final for this step (a device context starts their
  // all-reduce, overlapping the rest of the backward).
  void grads_ready(const std::string& prefix) {
    const auto [lo, hi] = params_.trainable_range(prefix);
    ex_.grads_ready(params_, lo, hi);
  }
  // The index of this rank's first sample in the global batch of n samples per rank.
  std::int64_t first_sample(std::int64_t n) const { return std::int64_t(rank_) * n; }
  Ex ex_;
  nn::FlatParams<T> params_;
  int rank_ = 0;
};

template <class T, class Ex = nn::CpuExec<T>>
class BasicTasnNet : public ModelOn<T, Ex> {
  using ModelOn<T, Ex>::ex_;
  using ModelOn<T, Ex>::params_;
  // The backbones' activations: T, or bf16 (--precision bf16). The library operators, the sampled
  // images, the logits and the losses stay T.
  using A = typename Ex::act_type;

 public:
  template <class... ExArgs>
  explicit BasicTasnNet(const NetConfig& c, ExArgs&&... ex_args)
      : ModelOn<T, Ex>(std::forward<ExArgs>(ex_args)...), cfg_(c) {
    c.validate();
    nn::AttentionNetConfig ac;
    ac.backbone = c.att_backbone;
    ac.backbone.num_classes = 0;
    ac.num_classes = c.classes;
    att_ = std::make_unique<nn::AttentionNet<T, A>>(att_ps_, ac);
    nn::ResNetConfig mc = c.master_backbone;
    mc.num_classes = 0;
    master_ = std::make_unique<nn::ResNet<T, A>>(master_ps_, mc);
    const std::int64_t F = master_->features();
    part_fc_ = nn::Linear<T, A>(heads_ps_, "part_fc", F, c.classes);
    master_fc_ = nn::Linear<T, A>(heads_ps_, "master_fc", F, c.classes);
    shared_fc_ = nn::Linear<T, A>(heads_ps_, "shared_fc", F, c.classes);
    params_.add("att", att_ps_);
    params_.add("master", master_ps_);
    params_.add("heads", heads_ps_);
    this->lay_out();
  }

  std::string name() const override { return "tasn"; }
  std::vector<std::string> head_names() const override {
    return {"attention", "part", "master", "part_aux", "master_aux", "combined"};
  }
  std::size_t reported_head() const override { return 4; }  // master image through the shared FC
  std::string config_string() const override { return net_config_string(cfg_); }
  std::string training_string() const override { return loss_config_string(cfg_); }
  const NetConfig& config() const { return cfg_; }
  nn::AttentionNet<T, A>& attention_net() { return *att_; }
  nn::ParamStore<T>& att_store() { return att_ps_; }
  nn::ParamStore<T>& master_store() { return master_ps_; }
  // Maps, sampled images and grid of the last train_step / predict call (context memory; host
  // copies through attention_views() after predict).
  const BasicTasnViews<T>& last_views() const { return views_; }
  const BasicTasnViews<T>* attention_views() const override { return Ex::kHostMemory ? &views_ : &host_views_; }
  // The views of the last step on the host now (a device context copies them and waits).
  BasicTasnViews<T> views_on_host() {
    if constexpr (Ex::kHostMemory) {
      return views_;
    } else {
      fetch_views();
      ex_.synchronize();
      return host_views_;
    }
  }
  // Test hook: the training-mode detail map takes channel c[n] of sample n (the operator checks
  // that there is one per sample, in range) instead of the seeded pick; empty: the seeded pick.
  void set_detail_channels(std::vector<std::int64_t> c) { detail_channels_ = std::move(c); }

  // The attention net's logits, the maps, and the two sampled images written into x2 (2N, 3, out,
  // out): detail images in [0, N), structure images in [N, 2N) (one batch for the shared
  // backbone, no concatenation). training: BN batch statistics and a random detail channel per
  // sample (drawn from step_seed); else running statistics and the channel sum for the detail map.
  // Returns an absent view when the attention net's output is not finite (a diverged model; host
  // contexts only: a device context lets NaN reach the losses), without running the operators.
  Tensor2<T> attend(Tensor4<const T> img, bool training, std::uint64_t step_seed, Tensor4<T> x2) {
    Ex& ex = ex_;
    constexpr bool check = Ex::kHostMemory;
    const std::int64_t N = img.size[0], Hi = img.size[2], Wi = img.size[3], S = cfg_.att_input, O = cfg_.out;
    Tensor4<T> small = ex.template act<T>(N, 3, S, S);
    ex.resize_bilinear(N * 3, Hi, Wi, S, S, true, img.data, small.data);
    const Tensor2<T> logits = att_->forward(ex, detail_model::as_type<A>(ex, Tensor4<const T>(small)), training);
    // gradient stopped after the trilinear attention; the operators read it as T
    const Tensor4<const T> F = detail_model::as_type<T>(ex, att_->feature_map());
    if (!ex.all_finite(Tensor2<const T>(logits), training) || !ex.all_finite(F, training)) return {};  // caller reports it
    const std::int64_t C = F.size[1], h = F.size[2], w = F.size[3];
    ex.mark(2);  // the TASN operators: trilinear attention, maps, sampling
    Tensor4<T> M = ex.template act<T>(N, C, h, w);
    TrilinearAttentionOptions to;
    to.beta = cfg_.beta;
    to.check_finite = check;
    ex.trilinear_attention_forward(TrilinearForwardArgs<T>{F, M, {}, to});
    Tensor3<T> smap(ex.template buffer<T>(N * h * w), {N, h, w}), dmap(ex.template buffer<T>(N * h * w), {N, h, w});
    StructureMapArgs<T> sm{M, smap, {}};
    sm.options.distinct = cfg_.distinct;
    sm.options.check_finite = check;
    ex.structure_map(sm);
    DetailMapArgs<T> dm;
    dm.m = M;
    dm.out = dmap;
    dm.options.training = training;
    dm.options.seed = step_seed;
    dm.options.first_sample = this->first_sample(N);
    dm.options.check_finite = check;
    if (training && !detail_channels_.empty())
      dm.channels = Tensor1<const std::int64_t>(ex.upload(detail_channels_), {static_cast<std::int64_t>(detail_channels_.size())});
    ex.detail_map(dm);
    Tensor2<T> gy(ex.template buffer<T>(N * O), {N, O}), gx(ex.template buffer<T>(N * O), {N, O});
    Tensor1<unsigned char> fb_s(ex.template buffer<unsigned char>(N), {N}), fb_d(ex.template buffer<unsigned char>(N), {N});
    AttentionSampleArgs<T> as;
    as.img = img;
    as.attention = smap;
    as.out = x2.slice(N, 2 * N);
    as.gy = gy;
    as.gx = gx;
    as.fallback = fb_s;
    as.options.grid.dense = cfg_.dense;
    as.options.grid.iters = cfg_.iters;
    as.options.grid.mode = cfg_.mode;
    as.options.squared = cfg_.structure_squared;
    as.options.check_finite = check;
    ex.attention_sample(as);
    as.attention = dmap;
    as.out = x2.slice(0, N);
    as.gy = {};
    as.gx = {};
    as.fallback = fb_d;
    as.options.squared = false;
    ex.attention_sample(as);
    ex.mark(3);
    views_ = {smap, dmap, x2.slice(N, 2 * N), x2.slice(0, N), gy, gx, fb_s, fb_d};
    return logits;
  }

  // Slots of the step's scalars (context memory, fetched once at the end of the step).
  enum Loss { kAtt, kPart, kMaster, kPartAux, kMasterAux, kDistill, kLosses };

  const StepStats& train_step(const std::vector<T>& images, const std::vector<std::int64_t>& labels,
                              std::uint64_t step_seed) override {
    Ex& ex = ex_;
    std::int64_t N = 0;
    detail_model::check_batch(images, labels, cfg_.image, &N, "TasnNet::train_step", true);
    const std::int64_t K = cfg_.classes, O = cfg_.out;
    ex.begin_step();
    ex.zero_grads(params_);
    StepStats& st = stats_;
    host_views_ = {};  // (a device context's host copies are those of a predict() call)
    ex.mark(0);
    const Tensor4<const T> img = ex.images(images, N, cfg_.image);
    const std::int64_t* y = ex.upload(labels);
    ex.mark(1);
    Tensor4<T> x2 = ex.template act<T>(2 * N, 3, O, O);
    const Tensor2<T> z_att = attend(img, true, step_seed, x2);
    if (!z_att.present()) {
      detail_model::non_finite(st, "attention-net output", N);
      return st;
    }

    // (2N, F): [detail; structure]
    const Tensor2<A> pooled = master_->forward_pooled(ex, detail_model::as_type<A>(ex, Tensor4<const T>(x2)), true);
    const Tensor2<const A> f_part = pooled.slice(0, N), f_master = pooled.slice(N, 2 * N);
    const Tensor2<T> z_part = part_fc_.forward(ex, f_part), z_master = master_fc_.forward(ex, f_master);
    const Tensor2<T> z_aux = shared_fc_.forward(ex, pooled);  // [part_aux; master_aux]
    for (const auto* z : {&z_part, &z_master, &z_aux})
      if (!ex.all_finite(Tensor2<const T>(*z), true)) {
        detail_model::non_finite(st, "part/master logits", N);
        return st;
      }

    T* L = ex.template buffer<T>(kLosses);
    std::int64_t* correct = ex.template buffer<std::int64_t>(1);
    Tensor2<T> d_att = ex.mat(N, K), d_part = ex.mat(N, K), d_master = ex.mat(N, K), d_aux = ex.mat(2 * N, K);
    const double gs = cfg_.head_grad_scale;
    using detail_model::cross_entropy;
    cross_entropy<T>(ex, z_att, y, cfg_.att_grad_scale, d_att, L + kAtt);
    cross_entropy<T>(ex, z_part, y, gs, d_part, L + kPart);
    cross_entropy<T>(ex, z_master, y, gs, d_master, L + kMaster);
    cross_entropy<T>(ex, z_aux.slice(0, N), y, gs, d_aux.slice(0, N), L + kPartAux);
    cross_entropy<T>(ex, z_aux.slice(N, 2 * N), y, gs, d_aux.slice(N, 2 * N), L + kMasterAux);
    const T w = static_cast<T>(cfg_.distill_weight);
    {  // distillation: student = master logits, teacher = part logits
      DistillationOptions o;
      o.temperature = cfg_.temperature;
      o.reduction = Reduction::Sum;
      o.check_finite = Ex::kHostMemory;
      Tensor2<T> ds = ex.mat(N, K), dt = ex.mat(N, K);
      DistillationArgs<T> da;
      da.student = z_master;
      da.teacher = z_part;
      da.loss = Tensor1<T>(L + kDistill, {1});
      da.dstudent = ds;
      if (cfg_.teacher_grad) da.dteacher = dt;
      da.options = o;
      ex.distillation_loss(da);
      ex.axpy(N * K, w, ds.data, d_master.data);
      if (cfg_.teacher_grad) ex.axpy(N * K, w, dt.data, d_part.data);
    }
    detail_model::top1<T>(ex, z_aux.slice(N, 2 * N), y, correct);
    ex.mark(4);

    // backward: heads -> shared backbone (2N) ; attention net from its own loss only
    Tensor2<A> df = ex.template mat<A>(2 * N, pooled.size[1], true);
    part_fc_.backward(ex, d_part, df.slice(0, N));
    master_fc_.backward(ex, d_master, df.slice(N, 2 * N));
    shared_fc_.backward(ex, d_aux, df);
    this->grads_ready("heads");
    master_->backward_pooled(ex, df);
    this->grads_ready("master");
    att_->backward(ex, d_att);
    this->grads_ready("att");
    ex.mark(5);

    // the one read-back of the step: losses, the count, the context's gradient check
    const T* hl = ex.fetch(L, kLosses);
    const std::int64_t* hc = ex.fetch(correct, 1);
    ex.check_grads(params_);
    ex.synchronize();
    static const char* const names[kLosses] = {"att", "part", "master", "part_aux", "master_aux", "distill"};
    st.losses.clear();
    st.total = 0;
    st.n = N;
    for (int i = 0; i < kLosses; ++i) {
      const double v = i == kDistill ? double(w) * double(hl[i]) : double(hl[i]);
      st.losses.push_back({names[i], v});
      st.total += v;
    }
    st.correct = *hc;
    phase_times(st);
    return st;
  }

  std::vector<Tensor<T>> predict(const std::vector<T>& images, std::int64_t n) override {
    Ex& ex = ex_;
    std::int64_t N = 0;
    detail_model::check_batch(images, {}, cfg_.image, &N, "TasnNet::predict", false);
    TASN_CHECK_ARG(N == n, "TasnNet::predict: ", N, " images, expected ", n);
    const std::int64_t K = cfg_.classes;
    ex.begin_step();
    const Tensor4<const T> img = ex.images(images, n, cfg_.image);
    Tensor4<T> x2 = ex.template act<T>(2 * n, 3, cfg_.out, cfg_.out);
    const Tensor2<T> z_att = attend(img, false, 0, x2);
    if (!z_att.present()) throw NonFinite("TasnNet::predict: the attention net's output is not finite (a diverged model?)");
    const Tensor2<A> pooled = master_->forward_pooled(ex, detail_model::as_type<A>(ex, Tensor4<const T>(x2)), false);
    const Tensor2<const A> f_part = pooled.slice(0, n), f_master = pooled.slice(n, 2 * n);
    const Tensor2<T> z_aux = shared_fc_.forward(ex, pooled);
    const Tensor2<const T> z[5] = {z_att, part_fc_.forward(ex, f_part), master_fc_.forward(ex, f_master),
                                   z_aux.slice(0, n), z_aux.slice(n, 2 * n)};
    const T* hz[5];
    for (int i = 0; i < 5; ++i) hz[i] = ex.fetch(z[i].data, n * K);
    if constexpr (!Ex::kHostMemory) fetch_views();
    ex.synchronize();
    std::vector<Tensor<T>> out;
    for (int i = 0; i < 5; ++i) out.push_back(detail_model::to_tensor<T>(hz[i], n, K));
    for (const auto& t : out)
      for (const T v : t.data)
        if (!std::isfinite(v)) throw NonFinite("TasnNet::predict: non-finite logits (a diverged model?)");
    out.push_back(combined(out));
    return out;
  }

  // Mean of the heads' softmax probabilities (log of it, so argmax / top-k work as on logits).
  static Tensor<T> combined(const std::vector<Tensor<T>>& heads) {
    Tensor<T> c(heads[0].shape), p(heads[0].shape);
    for (const auto& z : heads) {
      cpu::softmax_rows(z.ptr(), p.ptr(), z.dim(0), z.dim(1), T(1), true);
      for (std::int64_t i = 0; i < c.numel(); ++i) c.data[i] += p.data[i];
    }
    for (auto& x : c.data) x = std::log(std::max(x / T(heads.size()), T(1e-30)));
    return c;
  }

 private:
  void phase_times(StepStats& st) const {
    st.seconds_upload = ex_.seconds(0, 1);
    st.seconds_forward = ex_.seconds(1, 4);
    st.seconds_tasn = ex_.seconds(2, 3);
    st.seconds_backward = ex_.seconds(4, 5);
  }

  // Host copies of the views (a device context; they stay valid until the next step).
  void fetch_views() {
    const auto& v = views_;
    auto host = [&](auto t) {
      auto h = t;
      h.data = ex_.fetch(t.data, t.numel());
      return h;
    };
    host_views_ = {host(v.structure_map), host(v.detail_map), host(v.structure_image), host(v.detail_image),
                   host(v.gy_structure), host(v.gx_structure), host(v.fallback_structure), host(v.fallback_detail)};
  }

  NetConfig cfg_;
  nn::ParamStore<T> att_ps_, master_ps_, heads_ps_;
  std::unique_ptr<nn::AttentionNet<T, A>> att_;
  std::unique_ptr<nn::ResNet<T, A>> master_;
  nn::Linear<T, A> part_fc_, master_fc_, shared_fc_;
  BasicTasnViews<T> views_, host_views_;
  StepStats stats_;
  std::vector<std::int64_t> detail_channels_;  // set_detail_channels
};
using TasnNet = BasicTasnNet<float>;

// The baseline: the master backbone + one FC on the image uniformly resized to the sampler's
// output size (the sampler with a uniform map gives exactly this resize), no attention, no
// sampler, no distillation.
template <class T, class Ex = nn::CpuExec<T>>
class BasicBaselineNet : public ModelOn<T, Ex> {
  using ModelOn<T, Ex>::ex_;
  using ModelOn<T, Ex>::params_;
  using A = typename Ex::act_type;  // the backbone's activations (see BasicTasnNet)

 public:
  template <class... ExArgs>
  explicit BasicBaselineNet(const NetConfig& c, ExArgs&&... ex_args)
      : ModelOn<T, Ex>(std::forward<ExArgs>(ex_args)...), cfg_(c) {
    c.validate();
    nn::ResNetConfig mc = c.master_backbone;
    mc.num_classes = 0;
    master_ = std::make_unique<nn::ResNet<T, A>>(master_ps_, mc);
    fc_ = nn::Linear<T, A>(heads_ps_, "fc", master_->features(), c.classes);
    params_.add("master", master_ps_);
    params_.add("heads", heads_ps_);
    this->lay_out();
  }
  std::string name() const override { return "baseline"; }
  std::vector<std::string> head_names() const override { return {"uniform"}; }
  std::size_t reported_head() const override { return 0; }
  std::string config_string() const override {
    return "classes=" + std::to_string(cfg_.classes) + " image=" + std::to_string(cfg_.image) + " out=" + std::to_string(cfg_.out);
  }

  const StepStats& train_step(const std::vector<T>& images, const std::vector<std::int64_t>& labels,
                              std::uint64_t) override {
    Ex& ex = ex_;
    std::int64_t N = 0;
    detail_model::check_batch(images, labels, cfg_.image, &N, "BaselineNet::train_step", true);
    ex.begin_step();
    ex.zero_grads(params_);
    StepStats& st = stats_;
    ex.mark(0);
    const Tensor4<const T> img = ex.images(images, N, cfg_.image);
    const std::int64_t* y = ex.upload(labels);
    ex.mark(1);
    const Tensor2<T> z = forward(img, true);
    if (!ex.all_finite(Tensor2<const T>(z), true)) {
      detail_model::non_finite(st, "logits", N);
      return st;
    }
    Tensor2<T> dz = ex.mat(N, cfg_.classes);
    T* loss = ex.template buffer<T>(1);
    std::int64_t* correct = ex.template buffer<std::int64_t>(1);
    detail_model::cross_entropy<T>(ex, z, y, 1.0, dz, loss);
    detail_model::top1<T>(ex, z, y, correct);
    ex.mark(4);
    Tensor2<A> df = ex.template mat<A>(N, master_->features(), true);
    fc_.backward(ex, dz, df);
    this->grads_ready("heads");
    master_->backward_pooled(ex, df);
    this->grads_ready("master");
    ex.mark(5);
    const T* hl = ex.fetch(loss, 1);
    const std::int64_t* hc = ex.fetch(correct, 1);
    ex.check_grads(params_);
    ex.synchronize();
    st.losses.clear();
    st.n = N;
    st.total = double(*hl);
    st.losses.push_back({"ce", st.total});
    st.correct = *hc;
    st.seconds_upload = ex.seconds(0, 1);
    st.seconds_forward = ex.seconds(1, 4);
    st.seconds_backward = ex.seconds(4, 5);
    return st;
  }

  std::vector<Tensor<T>> predict(const std::vector<T>& images, std::int64_t n) override {
    std::int64_t N = 0;
    detail_model::check_batch(images, {}, cfg_.image, &N, "BaselineNet::predict", false);
    TASN_CHECK_ARG(N == n, "BaselineNet::predict: ", N, " images, expected ", n);
    ex_.begin_step();
    const Tensor2<T> z = forward(ex_.images(images, n, cfg_.image), false);
    const T* hz = ex_.fetch(z.data, z.numel());
    ex_.synchronize();
    std::vector<Tensor<T>> out{detail_model::to_tensor<T>(hz, n, cfg_.classes)};
    for (const T v : out[0].data)
      if (!std::isfinite(v)) throw NonFinite("BaselineNet::predict: non-finite logits (a diverged model?)");
    return out;
  }

 private:
  Tensor2<T> forward(Tensor4<const T> img, bool training) {
    const std::int64_t N = img.size[0], O = cfg_.out;
    Tensor4<T> x = ex_.template act<T>(N, 3, O, O);
    ex_.resize_bilinear(N * 3, img.size[2], img.size[3], O, O, true, img.data, x.data);
    return fc_.forward(ex_, master_->forward_pooled(ex_, detail_model::as_type<A>(ex_, Tensor4<const T>(x)), training));
  }

  NetConfig cfg_;
  nn::ParamStore<T> master_ps_, heads_ps_;
  std::unique_ptr<nn::ResNet<T, A>> master_;
  nn::Linear<T, A> fc_;
  StepStats stats_;
};
using BaselineNet = BasicBaselineNet<float>;

}  // namespace tasn::train
