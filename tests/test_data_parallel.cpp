// The trainer's data parallelism (docs/distributed.md) in one process: ranks are threads joined by
// tests/support/thread_comm.h, so these run on every machine and in the sanitizer build; the MPI
// launch itself is tested by tests/dist/check_mpi.sh. In double precision the ranks' steps must
// equal one process's to rounding (1e-10 of each tensor's scale): synchronised batch norm, the
// detail channels picked as for the whole batch, gradients summed before the update.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <string>
#include <vector>

#include "support/thread_comm.h"
#include "support/tiny_net.h"
#include "train/presets.h"
#include "train/trainer.h"

namespace {

using namespace tasn;
using namespace tasn::train;
using tasn::test::run_ranks;
using tasn::test::ThreadComm;

NetConfig tiny_net() { return tasn::test::tiny_net(32); }  // 32 px images: the ranks' steps in seconds

// The values and the momentum after `steps` SGD steps of a batch of N images split over `ranks`
// rank threads (rank r trains samples [r N / ranks, (r + 1) N / ranks)), from rank 0; checks that
// every rank ends with the same bits. Also the summed losses of every step.
template <class Net>
std::vector<double> train_split(int ranks, bool sync_bn, int steps, std::vector<double>* losses) {
  const NetConfig net = tiny_net();
  const std::int64_t N = 8, per = N / ranks, img = 3 * net.image * net.image;
  std::vector<double> images(static_cast<std::size_t>(N * img));
  for (std::size_t i = 0; i < images.size(); ++i) images[i] = double(mix64(i + 17) % 2001) / 1000.0 - 1.0;
  std::vector<std::int64_t> labels(N);
  for (std::int64_t n = 0; n < N; ++n) labels[std::size_t(n)] = n % net.classes;
  std::vector<std::vector<double>> state(static_cast<std::size_t>(ranks));
  std::vector<double> summed(static_cast<std::size_t>(steps), 0.0);
  std::size_t trainable = 0;
  run_ranks(ranks, [&](int r, ThreadComm& c) {
    Net m(net, nn::Backend::Reference);
    for (auto& [prefix, ps] : m.stores()) nn::init_torchvision(*ps, mix64(7 ^ fnv1a(prefix)));
    m.set_comm(&c, sync_bn);
    BasicSgd<double> opt(m.params(), SgdOptions{});
    const std::vector<double> mine(images.begin() + r * per * img, images.begin() + (r + 1) * per * img);
    const std::vector<std::int64_t> my_labels(labels.begin() + r * per, labels.begin() + (r + 1) * per);
    for (int s = 0; s < steps; ++s) {
      double total = m.train_step(mine, my_labels, step_seed(3, s)).total;
      c.allreduce_sum(&total, 1);
      if (r == 0) summed[std::size_t(s)] = total;
      ASSERT_TRUE(m.sgd_step(opt, 0.05, 1.0 / double(N)));
    }
    // the weights and momentum, then the batch-norm statistics (per-rank ones differ: last)
    auto& st = state[std::size_t(r)];
    const std::int64_t k = m.params().trainable_size();
    st.assign(m.params().values(), m.params().values() + k);
    st.insert(st.end(), opt.momentum(), opt.momentum() + k);
    st.insert(st.end(), m.params().values() + k, m.params().values() + m.params().size());
    if (r == 0) trainable = std::size_t(2 * k);
  });
  for (int r = 1; r < ranks; ++r) {
    const auto& a = state[0];
    const auto& b = state[std::size_t(r)];
    const std::size_t n = sync_bn ? a.size() : trainable;  // per-rank statistics are rank 0's only after a broadcast
    EXPECT_TRUE(std::equal(a.begin(), a.begin() + std::ptrdiff_t(n), b.begin())) << "rank " << r << " differs from rank 0";
  }
  if (losses) *losses = summed;
  return state[0];
}

// max |a - b| / max |a| over the whole state (values, buffers, momentum).
double rel_diff(const std::vector<double>& a, const std::vector<double>& b) {
  double d = 0, s = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    d = std::max(d, std::fabs(a[i] - b[i]));
    s = std::max(s, std::fabs(a[i]));
  }
  return d / s;
}

template <class Net>
void check_split_equals_whole(const char* what) {
  std::vector<double> l1, l2, l4;
  const auto one = train_split<Net>(1, true, 3, &l1);
  const auto two = train_split<Net>(2, true, 3, &l2);
  const auto four = train_split<Net>(4, true, 3, &l4);
  const auto apart = train_split<Net>(2, false, 3, nullptr);
  std::printf("[ dp ] %s, 3 steps in double: 2 ranks %.2e, 4 ranks %.2e, per-rank batch norm %.2e\n", what,
              rel_diff(one, two), rel_diff(one, four), rel_diff(one, apart));
  EXPECT_LT(rel_diff(one, two), 1e-10);
  EXPECT_LT(rel_diff(one, four), 1e-10);
  EXPECT_GT(rel_diff(one, apart), 1e-4) << "per-rank statistics must differ (else the check could not fail)";
  for (std::size_t s = 0; s < l1.size(); ++s) {
    EXPECT_NEAR(l2[s], l1[s], 1e-10 * std::fabs(l1[s])) << "step " << s;
    EXPECT_NEAR(l4[s], l1[s], 1e-10 * std::fabs(l1[s])) << "step " << s;
  }
}

TEST(DataParallel, RanksOfAPartialBatchStepLikeOneProcessTasn) {
  check_split_equals_whole<BasicTasnNet<double>>("tasn");
}
TEST(DataParallel, RanksOfAPartialBatchStepLikeOneProcessBaseline) {
  check_split_equals_whole<BasicBaselineNet<double>>("baseline");
}

// Synchronised batch norm with one rank is the reference layer bit for bit.
TEST(DataParallel, SyncBatchNormAloneIsTheReferenceLayer) {
  const auto synced = train_split<BasicBaselineNet<double>>(1, true, 2, nullptr);
  const auto plain = train_split<BasicBaselineNet<double>>(1, false, 2, nullptr);
  EXPECT_EQ(synced, plain);
}

// The test communicator itself: ranks calling different collectives fail (both of them) instead of
// exchanging the wrong bytes, and a failing rank does not leave the other waiting.
TEST(DataParallel, ThreadCommCatchesMismatchesAndFailedRanks) {
  EXPECT_THROW(run_ranks(2,
                         [](int r, ThreadComm& c) {
                           std::vector<double> v(2 + std::size_t(r), 1.0);
                           c.allreduce_sum(v.data(), std::int64_t(v.size()));
                         }),
               std::runtime_error);
  EXPECT_THROW(run_ranks(2,
                         [](int r, ThreadComm& c) {
                           if (r == 1) throw std::runtime_error("rank 1 fails before the collective");
                           double v = 1;
                           c.allreduce_sum(&v, 1);
                         }),
               std::runtime_error);
  double seen[2] = {0, 0};
  run_ranks(2, [&](int r, ThreadComm& c) {
    double v = r + 1.5;
    c.allreduce_sum(&v, 1);
    seen[r] = v;
  });
  EXPECT_EQ(seen[0], 4.0);
  EXPECT_EQ(seen[1], 4.0);
}

// sync_state: rank 0's weights reach every rank; a rank that differs afterwards is named.
TEST(DataParallel, StateIsBroadcastAndADivergedRankIsCaught) {
  std::vector<std::vector<float>> after(2);
  std::vector<std::string> errors(2);
  run_ranks(2, [&](int r, ThreadComm& c) {
    BaselineNet m(tiny_net(), nn::Backend::Reference);
    init_model(m, 100 + std::uint64_t(r));  // different weights on each rank
    Sgd opt(m.params(), SgdOptions{});
    opt.momentum()[3] = float(r + 1);
    sync_state(m, &opt, c, false, "at the start");
    after[std::size_t(r)].assign(m.params().values(), m.params().values() + m.params().size());
    after[std::size_t(r)].push_back(opt.momentum()[3]);
    if (r == 1) m.params().values()[0] += 1;  // a trainable weight: a buffers-only sync keeps it
    try {
      sync_state(m, &opt, c, true, "after epoch 1");
    } catch (const Error& e) {
      errors[std::size_t(r)] = e.what();
    }
  });
  EXPECT_EQ(after[0], after[1]);
  EXPECT_EQ(after[0].back(), 1.0f) << "rank 0's momentum";
  for (const auto& e : errors)
    EXPECT_NE(e.find("the parameters or momentum differ across the 2 ranks after epoch 1"), std::string::npos) << e;
}

// train_model on 2 rank threads: only rank 0 writes, both ranks see the same (global) losses,
// the evaluation's counts cover the whole split, and the result matches a 1-process run of the
// same global batch to float rounding (synchronised batch norm, reference layers).
TEST(DataParallel, TrainModelOnTwoRanksWritesOnceAndMatchesOneProcess) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / ("tasn_dp_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  data::SyntheticConfig sc;
  sc.size = 32;
  sc.patch = 8;
  SyntheticDataset train_set(sc, data::Split::Train, 48), test_set(sc, data::Split::Test, 21);
  TrainConfig t;
  t.epochs = 2;
  t.batch = 8;
  t.eval_batch = 4;
  t.progress = false;
  t.sync_bn = true;
  t.loader_threads = 1;
  const auto train_on = [&](dist::Communicator* c, const std::string& out, TrainResult& res) {
    TasnNet m(tiny_net(), nn::Backend::Reference);
    init_model(m, 5);
    TrainConfig tc = t;
    tc.comm = c;
    tc.out_dir = out;
    res = train_model(m, train_set, &test_set, tc, "tasn");
  };
  TrainResult one;
  train_on(nullptr, (dir / "one").string(), one);
  std::vector<TrainResult> two(2);
  run_ranks(2, [&](int r, ThreadComm& c) {
    train_on(&c, r == 0 ? (dir / "two").string() : "", two[std::size_t(r)]);
  });
  EXPECT_EQ(two[0].step_losses, two[1].step_losses);
  EXPECT_EQ(two[0].final_eval.accuracy, two[1].final_eval.accuracy);
  ASSERT_EQ(two[0].step_losses.size(), one.step_losses.size());
  // The first epoch (6 steps): TASN's sampler has discrete decisions (distinct channels, the
  // kept-channel count of the random pick) that float rounding flips later (docs/distributed.md);
  // measured here: 1.7e-5 in the first epoch, 2.3e-4 in the second.
  double first = 0, later = 0;
  for (std::size_t s = 0; s < one.step_losses.size(); ++s)
    (s < 6 ? first : later) = std::max(s < 6 ? first : later, std::fabs(two[0].step_losses[s] / one.step_losses[s] - 1));
  std::printf("[ dp ] train_model, 2 rank threads vs 1 process, float: step losses within %.1e (epoch 1), %.1e (epoch 2)\n",
              first, later);
  for (std::size_t s = 0; s < 6; ++s)
    EXPECT_NEAR(two[0].step_losses[s], one.step_losses[s], 1e-4 * one.step_losses[s]) << "step " << s;
  EXPECT_TRUE(fs::exists(dir / "two" / "tasn-last.safetensors"));
  EXPECT_TRUE(fs::exists(dir / "two" / "tasn-metrics.jsonl"));
  EXPECT_EQ(two[0].final_eval.n, 21);
  fs::remove_all(dir);
}

}  // namespace
