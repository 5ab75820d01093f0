// bench/bench_train_step.cpp - wall time of one training step of the example trainer (TASN or the
// baseline, demo or paper preset): Model::train_step (forward + backward of every loss) plus the
// SGD update, as tasn_train runs them. A plain program printing one JSON object, not a Google
// Benchmark, so that bench/compare_train_step.py can interleave it with the PyTorch
// transliteration (bench/torch_train_step.py) round by round on a shared machine.
//
//   bench_train_step --preset demo --model tasn --backend onednn --batch 32 --steps 20 --warmup 3 --threads 2
//   bench_train_step --preset demo --model tasn --dump-names names.txt --steps 0
//
// --dump-names writes every parameter and buffer of the model as "name shape trainable" lines
// (shape as d0,d1,...; trainable 1 / 0), the list the PyTorch script checks its state_dict
// against before it times anything. Images are the trainer's own generated data (data/synthetic.h
// at the preset's image side, normalised as the trainer does), so the attention maps and sampler
// grids are those of a real run; labels are in range.
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#if defined(TASN_HAVE_DNNL)
#include <oneapi/dnnl/dnnl.h>
#endif

#include "data/synthetic.h"
#include "tasn/core/parallel.h"
#include "train/checkpoint.h"
#include "train/model.h"
#include "train/optim.h"
#include "train/presets.h"

namespace {

using Clock = std::chrono::steady_clock;

// Peak resident set of this process so far, MiB (Linux reports ru_maxrss in KiB).
double peak_rss_mib() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return double(u.ru_maxrss) / 1024.0;
}

// Current resident set, MiB (/proc/self/statm: pages); -1 where unavailable.
double rss_now_mib() {
  std::ifstream f("/proc/self/statm");
  long long size = 0, resident = 0;
  if (!(f >> size >> resident)) return -1;
  return double(resident) * double(sysconf(_SC_PAGESIZE)) / (1024.0 * 1024.0);
}

[[noreturn]] void usage(const std::string& why) {
  std::cerr << "bench_train_step: " << why << "\n"
            << "usage: bench_train_step [--preset demo|paper] [--model tasn|baseline] [--backend reference|onednn|auto]\n"
               "                        [--batch N] [--steps S] [--warmup W] [--threads T] [--lr LR] [--seed K]\n"
               "                        [--dump-names FILE]\n";
  std::exit(2);
}

std::int64_t to_int(const std::string& flag, const std::string& v, std::int64_t lo) {
  char* end = nullptr;
  const long long x = std::strtoll(v.c_str(), &end, 10);
  if (v.empty() || *end != '\0' || x < lo) usage(flag + " needs an integer >= " + std::to_string(lo) + ", got \"" + v + "\"");
  return x;
}

std::string shape_csv(const std::vector<std::int64_t>& s) {
  std::string r;
  for (std::size_t i = 0; i < s.size(); ++i) r += (i ? "," : "") + std::to_string(s[i]);
  return r;
}

double median(std::vector<double> v) {
  if (v.empty()) return std::nan("");
  std::sort(v.begin(), v.end());
  const std::size_t m = v.size() / 2;
  return v.size() % 2 ? v[m] : 0.5 * (v[m - 1] + v[m]);
}

}  // namespace

int main(int argc, char** argv) {
  using namespace tasn;
  std::map<std::string, std::string> a = {{"--preset", "demo"}, {"--model", "tasn"}, {"--backend", "auto"},
                                          {"--steps", "10"},    {"--warmup", "2"},   {"--seed", "1"}};
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    if (k == "-h" || k == "--help") usage("help");
    if (k.rfind("--", 0) != 0 || i + 1 >= argc) usage("bad argument \"" + k + "\" (every option takes a value)");
    static const char* known[] = {"--preset", "--model", "--backend", "--batch", "--steps", "--warmup",
                                  "--threads", "--lr",    "--seed",    "--dump-names"};
    if (std::none_of(std::begin(known), std::end(known), [&](const char* s) { return k == s; })) usage("unknown option " + k);
    a[k] = argv[++i];
  }
  try {
    const train::Preset p = train::preset(a["--preset"]);
    const std::string which = a["--model"];
    if (which != "tasn" && which != "baseline") usage("--model must be tasn or baseline, got \"" + which + "\"");
    const nn::Backend backend = nn::parse_backend(a["--backend"]);
    const std::int64_t N = a.count("--batch") ? to_int("--batch", a["--batch"], 1) : p.train.batch;
    const std::int64_t steps = to_int("--steps", a["--steps"], 0), warmup = to_int("--warmup", a["--warmup"], 0);
    if (a.count("--threads")) cpu::set_num_threads(static_cast<int>(to_int("--threads", a["--threads"], 1)));
    // A small fixed learning rate (the demo's one-cycle schedule starts at base / 25): the timed
    // steps must stay finite, or a diverged model would skip most of its work and look fast.
    const double lr = a.count("--lr") ? std::stod(a["--lr"]) : p.train.lr.base / 25;
    const std::uint64_t seed = static_cast<std::uint64_t>(to_int("--seed", a["--seed"], 0));
    const double rss_start = rss_now_mib();

    std::unique_ptr<train::Model> m;
    if (which == "tasn")
      m = std::make_unique<train::TasnNet>(p.net, backend);
    else
      m = std::make_unique<train::BaselineNet>(p.net, backend);
    train::init_model(*m, seed);

    if (a.count("--dump-names")) {
      std::ofstream f(a["--dump-names"]);
      for (const auto& e : m->params().table())
        f << e.name << " " << shape_csv(e.shape) << " " << (e.trainable ? 1 : 0) << "\n";
      if (!f) throw std::runtime_error("cannot write " + a["--dump-names"]);
    }

    // One batch of the trainer's generated images at the preset's side, normalised like
    // train/datasets.h does ((x - 0.5) * 4); labels folded into the preset's classes.
    data::SyntheticConfig sc;
    sc.size = p.net.image;
    sc.seed = seed;
    const std::int64_t per = 3 * p.net.image * p.net.image;
    std::vector<float> images(static_cast<std::size_t>(N * per));
    std::vector<std::int64_t> labels(static_cast<std::size_t>(N));
    for (std::int64_t i = 0; i < N; ++i) {
      const data::SyntheticSample s = data::make_sample(sc, data::Split::Train, i);
      for (std::int64_t k = 0; k < per; ++k) images[i * per + k] = (s.image[k] - 0.5f) * 4.0f;
      labels[i] = s.label % p.net.classes;
    }

    train::Sgd opt(m->params(), p.train.sgd);
    const double rss_model = rss_now_mib();
    std::vector<double> ms;
    double first_loss = std::nan(""), last_loss = std::nan("");
    for (std::int64_t s = 0; s < warmup + steps; ++s) {
      const auto t0 = Clock::now();
      const train::StepStats& st = m->train_step(images, labels, seed * 1000003u + std::uint64_t(s));
      const double total = st.total;
      const bool ok = std::isfinite(total) && opt.step(lr, 1.0 / double(N));
      const double dt = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
      if (!ok)
        throw std::runtime_error("step " + std::to_string(s) + " is not finite (loss " + std::to_string(total) +
                                 "): a diverged step is not a timing; lower --lr");
      if (s == 0) first_loss = total;
      last_loss = total;
      if (s >= warmup) ms.push_back(dt);
    }
    const double med = median(ms);
    const double mn = ms.empty() ? std::nan("") : *std::min_element(ms.begin(), ms.end());
    double mean = 0;
    for (double x : ms) mean += x / double(ms.size());
    std::int64_t params = 0;
    for (const auto& e : m->params().table())
      if (e.trainable) params += e.numel;

    std::string dnnl_ver = "none";
#if defined(TASN_HAVE_DNNL)
    if (const dnnl_version_t* v = dnnl_version())
      dnnl_ver = std::to_string(v->major) + "." + std::to_string(v->minor) + "." + std::to_string(v->patch);
#endif
    auto num = [](double x) {
      if (!std::isfinite(x)) return std::string("null");
      std::ostringstream o;
      o.precision(6);
      o << x;
      return o.str();
    };
    std::ostringstream j;
    j << "{\"impl\": \"tasn-cpp\", \"backend\": \"" << nn::to_string(backend) << "\", \"preset\": \"" << a["--preset"]
      << "\", \"model\": \"" << which << "\", \"batch\": " << N << ", \"threads\": " << cpu::num_threads()
      << ", \"onednn_built\": " << (nn::onednn_built() ? "true" : "false") << ", \"onednn_version\": \""
      << dnnl_ver << "\", \"compiler\": \"" << __VERSION__ << "\", \"hardware_threads\": " << std::thread::hardware_concurrency() << ", \"warmup\": " << warmup
      << ", \"steps\": " << steps << ", \"lr\": " << num(lr) << ", \"trainable_params\": " << params
      << ", \"median_ms\": " << num(med) << ", \"min_ms\": " << num(mn) << ", \"mean_ms\": " << num(steps ? mean : NAN)
      << ", \"images_per_s\": " << num(1000.0 * double(N) / med) << ", \"peak_rss_mib\": " << num(peak_rss_mib())
      << ", \"rss_start_mib\": " << num(rss_start) << ", \"rss_model_mib\": " << num(rss_model)
      << ", \"first_loss\": " << num(first_loss) << ", \"last_loss\": " << num(last_loss) << ", \"step_ms\": [";
    for (std::size_t i = 0; i < ms.size(); ++i) j << (i ? ", " : "") << num(ms[i]);
    j << "]}";
    std::cout << j.str() << std::endl;
  } catch (const std::exception& e) {
    std::cerr << "bench_train_step: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
