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
  EXPECT_NE(m.find("image_class_labels.txt:4: image id 4 has label 201, outside 1..200"), std::string::npos) << m;
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

namespace {

// Paths with spaces, strict ids, ids present in one table only.
TEST(ImageFolder, StrictParsingWithSpacesInPaths) {
  TinyCub cub;
  fs::rename(cub.root / "images" / "002.B" / "img4.png", cub.root / "images" / "002.B" / "img 4 (copy).png");
  cub.write("images.txt", "1 001.A/img1.png\n2 001.A/img2.png\n3 002.B/img3.png\n4  002.B/img 4 (copy).png  \n");
  auto recs = td::read_cub(cub.root.string(), 2);
  ASSERT_EQ(recs.size(), 4u);
  EXPECT_EQ(recs[3].rel, "002.B/img 4 (copy).png");
  EXPECT_EQ(td::decode_image(recs[3].path).h, 6);
  auto msg = [&](auto f) { return tt::invalid_argument_message(f); };
  cub.write("images.txt", "1 001.A/img1.png\n2 001.A/img2.png\n3x 002.B/img3.png\n4 002.B/img 4 (copy).png\n");
  auto m = msg([&] { td::read_cub(cub.root.string(), 2); });
  EXPECT_NE(m.find("images.txt:3: id: \"3x\" is not an integer"), std::string::npos) << m;
  cub.write("images.txt", "1 001.A/img1.png\n2 001.A/img2.png\n3 002.B/img3.png\n");
  m = msg([&] { td::read_cub(cub.root.string(), 2); });
  EXPECT_NE(m.find("image_class_labels.txt:4: image id 4 is not in"), std::string::npos) << m;
  cub.write("images.txt", "1 001.A/img1.png\n2 001.A/img2.png\n3 002.B/img3.png\n4 002.B/img 4 (copy).png\n");
  cub.write("image_class_labels.txt", "1 1\n2 1\n3 2 extra\n4 2\n");
  m = msg([&] { td::read_cub(cub.root.string(), 2); });
  EXPECT_NE(m.find("image_class_labels.txt:3: expected \"id value\""), std::string::npos) << m;
  cub.write("image_class_labels.txt", "1 1\n2 1\n3 2\n4 2\n");
  // list files: the path is everything before the last two fields
  cub.write("list.txt", "images/001.A/img1.png 0 train\n  images/002.B/img 4 (copy).png\t1   test\n");
  recs = td::read_list((cub.root / "list.txt").string(), cub.root.string(), 2);
  ASSERT_EQ(recs.size(), 2u);
  EXPECT_EQ(recs[1].rel, "images/002.B/img 4 (copy).png");
  EXPECT_EQ(recs[1].label, 1);
  EXPECT_FALSE(recs[1].train);
  cub.write("list.txt", "images/001.A/img1.png 0x train\n");
  m = msg([&] { td::read_list((cub.root / "list.txt").string(), cub.root.string(), 2); });
  EXPECT_NE(m.find("list.txt:1: label: \"0x\" is not an integer"), std::string::npos) << m;
}

// "cub", "./cub" and the absolute path give the same records and the same training signature.
TEST(ImageFolder, RootSpellingDoesNotMatter) {
  namespace tr = tasn::train;
  TinyCub cub;
  const fs::path cwd = fs::current_path();
  fs::current_path(cub.root.parent_path());
  const std::string name = cub.root.filename().string();
  const auto a = td::read_cub(name, 2), b = td::read_cub("./" + name + "/", 2), c = td::read_cub(cub.root.string(), 2);
  fs::current_path(cwd);
  ASSERT_EQ(a.size(), c.size());
  for (std::size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].path, c[i].path);
    EXPECT_EQ(b[i].path, c[i].path);
    EXPECT_TRUE(fs::path(a[i].path).is_absolute()) << a[i].path;
  }
  const std::vector<td::ImageRecord> tr_a(a.begin(), a.begin() + 2), tr_b(b.begin(), b.begin() + 2);
  EXPECT_EQ(tr::folder_description(tr_a, 16, 1, false), tr::folder_description(tr_b, 16, 1, false));
}

// Missing or unreadable files are found before the first step, naming them.
TEST(ImageFolder, EveryFileIsCheckedBeforeTraining) {
  namespace tr = tasn::train;
  TinyCub cub;
  const auto recs = td::read_cub(cub.root.string(), 2);
  fs::remove(cub.root / "images" / "002.B" / "img4.png");  // a test image
  auto m = tt::invalid_argument_message([&] { tr::folder_datasets(recs, 16, 1, false); });
  EXPECT_NE(m.find("1 of 4 images cannot be read"), std::string::npos) << m;
  EXPECT_NE(m.find("img4.png: No such file or directory"), std::string::npos) << m;
  std::ofstream(cub.root / "images" / "002.B" / "img4.png") << "not an image";
  m = tt::invalid_argument_message([&] { tr::folder_datasets(recs, 16, 1, false); });
  EXPECT_NE(m.find("img4.png: "), std::string::npos) << m;
  // a PNG whose header is fine but whose data is cut: only the full decode finds it
  auto bytes = tasn::io::read_file(recs[0].path);
  tasn::io::write_file_atomic((cub.root / "images" / "002.B" / "img4.png").string(), bytes.data(), bytes.size() - 30);
  EXPECT_NO_THROW(tr::folder_datasets(recs, 16, 1, false));
  m = tt::invalid_argument_message([&] { tr::folder_datasets(recs, 16, 1, false, true); });
  EXPECT_NE(m.find("1 of 4 images cannot be decoded"), std::string::npos) << m;
}

// A root and an image name that are not valid UTF-8: the checkpoint's JSON header still takes the
// training signature (escaped), and the run resumes from it.
TEST(ImageFolder, NonUtf8PathsCheckpointAndResume) {
  namespace tr = tasn::train;
  TinyCub cub;
  const fs::path odd = cub.root.parent_path() / (cub.root.filename().string() + "-caf\xe9-\xff");
  fs::remove_all(odd);
  fs::rename(cub.root, odd);
  cub.root = odd;  // removed by ~TinyCub
  fs::rename(odd / "images" / "001.A" / "img1.png", odd / "images" / "001.A" / "img\xff" "1.png");
  cub.write("images.txt", "1 001.A/img\xff" "1.png\n2 001.A/img2.png\n3 002.B/img3.png\n4 002.B/img4.png\n");
  const auto recs = td::read_cub(odd.string(), 2);
  auto splits = tr::folder_datasets(recs, 16, 1, false);
  tr::NetConfig n;
  n.classes = 2;
  n.image = n.att_input = n.out = 16;
  n.master_backbone = tr::demo_backbone();
  n.master_backbone.width = 0.125;
  tr::TrainConfig c;
  c.epochs = 2;
  c.stop_after_epoch = 1;
  c.batch = 2;
  c.progress = false;
  c.out_dir = (odd / "run").string();
  tr::BaselineNet m(n);
  tr::init_model(m, 1);
  tr::train_model(m, *splits.train, splits.eval.get(), c, "baseline");
  const std::string ckpt = (odd / "run" / "baseline-last.safetensors").string();
  ASSERT_TRUE(fs::exists(ckpt));
  const auto f = tasn::nn::safetensors::read(ckpt);
  EXPECT_NE(f.metadata.at("train").find("first=001.A/img\\xFF1.png"), std::string::npos) << f.metadata.at("train");
  c.stop_after_epoch = 0;
  c.resume = ckpt;
  tr::BaselineNet m2(n);
  const tr::TrainResult r = tr::train_model(m2, *splits.train, splits.eval.get(), c, "baseline");
  EXPECT_EQ(r.epochs_done, 2);
  EXPECT_EQ(r.step_losses.size(), 1u);
}

}  // namespace
