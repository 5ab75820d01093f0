// Attention sampling on the CPU: every tasn::cpu:: sampler operator on tiny data, float.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "tasn/attention_sampler.h"

int main() {
  using T = float;  // or double
  const std::int64_t N = 2, C = 3, h = 4, w = 4, Hi = 8, Wi = 8, Ho = 6, Wo = 6;
  const std::vector<T> m(N * C * h * w, 1.f), img(N * C * Hi * Wi, 0.5f), dout(N * C * Ho * Wo, 1.f);
  std::vector<T> smap(N * h * w), dmap(N * h * w), up(N * Hi * Wi), my(N * Hi), mx(N * Wi), gy(N * Ho), gx(N * Wo),
      grid(N * Ho * Wo * 2), dgrid(grid.size()), out(N * C * Ho * Wo), out2(out.size()), dimg(img.size());
  std::vector<std::int64_t> chosen(N);
  std::vector<unsigned char> fallback(N);

  // Arguments: views (pointer + sizes) and options; the sizes come from the views.
  tasn::StructureMapArgs<T> sm{{m.data(), {N, C, h, w}}, {smap.data(), {N, h, w}}, {}};
  sm.options.distinct = true;  // equal channels count once
  tasn::DetailMapArgs<T> dm;   // training: the seeded pick of a distinct channel per sample
  dm.m = sm.m;
  dm.out = {dmap.data(), {N, h, w}};
  dm.chosen = {chosen.data(), {N}};
  dm.options.seed = 7;
  const tasn::UpsampleArgs<T> us{{smap.data(), {N, h, w}}, {up.data(), {N, Hi, Wi}}, {}};
  const tasn::MarginalsArgs<T> ma{{smap.data(), {N, h, w}}, {my.data(), {N, Hi}}, {mx.data(), {N, Wi}}, {}, {}};
  const tasn::GridArgs<T> ga{{my.data(), {N, Hi}}, {mx.data(), {N, Wi}}, {gy.data(), {N, Ho}}, {gx.data(), {N, Wo}}, {}};
  const tasn::SampleSeparableArgs<T> sf{{img.data(), {N, C, Hi, Wi}}, ga.gy, ga.gx, {out.data(), {N, C, Ho, Wo}}, {}};
  const tasn::SampleSeparableBackwardArgs<T> sb{{dout.data(), {N, C, Ho, Wo}}, ga.gy, ga.gx,
                                                {dimg.data(), {N, C, Hi, Wi}}, {}};
  const tasn::SampleGridArgs<T> gf{sf.img, {grid.data(), {N, Ho, Wo, 2}}, {out2.data(), {N, C, Ho, Wo}}, {}};
  const tasn::SampleGridBackwardArgs<T> gb{sf.img, gf.grid, sb.dout, sb.dimg, {dgrid.data(), {N, Ho, Wo, 2}}, {}};
  tasn::AttentionSampleArgs<T> as{sf.img, {smap.data(), {N, h, w}}, sf.out, {}, {}, {fallback.data(), {N}}, {}};
  as.options.grid.dense = 4.0;  // magnification limit; the output size is that of `out`

  tasn::cpu::structure_map(sm);  // each allocates its scratch itself ...
  tasn::cpu::detail_map(dm);
  tasn::cpu::upsample_bilinear(us);
  tasn::cpu::attention_marginals(ma);
  tasn::cpu::sampling_grid(ga);
  tasn::cpu::sample_separable(sf);
  tasn::cpu::sample_separable_backward(sb);
  tasn::detail::separable_to_general_grid(gy.data(), gx.data(), N, Ho, Wo, grid.data());
  tasn::cpu::sample_grid(gf);
  tasn::cpu::sample_grid_backward(gb);
  // ... or computes in a caller's workspace of workspace_bytes(args) bytes, 256-byte aligned
  const std::size_t bytes = tasn::cpu::workspace_bytes(as);
  void* ws = std::aligned_alloc(256, (bytes + 255) / 256 * 256 + 256);  // size: a multiple of 256
  tasn::cpu::attention_sample(as, {ws, bytes});
  std::free(ws);

  // Uniform attention: the identity grid (linspace(-1, 1, 6)), so a constant image samples to itself.
  std::printf("attention sampler (CPU): gy[0] = %f, gy[1] = %f, out[0] = %f, dimg[0] = %f, chosen = %lld\n", gy[0],
              gy[1], out[0], dimg[0], static_cast<long long>(chosen[0]));
  const bool ok = std::fabs(gy[0] + 1.f) < 1e-6f && std::fabs(gy[1] + 0.6f) < 1e-5f && std::fabs(out[0] - 0.5f) < 1e-6f &&
                  std::fabs(out2[7] - 0.5f) < 1e-6f && std::fabs(dimg[0] - 1.f) < 1e-5f && smap[0] == 1.f &&
                  dmap[0] == 1.f && chosen[0] == 0 && fallback[0] == 0 && up[0] == 1.f;
  return ok ? 0 : 1;
}
