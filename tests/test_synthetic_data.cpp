// The example trainer's generated fine-grained data set (examples/data/synthetic.h).
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "data/synthetic.h"
#include "support/test_support.h"

namespace {
namespace td = tasn::data;

// Standard deviation of the grey values inside the patch (border excluded), after averaging
// factor x factor blocks of the image (factor 1: full resolution; 3: the demo's 96 -> 32).
double patch_contrast(const td::SyntheticSample& s, std::int64_t size, std::int64_t factor) {
  const auto& b = s.patch;
  std::vector<double> v;
  for (std::int64_t y = (b.y0 + 1 + factor - 1) / factor; (y + 1) * factor <= b.y1 - 1; ++y)
    for (std::int64_t x = (b.x0 + 1 + factor - 1) / factor; (x + 1) * factor <= b.x1 - 1; ++x) {
      double m = 0;
      for (std::int64_t dy = 0; dy < factor; ++dy)
        for (std::int64_t dx = 0; dx < factor; ++dx) m += s.image[(y * factor + dy) * size + x * factor + dx];
      v.push_back(m / double(factor * factor));
    }
  double mean = 0, q = 0;
  for (double x : v) mean += x;
  mean /= double(v.size());
  for (double x : v) q += (x - mean) * (x - mean);
  return std::sqrt(q / double(v.size()));
}

TEST(SyntheticData, DeterministicPerSeedSplitAndIndex) {
  td::SyntheticConfig c;
  const auto a = td::make_sample(c, td::Split::Train, 17), b = td::make_sample(c, td::Split::Train, 17);
  EXPECT_EQ(a.image, b.image);
  EXPECT_EQ(a.label, b.label);
  EXPECT_NE(td::make_sample(c, td::Split::Train, 18).image, a.image);
  EXPECT_NE(td::make_sample(c, td::Split::Test, 17).image, a.image);
  c.seed = 2;
  EXPECT_NE(td::make_sample(c, td::Split::Train, 17).image, a.image);
}

TEST(SyntheticData, BalancedLabelsAndPatchesInsideTheImage) {
  td::SyntheticConfig c;
  std::vector<int> count(8, 0);
  for (std::int64_t i = 0; i < 800; ++i) {
    const auto s = td::make_sample(c, td::Split::Train, i);
    ASSERT_GE(s.label, 0);
    ASSERT_LT(s.label, 8);
    ++count[s.label];
    ASSERT_GE(s.patch.y0, 0);
    ASSERT_LE(s.patch.y1, c.size);
    ASSERT_EQ(s.patch.y1 - s.patch.y0, c.patch);
    for (float v : s.image) ASSERT_TRUE(v >= 0.f && v <= 1.f);
  }
  for (int k = 0; k < 8; ++k) EXPECT_NEAR(count[k], 100, 35) << "class " << k;
}

// The design property the demo relies on: every detail is legible at full resolution, but after
// a uniform 3x downsampling only the period-6 classes keep their stripes.
TEST(SyntheticData, FineStripesVanishUnderUniformDownsampling) {
  td::SyntheticConfig c;
  double full[2] = {0, 0}, small[2] = {0, 0};
  int n[2] = {0, 0};
  for (std::int64_t i = 0; i < 400; ++i) {
    const auto s = td::make_sample(c, td::Split::Test, i);
    td::SyntheticSample grey = s;  // channel 0 is grey on the patch
    const int coarse = s.label >= 4;
    full[coarse] += patch_contrast(grey, c.size, 1);
    small[coarse] += patch_contrast(grey, c.size, 3);
    ++n[coarse];
  }
  for (int k = 0; k < 2; ++k) {
    full[k] /= n[k];
    small[k] /= n[k];
  }
  EXPECT_GT(full[0], 0.35) << "period-2 stripes are legible at full resolution";
  EXPECT_GT(full[1], 0.35) << "period-6 stripes are legible at full resolution";
  EXPECT_GT(small[1], 1.5 * small[0]) << "after 3x downsampling the fine stripes must be much weaker than the coarse ones"
                                      << " (fine " << small[0] << ", coarse " << small[1] << ")";
  std::printf("patch contrast: full res fine %.3f coarse %.3f; 3x down fine %.3f coarse %.3f\n", full[0], full[1],
              small[0], small[1]);
}

}  // namespace
