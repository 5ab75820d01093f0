// Every CUDA loss operator in the one calling convention, on tiny data (quoted in docs/losses.md).
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <vector>

#include "tasn/core/device_buffer.cuh"
#include "tasn/losses.cuh"

int main() {
  int devices = 0;
  const cudaError_t err = cudaGetDeviceCount(&devices);
  if (err != cudaSuccess || devices == 0) {
    std::printf("no CUDA device: %s\n", err != cudaSuccess ? cudaGetErrorString(err) : "0 devices");
    return 0;
  }
  using tasn::cuda::DeviceBuffer;
  const std::int64_t n = 2, k = 3;
  auto student = DeviceBuffer<float>::from_host({1, 2, 3, 0, 0, 1});
  auto teacher = DeviceBuffer<float>::from_host({3, 2, 1, 0, 1, 0});
  auto labels = DeviceBuffer<std::int64_t>::from_host({2, 0});
  DeviceBuffer<float> distill(1), ce(1), dstudent(n * k), dlogits(n * k);
  DeviceBuffer<std::int64_t> correct(2);

  tasn::DistillationArgs<float> d;  // the same argument structs as on the CPU, device views
  d.student = {student.get(), {n, k}};
  d.teacher = {teacher.get(), {n, k}};
  d.loss = {distill.get(), {1}};
  d.dstudent = {dstudent.get(), {n, k}};
  d.options.temperature = 2.0;
  tasn::CrossEntropyArgs<float> c;
  c.logits = {student.get(), {n, k}};
  c.labels = {labels.get(), {n}};
  c.loss = {ce.get(), {1}};
  c.dlogits = {dlogits.get(), {n, k}};
  c.options.label_smoothing = 0.1;
  tasn::TopkArgs<float> t;
  t.logits = {student.get(), {n, k}};
  t.labels = {labels.get(), {n}};
  t.correct = {correct.get(), {2}};

  // One device workspace for the three calls (the CUDA operators never allocate).
  const std::size_t bytes = std::max({tasn::cuda::workspace_bytes(d), tasn::cuda::workspace_bytes(c),
                                      tasn::cuda::workspace_bytes(t)});
  DeviceBuffer<unsigned char> ws(bytes);
  tasn::cuda::Stream stream;
  tasn::cuda::Context ctx;
  ctx.stream = stream.get();
  tasn::cuda::distillation_loss(ctx, d, {ws.get(), bytes});
  tasn::cuda::softmax_cross_entropy(ctx, c, {ws.get(), bytes});
  tasn::cuda::topk_correct(ctx, t, {ws.get(), bytes});
  cudaStreamSynchronize(stream.get());

  const float dl = distill.to_host()[0], cl = ce.to_host()[0];
  const auto gs = dstudent.to_host(), gc = dlogits.to_host();
  const auto top = correct.to_host();
  double row_sum = 0;  // each row of a softmax gradient sums to 0
  for (std::int64_t j = 0; j < k; ++j) row_sum += gs[j] + gc[j];
  std::printf("distillation %.4f  cross-entropy %.4f  top-1 %lld  top-2 %lld\n", dl, cl,
              static_cast<long long>(top[0]), static_cast<long long>(top[1]));
  const bool ok = dl > 0 && std::isfinite(dl) && cl > 0 && std::isfinite(cl) && std::fabs(row_sum) < 1e-5 &&
                  top[0] == 1 && top[1] == 2;
  return ok ? 0 : 1;
}
