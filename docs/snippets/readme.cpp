// The README's tour: TASN's forward path on the CPU in the library's one calling convention.
// Features -> trilinear attention maps -> structure map -> attention-sampled image.
#include <cstdint>
#include <cstdio>
#include <vector>

#include "tasn/attention_sampler.h"
#include "tasn/trilinear_attention.h"

int main() {
  const std::int64_t N = 2, C = 8, h = 7, w = 7, Hi = 64, Wi = 64, Ho = 32, Wo = 32;
  std::vector<float> feat(N * C * h * w), maps(feat.size()), structure(N * h * w);
  std::vector<float> img(N * 3 * Hi * Wi), zoomed(N * 3 * Ho * Wo);
  for (std::size_t i = 0; i < feat.size(); ++i) feat[i] = static_cast<float>((i * 37) % 11) / 11.f;
  for (std::size_t i = 0; i < img.size(); ++i) img[i] = static_cast<float>(i % Wi) / Wi;

  // 1. Trilinear attention: C attention maps from the features (options.beta = 7, the official value).
  tasn::TrilinearForwardArgs<float> tri;
  tri.x = {feat.data(), {N, C, h, w}};
  tri.m = {maps.data(), {N, C, h, w}};
  tasn::cpu::trilinear_attention_forward(tri);

  // 2. The structure map: the sum of the attention maps.
  tasn::StructureMapArgs<float> sm;
  sm.m = tri.m;
  sm.out = {structure.data(), {N, h, w}};
  tasn::cpu::structure_map(sm);

  // 3. Sample the image where the map is high: marginals, inverse-CDF grid, bilinear sampling.
  //    The output view's size (Ho, Wo) is the sampled image's size.
  tasn::AttentionSampleArgs<float> as;
  as.img = {img.data(), {N, 3, Hi, Wi}};
  as.attention = sm.out;
  as.out = {zoomed.data(), {N, 3, Ho, Wo}};
  as.options.grid.dense = 4.0;
  tasn::cpu::attention_sample(as);

  // The same structs run on the GPU: tasn::cuda::trilinear_attention_forward(ctx, tri, workspace)
  // with device views and workspace_bytes(tri) bytes of device workspace (docs/api.md).
  std::printf("sampled %lld x %lld from %lld x %lld: zoomed[0] = %.4f\n", static_cast<long long>(Ho),
              static_cast<long long>(Wo), static_cast<long long>(Hi), static_cast<long long>(Wi), zoomed[0]);
  return zoomed[0] >= 0.f && zoomed[0] <= 1.f ? 0 : 1;
}
