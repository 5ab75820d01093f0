// Every CPU loss operator in the one calling convention, on tiny data (quoted in docs/losses.md).
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "tasn/losses.h"

int main() {
  const std::int64_t n = 2, k = 3;
  std::vector<float> student = {1, 2, 3, 0, 0, 1}, teacher = {3, 2, 1, 0, 1, 0};
  std::vector<std::int64_t> labels = {2, 0};
  std::vector<float> dstudent(n * k), dlogits(n * k);
  float distill = 0, ce = 0;

  // Distillation, mean over the rows, student gradient only; the operator allocates its workspace.
  tasn::DistillationArgs<float> d;
  d.student = {student.data(), {n, k}};
  d.teacher = {teacher.data(), {n, k}};
  d.loss = {&distill, {1}};
  d.dstudent = {dstudent.data(), {n, k}};
  d.options.temperature = 2.0;
  tasn::cpu::distillation_loss(d);

  // Cross-entropy with a caller's workspace (256-byte aligned, workspace_bytes(args) bytes).
  tasn::CrossEntropyArgs<float> c;
  c.logits = {student.data(), {n, k}};
  c.labels = {labels.data(), {n}};
  c.loss = {&ce, {1}};
  c.dlogits = {dlogits.data(), {n, k}};
  c.options.label_smoothing = 0.1;
  const std::size_t bytes = tasn::cpu::workspace_bytes(c);
  void* ws = std::aligned_alloc(tasn::detail::kWorkspaceAlign, bytes);
  tasn::cpu::softmax_cross_entropy(c, {ws, bytes});
  std::free(ws);

  // Top-1 and top-2 counts (int64).
  std::vector<std::int64_t> correct(2);
  tasn::TopkArgs<float> t;
  t.logits = {student.data(), {n, k}};
  t.labels = {labels.data(), {n}};
  t.correct = {correct.data(), {2}};
  tasn::cpu::topk_correct(t);

  // A bad label is refused before anything is written (options.check_finite, the default).
  labels[1] = 7;
  bool refused = false;
  try {
    tasn::cpu::softmax_cross_entropy(c);
  } catch (const tasn::InvalidArgument& e) {
    refused = true;
    std::printf("refused: %s\n", e.what());
  }

  double row_sum = 0;  // each row of a softmax gradient sums to 0
  for (std::int64_t j = 0; j < k; ++j) row_sum += dstudent[j] + dlogits[j];
  std::printf("distillation %.4f  cross-entropy %.4f  top-1 %lld  top-2 %lld\n", distill, ce,
              static_cast<long long>(correct[0]), static_cast<long long>(correct[1]));
  const bool ok = distill > 0 && std::isfinite(distill) && ce > 0 && std::isfinite(ce) && std::fabs(row_sum) < 1e-6 &&
                  correct[0] == 1 && correct[1] == 2 && refused;
  return ok ? 0 : 1;
}
