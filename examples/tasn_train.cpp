// examples/tasn_train.cpp - the TASN example trainer (README command 1). With no arguments it
// trains TASN and the uniform-resize baseline on the built-in generated fine-grained data on the
// CPU and prints their test accuracy and time. `--help` lists every option; docs/trainer.md
// explains them.
#include <malloc.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <cstdlib>
#include <iostream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "data/parse.h"
#include "io/file_io.h"
#include "nn/bf16_exec.h"
#include "train/diagnostics.h"
#include "train/memory.h"
#include "train/presets.h"
#include "train/run_folder.h"
#include "train/trainer.h"
#if defined(TASN_HAVE_CUDA_TRAINER)
#include "gpu/cuda_bf16_exec.h"
#include "gpu/cuda_exec.h"
#endif
#if defined(TASN_HAVE_MPI)
#include "dist/mpi_comm.h"
#endif
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
  --classes K                number of classes (cub: 200; list: required; generated data: 8, fixed)
  --verify-images            real data: decode every image before training (default: every file is
                             checked to be present with a readable image header)
  --train-size N --test-size N   generated data: images per split (demo 4000 / 1000)
  --eval-split test|val      evaluate on the test split (default) or on a validation split (generated
                             data: a third split; real data: every 10th training image held out)
  --epochs N --batch N --lr X --momentum X --wd X
  --schedule step|cosine|onecycle   --milestones E1,E2   --gamma X
  --seed N                   seed of everything (initialisation, order, detail channels, data)
  --seeds N1,N2,...          run the whole comparison once per seed and print every table
  --threads N                CPU threads, 1 .. 4 x the hardware threads (default: OpenMP's default)
  --loader-threads N         threads decoding and augmenting the images of a batch in parallel, 1 .. 4 x
                             the hardware threads (default: the hardware threads, at most 2 on the
                             CPU, at most 8 with --device cuda); the batches are the same for any count
  --backend B                convolution / batch-norm backend: auto (default: onednn where built),
                             onednn (oneDNN primitives) or reference (the Eigen im2col layers)
  --device D                 cpu (default), cuda (the whole step on GPU 0: cuDNN, cuBLAS and the
                             library's CUDA kernels; an error naming why when it cannot) or auto
                             (cuda when this build has it and a GPU is usable, else cpu)
  --precision P              fp32 (default, plain float math); tf32 (cuda: TF32 tensor cores in
                             convolutions and GEMMs; float storage and accumulation); bf16 (bf16
                             activations and weight copies, float master weights, statistics, TASN
                             operators and losses; on the CPU an emulation: slower, for accuracy studies)
  --out DIR                  metrics logs (MODEL-metrics.jsonl) and checkpoints (MODEL-last.safetensors);
                             locked while the run writes. A fresh run refuses a folder holding an
                             earlier run of the same model (see --resume, --overwrite). Default:
                             tasn-run, or tasn-run-2, -3, ... when that holds an earlier run.
  --overwrite                a fresh run may replace an earlier run's results in --out
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
  --comm auto|none|mpi|nccl  data parallelism (docs/distributed.md): auto (default) joins the ranks of
                             an MPI launch (mpirun -np N tasn_train ...): MPI between CPU processes,
                             NCCL between GPUs (--device cuda); none: one process. nccl also works
                             with one process (a GPU check of the NCCL path). --batch is the global
                             batch: each of N ranks loads batch / N images of it; only rank 0 writes
                             checkpoints, metrics and the progress bar
  --sync-bn                  batch norm over the whole global batch (statistics summed over the
                             ranks; the CPU reference math); default: per-rank statistics, as DDP
  --timing                   after training: images/s, where a step's time goes (data wait, upload,
                             forward with the TASN operators' share, backward, optimiser; device time
                             on a GPU) and the memory the model's context uses
)";

struct Args {
  std::map<std::string, std::string> kv;
  std::set<std::string> flags;
  std::string command;  // the command line, for the run folder's lock
  std::string get(const std::string& k, const std::string& d) const {
    auto it = kv.find(k);
    return it == kv.end() ? d : it->second;
  }
  bool has(const std::string& k) const { return kv.count(k) || flags.count(k); }
};

Args parse(int argc, char** argv) {
  static const std::set<std::string> flag_names = {"--eval-only", "--no-progress", "--help", "-h", "--no-teacher-grad",
                                                   "--overwrite", "--verify-images", "--timing", "--sync-bn"};
  static const std::set<std::string> value_names = {
      "--preset", "--model", "--data", "--data-root", "--list", "--classes", "--train-size", "--test-size",
      "--eval-split", "--epochs", "--batch", "--lr", "--momentum", "--wd", "--schedule", "--milestones", "--gamma",
      "--seed", "--seeds", "--threads", "--loader-threads", "--backend", "--device", "--precision", "--out", "--resume", "--weights", "--att-weights", "--dump-attention",
      "--dump-count", "--sampler-mode", "--dense", "--iters", "--beta", "--temperature", "--image", "--att-input",
      "--out-size", "--stop-after-epoch", "--max-steps", "--width", "--att-width", "--comm"};
  Args a;
  for (int i = 0; i < argc; ++i) a.command += (i ? " " : "") + std::string(argv[i]);
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    if (flag_names.count(k)) {
      a.flags.insert(k);
    } else if (value_names.count(k)) {
      TASN_CHECK_ARG(i + 1 < argc && std::string(argv[i + 1]).rfind("--", 0) != 0, "option ", k, " needs a value");
      TASN_CHECK_ARG(!a.kv.count(k), "option ", k, " is given twice");
      a.kv[k] = argv[++i];
    } else {
      throw InvalidArgument("unknown option \"" + k + "\" (see --help)");
    }
  }
  return a;
}

// An integer option in [lo, hi] (the default when absent).
std::int64_t int_opt(const Args& a, const std::string& k, std::int64_t d, std::int64_t lo, std::int64_t hi) {
  const std::string v = a.get(k, "");
  if (v.empty() && !a.kv.count(k)) return d;
  const std::int64_t x = data::parse_int(v, "option " + k);
  TASN_CHECK_ARG(x >= lo && x <= hi, "option ", k, " must be in [", lo, ", ", hi, "], got ", x);
  return x;
}
// A thread count: 1 .. min(4 x the hardware threads, cap), the message naming the machine's count.
std::int64_t thread_opt(const Args& a, const std::string& k, std::int64_t cap) {
  const std::int64_t hw = std::max<std::int64_t>(1, std::thread::hardware_concurrency());
  const std::int64_t hi = std::min<std::int64_t>(4 * hw, cap);
  const std::int64_t t = data::parse_int(a.get(k, ""), "option " + k);
  TASN_CHECK_ARG(t >= 1 && t <= hi, "option ", k, " must be in [1, ", hi, "] (this machine has ", hw,
                 " hardware threads), got ", t);
  return t;
}
double real_opt(const Args& a, const std::string& k, double d) {
  if (!a.kv.count(k)) return d;
  return data::parse_double(a.get(k, ""), "option " + k);
}
std::vector<std::int64_t> int_list(const Args& a, const std::string& k, std::int64_t lo, std::int64_t hi) {
  const std::string v = a.get(k, "");
  std::vector<std::int64_t> out;
  std::stringstream ss(v);
  for (std::string t; std::getline(ss, t, ',');) {
    std::int64_t x = 0;
    TASN_CHECK_ARG(data::parse_number(t, x), "option ", k, ": \"", v, "\" is not a comma-separated list of integers");
    TASN_CHECK_ARG(x >= lo && x <= hi, "option ", k, ": ", x, " is outside [", lo, ", ", hi, "]");
    out.push_back(x);
  }
  TASN_CHECK_ARG(!out.empty() && (v.empty() || v.back() != ','), "option ", k, ": \"", v,
                 "\" is not a comma-separated list of integers");
  return out;
}
std::string one_of(const Args& a, const std::string& k, const std::string& d, const std::set<std::string>& allowed) {
  const std::string v = a.get(k, d);
  std::string list;
  for (const auto& x : allowed) list += (list.empty() ? "" : ", ") + x;
  TASN_CHECK_ARG(allowed.count(v), k, " must be one of ", list, ", got \"", v, "\"");
  return v;
}
// Options that would be silently ignored are refused instead.
void no_effect(const Args& a, const std::vector<std::string>& keys, const std::string& why) {
  for (const auto& k : keys) TASN_CHECK_ARG(!a.has(k), "option ", k, " has no effect ", why);
}
void check_readable(const std::string& path, const std::string& what) {
  TASN_CHECK_ARG(!path.empty(), what, " must not be empty");
  if (::access(path.c_str(), R_OK) != 0) io::fail("cannot read " + what, path, errno);
}

// ---- data parallelism (docs/distributed.md) ----------------------------------------------------

// The job's host communicator, made first in run(); main() takes every rank down through it when
// one fails (an error on one rank must not leave the others waiting in a collective).
std::unique_ptr<dist::Communicator> g_comm;

// The host communicator --comm asks for: MPI when the process was started by an MPI launcher
// with several ranks (auto, mpi, nccl) or --comm mpi; else a single process. The checks name why
// a combination cannot work instead of starting N independent runs on the same folder.
std::unique_ptr<dist::Communicator> make_comm(const Args& a) {
  const std::string want = one_of(a, "--comm", "auto", {"auto", "none", "mpi", "nccl"});
  const dist::LaunchInfo l = dist::launch_info();
  if (want == "none") {
    TASN_CHECK_ARG(l.size == 1, "--comm none, but a launcher started this program as one of several ranks (",
                   l.launcher, "; they would train apart and write the same folder): drop --comm none");
    return std::make_unique<dist::SingleProcess>();
  }
  if (l.size == 1 && want != "mpi") return std::make_unique<dist::SingleProcess>();
#if defined(TASN_HAVE_MPI)
  auto c = dist::make_mpi_communicator();
  // A launcher of another MPI (MPICH's mpiexec with an Open MPI build, say) starts N singletons:
  // each would be a rank 0 of 1 and write the same folder.
  TASN_CHECK_ARG(l.size <= 1 || c->size() == l.size, "the launcher announced ", l.size, " ranks (", l.launcher,
                 ") but MPI sees ", c->size(), ": launch with the mpirun of the MPI this program was built with");
  return c;
#else
  throw InvalidArgument(l.size != 1 ? tasn::detail::concat("a launcher started this program as one of several ranks (",
                                                          l.launcher, "), but this build has no MPI (install "
                                                          "Debian's libopenmpi-dev and rebuild)")
                                   : std::string("--comm mpi: this build has no MPI (install Debian's libopenmpi-dev "
                                                 "and rebuild)"));
#endif
}

// Everything decided, and checked, before any data is made.
struct Plan {
  Preset s;
  nn::Backend backend = nn::default_backend<float>();
  std::string device = "cpu", device_note;  // cpu or cuda; why auto chose what it chose
  bool tf32 = false;
  bool bf16 = false;  // bf16 activations (CPU: emulated, nn/bf16_exec.h)
  std::string which, kind, split;
  std::vector<std::uint64_t> seeds;
  bool eval_only = false;
  bool nccl = false;  // gradients all-reduced by NCCL on the GPU
};

Plan make_plan(const Args& a, dist::Communicator& comm) {
  Plan p;
  Preset& s = p.s;
  s = preset(one_of(a, "--preset", "demo", {"demo", "paper"}));
  NetConfig& net = s.net;
  TrainConfig& tc = s.train;
  p.which = one_of(a, "--model", "both", {"both", "tasn", "baseline"});
  p.backend = nn::parse_backend(a.get("--backend", "auto"));
  // The device before anything else is prepared: --device cuda without a usable GPU stops here.
  {
    const std::string dev = one_of(a, "--device", "cpu", {"cpu", "cuda", "auto"});
#if defined(TASN_HAVE_CUDA_TRAINER)
    std::string problem = dev == "cpu" ? "" : nn::cuda_device_problem(comm.local_rank());  // this rank's GPU
#else
    std::string problem = "this build has no CUDA trainer (it needs the CUDA toolkit and cuDNN 9 at build time)";
#endif
    if (dev == "cuda") TASN_CHECK_ARG(problem.empty(), "--device cuda: ", problem);
    if (dev == "auto" && comm.size() > 1) {  // one device for all ranks: cuda only when every rank has its GPU
      std::uint64_t lacking = problem.empty() ? 0 : 1;
      comm.allreduce_max(&lacking, 1);
      if (lacking && problem.empty()) problem = "another rank has no usable GPU";
    }
    p.device = dev == "auto" ? (problem.empty() ? "cuda" : "cpu") : dev;
    if (dev == "auto") p.device_note = problem.empty() ? "auto: a usable GPU" : "auto: " + problem;
    const std::string prec = one_of(a, "--precision", "fp32", {"fp32", "tf32", "bf16"});
    if (p.device == "cpu") {
      TASN_CHECK_ARG(prec != "tf32", "--precision tf32 needs --device cuda (TF32 is a tensor-core format)");
    } else {
      no_effect(a, {"--backend"}, "with --device cuda (the CPU convolution backend)");
    }
    p.tf32 = prec == "tf32";
    p.bf16 = prec == "bf16";
#if defined(TASN_HAVE_CUDA_TRAINER)
    if (p.device == "cuda" && p.bf16) {  // before any data is made, as for the device itself
      const std::string why = nn::bf16_device_problem(comm.local_rank());
      TASN_CHECK_ARG(why.empty(), "--device cuda: ", why);
    }
#endif
    const std::string want = a.get("--comm", "auto");
    if (p.device == "cuda") {
      TASN_CHECK_ARG(want != "mpi" || comm.size() == 1, "--comm mpi with --device cuda: the gradients live on the GPU; "
                                                        "use --comm nccl (or auto)");
      p.nccl = want == "nccl" || (want == "auto" && comm.size() > 1);
    } else {
      TASN_CHECK_ARG(want != "nccl", "--comm nccl needs --device cuda (NCCL reduces GPU memory); the CPU uses mpi");
    }
  }
  tc.comm = &comm;
  tc.sync_bn = a.has("--sync-bn");
  TASN_CHECK_ARG(!(tc.sync_bn && p.device == "cuda"), "--sync-bn is CPU only (cuDNN's batch norm computes per-GPU "
                                                      "statistics); drop it with --device cuda");
  p.kind = one_of(a, "--data", "synthetic", {"synthetic", "cub", "list"});
  p.split = one_of(a, "--eval-split", "test", {"test", "val"});
  p.eval_only = a.has("--eval-only");
  constexpr std::int64_t kBig = std::int64_t(1) << 40;

  if (p.which == "baseline")
    no_effect(a, {"--beta", "--dense", "--iters", "--temperature", "--sampler-mode", "--att-input", "--att-width",
                  "--att-weights", "--no-teacher-grad", "--dump-attention", "--dump-count"},
              "with --model baseline (TASN options)");
  if (p.kind == "synthetic") {
    no_effect(a, {"--classes"}, "with generated data (8 classes, fixed)");
    no_effect(a, {"--data-root", "--list", "--verify-images"}, "with generated data (--data synthetic)");
  } else {
    no_effect(a, {"--train-size", "--test-size"}, "with --data " + p.kind + " (the files decide)");
    if (p.kind == "cub") no_effect(a, {"--list"}, "with --data cub");
  }
  if (!a.has("--dump-attention")) no_effect(a, {"--dump-count"}, "without --dump-attention");

  net.image = int_opt(a, "--image", net.image, 8, kBig);
  net.att_input = int_opt(a, "--att-input", net.att_input, 8, kBig);
  net.out = int_opt(a, "--out-size", net.out, 8, kBig);
  net.master_backbone.width = real_opt(a, "--width", net.master_backbone.width);
  net.att_backbone.width = real_opt(a, "--att-width", net.att_backbone.width);
  net.dense = real_opt(a, "--dense", net.dense);
  net.iters = static_cast<int>(int_opt(a, "--iters", net.iters, 0, 1000));
  net.beta = real_opt(a, "--beta", net.beta);
  net.temperature = real_opt(a, "--temperature", net.temperature);
  if (a.has("--no-teacher-grad")) net.teacher_grad = false;
  net.mode = one_of(a, "--sampler-mode", "exact", {"exact", "official"}) == "exact" ? GridMode::Exact : GridMode::Official;
  if (p.kind == "cub") net.classes = int_opt(a, "--classes", 200, 2, kBig);
  if (p.kind == "list") {
    TASN_CHECK_ARG(a.has("--list") && a.has("--classes"), "--data list needs --list FILE and --classes K");
    net.classes = int_opt(a, "--classes", 0, 2, kBig);
  }
  if (p.kind == "synthetic") net.classes = data::SyntheticConfig{}.classes;
  net.validate();

  tc.epochs = int_opt(a, "--epochs", tc.epochs, 1, kBig);
  tc.batch = int_opt(a, "--batch", tc.batch, 2, kBig);
  tc.lr.base = real_opt(a, "--lr", tc.lr.base);
  tc.sgd.momentum = real_opt(a, "--momentum", tc.sgd.momentum);
  tc.sgd.weight_decay = real_opt(a, "--wd", tc.sgd.weight_decay);
  if (a.has("--schedule")) tc.lr.kind = parse_schedule(a.get("--schedule", ""));
  if (tc.lr.kind != Schedule::Step)
    no_effect(a, {"--milestones", "--gamma"}, std::string("with --schedule ") + to_string(tc.lr.kind));
  if (a.has("--milestones")) {
    tc.lr.milestones.clear();
    for (auto m : int_list(a, "--milestones", 1, kBig)) tc.lr.milestones.push_back(double(m));
  }
  tc.lr.gamma = real_opt(a, "--gamma", tc.lr.gamma);
  tc.resume = a.get("--resume", "");
  tc.overwrite = a.has("--overwrite");
  tc.progress = !a.has("--no-progress");
  tc.timing = a.has("--timing");
  tc.command = a.command;
  tc.stop_after_epoch = int_opt(a, "--stop-after-epoch", 0, 0, tc.epochs);
  tc.max_steps = int_opt(a, "--max-steps", 0, 0, kBig);
  tc.validate();
  s.train_size = int_opt(a, "--train-size", s.train_size, 1, kBig);
  s.test_size = int_opt(a, "--test-size", s.test_size, 1, kBig);
  if (p.kind == "synthetic" && !p.eval_only)
    TASN_CHECK_ARG(s.train_size >= tc.batch, "--train-size ", s.train_size, " is smaller than one batch (--batch ",
                   tc.batch, ")");
  if (a.has("--dump-attention")) {
    TASN_CHECK_ARG(!a.get("--dump-attention", "").empty(), "--dump-attention needs a folder, got \"\"");
    int_opt(a, "--dump-count", 8, 1, kBig);
  }
  // Several ranks on one machine share its cores: by default each takes its share.
  const std::int64_t share = std::max<std::int64_t>(1, data::default_workers() / comm.local_size());
  if (a.has("--threads")) cpu::set_num_threads(static_cast<int>(thread_opt(a, "--threads", INT64_MAX)));
  else if (comm.local_size() > 1)
    cpu::set_num_threads(static_cast<int>(std::max<std::int64_t>(
        1, std::int64_t(std::thread::hardware_concurrency()) / comm.local_size())));
  if (a.has("--loader-threads")) {
    tc.loader_threads = thread_opt(a, "--loader-threads", data::BatchLoader::kMaxWorkers);
  } else if (p.device == "cuda") {
    tc.loader_threads = share;  // the cores are free while the GPU computes
  } else if (comm.local_size() > 1) {
    tc.loader_threads = std::min(tc.loader_threads, share);
  }
  TASN_CHECK_ARG(p.which != "both" || tc.resume.empty(), "--resume FILE needs --model tasn or --model baseline");
  TASN_CHECK_ARG(!p.eval_only || !tc.resume.empty(), "--eval-only needs --resume FILE (the checkpoint to evaluate)");
  TASN_CHECK_ARG(!(p.eval_only && tc.overwrite), "--overwrite has no effect with --eval-only (nothing is written)");
  TASN_CHECK_ARG(!(a.has("--seeds") && a.has("--seed")), "give --seed or --seeds, not both");
  TASN_CHECK_ARG(!(a.has("--seeds") && !tc.resume.empty()), "--resume continues one run: use --seed, not --seeds");
  if (a.has("--seeds")) {
    for (auto v : int_list(a, "--seeds", 0, kBig)) {
      TASN_CHECK_ARG(std::find(p.seeds.begin(), p.seeds.end(), std::uint64_t(v)) == p.seeds.end(), "option --seeds: seed ",
                     v, " is given twice");
      p.seeds.push_back(static_cast<std::uint64_t>(v));
    }
  } else {
    p.seeds.push_back(static_cast<std::uint64_t>(int_opt(a, "--seed", 1, 0, kBig)));
  }
  if (a.kv.count("--out")) TASN_CHECK_ARG(!a.get("--out", "").empty(), "--out needs a folder, got \"\"");
  if (!tc.resume.empty()) check_readable(tc.resume, "the checkpoint (--resume)");
  for (const char* k : {"--weights", "--att-weights", "--list"})
    if (a.has(k)) check_readable(a.get(k, ""), std::string("the file of ") + k);

  // the sizes must fit in this machine's memory (checked before anything is allocated)
  const bool tasn = p.which != "baseline", baseline = p.which != "tasn";
  const std::int64_t cached = p.kind == "synthetic" ? (p.eval_only ? 0 : s.train_size) + s.test_size : 0;
  const MemoryEstimate est = estimate_memory(net, tc.batch / comm.size(), cached, tasn, baseline);
  const double ram = physical_memory_bytes();
  TASN_CHECK_ARG(ram <= 0 || est.total() <= ram, "this run needs about ", format_bytes(est.total()),
                 " of memory (generated data ", format_bytes(est.data), ", parameters with gradients and momentum ",
                 format_bytes(est.params), ", one step of batch ", tc.batch, " at image ", net.image, ", output ",
                 net.out, ": ", format_bytes(est.step), "), more than this machine's ", format_bytes(ram),
                 ": use smaller sizes (--image, --out-size, --train-size, --batch, --width)");
  return p;
}

struct Data {
  std::unique_ptr<Dataset> train, eval;
  std::string description;
};

Data make_data(const Args& a, const Plan& p, std::uint64_t seed) {
  Data d;
  const Preset& s = p.s;
  if (p.kind == "synthetic") {
    data::SyntheticConfig sc;
    sc.size = s.net.image;
    sc.patch = std::max<std::int64_t>(4, s.net.image / 6);  // 16 px at the demo's 96
    sc.seed = seed;
    // --eval-only trains nothing: the training split is not made (a one-image stand-in)
    d.train = std::make_unique<SyntheticDataset>(sc, data::Split::Train, p.eval_only ? 1 : s.train_size);
    d.eval = std::make_unique<SyntheticDataset>(sc, p.split == "val" ? data::Split::Val : data::Split::Test, s.test_size);
    std::ostringstream o;
    o << "generated fine-grained data (seed " << sc.seed << ", " << s.train_size << " train / " << s.test_size << " "
      << p.split << " images, " << sc.size << " px, " << sc.classes << " classes)";
    d.description = o.str();
    return d;
  }
#if defined(TASN_HAVE_STB)
  std::vector<data::ImageRecord> recs;
  if (p.kind == "cub") recs = data::read_cub(a.get("--data-root", ""), s.net.classes);
  else recs = data::read_list(a.get("--list", ""), a.get("--data-root", "."), s.net.classes);
  FolderSplits fs = folder_datasets(recs, s.net.image, seed, p.split == "val", a.has("--verify-images"));
  d.description = p.kind + " data (" + std::to_string(fs.train->size()) + " train / " + std::to_string(fs.eval->size()) +
                  " " + p.split + " images, " + std::to_string(s.net.classes) + " classes)";
  d.train = std::move(fs.train);
  d.eval = std::move(fs.eval);
  return d;
#else
  (void)a;
  throw InvalidArgument("--data " + p.kind + " needs JPEG/PNG decoding: rebuild with Debian's libstb-dev installed");
#endif
}

// The run folders (one per seed), locked and claimed for every model to train, before any data
// is made. With no --out given, "tasn-run" or the first of "tasn-run-2", "-3", ... that is free.
std::vector<std::unique_ptr<RunFolder>> open_run_folders(const Args& a, const Plan& p, std::string& base) {
  const bool given = a.kv.count("--out") > 0;
  const TrainConfig& tc = p.s.train;
  const auto open = [&](const std::string& b) {
    std::vector<std::unique_ptr<RunFolder>> v;
    for (std::uint64_t seed : p.seeds) {
      const std::string dir = p.seeds.size() > 1 ? b + "/seed-" + std::to_string(seed) : b;
      v.push_back(std::make_unique<RunFolder>(dir, a.command));
      for (const std::string m : {"baseline", "tasn"})
        if (p.which == "both" || p.which == m) v.back()->claim(m, tc.resume, tc.overwrite);
    }
    return v;
  };
  base = a.get("--out", "tasn-run");
  if (given || !tc.resume.empty() || tc.overwrite) return open(base);
  for (int k = 1;; ++k) {
    const std::string b = k == 1 ? base : base + "-" + std::to_string(k);
    try {
      auto v = open(b);
      if (k > 1) std::printf("output folder: %s (%s and the folders before it hold earlier runs or are in use)\n", b.c_str(), base.c_str());
      base = b;
      return v;
    } catch (const io::IoError&) {
      throw;
    } catch (const InvalidArgument&) {
      TASN_CHECK_ARG(k < 1000, "no free output folder among ", base, " .. ", b, ": give --out DIR");
    }
  }
}

struct RunRow {
  std::string model;
  TrainResult result;
};

int run(const Args& a) {
  g_comm = make_comm(a);
  dist::Communicator& comm = *g_comm;
  // Only rank 0 reports: the others' standard output goes nowhere (errors still reach stderr).
  if (!comm.leader() && !std::freopen("/dev/null", "w", stdout))
    throw io::IoError(std::string("rank ") + std::to_string(comm.rank()) + ": cannot redirect the standard output to /dev/null: " + std::strerror(errno));
  const Plan plan = make_plan(a, comm);
  Preset s = plan.s;
  const NetConfig& net = s.net;
  TrainConfig& tc = s.train;
  std::string out_base;
  std::vector<std::unique_ptr<RunFolder>> folders;
  if (!plan.eval_only && comm.leader()) {
    folders = open_run_folders(a, plan, out_base);
    for (const auto& f : folders)
      for (const auto& r : f->removed()) std::printf("removed %s (a temporary file of an interrupted write)\n", r.c_str());
  }
  if (a.has("--dump-attention") && comm.leader()) {
    const std::string dir = a.get("--dump-attention", "");
    std::error_code ec;
    std::filesystem::create_directories(dir, ec);
    if (ec) throw io::IoError("cannot create the attention dump folder " + dir + ": " + ec.message());
    if (::access(dir.c_str(), W_OK) != 0) io::fail("cannot write the attention dump folder", dir, errno);
  }

  if (!plan.device_note.empty()) std::printf("device: %s (%s)\n", plan.device.c_str(), plan.device_note.c_str());
  if (comm.size() > 1 || plan.nccl)
    std::printf("data parallel: %s; gradients summed by %s; global batch %lld = %d x %lld; batch norm %s\n",
                comm.describe().c_str(), plan.nccl ? "NCCL" : "MPI", static_cast<long long>(tc.batch), comm.size(),
                static_cast<long long>(tc.batch / comm.size()), tc.sync_bn ? "synchronised" : "per rank");
  std::printf("backend: %s%s, %d threads, %lld loader threads\n", nn::to_string(plan.backend),
              nn::onednn_built() ? "" : " (this build has no oneDNN: install libdnnl-dev and rebuild for the fast backend)",
              cpu::num_threads(), static_cast<long long>(tc.loader_threads));
  std::vector<std::vector<RunRow>> tables;
  for (std::size_t si = 0; si < plan.seeds.size(); ++si) {
    const std::uint64_t seed = plan.seeds[si];
    tc.seed = seed;
    const auto tdata = std::chrono::steady_clock::now();
    Data d = make_data(a, plan, seed);
    const double data_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - tdata).count();
    std::printf("data: %s, made in %.1f s\n", d.description.c_str(), data_s);
    std::fflush(stdout);
    std::vector<RunRow> rows;
    for (const std::string m : {"baseline", "tasn"}) {
      if (plan.which != "both" && plan.which != m) continue;
      std::unique_ptr<Model> model;
#if defined(TASN_HAVE_CUDA_TRAINER)
      if (plan.device == "cuda") {
        nn::CudaOptions co;
        co.tf32 = plan.tf32;
        co.device = comm.local_rank();  // one rank per GPU
        co.nccl = plan.nccl;
        if (plan.bf16) {
          if (m == "tasn") model = std::make_unique<BasicTasnNet<float, nn::CudaBf16Exec>>(net, co);
          else model = std::make_unique<BasicBaselineNet<float, nn::CudaBf16Exec>>(net, co);
        } else {
          if (m == "tasn") model = std::make_unique<BasicTasnNet<float, nn::CudaExec>>(net, co);
          else model = std::make_unique<BasicBaselineNet<float, nn::CudaExec>>(net, co);
        }
      }
#endif
      if (!model && plan.bf16) {
        if (m == "tasn") model = std::make_unique<BasicTasnNet<float, nn::CpuBf16Exec>>(net, plan.backend);
        else model = std::make_unique<BasicBaselineNet<float, nn::CpuBf16Exec>>(net, plan.backend);
      }
      if (!model) {
        if (m == "tasn") model = std::make_unique<TasnNet>(net, plan.backend);
        else model = std::make_unique<BaselineNet>(net, plan.backend);
      }
      std::printf("%s on %s\n", m.c_str(), model->device().c_str());
      init_model(*model, seed);
      for (auto& [prefix, ps] : model->stores()) {  // "master": part/master or baseline backbone; "att": attention net
        if (prefix == "master" && a.has("--weights")) load_backbone(*ps, a.get("--weights", ""));
        if (prefix == "att" && a.has("--att-weights")) load_backbone(*ps, a.get("--att-weights", ""));
      }
      RunRow row{m, {}};
      if (plan.eval_only) {
        const auto t0 = std::chrono::steady_clock::now();
        load_checkpoint(tc.resume, *model, nullptr);
        row.result.final_eval = evaluate(*model, *d.eval, tc.eval_batch, tc.loader_threads, tc.comm);
        row.result.report_accuracy = row.result.final_eval.accuracy[model->reported_head()];
        row.result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      } else {
        TrainConfig run_cfg = tc;
        run_cfg.out_dir = comm.leader() ? folders[si]->dir() : "";  // only rank 0 writes
        row.result = train_model(*model, *d.train, d.eval.get(), run_cfg, m, comm.leader() ? folders[si].get() : nullptr);
        if (row.result.stopped_nonfinite) {  // every rank stops alike; rank 0 says why
          if (comm.leader()) std::fprintf(stderr, "%s\n", row.result.message.c_str());
          return 3;
        }
      }
      if (a.has("--dump-attention") && model->attention_views() && comm.leader()) {  // models with attention maps (TASN)
        const auto files = dump_attention(*model, *d.eval, int_opt(a, "--dump-count", 8, 1, INT64_MAX), a.get("--dump-attention", ""));
        std::printf("attention dumps: %zu PNGs in %s\n", files.size(), a.get("--dump-attention", "").c_str());
      }
      rows.push_back(std::move(row));
    }
    // the table
    std::printf("\nseed %llu: accuracy on the %s split%s (%s)\n", (unsigned long long)seed, plan.split.c_str(),
                plan.eval_only ? " of the checkpoint" : "", d.description.c_str());
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
  if (!out_base.empty()) std::printf("results: %s\n", out_base.c_str());
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
    const int rc = run(a);
    g_comm.reset();  // MPI_Finalize (every rank gets here, or none: a failing rank aborts the job)
    // the table and the evaluation lines are results too: a failed write of them is an error
    if (std::fflush(stdout) != 0 || std::ferror(stdout)) {
      std::fprintf(stderr, "tasn_train: error: cannot write the standard output: %s\n", std::strerror(errno));
      return 2;
    }
    return rc;
  } catch (const std::exception& e) {
    if (g_comm && g_comm->size() > 1) {  // take the other ranks down: they may wait in a collective
      std::fprintf(stderr, "tasn_train: rank %d of %d: error: %s\n", g_comm->rank(), g_comm->size(), e.what());
      std::fflush(stderr);
      g_comm->abort(2);
    }
    std::fprintf(stderr, "tasn_train: error: %s\n", e.what());
    return 2;
  }
}
