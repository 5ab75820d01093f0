// examples/nn/safetensors.h - weights and checkpoints in the safetensors format: 8-byte
// little-endian header length, a JSON header {name: {dtype, shape, data_offsets}, "__metadata__":
// {...}}, then the raw little-endian data. Reads F32, F64, F16 and BF16 tensors (converted to the
// store's type); writes F32 (float stores) or F64 (double stores).
//
// Every malformed input is a tasn::InvalidArgument naming the file and what is wrong: a file
// shorter than its header says, a header that is not JSON, offsets outside the data or not
// matching dtype x shape, shapes whose element count overflows, unknown dtypes, data whose
// checksum does not match; and on loading into a ParamStore: missing or unexpected names and
// shape mismatches, each naming the parameter and both shapes. Nothing is written into the store
// unless the whole file checks out. A file that cannot be read is an io::IoError with the OS reason.
//
// Integrity: write() stores the CRC-32 (zlib's) of the data section as the metadata entry
// "data_crc32" (8 hex digits) and read() verifies it when present, so a flipped byte in the
// tensor data is refused; files from other writers (no such entry) are read unverified.
// Writing is atomic (io::AtomicFile): a failure leaves the previous file as it was.
#pragma once

#include <cstdint>
#include <cstring>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <type_traits>
#include <vector>

#include "io/file_io.h"
#include "io/text.h"
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

// The metadata key holding the data section's CRC-32.
constexpr const char* kChecksumKey = "data_crc32";

inline std::string crc_hex(std::uint32_t c) {
  char b[16];
  std::snprintf(b, sizeof b, "%08x", c);
  return b;
}

inline File read(const std::string& path) {
  const auto fail = [&](const std::string& what) {
    throw InvalidArgument("safetensors: " + path + ": " + what);
  };
  const std::vector<unsigned char> bytes = io::read_file(path, "safetensors file");
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
  if (header.contains("__metadata__") && header["__metadata__"].is_object() &&
      header["__metadata__"].contains(kChecksumKey)) {
    const auto& want = header["__metadata__"][kChecksumKey];
    const std::string got = crc_hex(io::crc32(bytes.data() + data_begin, data_size));
    if (!want.is_string() || want.get<std::string>() != got)
      fail("the tensor data do not match their checksum (" + std::string(kChecksumKey) + " " +
           (want.is_string() ? want.get<std::string>() : want.dump()) + ", data " + got + "): the file is corrupted");
  }
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
        if (d < 0) fail("tensor " + name + " has a negative dimension (shape " + shape_string(e.shape) + ")");
        if (d != 0 && count > (std::uint64_t(1) << 62) / static_cast<std::uint64_t>(d) / es)
          fail("tensor " + name + " has shape " + shape_string(e.shape) + ": more elements than any file holds");
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

// Refuses (tasn::InvalidArgument, naming the entry) tensor names and metadata that are not
// valid UTF-8: JSON cannot hold them. Call it early to find such a problem before work is done.
inline void check_header_strings(const std::vector<std::string>& names, const std::map<std::string, std::string>& metadata,
                                 const std::string& path) {
  for (const auto& n : names)
    TASN_CHECK_ARG(io::valid_utf8(n), "safetensors: ", path, ": tensor name \"", io::escape_bytes(n),
                   "\" is not valid UTF-8");
  for (const auto& [k, v] : metadata)
    TASN_CHECK_ARG(io::valid_utf8(k) && io::valid_utf8(v), "safetensors: ", path, ": metadata \"", io::escape_bytes(k),
                   "\" = \"", io::escape_bytes(v), "\" is not valid UTF-8 (escape byte strings with io::escape_bytes)");
}

// Writes tensors (name -> values, shape) with metadata (plus "data_crc32"); F32 for float, F64
// for double. Atomic: on any failure (io::IoError naming the path and the OS reason) the previous
// file under `path` is unchanged and no temporary file is left.
template <class Tn>
void write(const std::string& path, const std::map<std::string, const Tn*>& tensors,
           std::map<std::string, std::string> metadata = {}) {
  using T = std::remove_const_t<typename Tn::value_type>;
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>);
  std::vector<std::string> names;
  for (const auto& [name, t] : tensors) names.push_back(name);
  check_header_strings(names, metadata, path);
  nlohmann::json header = nlohmann::json::object();
  std::uint64_t offset = 0;
  std::uint32_t crc = 0;
  for (const auto& [name, t] : tensors) {
    const std::uint64_t bytes = static_cast<std::uint64_t>(t->numel()) * sizeof(T);
    header[name] = {{"dtype", sizeof(T) == 4 ? "F32" : "F64"}, {"shape", t->shape}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
    crc = io::crc32(t->ptr(), bytes, crc);
  }
  metadata[kChecksumKey] = crc_hex(crc);
  header["__metadata__"] = metadata;
  std::string h = header.dump();
  while ((8 + h.size()) % 8) h.push_back(' ');  // align the data (the format allows padding)
  io::AtomicFile out(path, "safetensors file");
  unsigned char len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>((std::uint64_t(h.size()) >> (8 * i)) & 0xff);
  out.write(len, 8);
  out.write(h);
  for (const auto& [name, t] : tensors) out.write(t->ptr(), static_cast<std::size_t>(t->numel()) * sizeof(T));
  out.commit();
}

template <class T>
void save(ParamStore<T>& ps, const std::string& path, const std::map<std::string, std::string>& metadata = {}) {
  std::map<std::string, const TensorSpan<T>*> m;
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
    for (std::size_t i = 0; i < it->second.values.size(); ++i) p.value[static_cast<std::int64_t>(i)] = static_cast<T>(it->second.values[i]);
  }
}

}  // namespace tasn::nn::safetensors
