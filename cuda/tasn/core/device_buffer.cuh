// tasn/core/device_buffer.cuh - a minimal owning device array (cudaMalloc/cudaFree), movable.
// For examples, tests, benchmarks and callers without their own allocator; the operators
// themselves never allocate.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <utility>
#include <vector>

#include "tasn/core/cuda_check.cuh"

namespace tasn::cuda {

template <class T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(std::size_t n) : n_(n) {
    if (n) TASN_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&p_), n * sizeof(T)));
  }
  DeviceBuffer(DeviceBuffer&& o) noexcept : p_(std::exchange(o.p_, nullptr)), n_(std::exchange(o.n_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    std::swap(p_, o.p_);
    std::swap(n_, o.n_);
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() { cudaFree(p_); }

  T* get() const { return p_; }
  std::size_t size() const { return n_; }
  std::size_t bytes() const { return n_ * sizeof(T); }

  static DeviceBuffer from_host(const std::vector<T>& host) {
    DeviceBuffer d(host.size());
    if (!host.empty())
      TASN_CUDA_CHECK(cudaMemcpy(d.p_, host.data(), d.bytes(), cudaMemcpyHostToDevice));
    return d;
  }
  std::vector<T> to_host() const {
    std::vector<T> host(n_);
    if (n_) TASN_CUDA_CHECK(cudaMemcpy(host.data(), p_, bytes(), cudaMemcpyDeviceToHost));
    return host;
  }

 private:
  T* p_ = nullptr;
  std::size_t n_ = 0;
};

// A CUDA stream owned for the lifetime of the object.
class Stream {
 public:
  Stream() { TASN_CUDA_CHECK(cudaStreamCreate(&s_)); }
  ~Stream() { cudaStreamDestroy(s_); }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  cudaStream_t get() const { return s_; }
  operator cudaStream_t() const { return s_; }

 private:
  cudaStream_t s_ = nullptr;
};

}  // namespace tasn::cuda
