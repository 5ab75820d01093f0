// tests/support/formula_weights.h - deterministic parameter values from (name, element index),
// reproduced bit for bit by gen_golden.py's formula_value, so golden checks of whole networks
// need no committed weight files.
#pragma once

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "support/test_support.h"

namespace tasn::test {

inline std::uint64_t fnv1a64(const std::string& s) {
  std::uint64_t h = 0xCBF29CE484222325ull;
  for (unsigned char c : s) h = (h ^ c) * 0x100000001B3ull;
  return h;
}

// gen_golden.py: formula_value
inline std::vector<double> formula_values(const std::string& name, const std::vector<std::int64_t>& shape) {
  std::int64_t n = 1;
  for (auto d : shape) n *= d;
  double lo, hi;
  const bool ends_var = name.size() >= 11 && name.compare(name.size() - 11, 11, "running_var") == 0;
  const bool ends_weight = name.size() >= 7 && name.compare(name.size() - 7, 7, ".weight") == 0;
  if (ends_var || (ends_weight && shape.size() == 1)) {
    lo = 0.5, hi = 1.5;
  } else if (shape.size() == 1) {
    lo = -0.1, hi = 0.1;
  } else {
    const double a = std::pow(3.0 / static_cast<double>(n / shape[0]), 0.5);
    lo = -a, hi = a;
  }
  return random_tensor(n, fnv1a64(name), lo, hi);
}

}  // namespace tasn::test
