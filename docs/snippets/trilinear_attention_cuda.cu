// Trilinear attention on a GPU: forward with saved S and A, backward from them, in __half storage.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <vector>

#include "tasn/core/device_buffer.cuh"
#include "tasn/trilinear_attention.cuh"

int main() {
  int devices = 0;
  const cudaError_t err = cudaGetDeviceCount(&devices);
  if (err != cudaSuccess || devices == 0) {
    std::printf("no CUDA device: %s\n", err != cudaSuccess ? cudaGetErrorString(err) : "0 devices");
    return 0;
  }
  using T = __half;  // float, __half or __nv_bfloat16 storage
  const std::int64_t N = 2, C = 8, H = 4, W = 4, ns = tasn::trilinear_saved_elems(N, C, H, W);
  const std::vector<T> host(N * C * H * W, tasn::cuda::from_float<T>(0.5f));
  auto x = tasn::cuda::DeviceBuffer<T>::from_host(host), dm = tasn::cuda::DeviceBuffer<T>::from_host(host);
  tasn::cuda::DeviceBuffer<T> m(host.size()), dx(host.size()), saved(ns);

  tasn::TrilinearForwardArgs<T> fwd;  // options: beta = 7, check_finite = true
  fwd.x = tasn::Tensor4<const T>(x.get(), {N, C, H, W});
  fwd.m = tasn::Tensor4<T>(m.get(), {N, C, H, W});
  fwd.saved = tasn::Tensor1<T>(saved.get(), {ns});
  tasn::TrilinearBackwardArgs<T> bwd;
  bwd.x = fwd.x;
  bwd.dm = tasn::Tensor4<const T>(dm.get(), {N, C, H, W});
  bwd.saved = fwd.saved;
  bwd.dx = tasn::Tensor4<T>(dx.get(), {N, C, H, W});

  const std::size_t ws_fwd = tasn::cuda::workspace_bytes(fwd), ws_bwd = tasn::cuda::workspace_bytes(bwd);
  tasn::cuda::DeviceBuffer<unsigned char> ws(std::max(ws_fwd, ws_bwd));
  tasn::cuda::Stream stream;
  tasn::cuda::CublasHandle cublas;
  const tasn::cuda::Context ctx{stream.get(), cublas.get()};
  tasn::cuda::trilinear_attention_forward(ctx, fwd, {ws.get(), ws_fwd});
  tasn::cuda::trilinear_attention_backward(ctx, bwd, {ws.get(), ws_bwd});
  cudaStreamSynchronize(stream.get());

  // A constant input gives maps equal to the input (0.5) and dx = A^T dm = dm (0.5): dB is zero.
  const float m0 = tasn::cuda::to_float(m.to_host()[0]), dx0 = tasn::cuda::to_float(dx.to_host()[0]);
  std::printf("trilinear attention (CUDA): m[0] = %f, dx[0] = %f\n", m0, dx0);
  return std::fabs(m0 - 0.5f) < 1e-3f && std::fabs(dx0 - 0.5f) < 1e-3f ? 0 : 1;
}
