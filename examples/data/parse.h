// examples/data/parse.h - whole-string number parsing with errors that say where the text came
// from (list files, command-line options).
#pragma once

#include <cstdint>
#include <string>
#include <type_traits>

#include "tasn/core/common.h"

namespace tasn::data {

// True when all of `s` is one number of type T (std::stoll / std::stod syntax); out is then set.
template <class T>
bool parse_number(const std::string& s, T& out) {
  static_assert(std::is_same_v<T, std::int64_t> || std::is_same_v<T, double>);
  std::size_t used = 0;
  try {
    if constexpr (std::is_same_v<T, double>) out = std::stod(s, &used);
    else out = std::stoll(s, &used);
  } catch (const std::exception&) {
    return false;
  }
  return !s.empty() && used == s.size();
}

// Throws tasn::InvalidArgument "<what>: "<s>" is not an integer".
inline std::int64_t parse_int(const std::string& s, const std::string& what) {
  std::int64_t v = 0;
  TASN_CHECK_ARG(parse_number(s, v), what, ": \"", s, "\" is not an integer");
  return v;
}

// Throws tasn::InvalidArgument "<what>: "<s>" is not a number".
inline double parse_double(const std::string& s, const std::string& what) {
  double v = 0;
  TASN_CHECK_ARG(parse_number(s, v), what, ": \"", s, "\" is not a number");
  return v;
}

}  // namespace tasn::data
