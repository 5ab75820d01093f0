// The shared per-element softmax math (tasn/core/softmax_math.h) and the CPU row softmax.
// The CUDA kernels run these functions; the cooperation patterns of the kernels (lane-strided
// partials merged in a tree, block-strided partials) are emulated here on the CPU.
#include <gtest/gtest.h>

#include <cmath>
#include <stdexcept>
#include <vector>

#include "support/test_support.h"
#include "tasn/core/parallel.h"
#include "tasn/core/softmax_cpu.h"
#include "tasn/core/softmax_math.h"

namespace {
namespace tt = tasn::test;
using Stats = tasn::SoftmaxStats<double>;

Stats direct_stats(const std::vector<double>& x, double scale) {
  double m = -INFINITY;
  for (double v : x) m = std::max(m, v);
  double s = 0.0;
  for (double v : x) s += std::exp(scale * (v - m));
  return {m, s};
}

TEST(SoftmaxMath, PushEqualsDirect) {
  for (double scale : {0.1, 1.0, 7.0}) {
    const auto x = tt::random_tensor(777, 3, -50.0, 50.0);
    Stats st = Stats::empty();
    for (double v : x) st.push(v, scale);
    const Stats d = direct_stats(x, scale);
    EXPECT_EQ(st.m, d.m);
    EXPECT_NEAR(st.s, d.s, 1e-12 * d.s);
  }
}

// Emulates the block kernel: `threads` strided partials, merged pairwise in a tree.
TEST(SoftmaxMath, StridedPartialsMergedInATreeEqualDirect) {
  for (int threads : {1, 32, 256}) {
    for (int len : {1, 5, 31, 32, 33, 784, 5000}) {
      const auto x = tt::random_tensor(len, 17 + len, -10.0, 10.0);
      const double scale = 7.0;
      std::vector<Stats> part(threads, Stats::empty());
      for (int k = 0; k < len; ++k) part[k % threads].push(x[k], scale);
      const tasn::SoftmaxStatsCombine<double> op{scale};
      for (int width = 1; width < threads; width *= 2)
        for (int t = 0; t + width < threads; t += 2 * width) part[t] = op(part[t], part[t + width]);
      const Stats d = direct_stats(x, scale);
      EXPECT_EQ(part[0].m, d.m) << "threads=" << threads << " len=" << len;
      EXPECT_NEAR(part[0].s, d.s, 1e-12 * d.s) << "threads=" << threads << " len=" << len;
    }
  }
}

// -inf entries (masked logits) must not poison a partial whose maximum is still -inf: a thread
// of the block kernel may see -inf first and finite values later.
TEST(SoftmaxMath, MinusInfinityEntriesAreSkipped) {
  const int threads = 256, len = 1000;
  auto x = tt::random_tensor(len, 77, -3.0, 3.0);
  for (int k = 0; k < len; k += 3) x[k] = -INFINITY;
  std::vector<Stats> part(threads, Stats::empty());
  for (int k = 0; k < len; ++k) part[k % threads].push(x[k], 2.0);
  const tasn::SoftmaxStatsCombine<double> op{2.0};
  Stats all = Stats::empty();
  for (const Stats& p : part) all = op(all, p);
  double m = -INFINITY, s = 0.0;
  for (double v : x) m = std::max(m, v);
  for (double v : x) s += std::exp(2.0 * (v - m));
  EXPECT_EQ(all.m, m);
  EXPECT_NEAR(all.s, s, 1e-12 * s);
  Stats only_inf = Stats::empty();
  only_inf.push(-INFINITY, 1.0);
  EXPECT_EQ(only_inf.s, 0.0);
}

TEST(SoftmaxMath, CombineWithEmptyIsIdentity) {
  const Stats a{2.0, 3.0};
  const Stats e = Stats::empty();
  const Stats r1 = Stats::combine(a, e, 1.0), r2 = Stats::combine(e, a, 1.0);
  EXPECT_EQ(r1.m, 2.0);
  EXPECT_EQ(r1.s, 3.0);
  EXPECT_EQ(r2.m, 2.0);
  EXPECT_EQ(r2.s, 3.0);
}

TEST(SoftmaxCpu, RowsMatchNaive) {
  const int rows = 7, len = 301;
  for (double scale : {1.0, 7.0}) {
    const auto x = tt::random_tensor(rows * len, 5, -1e4, 1e4);
    std::vector<double> y(x.size());
    tasn::cpu::softmax_rows(x.data(), y.data(), rows, len, scale, true);
    for (int r = 0; r < rows; ++r) {
      std::vector<double> row(x.begin() + r * len, x.begin() + (r + 1) * len);
      const Stats d = direct_stats(row, scale);
      double sum = 0.0;
      for (int k = 0; k < len; ++k) {
        const double e = std::exp(scale * (row[k] - d.m)) / d.s;
        ASSERT_NEAR(y[r * len + k], e, 1e-15 + 1e-13 * e);
        sum += y[r * len + k];
      }
      EXPECT_NEAR(sum, 1.0, 1e-12);
    }
  }
}

TEST(SoftmaxCpu, BackwardMatchesFiniteDifferences) {
  const int len = 13;
  const double scale = 3.0;
  const auto x = tt::random_tensor(len, 9, -2.0, 2.0);
  const auto w = tt::random_tensor(len, 10, -1.0, 1.0);
  auto loss = [&](const std::vector<double>& xv) {
    std::vector<double> y(len);
    tasn::cpu::softmax_rows(xv.data(), y.data(), 1, len, scale, false);
    return tt::weighted_sum(y, w);
  };
  std::vector<double> y(len), g(len, 0.25);
  tasn::cpu::softmax_rows(x.data(), y.data(), 1, len, scale, false);
  tasn::cpu::softmax_backward_rows(y.data(), w.data(), g.data(), 1, len, scale, false, false);
  EXPECT_LT(tt::relative_error(g, tt::numeric_gradient(loss, x, 1e-6)), 1e-8);
  // accumulate adds on top of what dx holds
  std::vector<double> g2(len, 0.25);
  tasn::cpu::softmax_backward_rows(y.data(), w.data(), g2.data(), 1, len, scale, true, false);
  for (int k = 0; k < len; ++k) EXPECT_DOUBLE_EQ(g2[k], g[k] + 0.25);
}

// An exception thrown by one iteration (e.g. a failed scratch allocation reported as
// tasn::InvalidArgument) reaches the caller instead of terminating the program from inside an
// OpenMP region; the remaining iterations are skipped.
TEST(ParallelCpu, ExceptionsReachTheCaller) {
  const int threads = tasn::cpu::num_threads();
  tasn::cpu::set_num_threads(4);
  std::vector<int> seen(1000, 0);
  const std::string msg = tt::invalid_argument_message([&] {
    tasn::cpu::parallel_for(0, 1000, [&](std::int64_t i) {
      seen[i] = 1;
      if (i == 777) throw tasn::InvalidArgument("iteration 777 failed");
    });
  });
  tasn::cpu::set_num_threads(threads);
  EXPECT_EQ(msg, "iteration 777 failed");
  EXPECT_EQ(seen[777], 1);
  // the serial path (one thread) throws the same way
  tasn::cpu::set_num_threads(1);
  EXPECT_THROW(tasn::cpu::parallel_for(0, 10, [&](std::int64_t i) {
                 if (i == 3) throw std::runtime_error("serial");
               }),
               std::runtime_error);
  tasn::cpu::set_num_threads(threads);
  // and it stays usable
  std::vector<int> all(100, 0);
  tasn::cpu::parallel_for(0, 100, [&](std::int64_t i) { all[i] = 1; });
  for (int v : all) EXPECT_EQ(v, 1);
}

}  // namespace
