// CUDA trilinear attention and row-softmax kernels against the CPU path, for every storage type
// and kernel variant. Tests that need a device skip with the reason when there is none; the
// argument-validation and workspace tests run everywhere (validation happens before any CUDA call).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <ostream>
#include <tuple>
#include <vector>

#include "gpu/gpu_runners.h"
#include "support/gpu_tolerance.h"
#include "support/reference_trilinear.h"
#include "support/test_support.h"
#include "tasn/core/softmax_cpu.h"
#include "tasn/trilinear_attention.h"

namespace {
namespace tt = tasn::test;
namespace g = tasn::test::gpu;
namespace tol = tasn::test::tol;
using g::Dtype;
using g::Kernel;
using tasn::TrilinearShape;
using tasn::Workspace;

template <class T>
tasn::Tensor4<T> v4(T* p, const TrilinearShape& s) {
  return tasn::Tensor4<T>(p, {s.n, s.c, s.h, s.w});
}
std::int64_t saved_elems(const TrilinearShape& s) { return tasn::trilinear_saved_elems(s.n, s.c, s.h, s.w); }

// Tolerances: tests/support/gpu_tolerance.h derives each element's bound from the storage type and
// the computation (against the CPU double path on the same storage-rounded inputs);
// tests/test_gpu_tolerances.cpp replays these tests' data on the CPU and checks the bounds cover it.
template <class R>
void expect_within(const std::vector<float>& got, const std::vector<R>& ref, Dtype dt, const std::vector<double>& pre,
                   const char* what) {
  const auto r = tol::check_bound(got, ref, dt, pre);
  EXPECT_TRUE(r.ok) << what << ": " << r.message();
}

class Gpu : public ::testing::TestWithParam<std::tuple<Dtype, Kernel>> {
 protected:
  void SetUp() override {
    std::string reason;
    if (!g::device_available(&reason)) GTEST_SKIP() << reason;
  }
};

TEST_P(Gpu, SoftmaxRowsMatchCpu) {
  const auto [dt, kernel] = GetParam();
  for (long len : {1L, 7L, 32L, 33L, 100L, 784L, 1024L, 1025L, 5089L}) {
    if (kernel == Kernel::Warp && len > 1024) continue;
    SCOPED_TRACE(::testing::Message() << "len=" << len);
    const long rows = 37;
    const auto in = g::round_to(dt, tt::cast_vector<float>(tt::random_tensor(rows * len, len, -8.0, 8.0)));
    const auto got = g::softmax_rows(dt, in, rows, len, 7.f, kernel);
    std::vector<double> ref(in.size());
    const auto ind = tt::cast_vector<double>(in);
    tasn::cpu::softmax_rows(ind.data(), ref.data(), rows, len, 7.0, false);
    expect_within(got, ref, dt, tol::softmax_rows_pre(ind, ref, rows, len, 7.0, kernel), "softmax");
  }
}

TEST_P(Gpu, SoftmaxBackwardRowsMatchCpu) {
  const auto [dt, kernel] = GetParam();
  for (long len : {1L, 31L, 512L, 784L, 1024L, 3000L}) {
    if (kernel == Kernel::Warp && len > 1024) continue;
    SCOPED_TRACE(::testing::Message() << "len=" << len);
    const long rows = 19;
    const auto x = tt::random_tensor(rows * len, 3 * len, -2.0, 2.0);
    std::vector<double> y(x.size());
    tasn::cpu::softmax_rows(x.data(), y.data(), rows, len, 1.0, false);
    const auto yr = g::round_to(dt, tt::cast_vector<float>(y));
    const auto dy = tt::cast_vector<float>(tt::random_tensor(rows * len, 5 * len));
    const auto add = tt::cast_vector<float>(tt::random_tensor(rows * len, 7 * len, -1e-3, 1e-3));
    const auto got = g::softmax_backward_rows(dt, yr, dy, add, rows, len, 3.f, kernel);
    std::vector<double> ref(tt::cast_vector<double>(add));
    const auto yd = tt::cast_vector<double>(yr), dyd = tt::cast_vector<double>(dy);
    tasn::cpu::softmax_backward_rows(yd.data(), dyd.data(), ref.data(), rows, len, 3.0, true, false);
    expect_within(got, ref, dt, tol::softmax_backward_rows_pre(yd, nullptr, dyd, nullptr, nullptr, ref, rows, len, 3.0, kernel),
                  "softmax backward");
  }
}

TEST_P(Gpu, TrilinearMatchesCpu) {
  const auto [dt, kernel] = GetParam();
  // Forcing the warp variant would reject the P = 1600 case; auto already picks warp for the rest.
  if (kernel == Kernel::Warp) GTEST_SKIP() << "warp variant covered by auto (rows <= 1024)";
  for (const auto& s : {TrilinearShape{2, 5, 3, 3}, TrilinearShape{3, 64, 14, 14},
                        TrilinearShape{2, 512, 28, 28}, TrilinearShape{1, 40, 40, 40}}) {
    SCOPED_TRACE(::testing::Message() << "N=" << s.n << " C=" << s.c << " H=" << s.h << " W=" << s.w);
    const auto x = g::round_to(dt, tt::cast_vector<float>(tt::random_tensor(s.numel(), 61, 0.0, 3.0)));
    const auto dm = g::round_to(dt, tt::cast_vector<float>(tt::random_tensor(s.numel(), 62)));
    tasn::TrilinearAttentionOptions opt;
    opt.beta = 7.0;
    const auto got = g::trilinear(dt, x, dm, s, opt, kernel);
    const auto xd = tt::cast_vector<double>(x), dmd = tt::cast_vector<double>(dm);
    std::vector<double> m(xd.size()), saved(saved_elems(s)), dx(xd.size());
    tasn::cpu::trilinear_attention_forward(tasn::TrilinearForwardArgs<double>{
        v4<const double>(xd.data(), s), v4(m.data(), s), tasn::Tensor1<double>(saved.data(), {saved_elems(s)}), opt});
    tasn::cpu::trilinear_attention_backward(tasn::TrilinearBackwardArgs<double>{
        v4<const double>(xd.data(), s), v4<const double>(dmd.data(), s),
        tasn::Tensor1<const double>(saved.data(), {saved_elems(s)}), v4(dx.data(), s), opt});
    const auto pre = tol::trilinear_pre(dt, xd, dmd, s, 7.0, kernel);
    expect_within(got.m, m, dt, pre.m, "m");
    expect_within(got.dx_saved, dx, dt, pre.dx, "dx (saved)");
    expect_within(got.dx_recompute, dx, dt, pre.dx, "dx (recomputed)");
    expect_within(got.saved, saved, dt, pre.saved, "saved S|A");
    // Norm-wise as well: the elements' errors are independent, so they cannot all sit near their
    // bounds (a rounding's rms is below u |v| / sqrt(3), the statistical part's 1 / kLambda of its bound).
    std::vector<double> err(dx.size());
    for (std::size_t i = 0; i < dx.size(); ++i) err[i] = double(got.dx_saved[i]) - dx[i];
    EXPECT_LE(tol::norm2(err), 0.5 * tol::norm2(tol::allowed(dt, dx, pre.dx, tol::kGpuSafety)));
  }
}

INSTANTIATE_TEST_SUITE_P(AllTypes, Gpu,
                         ::testing::Combine(::testing::Values(Dtype::F32, Dtype::F16, Dtype::BF16),
                                            ::testing::Values(Kernel::Auto, Kernel::Warp, Kernel::Block)),
                         [](const auto& p) { return g::label(std::get<0>(p.param), std::get<1>(p.param)); });

// ---- validation and error conversion: no device needed ---------------------------------------

TEST(CudaValidation, WorkspaceSizes) {
  const TrilinearShape s{2, 3, 4, 5};  // NCP = 120, NCC = 18
  auto al = [](std::size_t b) { return (b + 255) / 256 * 256; };
  // forward with saved: B (float, NCC); without: S, A (T) too
  EXPECT_EQ(g::trilinear_workspace_bytes(Dtype::F32, s, false, true, false), al(18 * 4));
  EXPECT_EQ(g::trilinear_workspace_bytes(Dtype::F16, s, false, false, false), al(120 * 2) + al(18 * 2) + al(18 * 4));
  // backward with saved, float: dA (f32 NCC), dB (T NCC), dS (f32 NCP); dx doubles as accumulator
  EXPECT_EQ(g::trilinear_workspace_bytes(Dtype::F32, s, true, true, false), al(18 * 4) + al(18 * 4) + al(120 * 4));
  // half adds the float accumulator
  EXPECT_EQ(g::trilinear_workspace_bytes(Dtype::F16, s, true, true, false),
            al(18 * 4) + al(18 * 2) + al(120 * 4) + al(120 * 4));
  // without saved: S, A, B(=dA) recomputed into the workspace
  EXPECT_EQ(g::trilinear_workspace_bytes(Dtype::BF16, s, true, false, false),
            al(120 * 2) + al(18 * 2) + al(18 * 4) + al(18 * 2) + al(120 * 4) + al(120 * 4));
  // check_finite (the default) puts the value-check slots first
  EXPECT_EQ(g::trilinear_workspace_bytes(Dtype::F32, s, false, true, true), al(4 * 8) + al(18 * 4));
  EXPECT_EQ(g::trilinear_workspace_bytes(Dtype::BF16, s, true, false, true),
            al(4 * 8) + al(120 * 2) + al(18 * 2) + al(18 * 4) + al(18 * 2) + al(120 * 4) + al(120 * 4));
  // an empty batch needs nothing, and is a no-op without a workspace (no device work at all)
  const TrilinearShape e{0, 3, 4, 5};
  EXPECT_EQ(g::trilinear_workspace_bytes(Dtype::F16, e, true, false, true), 0u);
  EXPECT_EQ(g::trilinear_workspace_bytes(Dtype::F32, e, false, false, true), 0u);
  std::vector<float> buf(8);
  EXPECT_NO_THROW(g::trilinear_forward_validation_only(
      tasn::TrilinearForwardArgs<float>{v4<const float>(buf.data(), e), v4(buf.data(), e), {}, {}}, {}));
}

// The CUDA operators refuse invalid arguments with the CPU operators' messages (prefix "cuda::"),
// before any device work: the same args struct goes to both (its host pointers are never
// dereferenced by the CUDA side, which throws first). No device needed.
class CpuCudaRefusal : public ::testing::Test {
 protected:
  const TrilinearShape s{2, 3, 4, 5};
  std::vector<float> x = std::vector<float>(120, 0.5f), out = std::vector<float>(512, 3.f);
  tasn::TrilinearForwardArgs<float> fwd() {
    return {v4<const float>(x.data(), s), v4(out.data(), s), {}, {}};
  }
  tasn::TrilinearBackwardArgs<float> bwd() {
    return {v4<const float>(x.data(), s), v4<const float>(x.data(), s), {}, v4(out.data(), s), {}};
  }
  static void same(const tasn::TrilinearForwardArgs<float>& a, Workspace ws, const std::string& needle) {
    const std::string cpu = tt::invalid_argument_message([&] { tasn::cpu::trilinear_attention_forward(a, ws); });
    const std::string cuda = tt::invalid_argument_message([&] { g::trilinear_forward_validation_only(a, ws); });
    EXPECT_NE(cpu.find(needle), std::string::npos) << cpu;
    EXPECT_EQ(cuda, "cuda::" + cpu);
  }
  static void same(const tasn::TrilinearBackwardArgs<float>& a, Workspace ws, const std::string& needle) {
    const std::string cpu = tt::invalid_argument_message([&] { tasn::cpu::trilinear_attention_backward(a, ws); });
    const std::string cuda = tt::invalid_argument_message([&] { g::trilinear_backward_validation_only(a, ws); });
    EXPECT_NE(cpu.find(needle), std::string::npos) << cpu;
    EXPECT_EQ(cuda, "cuda::" + cpu);
  }
};

TEST_F(CpuCudaRefusal, Shapes) {
  auto a = fwd();
  a.m = tasn::Tensor4<float>(out.data(), {2, 3, 4, 6});
  same(a, {}, "trilinear_attention_forward: m has shape (2, 3, 4, 6) but (N, C, H, W) = (2, 3, 4, 5) is required");
  a = fwd();
  a.x = tasn::Tensor4<const float>(x.data(), {2, 3, 4, 5}, {60, 20, 1, 4});  // W x H transposed
  same(a, {}, "x of shape (2, 3, 4, 5) has strides (60, 20, 1, 4); the operator needs it packed row-major");
  a = fwd();
  a.x = tasn::Tensor4<const float>(x.data(), {2, 0, 4, 5});
  same(a, {}, "trilinear_attention_forward: x must have shape (N, C, H, W) with N >= 0 and the other sizes >= 1, got (2, 0, 4, 5)");
  a.x = tasn::Tensor4<const float>(x.data(), {-1, 3, 4, 5});
  same(a, {}, "x must have shape (N, C, H, W) with N >= 0 and the other sizes >= 1, got (-1, 3, 4, 5)");
  a = fwd();
  a.saved = tasn::Tensor1<float>(out.data(), {10});
  same(a, {}, "saved has shape (10) but (N*C*(H*W + C)) = (" + std::to_string(saved_elems(s)) + ") is required");
  a = fwd();
  a.x = tasn::Tensor4<const float>(x.data(), {1, std::int64_t(1) << 32, 1, 1});  // C * C overflows
  a.m = tasn::Tensor4<float>(out.data(), {1, std::int64_t(1) << 32, 1, 1});
  same(a, {}, "trilinear_attention_forward: size 4294967296 x 4294967296 overflows 64-bit indexing");
  auto b = bwd();
  b.dm = {};
  same(b, {}, "trilinear_attention_backward: dm is absent (a null view) but is required");
  b = bwd();
  b.dx = tasn::Tensor4<float>(out.data(), {1, 3, 4, 5});
  same(b, {}, "dx has shape (1, 3, 4, 5) but (N, C, H, W) = (2, 3, 4, 5) is required");
  b = bwd();
  b.x = {};
  same(b, {}, "x is absent (a null view) but is required");
  EXPECT_TRUE(std::all_of(out.begin(), out.end(), [](float v) { return v == 3.f; }));
}

TEST_F(CpuCudaRefusal, OptionRanges) {
  for (double beta : {-2.0, 0.0, 1e39}) {
    auto a = fwd();
    a.options.beta = beta;
    same(a, {}, beta > 1 ? "beta must be finite in float" : "beta must be finite and > 0");
    auto b = bwd();
    b.options.beta = beta;
    same(b, {}, "trilinear_attention_backward: beta must be finite");
  }
}

TEST_F(CpuCudaRefusal, Workspace) {
  // Misaligned (and large enough for either backend): the same message.
  alignas(256) static unsigned char buf[1 << 16];
  same(fwd(), Workspace{buf + 4, sizeof(buf) - 4}, "workspace must be 256-byte aligned");
  same(bwd(), Workspace{buf + 4, sizeof(buf) - 4}, "workspace must be 256-byte aligned");
  // Too small: the same message, each with its own backend's workspace_bytes(args).
  for (bool backward : {false, true}) {
    const Workspace ws{buf, 16};
    const std::string cpu = tt::invalid_argument_message([&] {
      backward ? tasn::cpu::trilinear_attention_backward(bwd(), ws) : tasn::cpu::trilinear_attention_forward(fwd(), ws);
    });
    const std::string cuda = tt::invalid_argument_message([&] {
      backward ? g::trilinear_backward_validation_only(bwd(), ws) : g::trilinear_forward_validation_only(fwd(), ws);
    });
    const std::size_t cpu_need = backward ? tasn::cpu::workspace_bytes(bwd()) : tasn::cpu::workspace_bytes(fwd());
    const std::size_t cuda_need = backward ? g::trilinear_workspace_bytes(bwd()) : g::trilinear_workspace_bytes(fwd());
    const std::string op = backward ? "trilinear_attention_backward" : "trilinear_attention_forward";
    const auto msg = [&](std::size_t need) {
      return op + ": workspace holds 16 bytes but " + std::to_string(need) + " are needed (query workspace_bytes(args))";
    };
    EXPECT_EQ(cpu, msg(cpu_need));
    EXPECT_EQ(cuda, "cuda::" + msg(cuda_need));
  }
  // A null workspace: the CPU path allocates its own, the CUDA path refuses.
  const std::size_t need = g::trilinear_workspace_bytes(fwd());
  EXPECT_EQ(tt::invalid_argument_message([&] { g::trilinear_forward_validation_only(fwd(), Workspace{nullptr, need}); }),
            "cuda::trilinear_attention_forward: workspace is null but " + std::to_string(need) + " bytes are needed");
  // The CUDA-only argument: the cuBLAS handle.
  EXPECT_EQ(tt::invalid_argument_message([&] { g::trilinear_forward_validation_only(fwd(), Workspace{buf, need}, true); }),
            "cuda::trilinear_attention_forward: ctx.cublas is null (create one, e.g. tasn::cuda::CublasHandle)");
  EXPECT_TRUE(std::all_of(out.begin(), out.end(), [](float v) { return v == 3.f; }));
}

// With a device: a NaN input is refused with the same message on both backends (nothing written);
// with check_finite = false NaN propagates to the same outputs on both.
TEST(TrilinearGpuNonFinite, SameRefusalAndPropagationAsCpu) {
  std::string reason;
  if (!g::device_available(&reason)) GTEST_SKIP() << reason;
  const TrilinearShape s{2, 3, 4, 5};
  auto x = tt::cast_vector<float>(tt::random_tensor(s.numel(), 91, -1.0, 1.0));
  auto dm = tt::cast_vector<float>(tt::random_tensor(s.numel(), 92));
  std::vector<float> m(x.size()), dx(x.size()), saved(saved_elems(s));
  auto cpu_fwd = [&](const tasn::TrilinearAttentionOptions& o) {
    tasn::cpu::trilinear_attention_forward(tasn::TrilinearForwardArgs<float>{
        v4<const float>(x.data(), s), v4(m.data(), s), tasn::Tensor1<float>(saved.data(), {saved_elems(s)}), o});
  };
  auto cpu_bwd = [&](const tasn::TrilinearAttentionOptions& o) {
    tasn::cpu::trilinear_attention_backward(tasn::TrilinearBackwardArgs<float>{
        v4<const float>(x.data(), s), v4<const float>(dm.data(), s),
        tasn::Tensor1<const float>(saved.data(), {saved_elems(s)}), v4(dx.data(), s), o});
  };
  tasn::TrilinearAttentionOptions opt;
  x[37] = std::nanf("");
  std::string cpu = tt::invalid_argument_message([&] { cpu_fwd(opt); });
  EXPECT_EQ(cpu, "trilinear_attention_forward: x holds a non-finite value (nan) at flat index 37 of 120");
  EXPECT_EQ(tt::invalid_argument_message([&] { g::trilinear(Dtype::F32, x, dm, s, opt, Kernel::Auto); }), "cuda::" + cpu);
  x[37] = 0.25f;
  dm[101] = -INFINITY;
  cpu_fwd(opt);
  cpu = tt::invalid_argument_message([&] { cpu_bwd(opt); });
  EXPECT_EQ(cpu, "trilinear_attention_backward: dm holds a non-finite value (-inf) at flat index 101 of 120");
  EXPECT_EQ(tt::invalid_argument_message([&] { g::trilinear(Dtype::F32, x, dm, s, opt, Kernel::Auto); }), "cuda::" + cpu);

  opt.check_finite = false;
  dm[101] = 0.5f;
  x[37] = std::nanf("");
  cpu_fwd(opt);
  cpu_bwd(opt);
  for (Kernel k : {Kernel::Auto, Kernel::Block}) {
    const auto got = g::trilinear(Dtype::F32, x, dm, s, opt, k);
    for (std::size_t i = 0; i < m.size(); ++i) {
      EXPECT_EQ(std::isnan(got.m[i]), std::isnan(m[i])) << "m[" << i << "] " << got.m[i] << " vs " << m[i];
      EXPECT_EQ(std::isnan(got.dx_saved[i]), std::isnan(dx[i])) << "dx[" << i << "] " << got.dx_saved[i] << " vs " << dx[i];
    }
    EXPECT_TRUE(std::isnan(got.m[37])) << "NaN must propagate to m";
  }
}

TEST(CudaValidation, CudaErrorsBecomeCudaError) {
  try {
    g::raise_cuda_error();
    FAIL() << "no exception";
  } catch (const tasn::CudaError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("cudaMemcpy"), std::string::npos) << msg;
    EXPECT_NE(msg.find("gpu_runners.cu"), std::string::npos) << msg;
  }
}

}  // namespace
