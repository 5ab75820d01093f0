// examples/train/trainer.h - the training loop of the example trainer: data sets (the generated
// fine-grained set, image folders), SGD steps over a background batch loader, evaluation of every
// head each epoch, a progress bar, a JSON-lines metrics log, safetensors checkpoints with the
// optimiser state and a bit-exact resume, a non-finite-loss stop, and attention dumps (PNG).
//
// What a run writes is never lost (docs/trainer.md, "Run folders"): the output folder is locked
// and claimed before training (train/run_folder.h), every file is written atomically and checked
// through close (io/file_io.h), the checkpoint of a finished epoch is written before its
// evaluation, and a failure names the file, the OS reason and the checkpoint to resume from.
//
// Determinism: the epoch order comes from (seed, epoch), the detail-map channel of a step from
// (seed, global step), the generated images from (seed, split, index) and augmentation from
// (seed, epoch, index); the CPU layers have no order-dependent reductions across threads. So a run
// resumed from the checkpoint of epoch e repeats, bit for bit, the losses of an uninterrupted run
// with the same thread count (Eigen's GEMM blocking depends on it).
#pragma once

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "data/batch_loader.h"
#include "data/parse.h"
#include "data/synthetic.h"
#include "io/file_io.h"
#include "io/text.h"
#include "nn/safetensors.h"
#include "png.h"
#include "tasn/core/parallel.h"
#include "train/model.h"
#include "train/optim.h"
#include "train/run_folder.h"

namespace tasn::train {

// ---- data sets ------------------------------------------------------------------------------------

// A split of images (3, side, side), already normalised for the network.
class Dataset {
 public:
  virtual ~Dataset() = default;
  virtual std::int64_t size() const = 0;
  virtual std::int64_t side() const = 0;
  // Example i; `epoch` varies the augmentation of training splits (ignored elsewhere).
  virtual data::Example get(std::int64_t i, std::int64_t epoch) const = 0;
  // Where the fine-grained detail is, when the data set knows (the generated set does).
  virtual bool detail_box(std::int64_t, data::Box&) const { return false; }
  // What the data are (part of a resumed run's training signature).
  virtual std::string describe() const { return ""; }
};

// The generated set, made once (in parallel) and kept as 8-bit pixels; values (x - 0.5) / 0.25.
class SyntheticDataset : public Dataset {
 public:
  SyntheticDataset(const data::SyntheticConfig& c, data::Split split, std::int64_t n) : side_(c.size) {
    desc_ = "synthetic seed=" + std::to_string(c.seed) + " split=" + std::to_string(static_cast<std::uint64_t>(split)) +
            " size=" + std::to_string(c.size) + " patch=" + std::to_string(c.patch) + " clutter=" +
            std::to_string(c.clutter) + " classes=" + std::to_string(c.classes);
    TASN_CHECK_ARG(n >= 1, "synthetic data: the split must hold >= 1 images, got ", n);
    c.validate();  // before the parallel loop: an exception must not leave an OpenMP region
    const std::int64_t per = 3 * c.size * c.size;
    pixels_.resize(static_cast<std::size_t>(n * per));
    labels_.resize(static_cast<std::size_t>(n));
    boxes_.resize(static_cast<std::size_t>(n));
    cpu::parallel_for(0, n, [&](std::int64_t i) {
      const data::SyntheticSample s = data::make_sample(c, split, i);
      for (std::int64_t k = 0; k < per; ++k)
        pixels_[i * per + k] = static_cast<unsigned char>(std::lround(s.image[k] * 255.0f));
      labels_[i] = s.label;
      boxes_[i] = s.patch;
    });
  }
  std::int64_t size() const override { return static_cast<std::int64_t>(labels_.size()); }
  std::int64_t side() const override { return side_; }
  data::Example get(std::int64_t i, std::int64_t) const override {
    const std::int64_t per = 3 * side_ * side_;
    data::Example e;
    e.label = labels_.at(static_cast<std::size_t>(i));
    e.image.resize(static_cast<std::size_t>(per));
    for (std::int64_t k = 0; k < per; ++k) e.image[k] = (pixels_[i * per + k] / 255.0f - 0.5f) * 4.0f;
    return e;
  }
  bool detail_box(std::int64_t i, data::Box& b) const override {
    b = boxes_.at(static_cast<std::size_t>(i));
    return true;
  }
  std::string describe() const override { return desc_; }

 private:
  std::int64_t side_;
  std::string desc_;
  std::vector<unsigned char> pixels_;
  std::vector<std::int64_t> labels_;
  std::vector<data::Box> boxes_;
};

// Any data set given as a loader function (real images: see tasn_train.cpp).
class FunctionDataset : public Dataset {
 public:
  FunctionDataset(std::int64_t n, std::int64_t side, std::function<data::Example(std::int64_t, std::int64_t)> f,
                  std::string description = "")
      : n_(n), side_(side), f_(std::move(f)), desc_(std::move(description)) {}
  std::string describe() const override { return desc_; }
  std::int64_t size() const override { return n_; }
  std::int64_t side() const override { return side_; }
  data::Example get(std::int64_t i, std::int64_t epoch) const override { return f_(i, epoch); }

 private:
  std::int64_t n_, side_;
  std::function<data::Example(std::int64_t, std::int64_t)> f_;
  std::string desc_;
};

// ---- configuration and results --------------------------------------------------------------------

struct TrainConfig {
  std::int64_t epochs = 5;
  std::int64_t batch = 32;
  std::int64_t eval_batch = 100;
  LrSchedule lr;
  SgdOptions sgd;
  std::uint64_t seed = 1;
  std::string out_dir;          // metrics log + checkpoints ("" : none written); see RunFolder
  std::string resume;           // checkpoint to continue from
  bool overwrite = false;       // a fresh run may replace an earlier run's results in out_dir
  std::string command;          // what the run folder's lock names as its holder
  bool progress = true;         // progress bar on stderr
  std::int64_t eval_every = 1;  // epochs between evaluations (the last epoch is always evaluated)
  std::int64_t stop_after_epoch = 0;  // > 0: stop after this epoch (an interruption, for tests)
  std::int64_t max_steps = 0;         // > 0: stop after this many steps of this run (smoke tests)

  // Every value in range (tasn::InvalidArgument naming the option otherwise).
  void validate() const {
    TASN_CHECK_ARG(epochs >= 1, "epochs must be >= 1, got ", epochs);
    TASN_CHECK_ARG(batch >= 2, "batch must be >= 2 (batch norm needs two samples), got ", batch);
    TASN_CHECK_ARG(eval_batch >= 1, "eval batch must be >= 1, got ", eval_batch);
    TASN_CHECK_ARG(std::isfinite(lr.base) && lr.base > 0, "lr must be finite and > 0, got ", lr.base);
    TASN_CHECK_ARG(std::isfinite(lr.gamma) && lr.gamma > 0, "gamma must be finite and > 0, got ", lr.gamma);
    for (std::size_t i = 0; i < lr.milestones.size(); ++i)
      TASN_CHECK_ARG(lr.milestones[i] >= 1 && lr.milestones[i] <= double(epochs) &&
                         (i == 0 || lr.milestones[i] > lr.milestones[i - 1]),
                     "milestones must increase within 1..epochs (", epochs, "), got ", lr.milestones[i], " at position ",
                     i + 1);
    TASN_CHECK_ARG(sgd.momentum >= 0 && sgd.momentum < 1, "momentum must be in [0, 1), got ", sgd.momentum);
    TASN_CHECK_ARG(std::isfinite(sgd.weight_decay) && sgd.weight_decay >= 0, "weight decay must be finite and >= 0, got ",
                   sgd.weight_decay);
    TASN_CHECK_ARG(eval_every >= 0, "eval_every must be >= 0, got ", eval_every);
    TASN_CHECK_ARG(stop_after_epoch >= 0 && stop_after_epoch <= epochs, "stop-after-epoch must be in 0..epochs (",
                   epochs, "), got ", stop_after_epoch);
    TASN_CHECK_ARG(max_steps >= 0, "max-steps must be >= 0, got ", max_steps);
  }
};

struct EvalResult {
  std::vector<std::string> heads;
  std::vector<double> accuracy;  // per head, in [0, 1]
  std::int64_t n = 0;
  double detail_rows = -1;   // TASN on data with known detail boxes: structure-grid rows + columns on the detail
  double uniform_rows = -1;  // the same count for a uniform grid (the baseline's resize)
};

struct TrainResult {
  std::vector<double> step_losses;  // total loss per image of every step of this run
  EvalResult final_eval;            // the last evaluation, every head
  double report_accuracy = 0;       // accuracy of the model's reported head
  double seconds = 0;               // training + evaluation wall time of this run
  std::int64_t epochs_done = 0, global_step = 0;
  bool stopped_nonfinite = false;
  std::string message;
};

// ---- helpers ------------------------------------------------------------------------------------

inline std::string format_seconds(double s) {
  const auto t = static_cast<long>(s + 0.5);
  char buf[32];
  std::snprintf(buf, sizeof buf, "%ld:%02ld", t / 60, t % 60);
  return buf;
}

inline std::uint64_t step_seed(std::uint64_t seed, std::int64_t global_step) {
  return mix64(mix64(seed ^ 0x7A5Bu) + static_cast<std::uint64_t>(global_step));
}

// FNV-1a: a hash that is the same on every platform (checkpoints are portable).
inline std::uint64_t fnv1a(const std::string& s) {
  std::uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : s) h = (h ^ c) * 0x100000001b3ull;
  return h;
}

// fnv1a(s) as 16 hex digits.
inline std::string fnv1a_hex(const std::string& s) {
  char h[24];
  std::snprintf(h, sizeof h, "%016llx", static_cast<unsigned long long>(fnv1a(s)));
  return h;
}

// Initialises every store with torchvision's scheme from (seed, store name): the "master" store
// of TASN and of the baseline start from the same weights for the same seed.
inline void init_model(Model& m, std::uint64_t seed) {
  for (auto& [prefix, ps] : m.stores()) nn::init_torchvision(*ps, mix64(mix64(seed) ^ fnv1a(prefix)));
}

// A string that must agree between a checkpoint and the model that loads it: the model's
// configuration and a hash of every parameter name and shape.
inline std::string model_signature(Model& m) {
  std::ostringstream s;
  for (auto& [prefix, ps] : m.stores())
    for (auto& [name, p] : ps->all()) s << ";" << prefix << "." << name << nn::shape_string(p.value.shape);
  return m.config_string() + " params=" + fnv1a_hex(s.str());
}

// What a resumed run must share with the run that wrote the checkpoint (the step sequence): the
// optimiser and schedule, the training data, and the model's training-only options (losses).
inline std::string train_signature(const TrainConfig& c, const Dataset& train_set, const Model& m) {
  std::ostringstream s;
  s.precision(17);
  s << "seed=" << c.seed << " epochs=" << c.epochs << " batch=" << c.batch << " schedule=" << to_string(c.lr.kind)
    << " lr=" << c.lr.base << " gamma=" << c.lr.gamma << " warmup=" << c.lr.warmup << " final_div=" << c.lr.final_div
    << " milestones=";
  for (double ms : c.lr.milestones) s << ms << ",";
  // The data description may hold paths: any bytes, escaped to valid UTF-8 one to one (JSON).
  s << " momentum=" << c.sgd.momentum << " wd=" << c.sgd.weight_decay << " | data: " << io::escape_bytes(train_set.describe())
    << " n=" << train_set.size() << " | " << m.training_string();
  return s.str();
}

// Backbone from converted torchvision weights: every backbone tensor must be in the file (the
// attention head "head.*" is not a torchvision tensor); tensors the backbone lacks (fc.*) are ignored.
inline void load_backbone(nn::ParamStore<float>& ps, const std::string& file) {
  const auto f = nn::safetensors::read(file);
  for (auto& [name, p] : ps.all())
    TASN_CHECK_ARG(name.rfind("head.", 0) == 0 || f.tensors.count(name), "--weights ", file, ": tensor ", name,
                   " of the backbone is not in the file (a converted torchvision ResNet of the same depth?)");
  nn::safetensors::LoadOptions o;
  o.strict = false;
  nn::safetensors::load(ps, file, o);
}

// The tensors of a checkpoint: "<store>.<name>" values (parameters and BN statistics) and
// "optim.<store>.<name>" momentum buffers.
inline std::map<std::string, const Tensor<float>*> checkpoint_tensors(Model& m, Sgd* opt) {
  std::map<std::string, const Tensor<float>*> t;
  for (auto& [prefix, ps] : m.stores())
    for (auto& [name, p] : ps->all()) t[prefix + "." + name] = &p.value;
  if (opt)
    for (auto& [name, b] : opt->buffers()) t["optim." + name] = &b;
  return t;
}

inline std::map<std::string, std::string> checkpoint_metadata(Model& m, std::int64_t epoch, std::int64_t step,
                                                              const std::string& train_sig) {
  return {{"epoch", std::to_string(epoch)}, {"global_step", std::to_string(step)}, {"model", m.name()},
          {"signature", model_signature(m)}, {"train", train_sig}};
}

// Checkpoint: tensors (checkpoint_tensors) and metadata epoch / global_step / model / signature /
// train, written atomically (a failure leaves the previous checkpoint as it was).
inline void save_checkpoint(const std::string& path, Model& m, Sgd* opt, std::int64_t epoch, std::int64_t step,
                            const std::string& train_sig = "") {
  nn::safetensors::write(path, checkpoint_tensors(m, opt), checkpoint_metadata(m, epoch, step, train_sig));
}

struct CheckpointInfo {
  std::int64_t epoch = 0, global_step = 0;
  std::string train;  // the training configuration that wrote it (train_signature)
};

// Loads values (and momentum buffers when opt is given); checks everything — the model, every
// tensor, the metadata (epoch, global step: whole non-negative numbers) and `check` (called with
// the metadata) — before changing anything.
inline CheckpointInfo load_checkpoint(const std::string& path, Model& m, Sgd* opt,
                                      const std::function<void(const CheckpointInfo&)>& check = {}) {
  const nn::safetensors::File f = nn::safetensors::read(path);
  const auto meta = [&](const std::string& k) {
    auto it = f.metadata.find(k);
    TASN_CHECK_ARG(it != f.metadata.end(), "checkpoint ", path, ": metadata \"", k, "\" missing (not a tasn checkpoint?)");
    return it->second;
  };
  TASN_CHECK_ARG(meta("model") == m.name(), "checkpoint ", path, " holds a ", meta("model"), " model, not ", m.name());
  TASN_CHECK_ARG(meta("signature") == model_signature(m), "checkpoint ", path,
                 ": its network configuration or parameter shapes differ from this one (other preset or sizes?): "
                 "checkpoint \"", meta("signature"), "\", here \"", model_signature(m), "\"");
  std::vector<std::pair<Tensor<float>*, const nn::safetensors::Entry*>> pending;
  auto need = [&](const std::string& name, Tensor<float>& dst) {
    auto it = f.tensors.find(name);
    TASN_CHECK_ARG(it != f.tensors.end(), "checkpoint ", path, ": tensor ", name, " missing");
    TASN_CHECK_ARG(it->second.shape == dst.shape, "checkpoint ", path, ": ", name, " has shape ",
                   nn::shape_string(it->second.shape), ", the model ", dst.shape_str());
    pending.push_back({&dst, &it->second});
  };
  for (auto& [prefix, ps] : m.stores())
    for (auto& [name, p] : ps->all()) need(prefix + "." + name, p.value);
  if (opt)
    for (auto& [name, b] : opt->buffers()) need("optim." + name, b);
  CheckpointInfo info;
  for (auto [key, dst] : {std::pair<const char*, std::int64_t*>{"epoch", &info.epoch}, {"global_step", &info.global_step}}) {
    *dst = data::parse_int(meta(key), "checkpoint " + path + ": metadata " + key);
    TASN_CHECK_ARG(*dst >= 0, "checkpoint ", path, ": metadata ", key, " is ", *dst, " (must be >= 0)");
  }
  info.train = f.metadata.count("train") ? f.metadata.at("train") : "";
  if (check) check(info);
  for (auto& [dst, e] : pending)
    for (std::size_t i = 0; i < e->values.size(); ++i) dst->data[i] = static_cast<float>(e->values[i]);
  return info;
}

// The first parameter or buffer holding a NaN or an infinity ("" when all are finite).
inline std::string first_non_finite(Model& m) {
  for (auto& [prefix, ps] : m.stores())
    for (auto& [name, p] : ps->all())
      for (float v : p.value.data)
        if (!std::isfinite(v)) return prefix + "." + name;
  return "";
}

// The metrics log of a run (one JSON object per line). Fresh runs replace an earlier log (only
// with --overwrite: RunFolder::claim); resumed runs keep the lines of the epochs up to the
// checkpoint's and drop later ones (the resumed run repeats those epochs bit for bit), so the
// log never holds two lines for one epoch. Nothing is changed before the first line is written.
class MetricsLog {
 public:
  MetricsLog() = default;
  MetricsLog(std::string path, bool fresh, std::int64_t keep_through_epoch)
      : path_(std::move(path)), fresh_(fresh), keep_(keep_through_epoch) {}

  void append(const nlohmann::json& j) {
    if (path_.empty()) return;
    if (!file_.enabled()) {
      if (!fresh_) drop_later_epochs();
      file_ = io::AppendFile(path_, fresh_, "metrics log");
    }
    file_.append(j.dump() + "\n");
  }
  void close() { file_.close(); }

 private:
  void drop_later_epochs() const {
    if (!std::filesystem::exists(path_)) return;
    const auto bytes = io::read_file(path_, "metrics log");
    std::string kept, line;
    bool dropped = false;
    for (std::size_t i = 0; i < bytes.size(); ++i) {
      line.push_back(static_cast<char>(bytes[i]));
      if (bytes[i] != '\n' && i + 1 < bytes.size()) continue;
      const auto j = nlohmann::json::parse(line, nullptr, false);
      const bool later = !j.is_discarded() && j.is_object() && j.contains("epoch") && j["epoch"].is_number_integer() &&
                         j["epoch"].get<std::int64_t>() > keep_;
      if (later) dropped = true;
      else kept += line;
      line.clear();
    }
    if (dropped) io::write_file_atomic(path_, kept.data(), kept.size(), "metrics log");
  }

  std::string path_;
  bool fresh_ = true;
  std::int64_t keep_ = 0;
  io::AppendFile file_;
};

// Progress line: "tasn  epoch 2/5 [#####.....] 60/125  loss 1.234  acc 45.3%  210 img/s  ETA 0:32"
class Progress {
 public:
  Progress(bool on, std::string label) : on_(on), tty_(isatty(2) != 0), label_(std::move(label)) {}
  void update(std::int64_t epoch, std::int64_t epochs, std::int64_t step, std::int64_t steps, double loss, double acc,
              double ips, double eta) {
    if (!on_) return;
    if (!tty_ && step != steps && step % std::max<std::int64_t>(1, steps / 4) != 0) return;
    const int width = 20, filled = static_cast<int>(width * step / std::max<std::int64_t>(1, steps));
    std::fprintf(stderr, "%s%-9s epoch %lld/%lld [%s%s] %lld/%lld  loss %.3f  acc %5.1f%%  %.0f img/s  ETA %s%s",
                 tty_ ? "\r" : "", label_.c_str(), (long long)epoch, (long long)epochs, std::string(filled, '#').c_str(),
                 std::string(width - filled, '.').c_str(), (long long)step, (long long)steps, loss, 100 * acc, ips,
                 format_seconds(eta).c_str(), tty_ ? "\x1b[K" : "\n");
    if (tty_ && step == steps) std::fprintf(stderr, "\n");
    std::fflush(stderr);
  }
  void line(const std::string& s) {  // always shown (stdout), with or without the bar
    std::printf("%s\n", s.c_str());
    std::fflush(stdout);
  }

 private:
  bool on_, tty_;
  std::string label_;
};

// ---- evaluation ---------------------------------------------------------------------------------

// Accuracy of every head over a split (eval-mode BN, plain-sum detail map).
inline EvalResult evaluate(Model& m, const Dataset& d, std::int64_t batch) {
  EvalResult r;
  r.heads = m.head_names();
  std::vector<std::int64_t> correct(r.heads.size(), 0);
  data::BatchLoader::Options lo;
  lo.batch = batch;
  lo.shuffle = false;
  data::BatchLoader loader(d.size(), [&](std::int64_t i) { return d.get(i, 0); }, lo);
  loader.start_epoch(0);
  data::Batch b;
  double rows = 0, uniform = 0;
  std::int64_t boxed = 0;
  auto* tasn_net = dynamic_cast<TasnNet*>(&m);
  while (loader.next(b)) {
    const auto logits = m.predict(b.images, b.size());
    for (std::size_t h = 0; h < logits.size(); ++h) correct[h] += detail_model::top1(logits[h], b.labels);
    if (!tasn_net) continue;
    // DEMO-NOTES diagnostic: output rows + columns of the structure image on the detail patch
    const TasnViews& v = tasn_net->last_views();
    const std::int64_t O = tasn_net->config().out, S = d.side();
    for (std::int64_t i = 0; i < b.size(); ++i) {
      data::Box box;
      if (!d.detail_box(b.indices[i], box)) continue;
      ++boxed;
      for (std::int64_t o = 0; o < O; ++o) {
        const double y = (v.gy_structure[i * O + o] + 1.0) * double(S - 1) / 2, x = (v.gx_structure[i * O + o] + 1.0) * double(S - 1) / 2;
        const double uy = (double(o) / double(O - 1)) * double(S - 1);
        // pixel k covers [k - 0.5, k + 0.5): count samples inside the patch's pixel area
        rows += (y >= box.y0 - 0.5 && y < box.y1 - 0.5) + (x >= box.x0 - 0.5 && x < box.x1 - 0.5);
        uniform += (uy >= box.y0 - 0.5 && uy < box.y1 - 0.5) + (uy >= box.x0 - 0.5 && uy < box.x1 - 0.5);
      }
    }
  }
  r.n = d.size();
  for (auto c : correct) r.accuracy.push_back(double(c) / double(d.size()));
  if (boxed) {
    r.detail_rows = rows / double(boxed);
    r.uniform_rows = uniform / double(boxed);
  }
  return r;
}

// ---- training -----------------------------------------------------------------------------------

// Trains `m`. With c.out_dir set the run writes its metrics log and checkpoints into that folder,
// which it locks and claims first (RunFolder; pass `folder` when the caller has locked it already).
// Everything checkable is checked before the first step: the configuration, the folder, the
// checkpoint metadata (valid UTF-8), and on resume the checkpoint's model, training signature
// and epoch / step counts.
inline TrainResult train_model(Model& m, const Dataset& train_set, const Dataset* eval_set, const TrainConfig& c,
                               const std::string& label, const RunFolder* folder = nullptr) {
  c.validate();
  TASN_CHECK_ARG(train_set.size() >= c.batch, "train: the training split holds ", train_set.size(),
                 " images, fewer than one batch of ", c.batch);
  const auto t0 = std::chrono::steady_clock::now();
  const auto since = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); };
  TrainResult res;
  Sgd opt(m.stores(), c.sgd);
  data::BatchLoader::Options lo;
  lo.batch = c.batch;
  lo.drop_last = true;  // every step sees a full batch (batch statistics)
  lo.seed = c.seed;
  std::atomic<std::int64_t> cur_epoch{0};  // read by the loader thread
  data::BatchLoader loader(train_set.size(), [&](std::int64_t i) { return train_set.get(i, cur_epoch.load()); }, lo);
  const std::int64_t steps = loader.batches_per_epoch();
  const std::string train_sig = train_signature(c, train_set, m);

  std::unique_ptr<RunFolder> own_folder;
  if (!c.out_dir.empty() && !folder) {
    own_folder = std::make_unique<RunFolder>(c.out_dir, c.command.empty() ? label : c.command);
    folder = own_folder.get();
  }
  const std::string ckpt = folder ? folder->checkpoint(m.name()) : "";
  if (folder) {
    folder->claim(m.name(), c.resume, c.overwrite);
    std::vector<std::string> names;
    for (const auto& [name, t] : checkpoint_tensors(m, &opt)) names.push_back(name);
    nn::safetensors::check_header_strings(names, checkpoint_metadata(m, c.epochs, c.epochs * steps, train_sig), ckpt);
  }

  std::int64_t first_epoch = 1;
  if (!c.resume.empty()) {
    const CheckpointInfo info = load_checkpoint(c.resume, m, &opt, [&](const CheckpointInfo& ci) {
      TASN_CHECK_ARG(ci.train == train_sig, "checkpoint ", c.resume,
                     " was written by another training configuration; a resumed run must repeat it: checkpoint \"",
                     ci.train, "\", here \"", train_sig, "\"");
      TASN_CHECK_ARG(ci.epoch < c.epochs, "checkpoint ", c.resume, " has finished epoch ", ci.epoch, " of ", c.epochs,
                     ": nothing left to train (use --eval-only to evaluate it)");
      TASN_CHECK_ARG(ci.global_step == ci.epoch * steps, "checkpoint ", c.resume, ": global step ", ci.global_step,
                     " is not epoch ", ci.epoch, " x ", steps, " steps per epoch (the metadata was edited?)");
    });
    first_epoch = info.epoch + 1;
    res.global_step = info.global_step;
  }
  res.epochs_done = first_epoch - 1;
  MetricsLog log;
  if (folder) {
    // continuing this folder's own run: keep its log; else (fresh, --overwrite, or resuming a
    // checkpoint from elsewhere into a folder without a run) start the log anew
    log = MetricsLog(folder->metrics(m.name()), !folder->resumes_own(m.name(), c.resume), first_epoch - 1);
  }
  // the checkpoint to name when training stops: updated after every checkpoint written
  std::string last_good = !c.resume.empty() ? c.resume : std::string("none (no checkpoint written)");

  Progress bar(c.progress, label);
  // Ends the run after a non-finite loss, gradient, parameter or evaluation output in `epoch`.
  const auto stop_nonfinite = [&](const std::string& what, const std::string& good) {
    res.stopped_nonfinite = true;
    res.message = label + ": non-finite " + what + "; training stopped, the last good checkpoint is " + good;
    res.seconds = since();
    return res;
  };
  std::int64_t run_steps = 0;
  for (std::int64_t epoch = first_epoch; epoch <= c.epochs; ++epoch) {
    cur_epoch = epoch;
    loader.start_epoch(epoch);
    const auto te = std::chrono::steady_clock::now();
    double loss_sum = 0, lr = 0;
    std::map<std::string, double> parts;
    std::int64_t seen = 0, correct = 0, step = 0;
    data::Batch b;
    while (loader.next(b)) {
      ++step;
      lr = c.lr.at(double(epoch - 1) + double(step - 1) / double(steps), double(c.epochs));
      const StepStats st = m.train_step(b.images, b.labels, step_seed(c.seed, res.global_step));
      const bool finite_loss = std::isfinite(st.total);
      if (!finite_loss || !opt.step(lr, 1.0 / double(st.n))) {
        std::ostringstream what;
        what << (finite_loss ? "gradient of " + opt.non_finite_gradient() : std::string("loss")) << " at epoch " << epoch
             << ", step " << step << " (";
        for (const auto& [n, l] : st.losses) what << n << " " << l << " ";
        what << ")";
        return stop_nonfinite(what.str(), last_good);
      }
      ++res.global_step;
      ++run_steps;
      res.step_losses.push_back(st.total / double(st.n));
      loss_sum += st.total;
      for (const auto& [n, l] : st.losses) parts[n] += l;
      seen += st.n;
      correct += st.correct;
      const double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - te).count();
      const double ips = double(seen) / std::max(el, 1e-9);
      const double left = double((c.epochs - epoch) * steps + (steps - step)) * double(c.batch) / std::max(ips, 1e-9);
      bar.update(epoch, c.epochs, step, steps, loss_sum / double(seen), double(correct) / double(seen), ips, left);
      if (c.max_steps > 0 && run_steps >= c.max_steps) break;
    }
    const double epoch_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - te).count();
    const bool complete = step == steps;  // a --max-steps stop leaves the epoch unfinished
    const bool last = epoch == c.epochs || (c.stop_after_epoch > 0 && epoch >= c.stop_after_epoch) ||
                      (c.max_steps > 0 && run_steps >= c.max_steps);
    // A finished epoch is saved first, before anything after it (evaluation, the log) can fail.
    // Only finished epochs are checkpointed: resuming continues with the next one.
    if (complete) {
      if (const std::string bad = first_non_finite(m); !bad.empty())
        return stop_nonfinite("parameter or statistic " + bad + " after epoch " + std::to_string(epoch), last_good);
      res.epochs_done = epoch;
      if (!ckpt.empty()) {
        try {
          save_checkpoint(ckpt, m, &opt, epoch, res.global_step, train_sig);
        } catch (const io::IoError& e) {
          throw io::IoError(label + ": cannot save the checkpoint of epoch " + std::to_string(epoch) + ": " + e.what() +
                            "; the last good checkpoint is " + last_good + " (unchanged)");
        }
        last_good = ckpt;
      }
    }
    nlohmann::json j = {{"model", m.name()}, {"epoch", epoch}, {"global_step", res.global_step},
                        {"lr_last_step", lr}, {"complete", complete}, {"train_loss", loss_sum / double(std::max<std::int64_t>(seen, 1))},
                        {"train_acc", double(correct) / double(std::max<std::int64_t>(seen, 1))},
                        {"epoch_seconds", epoch_s}, {"images_per_second", double(seen) / std::max(epoch_s, 1e-9)}};
    for (const auto& [n, l] : parts) j["train_loss_" + n] = l / double(std::max<std::int64_t>(seen, 1));
    if (eval_set && (last || (c.eval_every > 0 && epoch % c.eval_every == 0))) {
      const std::string saved = complete && !ckpt.empty()
                                    ? "epoch " + std::to_string(epoch) + " is saved in " + ckpt + " (continue with --resume " + ckpt + ")"
                                    : "the last checkpoint is " + last_good;
      try {
        res.final_eval = evaluate(m, *eval_set, c.eval_batch);
      } catch (const NonFinite& e) {
        j["eval_error"] = io::escape_bytes(e.what());
        log.append(j);
        return stop_nonfinite("evaluation output after epoch " + std::to_string(epoch) + " (" + e.what() + ")",
                              complete && !ckpt.empty() ? ckpt + " (epoch " + std::to_string(epoch) +
                                                              ", written before this evaluation)"
                                                        : last_good);
      } catch (const std::exception& e) {
        j["eval_error"] = io::escape_bytes(e.what());
        log.append(j);
        throw Error(label + ": the evaluation after epoch " + std::to_string(epoch) + " failed: " + e.what() + "; " + saved);
      }
      std::ostringstream s;
      s << label << " epoch " << epoch << " eval:";
      for (std::size_t h = 0; h < res.final_eval.heads.size(); ++h) {
        j["eval_acc_" + res.final_eval.heads[h]] = res.final_eval.accuracy[h];
        char buf[64];
        std::snprintf(buf, sizeof buf, " %s %.1f%%", res.final_eval.heads[h].c_str(), 100 * res.final_eval.accuracy[h]);
        s << buf;
      }
      if (res.final_eval.detail_rows >= 0) {
        j["detail_rows_cols_structure"] = res.final_eval.detail_rows;
        j["detail_rows_cols_uniform"] = res.final_eval.uniform_rows;
      }
      res.report_accuracy = res.final_eval.accuracy[m.reported_head()];
      bar.line(s.str());
    }
    log.append(j);
    if (last) break;
  }
  log.close();
  res.seconds = since();
  return res;
}

// ---- attention dumps ----------------------------------------------------------------------------

namespace detail_dump {

// (3, h, w) network-normalised floats -> RGB bytes, stretched to the image's own range.
inline std::vector<unsigned char> to_rgb(const float* x, std::int64_t h, std::int64_t w) {
  const auto [lo, hi] = std::minmax_element(x, x + 3 * h * w);
  const float a = *lo, s = *hi > *lo ? 255.0f / (*hi - *lo) : 0.0f;
  std::vector<unsigned char> rgb(static_cast<std::size_t>(3 * h * w));
  for (std::int64_t p = 0; p < h * w; ++p)
    for (int c = 0; c < 3; ++c) rgb[p * 3 + c] = static_cast<unsigned char>(std::lround((x[c * h * w + p] - a) * s));
  return rgb;
}

// (h, w) map -> grey RGB, nearest-neighbour enlarged to (H, W).
inline std::vector<unsigned char> map_rgb(const float* m, std::int64_t h, std::int64_t w, std::int64_t H, std::int64_t W) {
  const auto [lo, hi] = std::minmax_element(m, m + h * w);
  const float s = *hi > *lo ? 255.0f / (*hi - *lo) : 0.0f;
  std::vector<unsigned char> rgb(static_cast<std::size_t>(3 * H * W));
  for (std::int64_t y = 0; y < H; ++y)
    for (std::int64_t x = 0; x < W; ++x) {
      const auto v = static_cast<unsigned char>(std::lround((m[(y * h / H) * w + x * w / W] - *lo) * s));
      for (int c = 0; c < 3; ++c) rgb[(y * W + x) * 3 + c] = v;
    }
  return rgb;
}

}  // namespace detail_dump

// For the first `count` images of the split: NNN-input.png, NNN-structure-map.png,
// NNN-detail-map.png, NNN-structure.png, NNN-detail.png (evaluation mode).
inline std::vector<std::string> dump_attention(TasnNet& m, const Dataset& d, std::int64_t count, const std::string& dir) {
  std::filesystem::create_directories(dir);
  const std::int64_t n = std::min(count, d.size());
  std::vector<float> images;
  for (std::int64_t i = 0; i < n; ++i) {
    const auto e = d.get(i, 0);
    images.insert(images.end(), e.image.begin(), e.image.end());
  }
  m.predict(images, n);
  const TasnViews& v = m.last_views();
  const std::int64_t S = d.side(), O = m.config().out, h = v.structure_map.dim(1), w = v.structure_map.dim(2);
  std::vector<std::string> files;
  for (std::int64_t i = 0; i < n; ++i) {
    char pre[32];
    std::snprintf(pre, sizeof pre, "%03lld-", (long long)i);
    auto put = [&](const std::string& name, const std::vector<unsigned char>& rgb, std::int64_t W, std::int64_t H) {
      files.push_back(dir + "/" + pre + name + ".png");
      tasn::examples::write_png(files.back(), rgb, static_cast<int>(W), static_cast<int>(H));
    };
    put("input", detail_dump::to_rgb(images.data() + i * 3 * S * S, S, S), S, S);
    put("structure-map", detail_dump::map_rgb(v.structure_map.ptr() + i * h * w, h, w, S, S), S, S);
    put("detail-map", detail_dump::map_rgb(v.detail_map.ptr() + i * h * w, h, w, S, S), S, S);
    put("structure", detail_dump::to_rgb(v.structure_image.ptr() + i * 3 * O * O, O, O), O, O);
    put("detail", detail_dump::to_rgb(v.detail_image.ptr() + i * 3 * O * O, O, O), O, O);
  }
  return files;
}

}  // namespace tasn::train
