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

// Per-step results of a training step (losses summed over the batch).
struct StepStats {
  std::vector<std::pair<std::string, double>> losses;  // name, sum over the batch
  double total = 0;
  std::int64_t correct = 0;  // of the reported head
  std::int64_t n = 0;
};

// What the trainer needs from a network.
class Model {
 public:
  virtual ~Model() = default;
  virtual std::string name() const = 0;
  // (prefix, store) pairs: every parameter and buffer, for the optimiser and checkpoints.
  virtual std::vector<std::pair<std::string, nn::ParamStore<float>*>> stores() = 0;
  // Forward + backward of one batch (grads are zeroed first). images: (N, 3, image, image).
  virtual StepStats train_step(const std::vector<float>& images, const std::vector<std::int64_t>& labels,
                               std::uint64_t step_seed) = 0;
  // Evaluation-mode logits of every head, in head_names() order, each (N, classes).
  virtual std::vector<Tensor<float>> predict(const std::vector<float>& images, std::int64_t n) = 0;
  virtual std::vector<std::string> head_names() const = 0;
  virtual std::size_t reported_head() const = 0;  // the head whose accuracy is "the" accuracy
  // Everything besides parameter shapes that a checkpoint of this model depends on.
  virtual std::string config_string() const = 0;
  // Options that only change training (losses), part of a resumed run's training signature.
  virtual std::string training_string() const { return ""; }
};

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

inline Tensor<float> images_tensor(const std::vector<float>& images, std::int64_t side, const char* what) {
  const std::int64_t per = 3 * side * side;
  TASN_CHECK_ARG(per > 0 && !images.empty() && static_cast<std::int64_t>(images.size()) % per == 0, what,
                 ": images hold ", images.size(), " floats, not a whole number of (3, ", side, ", ", side, ") images");
  Tensor<float> t({static_cast<std::int64_t>(images.size()) / per, 3, side, side});
  t.data.assign(images.begin(), images.end());
  return t;
}

// A linear layer's parameters in a store.
struct Linear {
  nn::Param<float>*w = nullptr, *b = nullptr;
  Linear() = default;
  Linear(nn::ParamStore<float>& ps, const std::string& name, std::int64_t in, std::int64_t out)
      : w(&ps.add(name + ".weight", {out, in})), b(&ps.add(name + ".bias", {out})) {}
  Tensor<float> forward(const Tensor<float>& x) const { return nn::linear_forward(x, w->value, &b->value); }
  void backward(const Tensor<float>& x, const Tensor<float>& dy, Tensor<float>& dx) const {
    nn::linear_backward(x, w->value, dy, &dx, &w->grad, &b->grad);
  }
};

// Cross-entropy summed over the batch with grad_scale; returns the loss, writes dlogits.
inline double cross_entropy(const Tensor<float>& z, const std::vector<std::int64_t>& labels, double scale,
                            Tensor<float>& dz) {
  CrossEntropyOptions o;
  o.grad_scale = scale;
  o.reduction = Reduction::Sum;
  dz = Tensor<float>(z.shape);
  float loss = 0;
  const std::int64_t n = z.dim(0), k = z.dim(1);
  cpu::softmax_cross_entropy(CrossEntropyArgs<float>{Tensor2<const float>(z.ptr(), {n, k}),
                                                     Tensor1<const std::int64_t>(labels.data(), {n}),
                                                     Tensor1<float>(&loss, {1}), Tensor2<float>(dz.ptr(), {n, k}), {}, o});
  return loss;
}

inline bool finite(const Tensor<float>& t) {
  for (float v : t.data)
    if (!std::isfinite(v)) return false;
  return true;
}

// The step's result when a tensor of the forward pass is not finite: the library's operators
// would refuse it (they throw on NaN/Inf input), so the network stops here and reports it.
inline StepStats non_finite(const char* what, std::int64_t n) {
  StepStats st;
  st.n = n;
  st.total = std::numeric_limits<double>::quiet_NaN();
  st.losses.push_back({std::string("non-finite ") + what, st.total});
  return st;
}

inline std::int64_t top1(const Tensor<float>& z, const std::vector<std::int64_t>& labels) {
  std::int64_t c = 0;
  const std::int64_t n = z.dim(0), k = z.dim(1);
  cpu::topk_correct(TopkArgs<float>{Tensor2<const float>(z.ptr(), {n, k}), Tensor1<const std::int64_t>(labels.data(), {n}),
                                    Tensor1<std::int64_t>(&c, {1}), TopkOptions{}});
  return c;
}

}  // namespace detail_model

// Intermediate images and maps of one forward pass, for diagnostics and --dump-attention.
struct TasnViews {
  Tensor<float> structure_map, detail_map;          // (N, h, w) before upsampling
  Tensor<float> structure_image, detail_image;      // (N, 3, out, out)
  std::vector<float> gy_structure, gx_structure;    // the structure grid (N, out) each
  std::vector<unsigned char> fallback_structure, fallback_detail;
};

class TasnNet : public Model {
 public:
  explicit TasnNet(const NetConfig& c) : cfg_(c) {
    c.validate();
    nn::AttentionNetConfig ac;
    ac.backbone = c.att_backbone;
    ac.backbone.num_classes = 0;
    ac.num_classes = c.classes;
    att_ = std::make_unique<nn::AttentionNet<float>>(att_ps_, ac);
    nn::ResNetConfig mc = c.master_backbone;
    mc.num_classes = 0;
    master_ = std::make_unique<nn::ResNet<float>>(master_ps_, mc);
    const std::int64_t F = master_->features();
    part_fc_ = detail_model::Linear(heads_ps_, "part_fc", F, c.classes);
    master_fc_ = detail_model::Linear(heads_ps_, "master_fc", F, c.classes);
    shared_fc_ = detail_model::Linear(heads_ps_, "shared_fc", F, c.classes);
  }

  std::string name() const override { return "tasn"; }
  std::vector<std::pair<std::string, nn::ParamStore<float>*>> stores() override {
    return {{"att", &att_ps_}, {"master", &master_ps_}, {"heads", &heads_ps_}};
  }
  std::vector<std::string> head_names() const override {
    return {"attention", "part", "master", "part_aux", "master_aux", "combined"};
  }
  std::size_t reported_head() const override { return 4; }  // master image through the shared FC
  std::string config_string() const override { return net_config_string(cfg_); }
  std::string training_string() const override { return loss_config_string(cfg_); }
  const NetConfig& config() const { return cfg_; }
  nn::AttentionNet<float>& attention_net() { return *att_; }
  nn::ParamStore<float>& att_store() { return att_ps_; }
  nn::ParamStore<float>& master_store() { return master_ps_; }
  // Maps, sampled images and grid of the last train_step / predict call.
  const TasnViews& last_views() const { return views_; }

  // The attention net's logits, the maps, the two sampled images. training: BN batch statistics
  // and a random detail channel per sample (drawn from step_seed); else running statistics and
  // the channel sum for the detail map. Returns an empty tensor when the attention net's output is
  // not finite (a diverged model), without running the operators.
  Tensor<float> attend(const Tensor<float>& img, bool training, std::uint64_t step_seed, TasnViews& v) {
    const std::int64_t N = img.dim(0), Hi = img.dim(2), Wi = img.dim(3);
    nn::BatchNormState bn;
    bn.training = training;
    const Tensor<float> small = nn::resize_bilinear_forward(img, cfg_.att_input, cfg_.att_input, true);
    Tensor<float> logits = att_->forward(small, bn);
    const Tensor<float>& F = att_->feature_map();  // gradient stopped after the trilinear attention
    if (!detail_model::finite(logits) || !detail_model::finite(F)) return {};  // caller reports it
    const std::int64_t C = F.dim(1), h = F.dim(2), w = F.dim(3);
    Tensor<float> M(F.shape);
    TrilinearAttentionOptions to;
    to.beta = cfg_.beta;
    cpu::trilinear_attention_forward(TrilinearForwardArgs<float>{Tensor4<const float>(F.ptr(), {N, C, h, w}),
                                                                 Tensor4<float>(M.ptr(), {N, C, h, w}), {}, to});
    v.structure_map = Tensor<float>({N, h, w});
    v.detail_map = Tensor<float>({N, h, w});
    StructureMapArgs<float> sm{Tensor4<const float>(M.ptr(), {N, C, h, w}), Tensor3<float>(v.structure_map.ptr(), {N, h, w}),
                               {}};
    sm.options.distinct = cfg_.distinct;
    cpu::structure_map(sm);
    DetailMapArgs<float> dm;
    dm.m = sm.m;
    dm.out = Tensor3<float>(v.detail_map.ptr(), {N, h, w});
    dm.options.training = training;
    dm.options.seed = step_seed;
    cpu::detail_map(dm);
    const std::int64_t O = cfg_.out;  // the sampled images' size: their views give it to the sampler
    AttentionSampleOptions so;
    so.grid.dense = cfg_.dense;
    so.grid.iters = cfg_.iters;
    so.grid.mode = cfg_.mode;
    v.structure_image = Tensor<float>({N, 3, cfg_.out, cfg_.out});
    v.detail_image = Tensor<float>({N, 3, cfg_.out, cfg_.out});
    v.gy_structure.assign(static_cast<std::size_t>(N * cfg_.out), 0.f);
    v.gx_structure.assign(static_cast<std::size_t>(N * cfg_.out), 0.f);
    v.fallback_structure.assign(static_cast<std::size_t>(N), 0);
    v.fallback_detail.assign(static_cast<std::size_t>(N), 0);
    AttentionSampleArgs<float> as;
    as.img = Tensor4<const float>(img.ptr(), {N, 3, Hi, Wi});
    as.attention = Tensor3<const float>(v.structure_map.ptr(), {N, h, w});
    as.out = Tensor4<float>(v.structure_image.ptr(), {N, 3, O, O});
    as.gy = Tensor2<float>(v.gy_structure.data(), {N, O});
    as.gx = Tensor2<float>(v.gx_structure.data(), {N, O});
    as.fallback = Tensor1<unsigned char>(v.fallback_structure.data(), {N});
    as.options = so;
    as.options.squared = cfg_.structure_squared;
    cpu::attention_sample(as);
    as.attention = Tensor3<const float>(v.detail_map.ptr(), {N, h, w});
    as.out = Tensor4<float>(v.detail_image.ptr(), {N, 3, O, O});
    as.gy = {};
    as.gx = {};
    as.fallback = Tensor1<unsigned char>(v.fallback_detail.data(), {N});
    as.options.squared = false;
    cpu::attention_sample(as);
    return logits;
  }

  StepStats train_step(const std::vector<float>& images, const std::vector<std::int64_t>& labels,
                       std::uint64_t step_seed) override {
    using detail_model::cross_entropy;
    const Tensor<float> img = detail_model::images_tensor(images, cfg_.image, "TasnNet::train_step");
    const std::int64_t N = img.dim(0);
    TASN_CHECK_ARG(static_cast<std::int64_t>(labels.size()) == N, "TasnNet::train_step: ", labels.size(),
                   " labels for ", N, " images");
    for (auto* s : {&att_ps_, &master_ps_, &heads_ps_}) s->zero_grad();
    TasnViews& v = views_;
    const Tensor<float> z_att = attend(img, true, step_seed, v);
    if (z_att.data.empty()) return detail_model::non_finite("attention-net output", N);

    nn::BatchNormState bn;
    const Tensor<float> pooled = master_->forward(nn::concat_batch(v.detail_image, v.structure_image), bn);
    const Tensor<float> f_part = nn::slice_batch(pooled, 0, N), f_master = nn::slice_batch(pooled, N, N);
    const Tensor<float> z_part = part_fc_.forward(f_part), z_master = master_fc_.forward(f_master);
    const Tensor<float> z_part_aux = shared_fc_.forward(f_part), z_master_aux = shared_fc_.forward(f_master);
    for (const auto* z : {&z_part, &z_master, &z_part_aux, &z_master_aux})
      if (!detail_model::finite(*z)) return detail_model::non_finite("part/master logits", N);

    StepStats st;
    st.n = N;
    Tensor<float> d_att, d_part, d_master, d_part_aux, d_master_aux;
    const double gs = cfg_.head_grad_scale;
    st.losses.push_back({"att", cross_entropy(z_att, labels, cfg_.att_grad_scale, d_att)});
    st.losses.push_back({"part", cross_entropy(z_part, labels, gs, d_part)});
    st.losses.push_back({"master", cross_entropy(z_master, labels, gs, d_master)});
    st.losses.push_back({"part_aux", cross_entropy(z_part_aux, labels, gs, d_part_aux)});
    st.losses.push_back({"master_aux", cross_entropy(z_master_aux, labels, gs, d_master_aux)});
    {  // distillation: student = master logits, teacher = part logits
      DistillationOptions o;
      o.temperature = cfg_.temperature;
      o.reduction = Reduction::Sum;
      Tensor<float> ds(z_master.shape), dt(z_part.shape);
      float loss = 0;
      const float w = static_cast<float>(cfg_.distill_weight);
      const std::int64_t K = cfg_.classes;
      DistillationArgs<float> da;
      da.student = Tensor2<const float>(z_master.ptr(), {N, K});
      da.teacher = Tensor2<const float>(z_part.ptr(), {N, K});
      da.loss = Tensor1<float>(&loss, {1});
      da.dstudent = Tensor2<float>(ds.ptr(), {N, K});
      if (cfg_.teacher_grad) da.dteacher = Tensor2<float>(dt.ptr(), {N, K});
      da.options = o;
      cpu::distillation_loss(da);
      for (std::int64_t i = 0; i < ds.numel(); ++i) {
        d_master.data[i] += w * ds.data[i];
        if (cfg_.teacher_grad) d_part.data[i] += w * dt.data[i];
      }
      st.losses.push_back({"distill", w * double(loss)});
    }
    for (const auto& [n, l] : st.losses) st.total += l;
    st.correct = detail_model::top1(z_master_aux, labels);

    // backward: heads -> shared backbone (2N) ; attention net from its own loss only
    Tensor<float> df_part(f_part.shape), df_master(f_master.shape);
    part_fc_.backward(f_part, d_part, df_part);
    shared_fc_.backward(f_part, d_part_aux, df_part);
    master_fc_.backward(f_master, d_master, df_master);
    shared_fc_.backward(f_master, d_master_aux, df_master);
    master_->backward(nn::concat_batch(df_part, df_master));
    att_->backward(d_att);
    return st;
  }

  std::vector<Tensor<float>> predict(const std::vector<float>& images, std::int64_t n) override {
    const Tensor<float> img = detail_model::images_tensor(images, cfg_.image, "TasnNet::predict");
    TASN_CHECK_ARG(img.dim(0) == n, "TasnNet::predict: ", img.dim(0), " images, expected ", n);
    TasnViews& v = views_;
    Tensor<float> z_att = attend(img, false, 0, v);
    if (z_att.data.empty()) throw NonFinite("TasnNet::predict: the attention net's output is not finite (a diverged model?)");
    nn::BatchNormState bn;
    bn.training = false;
    const Tensor<float> pooled = master_->forward(nn::concat_batch(v.detail_image, v.structure_image), bn);
    const Tensor<float> f_part = nn::slice_batch(pooled, 0, n), f_master = nn::slice_batch(pooled, n, n);
    std::vector<Tensor<float>> out = {z_att, part_fc_.forward(f_part), master_fc_.forward(f_master),
                                      shared_fc_.forward(f_part), shared_fc_.forward(f_master)};
    for (const auto& z : out)
      if (!detail_model::finite(z)) throw NonFinite("TasnNet::predict: non-finite logits (a diverged model?)");
    out.push_back(combined(out));
    return out;
  }

  // Mean of the heads' softmax probabilities (log of it, so argmax / top-k work as on logits).
  static Tensor<float> combined(const std::vector<Tensor<float>>& heads) {
    Tensor<float> c(heads[0].shape), p(heads[0].shape);
    for (const auto& z : heads) {
      cpu::softmax_rows(z.ptr(), p.ptr(), z.dim(0), z.dim(1), 1.0f, true);
      for (std::int64_t i = 0; i < c.numel(); ++i) c.data[i] += p.data[i];
    }
    for (auto& x : c.data) x = std::log(std::max(x / float(heads.size()), 1e-30f));
    return c;
  }

 private:
  NetConfig cfg_;
  nn::ParamStore<float> att_ps_, master_ps_, heads_ps_;
  std::unique_ptr<nn::AttentionNet<float>> att_;
  std::unique_ptr<nn::ResNet<float>> master_;
  detail_model::Linear part_fc_, master_fc_, shared_fc_;
  TasnViews views_;
};

// The baseline: the master backbone + one FC on the image uniformly resized to the sampler's
// output size (the sampler with a uniform map gives exactly this resize), no attention, no
// sampler, no distillation.
class BaselineNet : public Model {
 public:
  explicit BaselineNet(const NetConfig& c) : cfg_(c) {
    c.validate();
    nn::ResNetConfig mc = c.master_backbone;
    mc.num_classes = 0;
    master_ = std::make_unique<nn::ResNet<float>>(master_ps_, mc);
    fc_ = detail_model::Linear(heads_ps_, "fc", master_->features(), c.classes);
  }
  std::string name() const override { return "baseline"; }
  std::vector<std::pair<std::string, nn::ParamStore<float>*>> stores() override {
    return {{"master", &master_ps_}, {"heads", &heads_ps_}};
  }
  std::vector<std::string> head_names() const override { return {"uniform"}; }
  std::size_t reported_head() const override { return 0; }
  std::string config_string() const override {
    return "classes=" + std::to_string(cfg_.classes) + " image=" + std::to_string(cfg_.image) + " out=" + std::to_string(cfg_.out);
  }

  StepStats train_step(const std::vector<float>& images, const std::vector<std::int64_t>& labels,
                       std::uint64_t) override {
    const Tensor<float> img = detail_model::images_tensor(images, cfg_.image, "BaselineNet::train_step");
    TASN_CHECK_ARG(static_cast<std::int64_t>(labels.size()) == img.dim(0), "BaselineNet::train_step: ",
                   labels.size(), " labels for ", img.dim(0), " images");
    master_ps_.zero_grad();
    heads_ps_.zero_grad();
    nn::BatchNormState bn;
    const Tensor<float> f = master_->forward(nn::resize_bilinear_forward(img, cfg_.out, cfg_.out, true), bn);
    const Tensor<float> z = fc_.forward(f);
    if (!detail_model::finite(z)) return detail_model::non_finite("logits", img.dim(0));
    Tensor<float> dz, df(f.shape);
    StepStats st;
    st.n = img.dim(0);
    st.total = detail_model::cross_entropy(z, labels, 1.0, dz);
    st.losses.push_back({"ce", st.total});
    st.correct = detail_model::top1(z, labels);
    fc_.backward(f, dz, df);
    master_->backward(df);
    return st;
  }

  std::vector<Tensor<float>> predict(const std::vector<float>& images, std::int64_t n) override {
    const Tensor<float> img = detail_model::images_tensor(images, cfg_.image, "BaselineNet::predict");
    TASN_CHECK_ARG(img.dim(0) == n, "BaselineNet::predict: ", img.dim(0), " images, expected ", n);
    nn::BatchNormState bn;
    bn.training = false;
    Tensor<float> z = fc_.forward(master_->forward(nn::resize_bilinear_forward(img, cfg_.out, cfg_.out, true), bn));
    if (!detail_model::finite(z)) throw NonFinite("BaselineNet::predict: non-finite logits (a diverged model?)");
    return {z};
  }

 private:
  NetConfig cfg_;
  nn::ParamStore<float> master_ps_, heads_ps_;
  std::unique_ptr<nn::ResNet<float>> master_;
  detail_model::Linear fc_;
};

}  // namespace tasn::train
