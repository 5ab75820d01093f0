// examples/nn/bf16.h - bfloat16 storage for the trainer's --precision bf16: the type, its
// conversions, and array conversions on the host.
//
// bf16 is the upper half of an IEEE float (8-bit exponent, 7-bit mantissa): the same range as float,
// ~3 significant decimal digits. The trainer stores activations and a compute copy of the weights
// in it; every sum (convolutions, GEMMs, batch-norm statistics, pooling, losses) runs in float and
// is rounded once when stored. Conversions round to nearest even (as __float2bfloat16_rn and
// Eigen::bfloat16); NaN stays NaN (quiet, sign kept), values beyond the largest finite bf16 round to
// infinity. One definition (TASN_HD) serves the CPU emulation (nn/bf16_exec.h) and the CUDA kernels
// (gpu/kernels.cu): both round alike, bit for bit.
#pragma once

#include <cstdint>
#include <cstring>

#include "tasn/core/common.h"

namespace tasn::nn {

// Layout-compatible with __nv_bfloat16 (2 bytes, the raw bits); no arithmetic on purpose: values
// are converted to float for every operation.
struct bf16 {
  std::uint16_t bits;
};
static_assert(sizeof(bf16) == 2, "bf16 must be 2 bytes");

TASN_HD float bf16_to_float(bf16 v) {
  const std::uint32_t u = std::uint32_t(v.bits) << 16;
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
#endif
}

TASN_HD bf16 float_to_bf16(float f) {
#if defined(__CUDA_ARCH__)
  std::uint32_t u = __float_as_uint(f);
#else
  std::uint32_t u;
  std::memcpy(&u, &f, sizeof u);
#endif
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16{static_cast<std::uint16_t>((u >> 16) | 0x0040u)};  // NaN: quiet
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest, ties to even (carries into the exponent: inf)
  return bf16{static_cast<std::uint16_t>(u >> 16)};
}

// Loads and stores of a storage type as float (the kernels' and the emulation's element access).
TASN_HD float load_value(float v) { return v; }
TASN_HD float load_value(bf16 v) { return bf16_to_float(v); }
template <class S>
TASN_HD S store_value(float v);
template <>
TASN_HD float store_value<float>(float v) {
  return v;
}
template <>
TASN_HD bf16 store_value<bf16>(float v) {
  return float_to_bf16(v);
}

}  // namespace tasn::nn
