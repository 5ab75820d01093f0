// After its first steps a training step allocates nothing from the heap (issue 12): the per-step
// arena (examples/nn/arena.h) holds every activation, what backward keeps, layer scratch and the
// library operators' workspaces; parameters, gradients and momentum live in flat buffers made
// once. Counted here by replacing the global operator new (every C++ allocation of the project,
// of libstdc++ and of oneDNN) and malloc / calloc / realloc / aligned_alloc / posix_memalign (glibc
// interposition: Eigen, OpenMP and C code allocate through these) in this program.
//
// Its own executable: the replaced allocator must not meet the sanitizers' (not built with
// TASN_SANITIZE). Allocations made inside the third-party libraries are counted apart and
// reported: oneDNN 2.6 builds an argument map per primitive execution (tests/dnnl_allocations.cpp)
// and Eigen's parallel GEMM (the reference layers) allocates its blocking per product; the calls
// are marked (nn::LibraryCall, dnnl::in_execute) and the project's own count must be zero.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <new>
#include <vector>

#include "data/synthetic.h"
#include "train/model.h"
#include "train/optim.h"
#include "train/presets.h"
// last: the replacements must follow every library declaration of malloc and friends
#include "support/counting_allocator.h"

// ---- counting allocator (tests/support/counting_allocator.h) --------------------------------------
namespace {
std::atomic<bool> g_counting{false};
std::atomic<long> g_ours{0}, g_in_library{0};
}  // namespace

void tasn::test::note_allocation(bool) {
  if (!g_counting.load(std::memory_order_relaxed)) return;
  bool library = tasn::nn::in_library_call();  // Eigen's GEMM (reference layers)
#if defined(TASN_HAVE_DNNL)
  library = library || tasn::nn::dnnl::in_execute();  // oneDNN's primitive execution
#endif
  (library ? g_in_library : g_ours).fetch_add(1, std::memory_order_relaxed);
}

namespace {
namespace nn = tasn::nn;
namespace tr = tasn::train;

struct Counts {
  long ours, in_library;
};

// Steps 1-2 warm up (the arena grows, then becomes one chunk; oneDNN creates its primitives);
// steps 3-5 are counted: model step + SGD step, as the trainer runs them.
template <class Net>
Counts count_steps(Net& m, std::int64_t batch) {
  const tr::NetConfig& c = tr::preset("demo").net;
  tasn::data::SyntheticConfig sc;
  sc.size = c.image;
  std::vector<float> images;
  std::vector<std::int64_t> labels;
  for (std::int64_t i = 0; i < batch; ++i) {
    const auto s = tasn::data::make_sample(sc, tasn::data::Split::Train, i);
    images.insert(images.end(), s.image.begin(), s.image.end());
    labels.push_back(s.label);
  }
  for (auto& [prefix, ps] : m.stores()) nn::init_torchvision(*ps, 7);
  tr::Sgd opt(m.params(), {0.9, 5e-4});
  double last = 0;
  for (int step = 0; step < 5; ++step) {
    if (step == 2) {
      g_ours = 0;
      g_in_library = 0;
      g_counting = true;
    }
    const tr::StepStats& st = m.train_step(images, labels, 100 + step);
    last = st.total;
    const bool ok = opt.step(0.01, 1.0 / double(batch));
    if (!ok) break;
  }
  g_counting = false;
  EXPECT_TRUE(std::isfinite(last));
  return {g_ours.load(), g_in_library.load()};
}

const char* library_name(nn::Backend b) {
  return b == nn::Backend::OneDnn ? "oneDNN's execute and Eigen's GEMM (linear layers)" : "Eigen's GEMM";
}

void expect_no_allocation(nn::Backend backend) {
  const tr::NetConfig c = tr::preset("demo").net;
  {
    tr::TasnNet m(c, backend);
    const Counts n = count_steps(m, 8);
    std::printf("[ allocs  ] tasn %s, 3 steps: %ld by the project, %ld inside %s\n", nn::to_string(backend), n.ours,
                n.in_library, library_name(backend));
    EXPECT_EQ(n.ours, 0) << "heap allocations in 3 warmed-up TASN steps (" << nn::to_string(backend) << ")";
  }
  {
    tr::BaselineNet m(c, backend);
    const Counts n = count_steps(m, 8);
    std::printf("[ allocs  ] baseline %s, 3 steps: %ld by the project, %ld inside %s\n", nn::to_string(backend),
                n.ours, n.in_library, library_name(backend));
    EXPECT_EQ(n.ours, 0) << "heap allocations in 3 warmed-up baseline steps (" << nn::to_string(backend) << ")";
  }
}

TEST(TrainerAllocations, NoneAfterWarmUpOneDnn) {
  if (!nn::onednn_built()) GTEST_SKIP() << "this build has no oneDNN (libdnnl-dev)";
  expect_no_allocation(nn::Backend::OneDnn);
}

TEST(TrainerAllocations, NoneAfterWarmUpReference) { expect_no_allocation(nn::Backend::Reference); }

// The counter sees allocations at all (a test that cannot fail proves nothing).
TEST(TrainerAllocations, CounterCounts) {
  g_ours = 0;
  g_counting = true;
  auto* v = new std::vector<int>(1000);
  void* p = std::malloc(64);
  g_counting = false;
  std::free(p);
  delete v;
  EXPECT_GE(g_ours.load(), 2);
}

}  // namespace
