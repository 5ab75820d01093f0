// examples/train/run_folder.h - the output folder of a training run (--out): what may be written
// there, and by whom.
//
//   - One run at a time: the folder is locked (flock on DIR/.tasn-lock, held until the run ends);
//     a second run is refused with the holder's pid, host, start time and command line.
//   - Writable: taking the lock writes the holder's description into the lock file, so a folder
//     that cannot be written is found before any data is prepared.
//   - Leftovers: temporary files of interrupted atomic writes (NAME.tmp-XXXXXXXXXXXX, and the
//     older NAME.tmp) are removed when the lock is taken: nobody else can be writing them.
//   - Earlier results are never destroyed by a fresh run: claim() refuses a folder that already
//     holds MODEL-last.safetensors or MODEL-metrics.jsonl, unless the run resumes that very
//     checkpoint or `overwrite` is set (--overwrite), and names both ways out.
#pragma once

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <ctime>
#include <filesystem>
#include <string>
#include <system_error>
#include <vector>

#include "io/file_io.h"

namespace tasn::train {

class RunFolder {
 public:
  // Creates `dir` when missing, locks it (or throws naming the holder), removes stale temporaries.
  // `command` describes this run in the lock file (e.g. the command line).
  explicit RunFolder(const std::string& dir, const std::string& command = "") : dir_(dir) {
    namespace fs = std::filesystem;
    TASN_CHECK_ARG(!dir.empty(), "the output folder (--out) must not be empty");
    std::error_code ec;
    fs::create_directories(dir, ec);
    if (ec) throw io::IoError("cannot create the output folder " + dir + ": " + ec.message());
    TASN_CHECK_ARG(fs::is_directory(dir), "the output folder ", dir, " exists but is not a folder");
    lock_path_ = dir + "/.tasn-lock";
    fd_ = ::open(lock_path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0666);
    if (fd_ < 0) io::fail("cannot write in the output folder (lock file)", lock_path_, errno);
    if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
      const int err = errno;
      std::string holder;
      if (err == EWOULDBLOCK) {
        try {
          const auto b = io::read_file(lock_path_, "lock file");
          holder.assign(b.begin(), b.end());
        } catch (const io::IoError&) {
        }
        while (!holder.empty() && (holder.back() == '\n' || holder.back() == ' ')) holder.pop_back();
      }
      ::close(fd_);
      fd_ = -1;
      if (err != EWOULDBLOCK) io::fail("cannot lock the output folder", dir, err);
      throw InvalidArgument("the output folder " + dir + " is in use by another run (" +
                            (holder.empty() ? std::string("holder unknown") : holder) +
                            "); wait for it to end or choose another --out");
    }
    char host[256] = "?";
    ::gethostname(host, sizeof host - 1);
    const std::time_t now = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
    char when[64];
    std::strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S", std::localtime(&now));
    const std::string me = "pid " + std::to_string(::getpid()) + " on " + host + " since " + when +
                           (command.empty() ? "" : ": " + command) + "\n";
    if (::ftruncate(fd_, 0) != 0) io::fail("cannot write in the output folder (lock file)", lock_path_, errno);
    if (const int err = io::write_all(fd_, me.data(), me.size()))
      io::fail("cannot write in the output folder (lock file)", lock_path_, err);
    if (io::syscalls().fsync(fd_) != 0) io::fail("cannot write in the output folder (lock file)", lock_path_, errno);
    for (const auto& e : fs::directory_iterator(dir, ec)) {
      const std::string name = e.path().filename().string();
      const bool legacy = name.size() > 16 && name.compare(name.size() - 16, 16, ".safetensors.tmp") == 0;
      if ((io::is_temporary_name(name) || legacy) && e.is_regular_file()) removed_.push_back(e.path().string());
    }
    for (const auto& p : removed_) fs::remove(p, ec);  // after the listing: no removal while iterating
  }
  RunFolder(const RunFolder&) = delete;
  RunFolder& operator=(const RunFolder&) = delete;
  ~RunFolder() {
    if (fd_ >= 0) {
      if (::ftruncate(fd_, 0) != 0) {
      }  // the lock file's content only describes a live holder
      ::close(fd_);  // releases the lock
    }
  }

  const std::string& dir() const { return dir_; }
  std::string checkpoint(const std::string& model) const { return dir_ + "/" + model + "-last.safetensors"; }
  std::string metrics(const std::string& model) const { return dir_ + "/" + model + "-metrics.jsonl"; }
  // Temporaries of interrupted writes that the constructor removed.
  const std::vector<std::string>& removed() const { return removed_; }

  // True when the folder holds results of a `model` run.
  bool holds(const std::string& model) const {
    namespace fs = std::filesystem;
    return fs::exists(checkpoint(model)) || fs::exists(metrics(model));
  }

  // True when `resume` is this folder's own checkpoint of `model` (the run continues here).
  bool resumes_own(const std::string& model, const std::string& resume) const {
    std::error_code ec;
    return !resume.empty() && std::filesystem::equivalent(resume, checkpoint(model), ec);
  }

  // May a run of `model` write its results here? Fresh runs (resume == ""): only into a folder
  // without results of `model`; resumed runs: only where there are none or where the resumed
  // checkpoint is this folder's own. `overwrite` allows replacing an earlier run.
  void claim(const std::string& model, const std::string& resume, bool overwrite) const {
    namespace fs = std::filesystem;
    if (overwrite || !holds(model)) return;
    if (resumes_own(model, resume)) return;
    const std::string files = (fs::exists(checkpoint(model)) ? checkpoint(model) : "") +
                              (fs::exists(checkpoint(model)) && fs::exists(metrics(model)) ? ", " : "") +
                              (fs::exists(metrics(model)) ? metrics(model) : "");
    if (resume.empty())
      throw InvalidArgument("the output folder " + dir_ + " already holds a " + model + " run (" + files +
                            "): continue it with --resume " + checkpoint(model) +
                            ", replace it with --overwrite, or choose another --out");
    throw InvalidArgument("the output folder " + dir_ + " holds another " + model + " run (" + files +
                          ") than the checkpoint resumed (" + resume +
                          "): resume into another --out, or replace it with --overwrite");
  }

 private:
  std::string dir_, lock_path_;
  int fd_ = -1;
  std::vector<std::string> removed_;
};

}  // namespace tasn::train
