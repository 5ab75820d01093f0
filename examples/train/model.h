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
#include <utility>
#include <vector>

#include "nn/attention_net.h"
#include "nn/exec.h"
#include "nn/params.h"
#include "nn/resnet.h"
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
template <class T>
class BasicModel {
 public:
  virtual ~BasicModel() = default;
  virtual std::string name() const = 0;
  // Every parameter and buffer, in one flat value buffer and one flat gradient buffer.
  virtual nn::FlatParams<T>& params() = 0;
  // (prefix, store) pairs of params(): checkpoint names are "<prefix>.<name>".
  const std::vector<std::pair<std::string, nn::ParamStore<T>*>>& stores() { return params().stores(); }
  // The execution context the model runs on (backend, arena).
  virtual nn::CpuExec<T>& exec() = 0;
  // Forward + backward of one batch (grads are zeroed first). images: (N, 3, image, image). The
  // result is valid until the next call. After the first step no heap allocation.
  virtual const StepStats& train_step(const std::vector<T>& images, const std::vector<std::int64_t>& labels,
                                      std::uint64_t step_seed) = 0;
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

// A library operator's workspace from the step's arena (the operators want 256-byte alignment).
template <class T>
tasn::Workspace arena_workspace(nn::CpuExec<T>& ex, std::size_t bytes) {
  if (bytes == 0) return {};
  auto* p = static_cast<unsigned char*>(ex.arena().bytes(bytes + 256));
  const auto a = reinterpret_cast<std::uintptr_t>(p);
  return {p + ((256 - a % 256) % 256), bytes};
}
template <class T, class Args>
tasn::Workspace workspace_for(nn::CpuExec<T>& ex, const Args& args) {
  return arena_workspace(ex, cpu::workspace_bytes(args));
}

template <class T>
Tensor4<const T> images_view(const std::vector<T>& images, std::int64_t side, const char* what) {
  const std::int64_t per = 3 * side * side;
  TASN_CHECK_ARG(per > 0 && !images.empty() && static_cast<std::int64_t>(images.size()) % per == 0, what,
                 ": images hold ", images.size(), " values, not a whole number of (3, ", side, ", ", side, ") images");
  return Tensor4<const T>(images.data(), {static_cast<std::int64_t>(images.size()) / per, 3, side, side});
}

// Cross-entropy of z (N, K) summed over the batch with grad_scale; writes dz, returns the loss.
template <class T>
double cross_entropy(nn::CpuExec<T>& ex, Tensor2<const T> z, const std::vector<std::int64_t>& labels, double scale,
                     Tensor2<T> dz) {
  CrossEntropyOptions o;
  o.grad_scale = scale;
  o.reduction = Reduction::Sum;
  T* loss = ex.template buffer<T>(1);
  CrossEntropyArgs<T> a{z, Tensor1<const std::int64_t>(labels.data(), {z.size[0]}), Tensor1<T>(loss, {1}), dz, {}, o};
  cpu::softmax_cross_entropy(a, workspace_for(ex, a));
  return double(*loss);
}

template <class T, int R>
bool finite(TensorRef<const T, R> t) {
  const std::int64_t n = t.numel();
  bool ok = true;
  for (std::int64_t i = 0; i < n; ++i) ok &= std::isfinite(t.data[i]);
  return ok;
}

// The step's result when a tensor of the forward pass is not finite: the library's operators
// would refuse it (they throw on NaN/Inf input), so the network stops here and reports it.
inline void non_finite(StepStats& st, const char* what, std::int64_t n) {
  st = StepStats();
  st.n = n;
  st.total = std::numeric_limits<double>::quiet_NaN();
  st.losses.push_back({std::string("non-finite ") + what, st.total});
}

// Correct top-1 predictions of z (N, K); the operator's scratch from ex's arena when given.
template <class T>
std::int64_t top1(Tensor2<const T> z, const std::vector<std::int64_t>& labels, nn::CpuExec<T>* ex = nullptr) {
  std::int64_t c = 0;
  const TopkArgs<T> a{z, Tensor1<const std::int64_t>(labels.data(), {z.size[0]}), Tensor1<std::int64_t>(&c, {1}),
                      TopkOptions{}};
  cpu::topk_correct(a, ex ? workspace_for(*ex, a) : tasn::Workspace{});
  return c;
}

template <class T>
Tensor<T> to_tensor(Tensor2<const T> z) {
  Tensor<T> t({z.size[0], z.size[1]});
  std::copy(z.data, z.data + z.numel(), t.ptr());
  return t;
}

}  // namespace detail_model

template <class T>
class BasicTasnNet : public BasicModel<T> {
 public:
  explicit BasicTasnNet(const NetConfig& c, nn::Backend backend = nn::default_backend<T>()) : cfg_(c), ex_(backend) {
    c.validate();
    nn::AttentionNetConfig ac;
    ac.backbone = c.att_backbone;
    ac.backbone.num_classes = 0;
    ac.num_classes = c.classes;
    att_ = std::make_unique<nn::AttentionNet<T>>(att_ps_, ac);
    nn::ResNetConfig mc = c.master_backbone;
    mc.num_classes = 0;
    master_ = std::make_unique<nn::ResNet<T>>(master_ps_, mc);
    const std::int64_t F = master_->features();
    part_fc_ = nn::Linear<T>(heads_ps_, "part_fc", F, c.classes);
    master_fc_ = nn::Linear<T>(heads_ps_, "master_fc", F, c.classes);
    shared_fc_ = nn::Linear<T>(heads_ps_, "shared_fc", F, c.classes);
    params_.add("att", att_ps_);
    params_.add("master", master_ps_);
    params_.add("heads", heads_ps_);
    params_.allocate();
  }

  std::string name() const override { return "tasn"; }
  nn::FlatParams<T>& params() override { return params_; }
  nn::CpuExec<T>& exec() override { return ex_; }
  std::vector<std::string> head_names() const override {
    return {"attention", "part", "master", "part_aux", "master_aux", "combined"};
  }
  std::size_t reported_head() const override { return 4; }  // master image through the shared FC
  std::string config_string() const override { return net_config_string(cfg_); }
  std::string training_string() const override { return loss_config_string(cfg_); }
  const NetConfig& config() const { return cfg_; }
  nn::AttentionNet<T>& attention_net() { return *att_; }
  nn::ParamStore<T>& att_store() { return att_ps_; }
  nn::ParamStore<T>& master_store() { return master_ps_; }
  // Maps, sampled images and grid of the last train_step / predict call.
  const BasicTasnViews<T>& last_views() const { return views_; }
  const BasicTasnViews<T>* attention_views() const override { return &views_; }
  // Test hook: the training-mode detail map takes channel c[n] of sample n (the operator checks
  // that there is one per sample, in range) instead of the seeded pick; empty: the seeded pick.
  void set_detail_channels(std::vector<std::int64_t> c) { detail_channels_ = std::move(c); }

  // The attention net's logits, the maps, and the two sampled images written into x2 (2N, 3, out,
  // out): detail images in [0, N), structure images in [N, 2N) (one batch for the shared
  // backbone, no concatenation). training: BN batch statistics and a random detail channel per
  // sample (drawn from step_seed); else running statistics and the channel sum for the detail map.
  // Returns an absent view when the attention net's output is not finite (a diverged model),
  // without running the operators.
  Tensor2<T> attend(Tensor4<const T> img, bool training, std::uint64_t step_seed, Tensor4<T> x2) {
    nn::CpuExec<T>& ex = ex_;
    const std::int64_t N = img.size[0], Hi = img.size[2], Wi = img.size[3], A = cfg_.att_input, O = cfg_.out;
    Tensor4<T> small = ex.act(N, 3, A, A);
    nn::resize_bilinear(N * 3, Hi, Wi, A, A, true, img.data, small.data);
    const Tensor2<T> logits = att_->forward(ex, small, training);
    const Tensor4<const T> F = att_->feature_map();  // gradient stopped after the trilinear attention
    if (!detail_model::finite(Tensor2<const T>(logits)) || !detail_model::finite(F)) return {};  // caller reports it
    const std::int64_t C = F.size[1], h = F.size[2], w = F.size[3];
    Tensor4<T> M = ex.act(N, C, h, w);
    TrilinearAttentionOptions to;
    to.beta = cfg_.beta;
    TrilinearForwardArgs<T> ta{F, M, {}, to};
    cpu::trilinear_attention_forward(ta, detail_model::workspace_for(ex, ta));
    Tensor3<T> smap(ex.template buffer<T>(N * h * w), {N, h, w}), dmap(ex.template buffer<T>(N * h * w), {N, h, w});
    StructureMapArgs<T> sm{M, smap, {}};
    sm.options.distinct = cfg_.distinct;
    cpu::structure_map(sm, detail_model::workspace_for(ex, sm));
    DetailMapArgs<T> dm;
    dm.m = M;
    dm.out = dmap;
    dm.options.training = training;
    dm.options.seed = step_seed;
    if (training && !detail_channels_.empty())
      dm.channels = Tensor1<const std::int64_t>(detail_channels_.data(), {static_cast<std::int64_t>(detail_channels_.size())});
    cpu::detail_map(dm, detail_model::workspace_for(ex, dm));
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
    cpu::attention_sample(as, detail_model::workspace_for(ex, as));
    as.attention = dmap;
    as.out = x2.slice(0, N);
    as.gy = {};
    as.gx = {};
    as.fallback = fb_d;
    as.options.squared = false;
    cpu::attention_sample(as, detail_model::workspace_for(ex, as));
    views_ = {smap, dmap, x2.slice(N, 2 * N), x2.slice(0, N), gy, gx, fb_s, fb_d};
    return logits;
  }

  const StepStats& train_step(const std::vector<T>& images, const std::vector<std::int64_t>& labels,
                              std::uint64_t step_seed) override {
    using detail_model::cross_entropy;
    nn::CpuExec<T>& ex = ex_;
    const Tensor4<const T> img = detail_model::images_view(images, cfg_.image, "TasnNet::train_step");
    const std::int64_t N = img.size[0], K = cfg_.classes, O = cfg_.out;
    TASN_CHECK_ARG(static_cast<std::int64_t>(labels.size()) == N, "TasnNet::train_step: ", labels.size(),
                   " labels for ", N, " images");
    ex.begin_step();
    params_.zero_grad();
    StepStats& st = stats_;
    Tensor4<T> x2 = ex.act(2 * N, 3, O, O);
    const Tensor2<T> z_att = attend(img, true, step_seed, x2);
    if (!z_att.present()) {
      detail_model::non_finite(st, "attention-net output", N);
      return st;
    }

    const Tensor2<T> pooled = master_->forward(ex, x2, true);  // (2N, F): [detail; structure]
    const Tensor2<const T> f_part = pooled.slice(0, N), f_master = pooled.slice(N, 2 * N);
    const Tensor2<T> z_part = part_fc_.forward(ex, f_part), z_master = master_fc_.forward(ex, f_master);
    const Tensor2<T> z_aux = shared_fc_.forward(ex, pooled);  // [part_aux; master_aux]
    for (const auto* z : {&z_part, &z_master, &z_aux})
      if (!detail_model::finite(Tensor2<const T>(*z))) {
        detail_model::non_finite(st, "part/master logits", N);
        return st;
      }

    st.losses.clear();
    st.total = 0;
    st.n = N;
    Tensor2<T> d_att = ex.mat(N, K), d_part = ex.mat(N, K), d_master = ex.mat(N, K), d_aux = ex.mat(2 * N, K);
    const double gs = cfg_.head_grad_scale;
    st.losses.push_back({"att", cross_entropy<T>(ex, z_att, labels, cfg_.att_grad_scale, d_att)});
    st.losses.push_back({"part", cross_entropy<T>(ex, z_part, labels, gs, d_part)});
    st.losses.push_back({"master", cross_entropy<T>(ex, z_master, labels, gs, d_master)});
    st.losses.push_back({"part_aux", cross_entropy<T>(ex, z_aux.slice(0, N), labels, gs, d_aux.slice(0, N))});
    st.losses.push_back({"master_aux", cross_entropy<T>(ex, z_aux.slice(N, 2 * N), labels, gs, d_aux.slice(N, 2 * N))});
    {  // distillation: student = master logits, teacher = part logits
      DistillationOptions o;
      o.temperature = cfg_.temperature;
      o.reduction = Reduction::Sum;
      Tensor2<T> ds = ex.mat(N, K), dt = ex.mat(N, K);
      T* loss = ex.template buffer<T>(1);
      const T w = static_cast<T>(cfg_.distill_weight);
      DistillationArgs<T> da;
      da.student = z_master;
      da.teacher = z_part;
      da.loss = Tensor1<T>(loss, {1});
      da.dstudent = ds;
      if (cfg_.teacher_grad) da.dteacher = dt;
      da.options = o;
      cpu::distillation_loss(da, detail_model::workspace_for(ex, da));
      for (std::int64_t i = 0; i < N * K; ++i) {
        d_master.data[i] += w * ds.data[i];
        if (cfg_.teacher_grad) d_part.data[i] += w * dt.data[i];
      }
      st.losses.push_back({"distill", double(w) * double(*loss)});
    }
    for (const auto& [n, l] : st.losses) st.total += l;
    st.correct = detail_model::top1<T>(z_aux.slice(N, 2 * N), labels, &ex);

    // backward: heads -> shared backbone (2N) ; attention net from its own loss only
    Tensor2<T> df = ex.mat(2 * N, pooled.size[1], true);
    part_fc_.backward(ex, d_part, df.slice(0, N));
    master_fc_.backward(ex, d_master, df.slice(N, 2 * N));
    shared_fc_.backward(ex, d_aux, df);
    master_->backward(ex, df);
    att_->backward(ex, d_att);
    return st;
  }

  std::vector<Tensor<T>> predict(const std::vector<T>& images, std::int64_t n) override {
    nn::CpuExec<T>& ex = ex_;
    const Tensor4<const T> img = detail_model::images_view(images, cfg_.image, "TasnNet::predict");
    TASN_CHECK_ARG(img.size[0] == n, "TasnNet::predict: ", img.size[0], " images, expected ", n);
    ex.begin_step();
    Tensor4<T> x2 = ex.act(2 * n, 3, cfg_.out, cfg_.out);
    const Tensor2<T> z_att = attend(img, false, 0, x2);
    if (!z_att.present()) throw NonFinite("TasnNet::predict: the attention net's output is not finite (a diverged model?)");
    const Tensor2<T> pooled = master_->forward(ex, x2, false);
    const Tensor2<const T> f_part = pooled.slice(0, n), f_master = pooled.slice(n, 2 * n);
    const Tensor2<T> z_aux = shared_fc_.forward(ex, pooled);
    using detail_model::to_tensor;
    std::vector<Tensor<T>> out = {to_tensor<T>(z_att), to_tensor<T>(part_fc_.forward(ex, f_part)),
                                  to_tensor<T>(master_fc_.forward(ex, f_master)), to_tensor<T>(z_aux.slice(0, n)),
                                  to_tensor<T>(z_aux.slice(n, 2 * n))};
    for (const auto& z : out)
      if (!detail_model::finite(Tensor2<const T>(z.ptr(), {z.dim(0), z.dim(1)})))
        throw NonFinite("TasnNet::predict: non-finite logits (a diverged model?)");
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
  NetConfig cfg_;
  nn::CpuExec<T> ex_;
  nn::ParamStore<T> att_ps_, master_ps_, heads_ps_;
  nn::FlatParams<T> params_;
  std::unique_ptr<nn::AttentionNet<T>> att_;
  std::unique_ptr<nn::ResNet<T>> master_;
  nn::Linear<T> part_fc_, master_fc_, shared_fc_;
  BasicTasnViews<T> views_;
  StepStats stats_;
  std::vector<std::int64_t> detail_channels_;  // set_detail_channels
};
using TasnNet = BasicTasnNet<float>;

// The baseline: the master backbone + one FC on the image uniformly resized to the sampler's
// output size (the sampler with a uniform map gives exactly this resize), no attention, no
// sampler, no distillation.
template <class T>
class BasicBaselineNet : public BasicModel<T> {
 public:
  explicit BasicBaselineNet(const NetConfig& c, nn::Backend backend = nn::default_backend<T>()) : cfg_(c), ex_(backend) {
    c.validate();
    nn::ResNetConfig mc = c.master_backbone;
    mc.num_classes = 0;
    master_ = std::make_unique<nn::ResNet<T>>(master_ps_, mc);
    fc_ = nn::Linear<T>(heads_ps_, "fc", master_->features(), c.classes);
    params_.add("master", master_ps_);
    params_.add("heads", heads_ps_);
    params_.allocate();
  }
  std::string name() const override { return "baseline"; }
  nn::FlatParams<T>& params() override { return params_; }
  nn::CpuExec<T>& exec() override { return ex_; }
  std::vector<std::string> head_names() const override { return {"uniform"}; }
  std::size_t reported_head() const override { return 0; }
  std::string config_string() const override {
    return "classes=" + std::to_string(cfg_.classes) + " image=" + std::to_string(cfg_.image) + " out=" + std::to_string(cfg_.out);
  }

  const StepStats& train_step(const std::vector<T>& images, const std::vector<std::int64_t>& labels,
                              std::uint64_t) override {
    nn::CpuExec<T>& ex = ex_;
    const Tensor4<const T> img = detail_model::images_view(images, cfg_.image, "BaselineNet::train_step");
    const std::int64_t N = img.size[0];
    TASN_CHECK_ARG(static_cast<std::int64_t>(labels.size()) == N, "BaselineNet::train_step: ", labels.size(),
                   " labels for ", N, " images");
    ex.begin_step();
    params_.zero_grad();
    StepStats& st = stats_;
    const Tensor2<T> z = forward(img, true);
    if (!detail_model::finite(Tensor2<const T>(z))) {
      detail_model::non_finite(st, "logits", N);
      return st;
    }
    Tensor2<T> dz = ex.mat(N, cfg_.classes);
    st.losses.clear();
    st.n = N;
    st.total = detail_model::cross_entropy<T>(ex, z, labels, 1.0, dz);
    st.losses.push_back({"ce", st.total});
    st.correct = detail_model::top1<T>(z, labels, &ex);
    Tensor2<T> df = ex.mat(N, master_->features(), true);
    fc_.backward(ex, dz, df);
    master_->backward(ex, df);
    return st;
  }

  std::vector<Tensor<T>> predict(const std::vector<T>& images, std::int64_t n) override {
    const Tensor4<const T> img = detail_model::images_view(images, cfg_.image, "BaselineNet::predict");
    TASN_CHECK_ARG(img.size[0] == n, "BaselineNet::predict: ", img.size[0], " images, expected ", n);
    ex_.begin_step();
    const Tensor2<T> z = forward(img, false);
    if (!detail_model::finite(Tensor2<const T>(z))) throw NonFinite("BaselineNet::predict: non-finite logits (a diverged model?)");
    return {detail_model::to_tensor<T>(z)};
  }

 private:
  Tensor2<T> forward(Tensor4<const T> img, bool training) {
    const std::int64_t N = img.size[0], O = cfg_.out;
    Tensor4<T> x = ex_.act(N, 3, O, O);
    nn::resize_bilinear(N * 3, img.size[2], img.size[3], O, O, true, img.data, x.data);
    return fc_.forward(ex_, master_->forward(ex_, x, training));
  }

  NetConfig cfg_;
  nn::CpuExec<T> ex_;
  nn::ParamStore<T> master_ps_, heads_ps_;
  nn::FlatParams<T> params_;
  std::unique_ptr<nn::ResNet<T>> master_;
  nn::Linear<T> fc_;
  StepStats stats_;
};
using BaselineNet = BasicBaselineNet<float>;

}  // namespace tasn::train
