// examples/train/trainer.h - the training loop of the example trainer: SGD steps over a
// background batch loader (a pool of decoding threads), evaluation of every head each epoch, the
// checkpoint of every finished epoch with a bit-exact resume, and a non-finite-loss stop. Its
// parts have their own headers, all included here: train/datasets.h (data sets), train/config.h
// (options and results), train/checkpoint.h (initialisation, backbones, checkpoints),
// train/progress.h (progress bar, metrics log), train/diagnostics.h (TASN's detail coverage,
// attention dumps).
//
// What a run writes is never lost (docs/trainer.md, "Run folders"): the output folder is locked
// and claimed before training (train/run_folder.h), every file is written atomically and checked
// through close (io/file_io.h), the checkpoint of a finished epoch is written before its
// evaluation, and a failure names the file, the OS reason and the checkpoint to resume from.
//
// Determinism: the epoch order comes from (seed, epoch), the detail-map channel of a step from
// (seed, global step), the generated images from (seed, split, index) and augmentation from
// (seed, epoch, index); the CPU layers have no order-dependent reductions across threads. So a run
// resumed from the checkpoint of epoch e repeats, bit for bit, the losses of an uninterrupted run
// with the same thread count (Eigen's GEMM blocking depends on it).
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "data/batch_loader.h"
#include "io/file_io.h"
#include "io/text.h"
#include "nn/safetensors.h"
#include "tasn/core/random.h"
#include "train/checkpoint.h"
#include "train/config.h"
#include "train/datasets.h"
#include "train/diagnostics.h"
#include "train/model.h"
#include "train/optim.h"
#include "train/progress.h"
#include "train/run_folder.h"

namespace tasn::train {

// ---- helpers ------------------------------------------------------------------------------------

inline std::uint64_t step_seed(std::uint64_t seed, std::int64_t global_step) {
  return mix64(mix64(seed ^ 0x7A5Bu) + static_cast<std::uint64_t>(global_step));
}

// The first parameter or buffer holding a NaN or an infinity ("" when all are finite).
inline std::string first_non_finite(Model& m) {
  m.params_to_host(nullptr);
  const auto* bad = m.params().first_non_finite(m.params().values(), false);
  return bad ? bad->name : "";
}

// ---- data parallelism (docs/distributed.md) ----------------------------------------------------

// Rank 0's parameter values and buffers (all: buffers_only = false; else only the buffers, the
// running statistics that per-rank batch norm lets drift apart, as DDP broadcasts them) and
// momentum on every rank, then every rank's values and momentum checked bit-equal (a hash
// compared over the ranks): a rank that differs is a bug, reported naming `when`.
inline void sync_state(Model& m, Sgd* opt, dist::Communicator& c, bool buffers_only, const std::string& when) {
  if (c.size() == 1) return;
  m.params_to_host(opt);
  auto& p = m.params();
  const std::int64_t from = buffers_only ? p.trainable_size() : 0;
  c.broadcast(p.values() + from, (p.size() - from) * std::int64_t(sizeof(float)), 0);
  if (opt && opt->momentum() && !buffers_only)
    c.broadcast(opt->momentum(), p.trainable_size() * std::int64_t(sizeof(float)), 0);
  std::uint64_t h = dist::hash_bytes(p.values(), std::size_t(p.size()) * sizeof(float));
  if (opt && opt->momentum()) h = dist::hash_bytes(opt->momentum(), std::size_t(p.trainable_size()) * sizeof(float), h);
  if (!dist::same_on_all_ranks(c, h))
    throw Error(tasn::detail::concat("data parallelism: the parameters or momentum differ across the ", c.size(),
                                     " ranks ", when, " (rank ", c.rank(), ": hash ", h,
                                     "); the ranks must apply identical updates"));
  m.params_to_device(opt);
}

// Test hook (tests/dist/check_mpi.sh): with TASN_TEST_DIVERGE_RANK=r in the environment, rank r
// adds 1 to its first weight after the first step, which the check after the epoch must catch.
inline void diverge_for_test(Model& m, dist::Communicator& c) {
  const char* r = std::getenv("TASN_TEST_DIVERGE_RANK");
  if (!r || std::atoi(r) != c.rank()) return;
  m.params_to_host(nullptr);
  m.params().values()[0] += 1;
  m.params_to_device(nullptr);
}

// A step's losses, top-1 count and images summed over the ranks (every rank gets the sums).
inline void reduce_step(StepStats& st, dist::Communicator& c, std::vector<double>& buf) {
  if (c.size() == 1) return;
  buf.assign({st.total, double(st.correct), double(st.n)});
  for (const auto& [name, v] : st.losses) buf.push_back(v);
  c.allreduce_sum(buf.data(), std::int64_t(buf.size()));
  st.total = buf[0];
  st.correct = std::int64_t(buf[1]);
  st.n = std::int64_t(buf[2]);
  for (std::size_t i = 0; i < st.losses.size(); ++i) st.losses[i].second = buf[3 + i];
}

// Where a step's time goes (--timing): means over the steps after a run's first.
struct StepTiming {
  std::int64_t steps = 0;
  double data = 0, step = 0, update = 0, upload = 0, forward = 0, tasn = 0, backward = 0, comm = 0;
  bool has_comm = false;  // a gradient all-reduce was timed (data parallelism)
  void add(double data_wait, double step_wall, double update_s, double comm_s, const StepStats& st) {
    ++steps;
    data += data_wait;
    step += step_wall;
    update += update_s;
    if (comm_s >= 0) {
      comm += comm_s;
      has_comm = true;
    }
    upload += st.seconds_upload;
    forward += st.seconds_forward;
    tasn += st.seconds_tasn;
    backward += st.seconds_backward;
  }
  std::string report(std::int64_t batch) const {
    if (steps == 0) return "timing: no step after the first (run more steps)";
    const double k = 1e3 / double(steps);
    char buf[512];
    std::snprintf(buf, sizeof buf,
                  "timing over %lld steps: %.1f images/s; per step (ms): data wait %.2f | train_step %.2f = upload %.2f "
                  "+ forward %.2f (TASN operators %.2f, %.1f %% of the step) + backward %.2f | optimiser %.2f",
                  static_cast<long long>(steps), double(batch) * double(steps) / std::max(data + step + update, 1e-12),
                  data * k, step * k, upload * k, forward * k, tasn * k, 100 * tasn / std::max(step + update, 1e-12),
                  backward * k, update * k);
    std::string s = buf;
    if (has_comm) {
      std::snprintf(buf, sizeof buf, " (gradient all-reduce %.2f)", comm * k);
      s += buf;
    }
    return s;
  }
};

// ---- evaluation ---------------------------------------------------------------------------------

// Accuracy of every head over a split (eval-mode BN, plain-sum detail map), and for a model with
// attention views (TASN) where its structure grid samples (DetailCoverage).
// With a communicator of several ranks each rank evaluates its contiguous share of the split and
// the counts are summed; a non-finite output on any rank is reported on every rank (NonFinite).
inline EvalResult evaluate(Model& m, const Dataset& d, std::int64_t batch,
                           std::int64_t loader_threads = default_loader_threads(), dist::Communicator* comm = nullptr) {
  EvalResult r;
  r.heads = m.head_names();
  const std::int64_t ranks = comm ? comm->size() : 1, rank = comm ? comm->rank() : 0;
  if (ranks > 1) {  // the shares below must cover one split: the same size everywhere
    const std::int64_t n = d.size();
    if (!dist::same_on_all_ranks(*comm, dist::hash_bytes(&n, sizeof n)))
      throw InvalidArgument("data parallelism: the ranks' evaluation splits differ in size (rank " + std::to_string(rank) +
                            ": " + std::to_string(n) + " images)");
  }
  const std::int64_t lo_i = d.size() * rank / ranks, hi_i = d.size() * (rank + 1) / ranks;
  std::vector<double> sums(r.heads.size() + DetailCoverage::kSums + 1, 0.0);  // correct per head, coverage, failed
  DetailCoverage coverage;  // TASN: where the structure grid samples (train/diagnostics.h)
  std::string failure;
  if (hi_i > lo_i) {
    data::BatchLoader::Options lo;
    lo.batch = batch;
    lo.shuffle = false;
    lo.workers = loader_threads;
    data::BatchLoader loader(hi_i - lo_i, [&](std::int64_t i) { return d.get(lo_i + i, 0); }, lo);
    loader.start_epoch(0);
    data::Batch b;
    try {
      while (loader.next(b)) {
        for (auto& i : b.indices) i += lo_i;
        const auto logits = m.predict(b.images, b.size());
        for (std::size_t h = 0; h < logits.size(); ++h)
          sums[h] += double(detail_model::top1<float>(
              Tensor2<const float>(logits[h].ptr(), {logits[h].dim(0), logits[h].dim(1)}), b.labels));
        coverage.add(m, d, b);
      }
    } catch (const NonFinite& e) {
      if (ranks == 1) throw;
      failure = e.what();
      sums.back() = 1;
    }
  }
  coverage.save(sums.data() + r.heads.size());
  if (comm) comm->allreduce_sum(sums.data(), std::int64_t(sums.size()));
  if (sums.back() > 0)
    throw NonFinite(failure.empty() ? "non-finite evaluation output on another rank" : failure);
  coverage.load(sums.data() + r.heads.size());
  r.n = d.size();
  for (std::size_t h = 0; h < r.heads.size(); ++h) r.accuracy.push_back(sums[h] / double(d.size()));
  coverage.finish(r);
  return r;
}

// ---- training -----------------------------------------------------------------------------------

// Trains `m`. With c.out_dir set the run writes its metrics log and checkpoints into that folder,
// which it locks and claims first (RunFolder; pass `folder` when the caller has locked it already).
// Everything checkable is checked before the first step: the configuration, the folder, the
// checkpoint metadata (valid UTF-8), and on resume the checkpoint's model, training signature
// and epoch / step counts.
inline TrainResult train_model(Model& m, const Dataset& train_set, const Dataset* eval_set, const TrainConfig& c,
                               const std::string& label, const RunFolder* folder = nullptr) {
  c.validate();
  TASN_CHECK_ARG(train_set.size() >= c.batch, "train: the training split holds ", train_set.size(),
                 " images, fewer than one batch of ", c.batch);
  dist::SingleProcess alone;
  dist::Communicator& comm = c.comm ? *c.comm : alone;
  TASN_CHECK_ARG(comm.leader() || (c.out_dir.empty() && !folder), "train: only rank 0 writes a run folder (rank ",
                 comm.rank(), " was given ", c.out_dir, ")");
  const auto t0 = std::chrono::steady_clock::now();
  const auto since = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); };
  TrainResult res;
  Sgd opt(m.params(), c.sgd);
  m.set_comm(c.comm, c.sync_bn);
  m.params_to_device(&opt);  // the host values as initialised / loaded by the caller, this optimiser's momentum
  data::BatchLoader::Options lo;
  lo.batch = c.batch / comm.size();  // this rank's part of the global batch
  lo.drop_last = true;  // every step sees a full batch (batch statistics)
  lo.seed = c.seed;
  lo.workers = c.loader_threads;
  lo.shard = comm.rank();
  lo.shards = comm.size();
  // the loader hands every example its epoch (the augmentation's key with the seed and the index)
  data::BatchLoader loader(train_set.size(), [&](std::int64_t i, std::int64_t epoch) { return train_set.get(i, epoch); }, lo);
  const std::int64_t steps = loader.batches_per_epoch();
  const std::string train_sig = train_signature(c, train_set, m);

  std::unique_ptr<RunFolder> own_folder;
  if (!c.out_dir.empty() && !folder) {
    own_folder = std::make_unique<RunFolder>(c.out_dir, c.command.empty() ? label : c.command);
    folder = own_folder.get();
  }
  const std::string ckpt = folder ? folder->checkpoint(m.name()) : "";
  if (folder) {
    folder->claim(m.name(), c.resume, c.overwrite);
    std::vector<std::string> names;
    for (const auto& [name, t] : checkpoint_tensors(m, &opt)) names.push_back(name);
    nn::safetensors::check_header_strings(names, checkpoint_metadata(m, c.epochs, c.epochs * steps, train_sig), ckpt);
  }

  std::int64_t first_epoch = 1;
  if (!c.resume.empty()) {
    const CheckpointInfo info = load_checkpoint(c.resume, m, &opt, [&](const CheckpointInfo& ci) {
      TASN_CHECK_ARG(ci.train == train_sig, "checkpoint ", c.resume,
                     " was written by another training configuration; a resumed run must repeat it: checkpoint \"",
                     ci.train, "\", here \"", train_sig, "\"");
      TASN_CHECK_ARG(ci.epoch < c.epochs, "checkpoint ", c.resume, " has finished epoch ", ci.epoch, " of ", c.epochs,
                     ": nothing left to train (use --eval-only to evaluate it)");
      TASN_CHECK_ARG(ci.global_step == ci.epoch * steps, "checkpoint ", c.resume, ": global step ", ci.global_step,
                     " is not epoch ", ci.epoch, " x ", steps, " steps per epoch (the metadata was edited?)");
    });
    first_epoch = info.epoch + 1;
    res.global_step = info.global_step;
  }
  // The ranks must train the same thing: a rank with other data (a file missing on one machine)
  // or options would run another number of steps and leave the others waiting in a collective.
  if (comm.size() > 1) {
    const std::string what = train_sig + " | " + m.config_string() + " | values " + std::to_string(m.params().size()) +
                             " | eval " + (eval_set ? std::to_string(eval_set->size()) : "none") + " | epoch " +
                             std::to_string(first_epoch);
    if (!dist::same_on_all_ranks(comm, dist::hash_bytes(what.data(), what.size())))
      throw InvalidArgument("data parallelism: the ranks disagree on the training (data, options, model or resumed "
                            "epoch); rank " + std::to_string(comm.rank()) + " has: " + what);
  }
  // every rank starts from rank 0's weights and momentum (initialised or loaded), checked equal
  sync_state(m, &opt, comm, false, "at the start");
  res.epochs_done = first_epoch - 1;
  MetricsLog log;
  if (folder) {
    // continuing this folder's own run: keep its log; else (fresh, --overwrite, or resuming a
    // checkpoint from elsewhere into a folder without a run) start the log anew
    log = MetricsLog(folder->metrics(m.name()), !folder->resumes_own(m.name(), c.resume), first_epoch - 1);
  }
  // the checkpoint to name when training stops: updated after every checkpoint written
  std::string last_good = !c.resume.empty() ? c.resume : std::string("none (no checkpoint written)");

  Progress bar(c.progress && comm.leader(), label);
  std::vector<double> reduce_buf;
  // Ends the run after a non-finite loss, gradient, parameter or evaluation output in `epoch`.
  const auto stop_nonfinite = [&](const std::string& what, const std::string& good) {
    res.stopped_nonfinite = true;
    res.message = label + ": non-finite " + what + "; training stopped, the last good checkpoint is " + good;
    res.seconds = since();
    return res;
  };
  std::int64_t run_steps = 0;
  StepTiming timing;
  for (std::int64_t epoch = first_epoch; epoch <= c.epochs; ++epoch) {
    loader.start_epoch(epoch);
    const auto te = std::chrono::steady_clock::now();
    double loss_sum = 0, lr = 0;
    std::map<std::string, double> parts;
    std::int64_t seen = 0, correct = 0, step = 0;
    data::Batch b;
    auto tw = std::chrono::steady_clock::now();
    while (loader.next(b)) {
      const auto tn = std::chrono::steady_clock::now();
      ++step;
      lr = c.lr.at(double(epoch - 1) + double(step - 1) / double(steps), double(c.epochs));
      StepStats st = m.train_step(b.images, b.labels, step_seed(c.seed, res.global_step));
      reduce_step(st, comm, reduce_buf);  // the global batch's sums: every rank decides alike below
      const auto ts = std::chrono::steady_clock::now();
      const bool finite_loss = std::isfinite(st.total);
      if (!finite_loss || !m.sgd_step(opt, lr, 1.0 / double(st.n))) {
        std::ostringstream what;
        what << (finite_loss ? "gradient of " + opt.non_finite_gradient() : std::string("loss")) << " at epoch " << epoch
             << ", step " << step << " (";
        for (const auto& [n, l] : st.losses) what << n << " " << l << " ";
        what << ")";
        return stop_nonfinite(what.str(), last_good);
      }
      if (c.timing && run_steps > 0) {  // the first step of a run (warm-up) is not counted
        const auto tu = std::chrono::steady_clock::now();
        const double dev = m.update_seconds();
        timing.add(std::chrono::duration<double>(tn - tw).count(), std::chrono::duration<double>(ts - tn).count(),
                   dev >= 0 ? dev : std::chrono::duration<double>(tu - ts).count(), m.comm_seconds(), st);
      }
      if (run_steps == 0 && comm.size() > 1) diverge_for_test(m, comm);
      ++res.global_step;
      ++run_steps;
      res.step_losses.push_back(st.total / double(st.n));
      loss_sum += st.total;
      for (const auto& [n, l] : st.losses) parts[n] += l;
      seen += st.n;
      correct += st.correct;
      const double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - te).count();
      const double ips = double(seen) / std::max(el, 1e-9);
      const double left = double((c.epochs - epoch) * steps + (steps - step)) * double(c.batch) / std::max(ips, 1e-9);
      bar.update(epoch, c.epochs, step, steps, loss_sum / double(seen), double(correct) / double(seen), ips, left);
      if (c.max_steps > 0 && run_steps >= c.max_steps) break;
      tw = std::chrono::steady_clock::now();
    }
    const double epoch_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - te).count();
    const bool complete = step == steps;  // a --max-steps stop leaves the epoch unfinished
    const bool last = epoch == c.epochs || (c.stop_after_epoch > 0 && epoch >= c.stop_after_epoch) ||
                      (c.max_steps > 0 && run_steps >= c.max_steps);
    // A finished epoch is saved first, before anything after it (evaluation, the log) can fail.
    // Only finished epochs are checkpointed: resuming continues with the next one.
    // per-rank batch norm: rank 0's running statistics on every rank (as DDP), then all checked equal
    sync_state(m, &opt, comm, true, "after epoch " + std::to_string(epoch));
    if (complete) {
      if (const std::string bad = first_non_finite(m); !bad.empty())
        return stop_nonfinite("parameter or statistic " + bad + " after epoch " + std::to_string(epoch), last_good);
      res.epochs_done = epoch;
      if (!ckpt.empty()) {
        try {
          save_checkpoint(ckpt, m, &opt, epoch, res.global_step, train_sig);
        } catch (const io::IoError& e) {
          throw io::IoError(label + ": cannot save the checkpoint of epoch " + std::to_string(epoch) + ": " + e.what() +
                            "; the last good checkpoint is " + last_good + " (unchanged)");
        }
        last_good = ckpt;
      }
    }
    nlohmann::json j = {{"model", m.name()}, {"epoch", epoch}, {"global_step", res.global_step},
                        {"lr_last_step", lr}, {"complete", complete}, {"train_loss", loss_sum / double(std::max<std::int64_t>(seen, 1))},
                        {"train_acc", double(correct) / double(std::max<std::int64_t>(seen, 1))},
                        {"epoch_seconds", epoch_s}, {"images_per_second", double(seen) / std::max(epoch_s, 1e-9)}};
    for (const auto& [n, l] : parts) j["train_loss_" + n] = l / double(std::max<std::int64_t>(seen, 1));
    if (eval_set && (last || (c.eval_every > 0 && epoch % c.eval_every == 0))) {
      const std::string saved = complete && !ckpt.empty()
                                    ? "epoch " + std::to_string(epoch) + " is saved in " + ckpt + " (continue with --resume " + ckpt + ")"
                                    : "the last checkpoint is " + last_good;
      try {
        res.final_eval = evaluate(m, *eval_set, c.eval_batch, c.loader_threads, c.comm);
      } catch (const NonFinite& e) {
        j["eval_error"] = io::escape_bytes(e.what());
        log.append(j);
        return stop_nonfinite("evaluation output after epoch " + std::to_string(epoch) + " (" + e.what() + ")",
                              complete && !ckpt.empty() ? ckpt + " (epoch " + std::to_string(epoch) +
                                                              ", written before this evaluation)"
                                                        : last_good);
      } catch (const std::exception& e) {
        j["eval_error"] = io::escape_bytes(e.what());
        log.append(j);
        throw Error(label + ": the evaluation after epoch " + std::to_string(epoch) + " failed: " + e.what() + "; " + saved);
      }
      std::ostringstream s;
      s << label << " epoch " << epoch << " eval:";
      for (std::size_t h = 0; h < res.final_eval.heads.size(); ++h) {
        j["eval_acc_" + res.final_eval.heads[h]] = res.final_eval.accuracy[h];
        char buf[64];
        std::snprintf(buf, sizeof buf, " %s %.1f%%", res.final_eval.heads[h].c_str(), 100 * res.final_eval.accuracy[h]);
        s << buf;
      }
      if (res.final_eval.detail_rows >= 0) {
        j["detail_rows_cols_structure"] = res.final_eval.detail_rows;
        j["detail_rows_cols_uniform"] = res.final_eval.uniform_rows;
      }
      res.report_accuracy = res.final_eval.accuracy[m.reported_head()];
      bar.line(s.str());
    }
    log.append(j);
    if (last) break;
  }
  log.close();
  res.seconds = since();
  if (c.timing) bar.line(label + " " + timing.report(c.batch) + (m.memory_report().empty() ? "" : "; " + m.memory_report()));
  return res;
}

}  // namespace tasn::train
