// The CPU operators give bit-identical results whatever the alignment of their buffers.
//
// Eigen's vectorised loops on a Map peel scalar elements until the pointer is aligned; those
// elements take another code path (scalar exp, another summation order), so results depended on
// where the heap put a tensor, and a resumed training run drifted from the uninterrupted one.
// Each test runs an operator with every buffer at each element offset within 64 bytes and compares
// the outputs bit for bit with the offset-0 run.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "support/loss_calls.h"
#include "tasn/attention_sampler.h"
#include "tasn/core/softmax_cpu.h"
#include "tasn/core/vec_cpu.h"
#include "tasn/losses.h"
#include "tasn/trilinear_attention.h"

namespace {

// A buffer whose data() starts `offset` elements past a 64-byte boundary.
template <class T>
class Shifted {
 public:
  Shifted(const std::vector<T>& values, std::int64_t offset)
      : storage_(values.size() + 64 / sizeof(T) + 16), offset_(offset) {
    const auto addr = reinterpret_cast<std::uintptr_t>(storage_.data());
    const std::int64_t to_boundary = static_cast<std::int64_t>(((64 - addr % 64) % 64) / sizeof(T));
    base_ = storage_.data() + to_boundary + offset_;
    std::copy(values.begin(), values.end(), base_);
    size_ = values.size();
  }
  T* data() { return base_; }
  std::vector<T> values() const { return std::vector<T>(base_, base_ + size_); }

 private:
  std::vector<T> storage_;
  std::int64_t offset_;
  T* base_ = nullptr;
  std::size_t size_ = 0;
};

template <class T>
std::vector<T> random_values(std::size_t n, std::uint32_t seed, double lo = -3.0, double hi = 3.0) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<double> d(lo, hi);
  std::vector<T> v(n);
  for (auto& x : v) x = static_cast<T>(d(gen));
  return v;
}

template <class T>
bool bit_equal(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

constexpr std::int64_t kOffsets = 16;  // covers every element offset inside 64 bytes for float

template <class T>
class DeterminismCpu : public ::testing::Test {};
using Types = ::testing::Types<float, double>;
TYPED_TEST_SUITE(DeterminismCpu, Types);

// Runs `op(offset)` for every offset and expects each returned output list to equal offset 0's.
template <class T, class Op>
void expect_offset_independent(Op&& op, const char* what) {
  const auto ref = op(0);
  for (std::int64_t off = 1; off < kOffsets; ++off) {
    const auto got = op(off);
    ASSERT_EQ(got.size(), ref.size());
    for (std::size_t i = 0; i < ref.size(); ++i)
      EXPECT_TRUE(bit_equal<T>(got[i], ref[i])) << what << ": output " << i << " differs at offset " << off;
  }
}

TYPED_TEST(DeterminismCpu, RowPrimitives) {
  using T = TypeParam;
  for (std::int64_t n : {1, 7, 37, 100, 257}) {
    const auto a = random_values<T>(n, 1), b = random_values<T>(n, 2);
    expect_offset_independent<T>([&](std::int64_t off) {
      Shifted<T> x(a, off), y(b, (off * 3) % kOffsets), e(std::vector<T>(n), (off * 5) % kOffsets);
      const T s = tasn::cpu::vec::exp_shifted(x.data(), e.data(), n, T(0.5), T(1.25));
      return std::vector<std::vector<T>>{{tasn::cpu::vec::sum(x.data(), n)},
                                         {tasn::cpu::vec::dot(x.data(), y.data(), n)},
                                         {tasn::cpu::vec::max(x.data(), n)},
                                         {s},
                                         e.values()};
    }, "row primitives");
  }
}

TYPED_TEST(DeterminismCpu, RowPrimitivesAgreeWithDoubleLoops) {
  using T = TypeParam;
  const double tol = sizeof(T) == 4 ? 1e-5 : 1e-13;
  for (std::int64_t n : {1, 3, 16, 41, 300}) {
    const auto a = random_values<T>(n, 3), b = random_values<T>(n, 4);
    double s = 0, d = 0, m = a[0], es = 0;
    for (std::int64_t i = 0; i < n; ++i) {
      s += a[i];
      d += double(a[i]) * b[i];
      m = std::max<double>(m, a[i]);
      es += std::exp(1.25 * (double(a[i]) - 0.5));
    }
    std::vector<T> e(n);
    EXPECT_NEAR(tasn::cpu::vec::sum(a.data(), n), s, tol * (1 + std::abs(s)) * n);
    EXPECT_NEAR(tasn::cpu::vec::dot(a.data(), b.data(), n), d, tol * (1 + std::abs(d)) * n);
    EXPECT_EQ(tasn::cpu::vec::max(a.data(), n), static_cast<T>(m));
    EXPECT_NEAR(tasn::cpu::vec::exp_shifted(a.data(), e.data(), n, T(0.5), T(1.25)), es, tol * es * 4);
    for (std::int64_t i = 0; i < n; ++i)
      EXPECT_NEAR(e[i], std::exp(1.25 * (double(a[i]) - 0.5)), tol * 4 * std::exp(1.25 * (double(a[i]) - 0.5)));
  }
}

// Eigen's packet exp clamps its argument and returns about 1e-38 for -inf; ours gives exactly 0 for
// every result below the smallest normal number, in the packet body and in the tail alike.
TYPED_TEST(DeterminismCpu, ExpUnderflowsToZero) {
  using T = TypeParam;
  const T huge = std::numeric_limits<T>::max();
  for (std::int64_t n : {3, 16, 21}) {
    std::vector<T> x(n, T(0)), y(n, T(7));
    for (std::int64_t i = 1; i < n; i += 2) x[i] = i % 4 == 1 ? -huge : T(-800);
    const T s = tasn::cpu::vec::exp_shifted(x.data(), y.data(), n, T(0), T(2));
    EXPECT_EQ(s, T((n + 1) / 2)) << n;
    for (std::int64_t i = 0; i < n; ++i) EXPECT_EQ(y[i], i % 2 ? T(0) : T(1)) << "n=" << n << " i=" << i;
  }
}

TYPED_TEST(DeterminismCpu, Softmax) {
  using T = TypeParam;
  const std::int64_t rows = 5, len = 45;
  const auto in = random_values<T>(rows * len, 5), dy = random_values<T>(rows * len, 6);
  expect_offset_independent<T>([&](std::int64_t off) {
    Shifted<T> x(in, off), y(std::vector<T>(rows * len), (off + 7) % kOffsets), g(dy, (off * 3) % kOffsets),
        dx(std::vector<T>(rows * len), (off * 11) % kOffsets);
    tasn::cpu::softmax_rows(x.data(), y.data(), rows, len, T(0.7), false);
    tasn::cpu::softmax_backward_rows(y.data(), g.data(), dx.data(), rows, len, T(0.7), false, false);
    return std::vector<std::vector<T>>{y.values(), dx.values()};
  }, "softmax");
}

TYPED_TEST(DeterminismCpu, TrilinearAttention) {
  using T = TypeParam;
  const tasn::TrilinearShape shape{2, 5, 7, 9};
  const std::int64_t numel = shape.numel(), saved_n = 2 * 5 * 63 + 2 * 5 * 5;
  const auto x0 = random_values<T>(numel, 7), dm0 = random_values<T>(numel, 8);
  expect_offset_independent<T>([&](std::int64_t off) {
    Shifted<T> x(x0, off), m(std::vector<T>(numel), (off + 3) % kOffsets),
        saved(std::vector<T>(saved_n), (off + 9) % kOffsets), dm(dm0, (off * 7) % kOffsets),
        dx(std::vector<T>(numel), (off + 1) % kOffsets);
    const tasn::Tensor4<const T> xv(x.data(), {shape.n, shape.c, shape.h, shape.w});
    tasn::cpu::trilinear_attention_forward(tasn::TrilinearForwardArgs<T>{
        xv, tasn::Tensor4<T>(m.data(), {shape.n, shape.c, shape.h, shape.w}), tasn::Tensor1<T>(saved.data(), {saved_n}), {}});
    tasn::cpu::trilinear_attention_backward(tasn::TrilinearBackwardArgs<T>{
        xv, tasn::Tensor4<const T>(dm.data(), {shape.n, shape.c, shape.h, shape.w}),
        tasn::Tensor1<const T>(saved.data(), {saved_n}), tasn::Tensor4<T>(dx.data(), {shape.n, shape.c, shape.h, shape.w}), {}});
    return std::vector<std::vector<T>>{m.values(), saved.values(), dx.values()};
  }, "trilinear attention");
}

TYPED_TEST(DeterminismCpu, Losses) {
  using T = TypeParam;
  const std::int64_t n = 3, k = 37;
  const auto s0 = random_values<T>(n * k, 9), t0 = random_values<T>(n * k, 10);
  const std::vector<std::int64_t> labels = {4, 0, 36};
  tasn::DistillationOptions dopt;
  dopt.temperature = 2.0;
  tasn::CrossEntropyOptions copt;
  copt.label_smoothing = 0.1;
  expect_offset_independent<T>([&](std::int64_t off) {
    Shifted<T> s(s0, off), t(t0, (off + 5) % kOffsets), ds(std::vector<T>(n * k), (off * 3) % kOffsets),
        dt(std::vector<T>(n * k), (off + 2) % kOffsets), dl(std::vector<T>(n * k), (off + 13) % kOffsets);
    T dloss = 0, closs = 0;
    tasn::cpu::distillation_loss(tasn::test::distillation_args(s.data(), t.data(), n, k, dopt, &dloss, ds.data(), dt.data()));
    tasn::cpu::softmax_cross_entropy(tasn::test::cross_entropy_args(s.data(), labels.data(), n, k, copt, &closs, dl.data()));
    return std::vector<std::vector<T>>{{dloss}, ds.values(), dt.values(), {closs}, dl.values()};
  }, "losses");
}

TYPED_TEST(DeterminismCpu, AttentionSampler) {
  using T = TypeParam;
  const std::int64_t N = 2, C = 3, Hi = 19, Wi = 23, Ha = 5, Wa = 6;
  const std::int64_t Ho = 11, Wo = 13;
  tasn::AttentionSampleOptions opt;
  opt.squared = true;
  const auto img0 = random_values<T>(N * C * Hi * Wi, 11), att0 = random_values<T>(N * Ha * Wa, 12, 0.0, 1.0),
             dout0 = random_values<T>(N * C * 11 * 13, 13);
  expect_offset_independent<T>([&](std::int64_t off) {
    Shifted<T> img(img0, off), att(att0, (off + 4) % kOffsets), out(std::vector<T>(N * C * 11 * 13), (off * 5) % kOffsets),
        gy(std::vector<T>(N * 11), (off + 6) % kOffsets), gx(std::vector<T>(N * 13), (off + 8) % kOffsets),
        dout(dout0, (off * 9) % kOffsets), dimg(std::vector<T>(N * C * Hi * Wi), (off + 10) % kOffsets);
    tasn::AttentionSampleArgs<T> as{};
    as.img = {img.data(), {N, C, Hi, Wi}};
    as.attention = {att.data(), {N, Ha, Wa}};
    as.out = {out.data(), {N, C, Ho, Wo}};
    as.gy = {gy.data(), {N, Ho}};
    as.gx = {gx.data(), {N, Wo}};
    as.options = opt;
    tasn::cpu::attention_sample(as);
    tasn::cpu::sample_separable_backward(tasn::SampleSeparableBackwardArgs<T>{
        {dout.data(), {N, C, Ho, Wo}}, {gy.data(), {N, Ho}}, {gx.data(), {N, Wo}}, {dimg.data(), {N, C, Hi, Wi}}, {}});
    return std::vector<std::vector<T>>{out.values(), gy.values(), gx.values(), dimg.values()};
  }, "attention sampler");
}

}  // namespace
