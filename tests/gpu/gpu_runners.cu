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
                          const TrilinearShape& s, double beta, Kernel k) {
  return with_dtype(d, [&](auto tag) {
    using T = decltype(tag);
    TrilinearAttentionOptions opt;
    opt.beta = beta;
    Stream stream;  // declared before the handle: destroyed after it
    tasn::cuda::CublasHandle cublas;
    const tasn::cuda::Context ctx{stream.get(), cublas.get(), row_kernel(k)};
    const std::size_t n = x.size(), ns = static_cast<std::size_t>(trilinear_saved_elems(s));
    auto dx_ = upload(to_storage<T>(x));
    auto ddm = upload(to_storage<T>(dm));
    DeviceBuffer<T> dmo(n), dsaved(ns), ddx1(n), ddx2(n);
    const std::size_t wf = tasn::cuda::trilinear_attention_forward_workspace_bytes<T>(s, true);
    const std::size_t wb1 = tasn::cuda::trilinear_attention_backward_workspace_bytes<T>(s, true);
    const std::size_t wb2 = tasn::cuda::trilinear_attention_backward_workspace_bytes<T>(s, false);
    DeviceBuffer<unsigned char> ws(std::max(wf, std::max(wb1, wb2)));
    tasn::cuda::trilinear_attention_forward<T>(dx_.get(), dmo.get(), dsaved.get(), s, opt, ws.get(), wf, ctx);
    tasn::cuda::trilinear_attention_backward<T>(dx_.get(), ddm.get(), dsaved.get(), ddx1.get(), s, opt,
                                                ws.get(), wb1, ctx);
    tasn::cuda::trilinear_attention_backward<T>(dx_.get(), ddm.get(), nullptr, ddx2.get(), s, opt,
                                                ws.get(), wb2, ctx);
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
    tasn::cuda::softmax_rows(din.get(), dout.get(), rows, len, scale, nullptr, row_kernel(k));
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
    tasn::cuda::softmax_backward_rows(dyv.get(), ddy.get(),
                                      add.empty() ? static_cast<const float*>(nullptr) : dadd.get(),
                                      dout.get(), rows, len, scale, nullptr, row_kernel(k));
    TASN_CUDA_CHECK(cudaDeviceSynchronize());
    return to_float_vec(download(dout, y.size()));
  });
}

void trilinear_forward_validation_only(const TrilinearShape& s, double beta,
                                       std::size_t workspace_bytes, bool null_workspace,
                                       bool null_cublas, bool null_x) {
  // Fake, never dereferenced device addresses (256-byte aligned).
  float* fake = reinterpret_cast<float*>(std::uintptr_t(1) << 20);
  TrilinearAttentionOptions opt;
  opt.beta = beta;
  const tasn::cuda::Context ctx{nullptr, null_cublas ? nullptr : reinterpret_cast<cublasHandle_t>(fake),
                                tasn::cuda::RowKernel::Auto};
  tasn::cuda::trilinear_attention_forward<float>(null_x ? nullptr : fake, fake, nullptr, s, opt,
                                                 null_workspace ? nullptr : fake, workspace_bytes, ctx);
}

std::size_t trilinear_workspace_bytes(Dtype d, const TrilinearShape& s, bool backward,
                                      bool saved_given) {
  return with_dtype(d, [&](auto tag) {
    using T = decltype(tag);
    return backward ? tasn::cuda::trilinear_attention_backward_workspace_bytes<T>(s, saved_given)
                    : tasn::cuda::trilinear_attention_forward_workspace_bytes<T>(s, saved_given);
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
    const tasn::cuda::Context ctx{stream.get(), nullptr, row_kernel(kernel)};
    auto ds = upload(to_storage<T>(zs)), dt = upload(to_storage<T>(zt)), dl = upload(to_storage<T>(dloss));
    const std::size_t nl = static_cast<std::size_t>(tasn::loss_elems(n, opt.reduction));
    DeviceBuffer<T> loss(nl), gs(zs.size()), gt(teacher_grad ? zs.size() : 0);
    const std::size_t wb = tasn::cuda::distillation_workspace_bytes(n, opt.reduction);
    DeviceBuffer<unsigned char> ws(wb);
    tasn::cuda::distillation_loss<T>(ds.get(), dt.get(), n, k, opt, loss.get(), gs.get(),
                                     teacher_grad ? gt.get() : nullptr, dloss.empty() ? nullptr : dl.get(),
                                     ws.get(), wb, ctx);
    TASN_CUDA_CHECK(cudaStreamSynchronize(stream.get()));
    return LossResult{to_float_vec(download(loss, nl)), to_float_vec(download(gs, zs.size())),
                      teacher_grad ? to_float_vec(download(gt, zs.size())) : std::vector<float>{}, {}};
  });
}

LossResult cross_entropy(Dtype d, const std::vector<float>& z, const std::vector<long long>& labels,
                         long n, long k, const CrossEntropyOptions& opt,
                         const std::vector<float>& dloss, Kernel kernel) {
  return with_dtype(d, [&](auto tag) {
    using T = decltype(tag);
    Stream stream;
    const tasn::cuda::Context ctx{stream.get(), nullptr, row_kernel(kernel)};
    auto dz = upload(to_storage<T>(z)), dl = upload(to_storage<T>(dloss));
    auto dy = upload(std::vector<std::int64_t>(labels.begin(), labels.end()));
    const std::size_t nl = static_cast<std::size_t>(tasn::loss_elems(n, opt.reduction));
    DeviceBuffer<T> loss(nl), g(z.size());
    DeviceBuffer<std::int64_t> status(2);
    const std::size_t wb = tasn::cuda::cross_entropy_workspace_bytes(n, opt.reduction);
    DeviceBuffer<unsigned char> ws(wb);
    tasn::cuda::softmax_cross_entropy<T>(dz.get(), dy.get(), n, k, opt, loss.get(), g.get(),
                                         dloss.empty() ? nullptr : dl.get(), status.get(), ws.get(), wb, ctx);
    TASN_CUDA_CHECK(cudaStreamSynchronize(stream.get()));
    const auto st = status.to_host();
    return LossResult{to_float_vec(download(loss, nl)), to_float_vec(download(g, z.size())), {},
                      std::vector<long long>(st.begin(), st.end())};
  });
}

void cross_entropy_and_check(const std::vector<float>& z, const std::vector<long long>& labels,
                             long n, long k, const CrossEntropyOptions& opt) {
  Stream stream;
  const tasn::cuda::Context ctx{stream.get(), nullptr, tasn::cuda::RowKernel::Auto};
  auto dz = upload(z);
  auto dy = upload(std::vector<std::int64_t>(labels.begin(), labels.end()));
  DeviceBuffer<float> loss(tasn::loss_elems(n, opt.reduction));
  DeviceBuffer<std::int64_t> status(2);
  const std::size_t wb = tasn::cuda::cross_entropy_workspace_bytes(n, opt.reduction);
  DeviceBuffer<unsigned char> ws(wb);
  // the view overload (shape-checked) of the same operator
  tasn::cuda::softmax_cross_entropy<float>(tasn::MatrixView<const float>(dz.get(), n, k),
                                           tasn::VectorView<const std::int64_t>(dy.get(), n), opt,
                                           tasn::VectorView<float>(loss.get(), static_cast<std::int64_t>(loss.size())),
                                           tasn::MatrixView<float>(), tasn::VectorView<const float>(),
                                           status.get(), ws.get(), wb, ctx);
  tasn::cuda::check_label_status(status.get(), k, opt.ignore_index, stream.get());
}

std::vector<long long> topk(Dtype d, const std::vector<float>& z, const std::vector<long long>& labels,
                            long n, long k, long max_k, long ignore_index) {
  return with_dtype(d, [&](auto tag) {
    using T = decltype(tag);
    auto dz = upload(to_storage<T>(z));
    auto dy = upload(std::vector<std::int64_t>(labels.begin(), labels.end()));
    DeviceBuffer<unsigned long long> c(max_k);
    tasn::cuda::topk_correct<T>(dz.get(), dy.get(), n, k, max_k, ignore_index, c.get(), tasn::cuda::Context{});
    TASN_CUDA_CHECK(cudaDeviceSynchronize());
    const auto h = c.to_host();
    return std::vector<long long>(h.begin(), h.end());
  });
}

void distillation_validation_only(long n, long k, const DistillationOptions& opt,
                                  std::size_t workspace_bytes) {
  float* fake = reinterpret_cast<float*>(std::uintptr_t(1) << 20);
  tasn::cuda::distillation_loss<float>(fake, fake, n, k, opt, fake, fake, nullptr, nullptr, fake,
                                       workspace_bytes, tasn::cuda::Context{});
}

std::vector<float> attention_map(Dtype d, const std::vector<float>& m, long N, long C, long h, long w,
                                 int mode, bool distinct, const std::vector<long long>& channels,
                                 unsigned long long seed, std::vector<long long>* chosen) {
  return with_dtype(d, [&](auto tag) {
    using T = decltype(tag);
    auto dm = upload(to_storage<T>(m));
    auto dch = upload(std::vector<std::int64_t>(channels.begin(), channels.end()));
    DeviceBuffer<float> out(N * h * w);
    DeviceBuffer<std::int64_t> ch(N);
    const tasn::cuda::Context ctx{};
    if (mode == 0)
      tasn::cuda::structure_map<T>(dm.get(), N, C, h, w, distinct, out.get(), ctx);
    else
      tasn::cuda::detail_map<T>(dm.get(), N, C, h, w, mode == 1, channels.empty() ? nullptr : dch.get(), seed,
                                out.get(), ch.get(), ctx);
    TASN_CUDA_CHECK(cudaDeviceSynchronize());
    if (chosen) {
      const auto h_ch = ch.to_host();
      chosen->assign(h_ch.begin(), h_ch.end());
    }
    return out.to_host();
  });
}

std::vector<float> upsample(const std::vector<float>& in, long N, long h, long w, long H, long W, bool squared) {
  auto d = upload(in);
  DeviceBuffer<float> out(N * H * W);
  tasn::cuda::upsample_bilinear(d.get(), N, h, w, H, W, squared, out.get(), tasn::cuda::Context{});
  TASN_CUDA_CHECK(cudaDeviceSynchronize());
  return out.to_host();
}

Marginals marginals(const std::vector<float>& map, long N, long h, long w, long Hs, long Ws) {
  auto d = upload(map);
  DeviceBuffer<float> my(N * Hs), mx(N * Ws);
  DeviceBuffer<unsigned char> fb(N);
  tasn::cuda::attention_marginals(d.get(), N, h, w, Hs, Ws, my.get(), mx.get(), fb.get(), tasn::cuda::Context{});
  TASN_CUDA_CHECK(cudaDeviceSynchronize());
  return {my.to_host(), mx.to_host(), fb.to_host()};
}

SepGrid sampling_grid(const std::vector<float>& my, const std::vector<float>& mx, long N, long Hs, long Ws,
                      const GridOptions& opt) {
  auto dy = upload(my), dx = upload(mx);
  DeviceBuffer<float> gy(N * opt.out_h), gx(N * opt.out_w);
  tasn::cuda::sampling_grid(dy.get(), dx.get(), N, Hs, Ws, opt, gy.get(), gx.get(), tasn::cuda::Context{});
  TASN_CUDA_CHECK(cudaDeviceSynchronize());
  return {gy.to_host(), gx.to_host()};
}

std::vector<float> sample_separable(Dtype d, const std::vector<float>& img, long N, long C, long Hi, long Wi,
                                   const std::vector<float>& gy, const std::vector<float>& gx, long Ho, long Wo) {
  return with_dtype(d, [&](auto tag) {
    using T = decltype(tag);
    auto di = upload(to_storage<T>(img));
    auto dy = upload(gy), dx = upload(gx);
    DeviceBuffer<T> out(N * C * Ho * Wo);
    tasn::cuda::sample_separable<T>(di.get(), N, C, Hi, Wi, dy.get(), dx.get(), Ho, Wo, out.get(), tasn::cuda::Context{});
    TASN_CUDA_CHECK(cudaDeviceSynchronize());
    return to_float_vec(out.to_host());
  });
}

std::vector<float> sample_separable_backward(Dtype d, const std::vector<float>& dout, long N, long C, long Hi,
                                             long Wi, const std::vector<float>& gy, const std::vector<float>& gx,
                                             long Ho, long Wo) {
  return with_dtype(d, [&](auto tag) {
    using T = decltype(tag);
    auto dd = upload(to_storage<T>(dout));
    auto dy = upload(gy), dx = upload(gx);
    DeviceBuffer<T> dimg(N * C * Hi * Wi);
    const std::size_t wb = tasn::cuda::sample_separable_backward_workspace_bytes(N, C, Hi, Wi, Ho, Wo);
    DeviceBuffer<unsigned char> ws(wb);
    tasn::cuda::sample_separable_backward<T>(dd.get(), N, C, Hi, Wi, dy.get(), dx.get(), Ho, Wo, dimg.get(), ws.get(),
                                             wb, tasn::cuda::Context{});
    TASN_CUDA_CHECK(cudaDeviceSynchronize());
    return to_float_vec(dimg.to_host());
  });
}

std::vector<float> sample_grid(Dtype d, const std::vector<float>& img, long N, long C, long Hi, long Wi,
                               const std::vector<float>& grid, long Ho, long Wo) {
  return with_dtype(d, [&](auto tag) {
    using T = decltype(tag);
    auto di = upload(to_storage<T>(img));
    auto dg = upload(grid);
    DeviceBuffer<T> out(N * C * Ho * Wo);
    tasn::cuda::sample_grid<T>(di.get(), N, C, Hi, Wi, dg.get(), Ho, Wo, out.get(), tasn::cuda::Context{});
    TASN_CUDA_CHECK(cudaDeviceSynchronize());
    return to_float_vec(out.to_host());
  });
}

std::vector<float> attention_sample(Dtype d, const std::vector<float>& img, long N, long C, long Hi, long Wi,
                                    const std::vector<float>& attention, long Ha, long Wa,
                                    const AttentionSampleOptions& opt, SepGrid* grid,
                                    std::vector<unsigned char>* fallback) {
  return with_dtype(d, [&](auto tag) {
    using T = decltype(tag);
    auto di = upload(to_storage<T>(img));
    auto da = upload(attention);
    DeviceBuffer<T> out(N * C * opt.grid.out_h * opt.grid.out_w);
    DeviceBuffer<float> gy(N * opt.grid.out_h), gx(N * opt.grid.out_w);
    DeviceBuffer<unsigned char> fb(N);
    const std::size_t wb = tasn::cuda::attention_sample_workspace_bytes(N, Hi, Wi, opt);
    DeviceBuffer<unsigned char> ws(wb);
    tasn::cuda::attention_sample<T>(di.get(), N, C, Hi, Wi, da.get(), Ha, Wa, opt, out.get(), gy.get(), gx.get(),
                                    fb.get(), ws.get(), wb, tasn::cuda::Context{});
    TASN_CUDA_CHECK(cudaDeviceSynchronize());
    if (grid) *grid = {gy.to_host(), gx.to_host()};
    if (fallback) *fallback = fb.to_host();
    return to_float_vec(out.to_host());
  });
}

GridGrads sample_grid_backward(Dtype d, const std::vector<float>& img, const std::vector<float>& grid,
                               const std::vector<float>& dout, long N, long C, long Hi, long Wi, long Ho, long Wo) {
  return with_dtype(d, [&](auto tag) {
    using T = decltype(tag);
    auto di = upload(to_storage<T>(img));
    auto dg = upload(grid);
    auto dd = upload(to_storage<T>(dout));
    DeviceBuffer<T> dimg(img.size());
    DeviceBuffer<float> dgrid(grid.size());
    const std::size_t wb = tasn::cuda::sample_grid_backward_workspace_bytes(N, C, Hi, Wi, std::is_same_v<T, float>);
    DeviceBuffer<unsigned char> ws(wb);
    tasn::cuda::sample_grid_backward<T>(di.get(), dg.get(), dd.get(), N, C, Hi, Wi, Ho, Wo, dimg.get(), dgrid.get(),
                                        ws.get(), wb, tasn::cuda::Context{});
    TASN_CUDA_CHECK(cudaDeviceSynchronize());
    return GridGrads{to_float_vec(dimg.to_host()), dgrid.to_host()};
  });
}

namespace {
// A fake, 256-byte aligned device address: the validation-only runners must throw before using it.
template <class T>
T* fake_ptr() {
  return reinterpret_cast<T*>(std::uintptr_t(1) << 20);
}
}  // namespace

void attention_sample_validation_only(long N, long C, long Hi, long Wi, long Ha, long Wa,
                                      const AttentionSampleOptions& opt) {
  tasn::cuda::attention_sample<float>(fake_ptr<float>(), N, C, Hi, Wi, fake_ptr<float>(), Ha, Wa, opt, fake_ptr<float>(),
                                      nullptr, nullptr, nullptr, fake_ptr<void>(), std::size_t(1) << 62,
                                      tasn::cuda::Context{});
}

void sampling_grid_validation_only(long N, long Hs, long Ws, const GridOptions& opt) {
  tasn::cuda::sampling_grid(fake_ptr<float>(), fake_ptr<float>(), N, Hs, Ws, opt, fake_ptr<float>(), fake_ptr<float>(),
                            tasn::cuda::Context{});
}

void sampling_validation_only(bool general, bool backward, long N, long C, long Hi, long Wi, long Ho, long Wo) {
  float* f = fake_ptr<float>();
  const tasn::cuda::Context ctx{};
  if (general && backward)
    tasn::cuda::sample_grid_backward<float>(f, f, f, N, C, Hi, Wi, Ho, Wo, f, f, fake_ptr<void>(), std::size_t(1) << 62, ctx);
  else if (general)
    tasn::cuda::sample_grid<float>(f, N, C, Hi, Wi, f, Ho, Wo, f, ctx);
  else if (backward)
    tasn::cuda::sample_separable_backward<float>(f, N, C, Hi, Wi, f, f, Ho, Wo, f, fake_ptr<void>(), std::size_t(1) << 62,
                                                 ctx);
  else
    tasn::cuda::sample_separable<float>(f, N, C, Hi, Wi, f, f, Ho, Wo, f, ctx);
}

std::size_t attention_sample_workspace_bytes(long N, long Hi, long Wi, const AttentionSampleOptions& opt) {
  return tasn::cuda::attention_sample_workspace_bytes(N, Hi, Wi, opt);
}

std::size_t sample_separable_backward_workspace_bytes(long N, long C, long Hi, long Wi, long Ho, long Wo) {
  return tasn::cuda::sample_separable_backward_workspace_bytes(N, C, Hi, Wi, Ho, Wo);
}

std::size_t sample_grid_backward_workspace_bytes(long N, long C, long Hi, long Wi) {
  return tasn::cuda::sample_grid_backward_workspace_bytes(N, C, Hi, Wi, true);
}

void cross_entropy_validation_only(long n, long k, const CrossEntropyOptions& opt) {
  float* f = fake_ptr<float>();
  tasn::cuda::softmax_cross_entropy<float>(f, fake_ptr<std::int64_t>(), n, k, opt, f, f, nullptr, nullptr,
                                           fake_ptr<void>(), std::size_t(1) << 40, tasn::cuda::Context{});
}

}  // namespace tasn::test::gpu
