// Trilinear attention on the CPU: forward with saved S and A, backward from them and by
// recomputing, with a self-allocated and with a caller's workspace.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "tasn/trilinear_attention.h"

int main() {
  const std::int64_t N = 2, C = 3, H = 2, W = 2;
  std::vector<float> x(N * C * H * W), m(x.size()), dm(x.size(), 1.f), dx(x.size()), dx2(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = 0.1f * static_cast<float>(i % 7);
  std::vector<float> saved(tasn::trilinear_saved_elems(N, C, H, W));  // S (N, C, H*W) then A (N, C, C)

  tasn::TrilinearForwardArgs<float> fwd;  // options: beta = 7, check_finite = true
  fwd.x = tasn::Tensor4<const float>(x.data(), {N, C, H, W});
  fwd.m = tasn::Tensor4<float>(m.data(), {N, C, H, W});
  fwd.saved = tasn::Tensor1<float>(saved.data(), {static_cast<std::int64_t>(saved.size())});
  tasn::cpu::trilinear_attention_forward(fwd);  // allocates its workspace itself

  tasn::TrilinearBackwardArgs<float> bwd;
  bwd.x = fwd.x;
  bwd.dm = tasn::Tensor4<const float>(dm.data(), {N, C, H, W});
  bwd.saved = fwd.saved;
  bwd.dx = tasn::Tensor4<float>(dx.data(), {N, C, H, W});
  const std::size_t bytes = tasn::cpu::workspace_bytes(bwd);  // or lend it one
  void* ws = bytes ? std::aligned_alloc(256, (bytes + 255) / 256 * 256) : nullptr;
  tasn::cpu::trilinear_attention_backward(bwd, {ws, bytes});
  std::free(ws);

  bwd.saved = {};  // absent: S and A are recomputed from x
  bwd.dx = tasn::Tensor4<float>(dx2.data(), {N, C, H, W});
  tasn::cpu::trilinear_attention_backward(bwd);

  // Each row of A sums to 1, and both backward forms agree.
  for (std::int64_t r = 0; r < N * C; ++r) {
    float sum = 0.f;
    for (std::int64_t j = 0; j < C; ++j) sum += saved[N * C * H * W + r * C + j];
    if (std::fabs(sum - 1.f) > 1e-5f) return 1;
  }
  for (std::size_t i = 0; i < dx.size(); ++i)
    if (std::fabs(dx[i] - dx2[i]) > 1e-5f) return 1;
  std::printf("trilinear attention: m[0] = %f, dx[0] = %f\n", m[0], dx[0]);
  return 0;
}
