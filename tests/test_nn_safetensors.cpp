// safetensors round trips and every malformed-file error (examples/nn/safetensors.h).
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <string>

#include "nn/safetensors.h"
#include "support/formula_weights.h"
#include "support/test_support.h"

namespace {
namespace tt = tasn::test;
namespace nn = tasn::nn;
namespace st = tasn::nn::safetensors;

std::string tmp_path(const std::string& name) {  // per process: test runs may overlap
  return ::testing::TempDir() + "tasn_st_" + std::to_string(::getpid()) + "_" + name;
}

void write_raw(const std::string& path, const std::string& header, const std::vector<unsigned char>& data) {
  std::ofstream out(path, std::ios::binary);
  const std::uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out.put(static_cast<char>((n >> (8 * i)) & 0xff));
  out << header;
  out.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size()));
}

// A two-stage ResNet small enough to write and read in a test.
nn::ResNetConfig small_config(double width) {
  nn::ResNetConfig cfg;
  cfg.depth = {1, 1};
  cfg.stride = {1, 2};
  cfg.width = width;
  cfg.num_classes = 3;
  return cfg;
}

void small_store(nn::ParamStore<float>& ps) {
  nn::ResNet<float> net(ps, small_config(0.125));
  ps.allocate();
  std::uint64_t seed = 1;
  for (auto& [name, p] : ps.all()) p.value.set(tt::cast_vector<float>(tt::random_tensor(p.value.numel(), seed++)));
}

TEST(Safetensors, RoundTripByName) {
  nn::ParamStore<float> ps;
  small_store(ps);
  const std::string path = tmp_path("roundtrip.safetensors");
  st::save(ps, path, {{"format", "pt"}});
  nn::ParamStore<float> other;
  small_store(other);
  for (auto& [name, p] : other.all()) p.value.fill(0.f);
  st::load(other, path);
  for (auto& [name, p] : ps.all()) EXPECT_EQ(other.at(name).value.to_vector(), p.value.to_vector()) << name;
  EXPECT_EQ(st::read(path).metadata.at("format"), "pt");
}

TEST(Safetensors, HalfAndBfloatDecode) {
  // 1.0, -2.0 as F16 (0x3c00, 0xc000) and 3.0 as BF16 (0x4040)
  write_raw(tmp_path("f16.safetensors"),
            R"({"a":{"dtype":"F16","shape":[2],"data_offsets":[0,4]},"b":{"dtype":"BF16","shape":[1],"data_offsets":[4,6]}})",
            {0x00, 0x3c, 0x00, 0xc0, 0x40, 0x40});
  const auto f = st::read(tmp_path("f16.safetensors"));
  EXPECT_EQ(f.tensors.at("a").values, (std::vector<double>{1.0, -2.0}));
  EXPECT_EQ(f.tensors.at("b").values, (std::vector<double>{3.0}));
}

TEST(Safetensors, MalformedFilesGiveClearErrors) {
  const std::string p = tmp_path("bad.safetensors");
  auto msg = [&] { return tt::invalid_argument_message([&] { st::read(p); }); };
  { std::ofstream(p, std::ios::binary) << "abc"; }
  EXPECT_NE(msg().find("shorter than the 8-byte header length"), std::string::npos) << msg();
  write_raw(p, R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", {1, 2, 3});  // truncated data
  EXPECT_NE(msg().find("tensor a has data_offsets outside the data (3 bytes): truncated?"), std::string::npos) << msg();
  write_raw(p, R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", std::vector<unsigned char>(8));
  EXPECT_NE(msg().find("tensor a: 8 bytes for 3 elements of F32"), std::string::npos) << msg();
  write_raw(p, R"({"a":{"dtype":"I8","shape":[1],"data_offsets":[0,1]}})", {1});
  EXPECT_NE(msg().find("unsupported dtype I8"), std::string::npos) << msg();
  write_raw(p, R"({"a":{"dtype":"F32", "shape":)", {});
  EXPECT_NE(msg().find("not valid JSON"), std::string::npos) << msg();
  write_raw(p, R"({"a":{"shape":[1],"data_offsets":[0,4]}})", std::vector<unsigned char>(4));
  EXPECT_NE(msg().find("tensor a has a malformed header entry"), std::string::npos) << msg();
  {  // header length beyond the file
    std::ofstream out(p, std::ios::binary);
    const unsigned char len[8] = {0xff, 0xff, 0, 0, 0, 0, 0, 0};
    out.write(reinterpret_cast<const char*>(len), 8);
    out << "{}";
  }
  EXPECT_NE(msg().find("exceeds the file"), std::string::npos) << msg();
}

TEST(Safetensors, LoadChecksNamesAndShapesBeforeWriting) {
  nn::ParamStore<float> ps;
  small_store(ps);
  const std::string path = tmp_path("names.safetensors");
  st::save(ps, path);
  // a model with another width: shapes differ
  nn::ParamStore<float> wide;
  nn::ResNetConfig cfg = small_config(0.25);
  nn::ResNet<float> net(wide, cfg);
  wide.allocate();
  const auto before = wide.at("conv1.weight").value.to_vector();
  const std::string m = tt::invalid_argument_message([&] { st::load(wide, path); });
  EXPECT_NE(m.find("has shape"), std::string::npos) << m;
  EXPECT_NE(m.find("in the file but"), std::string::npos) << m;
  EXPECT_EQ(wide.at("conv1.weight").value.to_vector(), before) << "nothing may be loaded on error";
  // a model with an extra unit in stage 2 (same feature count): missing names
  nn::ParamStore<float> deeper;
  cfg.width = 0.125;
  cfg.depth = {1, 2};
  nn::ResNet<float> net2(deeper, cfg);
  deeper.allocate();
  const std::string miss = tt::invalid_argument_message([&] { st::load(deeper, path); });
  EXPECT_NE(miss.find("missing 10 tensor(s), first: layer2.1."), std::string::npos) << miss;
  st::LoadOptions lax;
  lax.strict = false;  // loads what matches, keeps the rest
  EXPECT_NO_THROW(st::load(deeper, path, lax));
  EXPECT_EQ(deeper.at("conv1.weight").value.to_vector(), ps.at("conv1.weight").value.to_vector());
  // a model without stage 2's second unit in the file's view: unexpected names
  const std::string deeper_path = tmp_path("deeper.safetensors");
  st::save(deeper, deeper_path);
  const std::string u = tt::invalid_argument_message([&] { st::load(ps, deeper_path); });
  EXPECT_NE(u.find("unexpected tensor layer2.1."), std::string::npos) << u;
}

TEST(Safetensors, ReadsFilesFromTheConverterScript) {
  // written by scripts/convert_torchvision.py's writer (tests/golden/gen_golden.py)
  const auto f = st::read(tt::golden_path("converter_sample.safetensors"));
  EXPECT_EQ(f.metadata.at("arch"), "sample");
  ASSERT_EQ(f.tensors.size(), 5u);
  for (const auto& [name, e] : f.tensors) {
    EXPECT_EQ(e.dtype, "F32") << name;
    EXPECT_EQ(e.values, tt::formula_values(name, e.shape)) << name;  // float-rounded on both sides
  }
  EXPECT_EQ(f.tensors.at("conv1.weight").shape, (std::vector<std::int64_t>{4, 3, 7, 7}));
}

}  // namespace
