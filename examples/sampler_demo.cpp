// sampler_demo - the attention-based sampler on a generated picture, written as PNG files.
//
// A 128 x 128 image holds a large "object" (an ellipse) on a noisy background and a small striped
// "detail" on the object. Synthetic trilinear-attention maps (8 channels at 16 x 16: some answer
// the object, one the detail, two are dead) give the structure map (distinct channel sum, squared
// after upsampling) and the detail map (one channel); the sampler turns each into a 64 x 64 image.
// Writes: input.png, attention_structure.png, attention_detail.png, grid_structure.png,
// structure.png, detail.png, uniform.png (plain 64 x 64 resize, for comparison).
//
// Usage: sampler_demo [OUTDIR] [--check]   (default: .; --check: exit 1 unless the structure
// sample puts more rows on the detail than uniform resizing, and the detail sample more still)
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "png.h"
#include "tasn/attention_sampler.h"

namespace {

constexpr int kS = 128, kOut = 64, kA = 16, kC = 8;
constexpr double kDy = 78, kDx = 84, kDr = 9;  // the detail patch: centre and half size

std::vector<float> make_image() {
  std::mt19937 rng(3);
  std::normal_distribution<float> noise(0.f, 0.06f);
  std::vector<float> img(3 * kS * kS);
  for (int y = 0; y < kS; ++y)
    for (int x = 0; x < kS; ++x) {
      float r = 0.35f + noise(rng), g = 0.45f + noise(rng), b = 0.30f + noise(rng);  // background
      const double ey = (y - 64.0) / 40.0, ex = (x - 60.0) / 50.0;
      if (ey * ey + ex * ex < 1.0) {  // object
        r = 0.80f + noise(rng) * 0.3f;
        g = 0.55f + noise(rng) * 0.3f;
        b = 0.20f + noise(rng) * 0.3f;
      }
      if (std::fabs(y - kDy) <= kDr && std::fabs(x - kDx) <= kDr) {  // detail: diagonal stripes
        const float s = ((x + y) / 2) % 2 ? 0.95f : 0.1f;
        r = g = b = s;
      }
      img[0 * kS * kS + y * kS + x] = r;
      img[1 * kS * kS + y * kS + x] = g;
      img[2 * kS * kS + y * kS + x] = b;
    }
  return img;
}

// Trilinear-attention-like maps: channels 0-3 the object at different spots, 4 the detail, 5 the
// whole object, 6 and 7 dead.
std::vector<float> make_maps() {
  std::vector<float> m(kC * kA * kA, 0.f);
  auto blob = [&](int c, double cy, double cx, double r, double a) {
    for (int y = 0; y < kA; ++y)
      for (int x = 0; x < kA; ++x) {
        const double d2 = (y - cy) * (y - cy) + (x - cx) * (x - cx);
        m[(c * kA + y) * kA + x] += static_cast<float>(a * std::exp(-d2 / (2 * r * r)));
      }
  };
  const double s = (kA - 1.0) / (kS - 1.0);
  blob(0, 50 * s, 40 * s, 1.5, 0.6);
  blob(1, 70 * s, 30 * s, 1.5, 0.5);
  blob(2, 40 * s, 75 * s, 1.5, 0.5);
  blob(3, 85 * s, 55 * s, 1.5, 0.4);
  blob(4, kDy * s, kDx * s, 1.0, 1.0);
  blob(5, 64 * s, 60 * s, 4.0, 0.5);
  return m;
}

std::vector<unsigned char> to_rgb(const std::vector<float>& img, int h, int w) {
  std::vector<unsigned char> rgb(static_cast<std::size_t>(h) * w * 3);
  for (int c = 0; c < 3; ++c)
    for (int i = 0; i < h * w; ++i)
      rgb[i * 3 + c] = static_cast<unsigned char>(std::clamp(img[c * h * w + i], 0.f, 1.f) * 255.f + 0.5f);
  return rgb;
}

std::vector<unsigned char> heat(const std::vector<float>& map, int h, int w) {
  const float hi = *std::max_element(map.begin(), map.end()), lo = *std::min_element(map.begin(), map.end());
  std::vector<unsigned char> rgb(static_cast<std::size_t>(h) * w * 3);
  for (int i = 0; i < h * w; ++i) {
    const float t = hi > lo ? (map[i] - lo) / (hi - lo) : 0.f;  // dark blue -> red -> yellow
    rgb[i * 3 + 0] = static_cast<unsigned char>(255 * std::min(1.f, 2 * t));
    rgb[i * 3 + 1] = static_cast<unsigned char>(255 * std::max(0.f, 2 * t - 1));
    rgb[i * 3 + 2] = static_cast<unsigned char>(255 * (0.4f * (1 - t)));
  }
  return rgb;
}

// Every 4th output row and column of the grid drawn over the dimmed input.
std::vector<unsigned char> grid_overlay(const std::vector<float>& img, const std::vector<float>& gy,
                                        const std::vector<float>& gx) {
  auto rgb = to_rgb(img, kS, kS);
  for (auto& v : rgb) v = static_cast<unsigned char>(v / 2);
  auto px = [](float g) { return std::clamp(static_cast<int>(std::lround((g + 1) * 0.5 * (kS - 1))), 0, kS - 1); };
  for (int i = 0; i < kOut; i += 4) {
    const int y = px(gy[i]), x = px(gx[i]);
    for (int k = 0; k < kS; ++k) {
      for (int c = 0; c < 3; ++c) {
        rgb[(y * kS + k) * 3 + c] = c == 1 ? 255 : 40;
        rgb[(k * kS + x) * 3 + c] = c == 1 ? 255 : 40;
      }
    }
  }
  return rgb;
}

int rows_on_detail(const std::vector<float>& g) {
  int n = 0;
  for (float v : g) n += std::fabs((v + 1) * 0.5 * (kS - 1) - kDy) <= kDr;
  return n;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string dir = argc > 1 && std::string(argv[1]) != "--check" ? argv[1] : ".";
  const bool check = std::string(argv[argc - 1]) == "--check";
  using tasn::examples::write_png;
  const auto img = make_image();
  const auto m = make_maps();

  // SPEC 2: structure map (distinct channel sum) and detail map (the detail channel, index 4).
  // Every operator takes its arguments struct: views (pointer + sizes) and options.
  using tasn::Tensor1;
  using tasn::Tensor2;
  using tasn::Tensor3;
  using tasn::Tensor4;
  std::vector<float> smap(kA * kA), dmap(kA * kA);
  tasn::StructureMapArgs<float> sm{Tensor4<const float>(m.data(), {1, kC, kA, kA}), Tensor3<float>(smap.data(), {1, kA, kA}), {}};
  sm.options.distinct = true;
  tasn::cpu::structure_map(sm);
  const std::int64_t detail_channel = 4;
  tasn::DetailMapArgs<float> dm{};
  dm.m = sm.m;
  dm.channels = Tensor1<const std::int64_t>(&detail_channel, {1});
  dm.out = Tensor3<float>(dmap.data(), {1, kA, kA});
  tasn::cpu::detail_map(dm);

  // SPEC 3: upsample to the image size, marginals, grid (exact mode, dense 4, 5 iterations), sample
  // to the size of the output view (kOut x kOut).
  std::vector<float> structure(3 * kOut * kOut), detail(3 * kOut * kOut), uniform(3 * kOut * kOut);
  std::vector<float> sgy(kOut), sgx(kOut), dgy(kOut), dgx(kOut);
  tasn::AttentionSampleArgs<float> as{};
  as.img = Tensor4<const float>(img.data(), {1, 3, kS, kS});
  as.attention = Tensor3<const float>(smap.data(), {1, kA, kA});
  as.out = Tensor4<float>(structure.data(), {1, 3, kOut, kOut});
  as.gy = Tensor2<float>(sgy.data(), {1, kOut});
  as.gx = Tensor2<float>(sgx.data(), {1, kOut});
  as.options.squared = true;  // the official structure map is squared after upsampling
  tasn::cpu::attention_sample(as);
  as.attention = Tensor3<const float>(dmap.data(), {1, kA, kA});
  as.out = Tensor4<float>(detail.data(), {1, 3, kOut, kOut});
  as.gy = Tensor2<float>(dgy.data(), {1, kOut});
  as.gx = Tensor2<float>(dgx.data(), {1, kOut});
  as.options.squared = false;
  tasn::cpu::attention_sample(as);
  const tasn::AttentionSampleOptions& opt = as.options;
  std::vector<float> lin(kOut);
  for (int i = 0; i < kOut; ++i) lin[i] = -1.f + 2.f * i / (kOut - 1);
  tasn::cpu::sample_separable(tasn::SampleSeparableArgs<float>{Tensor4<const float>(img.data(), {1, 3, kS, kS}),
                                                               Tensor2<const float>(lin.data(), {1, kOut}),
                                                               Tensor2<const float>(lin.data(), {1, kOut}),
                                                               Tensor4<float>(uniform.data(), {1, 3, kOut, kOut}),
                                                               {}});

  std::vector<float> sup(kS * kS), dup(kS * kS);
  tasn::UpsampleArgs<float> up{Tensor3<const float>(smap.data(), {1, kA, kA}), Tensor3<float>(sup.data(), {1, kS, kS}), {}};
  up.options.squared = true;
  tasn::cpu::upsample_bilinear(up);
  up.in = Tensor3<const float>(dmap.data(), {1, kA, kA});
  up.out = Tensor3<float>(dup.data(), {1, kS, kS});
  up.options.squared = false;
  tasn::cpu::upsample_bilinear(up);
  write_png(dir + "/input.png", to_rgb(img, kS, kS), kS, kS);
  write_png(dir + "/attention_structure.png", heat(sup, kS, kS), kS, kS);
  write_png(dir + "/attention_detail.png", heat(dup, kS, kS), kS, kS);
  write_png(dir + "/grid_structure.png", grid_overlay(img, sgy, sgx), kS, kS);
  write_png(dir + "/structure.png", to_rgb(structure, kOut, kOut), kOut, kOut);
  write_png(dir + "/detail.png", to_rgb(detail, kOut, kOut), kOut, kOut);
  write_png(dir + "/uniform.png", to_rgb(uniform, kOut, kOut), kOut, kOut);

  std::printf("sampler demo: %dx%d image -> %dx%d samples, PNGs in %s\n", kS, kS, kOut, kOut, dir.c_str());
  std::printf("output rows on the %d-px detail patch: uniform %d, structure %d, detail %d (dense = %.0f allows up to %.0fx)\n",
              static_cast<int>(2 * kDr + 1), rows_on_detail(lin), rows_on_detail(sgy), rows_on_detail(dgy),
              opt.grid.dense, opt.grid.dense);
  if (check && !(rows_on_detail(sgy) > rows_on_detail(lin) && rows_on_detail(dgy) > rows_on_detail(sgy) &&
                 rows_on_detail(dgy) <= opt.grid.dense * rows_on_detail(lin) + 2)) {
    std::printf("CHECK FAILED: the sampled images do not magnify the detail as expected\n");
    return 1;
  }
  return 0;
}
