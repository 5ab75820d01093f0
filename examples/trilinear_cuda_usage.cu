// The CUDA usage example quoted in docs/trilinear_attention.md (built with the examples, so the
// quoted code keeps compiling). Runs one forward + backward on a GPU, if there is one.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <vector>

#include "tasn/core/device_buffer.cuh"
#include "tasn/trilinear_attention.cuh"

int main() {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("no CUDA device: nothing to run\n");
    return 0;
  }
  // [usage]
  using T = __half;                                   // float, __half or __nv_bfloat16 storage
  const std::int64_t N = 8, C = 512, H = 28, W = 28;
  std::vector<T> host(N * C * H * W, tasn::cuda::from_float<T>(0.5f));
  auto x = tasn::cuda::DeviceBuffer<T>::from_host(host), dm = tasn::cuda::DeviceBuffer<T>::from_host(host);
  tasn::cuda::DeviceBuffer<T> m(host.size()), dx(host.size());
  const std::int64_t ns = tasn::trilinear_saved_elems(N, C, H, W);
  tasn::cuda::DeviceBuffer<T> saved(ns);  // S and A for backward

  tasn::TrilinearForwardArgs<T> fwd;  // options: beta = 7, check_finite
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

  cudaStream_t stream;
  cudaStreamCreate(&stream);
  tasn::cuda::CublasHandle cublas;
  const tasn::cuda::Context ctx{stream, cublas};
  tasn::cuda::trilinear_attention_forward(ctx, fwd, {ws.get(), ws_fwd});
  tasn::cuda::trilinear_attention_backward(ctx, bwd, {ws.get(), ws_bwd});
  cudaStreamSynchronize(stream);  // no other synchronisation (check_finite: one, before the kernels)
  // [usage]
  cudaStreamDestroy(stream);
  std::printf("m[0] = %f (constant input: each map equals the input, 0.5)\n",
              tasn::cuda::to_float(m.to_host()[0]));
  return 0;
}
