// examples/io/file_io.h - files the example programs write (checkpoints, metrics logs, PNGs)
// without ever losing what a user already has:
//
//   AtomicFile   a new version of a file: written to a unique temporary in the same folder, every
//                write checked (short writes and EINTR retried), fsynced, closed (checked), renamed
//                over the old version, and the folder fsynced. On any failure the temporary is
//                removed, the old version stays as it was, and an IoError names the path, the
//                step and the OS reason (strerror).
//   AppendFile   a log that grows line by line: each line written whole and fdatasynced; created
//                (or truncated) only when the first line is written.
//
// Every system call goes through io::syscalls(), so tests can inject a failure at each step
// (a short write, ENOSPC, a failing fsync, close or rename) besides the real ones (a full tmpfs,
// RLIMIT_FSIZE).
#pragma once

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cctype>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "tasn/core/common.h"

namespace tasn::io {

// A file could not be read or written; the message names the path and the OS reason.
class IoError : public Error {
 public:
  using Error::Error;
};

// The system calls the writers use (replaceable by tests to inject failures).
struct Syscalls {
  ssize_t (*write)(int, const void*, size_t) = ::write;
  int (*fsync)(int) = ::fsync;
  int (*fdatasync)(int) = ::fdatasync;
  int (*close)(int) = ::close;
  int (*rename)(const char*, const char*) = ::rename;
};

inline Syscalls& syscalls() {
  static Syscalls s;
  return s;
}

inline std::string os_reason(int err) { return std::strerror(err); }

[[noreturn]] inline void fail(const std::string& what, const std::string& path, int err) {
  throw IoError(what + " " + path + ": " + os_reason(err));
}

// Writes all of [p, p + n): retries short writes and EINTR. Returns 0, or the errno of the
// failure (ENOSPC when the file system accepts no byte more).
inline int write_all(int fd, const void* p, std::size_t n) {
  const auto* b = static_cast<const unsigned char*>(p);
  while (n > 0) {
    const ssize_t w = syscalls().write(fd, b, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    if (w == 0) return ENOSPC;  // no progress: treat as a full device rather than spin
    b += w;
    n -= static_cast<std::size_t>(w);
  }
  return 0;
}

inline std::string parent_dir(const std::string& path) {
  const auto slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

// Makes a rename or a new file in `dir` durable.
inline void sync_directory(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) fail("cannot open the folder", dir, errno);
  const int rc = syscalls().fsync(fd);
  const int err = errno;
  ::close(fd);
  // Some file systems cannot fsync a directory (EINVAL): the data itself is synced already.
  if (rc != 0 && err != EINVAL) fail("cannot sync the folder", dir, err);
}

// Temporary files of AtomicFile are named "<final name>.tmp-<12 hex digits>": a run folder's
// owner (who holds its lock) may delete every such file as left over from an interrupted write.
constexpr const char* kTempMarker = ".tmp-";

inline bool is_temporary_name(const std::string& name) {
  const auto p = name.rfind(kTempMarker);
  if (p == std::string::npos || p == 0 || name.size() != p + std::strlen(kTempMarker) + 12) return false;
  for (std::size_t i = p + std::strlen(kTempMarker); i < name.size(); ++i)
    if (!std::isxdigit(static_cast<unsigned char>(name[i]))) return false;
  return true;
}

class AtomicFile {
 public:
  // Creates the temporary next to `path`; `what` names the file in messages ("checkpoint").
  explicit AtomicFile(std::string path, std::string what = "file") : path_(std::move(path)), what_(std::move(what)) {
    static std::atomic<std::uint64_t> counter{0};
    for (int attempt = 0; attempt < 100; ++attempt) {
      const std::uint64_t id =
          (static_cast<std::uint64_t>(::getpid()) << 24) ^ (counter.fetch_add(1) * 0x9E3779B97F4A7C15ull >> 16) ^
          static_cast<std::uint64_t>(attempt);
      char suffix[32];
      std::snprintf(suffix, sizeof suffix, "%s%012llx", kTempMarker,
                    static_cast<unsigned long long>(id & 0xffffffffffffull));
      tmp_ = path_ + suffix;
      fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
      if (fd_ >= 0) return;
      if (errno != EEXIST) fail("cannot create the " + what_ + " " + path_ + ": temporary file", tmp_, errno);
    }
    fail("cannot create the " + what_ + " " + path_ + ": temporary file", tmp_, EEXIST);
  }
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;
  ~AtomicFile() { abandon(); }

  const std::string& path() const { return path_; }
  const std::string& temporary() const { return tmp_; }

  void write(const void* p, std::size_t n) {
    check_open();
    if (const int err = write_all(fd_, p, n)) failed("write", err);
    bytes_ += n;
  }
  void write(const std::string& s) { write(s.data(), s.size()); }

  // Makes the new version durable and puts it in place of the old one.
  void commit() {
    check_open();
    if (syscalls().fsync(fd_) != 0) failed("sync", errno);
    const int fd = fd_;
    fd_ = -1;
    if (syscalls().close(fd) != 0) failed("close", errno);
    if (syscalls().rename(tmp_.c_str(), path_.c_str()) != 0) failed("rename", errno);
    tmp_.clear();
    sync_directory(parent_dir(path_));
  }

  std::uint64_t bytes() const { return bytes_; }

 private:
  void check_open() const {
    if (fd_ < 0) throw IoError("AtomicFile: " + path_ + " is already committed or abandoned");
  }
  // Removes the temporary (the old version is untouched) and throws
  // "cannot <step> the <what> <path> (temporary file <tmp>, removed): <reason>".
  [[noreturn]] void failed(const char* step, int err) {
    const std::string msg = std::string("cannot ") + step + " the " + what_ + " " + path_ + " (temporary file " + tmp_ +
                            ", removed; the previous version is unchanged): " + os_reason(err);
    abandon();
    throw IoError(msg);
  }
  void abandon() noexcept {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
    if (!tmp_.empty()) ::unlink(tmp_.c_str());
    tmp_.clear();
  }

  std::string path_, what_, tmp_;
  int fd_ = -1;
  std::uint64_t bytes_ = 0;
};

// Writes `data` as the new version of `path` (AtomicFile).
inline void write_file_atomic(const std::string& path, const void* data, std::size_t n, const std::string& what = "file") {
  AtomicFile f(path, what);
  f.write(data, n);
  f.commit();
}

// A log that grows by whole lines. The file is opened on the first append (so a run that fails
// before it has anything to say leaves an earlier log untouched): truncated when `truncate`,
// else appended to. Each append is written whole and fdatasynced; a failure throws IoError.
class AppendFile {
 public:
  AppendFile() = default;
  AppendFile(std::string path, bool truncate, std::string what = "log")
      : path_(std::move(path)), what_(std::move(what)), truncate_(truncate) {}
  AppendFile(const AppendFile&) = delete;
  AppendFile& operator=(const AppendFile&) = delete;
  AppendFile(AppendFile&& o) noexcept { *this = std::move(o); }
  AppendFile& operator=(AppendFile&& o) noexcept {
    if (this != &o) {
      close_quietly();
      path_ = std::move(o.path_);
      what_ = std::move(o.what_);
      truncate_ = o.truncate_;
      fd_ = o.fd_;
      o.fd_ = -1;
    }
    return *this;
  }
  ~AppendFile() { close_quietly(); }

  bool enabled() const { return !path_.empty(); }
  const std::string& path() const { return path_; }

  void append(const std::string& line) {
    if (path_.empty()) return;
    if (fd_ < 0) {
      fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | (truncate_ ? O_TRUNC : 0), 0666);
      if (fd_ < 0) fail("cannot open the " + what_, path_, errno);
    }
    if (const int err = write_all(fd_, line.data(), line.size())) fail("cannot write the " + what_, path_, err);
    if (syscalls().fdatasync(fd_) != 0) fail("cannot sync the " + what_, path_, errno);
  }

  // Closes the file, reporting a failure (a log must not fail silently).
  void close() {
    if (fd_ < 0) return;
    const int fd = fd_;
    fd_ = -1;
    if (syscalls().close(fd) != 0) fail("cannot close the " + what_, path_, errno);
  }

 private:
  void close_quietly() noexcept {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }
  std::string path_, what_;
  bool truncate_ = false;
  int fd_ = -1;
};

// The whole file as bytes; IoError naming the path and the OS reason when it cannot be read.
inline std::vector<unsigned char> read_file(const std::string& path, const std::string& what = "file") {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail("cannot open the " + what, path, errno);
  std::vector<unsigned char> bytes;
  struct stat st {};
  if (::fstat(fd, &st) == 0 && st.st_size > 0) bytes.reserve(static_cast<std::size_t>(st.st_size));
  unsigned char buf[1 << 16];
  for (;;) {
    const ssize_t r = ::read(fd, buf, sizeof buf);
    if (r < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      ::close(fd);
      fail("cannot read the " + what, path, err);
    }
    if (r == 0) break;
    bytes.insert(bytes.end(), buf, buf + r);
  }
  ::close(fd);
  return bytes;
}

// ---- CRC-32 (the zlib / PNG polynomial 0xEDB88320): checksums of PNG chunks and checkpoint data.

inline const std::uint32_t* crc32_table() {
  static const auto table = [] {
    static std::uint32_t t[256];
    for (std::uint32_t i = 0; i < 256; ++i) {
      std::uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (0xedb88320u & (0u - (c & 1u)));
      t[i] = c;
    }
    return t;
  }();
  return table;
}

// CRC-32 of [p, p + n) continuing from `crc` (0 to start): crc32(b, crc32(a)) == crc32(a + b),
// equal to Python's zlib.crc32.
inline std::uint32_t crc32(const void* p, std::size_t n, std::uint32_t crc = 0) {
  const std::uint32_t* t = crc32_table();
  const auto* b = static_cast<const unsigned char*>(p);
  std::uint32_t c = ~crc;
  for (std::size_t i = 0; i < n; ++i) c = t[(c ^ b[i]) & 0xffu] ^ (c >> 8);
  return ~c;
}

}  // namespace tasn::io
