// examples/png.h - a minimal PNG writer (8-bit RGB, zlib "stored" blocks, no compression), so the
// examples can write pictures without an image library. The file is written atomically and every
// write is checked (io::AtomicFile): a failure throws io::IoError naming the path and the reason.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "io/file_io.h"

namespace tasn::examples {

// rgb: h rows of w pixels, 3 bytes each.
inline void write_png(const std::string& path, const std::vector<unsigned char>& rgb, int w, int h) {
  TASN_CHECK_ARG(w >= 1 && h >= 1 && rgb.size() == static_cast<std::size_t>(w) * h * 3, "write_png ", path, ": ",
                 rgb.size(), " bytes for a ", w, " x ", h, " RGB image");
  std::vector<unsigned char> raw;  // filter byte 0 + row
  raw.reserve(static_cast<std::size_t>(h) * (w * 3 + 1));
  for (int y = 0; y < h; ++y) {
    raw.push_back(0);
    raw.insert(raw.end(), rgb.begin() + static_cast<std::ptrdiff_t>(y) * w * 3,
               rgb.begin() + static_cast<std::ptrdiff_t>(y + 1) * w * 3);
  }
  std::vector<unsigned char> z = {0x78, 0x01};  // zlib header, stored blocks
  std::uint32_t a = 1, b = 0;
  for (unsigned char c : raw) {
    a = (a + c) % 65521;
    b = (b + a) % 65521;
  }
  for (std::size_t off = 0; off < raw.size() || off == 0; off += 65535) {
    const std::size_t len = std::min<std::size_t>(65535, raw.size() - off);
    z.push_back(off + len >= raw.size() ? 1 : 0);
    z.push_back(len & 0xff);
    z.push_back(len >> 8);
    z.push_back(~len & 0xff);
    z.push_back((~len >> 8) & 0xff);
    z.insert(z.end(), raw.begin() + static_cast<std::ptrdiff_t>(off), raw.begin() + static_cast<std::ptrdiff_t>(off + len));
    if (off + len >= raw.size()) break;
  }
  const std::uint32_t adler = (b << 16) | a;
  for (int s = 24; s >= 0; s -= 8) z.push_back((adler >> s) & 0xff);

  std::vector<unsigned char> file;
  auto u32 = [](std::vector<unsigned char>& v, std::uint32_t x) {
    for (int s = 24; s >= 0; s -= 8) v.push_back((x >> s) & 0xff);
  };
  auto chunk = [&](const char* type, const std::vector<unsigned char>& data) {
    std::vector<unsigned char> c;
    u32(c, static_cast<std::uint32_t>(data.size()));
    c.insert(c.end(), type, type + 4);
    c.insert(c.end(), data.begin(), data.end());
    u32(c, io::crc32(c.data() + 4, c.size() - 4));
    file.insert(file.end(), c.begin(), c.end());
  };
  file = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  std::vector<unsigned char> ihdr;
  u32(ihdr, static_cast<std::uint32_t>(w));
  u32(ihdr, static_cast<std::uint32_t>(h));
  ihdr.insert(ihdr.end(), {8, 2, 0, 0, 0});  // 8-bit RGB
  chunk("IHDR", ihdr);
  chunk("IDAT", z);
  chunk("IEND", {});
  io::write_file_atomic(path, file.data(), file.size(), "PNG");
}

}  // namespace tasn::examples
