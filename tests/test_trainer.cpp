// The example trainer (examples/train): training lowers the loss, a resumed run repeats an
// uninterrupted one bit for bit, checkpoints refuse other configurations, a non-finite loss stops
// training and keeps the last good checkpoint, and the paper preset builds the full-size network
// and runs a forward/backward step.
#include <gtest/gtest.h>
#include <sys/resource.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>

#include "io/file_io.h"
#include "support/test_support.h"
#include "support/tiny_net.h"
#include "train/memory.h"
#include "train/presets.h"
#include "train/run_folder.h"
#include "train/trainer.h"

namespace {

using namespace tasn;
using namespace tasn::train;
namespace fs = std::filesystem;
namespace tt = tasn::test;
namespace io = tasn::io;

using tasn::test::tiny_net;  // 48 px images, 16 px network input, width-8/16 CNNs

data::SyntheticConfig tiny_data() {
  data::SyntheticConfig c;
  c.size = 48;
  c.patch = 12;
  c.clutter = 2;
  return c;
}

TrainConfig tiny_train(const std::string& out) {
  TrainConfig t;
  t.epochs = 3;
  t.batch = 16;
  t.eval_batch = 32;
  t.lr.kind = Schedule::Cosine;
  t.lr.base = 0.05;
  t.progress = false;
  t.out_dir = out;
  return t;
}

fs::path temp_dir(const std::string& name) {
  const fs::path p = fs::temp_directory_path() / ("tasn_trainer_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(p);
  fs::create_directories(p);
  return p;
}

double mean(const std::vector<double>& v, std::size_t b, std::size_t e) {
  double s = 0;
  for (std::size_t i = b; i < e; ++i) s += v[i];
  return s / double(e - b);
}

TEST(Trainer, FewStepsLowerTheLoss) {
  // one batch of 16 images, seen in every step: the loss must fall steadily
  const SyntheticDataset train_set(tiny_data(), data::Split::Train, 16);
  for (const bool tasn_model : {true, false}) {
    std::unique_ptr<Model> m;
    if (tasn_model) m = std::make_unique<TasnNet>(tiny_net());
    else m = std::make_unique<BaselineNet>(tiny_net());
    init_model(*m, 3);
    TrainConfig c = tiny_train("");
    c.epochs = 15;
    c.lr.kind = Schedule::Step;  // constant 0.2
    c.lr.base = 0.2;
    const TrainResult r = train_model(*m, train_set, nullptr, c, m->name());
    ASSERT_EQ(r.step_losses.size(), 15u);
    for (double l : r.step_losses) ASSERT_TRUE(std::isfinite(l));
    const double first = r.step_losses.front(), last = mean(r.step_losses, 12, 15);
    EXPECT_LT(last, 0.6 * first) << m->name() << ": loss " << first << " -> " << last;
  }
}

TEST(Trainer, ResumeRepeatsAnUninterruptedRunBitForBit) {
  const SyntheticDataset train_set(tiny_data(), data::Split::Train, 48);
  const SyntheticDataset eval_set(tiny_data(), data::Split::Test, 32);
  const fs::path dir = temp_dir("resume");
  // uninterrupted: 3 epochs
  TasnNet a(tiny_net());
  init_model(a, 5);
  const TrainResult ra = train_model(a, train_set, &eval_set, tiny_train((dir / "a").string()), "a");
  // interrupted after epoch 1, then resumed in a fresh process-like model (other initial weights)
  TasnNet b(tiny_net());
  init_model(b, 5);
  TrainConfig cb = tiny_train((dir / "b").string());
  cb.stop_after_epoch = 1;
  const TrainResult rb = train_model(b, train_set, &eval_set, cb, "b");
  ASSERT_EQ(rb.epochs_done, 1);
  TasnNet c(tiny_net());
  init_model(c, 99);  // overwritten by the checkpoint
  TrainConfig cc = tiny_train((dir / "c").string());
  cc.resume = (dir / "b" / "tasn-last.safetensors").string();
  const TrainResult rc = train_model(c, train_set, &eval_set, cc, "c");

  ASSERT_EQ(ra.step_losses.size(), 9u);
  ASSERT_EQ(rb.step_losses.size(), 3u);
  ASSERT_EQ(rc.step_losses.size(), 6u);
  for (std::size_t i = 0; i < 3; ++i) EXPECT_EQ(rb.step_losses[i], ra.step_losses[i]) << "step " << i;
  for (std::size_t i = 0; i < 6; ++i) EXPECT_EQ(rc.step_losses[i], ra.step_losses[i + 3]) << "step " << i + 3;
  EXPECT_EQ(rc.global_step, ra.global_step);
  // same parameters and BN statistics at the end
  auto sa = a.stores(), sc = c.stores();
  for (std::size_t k = 0; k < sa.size(); ++k)
    for (auto& [name, p] : sa[k].second->all())
      ASSERT_EQ(p.value.to_vector(), sc[k].second->at(name).value.to_vector()) << sa[k].first << "." << name;
  EXPECT_EQ(rc.final_eval.accuracy, ra.final_eval.accuracy);
  // the final checkpoints agree in every tensor, momentum buffers (optim.*) included
  const auto fa = nn::safetensors::read((dir / "a" / "tasn-last.safetensors").string());
  const auto fc = nn::safetensors::read((dir / "c" / "tasn-last.safetensors").string());
  ASSERT_EQ(fa.tensors.size(), fc.tensors.size());
  std::int64_t optim = 0;
  for (const auto& [name, e] : fa.tensors) {
    ASSERT_EQ(e.values, fc.tensors.at(name).values) << name;
    optim += name.rfind("optim.", 0) == 0;
  }
  EXPECT_GT(optim, 0);
  EXPECT_EQ(fa.metadata.at("epoch"), "3");
  // resuming needs the same training configuration, and something left to train
  TrainConfig other = cc;
  other.lr.base = 0.06;
  EXPECT_THROW(train_model(c, train_set, &eval_set, other, "c"), InvalidArgument);
  for (auto& [name, p] : c.att_store().all())  // a refused resume changes nothing
    ASSERT_EQ(p.value.to_vector(), a.att_store().at(name).value.to_vector()) << name;
  TrainConfig done = tiny_train((dir / "d").string());
  done.resume = (dir / "a" / "tasn-last.safetensors").string();
  std::string msg = tt::invalid_argument_message([&] { train_model(c, train_set, &eval_set, done, "d"); });
  EXPECT_NE(msg.find("nothing left to train"), std::string::npos) << msg;
  // and the loss did change over the run (the comparison is not between constants)
  EXPECT_NE(ra.step_losses.front(), ra.step_losses.back());
  fs::remove_all(dir);
}

TEST(Trainer, UnfinishedEpochIsNotCheckpointed) {
  const SyntheticDataset train_set(tiny_data(), data::Split::Train, 48);  // 3 steps per epoch
  const fs::path dir = temp_dir("partial");
  BaselineNet m(tiny_net());
  init_model(m, 1);
  TrainConfig c = tiny_train(dir.string());
  c.max_steps = 5;  // epoch 1 and 2 of epoch 2's 3 steps
  const TrainResult r = train_model(m, train_set, nullptr, c, "baseline");
  EXPECT_EQ(r.step_losses.size(), 5u);
  EXPECT_EQ(r.epochs_done, 1);
  const auto f = nn::safetensors::read((dir / "baseline-last.safetensors").string());
  EXPECT_EQ(f.metadata.at("epoch"), "1");
  EXPECT_EQ(f.metadata.at("global_step"), "3");
  fs::remove_all(dir);
}

TEST(Trainer, CheckpointRefusesAnotherConfiguration) {
  const fs::path dir = temp_dir("ckpt");
  TasnNet a(tiny_net());
  init_model(a, 1);
  save_checkpoint((dir / "a.safetensors").string(), a, nullptr, 1, 4);
  NetConfig other = tiny_net();
  other.classes = 5;
  TasnNet b(other);
  std::string msg = tt::invalid_argument_message([&] { load_checkpoint((dir / "a.safetensors").string(), b, nullptr); });
  EXPECT_NE(msg.find("differ"), std::string::npos) << msg;
  NetConfig sizes = tiny_net();  // same parameter shapes, another sampler output size
  sizes.out = 24;
  TasnNet s(sizes);
  msg = tt::invalid_argument_message([&] { load_checkpoint((dir / "a.safetensors").string(), s, nullptr); });
  EXPECT_NE(msg.find("out=24"), std::string::npos) << msg;
  BaselineNet base(tiny_net());
  EXPECT_THROW(load_checkpoint((dir / "a.safetensors").string(), base, nullptr), InvalidArgument);
  // no optimiser state in this file: resuming (which needs it) names the missing tensor
  Sgd opt(a.params(), {});
  msg = tt::invalid_argument_message([&] { load_checkpoint((dir / "a.safetensors").string(), a, &opt); });
  EXPECT_NE(msg.find("optim."), std::string::npos) << msg;
  fs::remove_all(dir);
}

// A model that diverges from global step `bad` on: a non-finite loss, or (poison_gradient) a
// finite loss with a NaN gradient.
class Diverging : public Model {
 public:
  Diverging(Model& m, std::int64_t bad, bool poison_gradient = false) : m_(m), bad_(bad), grad_(poison_gradient) {}
  std::string name() const override { return m_.name(); }
  nn::FlatParams<float>& params() override { return m_.params(); }
  const StepStats& train_step(const std::vector<float>& im, const std::vector<std::int64_t>& l, std::uint64_t s) override {
    st_ = m_.train_step(im, l, s);
    if (step_++ < bad_) return st_;
    if (grad_) m_.stores().front().second->at("conv1.weight").grad[3] = std::numeric_limits<float>::quiet_NaN();
    else st_.total = std::numeric_limits<double>::infinity();
    return st_;
  }
  std::vector<Tensor<float>> predict(const std::vector<float>& im, std::int64_t n) override { return m_.predict(im, n); }
  std::vector<std::string> head_names() const override { return m_.head_names(); }
  std::size_t reported_head() const override { return m_.reported_head(); }
  std::string config_string() const override { return m_.config_string(); }

 private:
  Model& m_;
  StepStats st_;
  std::int64_t bad_, step_ = 0;
  bool grad_;
};

// --weights / --att-weights: a converted torchvision file (backbone names + fc) loads into a backbone.
TEST(Trainer, TorchvisionWeightsLoadIntoTheBackbones) {
  NetConfig n = tiny_net();
  n.att_backbone = nn::AttentionNetConfig{}.backbone;
  n.att_backbone.width = 0.125;
  TasnNet m(n);
  init_model(m, 1);
  const auto head_before = m.att_store().at("head.conv1.weight").value.to_vector();
  nn::ParamStore<float> tv;
  nn::ResNetConfig rc = n.att_backbone;
  rc.num_classes = 10;
  nn::ResNet<float> resnet(tv, rc);
  tv.allocate();
  nn::init_torchvision(tv, 77);
  const fs::path dir = temp_dir("weights");
  std::map<std::string, const nn::TensorSpan<float>*> all, partial;
  for (auto& [name, p] : tv.all()) {
    all[name] = &p.value;
    if (name != "layer3.0.downsample.0.weight") partial[name] = &p.value;
  }
  nn::safetensors::write((dir / "tv.safetensors").string(), all);
  nn::safetensors::write((dir / "partial.safetensors").string(), partial);
  load_backbone(m.att_store(), (dir / "tv.safetensors").string());
  std::int64_t compared = 0;
  for (auto& [name, p] : tv.all()) {
    if (name.rfind("fc.", 0) == 0) continue;
    ASSERT_EQ(m.att_store().at(name).value.to_vector(), p.value.to_vector()) << name;
    ++compared;
  }
  EXPECT_EQ(compared, 100);  // 60 parameters + 40 BN statistics: a ResNet-18 without its fc
  EXPECT_EQ(m.att_store().at("head.conv1.weight").value.to_vector(), head_before);
  // the demo backbone is no ResNet-18
  EXPECT_THROW(load_backbone(m.master_store(), (dir / "tv.safetensors").string()), InvalidArgument);
  std::string msg = tt::invalid_argument_message([&] { load_backbone(m.att_store(), (dir / "partial.safetensors").string()); });
  EXPECT_NE(msg.find("layer3.0.downsample.0.weight"), std::string::npos) << msg;
  fs::remove_all(dir);
}

TEST(Trainer, NonFiniteLossStopsAndKeepsTheLastGoodCheckpoint) {
  const SyntheticDataset train_set(tiny_data(), data::Split::Train, 32);  // 2 steps per epoch
  const fs::path dir = temp_dir("nonfinite");
  BaselineNet base(tiny_net());
  init_model(base, 2);
  Diverging m(base, 3);  // the second step of epoch 2
  const TrainResult r = train_model(m, train_set, nullptr, tiny_train(dir.string()), "baseline");
  EXPECT_TRUE(r.stopped_nonfinite);
  EXPECT_EQ(r.epochs_done, 1);
  EXPECT_NE(r.message.find("epoch 2, step 2"), std::string::npos) << r.message;
  EXPECT_NE(r.message.find("baseline-last.safetensors"), std::string::npos) << r.message;
  const auto f = nn::safetensors::read((dir / "baseline-last.safetensors").string());
  EXPECT_EQ(f.metadata.at("epoch"), "1");
  EXPECT_EQ(f.metadata.at("global_step"), "2");

  // a finite loss with a NaN gradient: the update is not applied, training stops
  BaselineNet base2(tiny_net());
  init_model(base2, 2);
  Diverging g(base2, 1, true);
  const fs::path dir2 = dir / "grad";
  const TrainResult rg = train_model(g, train_set, nullptr, tiny_train(dir2.string()), "baseline");
  EXPECT_TRUE(rg.stopped_nonfinite);
  EXPECT_EQ(rg.step_losses.size(), 1u);
  EXPECT_NE(rg.message.find("non-finite gradient of master.conv1.weight at epoch 1, step 2"), std::string::npos) << rg.message;
  EXPECT_NE(rg.message.find("none (no checkpoint written)"), std::string::npos) << rg.message;
  for (auto& [prefix, ps] : base2.stores())
    for (auto& [name, p] : ps->all())
      for (float v : p.value) ASSERT_TRUE(std::isfinite(v)) << prefix << "." << name;
  EXPECT_FALSE(fs::exists(dir2 / "baseline-last.safetensors"));

  // a real divergence: a NaN weight gives a non-finite forward pass; no operator is fed NaN
  TasnNet t(tiny_net());
  init_model(t, 2);
  t.att_store().at("conv1.weight").value[0] = std::numeric_limits<float>::quiet_NaN();
  const TrainResult rt = train_model(t, train_set, nullptr, tiny_train(""), "tasn");
  EXPECT_TRUE(rt.stopped_nonfinite);
  EXPECT_NE(rt.message.find("non-finite attention-net output"), std::string::npos) << rt.message;
  fs::remove_all(dir);
}

TEST(Trainer, EvaluationCountsEveryHeadAndTheDetailRows) {
  const SyntheticDataset eval_set(tiny_data(), data::Split::Test, 40);
  TasnNet m(tiny_net());
  init_model(m, 4);
  const EvalResult e = evaluate(m, eval_set, 16);  // 16 + 16 + 8: a partial last batch
  ASSERT_EQ(e.heads.size(), 6u);
  EXPECT_EQ(e.n, 40);
  for (double a : e.accuracy) {
    EXPECT_GE(a, 0.0);
    EXPECT_LE(a, 1.0);
    EXPECT_EQ(std::round(a * 40), a * 40);  // a count of 40
  }
  // uniform 16-px grid over 48 px with a 12-px patch: 4 rows and 4 columns fall on it (+-1 each)
  EXPECT_GE(e.uniform_rows, 6.0);
  EXPECT_LE(e.uniform_rows, 10.0);
  EXPECT_GE(e.detail_rows, 0.0);
}

TEST(Trainer, AttentionDumpWritesPngs) {
  const SyntheticDataset eval_set(tiny_data(), data::Split::Test, 4);
  TasnNet m(tiny_net());
  init_model(m, 4);
  const fs::path dir = temp_dir("dump");
  const auto files = dump_attention(m, eval_set, 3, dir.string());
  ASSERT_EQ(files.size(), 15u);
  for (const auto& f : files) {
    ASSERT_TRUE(fs::exists(f)) << f;
    EXPECT_GT(fs::file_size(f), 100u) << f;
  }
  fs::remove_all(dir);
}

TEST(Trainer, LearningRateSchedules) {
  LrSchedule s;
  s.base = 0.1;
  s.milestones = {100, 200};
  EXPECT_DOUBLE_EQ(s.at(0, 300), 0.1);
  EXPECT_DOUBLE_EQ(s.at(99.9, 300), 0.1);
  EXPECT_NEAR(s.at(100, 300), 0.01, 1e-15);
  EXPECT_NEAR(s.at(250, 300), 0.001, 1e-15);
  s.kind = Schedule::Cosine;
  EXPECT_DOUBLE_EQ(s.at(0, 10), 0.1);
  EXPECT_NEAR(s.at(5, 10), 0.05, 1e-15);
  EXPECT_NEAR(s.at(10, 10), 0.0, 1e-15);
  s.kind = Schedule::OneCycle;
  EXPECT_NEAR(s.at(0, 10), 0.004, 1e-15);
  EXPECT_NEAR(s.at(3, 10), 0.1, 1e-15);  // peak after 30 %
  EXPECT_LT(s.at(10, 10), 1e-6);
  EXPECT_THROW(parse_schedule("linear"), InvalidArgument);
}

TEST(Trainer, SgdMatchesTheFormula) {
  nn::ParamStore<float> ps;
  auto& p = ps.add("w", {2});
  auto& q = ps.add("x", {3});  // a second tensor: the flat layout pads between them
  nn::FlatParams<float> flat;
  flat.add("s", ps);
  flat.allocate();
  p.value.set(std::vector<float>{1.0f, -2.0f});
  q.value.set(std::vector<float>{5.0f, 6.0f, 7.0f});
  Sgd opt(flat, {0.9, 0.01});
  EXPECT_EQ(opt.buffers().count("s.w"), 1u);
  p.grad.set(std::vector<float>{4.0f, 2.0f});
  opt.step(0.1, 0.5);  // v = g * 0.5 + 0.01 w = (2.01, 0.98); w -= 0.1 v
  EXPECT_FLOAT_EQ(p.value[0], 1.0f - 0.201f);
  EXPECT_FLOAT_EQ(p.value[1], -2.0f - 0.098f);
  EXPECT_FLOAT_EQ(q.value[0], 5.0f - 0.1f * 0.05f);  // weight decay only
  opt.step(0.1, 0.5);  // v = 0.9 v + g * 0.5 + 0.01 w
  const float v0 = 0.9f * 2.01f + 2.0f + 0.01f * (1.0f - 0.201f);
  EXPECT_FLOAT_EQ(p.value[0], 1.0f - 0.201f - 0.1f * v0);
  // the padding between the tensors stays zero
  for (std::int64_t i = 2; i < flat.table()[1].offset; ++i) EXPECT_EQ(flat.values()[i], 0.f) << i;
}

// ---- run folders, atomic checkpoints, resumes that lose nothing -----------------------------------

std::string file_text(const fs::path& p) {
  const auto b = io::read_file(p.string());
  return {b.begin(), b.end()};
}

std::vector<std::int64_t> log_epochs(const fs::path& p, std::vector<bool>* complete = nullptr) {
  std::vector<std::int64_t> e;
  std::istringstream in(file_text(p));
  for (std::string line; std::getline(in, line);) {
    const auto j = nlohmann::json::parse(line);
    e.push_back(j.at("epoch").get<std::int64_t>());
    if (complete) complete->push_back(j.at("complete").get<bool>());
  }
  return e;
}

TEST(RunFolder, LockedWhileARunWritesAndStaleTemporariesGo) {
  const fs::path dir = temp_dir("lock");
  std::ofstream(dir / "tasn-last.safetensors.tmp-0123456789ab") << "half a checkpoint";
  std::ofstream(dir / "baseline-last.safetensors.tmp") << "half a checkpoint, older naming";
  std::ofstream(dir / "notes.txt") << "the user's";
  {
    RunFolder a(dir.string(), "tasn_train --first");
    EXPECT_EQ(a.removed().size(), 2u);
    EXPECT_FALSE(fs::exists(dir / "tasn-last.safetensors.tmp-0123456789ab"));
    EXPECT_FALSE(fs::exists(dir / "baseline-last.safetensors.tmp"));
    EXPECT_TRUE(fs::exists(dir / "notes.txt"));
    const std::string msg = tt::invalid_argument_message([&] { RunFolder b(dir.string(), "tasn_train --second"); });
    EXPECT_NE(msg.find("is in use by another run (pid " + std::to_string(::getpid())), std::string::npos) << msg;
    EXPECT_NE(msg.find("tasn_train --first"), std::string::npos) << msg;
    // train_model on a locked folder is refused before any step
    BaselineNet m(tiny_net());
    const SyntheticDataset train_set(tiny_data(), data::Split::Train, 16);
    EXPECT_NE(tt::invalid_argument_message([&] { train_model(m, train_set, nullptr, tiny_train(dir.string()), "b"); })
                  .find("in use by another run"),
              std::string::npos);
  }
  EXPECT_NO_THROW(RunFolder(dir.string()));  // released with its owner
  // a folder that cannot be written is found at once
  const std::string msg = [&] {
    try {
      RunFolder r("/proc/tasn-no-such-folder");
    } catch (const std::exception& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  }();
  EXPECT_NE(msg.find("cannot create the output folder /proc/tasn-no-such-folder"), std::string::npos) << msg;
  fs::remove_all(dir);
}

TEST(RunFolder, AFreshRunNeverDestroysAnEarlierOne) {
  const SyntheticDataset train_set(tiny_data(), data::Split::Train, 32);  // 2 steps per epoch
  const fs::path dir = temp_dir("fresh");
  BaselineNet m(tiny_net());
  init_model(m, 1);
  TrainConfig c = tiny_train(dir.string());
  c.epochs = 1;
  train_model(m, train_set, nullptr, c, "baseline");
  const std::string ckpt = file_text(dir / "baseline-last.safetensors"), log = file_text(dir / "baseline-metrics.jsonl");
  // a second fresh run is refused, naming the ways out; nothing changes
  BaselineNet m2(tiny_net());
  init_model(m2, 2);
  std::string msg = tt::invalid_argument_message([&] { train_model(m2, train_set, nullptr, c, "baseline"); });
  EXPECT_NE(msg.find("already holds a baseline run"), std::string::npos) << msg;
  EXPECT_NE(msg.find("--resume " + (dir / "baseline-last.safetensors").string()), std::string::npos) << msg;
  EXPECT_NE(msg.find("--overwrite"), std::string::npos) << msg;
  EXPECT_EQ(file_text(dir / "baseline-last.safetensors"), ckpt);
  EXPECT_EQ(file_text(dir / "baseline-metrics.jsonl"), log);
  // another model may share the folder
  TasnNet t(tiny_net());
  init_model(t, 1);
  EXPECT_NO_THROW(train_model(t, train_set, nullptr, c, "tasn"));
  // --overwrite: the earlier log survives a run that fails before its first epoch ends...
  c.overwrite = true;
  Diverging d(m2, 0);
  EXPECT_TRUE(train_model(d, train_set, nullptr, c, "baseline").stopped_nonfinite);
  EXPECT_EQ(file_text(dir / "baseline-metrics.jsonl"), log);
  EXPECT_EQ(file_text(dir / "baseline-last.safetensors"), ckpt);
  // ... and is replaced by one that finishes an epoch
  train_model(m2, train_set, nullptr, c, "baseline");
  EXPECT_EQ(log_epochs(dir / "baseline-metrics.jsonl"), std::vector<std::int64_t>{1});
  EXPECT_NE(file_text(dir / "baseline-last.safetensors"), ckpt);
  // resuming into a folder that holds another run is refused too
  const fs::path other = temp_dir("fresh_other");
  BaselineNet m3(tiny_net());
  init_model(m3, 3);
  TrainConfig c3 = tiny_train(other.string());
  c3.stop_after_epoch = 1;
  train_model(m3, train_set, nullptr, c3, "baseline");
  TrainConfig into = tiny_train(dir.string());
  into.resume = (other / "baseline-last.safetensors").string();
  msg = tt::invalid_argument_message([&] { train_model(m3, train_set, nullptr, into, "baseline"); });
  EXPECT_NE(msg.find("holds another baseline run"), std::string::npos) << msg;
  fs::remove_all(dir);
  fs::remove_all(other);
}

TEST(RunFolder, ResumedLogsHoldOneLinePerEpoch) {
  const SyntheticDataset train_set(tiny_data(), data::Split::Train, 32);  // 2 steps per epoch
  const fs::path dir = temp_dir("relog");
  const fs::path ck = dir / "baseline-last.safetensors", lg = dir / "baseline-metrics.jsonl";
  BaselineNet m(tiny_net());
  init_model(m, 1);
  TrainConfig c = tiny_train(dir.string());  // 3 epochs
  c.stop_after_epoch = 1;
  train_model(m, train_set, nullptr, c, "baseline");
  const auto epoch1 = io::read_file(ck.string());
  c.stop_after_epoch = 2;
  c.resume = ck.string();
  train_model(m, train_set, nullptr, c, "baseline");
  ASSERT_EQ(log_epochs(lg), (std::vector<std::int64_t>{1, 2}));
  // the log knows epoch 2 but the checkpoint is epoch 1's again (as after a crash between the
  // two writes in an older version): the resumed run repeats epoch 2 and logs it once
  io::write_file_atomic(ck.string(), epoch1.data(), epoch1.size());
  c.stop_after_epoch = 0;
  train_model(m, train_set, nullptr, c, "baseline");
  EXPECT_EQ(log_epochs(lg), (std::vector<std::int64_t>{1, 2, 3}));
  // a --max-steps stop leaves an unfinished epoch's line; the resumed run replaces it
  const fs::path dir2 = temp_dir("relog2");
  BaselineNet m2(tiny_net());
  init_model(m2, 1);
  TrainConfig p = tiny_train(dir2.string());
  p.max_steps = 3;
  train_model(m2, train_set, nullptr, p, "baseline");
  std::vector<bool> complete;
  ASSERT_EQ(log_epochs(dir2 / "baseline-metrics.jsonl", &complete), (std::vector<std::int64_t>{1, 2}));
  EXPECT_EQ(complete, (std::vector<bool>{true, false}));
  p.max_steps = 0;
  p.resume = (dir2 / "baseline-last.safetensors").string();
  train_model(m2, train_set, nullptr, p, "baseline");
  complete.clear();
  EXPECT_EQ(log_epochs(dir2 / "baseline-metrics.jsonl", &complete), (std::vector<std::int64_t>{1, 2, 3}));
  EXPECT_EQ(complete, (std::vector<bool>{true, true, true}));
  fs::remove_all(dir);
  fs::remove_all(dir2);
}

// An evaluation split whose image `bad` cannot be loaded (a corrupt test image).
class BrokenEval : public Dataset {
 public:
  BrokenEval(const Dataset& d, std::int64_t bad) : d_(d), bad_(bad) {}
  std::int64_t size() const override { return d_.size(); }
  std::int64_t side() const override { return d_.side(); }
  data::Example get(std::int64_t i, std::int64_t e) const override {
    TASN_CHECK_ARG(i != bad_, "data: cannot decode image /data/test/broken.jpg");
    return d_.get(i, e);
  }

 private:
  const Dataset& d_;
  std::int64_t bad_;
};

TEST(Trainer, AFailedEvaluationKeepsTheFinishedEpoch) {
  const SyntheticDataset train_set(tiny_data(), data::Split::Train, 32);
  const SyntheticDataset test_set(tiny_data(), data::Split::Test, 8);
  const BrokenEval broken(test_set, 5);
  const fs::path dir = temp_dir("evalfail");
  BaselineNet m(tiny_net());
  init_model(m, 1);
  const std::string msg = [&] {
    try {
      train_model(m, train_set, &broken, tiny_train(dir.string()), "baseline");
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  }();
  const std::string ck = (dir / "baseline-last.safetensors").string();
  EXPECT_NE(msg.find("evaluation after epoch 1 failed: data: cannot decode image /data/test/broken.jpg"), std::string::npos) << msg;
  EXPECT_NE(msg.find("epoch 1 is saved in " + ck + " (continue with --resume " + ck + ")"), std::string::npos) << msg;
  EXPECT_EQ(nn::safetensors::read(ck).metadata.at("epoch"), "1");
  const auto j = nlohmann::json::parse(file_text(dir / "baseline-metrics.jsonl"));
  EXPECT_EQ(j.at("epoch"), 1);
  EXPECT_NE(j.at("eval_error").get<std::string>().find("broken.jpg"), std::string::npos);
  // the saved epoch resumes once the data are fixed
  TrainConfig c = tiny_train(dir.string());
  c.resume = ck;
  BaselineNet m2(tiny_net());
  EXPECT_EQ(train_model(m2, train_set, &test_set, c, "baseline").epochs_done, 3);
  fs::remove_all(dir);
}

// Renames fail from the n-th on (a full disk at the second checkpoint): the run stops with the
// OS reason and the path, the first checkpoint stays, no temporary is left.
int g_renames = 0;
int rename_fails_from_second(const char* a, const char* b) {
  if (++g_renames >= 2) {
    errno = ENOSPC;
    return -1;
  }
  return ::rename(a, b);
}

TEST(Trainer, AFailedCheckpointWriteStopsAndKeepsThePreviousOne) {
  const SyntheticDataset train_set(tiny_data(), data::Split::Train, 32);
  const fs::path dir = temp_dir("ckptfail");
  BaselineNet m(tiny_net());
  init_model(m, 1);
  const io::Syscalls saved = io::syscalls();
  g_renames = 0;
  io::syscalls().rename = rename_fails_from_second;
  std::string msg = "no error";
  try {
    train_model(m, train_set, nullptr, tiny_train(dir.string()), "baseline");
  } catch (const io::IoError& e) {
    msg = e.what();
  }
  io::syscalls() = saved;
  const std::string ck = (dir / "baseline-last.safetensors").string();
  EXPECT_NE(msg.find("cannot save the checkpoint of epoch 2"), std::string::npos) << msg;
  EXPECT_NE(msg.find("No space left on device"), std::string::npos) << msg;
  EXPECT_NE(msg.find("the last good checkpoint is " + ck + " (unchanged)"), std::string::npos) << msg;
  EXPECT_EQ(nn::safetensors::read(ck).metadata.at("epoch"), "1");
  std::vector<std::string> files;
  for (const auto& e : fs::directory_iterator(dir)) files.push_back(e.path().filename().string());
  std::sort(files.begin(), files.end());
  EXPECT_EQ(files, (std::vector<std::string>{".tasn-lock", "baseline-last.safetensors", "baseline-metrics.jsonl"}));
  fs::remove_all(dir);
}

// Metadata edited by hand, a flipped data byte: refused with a message, never "epoch -4".
TEST(Trainer, EditedCheckpointsAreRefused) {
  const SyntheticDataset train_set(tiny_data(), data::Split::Train, 32);  // 2 steps per epoch
  const fs::path dir = temp_dir("edited");
  BaselineNet m(tiny_net());
  init_model(m, 1);
  TrainConfig c = tiny_train((dir / "run").string());
  c.stop_after_epoch = 1;
  train_model(m, train_set, nullptr, c, "baseline");
  const std::string ck = (dir / "run" / "baseline-last.safetensors").string();
  const auto good = nn::safetensors::read(ck);
  Sgd opt(m.params(), c.sgd);
  const auto tensors = checkpoint_tensors(m, &opt);
  TrainConfig r = tiny_train("");
  struct Case {
    const char* key;
    const char* value;
    const char* expect;
  };
  for (const Case& k : {Case{"epoch", "-4", "metadata epoch is -4 (must be >= 0)"},
                        Case{"epoch", "1x", "metadata epoch: \"1x\" is not an integer"},
                        Case{"global_step", "", "metadata global_step: \"\" is not an integer"},
                        Case{"global_step", "3", "global step 3 is not epoch 1 x 2 steps per epoch"}}) {
    auto meta = good.metadata;
    meta.erase(nn::safetensors::kChecksumKey);
    meta[k.key] = k.value;
    const std::string p = (dir / "edited.safetensors").string();
    nn::safetensors::write(p, tensors, meta);
    r.resume = p;
    BaselineNet fresh(tiny_net());
    const std::string msg = tt::invalid_argument_message([&] { train_model(fresh, train_set, nullptr, r, "b"); });
    EXPECT_NE(msg.find(k.expect), std::string::npos) << k.key << "=" << k.value << ": " << msg;
  }
  // one flipped bit in the tensor data
  auto bytes = io::read_file(ck);
  bytes[bytes.size() - 5] ^= 0x10;
  const std::string flipped = (dir / "flipped.safetensors").string();
  io::write_file_atomic(flipped, bytes.data(), bytes.size());
  const std::string msg = tt::invalid_argument_message([&] { nn::safetensors::read(flipped); });
  EXPECT_NE(msg.find("do not match their checksum"), std::string::npos) << msg;
  // a shape whose element count overflows
  std::string h = "{\"w\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904,8],\"data_offsets\":[0,0]}}";
  std::string file(8, '\0');
  for (int i = 0; i < 8; ++i) file[i] = char((h.size() >> (8 * i)) & 0xff);
  file += h;
  io::write_file_atomic((dir / "huge.safetensors").string(), file.data(), file.size());
  const std::string huge = tt::invalid_argument_message([&] { nn::safetensors::read((dir / "huge.safetensors").string()); });
  EXPECT_NE(huge.find("more elements than any file holds"), std::string::npos) << huge;
  fs::remove_all(dir);
}

// The memory estimate is below the measured peak (so a refused run cannot fit) and grows with
// the sizes the issue named.
TEST(Trainer, MemoryEstimateIsALowerBoundAndCatchesAbsurdSizes) {
  Preset demo = preset("demo");
  const MemoryEstimate e = estimate_memory(demo.net, demo.train.batch, 5000, true, true);
  // measured: README command 1 (both models, 4000 + 1000 images) peaked at 757 MiB RSS
  // (/usr/bin/time -v, 2026-12-02); the estimate is 184 MiB
  EXPECT_GT(e.total(), 64.0 * 1024 * 1024);
  EXPECT_LT(e.total(), 757.0 * 1024 * 1024);
  NetConfig big = demo.net;
  big.image = 100000;
  EXPECT_GT(estimate_memory(big, 32, 5000, true, true).total(), 1e14);
  EXPECT_GT(estimate_memory(demo.net, 32, 100000000000, true, true).total(), 1e15);
}

long peak_rss_mib() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_maxrss / 1024;
}

// SPEC 5 at full size: 512 px images, 224 px sampler output, ResNet-18 attention net (28 x 28 x 512
// feature map), ResNet-50 part/master net, 200 classes; one training step at batch 2 on the CPU.
TEST(Trainer, PaperPresetBuildsTheFullNetworkAndSteps) {
  Preset s = preset("paper");
  TasnNet m(s.net);
  init_model(m, 1);
  // torchvision parameter counts without the fc: ResNet-18 11,176,512, ResNet-50 23,508,032
  auto count = [](nn::ParamStore<float>& ps, bool head) {
    std::int64_t n = 0;
    for (auto& [name, p] : ps.all())
      if (p.trainable && (name.rfind("head.", 0) == 0) == head) n += p.value.numel();
    return n;
  };
  EXPECT_EQ(count(m.att_store(), false), 11176512);
  EXPECT_EQ(count(m.master_store(), false), 23508032);
  EXPECT_EQ(count(m.att_store(), true), 2 * (512 * 512 * 9 + 512) + 2 * 512 + 200 * 512 + 200);

  data::SyntheticConfig dc;
  dc.size = 512;
  dc.patch = 64;
  std::vector<float> images;
  std::vector<std::int64_t> labels;
  for (std::int64_t i = 0; i < 2; ++i) {
    const auto smp = data::make_sample(dc, data::Split::Train, i);
    images.insert(images.end(), smp.image.begin(), smp.image.end());
    labels.push_back(smp.label * 20 + 3);  // any of the 200 classes
  }
  const StepStats& st = m.train_step(images, labels, 7);
  ASSERT_TRUE(std::isfinite(st.total));
  ASSERT_EQ(st.losses.size(), 6u);
  for (const auto& [name, l] : st.losses) EXPECT_GT(l, 0.0) << name;
  // cross-entropies of a fresh 200-way net are near 2 ln 200 (two images); the four heads x 0.5
  EXPECT_NEAR(st.losses[0].second, 2 * std::log(200.0), 2.0);
  const TasnViews& v = m.last_views();
  EXPECT_EQ(m.attention_net().feature_map().shape_string(), "(2, 512, 28, 28)");
  EXPECT_EQ(v.structure_map.shape_string(), "(2, 28, 28)");
  EXPECT_EQ(v.structure_image.shape_string(), "(2, 3, 224, 224)");
  EXPECT_EQ(v.detail_image.shape_string(), "(2, 3, 224, 224)");
  // gradients reached both backbones and the attention head
  auto grad_norm = [](nn::Param<float>& p) {
    double s2 = 0;
    for (float g : p.grad) s2 += double(g) * g;
    return std::sqrt(s2);
  };
  EXPECT_GT(grad_norm(m.master_store().at("conv1.weight")), 0.0);
  EXPECT_GT(grad_norm(m.master_store().at("layer4.2.conv3.weight")), 0.0);
  EXPECT_GT(grad_norm(m.att_store().at("conv1.weight")), 0.0);
  EXPECT_GT(grad_norm(m.att_store().at("head.conv1.weight")), 0.0);
  // memory: 40 M parameters + gradients (0.3 GB), activations of 2 x 512 px + 4 x 224 px images
  const long rss = peak_rss_mib();
  std::printf("paper preset, batch 2: peak RSS %ld MiB\n", rss);
  EXPECT_LT(rss, 3 * 1024);  // measured 1116 MiB
  // the pre-flight memory estimate of this step stays below what it really took
  const double est = estimate_memory(s.net, 2, 0, true, false).total();
  std::printf("paper preset, batch 2: estimated %.0f MiB\n", est / (1024.0 * 1024.0));
  EXPECT_LT(est, double(rss) * 1024.0 * 1024.0);
  EXPECT_GT(est, 0.25 * double(rss) * 1024.0 * 1024.0);
}

}  // namespace
