// examples/tasn_train.cpp - the TASN example trainer (README command 1). With no arguments it
// trains TASN and the uniform-resize baseline on the built-in generated fine-grained data on the
// CPU and prints their test accuracy and time. `--help` lists every option; docs/trainer.md
// explains them.
#include <malloc.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "data/parse.h"
#include "train/presets.h"
#include "train/trainer.h"
#if defined(TASN_HAVE_STB)
#include "train/folder_data.h"
#endif

namespace {

using namespace tasn;
using namespace tasn::train;

const char* kUsage = R"(usage: tasn_train [options]

With no options: train TASN and the baseline on the built-in generated data (CPU) and compare.

  --preset demo|paper        demo (default): 96 px images, 32 px network input, small CNNs, 4 epochs.
                             paper: SPEC 5 / official (512 input, 224 sampler output, ResNet-18
                             attention net, ResNet-50 part/master net, SGD lr 0.1, batch 96, 300
                             epochs, lr x 0.1 at epochs 100 and 200); give it --data cub and
                             --weights / --att-weights (ImageNet) for the published setting.
  --model both|tasn|baseline which networks to train (default both)
  --data synthetic|cub|list  built-in generated data (default), CUB-200-2011 layout, or a list file
  --data-root DIR            CUB root, or the root of the list file's relative paths
  --list FILE                list file: "relative/path label train|test" per line
  --classes K                number of classes (cub: 200; list: required)
  --train-size N --test-size N   generated data: images per split (demo 4000 / 1000)
  --eval-split test|val      evaluate on the test split (default) or on a validation split (generated
                             data: a third split; real data: every 10th training image held out)
  --epochs N --batch N --lr X --momentum X --wd X
  --schedule step|cosine|onecycle   --milestones E1,E2   --gamma X
  --seed N                   seed of everything (initialisation, order, detail channels, data)
  --seeds N1,N2,...          run the whole comparison once per seed and print every table
  --threads N                CPU threads (default: OpenMP's default)
  --out DIR                  metrics logs (MODEL-metrics.jsonl) and checkpoints (MODEL-last.safetensors)
                             (default: tasn-run)
  --resume FILE              continue from a checkpoint (bit-exact; --model tasn or baseline)
  --weights FILE             part/master (and baseline) backbone from converted torchvision weights
  --att-weights FILE         attention-net backbone from converted torchvision weights
  --eval-only                with --resume FILE: evaluate that checkpoint and stop
  --dump-attention DIR       after training: PNGs of inputs, maps and sampled images (TASN)
  --dump-count N             images to dump (default 8)
  --sampler-mode exact|official  --dense X --iters N --beta X --temperature X
  --image N --att-input N --out-size N    image side, attention-net input side, sampler output side
  --width X --att-width X     channel multipliers of the part/master and attention-net backbones
  --no-teacher-grad          detach the distillation's soft target (default: official, not detached)
  --no-progress              no progress bar
  --stop-after-epoch N       stop after epoch N as if interrupted (for resume checks)
  --max-steps N              stop after N steps (smoke runs)
)";

struct Args {
  std::map<std::string, std::string> kv;
  std::set<std::string> flags;
  std::string get(const std::string& k, const std::string& d) const {
    auto it = kv.find(k);
    return it == kv.end() ? d : it->second;
  }
  bool has(const std::string& k) const { return kv.count(k) || flags.count(k); }
};

Args parse(int argc, char** argv) {
  static const std::set<std::string> flag_names = {"--eval-only", "--no-progress", "--help", "-h", "--no-teacher-grad"};
  static const std::set<std::string> value_names = {
      "--preset", "--model", "--data", "--data-root", "--list", "--classes", "--train-size", "--test-size",
      "--eval-split", "--epochs", "--batch", "--lr", "--momentum", "--wd", "--schedule", "--milestones", "--gamma",
      "--seed", "--seeds", "--threads", "--out", "--resume", "--weights", "--att-weights", "--dump-attention",
      "--dump-count", "--sampler-mode", "--dense", "--iters", "--beta", "--temperature", "--image", "--att-input",
      "--out-size", "--stop-after-epoch", "--max-steps", "--width", "--att-width"};
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    if (flag_names.count(k)) {
      a.flags.insert(k);
    } else if (value_names.count(k)) {
      TASN_CHECK_ARG(i + 1 < argc && std::string(argv[i + 1]).rfind("--", 0) != 0, "option ", k, " needs a value");
      a.kv[k] = argv[++i];
    } else {
      throw InvalidArgument("unknown option \"" + k + "\" (see --help)");
    }
  }
  return a;
}

std::int64_t to_int(const Args& a, const std::string& k, std::int64_t d) {
  const std::string v = a.get(k, "");
  return v.empty() ? d : data::parse_int(v, "option " + k);
}
double to_double(const Args& a, const std::string& k, double d) {
  const std::string v = a.get(k, "");
  return v.empty() ? d : data::parse_double(v, "option " + k);
}
std::vector<std::int64_t> to_ints(const std::string& k, const std::string& v) {
  std::vector<std::int64_t> out;
  std::stringstream ss(v);
  for (std::string t; std::getline(ss, t, ',');) {
    std::int64_t x = 0;
    TASN_CHECK_ARG(data::parse_number(t, x), "option ", k, ": \"", v, "\" is not a comma-separated list of integers");
    out.push_back(x);
  }
  return out;
}

struct Data {
  std::unique_ptr<Dataset> train, eval;
  std::string description;
};

Data make_data(const Args& a, Preset& s) {
  Data d;
  const std::string kind = a.get("--data", "synthetic"), split = a.get("--eval-split", "test");
  TASN_CHECK_ARG(split == "test" || split == "val", "--eval-split must be test or val, got \"", split, "\"");
  if (kind == "synthetic") {
    data::SyntheticConfig sc;
    sc.size = s.net.image;
    sc.patch = std::max<std::int64_t>(4, s.net.image / 6);  // 16 px at the demo's 96
    sc.seed = s.train.seed;
    s.net.classes = sc.classes;
    d.train = std::make_unique<SyntheticDataset>(sc, data::Split::Train, s.train_size);
    d.eval = std::make_unique<SyntheticDataset>(sc, split == "val" ? data::Split::Val : data::Split::Test, s.test_size);
    std::ostringstream o;
    o << "generated fine-grained data (seed " << sc.seed << ", " << s.train_size << " train / " << s.test_size << " "
      << split << " images, " << sc.size << " px, " << sc.classes << " classes)";
    d.description = o.str();
    return d;
  }
#if defined(TASN_HAVE_STB)
  std::vector<data::ImageRecord> recs;
  if (kind == "cub") {
    s.net.classes = to_int(a, "--classes", 200);
    recs = data::read_cub(a.get("--data-root", ""), s.net.classes);
  } else if (kind == "list") {
    TASN_CHECK_ARG(a.has("--list") && a.has("--classes"), "--data list needs --list FILE and --classes K");
    s.net.classes = to_int(a, "--classes", 0);
    recs = data::read_list(a.get("--list", ""), a.get("--data-root", "."), s.net.classes);
  } else {
    throw InvalidArgument("--data must be synthetic, cub or list, got \"" + kind + "\"");
  }
  FolderSplits fs = folder_datasets(recs, s.net.image, s.train.seed, split == "val");
  d.description = kind + " data (" + std::to_string(fs.train->size()) + " train / " + std::to_string(fs.eval->size()) +
                  " " + split + " images, " + std::to_string(s.net.classes) + " classes)";
  d.train = std::move(fs.train);
  d.eval = std::move(fs.eval);
  return d;
#else
  throw InvalidArgument("--data " + kind + " needs JPEG/PNG decoding: rebuild with Debian's libstb-dev installed");
#endif
}

struct RunRow {
  std::string model;
  TrainResult result;
};

int run(const Args& a) {
  Preset s = preset(a.get("--preset", "demo"));
  NetConfig& net = s.net;
  TrainConfig& tc = s.train;
  net.image = to_int(a, "--image", net.image);
  net.att_input = to_int(a, "--att-input", net.att_input);
  net.out = to_int(a, "--out-size", net.out);
  net.master_backbone.width = to_double(a, "--width", net.master_backbone.width);
  net.att_backbone.width = to_double(a, "--att-width", net.att_backbone.width);
  net.dense = to_double(a, "--dense", net.dense);
  net.iters = static_cast<int>(to_int(a, "--iters", net.iters));
  net.beta = to_double(a, "--beta", net.beta);
  net.temperature = to_double(a, "--temperature", net.temperature);
  if (a.has("--no-teacher-grad")) net.teacher_grad = false;
  const std::string mode = a.get("--sampler-mode", "exact");
  TASN_CHECK_ARG(mode == "exact" || mode == "official", "--sampler-mode must be exact or official, got \"", mode, "\"");
  net.mode = mode == "exact" ? GridMode::Exact : GridMode::Official;
  tc.epochs = to_int(a, "--epochs", tc.epochs);
  tc.batch = to_int(a, "--batch", tc.batch);
  tc.lr.base = to_double(a, "--lr", tc.lr.base);
  tc.sgd.momentum = to_double(a, "--momentum", tc.sgd.momentum);
  tc.sgd.weight_decay = to_double(a, "--wd", tc.sgd.weight_decay);
  if (a.has("--schedule")) tc.lr.kind = parse_schedule(a.get("--schedule", ""));
  if (a.has("--milestones")) {
    tc.lr.milestones.clear();
    for (auto m : to_ints("--milestones", a.get("--milestones", ""))) tc.lr.milestones.push_back(double(m));
  }
  tc.lr.gamma = to_double(a, "--gamma", tc.lr.gamma);
  tc.out_dir = a.get("--out", "tasn-run");
  tc.resume = a.get("--resume", "");
  tc.progress = !a.has("--no-progress");
  tc.stop_after_epoch = to_int(a, "--stop-after-epoch", 0);
  tc.max_steps = to_int(a, "--max-steps", 0);
  s.train_size = to_int(a, "--train-size", s.train_size);
  s.test_size = to_int(a, "--test-size", s.test_size);
  TASN_CHECK_ARG(std::isfinite(tc.lr.base) && tc.lr.base > 0, "--lr must be finite and > 0, got ", tc.lr.base);
  TASN_CHECK_ARG(tc.sgd.momentum >= 0 && tc.sgd.momentum < 1, "--momentum must be in [0, 1), got ", tc.sgd.momentum);
  TASN_CHECK_ARG(tc.sgd.weight_decay >= 0 && std::isfinite(tc.sgd.weight_decay), "--wd must be finite and >= 0, got ",
                 tc.sgd.weight_decay);
  TASN_CHECK_ARG(to_int(a, "--dump-count", 8) >= 1, "--dump-count must be >= 1");
  if (a.has("--threads")) {
    const std::int64_t t = to_int(a, "--threads", 1);
    TASN_CHECK_ARG(t >= 1, "--threads must be >= 1, got ", t);
    cpu::set_num_threads(static_cast<int>(t));
  }
  const std::string which = a.get("--model", "both");
  TASN_CHECK_ARG(which == "both" || which == "tasn" || which == "baseline", "--model must be both, tasn or baseline, got \"",
                 which, "\"");
  TASN_CHECK_ARG(tc.resume.empty() || which != "both", "--resume FILE needs --model tasn or --model baseline");
  TASN_CHECK_ARG(!a.has("--eval-only") || !tc.resume.empty(), "--eval-only needs --resume FILE (the checkpoint to evaluate)");

  TASN_CHECK_ARG(!(a.has("--seeds") && a.has("--seed")), "give --seed or --seeds, not both");
  TASN_CHECK_ARG(!(a.has("--seeds") && !tc.resume.empty()), "--resume continues one run: use --seed, not --seeds");
  std::vector<std::uint64_t> seeds;
  if (a.has("--seeds"))
    for (auto v : to_ints("--seeds", a.get("--seeds", ""))) seeds.push_back(static_cast<std::uint64_t>(v));
  else
    seeds.push_back(static_cast<std::uint64_t>(to_int(a, "--seed", 1)));

  std::vector<std::vector<RunRow>> tables;
  for (std::uint64_t seed : seeds) {
    tc.seed = seed;
    const auto tdata = std::chrono::steady_clock::now();
    Data d = make_data(a, s);
    const double data_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - tdata).count();
    net.validate();
    std::printf("data: %s, made in %.1f s\n", d.description.c_str(), data_s);
    std::fflush(stdout);
    std::vector<RunRow> rows;
    for (const std::string m : {"baseline", "tasn"}) {
      if (which != "both" && which != m) continue;
      std::unique_ptr<Model> model;
      if (m == "tasn") model = std::make_unique<TasnNet>(net);
      else model = std::make_unique<BaselineNet>(net);
      init_model(*model, seed);
      for (auto& [prefix, ps] : model->stores()) {  // "master": part/master or baseline backbone; "att": attention net
        if (prefix == "master" && a.has("--weights")) load_backbone(*ps, a.get("--weights", ""));
        if (prefix == "att" && a.has("--att-weights")) load_backbone(*ps, a.get("--att-weights", ""));
      }
      TrainConfig run_cfg = tc;
      if (seeds.size() > 1) run_cfg.out_dir += "/seed-" + std::to_string(seed);
      RunRow row{m, {}};
      if (a.has("--eval-only")) {
        const auto t0 = std::chrono::steady_clock::now();
        load_checkpoint(tc.resume, *model, nullptr);
        row.result.final_eval = evaluate(*model, *d.eval, tc.eval_batch);
        row.result.report_accuracy = row.result.final_eval.accuracy[model->reported_head()];
        row.result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      } else {
        row.result = train_model(*model, *d.train, d.eval.get(), run_cfg, m);
        if (row.result.stopped_nonfinite) {
          std::fprintf(stderr, "%s\n", row.result.message.c_str());
          return 3;
        }
      }
      if (a.has("--dump-attention"))
        if (auto* t = dynamic_cast<TasnNet*>(model.get())) {
          const auto files = dump_attention(*t, *d.eval, to_int(a, "--dump-count", 8), a.get("--dump-attention", ""));
          std::printf("attention dumps: %zu PNGs in %s\n", files.size(), a.get("--dump-attention", "").c_str());
        }
      rows.push_back(std::move(row));
    }
    // the table
    std::printf("\nseed %llu: accuracy on the %s split%s (%s)\n", (unsigned long long)seed,
                a.get("--eval-split", "test").c_str(), a.has("--eval-only") ? " of the checkpoint" : "",
                d.description.c_str());
    std::printf("| model | accuracy | time | heads |\n|---|---|---|---|\n");
    for (const auto& r : rows) {
      std::string heads;
      const auto& e = r.result.final_eval;
      for (std::size_t h = 0; h < e.heads.size(); ++h) {
        char buf[64];
        std::snprintf(buf, sizeof buf, "%s%s %.1f%%", h ? ", " : "", e.heads[h].c_str(), 100 * e.accuracy[h]);
        heads += buf;
      }
      if (e.detail_rows >= 0) {
        char buf[96];
        std::snprintf(buf, sizeof buf, "; rows+cols on the detail: %.1f (uniform %.1f)", e.detail_rows, e.uniform_rows);
        heads += buf;
      }
      std::printf("| %s | %.1f %% | %s | %s |\n", r.model.c_str(), 100 * r.result.report_accuracy,
                  format_seconds(r.result.seconds).c_str(), heads.c_str());
    }
    std::fflush(stdout);
    tables.push_back(std::move(rows));
  }
  if (tables.size() > 1) {
    std::printf("\nmean over %zu seeds:\n", tables.size());
    for (std::size_t i = 0; i < tables.front().size(); ++i) {
      double acc = 0, t = 0;
      for (const auto& tb : tables) {
        acc += tb[i].result.report_accuracy;
        t += tb[i].result.seconds;
      }
      std::printf("  %-9s %.1f %%  %s\n", tables.front()[i].model.c_str(), 100 * acc / double(tables.size()),
                  format_seconds(t / double(tables.size())).c_str());
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  // The layers allocate their outputs per call; keep freed blocks in the heap instead of returning
  // them to the system, so that the next step does not page-fault them in again (measured: ~15 %
  // of a demo step was page faults and zeroing of fresh mappings).
  mallopt(M_MMAP_THRESHOLD, 1 << 30);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
  try {
    const Args a = parse(argc, argv);
    if (a.has("--help") || a.has("-h")) {
      std::fputs(kUsage, stdout);
      return 0;
    }
    return run(a);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "tasn_train: error: %s\n", e.what());
    return 2;
  }
}
