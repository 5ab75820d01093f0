// The NCCL backend of the GPU trainer's data parallelism (issue 15, "Proof", GPU part), on the one
// GPU of the check machine: world size 1, host communicator dist::SingleProcess (no MPI there),
// CudaOptions::nccl = true so that nn::CudaExec all-reduces the gradients with NCCL anyway.
//   1. Three SGD steps of a small TASN with NCCL give the same losses, parameters (batch-norm
//      statistics included) and momentum as without, bit for bit: a sum over one rank is the value
//      itself (NCCL even skips an in-place one-rank all-reduce), and the update is the same kernel on
//      the same gradients. The only difference is the schedule: the buckets run on a second stream
//      and the non-finite check moves after the all-reduce. A third run without NCCL first shows
//      that the GPU step repeats bit for bit at all (cuDNN's backward prefers deterministic
//      algorithms; see dnn.cpp); where it does not, the comparison falls back to the loss-curve
//      tolerance of test_trainer_step_gpu.cpp and says so.
//   2. The model's three buckets (heads, master, att: the whole gradient) were all-reduced, and the
//      time from the first bucket's start to the last's end is measured (> 0).
//   3. A non-finite gradient is found on the summed gradients: the update is refused, the host
//      optimiser names the tensor, no parameter changes.
//   4. --sync-bn is refused on the GPU; a build without NCCL refuses NCCL by name.
// Every test skips, naming the reason, without a usable CUDA device.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "dist/comm.h"
#include "gpu/cuda_exec.h"
#include "support/loss_curve.h"
#include "train/checkpoint.h"

namespace {

namespace nn = tasn::nn;
namespace tr = tasn::train;
namespace tt = tasn::test;

using GpuTasn = tr::BasicTasnNet<float, nn::CudaExec>;

#define SKIP_WITHOUT_GPU()                                                         \
  do {                                                                             \
    const std::string why_ = nn::cuda_device_problem(0);                           \
    if (!why_.empty()) GTEST_SKIP() << "no usable CUDA device: " << why_;          \
  } while (0)

struct Outcome {
  std::vector<double> losses;
  std::vector<float> values, momentum;
  double comm = -1, span = -1;
  int buckets = 0;
  std::string device;
};

// `steps` steps of the loss-curve TASN from fixed weights and batches, with or without NCCL.
Outcome run_steps(bool nccl, int steps) {
  const tr::NetConfig n = tt::curve_net();
  const auto batches = tt::curve_batches(n, 3, 6);
  nn::CudaOptions o;
  o.nccl = nccl;
  GpuTasn m(n, o);
  tasn::dist::SingleProcess single;
  if (nccl) m.set_comm(&single, false);
  tr::init_model(m, 7);
  tr::Sgd opt(m.params(), tr::SgdOptions{0.9, 5e-4});
  Outcome r;
  for (int s = 0; s < steps; ++s) {
    const tt::Batch& b = batches[static_cast<std::size_t>(s) % batches.size()];
    const tr::StepStats& st = m.train_step(b.images, b.labels, 1000 + s);
    r.losses.push_back(st.total);
    EXPECT_TRUE(m.sgd_step(opt, 0.05, 1.0 / double(st.n))) << "step " << s << ": " << opt.non_finite_gradient();
  }
  r.comm = m.comm_seconds();
  r.span = m.exec().comm_span_seconds();
  r.buckets = m.exec().comm_buckets();
  r.device = m.device();
  m.params_to_host(&opt);
  r.values.assign(m.params().values(), m.params().values() + m.params().size());
  r.momentum.assign(opt.momentum(), opt.momentum() + m.params().trainable_size());
  return r;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), sizeof(float) * a.size()) == 0;
}

// Without NCCL in this build: the refusal, by name.
void expect_no_nccl_refused() {
  nn::CudaOptions o;
  o.nccl = true;
  GpuTasn m(tt::curve_net(), o);
  tasn::dist::SingleProcess single;
  try {
    m.set_comm(&single, false);
    FAIL() << "set_comm with CudaOptions::nccl succeeded in a build without NCCL";
  } catch (const tasn::InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("this build has no NCCL"), std::string::npos) << e.what();
  }
}

TEST(TrainerNccl, WorldSizeOneEqualsNoNcclBitForBit) {
  SKIP_WITHOUT_GPU();
  if (!nn::nccl_built()) {
    expect_no_nccl_refused();
    GTEST_SKIP() << "this build has no NCCL (cmake/tasnNccl.cmake found none): the refusal is checked, the "
                    "NCCL path is not";
  }
  const int steps = 3;
  const Outcome plain = run_steps(false, steps), with = run_steps(true, steps), again = run_steps(false, steps);
  std::printf("[ nccl    ] %s\n", with.device.c_str());
  std::printf("[ nccl    ] %d buckets; all-reduce %.4f ms, first bucket start to last end %.4f ms (last step)\n",
              with.buckets, with.comm * 1e3, with.span * 1e3);
  EXPECT_NE(with.device.find("nccl"), std::string::npos) << with.device;
  EXPECT_EQ(plain.comm, 0.0) << "no NCCL: no all-reduce time";
  EXPECT_EQ(with.buckets, 3) << "heads, master and att, which cover the whole gradient: no remainder";
  EXPECT_GE(with.comm, 0.0);
  EXPECT_GT(with.span, 0.0) << "the buckets' events were recorded and span the backward after the heads";
  EXPECT_GE(with.span, with.comm);

  const bool repeats = plain.losses == again.losses && same_bits(plain.values, again.values) &&
                       same_bits(plain.momentum, again.momentum);
  if (repeats) {
    ASSERT_EQ(with.losses.size(), plain.losses.size());
    for (std::size_t s = 0; s < plain.losses.size(); ++s)
      EXPECT_EQ(with.losses[s], plain.losses[s]) << "step " << s << " loss";
    ASSERT_EQ(with.values.size(), plain.values.size());
    for (std::size_t i = 0; i < plain.values.size(); ++i)
      if (std::memcmp(&with.values[i], &plain.values[i], sizeof(float)) != 0) {
        ADD_FAILURE() << "value " << i << ": " << with.values[i] << " with NCCL, " << plain.values[i] << " without";
        break;
      }
    EXPECT_TRUE(same_bits(with.momentum, plain.momentum)) << "momentum";
  } else {
    std::printf("[ nccl    ] the GPU step does not repeat bit for bit on this machine (two runs without NCCL "
                "differ): losses compared within the loss-curve tolerance instead\n");
    tt::expect_curves_agree(plain.losses, with.losses);
  }
}

// A NaN weight in the heads makes non-finite gradients: with NCCL the check runs on the summed
// gradients in sgd_step, which refuses the update (the host optimiser names the tensor) and
// changes nothing.
TEST(TrainerNccl, NonFiniteGradientRefusedAfterTheAllReduce) {
  SKIP_WITHOUT_GPU();
  if (!nn::nccl_built()) GTEST_SKIP() << "this build has no NCCL";
  const tr::NetConfig n = tt::curve_net();
  const auto batches = tt::curve_batches(n, 1, 6);
  nn::CudaOptions o;
  o.nccl = true;
  GpuTasn m(n, o);
  tasn::dist::SingleProcess single;
  m.set_comm(&single, false);
  tr::init_model(m, 7);
  const nn::FlatParams<float>::Entry* bad = nullptr;
  for (const auto& e : m.params().table())
    if (e.trainable && e.name.rfind("heads.", 0) == 0) {
      bad = &e;
      break;
    }
  ASSERT_NE(bad, nullptr) << "no trainable tensor in the heads store";
  m.params().values()[bad->offset] = std::numeric_limits<float>::quiet_NaN();
  m.params_to_device(nullptr);
  // The trainable values only: the forward updates the batch-norm running statistics (buffers).
  const std::int64_t trainable = m.params().trainable_size();
  const std::vector<float> before(m.params().values(), m.params().values() + trainable);
  tr::Sgd opt(m.params(), tr::SgdOptions{0.9, 5e-4});
  const tr::StepStats& st = m.train_step(batches[0].images, batches[0].labels, 1);
  EXPECT_FALSE(std::isfinite(st.total));
  EXPECT_FALSE(m.sgd_step(opt, 0.05, 1.0 / double(st.n))) << "a step with non-finite gradients was applied";
  EXPECT_FALSE(opt.non_finite_gradient().empty());
  EXPECT_TRUE(m.exec().last_grads_nonfinite());
  std::printf("[ nccl    ] refused: %s\n", opt.non_finite_gradient().c_str());
  m.params_to_host(&opt);
  const std::vector<float> after(m.params().values(), m.params().values() + trainable);
  EXPECT_TRUE(same_bits(before, after)) << "the refused step changed the parameters";
}

TEST(TrainerNccl, SyncBatchNormIsRefusedOnTheGpu) {
  SKIP_WITHOUT_GPU();
  GpuTasn m(tt::curve_net(), nn::CudaOptions{});
  tasn::dist::SingleProcess single;
  try {
    m.set_comm(&single, true);
    FAIL() << "set_comm with sync_bn succeeded on the GPU";
  } catch (const tasn::InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("--sync-bn is CPU only for now"), std::string::npos) << e.what();
  }
  EXPECT_NO_THROW(m.set_comm(&single, false)) << "one process without NCCL: nothing to set up";
  EXPECT_FALSE(m.exec().nccl_active());
}

TEST(TrainerNccl, BuildWithoutNcclRefusesIt) {
  SKIP_WITHOUT_GPU();
  if (nn::nccl_built()) GTEST_SKIP() << "this build has NCCL (the refusal exists only without it)";
  expect_no_nccl_refused();
}

}  // namespace
