// The CUDA usage example quoted in docs/trilinear_attention.md (built with the examples, so the
// quoted code keeps compiling). Runs one forward + backward on a GPU, if there is one.
#include <algorithm>
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
  using T = __half;                                  // float, __half or __nv_bfloat16 storage
  const tasn::TrilinearShape shape{8, 512, 28, 28};  // N, C, H, W
  tasn::TrilinearAttentionOptions opt;               // beta = 7
  std::vector<T> host(shape.numel(), tasn::cuda::from_float<T>(0.5f));
  auto x = tasn::cuda::DeviceBuffer<T>::from_host(host), dm = tasn::cuda::DeviceBuffer<T>::from_host(host);
  tasn::cuda::DeviceBuffer<T> m(shape.numel()), dx(shape.numel());
  tasn::cuda::DeviceBuffer<T> saved(tasn::trilinear_saved_elems(shape));  // S and A for backward

  const std::size_t ws_fwd = tasn::cuda::trilinear_attention_forward_workspace_bytes<T>(shape, true);
  const std::size_t ws_bwd = tasn::cuda::trilinear_attention_backward_workspace_bytes<T>(shape, true);
  tasn::cuda::DeviceBuffer<unsigned char> ws(std::max(ws_fwd, ws_bwd));

  cudaStream_t stream;
  cudaStreamCreate(&stream);
  tasn::cuda::CublasHandle cublas;
  const tasn::cuda::Context ctx{stream, cublas};
  tasn::cuda::trilinear_attention_forward<T>(x.get(), m.get(), saved.get(), shape, opt, ws.get(), ws_fwd, ctx);
  tasn::cuda::trilinear_attention_backward<T>(x.get(), dm.get(), saved.get(), dx.get(), shape, opt,
                                              ws.get(), ws_bwd, ctx);
  cudaStreamSynchronize(stream);  // the operators never synchronise themselves
  // [usage]
  cudaStreamDestroy(stream);
  std::printf("m[0] = %f (constant input: each map equals the input, 0.5)\n",
              tasn::cuda::to_float(m.to_host()[0]));
  return 0;
}
