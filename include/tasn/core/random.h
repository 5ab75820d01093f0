// tasn/core/random.h - counter-based random numbers (splitmix64 finaliser), host and device:
// the same value of (key, counter) everywhere, no state, no std:: distributions.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "tasn/core/common.h"

namespace tasn {

TASN_HD std::uint64_t mix64(std::uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// Uniform and normal draws from a counter-based stream: draw k of key is a pure function of
// (key, k), so a stream is reproducible from its key alone. Host only (uses <cmath>).
class CounterRng {
 public:
  explicit CounterRng(std::uint64_t key) : key_(key) {}
  double uniform() { return static_cast<double>(mix64(key_ + counter_++) >> 11) * 0x1.0p-53; }
  double uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }
  double normal() {  // Box-Muller
    const double u1 = std::max(uniform(), 1e-300), u2 = uniform();
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
  }

 private:
  std::uint64_t key_, counter_ = 0;
};

}  // namespace tasn
