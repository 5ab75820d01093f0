// examples/nn/safetensors.h - weights and checkpoints in the safetensors format: 8-byte
// little-endian header length, a JSON header {name: {dtype, shape, data_offsets}, "__metadata__":
// {...}}, then the raw little-endian data. Reads F32, F64, F16 and BF16 tensors (converted to the
// store's type); writes F32 (float stores) or F64 (double stores).
//
// Every malformed input is a tasn::InvalidArgument naming the file and what is wrong: a file
// shorter than its header says, a header that is not JSON, offsets outside the data or not
// matching dtype x shape, unknown dtypes; and on loading into a ParamStore: missing or unexpected
// names and shape mismatches, each naming the parameter and both shapes. Nothing is written into
// the store unless the whole file checks out.
#pragma once

#include <cstdint>
#include <cstring>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "nn/resnet.h"

namespace tasn::nn::safetensors {

struct Entry {
  std::string dtype;
  std::vector<std::int64_t> shape;
  std::vector<double> values;  // converted from the stored dtype
};

struct File {
  std::map<std::string, Entry> tensors;
  std::map<std::string, std::string> metadata;
};

namespace detail {

inline std::size_t dtype_size(const std::string& d) {
  if (d == "F32") return 4;
  if (d == "F64") return 8;
  if (d == "F16" || d == "BF16") return 2;
  return 0;
}

inline double half_to_double(std::uint16_t h) {
  const int sign = h >> 15, exp = (h >> 10) & 0x1f, frac = h & 0x3ff;
  double v;
  if (exp == 0) v = std::ldexp(frac, -24);
  else if (exp == 31) v = frac ? NAN : INFINITY;
  else v = std::ldexp(frac + 1024, exp - 25);
  return sign ? -v : v;
}

inline double decode(const unsigned char* p, const std::string& d) {
  if (d == "F32") {
    float f;
    std::memcpy(&f, p, 4);
    return f;
  }
  if (d == "F64") {
    double f;
    std::memcpy(&f, p, 8);
    return f;
  }
  std::uint16_t h;
  std::memcpy(&h, p, 2);
  if (d == "F16") return half_to_double(h);
  const std::uint32_t bits = static_cast<std::uint32_t>(h) << 16;  // BF16
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

}  // namespace detail

inline File read(const std::string& path) {
  const auto fail = [&](const std::string& what) {
    throw InvalidArgument("safetensors: " + path + ": " + what);
  };
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot open the file");
  std::vector<unsigned char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (bytes.size() < 8) fail("shorter than the 8-byte header length (" + std::to_string(bytes.size()) + " bytes)");
  std::uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | bytes[i];
  if (n > bytes.size() - 8)
    fail("header length " + std::to_string(n) + " exceeds the file (" + std::to_string(bytes.size()) + " bytes): truncated?");
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(bytes.begin() + 8, bytes.begin() + 8 + static_cast<std::ptrdiff_t>(n));
  } catch (const std::exception& e) {
    fail(std::string("the header is not valid JSON: ") + e.what());
  }
  if (!header.is_object()) fail("the header is not a JSON object");
  const std::uint64_t data_begin = 8 + n, data_size = bytes.size() - data_begin;
  File f;
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") {
      if (it->is_object())
        for (auto m = it->begin(); m != it->end(); ++m)
          f.metadata[m.key()] = m->is_string() ? m->get<std::string>() : m->dump();
      continue;
    }
    const std::string& name = it.key();
    try {
      Entry e;
      e.dtype = it->at("dtype").get<std::string>();
      e.shape = it->at("shape").get<std::vector<std::int64_t>>();
      const auto off = it->at("data_offsets").get<std::vector<std::uint64_t>>();
      const std::size_t es = detail::dtype_size(e.dtype);
      if (es == 0) fail("tensor " + name + " has unsupported dtype " + e.dtype);
      if (off.size() != 2 || off[0] > off[1] || off[1] > data_size)
        fail("tensor " + name + " has data_offsets outside the data (" + std::to_string(data_size) + " bytes): truncated?");
      std::uint64_t count = 1;
      for (auto d : e.shape) {
        if (d < 0) fail("tensor " + name + " has a negative dimension");
        count *= static_cast<std::uint64_t>(d);
      }
      if (count * es != off[1] - off[0])
        fail("tensor " + name + ": " + std::to_string(off[1] - off[0]) + " bytes for " + std::to_string(count) +
             " elements of " + e.dtype);
      e.values.resize(count);
      const unsigned char* p = bytes.data() + data_begin + off[0];
      for (std::uint64_t i = 0; i < count; ++i) e.values[i] = detail::decode(p + i * es, e.dtype);
      f.tensors.emplace(name, std::move(e));
    } catch (const nlohmann::json::exception& ex) {
      fail("tensor " + name + " has a malformed header entry: " + ex.what());
    }
  }
  return f;
}

// Writes tensors (name -> values, shape) with metadata; F32 for float, F64 for double.
template <class T>
void write(const std::string& path, const std::map<std::string, const Tensor<T>*>& tensors,
           const std::map<std::string, std::string>& metadata = {}) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>);
  nlohmann::json header = nlohmann::json::object();
  std::uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    const std::uint64_t bytes = static_cast<std::uint64_t>(t->numel()) * sizeof(T);
    header[name] = {{"dtype", sizeof(T) == 4 ? "F32" : "F64"}, {"shape", t->shape}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::string h = header.dump();
  while ((8 + h.size()) % 8) h.push_back(' ');  // align the data (the format allows padding)
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary);
    if (!out) throw InvalidArgument("safetensors: cannot write " + tmp);
    unsigned char len[8];
    for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>((std::uint64_t(h.size()) >> (8 * i)) & 0xff);
    out.write(reinterpret_cast<const char*>(len), 8);
    out.write(h.data(), static_cast<std::streamsize>(h.size()));
    for (const auto& [name, t] : tensors)
      out.write(reinterpret_cast<const char*>(t->ptr()), static_cast<std::streamsize>(t->numel() * sizeof(T)));
    if (!out) throw InvalidArgument("safetensors: writing " + tmp + " failed");
  }
  // never leave a half-written file under the final name
  if (std::rename(tmp.c_str(), path.c_str()) != 0) throw InvalidArgument("safetensors: cannot rename " + tmp + " to " + path);
}

template <class T>
void save(ParamStore<T>& ps, const std::string& path, const std::map<std::string, std::string>& metadata = {}) {
  std::map<std::string, const Tensor<T>*> m;
  for (auto& [name, p] : ps.all()) m[name] = &p.value;
  write(path, m, metadata);
}

struct LoadOptions {
  bool strict = true;  // every store entry must be in the file and every file tensor in the store
  std::string prefix;  // file names are prefix + store name (e.g. "backbone.")
};

// Loads values by name into the store; checks everything before changing anything.
template <class T>
void load(ParamStore<T>& ps, const std::string& path, const LoadOptions& opt = {}) {
  const File f = read(path);
  std::set<std::string> used;
  std::vector<std::string> missing;
  for (auto& [name, p] : ps.all()) {
    auto it = f.tensors.find(opt.prefix + name);
    if (it == f.tensors.end()) {
      missing.push_back(name);
      continue;
    }
    used.insert(it->first);
    TASN_CHECK_ARG(it->second.shape == p.value.shape, "safetensors: ", path, ": ", name, " has shape ",
                   shape_string(it->second.shape), " in the file but ", p.value.shape_str(), " in the model");
  }
  if (opt.strict) {
    TASN_CHECK_ARG(missing.empty(), "safetensors: ", path, ": missing ", missing.size(), " tensor(s), first: ",
                   missing.empty() ? std::string() : missing.front());
    for (const auto& [name, e] : f.tensors)
      TASN_CHECK_ARG(used.count(name), "safetensors: ", path, ": unexpected tensor ", name, " (not in the model)");
  }
  for (auto& [name, p] : ps.all()) {
    auto it = f.tensors.find(opt.prefix + name);
    if (it == f.tensors.end()) continue;
    for (std::size_t i = 0; i < it->second.values.size(); ++i) p.value.data[i] = static_cast<T>(it->second.values[i]);
  }
}

}  // namespace tasn::nn::safetensors
