// examples/gpu/device_memory.h - where the GPU trainer's memory comes from: cudaMalloc (device)
// and cudaMallocHost (pinned staging), as memory policies of nn::BasicArena, each call counted so
// that a test can check that a warmed-up training step makes none (nn::device_allocations()).
// Everything of the GPU context that allocates goes through these: the arenas, the parameter
// copies, cuDNN / cuBLAS helpers' own buffers (gpu/dnn.cpp's ones vector).
#pragma once

#include <cuda_runtime_api.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>

#include "tasn/core/common.h"

namespace tasn::nn {

namespace detail {
inline std::atomic<std::int64_t> device_allocations{0};
}
// cudaMalloc / cudaMallocHost calls made by CudaExec so far (arena chunks, parameter copies,
// staging): the allocation test checks that a warmed-up step adds none.
inline std::int64_t device_allocations() { return detail::device_allocations.load(); }

namespace detail {
// f(&p, size) (cudaMalloc or cudaMallocHost), counted; a failure throws naming the call and size.
template <class F>
void* counted_alloc(F f, const char* call, std::size_t size) {
  void* p = nullptr;
  const cudaError_t e = f(&p, size);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    throw CudaError(std::string(call) + " of " + std::to_string(size) + " bytes failed: " + cudaGetErrorString(e));
  }
  ++device_allocations;
  return p;
}
}  // namespace detail

struct DeviceMemory {
  static constexpr bool kHost = false;
  static void* allocate(std::size_t, std::size_t size) {
    return detail::counted_alloc([](void** p, std::size_t n) { return cudaMalloc(p, n); }, "cudaMalloc", size);
  }
  static void release(void* p) { cudaFree(p); }
};

struct PinnedMemory {
  static constexpr bool kHost = true;
  static void* allocate(std::size_t, std::size_t size) {
    return detail::counted_alloc([](void** p, std::size_t n) { return cudaMallocHost(p, n); }, "cudaMallocHost", size);
  }
  static void release(void* p) { cudaFreeHost(p); }
};

}  // namespace tasn::nn
