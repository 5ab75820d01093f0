// Real-data loading for the example trainer (examples/data/image_folder.h) on a tiny generated
// CUB-layout directory, with a corrupt image and bad labels.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "data/image_folder.h"
#include "train/folder_data.h"
#include "train/presets.h"
#include "png.h"
#include "support/test_support.h"

namespace {
namespace fs = std::filesystem;
namespace td = tasn::data;
namespace tt = tasn::test;

struct TinyCub {
  fs::path root;
  TinyCub() {
    // one directory per test and process: ctest runs the tests side by side
    root = fs::path(::testing::TempDir()) /
           ("tasn_tiny_cub_" + std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()) + "_" +
            std::to_string(::getpid()));
    fs::remove_all(root);
    fs::create_directories(root / "images" / "001.A");
    fs::create_directories(root / "images" / "002.B");
    // 4 images, 2 classes; image k is a flat colour (10k, 20k, 30k), 6 x 4 pixels
    for (int k = 1; k <= 4; ++k) {
      std::vector<unsigned char> rgb(6 * 4 * 3);
      for (std::size_t i = 0; i < rgb.size(); i += 3) {
        rgb[i] = static_cast<unsigned char>(10 * k);
        rgb[i + 1] = static_cast<unsigned char>(20 * k);
        rgb[i + 2] = static_cast<unsigned char>(30 * k);
      }
      tasn::examples::write_png((root / "images" / (k <= 2 ? "001.A" : "002.B") / ("img" + std::to_string(k) + ".png")).string(), rgb, 4, 6);
    }
    write("images.txt", "1 001.A/img1.png\n2 001.A/img2.png\n3 002.B/img3.png\n4 002.B/img4.png\n");
    write("image_class_labels.txt", "1 1\n2 1\n3 2\n4 2\n");
    write("train_test_split.txt", "1 1\n2 0\n3 1\n4 0\n");
  }
  ~TinyCub() {
    std::error_code ec;
    fs::remove_all(root, ec);
  }
  void write(const std::string& name, const std::string& text) const { std::ofstream(root / name) << text; }
};

TEST(ImageFolder, ReadsTheCubLayoutAndDecodes) {
  TinyCub cub;
  const auto recs = td::read_cub(cub.root.string(), 2);
  ASSERT_EQ(recs.size(), 4u);
  EXPECT_EQ(recs[2].label, 1);
  EXPECT_TRUE(recs[0].train);
  EXPECT_FALSE(recs[1].train);
  const auto img = td::decode_image(recs[2].path);
  EXPECT_EQ(img.h, 6);
  EXPECT_EQ(img.w, 4);
  EXPECT_EQ(img.pixels[0], 30);
  EXPECT_EQ(img.pixels[2], 90);
  td::Preprocess p;
  p.resize_shorter = 8;
  p.crop = 8;
  p.train = false;
  const auto x = td::preprocess(img, p, 0, 0);
  ASSERT_EQ(x.size(), 3u * 8 * 8);
  EXPECT_NEAR(x[0], 30 - 123.68f, 1e-3);  // a flat image stays flat; the mean is subtracted
  EXPECT_NEAR(x[2 * 64 + 63], 90 - 103.939f, 1e-3);
}

TEST(ImageFolder, AugmentationIsReproducible) {
  td::RgbImage img{5, 7, {}};
  for (int i = 0; i < 5 * 7 * 3; ++i) img.pixels.push_back(static_cast<unsigned char>(i * 7));
  td::Preprocess p;
  p.resize_shorter = 10;
  p.crop = 8;
  EXPECT_EQ(td::preprocess(img, p, 3, 11), td::preprocess(img, p, 3, 11));
  bool differs = false;
  for (int i = 0; i < 8 && !differs; ++i) differs = td::preprocess(img, p, 3, i) != td::preprocess(img, p, 3, 11);
  EXPECT_TRUE(differs) << "crops / flips should vary with the index";
}

TEST(ImageFolder, ClearErrorsNamingTheFile) {
  TinyCub cub;
  auto msg = [&](auto f) { return tt::invalid_argument_message(f); };
  EXPECT_NE(msg([&] { td::read_cub((cub.root / "nope").string()); }).find("is not a directory"), std::string::npos);
  cub.write("image_class_labels.txt", "1 1\n2 1\n3 2\n4 201\n");
  auto m = msg([&] { td::read_cub(cub.root.string(), 200); });
  EXPECT_NE(m.find("image_class_labels.txt: image id 4 has label 201, outside 1..200"), std::string::npos) << m;
  cub.write("image_class_labels.txt", "1 1\n2 one\n");
  m = msg([&] { td::read_cub(cub.root.string()); });
  EXPECT_NE(m.find("\"one\" is not an integer"), std::string::npos) << m;
  cub.write("image_class_labels.txt", "1 1\n2 1\n3 2\n4 2\n");
  cub.write("train_test_split.txt", "1 1\n2 1\n3 1\n4 1\n");
  m = msg([&] { td::read_cub(cub.root.string()); });
  EXPECT_NE(m.find("the test split is empty"), std::string::npos) << m;
  fs::remove(cub.root / "train_test_split.txt");
  m = msg([&] { td::read_cub(cub.root.string()); });
  EXPECT_NE(m.find("cannot read"), std::string::npos) << m;
  EXPECT_NE(m.find("train_test_split.txt"), std::string::npos) << m;
  // a corrupt image
  std::ofstream(cub.root / "images" / "bad.jpg") << "this is not a jpeg";
  m = msg([&] { td::decode_image((cub.root / "images" / "bad.jpg").string()); });
  EXPECT_NE(m.find("cannot decode image"), std::string::npos) << m;
  EXPECT_NE(m.find("bad.jpg"), std::string::npos) << m;
  // list files
  cub.write("list.txt", "images/001.A/img1.png 0 train\nimages/002.B/img3.png 1 test\n");
  EXPECT_EQ(td::read_list((cub.root / "list.txt").string(), cub.root.string(), 2).size(), 2u);
  cub.write("list.txt", "images/001.A/img1.png 0 train\nimages/002.B/img3.png 5 test\n");
  m = msg([&] { td::read_list((cub.root / "list.txt").string(), cub.root.string(), 2); });
  EXPECT_NE(m.find("list.txt:2: label 5 is outside 0..1"), std::string::npos) << m;
  cub.write("list.txt", "images/001.A/img1.png 0 val\n");
  m = msg([&] { td::read_list((cub.root / "list.txt").string(), cub.root.string(), 2); });
  EXPECT_NE(m.find("split \"val\" is not train or test"), std::string::npos) << m;
}

}  // namespace

// The trainer's real-data path: CUB records -> data sets decoded on the loader thread -> training;
// a corrupt training image stops training with an error naming the file.
TEST(ImageFolder, TrainerReadsRealImagesAndNamesACorruptOne) {
  namespace tr = tasn::train;
  TinyCub cub;
  const auto recs = td::read_cub(cub.root.string(), 2);
  auto splits = tr::folder_datasets(recs, 16, 1, false);
  ASSERT_EQ(splits.train->size(), 2);
  ASSERT_EQ(splits.eval->size(), 2);
  EXPECT_THROW(tr::folder_datasets(recs, 16, 1, true), tasn::InvalidArgument);  // 2 training images: no validation split
  tr::NetConfig n;
  n.classes = 2;
  n.image = n.att_input = n.out = 16;
  n.master_backbone = tr::demo_backbone();
  n.master_backbone.width = 0.125;
  tr::BaselineNet m(n);
  tr::init_model(m, 1);
  tr::TrainConfig c;
  c.epochs = 2;
  c.batch = 2;
  c.progress = false;
  const tr::TrainResult r = tr::train_model(m, *splits.train, splits.eval.get(), c, "baseline");
  EXPECT_EQ(r.step_losses.size(), 2u);
  EXPECT_EQ(r.final_eval.n, 2);
  std::ofstream(cub.root / "images" / "001.A" / "img1.png") << "not a png any more";
  const auto msg = tt::invalid_argument_message([&] { tr::train_model(m, *splits.train, splits.eval.get(), c, "baseline"); });
  EXPECT_NE(msg.find("cannot decode image"), std::string::npos) << msg;
  EXPECT_NE(msg.find("img1.png"), std::string::npos) << msg;
}
