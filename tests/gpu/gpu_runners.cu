// tests/gpu/gpu_runners.cu - see gpu_runners.h.
#include "gpu/gpu_runners.h"

#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "tasn/attention_sampler.cuh"
#include "tasn/core/cuda_check.cuh"
#include "tasn/core/device_buffer.cuh"
#include "tasn/core/dtype.cuh"
#include "tasn/core/gemm.cuh"
#include "tasn/core/row_softmax.cuh"
#include "support/loss_calls.h"
#include "tasn/losses.cuh"
#include "tasn/trilinear_attention.cuh"

namespace tasn::test::gpu {
namespace {

using tasn::cuda::DeviceBuffer;

template <class T>
std::vector<T> to_storage(const std::vector<float>& v) {
  std::vector<T> out(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) out[i] = tasn::cuda::from_float<T>(v[i]);
  return out;
}

template <class T>
std::vector<float> to_float_vec(const std::vector<T>& v) {
  std::vector<float> out(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) out[i] = tasn::cuda::to_float(v[i]);
  return out;
}

template <class T>
DeviceBuffer<T> upload(const std::vector<T>& host) {
  return DeviceBuffer<T>::from_host(host);
}

template <class T>
std::vector<T> download(const DeviceBuffer<T>& d, std::size_t n) {
  auto h = d.to_host();
  h.resize(n);
  return h;
}

using tasn::cuda::Stream;

tasn::cuda::RowKernel row_kernel(Kernel k) { return static_cast<tasn::cuda::RowKernel>(static_cast<int>(k)); }

template <class F>
auto with_dtype(Dtype d, F&& f) {
  switch (d) {
    case Dtype::F16: return f(__half{});
    case Dtype::BF16: return f(__nv_bfloat16{});
    default: return f(float{});
  }
}

}  // namespace

const char* dtype_name(Dtype d) {
  return with_dtype(d, [](auto t) { return tasn::cuda::type_name<decltype(t)>(); });
}

const char* kernel_name(Kernel k) {
  return k == Kernel::Warp ? "warp" : k == Kernel::Block ? "block" : "auto";
}

bool device_available(std::string* reason) {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    *reason = std::string("no usable CUDA device: cudaGetDeviceCount returned ") +
              cudaGetErrorName(err) + " (" + cudaGetErrorString(err) + ")";
    cudaGetLastError();
    return false;
  }
  if (count == 0) {
    *reason = "no usable CUDA device: cudaGetDeviceCount reports 0 devices";
    return false;
  }
  return true;
}

std::string device_description() {
  cudaDeviceProp p{};
  TASN_CUDA_CHECK(cudaGetDeviceProperties(&p, 0));
  return std::string(p.name) + ", compute capability " + std::to_string(p.major) + "." +
         std::to_string(p.minor) + ", " + std::to_string(p.totalGlobalMem >> 30) + " GiB";
}

std::vector<float> round_to(Dtype d, const std::vector<float>& v) {
  return with_dtype(d, [&](auto t) { return to_float_vec(to_storage<decltype(t)>(v)); });
}

TrilinearResult trilinear(Dtype d, const std::vector<float>& x, const std::vector<float>& dm,
                          const TrilinearShape& s, const TrilinearAttentionOptions& opt, Kernel k) {
  return with_dtype(d, [&](auto tag) {
    using T = decltype(tag);
    const tasn::cuda::testing::ScopedRowKernel force(row_kernel(k));
    Stream stream;  // declared before the handle: destroyed after it
    tasn::cuda::CublasHandle cublas;
    const tasn::cuda::Context ctx{stream.get(), cublas.get()};
    const std::size_t n = x.size(), ns = static_cast<std::size_t>(trilinear_saved_elems(s.n, s.c, s.h, s.w));
    auto dx_ = upload(to_storage<T>(x));
    auto ddm = upload(to_storage<T>(dm));
    DeviceBuffer<T> dmo(n), dsaved(ns), ddx1(n), ddx2(n);
    const Tensor4<const T> xv(dx_.get(), {s.n, s.c, s.h, s.w}), dmv(ddm.get(), {s.n, s.c, s.h, s.w});
    const Tensor1<T> sv(dsaved.get(), {static_cast<std::int64_t>(ns)});
    const TrilinearForwardArgs<T> fa{xv, Tensor4<T>(dmo.get(), {s.n, s.c, s.h, s.w}), sv, opt};
    const TrilinearBackwardArgs<T> b1{xv, dmv, sv, Tensor4<T>(ddx1.get(), {s.n, s.c, s.h, s.w}), opt};
    const TrilinearBackwardArgs<T> b2{xv, dmv, {}, Tensor4<T>(ddx2.get(), {s.n, s.c, s.h, s.w}), opt};
    const std::size_t wf = tasn::cuda::workspace_bytes(fa), wb1 = tasn::cuda::workspace_bytes(b1),
                      wb2 = tasn::cuda::workspace_bytes(b2);
    DeviceBuffer<unsigned char> ws(std::max(wf, std::max(wb1, wb2)));
    tasn::cuda::trilinear_attention_forward(ctx, fa, {ws.get(), wf});
    tasn::cuda::trilinear_attention_backward(ctx, b1, {ws.get(), wb1});
    tasn::cuda::trilinear_attention_backward(ctx, b2, {ws.get(), wb2});
    TASN_CUDA_CHECK(cudaStreamSynchronize(stream.get()));
    return TrilinearResult{to_float_vec(download(dmo, n)), to_float_vec(download(dsaved, ns)),
                           to_float_vec(download(ddx1, n)), to_float_vec(download(ddx2, n))};
  });
}

std::vector<float> softmax_rows(Dtype d, const std::vector<float>& in, long rows, long len,
                                float scale, Kernel k) {
  return with_dtype(d, [&](auto tag) {
    using T = decltype(tag);
    auto din = upload(to_storage<T>(in));
    DeviceBuffer<T> dout(in.size());
    const tasn::cuda::testing::ScopedRowKernel force(row_kernel(k));
    tasn::cuda::softmax_rows(din.get(), dout.get(), rows, len, scale, nullptr,
                             tasn::cuda::testing::forced_row_kernel());
    TASN_CUDA_CHECK(cudaDeviceSynchronize());
    return to_float_vec(download(dout, in.size()));
  });
}

std::vector<float> softmax_backward_rows(Dtype d, const std::vector<float>& y,
                                         const std::vector<float>& dy,
                                         const std::vector<float>& add, long rows, long len,
                                         float scale, Kernel k) {
  return with_dtype(d, [&](auto tag) {
    using T = decltype(tag);
    auto dyv = upload(to_storage<T>(y));
    auto ddy = upload(dy);
    auto dadd = upload(add);
    DeviceBuffer<T> dout(y.size());
    const tasn::cuda::testing::ScopedRowKernel force(row_kernel(k));
    tasn::cuda::softmax_backward_rows(dyv.get(), ddy.get(),
                                      add.empty() ? static_cast<const float*>(nullptr) : dadd.get(),
                                      dout.get(), rows, len, scale, nullptr,
                                      tasn::cuda::testing::forced_row_kernel());
    TASN_CUDA_CHECK(cudaDeviceSynchronize());
    return to_float_vec(download(dout, y.size()));
  });
}

namespace {
// A fake, never dereferenced cuBLAS handle (validation only).
tasn::cuda::Context fake_context(bool null_cublas) {
  return tasn::cuda::Context{nullptr, null_cublas ? nullptr : reinterpret_cast<cublasHandle_t>(std::uintptr_t(1) << 20)};
}
}  // namespace

void trilinear_forward_validation_only(const TrilinearForwardArgs<float>& args, Workspace ws, bool null_cublas) {
  tasn::cuda::trilinear_attention_forward(fake_context(null_cublas), args, ws);
}

void trilinear_backward_validation_only(const TrilinearBackwardArgs<float>& args, Workspace ws, bool null_cublas) {
  tasn::cuda::trilinear_attention_backward(fake_context(null_cublas), args, ws);
}

std::size_t trilinear_workspace_bytes(const TrilinearForwardArgs<float>& args) {
  return tasn::cuda::workspace_bytes(args);
}

std::size_t trilinear_workspace_bytes(const TrilinearBackwardArgs<float>& args) {
  return tasn::cuda::workspace_bytes(args);
}

std::size_t trilinear_workspace_bytes(Dtype d, const TrilinearShape& s, bool backward, bool saved_given,
                                      bool check_finite) {
  return with_dtype(d, [&](auto tag) {
    using T = decltype(tag);
    T* fake = reinterpret_cast<T*>(std::uintptr_t(1) << 20);  // sizes only: never dereferenced
    TrilinearAttentionOptions opt;
    opt.check_finite = check_finite;
    const Tensor4<T> v(fake, {s.n, s.c, s.h, s.w});
    const Tensor1<T> saved = saved_given ? Tensor1<T>(fake, {trilinear_saved_elems(s.n, s.c, s.h, s.w)}) : Tensor1<T>();
    return backward ? tasn::cuda::workspace_bytes(TrilinearBackwardArgs<T>{v, v, saved, v, opt})
                    : tasn::cuda::workspace_bytes(TrilinearForwardArgs<T>{v, v, saved, opt});
  });
}

void raise_cuda_error() {
  try {
    TASN_CUDA_CHECK(cudaMemcpy(nullptr, nullptr, 1, cudaMemcpyHostToDevice));
  } catch (...) {
    cudaGetLastError();  // clear the (non-sticky) error so later launch checks do not see it
    throw;
  }
}

LossResult distillation(Dtype d, const std::vector<float>& zs, const std::vector<float>& zt, long n,
                        long k, const DistillationOptions& opt, const std::vector<float>& dloss,
                        bool teacher_grad, Kernel kernel) {
  return with_dtype(d, [&](auto tag) {
    using T = decltype(tag);
    Stream stream;
    const tasn::cuda::testing::ScopedRowKernel forced(row_kernel(kernel));
    tasn::cuda::Context ctx;
    ctx.stream = stream.get();
    auto ds = upload(to_storage<T>(zs)), dt = upload(to_storage<T>(zt)), dl = upload(to_storage<T>(dloss));
    const std::size_t nl = static_cast<std::size_t>(tasn::loss_elems(n, opt.reduction));
    DeviceBuffer<T> loss(nl), gs(zs.size()), gt(teacher_grad ? zs.size() : 0);
    const auto args = tasn::test::distillation_args<T>(ds.get(), dt.get(), n, k, opt, loss.get(), gs.get(),
                                                       teacher_grad ? gt.get() : nullptr,
                                                       dloss.empty() ? nullptr : dl.get());
    const std::size_t wb = tasn::cuda::workspace_bytes(args);
    DeviceBuffer<unsigned char> ws(wb);
    tasn::cuda::distillation_loss(ctx, args, {ws.get(), wb});
    TASN_CUDA_CHECK(cudaStreamSynchronize(stream.get()));
    return LossResult{to_float_vec(download(loss, nl)), to_float_vec(download(gs, zs.size())),
                      teacher_grad ? to_float_vec(download(gt, zs.size())) : std::vector<float>{}};
  });
}

LossResult cross_entropy(Dtype d, const std::vector<float>& z, const std::vector<long long>& labels,
                         long n, long k, const CrossEntropyOptions& opt,
                         const std::vector<float>& dloss, Kernel kernel) {
  return with_dtype(d, [&](auto tag) {
    using T = decltype(tag);
    Stream stream;
    const tasn::cuda::testing::ScopedRowKernel forced(row_kernel(kernel));
    tasn::cuda::Context ctx;
    ctx.stream = stream.get();
    auto dz = upload(to_storage<T>(z)), dl = upload(to_storage<T>(dloss));
    auto dy = upload(std::vector<std::int64_t>(labels.begin(), labels.end()));
    const std::size_t nl = static_cast<std::size_t>(tasn::loss_elems(n, opt.reduction));
    DeviceBuffer<T> loss(nl), g(z.size());
    const auto args = tasn::test::cross_entropy_args<T>(dz.get(), dy.get(), n, k, opt, loss.get(), g.get(),
                                                        dloss.empty() ? nullptr : dl.get());
    const std::size_t wb = tasn::cuda::workspace_bytes(args);
    DeviceBuffer<unsigned char> ws(wb);
    tasn::cuda::softmax_cross_entropy(ctx, args, {ws.get(), wb});
    TASN_CUDA_CHECK(cudaStreamSynchronize(stream.get()));
    return LossResult{to_float_vec(download(loss, nl)), to_float_vec(download(g, z.size())), {}};
  });
}

std::vector<long long> topk(Dtype d, const std::vector<float>& z, const std::vector<long long>& labels,
                            long n, long k, long max_k, const TopkOptions& opt) {
  return with_dtype(d, [&](auto tag) {
    using T = decltype(tag);
    Stream stream;
    tasn::cuda::Context ctx;
    ctx.stream = stream.get();
    auto dz = upload(to_storage<T>(z));
    auto dy = upload(std::vector<std::int64_t>(labels.begin(), labels.end()));
    DeviceBuffer<std::int64_t> c(max_k);
    auto args = tasn::test::topk_args<T>(dz.get(), dy.get(), n, k, max_k, opt.ignore_index, c.get());
    args.options = opt;
    const std::size_t wb = tasn::cuda::workspace_bytes(args);
    DeviceBuffer<unsigned char> ws(wb);
    tasn::cuda::topk_correct(ctx, args, {ws.get(), wb});
    TASN_CUDA_CHECK(cudaStreamSynchronize(stream.get()));
    const auto h = c.to_host();
    return std::vector<long long>(h.begin(), h.end());
  });
}

void loss_validation_only(const DistillationArgs<float>& a, Workspace ws) {
  tasn::cuda::distillation_loss(tasn::cuda::Context{}, a, ws);
}
void loss_validation_only(const CrossEntropyArgs<float>& a, Workspace ws) {
  tasn::cuda::softmax_cross_entropy(tasn::cuda::Context{}, a, ws);
}
void loss_validation_only(const TopkArgs<float>& a, Workspace ws) {
  tasn::cuda::topk_correct(tasn::cuda::Context{}, a, ws);
}
std::size_t loss_workspace_bytes(const DistillationArgs<float>& a) { return tasn::cuda::workspace_bytes(a); }
std::size_t loss_workspace_bytes(const CrossEntropyArgs<float>& a) { return tasn::cuda::workspace_bytes(a); }
std::size_t loss_workspace_bytes(const TopkArgs<float>& a) { return tasn::cuda::workspace_bytes(a); }

// A device workspace of cuda::workspace_bytes(args) bytes (none when that is 0).
struct DeviceWorkspace {
  DeviceBuffer<unsigned char> buf;
  explicit DeviceWorkspace(std::size_t bytes) : buf(bytes) {}
  tasn::Workspace get() const { return {buf.get(), buf.size()}; }
};

std::vector<float> attention_map(Dtype d, const std::vector<float>& m, long N, long C, long h, long w,
                                 int mode, bool distinct, const std::vector<long long>& channels,
                                 unsigned long long seed, std::vector<long long>* chosen, bool check_finite) {
  return with_dtype(d, [&](auto tag) {
    using T = decltype(tag);
    auto dm = upload(to_storage<T>(m));
    auto dch = upload(std::vector<std::int64_t>(channels.begin(), channels.end()));
    DeviceBuffer<float> out(N * h * w);
    DeviceBuffer<std::int64_t> ch(N);
    const tasn::cuda::Context ctx{};
    const Tensor4<const T> mv(dm.get(), {N, C, h, w});
    const Tensor3<float> ov(out.get(), {N, h, w});
    if (mode == 0) {
      StructureMapArgs<T> a{mv, ov, {}};
      a.options.distinct = distinct;
      a.options.check_finite = check_finite;
      DeviceWorkspace ws(tasn::cuda::workspace_bytes(a));
      tasn::cuda::structure_map(ctx, a, ws.get());
    } else {
      DetailMapArgs<T> a;
      a.m = mv;
      if (!channels.empty()) a.channels = Tensor1<const std::int64_t>(dch.get(), {N});
      a.out = ov;
      a.chosen = Tensor1<std::int64_t>(ch.get(), {N});
      a.options.training = mode == 1;
      a.options.seed = seed;
      a.options.check_finite = check_finite;
      DeviceWorkspace ws(tasn::cuda::workspace_bytes(a));
      tasn::cuda::detail_map(ctx, a, ws.get());
    }
    TASN_CUDA_CHECK(cudaDeviceSynchronize());
    if (chosen) {
      const auto h_ch = ch.to_host();
      chosen->assign(h_ch.begin(), h_ch.end());
    }
    return out.to_host();
  });
}

std::vector<float> upsample(const std::vector<float>& in, long N, long h, long w, long H, long W, bool squared,
                            bool check_finite) {
  auto d = upload(in);
  DeviceBuffer<float> out(N * H * W);
  UpsampleArgs<float> a{{d.get(), {N, h, w}}, {out.get(), {N, H, W}}, {}};
  a.options.squared = squared;
  a.options.check_finite = check_finite;
  DeviceWorkspace ws(tasn::cuda::workspace_bytes(a));
  tasn::cuda::upsample_bilinear(tasn::cuda::Context{}, a, ws.get());
  TASN_CUDA_CHECK(cudaDeviceSynchronize());
  return out.to_host();
}

Marginals marginals(const std::vector<float>& map, long N, long h, long w, long Hs, long Ws, bool check_finite) {
  auto d = upload(map);
  DeviceBuffer<float> my(N * Hs), mx(N * Ws);
  DeviceBuffer<unsigned char> fb(N);
  MarginalsArgs<float> a{{d.get(), {N, h, w}}, {my.get(), {N, Hs}}, {mx.get(), {N, Ws}}, {fb.get(), {N}}, {}};
  a.options.check_finite = check_finite;
  DeviceWorkspace ws(tasn::cuda::workspace_bytes(a));
  tasn::cuda::attention_marginals(tasn::cuda::Context{}, a, ws.get());
  TASN_CUDA_CHECK(cudaDeviceSynchronize());
  return {my.to_host(), mx.to_host(), fb.to_host()};
}

SepGrid sampling_grid(const std::vector<float>& my, const std::vector<float>& mx, long N, long Hs, long Ws, long Ho,
                      long Wo, const GridOptions& opt) {
  auto dy = upload(my), dx = upload(mx);
  DeviceBuffer<float> gy(N * Ho), gx(N * Wo);
  const GridArgs<float> a{{dy.get(), {N, Hs}}, {dx.get(), {N, Ws}}, {gy.get(), {N, Ho}}, {gx.get(), {N, Wo}}, opt};
  DeviceWorkspace ws(tasn::cuda::workspace_bytes(a));
  tasn::cuda::sampling_grid(tasn::cuda::Context{}, a, ws.get());
  TASN_CUDA_CHECK(cudaDeviceSynchronize());
  return {gy.to_host(), gx.to_host()};
}

std::vector<float> sample_separable(Dtype d, const std::vector<float>& img, long N, long C, long Hi, long Wi,
                                   const std::vector<float>& gy, const std::vector<float>& gx, long Ho, long Wo,
                                   bool check_finite) {
  return with_dtype(d, [&](auto tag) {
    using T = decltype(tag);
    auto di = upload(to_storage<T>(img));
    auto dy = upload(gy), dx = upload(gx);
    DeviceBuffer<T> out(N * C * Ho * Wo);
    SampleSeparableArgs<T> a{{di.get(), {N, C, Hi, Wi}}, {dy.get(), {N, Ho}}, {dx.get(), {N, Wo}},
                             {out.get(), {N, C, Ho, Wo}}, {}};
    a.options.check_finite = check_finite;
    DeviceWorkspace ws(tasn::cuda::workspace_bytes(a));
    tasn::cuda::sample_separable(tasn::cuda::Context{}, a, ws.get());
    TASN_CUDA_CHECK(cudaDeviceSynchronize());
    return to_float_vec(out.to_host());
  });
}

std::vector<float> sample_separable_backward(Dtype d, const std::vector<float>& dout, long N, long C, long Hi,
                                             long Wi, const std::vector<float>& gy, const std::vector<float>& gx,
                                             long Ho, long Wo, bool check_finite) {
  return with_dtype(d, [&](auto tag) {
    using T = decltype(tag);
    auto dd = upload(to_storage<T>(dout));
    auto dy = upload(gy), dx = upload(gx);
    DeviceBuffer<T> dimg(N * C * Hi * Wi);
    SampleSeparableBackwardArgs<T> a{{dd.get(), {N, C, Ho, Wo}}, {dy.get(), {N, Ho}}, {dx.get(), {N, Wo}},
                                     {dimg.get(), {N, C, Hi, Wi}}, {}};
    a.options.check_finite = check_finite;
    DeviceWorkspace ws(tasn::cuda::workspace_bytes(a));
    tasn::cuda::sample_separable_backward(tasn::cuda::Context{}, a, ws.get());
    TASN_CUDA_CHECK(cudaDeviceSynchronize());
    return to_float_vec(dimg.to_host());
  });
}

std::vector<float> sample_grid(Dtype d, const std::vector<float>& img, long N, long C, long Hi, long Wi,
                               const std::vector<float>& grid, long Ho, long Wo, bool check_finite) {
  return with_dtype(d, [&](auto tag) {
    using T = decltype(tag);
    auto di = upload(to_storage<T>(img));
    auto dg = upload(grid);
    DeviceBuffer<T> out(N * C * Ho * Wo);
    SampleGridArgs<T> a{{di.get(), {N, C, Hi, Wi}}, {dg.get(), {N, Ho, Wo, 2}}, {out.get(), {N, C, Ho, Wo}}, {}};
    a.options.check_finite = check_finite;
    DeviceWorkspace ws(tasn::cuda::workspace_bytes(a));
    tasn::cuda::sample_grid(tasn::cuda::Context{}, a, ws.get());
    TASN_CUDA_CHECK(cudaDeviceSynchronize());
    return to_float_vec(out.to_host());
  });
}

std::vector<float> attention_sample(Dtype d, const std::vector<float>& img, long N, long C, long Hi, long Wi,
                                    const std::vector<float>& attention, long Ha, long Wa, long Ho, long Wo,
                                    const AttentionSampleOptions& opt, SepGrid* grid,
                                    std::vector<unsigned char>* fallback) {
  return with_dtype(d, [&](auto tag) {
    using T = decltype(tag);
    auto di = upload(to_storage<T>(img));
    auto da = upload(attention);
    DeviceBuffer<T> out(N * C * Ho * Wo);
    DeviceBuffer<float> gy(N * Ho), gx(N * Wo);
    DeviceBuffer<unsigned char> fb(N);
    const AttentionSampleArgs<T> a{{di.get(), {N, C, Hi, Wi}}, {da.get(), {N, Ha, Wa}}, {out.get(), {N, C, Ho, Wo}},
                                   {gy.get(), {N, Ho}},        {gx.get(), {N, Wo}},     {fb.get(), {N}},
                                   opt};
    DeviceWorkspace ws(tasn::cuda::workspace_bytes(a));
    tasn::cuda::attention_sample(tasn::cuda::Context{}, a, ws.get());
    TASN_CUDA_CHECK(cudaDeviceSynchronize());
    if (grid) *grid = {gy.to_host(), gx.to_host()};
    if (fallback) *fallback = fb.to_host();
    return to_float_vec(out.to_host());
  });
}

GridGrads sample_grid_backward(Dtype d, const std::vector<float>& img, const std::vector<float>& grid,
                               const std::vector<float>& dout, long N, long C, long Hi, long Wi, long Ho, long Wo,
                               bool check_finite) {
  return with_dtype(d, [&](auto tag) {
    using T = decltype(tag);
    auto di = upload(to_storage<T>(img));
    auto dg = upload(grid);
    auto dd = upload(to_storage<T>(dout));
    DeviceBuffer<T> dimg(img.size());
    DeviceBuffer<float> dgrid(grid.size());
    SampleGridBackwardArgs<T> a{{di.get(), {N, C, Hi, Wi}},   {dg.get(), {N, Ho, Wo, 2}},
                                {dd.get(), {N, C, Ho, Wo}},   {dimg.get(), {N, C, Hi, Wi}},
                                {dgrid.get(), {N, Ho, Wo, 2}}, {}};
    a.options.check_finite = check_finite;
    DeviceWorkspace ws(tasn::cuda::workspace_bytes(a));
    tasn::cuda::sample_grid_backward(tasn::cuda::Context{}, a, ws.get());
    TASN_CUDA_CHECK(cudaDeviceSynchronize());
    return GridGrads{to_float_vec(dimg.to_host()), dgrid.to_host()};
  });
}

TapLists tap_lists(const std::vector<float>& gy, const std::vector<float>& gx, long N, long Ho, long Wo, long Hi,
                   long Wi) {
  auto dy = upload(gy), dx = upload(gx);
  DeviceBuffer<int> yo(N * (Hi + 1)), ye(N * 2 * Ho), xo(N * (Wi + 1)), xe(N * 2 * Wo);
  DeviceBuffer<float> yw(N * 2 * Ho), xw(N * 2 * Wo);
  TASN_CUDA_CHECK(cudaMemset(ye.get(), 0xff, ye.bytes()));  // unused entries read -1
  TASN_CUDA_CHECK(cudaMemset(xe.get(), 0xff, xe.bytes()));
  TASN_CUDA_CHECK(cudaMemset(yw.get(), 0, yw.bytes()));
  TASN_CUDA_CHECK(cudaMemset(xw.get(), 0, xw.bytes()));
  tasn::cuda::detail_sampler::check_tap_list_limits("tap_lists", N, Hi, Wi, Ho, Wo);
  tasn::cuda::detail_sampler::build_tap_lists(tasn::cuda::Context{}, dy.get(), dx.get(), N, Ho, Wo, Hi, Wi,
                                              {yo.get(), ye.get(), yw.get()}, {xo.get(), xe.get(), xw.get()});
  TASN_CUDA_CHECK(cudaDeviceSynchronize());
  return {yo.to_host(), ye.to_host(), xo.to_host(), xe.to_host(), yw.to_host(), xw.to_host()};
}

namespace {
// A fake, 256-byte aligned device address: the validation-only runners must throw before using it.
template <class T>
T* fake_ptr() {
  return reinterpret_cast<T*>(std::uintptr_t(1) << 20);
}
}  // namespace

void sampler_validation_only(const StructureMapArgs<float>& a, Workspace ws) {
  tasn::cuda::structure_map(tasn::cuda::Context{}, a, ws);
}
void sampler_validation_only(const DetailMapArgs<float>& a, Workspace ws) {
  tasn::cuda::detail_map(tasn::cuda::Context{}, a, ws);
}
void sampler_validation_only(const UpsampleArgs<float>& a, Workspace ws) {
  tasn::cuda::upsample_bilinear(tasn::cuda::Context{}, a, ws);
}
void sampler_validation_only(const MarginalsArgs<float>& a, Workspace ws) {
  tasn::cuda::attention_marginals(tasn::cuda::Context{}, a, ws);
}
void sampler_validation_only(const GridArgs<float>& a, Workspace ws) {
  tasn::cuda::sampling_grid(tasn::cuda::Context{}, a, ws);
}
void sampler_validation_only(const SampleSeparableArgs<float>& a, Workspace ws) {
  tasn::cuda::sample_separable(tasn::cuda::Context{}, a, ws);
}
void sampler_validation_only(const SampleSeparableBackwardArgs<float>& a, Workspace ws) {
  tasn::cuda::sample_separable_backward(tasn::cuda::Context{}, a, ws);
}
void sampler_validation_only(const SampleGridArgs<float>& a, Workspace ws) {
  tasn::cuda::sample_grid(tasn::cuda::Context{}, a, ws);
}
void sampler_validation_only(const SampleGridBackwardArgs<float>& a, Workspace ws) {
  tasn::cuda::sample_grid_backward(tasn::cuda::Context{}, a, ws);
}
void sampler_validation_only(const AttentionSampleArgs<float>& a, Workspace ws) {
  tasn::cuda::attention_sample(tasn::cuda::Context{}, a, ws);
}
std::size_t sampler_workspace_bytes(const StructureMapArgs<float>& a) { return tasn::cuda::workspace_bytes(a); }
std::size_t sampler_workspace_bytes(const DetailMapArgs<float>& a) { return tasn::cuda::workspace_bytes(a); }
std::size_t sampler_workspace_bytes(const UpsampleArgs<float>& a) { return tasn::cuda::workspace_bytes(a); }
std::size_t sampler_workspace_bytes(const MarginalsArgs<float>& a) { return tasn::cuda::workspace_bytes(a); }
std::size_t sampler_workspace_bytes(const GridArgs<float>& a) { return tasn::cuda::workspace_bytes(a); }
std::size_t sampler_workspace_bytes(const SampleSeparableArgs<float>& a) { return tasn::cuda::workspace_bytes(a); }
std::size_t sampler_workspace_bytes(const SampleSeparableBackwardArgs<float>& a) {
  return tasn::cuda::workspace_bytes(a);
}
std::size_t sampler_workspace_bytes(const SampleGridArgs<float>& a) { return tasn::cuda::workspace_bytes(a); }
std::size_t sampler_workspace_bytes(const SampleGridBackwardArgs<float>& a) { return tasn::cuda::workspace_bytes(a); }
std::size_t sampler_workspace_bytes(const AttentionSampleArgs<float>& a) { return tasn::cuda::workspace_bytes(a); }


}  // namespace tasn::test::gpu
