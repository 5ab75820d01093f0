// bench/bench_loader.cpp - the example trainer's data loading on real JPEG files: images/s of
// decode (stb) + preprocess to 512 px (the paper preset: shorter side resized to 512, random 512
// crop, flip, mean removed; train/folder_data.h) through the batch loader's worker pool
// (data/batch_loader.h), for 1, 2 and all hardware threads, and each against 1 worker measured
// in the same run (x_1_worker). Also one core's decode alone and preprocess alone, to size the
// cores a GPU step needs (docs/trainer.md, "Data loading").
//
// The images are written once per run: 64 training (+ 1 test) JPEGs of 500 x 375, the CUB size,
// quality 90, with smooth content (gradients, discs, a little noise) so that their size and
// decode cost are those of photographs (~40 KB), not of noise; removed at exit.
#include <benchmark/benchmark.h>
#include <malloc.h>
#include <stb/stb_image_write.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "data/batch_loader.h"
#include "data/image_folder.h"
#include "tasn/core/random.h"
#include "train/folder_data.h"

namespace {

namespace fs = std::filesystem;
namespace td = tasn::data;
using Clock = std::chrono::steady_clock;

constexpr int kImages = 64, kW = 500, kH = 375, kQuality = 90;
constexpr std::int64_t kSide = 512, kBatch = 16;

// The JPEG folder and the trainer's data set over it, made on first use, removed at exit.
struct Images {
  fs::path dir;
  std::vector<td::ImageRecord> recs;
  std::unique_ptr<tasn::train::Dataset> train;
  std::uintmax_t bytes = 0;

  Images() {
    dir = fs::temp_directory_path() / ("tasn_bench_loader_" + std::to_string(::getpid()));
    fs::remove_all(dir);
    fs::create_directories(dir);
    std::vector<unsigned char> rgb(static_cast<std::size_t>(kW) * kH * 3);
    for (int k = 0; k <= kImages; ++k) {  // the last one is the (required) test split
      const double cy = kH * (0.3 + 0.4 * ((k * 37) % 11) / 10.0), cx = kW * (0.3 + 0.4 * ((k * 53) % 13) / 12.0);
      for (int y = 0; y < kH; ++y)
        for (int x = 0; x < kW; ++x) {
          const double r = std::hypot(y - cy, x - cx);
          const double noise = double(tasn::mix64(std::uint64_t(k) << 40 ^ std::uint64_t(y * kW + x)) >> 59);  // 0..31
          for (int c = 0; c < 3; ++c) {
            const double v = 128 + 90 * std::sin(0.02 * (x + 7 * k) * (c + 1) + 0.013 * y) * std::cos(0.017 * y * (3 - c)) +
                             (r < 60 + 3 * k ? 40 : 0) + noise - 16;
            rgb[(static_cast<std::size_t>(y) * kW + x) * 3 + c] = static_cast<unsigned char>(std::clamp(v, 0.0, 255.0));
          }
        }
      const std::string name = "img" + std::to_string(k) + ".jpg";
      if (!stbi_write_jpg((dir / name).string().c_str(), kW, kH, 3, rgb.data(), kQuality))
        throw std::runtime_error("bench_loader: cannot write " + (dir / name).string());
      if (k < kImages) bytes += fs::file_size(dir / name);
      recs.push_back({(dir / name).string(), k % 4, k < kImages, name});
    }
    train = std::move(tasn::train::folder_datasets(recs, kSide, 1, false).train);
  }
  ~Images() {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
};

Images& images() {
  static Images im;
  return im;
}

// Seconds of one epoch (every training image once) through a loader with `workers` threads.
double epoch_seconds(td::BatchLoader& l, std::int64_t epoch) {
  const auto t0 = Clock::now();
  l.start_epoch(epoch);
  std::int64_t n = 0;
  for (td::Batch b; l.next(b);) {
    n += b.size();
    benchmark::DoNotOptimize(b.images.data());
  }
  if (n != kImages) throw std::runtime_error("bench_loader: an epoch gave " + std::to_string(n) + " images");
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

std::unique_ptr<td::BatchLoader> make_loader(std::int64_t workers) {
  const tasn::train::Dataset& d = *images().train;
  td::BatchLoader::Options o;
  o.batch = kBatch;
  o.workers = workers;
  return std::make_unique<td::BatchLoader>(d.size(), [&d](std::int64_t i, std::int64_t e) { return d.get(i, e); }, o);
}

double g_one_worker_ips = 0;  // images/s of 1 worker, this run

// CPU seconds of the whole process (every thread) so far: images per CPU second is what one core
// does, whatever else runs on the machine (wall-clock rates are not, on a shared one).
double process_cpu_seconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return double(u.ru_utime.tv_sec + u.ru_stime.tv_sec) + 1e-6 * double(u.ru_utime.tv_usec + u.ru_stime.tv_usec);
}

// One core: stb decode alone, and preprocess alone (of decoded images), in images/s.
void BM_DecodeOneCore(benchmark::State& state) {
  const auto& im = images();
  std::int64_t n = 0;
  const auto t0 = Clock::now();
  const double c0 = process_cpu_seconds();
  for (auto _ : state) {
    const auto img = td::decode_image(im.recs[static_cast<std::size_t>(n++ % kImages)].path);
    benchmark::DoNotOptimize(img.pixels.data());
  }
  state.counters["images_per_cpu_s"] = double(n) / (process_cpu_seconds() - c0);
  state.counters["images_per_s"] = double(n) / std::chrono::duration<double>(Clock::now() - t0).count();
  state.counters["jpeg_kb"] = double(im.bytes) / kImages / 1024.0;
}

void BM_PreprocessOneCore(benchmark::State& state) {
  const auto& im = images();
  std::vector<td::RgbImage> decoded;
  for (int k = 0; k < 8; ++k) decoded.push_back(td::decode_image(im.recs[static_cast<std::size_t>(k)].path));
  td::Preprocess p;  // the paper preset: 512 px
  p.resize_shorter = p.crop = kSide;
  std::int64_t n = 0;
  const auto t0 = Clock::now();
  const double c0 = process_cpu_seconds();
  for (auto _ : state) {
    const auto x = td::preprocess(decoded[static_cast<std::size_t>(n % 8)], p, 5, n);
    ++n;
    benchmark::DoNotOptimize(x.data());
  }
  state.counters["images_per_cpu_s"] = double(n) / (process_cpu_seconds() - c0);
  state.counters["images_per_s"] = double(n) / std::chrono::duration<double>(Clock::now() - t0).count();
}

// Decode + preprocess through the loader: images/s, and the ratio to 1 worker in this run.
void BM_Loader(benchmark::State& state) {
  const std::int64_t workers = state.range(0);
  images();
  if (workers != 1 && g_one_worker_ips == 0) {  // filtered out: measured here
    auto one = make_loader(1);
    g_one_worker_ips = kImages / epoch_seconds(*one, 0);
  }
  auto l = make_loader(workers);
  std::int64_t epoch = 0;
  double sec = 0;
  const double c0 = process_cpu_seconds();
  for (auto _ : state) sec += epoch_seconds(*l, epoch++);
  const double ips = double(epoch * kImages) / sec;
  if (workers == 1) g_one_worker_ips = ips;
  state.counters["images_per_s"] = ips;
  state.counters["images_per_cpu_s"] = double(epoch * kImages) / (process_cpu_seconds() - c0);
  state.counters["x_1_worker"] = ips / g_one_worker_ips;
  state.counters["workers"] = double(workers);
}

void loader_args(benchmark::internal::Benchmark* b) {
  const auto hw = static_cast<std::int64_t>(std::max(1u, std::thread::hardware_concurrency()));
  for (std::int64_t w : std::set<std::int64_t>{1, 2, hw}) b->Arg(w);
}

BENCHMARK(BM_DecodeOneCore)->UseRealTime()->Unit(benchmark::kMillisecond)->Iterations(64);
BENCHMARK(BM_PreprocessOneCore)->UseRealTime()->Unit(benchmark::kMillisecond)->Iterations(32);
BENCHMARK(BM_Loader)->Apply(loader_args)->ArgName("workers")->UseRealTime()->Unit(benchmark::kMillisecond)->Iterations(3);

}  // namespace

int main(int argc, char** argv) {
  // As tasn_train does: freed blocks stay in the heap, so a 3 MB example or a batch does not get
  // fresh pages from the kernel each time (measured here: without it, page faults cost ~30 % of
  // the loader's time).
  mallopt(M_MMAP_THRESHOLD, 1 << 30);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
