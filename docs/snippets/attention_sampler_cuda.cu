// Attention sampling on a GPU: every tasn::cuda:: sampler operator on tiny data, float storage.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <vector>

#include "tasn/attention_sampler.cuh"
#include "tasn/core/device_buffer.cuh"

int main() {
  int devices = 0;
  const cudaError_t err = cudaGetDeviceCount(&devices);
  if (err != cudaSuccess || devices == 0) {
    std::printf("no CUDA device: %s\n", err != cudaSuccess ? cudaGetErrorString(err) : "0 devices");
    return 0;
  }
  using T = float;  // images: float, __half or __nv_bfloat16; maps, marginals and grids: float
  using tasn::cuda::DeviceBuffer;
  const std::int64_t N = 2, C = 3, h = 4, w = 4, Hi = 8, Wi = 8, Ho = 6, Wo = 6;
  auto m = DeviceBuffer<T>::from_host(std::vector<T>(N * C * h * w, 1.f));  // uniform attention
  auto img = DeviceBuffer<T>::from_host(std::vector<T>(N * C * Hi * Wi, 0.5f));
  auto dout = DeviceBuffer<T>::from_host(std::vector<T>(N * C * Ho * Wo, 1.f));
  DeviceBuffer<float> smap(N * h * w), dmap(N * h * w), up(N * Hi * Wi), my(N * Hi), mx(N * Wi), gy(N * Ho),
      gx(N * Wo), grid(N * Ho * Wo * 2), dgrid(N * Ho * Wo * 2);
  DeviceBuffer<T> out(N * C * Ho * Wo), dimg(N * C * Hi * Wi), out2(N * C * Ho * Wo);
  DeviceBuffer<unsigned char> fallback(N);

  const tasn::StructureMapArgs<T> sm{{m.get(), {N, C, h, w}}, {smap.get(), {N, h, w}}, {}};
  tasn::DetailMapArgs<T> dm;  // training: the seeded pick of a distinct channel per sample
  dm.m = sm.m;
  dm.out = {dmap.get(), {N, h, w}};
  const tasn::UpsampleArgs<float> us{{smap.get(), {N, h, w}}, {up.get(), {N, Hi, Wi}}, {}};
  const tasn::MarginalsArgs<float> ma{{smap.get(), {N, h, w}}, {my.get(), {N, Hi}}, {mx.get(), {N, Wi}}, {}, {}};
  const tasn::GridArgs<float> ga{{my.get(), {N, Hi}}, {mx.get(), {N, Wi}}, {gy.get(), {N, Ho}}, {gx.get(), {N, Wo}}, {}};
  const tasn::SampleSeparableArgs<T> sf{{img.get(), {N, C, Hi, Wi}}, ga.gy, ga.gx, {out.get(), {N, C, Ho, Wo}}, {}};
  const tasn::SampleSeparableBackwardArgs<T> sb{{dout.get(), {N, C, Ho, Wo}}, ga.gy, ga.gx,
                                                {dimg.get(), {N, C, Hi, Wi}}, {}};
  const tasn::SampleGridArgs<T> gf{sf.img, {grid.get(), {N, Ho, Wo, 2}}, {out2.get(), {N, C, Ho, Wo}}, {}};
  const tasn::SampleGridBackwardArgs<T> gb{sf.img, gf.grid, sb.dout, sb.dimg, {dgrid.get(), {N, Ho, Wo, 2}}, {}};
  const tasn::AttentionSampleArgs<T> as{sf.img, {smap.get(), {N, h, w}}, sf.out, {}, {}, {fallback.get(), {N}}, {}};

  const std::size_t bytes = std::max(
      {tasn::cuda::workspace_bytes(sm), tasn::cuda::workspace_bytes(dm), tasn::cuda::workspace_bytes(us),
       tasn::cuda::workspace_bytes(ma), tasn::cuda::workspace_bytes(ga), tasn::cuda::workspace_bytes(sf),
       tasn::cuda::workspace_bytes(sb), tasn::cuda::workspace_bytes(gf), tasn::cuda::workspace_bytes(gb),
       tasn::cuda::workspace_bytes(as)});
  DeviceBuffer<unsigned char> ws(bytes);
  const tasn::Workspace w_all{ws.get(), bytes};
  tasn::cuda::Stream stream;
  const tasn::cuda::Context ctx{stream.get(), nullptr};  // the sampler needs no cuBLAS handle

  tasn::cuda::structure_map(ctx, sm, w_all);
  tasn::cuda::detail_map(ctx, dm, w_all);
  tasn::cuda::upsample_bilinear(ctx, us, w_all);
  tasn::cuda::attention_marginals(ctx, ma, w_all);
  tasn::cuda::sampling_grid(ctx, ga, w_all);
  tasn::cuda::sample_separable(ctx, sf, w_all);
  tasn::cuda::sample_separable_backward(ctx, sb, w_all);
  cudaStreamSynchronize(stream.get());
  std::vector<float> hg(N * Ho * Wo * 2);  // the separable grid in general form
  tasn::detail::separable_to_general_grid(gy.to_host().data(), gx.to_host().data(), N, Ho, Wo, hg.data());
  cudaMemcpy(grid.get(), hg.data(), hg.size() * sizeof(float), cudaMemcpyHostToDevice);
  tasn::cuda::sample_grid(ctx, gf, w_all);
  tasn::cuda::sample_grid_backward(ctx, gb, w_all);
  tasn::cuda::attention_sample(ctx, as, w_all);
  cudaStreamSynchronize(stream.get());

  // Uniform attention: the identity grid (linspace(-1, 1, 6)), so a constant image samples to itself.
  const auto g = gy.to_host();
  const auto o = out.to_host(), o2 = out2.to_host();
  const float d0 = dimg.to_host()[0];  // corner pixel: only output (0, 0) reads it, with weight 1
  std::printf("attention sampler (CUDA): gy[0] = %f, gy[1] = %f, out[0] = %f, dimg[0] = %f, fallback = %d\n", g[0],
              g[1], o[0], d0, int(fallback.to_host()[0]));
  const bool ok = std::fabs(g[0] + 1.f) < 1e-6f && std::fabs(g[1] + 0.6f) < 1e-5f && std::fabs(o[0] - 0.5f) < 1e-6f &&
                  std::fabs(o2[7] - 0.5f) < 1e-6f && std::fabs(d0 - 1.f) < 1e-5f;
  return ok ? 0 : 1;
}
