// tests/support/test_support.h - deterministic data, tolerances, finite differences and golden
// files, shared by every operator's tests.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "tasn/core/common.h"

namespace tasn::test {

// The message of the tasn::InvalidArgument that f() throws; "NO EXCEPTION" or "WRONG TYPE: ..."
// otherwise, so a test that looks for a message fails with a readable value.
template <class F>
std::string invalid_argument_message(F&& f) {
  try {
    f();
  } catch (const tasn::InvalidArgument& e) {
    return e.what();
  } catch (const std::exception& e) {
    return std::string("WRONG TYPE: ") + e.what();
  }
  return "NO EXCEPTION";
}

// ---- deterministic data ----------------------------------------------------------------------
// splitmix64 of (seed, index): the same generator is written in tests/golden/gen_golden.py, so
// golden inputs are regenerated here bit for bit instead of being stored. Deliberately a copy of
// tasn::mix64: test data must not change when library code does.
inline std::uint64_t splitmix64(std::uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  std::uint64_t z = x;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Uniform double in [lo, hi) for element i of stream `seed`.
inline double uniform_at(std::uint64_t seed, std::uint64_t i, double lo, double hi) {
  const std::uint64_t h = splitmix64((seed * 0x100000001B3ull) ^ i);
  const double u = static_cast<double>(h >> 11) * 0x1.0p-53;
  return lo + (hi - lo) * u;
}

// n values uniform in [lo, hi), rounded to float (so float and double paths see the same input).
inline std::vector<double> random_tensor(std::int64_t n, std::uint64_t seed, double lo = -1.0,
                                         double hi = 1.0) {
  std::vector<double> v(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i)
    v[i] = static_cast<double>(static_cast<float>(uniform_at(seed, i, lo, hi)));
  return v;
}

// count flat indices in [0, numel) chosen by the generator (gen_golden.py: sample_indices).
inline std::vector<std::int64_t> sample_indices(std::uint64_t seed, std::int64_t count,
                                                std::int64_t numel) {
  std::vector<std::int64_t> idx(static_cast<std::size_t>(count));
  for (std::int64_t i = 0; i < count; ++i)
    idx[i] = static_cast<std::int64_t>(splitmix64((seed * 0x100000001B3ull) ^ i) %
                                       static_cast<std::uint64_t>(numel));
  return idx;
}

template <class To, class From>
std::vector<To> cast_vector(const std::vector<From>& v) {
  return std::vector<To>(v.begin(), v.end());
}

// ---- comparisons -----------------------------------------------------------------------------
struct CompareResult {
  bool ok = true;
  std::int64_t worst = -1;    // index of the largest violation (or largest error when ok)
  double max_abs_err = 0.0;
  double ref_at_worst = 0.0, got_at_worst = 0.0;
  std::string message() const {
    return "max |err| " + std::to_string(max_abs_err) + " at index " + std::to_string(worst) +
           " (got " + std::to_string(got_at_worst) + ", expected " + std::to_string(ref_at_worst) +
           ")";
  }
};

// Element-wise |got - ref| <= atol + rtol * |ref| (llm.c / numpy allclose form).
template <class A, class AllocA, class B, class AllocB>
CompareResult compare(const std::vector<A, AllocA>& got, const std::vector<B, AllocB>& ref, double atol,
                      double rtol) {
  CompareResult r;
  if (got.size() != ref.size()) {
    r.ok = false;
    r.max_abs_err = INFINITY;
    return r;
  }
  double worst_excess = -INFINITY;
  for (std::size_t i = 0; i < got.size(); ++i) {
    const double g = static_cast<double>(got[i]), e = static_cast<double>(ref[i]);
    const double err = std::fabs(g - e);
    const double excess = std::isfinite(g) ? err - (atol + rtol * std::fabs(e)) : INFINITY;
    r.max_abs_err = std::max(r.max_abs_err, std::isfinite(g) ? err : INFINITY);
    if (excess > worst_excess) {
      worst_excess = excess;
      r.worst = static_cast<std::int64_t>(i);
      r.ref_at_worst = e;
      r.got_at_worst = g;
    }
    if (!(excess <= 0.0)) r.ok = false;
  }
  return r;
}

// The elements of a packed view (tasn::TensorRef), as a vector for compare().
template <class View>
auto values(const View& v) {
  using T = std::remove_const_t<typename View::value_type>;
  return std::vector<T>(v.data, v.data + v.numel());
}

inline double max_abs(const std::vector<double>& v) {
  double m = 0.0;
  for (double x : v) m = std::max(m, std::fabs(x));
  return m;
}

// ||a - b|| / max(||a||, ||b||), the norm-wise relative error.
template <class AllocA, class AllocB>
double relative_error(const std::vector<double, AllocA>& a, const std::vector<double, AllocB>& b) {
  double d = 0.0, na = 0.0, nb = 0.0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    d += (a[i] - b[i]) * (a[i] - b[i]);
    na += a[i] * a[i];
    nb += b[i] * b[i];
  }
  const double den = std::sqrt(std::max(na, nb));
  return den == 0.0 ? std::sqrt(d) : std::sqrt(d) / den;
}

// ---- finite differences ----------------------------------------------------------------------
// Central-difference gradient of a scalar function f at x: (f(x + h e_i) - f(x - h e_i)) / 2h.
inline std::vector<double> numeric_gradient(const std::function<double(const std::vector<double>&)>& f,
                                            std::vector<double> x, double h) {
  std::vector<double> g(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) {
    const double x0 = x[i];
    x[i] = x0 + h;
    const double fp = f(x);
    x[i] = x0 - h;
    const double fm = f(x);
    x[i] = x0;
    g[i] = (fp - fm) / (2.0 * h);
  }
  return g;
}

// Loss used by gradient checks of a tensor-valued op y = F(x): L = sum_i w_i y_i, whose gradient
// with respect to y is w (so the op's backward gets dy = w).
template <class AllocY, class AllocW>
double weighted_sum(const std::vector<double, AllocY>& y, const std::vector<double, AllocW>& w) {
  double s = 0.0;
  for (std::size_t i = 0; i < y.size(); ++i) s += y[i] * w[i];
  return s;
}

// ---- golden files --------------------------------------------------------------------------
// Format written by tests/golden/gen_golden.py, little-endian:
//   "TASNGLD1", uint32 count, then per tensor: uint32 name length, name, uint32 ndim,
//   int64 dims[ndim], float64 data[prod(dims)].
struct GoldenTensor {
  std::vector<std::int64_t> dims;
  std::vector<double> data;
};

class GoldenFile {
 public:
  explicit GoldenFile(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw std::runtime_error("cannot open golden file " + path);
    char magic[8];
    in.read(magic, 8);
    if (!in || std::memcmp(magic, "TASNGLD1", 8) != 0)
      throw std::runtime_error(path + ": not a TASNGLD1 golden file");
    const std::uint32_t count = read<std::uint32_t>(in, path);
    for (std::uint32_t t = 0; t < count; ++t) {
      const std::uint32_t name_len = read<std::uint32_t>(in, path);
      std::string name(name_len, '\0');
      in.read(name.data(), name_len);
      const std::uint32_t ndim = read<std::uint32_t>(in, path);
      GoldenTensor g;
      std::int64_t numel = 1;
      for (std::uint32_t d = 0; d < ndim; ++d) {
        g.dims.push_back(read<std::int64_t>(in, path));
        numel *= g.dims.back();
      }
      g.data.resize(static_cast<std::size_t>(numel));
      in.read(reinterpret_cast<char*>(g.data.data()), numel * 8);
      if (!in) throw std::runtime_error(path + ": truncated at tensor " + name);
      tensors_[name] = std::move(g);
    }
  }

  const GoldenTensor& at(const std::string& name) const {
    auto it = tensors_.find(name);
    if (it == tensors_.end()) throw std::runtime_error("golden file has no tensor " + name);
    return it->second;
  }
  double scalar(const std::string& name) const { return at(name).data.at(0); }
  // Every tensor's name, sorted (tests that compare whole sets of tensors by name).
  std::vector<std::string> names() const {
    std::vector<std::string> v;
    for (const auto& [name, t] : tensors_) v.push_back(name);
    return v;
  }

 private:
  template <class T>
  static T read(std::ifstream& in, const std::string& path) {
    T v{};
    in.read(reinterpret_cast<char*>(&v), sizeof(T));
    if (!in) throw std::runtime_error(path + ": truncated");
    return v;
  }
  std::map<std::string, GoldenTensor> tensors_;
};

#ifndef TASN_GOLDEN_DIR
#define TASN_GOLDEN_DIR "tests/golden"
#endif

inline std::string golden_path(const std::string& file) { return std::string(TASN_GOLDEN_DIR) + "/" + file; }

}  // namespace tasn::test
