// One whole training step of the example trainer against PyTorch (issue 12, "Proof"): the TASN
// network (examples/train/model.h TasnNet) and the baseline (BaselineNet) at a tiny size, with
// formula weights, fixed images, labels and detail channels. Golden data: tests/golden/
// gen_train_step.py, an independent float64 transliteration of ../shared/SPEC.md sections 1-5 in
// torch ops with autograd gradients. Compared: every loss term, every parameter gradient by
// checkpoint name (a name missing on either side fails), every BN running statistic after the
// step, the maps / grid / sampled images of the TASN forward pass, and every parameter after one
// SGD step (optim.h: momentum 0.9, weight decay 5e-4, lr 0.1, rescale 1 / N).
//
// Tolerances. The model computes in float, the reference in float64, so the reference is exact
// at float precision and the differences are the float path's rounding. A tensor t of the step is
// compared as max_i |got_i - ref_i| <= tol * (max_i |ref_i| + floor): relative to the tensor's
// magnitude, because its small elements are differences of large terms (BN-normalised
// activations, softmax gradients) and carry absolute, not relative, rounding. tol per category:
//   losses      1e-5   sums of a few log-softmax terms of logits that went through ~10 float layers
//   gradients   2e-4   backward through BN with 2N = 4 samples (its batch statistics amplify
//                      rounding by ~1/std) and sums of ~1000 products per weight
//   running     1e-5   running statistics: 0.9 * (exact formula value) + 0.1 * (batch statistic)
//   after SGD   1e-6   w - lr (g / N + wd w) rounds like w (~16 float ulps), plus the error the
//                      gradient check admits times lr / N (an allowance of lr / N * 2e-4 max |g|)
//   maps, grid  1e-4   the trilinear attention's softmax with beta = 7 and the inverse CDF
// Errors measured (TASN, float model): losses 1.3e-6, gradients 1.6e-5, running 6.2e-7, after
// SGD 3.7e-7 (within the allowance alone), maps / images 6.9e-6: 7 to 16 times below the
// tolerances.
// A real fault moves a tensor by far more (measured by breaking the C++ deliberately): part / master
// FC gradients swapped: 1.6 (gradients); no teacher gradient in the distillation (1/T^2-small):
// 3.8e-3 in heads.part_fc.bias, 19 times the gradient tolerance; structure map not squared: 1.8
// in the structure image, 0.17 in the losses.
#include <gtest/gtest.h>

#include "support/train_step_check.h"

namespace {

namespace nn = tasn::nn;
using tasn::test::train_step::baseline_step;
using tasn::test::train_step::tasn_step;

// The reference backend in double (the tight check) and in float; oneDNN in float.
TEST(TrainStepGolden, TasnStepEqualsPyTorchDouble) { tasn_step<double>(nn::Backend::Reference); }
TEST(TrainStepGolden, TasnStepEqualsPyTorchFloat) { tasn_step<float>(nn::Backend::Reference); }
TEST(TrainStepGolden, TasnStepEqualsPyTorchOneDnn) {
  if (!nn::onednn_built()) GTEST_SKIP() << "this build has no oneDNN (libdnnl-dev): the oneDNN backend is not built";
  tasn_step<float>(nn::Backend::OneDnn);
}
TEST(TrainStepGolden, BaselineStepEqualsPyTorchDouble) { baseline_step<double>(nn::Backend::Reference); }
TEST(TrainStepGolden, BaselineStepEqualsPyTorchFloat) { baseline_step<float>(nn::Backend::Reference); }
TEST(TrainStepGolden, BaselineStepEqualsPyTorchOneDnn) {
  if (!nn::onednn_built()) GTEST_SKIP() << "this build has no oneDNN (libdnnl-dev): the oneDNN backend is not built";
  baseline_step<float>(nn::Backend::OneDnn);
}


}  // namespace
