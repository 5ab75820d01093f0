// examples/train/checkpoint.h - a model's weights in and out: initialisation from the seed,
// torchvision backbones, and the trainer's safetensors checkpoints (values, BN statistics and SGD
// momentum, with metadata epoch / global step / model / signatures). The signatures make a
// checkpoint refuse a model or a training configuration it does not belong to; loading checks
// everything before it changes anything, and saving is atomic.
#pragma once

#include <cstdint>
#include <cstdio>
#include <functional>
#include <map>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "data/parse.h"
#include "io/text.h"
#include "nn/safetensors.h"
#include "tasn/core/random.h"
#include "train/config.h"
#include "train/datasets.h"
#include "train/model.h"
#include "train/optim.h"

namespace tasn::train {

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
  m.params_to_device(nullptr);
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
  if (c.sync_bn) s << " | sync_bn";  // synchronised batch norm changes the step's math (several ranks)
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
// "optim.<store>.<name>" momentum buffers: views of the flat buffers through their name table, so
// a checkpoint is one pass over two buffers (and the file format of the per-tensor layout before).
inline std::map<std::string, const nn::TensorSpan<float>*> checkpoint_tensors(Model& m, Sgd* opt) {
  std::map<std::string, const nn::TensorSpan<float>*> t;
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
  m.params_to_host(opt);  // a device model's values and momentum
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
  std::vector<std::pair<const nn::TensorSpan<float>*, const nn::safetensors::Entry*>> pending;
  auto need = [&](const std::string& name, const nn::TensorSpan<float>& dst) {
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
    for (std::size_t i = 0; i < e->values.size(); ++i) (*dst)[static_cast<std::int64_t>(i)] = static_cast<float>(e->values[i]);
  m.params_to_device(opt);
  return info;
}

}  // namespace tasn::train
