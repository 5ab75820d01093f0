// examples/io: atomic, checked writes. A failure at any step (a short write that then fails with
// ENOSPC, a failing fsync, close or rename, a real EFBIG from RLIMIT_FSIZE, a real full tmpfs
// when one can be mounted) leaves the previous file byte for byte, removes the temporary and
// names the path and the OS reason.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/resource.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <functional>
#include <set>
#include <string>
#include <vector>

#include "io/file_io.h"
#include "io/text.h"
#include "nn/safetensors.h"
#include "png.h"

namespace {

namespace fs = std::filesystem;
using tasn::io::IoError;

fs::path temp_dir(const std::string& name) {
  const fs::path p = fs::temp_directory_path() / ("tasn_io_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(p);
  fs::create_directories(p);
  return p;
}

std::string slurp(const fs::path& p) {
  const auto b = tasn::io::read_file(p.string());
  return {b.begin(), b.end()};
}

std::vector<std::string> names_in(const fs::path& dir) {
  std::vector<std::string> v;
  for (const auto& e : fs::directory_iterator(dir)) v.push_back(e.path().filename().string());
  std::sort(v.begin(), v.end());
  return v;
}

std::string io_message(const std::function<void()>& f) {
  try {
    f();
  } catch (const IoError& e) {
    return e.what();
  }
  return "(no IoError)";
}

// Restores the real system calls when a test ends.
struct Inject {
  Inject() : saved(tasn::io::syscalls()) {}
  ~Inject() { tasn::io::syscalls() = saved; }
  tasn::io::Syscalls saved;
};

// Writes up to `budget` bytes, then fails with ENOSPC (a disk that fills up mid-file; the first
// write that crosses the budget is short, as write(2) is on a filling device).
std::int64_t g_budget = 0;
ssize_t limited_write(int fd, const void* p, size_t n) {
  if (g_budget <= 0) {
    errno = ENOSPC;
    return -1;
  }
  const size_t take = std::min<size_t>(n, static_cast<size_t>(g_budget));
  const ssize_t w = ::write(fd, p, take);
  if (w > 0) g_budget -= w;
  return w;
}
int failing_fsync(int) {
  errno = EIO;
  return -1;
}
int failing_close(int fd) {
  ::close(fd);
  errno = EIO;
  return -1;
}
int failing_rename(const char*, const char*) {
  errno = EXDEV;
  return -1;
}
ssize_t interrupted_write(int fd, const void* p, size_t n) {  // EINTR and 1-byte writes: must still complete
  static int calls = 0;
  if (++calls % 3 == 0) {
    errno = EINTR;
    return -1;
  }
  return ::write(fd, p, std::min<size_t>(n, 1));
}

TEST(FileIo, AtomicWriteReplacesTheFile) {
  const fs::path d = temp_dir("replace");
  const std::string p = (d / "f.bin").string();
  tasn::io::write_file_atomic(p, "old", 3);
  tasn::io::write_file_atomic(p, "new content", 11);
  EXPECT_EQ(slurp(p), "new content");
  EXPECT_EQ(names_in(d), std::vector<std::string>{"f.bin"});
  fs::remove_all(d);
}

TEST(FileIo, EveryFailingStepKeepsTheOldFileAndNamesTheReason) {
  const fs::path d = temp_dir("fail");
  const std::string p = (d / "ckpt.safetensors").string();
  const std::string old(1000, 'o'), fresh(5000, 'n');
  tasn::io::write_file_atomic(p, old.data(), old.size());
  struct Case {
    const char* name;
    void (*arm)();
    const char* reason;
    const char* step;
  };
  const Case cases[] = {
      {"short write then ENOSPC", [] {
         g_budget = 1234;
         tasn::io::syscalls().write = limited_write;
       },
       "No space left on device", "cannot write"},
      {"fsync EIO", [] { tasn::io::syscalls().fsync = failing_fsync; }, "Input/output error", "cannot sync"},
      {"close EIO", [] { tasn::io::syscalls().close = failing_close; }, "Input/output error", "cannot close"},
      {"rename EXDEV", [] { tasn::io::syscalls().rename = failing_rename; }, "Invalid cross-device link", "cannot rename"},
  };
  for (const Case& c : cases) {
    Inject guard;
    c.arm();
    const std::string msg = io_message([&] { tasn::io::write_file_atomic(p, fresh.data(), fresh.size(), "checkpoint"); });
    EXPECT_NE(msg.find(c.reason), std::string::npos) << c.name << ": " << msg;
    EXPECT_NE(msg.find(c.step), std::string::npos) << c.name << ": " << msg;
    EXPECT_NE(msg.find(p), std::string::npos) << c.name << ": " << msg;
    EXPECT_EQ(slurp(p), old) << c.name;
    EXPECT_EQ(names_in(d), std::vector<std::string>{"ckpt.safetensors"}) << c.name << ": temporary left behind";
  }
  {  // interrupted and 1-byte writes complete the file
    Inject guard;
    tasn::io::syscalls().write = interrupted_write;
    tasn::io::write_file_atomic(p, fresh.data(), 100);
  }
  EXPECT_EQ(slurp(p), fresh.substr(0, 100));
  fs::remove_all(d);
}

// A real kernel failure: RLIMIT_FSIZE makes write(2) fail with EFBIG past the limit (SIGXFSZ ignored).
TEST(FileIo, RealFileSizeLimitKeepsTheOldCheckpoint) {
  const fs::path d = temp_dir("fsize");
  const std::string p = (d / "model.safetensors").string();
  tasn::nn::Tensor<float> small({4}), big({100000});
  for (std::size_t i = 0; i < big.data.size(); ++i) big.data[i] = float(i);
  tasn::nn::safetensors::write<tasn::nn::Tensor<float>>(p, {{"w", &small}}, {{"epoch", "1"}});
  const std::string before = slurp(p);
  rlimit old{};
  ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &old), 0);
  auto* old_handler = signal(SIGXFSZ, SIG_IGN);
  rlimit lim = old;
  lim.rlim_cur = 64 * 1024;  // the new file needs 400 kB
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &lim), 0);
  const std::string msg = io_message([&] { tasn::nn::safetensors::write<tasn::nn::Tensor<float>>(p, {{"w", &big}}, {{"epoch", "2"}}); });
  setrlimit(RLIMIT_FSIZE, &old);
  signal(SIGXFSZ, old_handler);
  EXPECT_NE(msg.find("File too large"), std::string::npos) << msg;
  EXPECT_NE(msg.find(p), std::string::npos) << msg;
  EXPECT_EQ(slurp(p), before);
  EXPECT_EQ(names_in(d), std::vector<std::string>{"model.safetensors"});
  EXPECT_EQ(tasn::nn::safetensors::read(p).metadata.at("epoch"), "1");
  fs::remove_all(d);
}

// A real full file system: a 256 kB tmpfs (needs the right to mount: root; skipped otherwise).
TEST(FileIo, RealFullTmpfsKeepsTheOldCheckpoint) {
  const fs::path d = temp_dir("tmpfs");
  if (::mount("tasn-test", d.c_str(), "tmpfs", 0, "size=256k") != 0) {
    const std::string why = std::strerror(errno);
    fs::remove_all(d);
    GTEST_SKIP() << "cannot mount a tmpfs here (" << why << "); the injected-failure tests cover this path";
  }
  const std::string p = (d / "model.safetensors").string();
  tasn::nn::Tensor<float> t({40000});  // 160 kB: one fits, a second beside it does not
  tasn::nn::safetensors::write<tasn::nn::Tensor<float>>(p, {{"w", &t}}, {{"epoch", "1"}});
  t.data[7] = 1.0f;
  const std::string msg = io_message([&] { tasn::nn::safetensors::write<tasn::nn::Tensor<float>>(p, {{"w", &t}}, {{"epoch", "2"}}); });
  EXPECT_NE(msg.find("No space left on device"), std::string::npos) << msg;
  const auto f = tasn::nn::safetensors::read(p);  // intact, checksum verified
  EXPECT_EQ(f.metadata.at("epoch"), "1");
  EXPECT_EQ(f.tensors.at("w").values[7], 0.0);
  EXPECT_EQ(names_in(d), std::vector<std::string>{"model.safetensors"});
  ::umount(d.c_str());
  fs::remove_all(d);
}

TEST(FileIo, AppendFileReportsFailuresAndCreatesNothingUntilTheFirstLine) {
  const fs::path d = temp_dir("append");
  const std::string p = (d / "log.jsonl").string();
  tasn::io::write_file_atomic(p, "earlier\n", 8);
  {
    tasn::io::AppendFile f(p, true, "metrics log");  // a fresh log, not yet written: the old one stays
  }
  EXPECT_EQ(slurp(p), "earlier\n");
  {
    tasn::io::AppendFile f(p, false, "metrics log");
    f.append("one\n");
    Inject guard;
    g_budget = 2;
    tasn::io::syscalls().write = limited_write;
    const std::string msg = io_message([&] { f.append("two\n"); });
    EXPECT_NE(msg.find("cannot write the metrics log " + p + ": No space left on device"), std::string::npos) << msg;
    tasn::io::syscalls().fdatasync = failing_fsync;
    tasn::io::syscalls().write = ::write;
    EXPECT_NE(io_message([&] { f.append("three\n"); }).find("cannot sync the metrics log"), std::string::npos);
  }
  EXPECT_EQ(slurp(p).rfind("earlier\none\n", 0), 0u);
  EXPECT_NE(io_message([] { tasn::io::AppendFile("/nonexistent-dir/x.jsonl", false).append("x\n"); })
                .find("No such file or directory"),
            std::string::npos);
  fs::remove_all(d);
}

TEST(FileIo, PngWriteFailuresAreReported) {
  const std::vector<unsigned char> rgb(3 * 4 * 2, 128);
  const std::string msg = io_message([&] { tasn::examples::write_png("/nonexistent-dir/a.png", rgb, 4, 2); });
  EXPECT_NE(msg.find("/nonexistent-dir/a.png"), std::string::npos) << msg;
  EXPECT_NE(msg.find("No such file or directory"), std::string::npos) << msg;
  const fs::path d = temp_dir("png");
  Inject guard;
  tasn::io::syscalls().fsync = failing_fsync;
  EXPECT_NE(io_message([&] { tasn::examples::write_png((d / "a.png").string(), rgb, 4, 2); }).find("cannot sync the PNG"),
            std::string::npos);
  EXPECT_TRUE(names_in(d).empty());
  fs::remove_all(d);
}

TEST(FileIo, Crc32MatchesZlib) {
  // zlib.crc32(b"123456789") == 0xCBF43926 (the standard check value); chaining equals one pass
  EXPECT_EQ(tasn::io::crc32("123456789", 9), 0xCBF43926u);
  EXPECT_EQ(tasn::io::crc32("6789", 4, tasn::io::crc32("12345", 5)), 0xCBF43926u);
  EXPECT_EQ(tasn::io::crc32("", 0), 0u);
}

TEST(FileIo, EscapeBytesRoundTripsAnyByteString) {
  using tasn::io::escape_bytes;
  using tasn::io::valid_utf8;
  EXPECT_EQ(escape_bytes("cub/images/001.Black_footed_Albatross/a b.jpg"), "cub/images/001.Black_footed_Albatross/a b.jpg");
  EXPECT_EQ(escape_bytes("caf\xc3\xa9/\xe6\x97\xa5"), "caf\xc3\xa9/\xe6\x97\xa5");  // valid UTF-8 kept
  EXPECT_EQ(escape_bytes("bad\xff\xfe.jpg"), "bad\\xFF\\xFE.jpg");
  EXPECT_EQ(escape_bytes("a\\xFF"), "a\\\\xFF");  // a literal backslash cannot be confused with an escape
  EXPECT_EQ(escape_bytes("\xc3"), "\\xC3");          // truncated sequence
  EXPECT_EQ(escape_bytes("\xed\xa0\x80"), "\\xED\\xA0\\x80");  // a surrogate is not UTF-8
  EXPECT_FALSE(valid_utf8("\xc0\xaf"));                         // overlong
  EXPECT_TRUE(valid_utf8("\xf0\x9f\x98\x80"));
  // one to one on every 1- and 2-byte string
  std::set<std::string> seen;
  for (int a = 0; a < 256; ++a)
    for (int b = -1; b < 256; ++b) {
      std::string s(1, char(a));
      if (b >= 0) s.push_back(char(b));
      const std::string e = escape_bytes(s);
      ASSERT_TRUE(valid_utf8(e)) << a << " " << b;
      ASSERT_TRUE(seen.insert(e).second) << "collision at " << a << " " << b;
    }
}

TEST(FileIo, TemporaryNamesAreRecognised) {
  EXPECT_TRUE(tasn::io::is_temporary_name("tasn-last.safetensors.tmp-0123456789ab"));
  EXPECT_FALSE(tasn::io::is_temporary_name("tasn-last.safetensors"));
  EXPECT_FALSE(tasn::io::is_temporary_name("notes.tmp-1"));
  EXPECT_FALSE(tasn::io::is_temporary_name(".tmp-0123456789ab"));
}

}  // namespace
