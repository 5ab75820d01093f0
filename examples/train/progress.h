// examples/train/progress.h - what a run reports while it trains: the progress bar on stderr
// (one refreshed line on a terminal, about four lines an epoch otherwise), the time format it uses, and
// the JSON-lines metrics log of the run folder (docs/trainer.md, "Run folders").
#pragma once

#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <string>
#include <utility>

#include <nlohmann/json.hpp>

#include "io/file_io.h"

namespace tasn::train {

inline std::string format_seconds(double s) {
  const auto t = static_cast<long>(s + 0.5);
  char buf[32];
  std::snprintf(buf, sizeof buf, "%ld:%02ld", t / 60, t % 60);
  return buf;
}

// The metrics log of a run (one JSON object per line). Fresh runs replace an earlier log (only
// with --overwrite: RunFolder::claim); resumed runs keep the lines of the epochs up to the
// checkpoint's and drop later ones (the resumed run repeats those epochs bit for bit), so the
// log never holds two lines for one epoch. Nothing is changed before the first line is written.
class MetricsLog {
 public:
  MetricsLog() = default;
  MetricsLog(std::string path, bool fresh, std::int64_t keep_through_epoch)
      : path_(std::move(path)), fresh_(fresh), keep_(keep_through_epoch) {}

  void append(const nlohmann::json& j) {
    if (path_.empty()) return;
    if (!file_.enabled()) {
      if (!fresh_) drop_later_epochs();
      file_ = io::AppendFile(path_, fresh_, "metrics log");
    }
    file_.append(j.dump() + "\n");
  }
  void close() { file_.close(); }

 private:
  void drop_later_epochs() const {
    if (!std::filesystem::exists(path_)) return;
    const auto bytes = io::read_file(path_, "metrics log");
    std::string kept, line;
    bool dropped = false;
    for (std::size_t i = 0; i < bytes.size(); ++i) {
      line.push_back(static_cast<char>(bytes[i]));
      if (bytes[i] != '\n' && i + 1 < bytes.size()) continue;
      const auto j = nlohmann::json::parse(line, nullptr, false);
      const bool later = !j.is_discarded() && j.is_object() && j.contains("epoch") && j["epoch"].is_number_integer() &&
                         j["epoch"].get<std::int64_t>() > keep_;
      if (later) dropped = true;
      else kept += line;
      line.clear();
    }
    if (dropped) io::write_file_atomic(path_, kept.data(), kept.size(), "metrics log");
  }

  std::string path_;
  bool fresh_ = true;
  std::int64_t keep_ = 0;
  io::AppendFile file_;
};

// Progress line: "tasn  epoch 2/5 [#####.....] 60/125  loss 1.234  acc 45.3%  210 img/s  ETA 0:32"
class Progress {
 public:
  Progress(bool on, std::string label) : on_(on), tty_(isatty(2) != 0), label_(std::move(label)) {}
  void update(std::int64_t epoch, std::int64_t epochs, std::int64_t step, std::int64_t steps, double loss, double acc,
              double ips, double eta) {
    if (!on_) return;
    if (!tty_ && step != steps && step % std::max<std::int64_t>(1, steps / 4) != 0) return;
    const int width = 20, filled = static_cast<int>(width * step / std::max<std::int64_t>(1, steps));
    std::fprintf(stderr, "%s%-9s epoch %lld/%lld [%s%s] %lld/%lld  loss %.3f  acc %5.1f%%  %.0f img/s  ETA %s%s",
                 tty_ ? "\r" : "", label_.c_str(), (long long)epoch, (long long)epochs, std::string(filled, '#').c_str(),
                 std::string(width - filled, '.').c_str(), (long long)step, (long long)steps, loss, 100 * acc, ips,
                 format_seconds(eta).c_str(), tty_ ? "\x1b[K" : "\n");
    if (tty_ && step == steps) std::fprintf(stderr, "\n");
    std::fflush(stderr);
  }
  void line(const std::string& s) {  // always shown (stdout), with or without the bar
    std::printf("%s\n", s.c_str());
    std::fflush(stdout);
  }

 private:
  bool on_, tty_;
  std::string label_;
};

}  // namespace tasn::train
