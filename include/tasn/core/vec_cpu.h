// tasn/core/vec_cpu.h - SIMD row primitives whose results do not depend on memory alignment.
//
// Eigen's vectorised reductions and element-wise functions on an Eigen::Map peel a scalar prologue
// until the pointer is aligned to the packet size. The peeled elements take another code path
// (std::exp instead of the packet exp, another summation order), so the same numbers at another
// address give results that differ in the last bits. A training run resumed from a checkpoint
// then drifts from the uninterrupted run, because the heap hands out other addresses.
//
// These helpers walk every row from its first element in whole packets (unaligned loads and
// stores), handle the tail through a padded packet, and reduce with a fixed lane order: the result
// is a function of the values alone, bit for bit, for a given build. They are as fast as Eigen's
// own loops (one packet exp per packet, two independent accumulators for the sums).
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

namespace tasn::cpu::vec {

template <class T>
using Packet = typename Eigen::internal::packet_traits<T>::type;

template <class T>
inline constexpr std::int64_t kLanes = Eigen::internal::unpacket_traits<Packet<T>>::size;

namespace detail {

// The last n % kLanes elements of a row as one packet, the missing lanes set to `fill`.
template <class T>
Packet<T> load_tail(const T* p, std::int64_t count, T fill) {
  alignas(64) T buf[kLanes<T>];
  for (std::int64_t i = 0; i < kLanes<T>; ++i) buf[i] = i < count ? p[i] : fill;
  return Eigen::internal::ploadu<Packet<T>>(buf);
}

template <class T>
void store_tail(T* p, std::int64_t count, const Packet<T>& v) {
  alignas(64) T buf[kLanes<T>];
  Eigen::internal::pstoreu(buf, v);
  std::copy(buf, buf + count, p);
}

}  // namespace detail

// Sum of x[0, n) in a fixed order (two packet accumulators, then a lane reduction).
template <class T>
T sum(const T* x, std::int64_t n) {
  using namespace Eigen::internal;
  constexpr std::int64_t L = kLanes<T>;
  Packet<T> a0 = pset1<Packet<T>>(T(0)), a1 = a0;
  std::int64_t i = 0;
  for (; i + 2 * L <= n; i += 2 * L) {
    a0 = padd(a0, ploadu<Packet<T>>(x + i));
    a1 = padd(a1, ploadu<Packet<T>>(x + i + L));
  }
  for (; i + L <= n; i += L) a0 = padd(a0, ploadu<Packet<T>>(x + i));
  if (i < n) a1 = padd(a1, detail::load_tail(x + i, n - i, T(0)));
  return predux(padd(a0, a1));
}

// sum_i a[i] * b[i] in a fixed order.
template <class T>
T dot(const T* a, const T* b, std::int64_t n) {
  using namespace Eigen::internal;
  constexpr std::int64_t L = kLanes<T>;
  Packet<T> a0 = pset1<Packet<T>>(T(0)), a1 = a0;
  std::int64_t i = 0;
  for (; i + 2 * L <= n; i += 2 * L) {
    a0 = padd(a0, pmul(ploadu<Packet<T>>(a + i), ploadu<Packet<T>>(b + i)));
    a1 = padd(a1, pmul(ploadu<Packet<T>>(a + i + L), ploadu<Packet<T>>(b + i + L)));
  }
  for (; i + L <= n; i += L) a0 = padd(a0, pmul(ploadu<Packet<T>>(a + i), ploadu<Packet<T>>(b + i)));
  if (i < n) a1 = padd(a1, pmul(detail::load_tail(a + i, n - i, T(0)), detail::load_tail(b + i, n - i, T(0))));
  return predux(padd(a0, a1));
}

// Largest element of x[0, n) (n >= 1). Exact whatever the order, for values that are not NaN.
template <class T>
T max(const T* x, std::int64_t n) {
  using namespace Eigen::internal;
  constexpr std::int64_t L = kLanes<T>;
  Packet<T> m = pset1<Packet<T>>(x[0]);
  std::int64_t i = 0;
  for (; i + L <= n; i += L) m = pmax(m, ploadu<Packet<T>>(x + i));
  if (i < n) m = pmax(m, detail::load_tail(x + i, n - i, x[0]));
  return predux_max(m);
}

namespace detail {
// exp(a) for a packet, with every lane whose exact result is below the smallest normal number
// (a < log(min normal), -inf included) set to exactly 0. Eigen's packet exp clamps its argument
// there and returns about 1e-38 (float) even for -inf; a probability that should be 0 then
// turns into a gradient of 1e-38 / T, which is not small when the temperature T is tiny.
template <class T>
Packet<T> exp_flush(const Packet<T>& a, const Packet<T>& lo) {
  using namespace Eigen::internal;
  return pselect(pcmp_lt(a, lo), pset1<Packet<T>>(T(0)), pexp(a));
}
}  // namespace detail

// y[i] = exp(scale * (x[i] - shift)) for i < n, returning sum_i y[i] (fixed order). Every element,
// the tail included, goes through the packet exp; results below the smallest normal number are
// flushed to 0 (their absolute error is under 1.2e-38 in float, 2.3e-308 in double). x and y may
// alias.
template <class T>
T exp_shifted(const T* x, T* y, std::int64_t n, T shift, T scale) {
  using namespace Eigen::internal;
  constexpr std::int64_t L = kLanes<T>;
  const Packet<T> s = pset1<Packet<T>>(shift), k = pset1<Packet<T>>(scale);
  const Packet<T> lo = pset1<Packet<T>>(std::log(std::numeric_limits<T>::min()));
  Packet<T> acc = pset1<Packet<T>>(T(0));
  std::int64_t i = 0;
  for (; i + L <= n; i += L) {
    const Packet<T> e = detail::exp_flush<T>(pmul(psub(ploadu<Packet<T>>(x + i), s), k), lo);
    pstoreu(y + i, e);
    acc = padd(acc, e);
  }
  if (i < n) {
    // padding lanes hold the shift itself: exp(0) = 1, stored nowhere and masked from the sum
    Packet<T> e = detail::exp_flush<T>(pmul(psub(detail::load_tail(x + i, n - i, shift), s), k), lo);
    detail::store_tail(y + i, n - i, e);
    alignas(64) T buf[L];
    pstoreu(buf, e);
    for (std::int64_t j = n - i; j < L; ++j) buf[j] = T(0);
    acc = padd(acc, ploadu<Packet<T>>(buf));
  }
  return predux(acc);
}

// y[i] *= s for i < n (element-wise: no order question, but kept here with its siblings).
template <class T>
void scale(T* y, std::int64_t n, T s) {
  for (std::int64_t i = 0; i < n; ++i) y[i] *= s;
}

}  // namespace tasn::cpu::vec
