// examples/train/config.h - the options of a training run (TrainConfig, checked as a whole by
// validate()) and what a run and an evaluation return (TrainResult, EvalResult).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "data/batch_loader.h"
#include "dist/comm.h"
#include "tasn/core/common.h"
#include "train/optim.h"

namespace tasn::train {

// The CPU trainer's batch-loader threads: the hardware threads, at most 2. Its step keeps every
// core busy, so loader threads beyond what the data need only take cores from it. Measured on 2
// cores (docs/trainer.md, "Data loading"): 2 against 1 thread, no slowdown on the generated data
// and 8-19 % faster on real JPEGs at the demo size. A GPU trainer, whose cores are free, wants
// data::default_workers().
inline std::int64_t default_loader_threads() { return std::min<std::int64_t>(2, data::default_workers()); }

struct TrainConfig {
  std::int64_t epochs = 5;
  std::int64_t batch = 32;
  std::int64_t eval_batch = 100;
  LrSchedule lr;
  SgdOptions sgd;
  std::uint64_t seed = 1;
  std::string out_dir;          // metrics log + checkpoints ("" : none written); see RunFolder
  std::string resume;           // checkpoint to continue from
  bool overwrite = false;       // a fresh run may replace an earlier run's results in out_dir
  std::string command;          // what the run folder's lock names as its holder
  bool progress = true;         // progress bar on stderr
  std::int64_t eval_every = 1;  // epochs between evaluations (the last epoch is always evaluated)
  std::int64_t stop_after_epoch = 0;  // > 0: stop after this epoch (an interruption, for tests)
  bool timing = false;                // print where a step's time goes (data, phases, optimiser, memory)
  std::int64_t max_steps = 0;         // > 0: stop after this many steps of this run (smoke tests)
  // Batch-loader threads decoding examples in parallel (data::BatchLoader); the batches are the
  // same for any count, so it is not part of the training signature.
  std::int64_t loader_threads = default_loader_threads();
  // Data parallelism (docs/distributed.md): the ranks of `comm` train one model together; `batch`
  // is the global batch (each rank loads batch / ranks of it), so the training signature does
  // not depend on the rank count. Null: one process. sync_bn: batch statistics over all ranks.
  dist::Communicator* comm = nullptr;
  bool sync_bn = false;
  int ranks() const { return comm ? comm->size() : 1; }
  bool leader() const { return !comm || comm->leader(); }

  // Every value in range (tasn::InvalidArgument naming the option otherwise).
  void validate() const {
    TASN_CHECK_ARG(epochs >= 1, "epochs must be >= 1, got ", epochs);
    TASN_CHECK_ARG(batch >= 2, "batch must be >= 2 (batch norm needs two samples), got ", batch);
    TASN_CHECK_ARG(eval_batch >= 1, "eval batch must be >= 1, got ", eval_batch);
    TASN_CHECK_ARG(std::isfinite(lr.base) && lr.base > 0, "lr must be finite and > 0, got ", lr.base);
    TASN_CHECK_ARG(std::isfinite(lr.gamma) && lr.gamma > 0, "gamma must be finite and > 0, got ", lr.gamma);
    for (std::size_t i = 0; i < lr.milestones.size(); ++i)
      TASN_CHECK_ARG(lr.milestones[i] >= 1 && lr.milestones[i] <= double(epochs) &&
                         (i == 0 || lr.milestones[i] > lr.milestones[i - 1]),
                     "milestones must increase within 1..epochs (", epochs, "), got ", lr.milestones[i], " at position ",
                     i + 1);
    TASN_CHECK_ARG(sgd.momentum >= 0 && sgd.momentum < 1, "momentum must be in [0, 1), got ", sgd.momentum);
    TASN_CHECK_ARG(std::isfinite(sgd.weight_decay) && sgd.weight_decay >= 0, "weight decay must be finite and >= 0, got ",
                   sgd.weight_decay);
    TASN_CHECK_ARG(eval_every >= 0, "eval_every must be >= 0, got ", eval_every);
    TASN_CHECK_ARG(stop_after_epoch >= 0 && stop_after_epoch <= epochs, "stop-after-epoch must be in 0..epochs (",
                   epochs, "), got ", stop_after_epoch);
    TASN_CHECK_ARG(max_steps >= 0, "max-steps must be >= 0, got ", max_steps);
    TASN_CHECK_ARG(batch % ranks() == 0 && batch / ranks() >= 2, "batch (", batch, ") must be a multiple of the ", ranks(),
                   " ranks with at least 2 images per rank (batch norm needs two samples)");
    TASN_CHECK_ARG(loader_threads >= 1 && loader_threads <= data::BatchLoader::kMaxWorkers,
                   "loader threads must be in [1, ", data::BatchLoader::kMaxWorkers, "], got ", loader_threads);
  }
};

struct EvalResult {
  std::vector<std::string> heads;
  std::vector<double> accuracy;  // per head, in [0, 1]
  std::int64_t n = 0;
  double detail_rows = -1;   // TASN on data with known detail boxes: structure-grid rows + columns on the detail
  double uniform_rows = -1;  // the same count for a uniform grid (the baseline's resize)
};

struct TrainResult {
  std::vector<double> step_losses;  // total loss per image of every step of this run
  EvalResult final_eval;            // the last evaluation, every head
  double report_accuracy = 0;       // accuracy of the model's reported head
  double seconds = 0;               // training + evaluation wall time of this run
  std::int64_t epochs_done = 0, global_step = 0;
  bool stopped_nonfinite = false;
  std::string message;
};

}  // namespace tasn::train
