// examples/dist/comm.h - the communicator the trainer's data parallelism runs on (docs/distributed.md).
//
// One small interface, three backends:
//   SingleProcess  world size 1, every collective a no-op (today's behaviour, no library needed);
//   MpiComm        CPU processes over MPI (dist/mpi_comm.h, built when MPI is found);
//   NCCL           GPU ranks: the gradient all-reduce runs on the device (dist/nccl_comm.h, used by
//                  nn::CudaExec); its host collectives (losses, checks, broadcasts of host buffers)
//                  are the MPI communicator's, or SingleProcess's at world size 1.
//
// The interface is header-only and has no MPI or NCCL type in it, so the trainer, its models and
// the tests include it in every build. All collectives are blocking and must be called by every
// rank in the same order with the same sizes (the trainer's loop guarantees it: every rank runs
// the same steps).
#pragma once

#include <cstdint>
#include <cstdlib>
#include <string>

#include "tasn/core/common.h"

namespace tasn::dist {

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // Ranks on this machine and this rank's index among them (default threads, the GPU to use).
  virtual int local_rank() const { return 0; }
  virtual int local_size() const { return 1; }
  // "single process", "mpi (Open MPI v4.1.4, 2 ranks)", ...
  virtual std::string describe() const = 0;

  // Elementwise sums over the ranks, in place, every rank getting the result.
  virtual void allreduce_sum(float* v, std::int64_t n) = 0;
  virtual void allreduce_sum(double* v, std::int64_t n) = 0;
  // Elementwise maxima of unsigned 64-bit values (flags, hashes), in place.
  virtual void allreduce_max(std::uint64_t* v, std::int64_t n) = 0;
  // `bytes` bytes of `data` from rank `root` into every rank's `data`.
  virtual void broadcast(void* data, std::int64_t bytes, int root) = 0;
  // Ends every rank of the job with exit status `code` (after the caller printed why). Never
  // returns; a rank that calls it alone still takes the others down (no hang in a collective).
  [[noreturn]] virtual void abort(int code) = 0;

  bool leader() const { return rank() == 0; }
};

class SingleProcess final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string describe() const override { return "single process"; }
  void allreduce_sum(float*, std::int64_t) override {}
  void allreduce_sum(double*, std::int64_t) override {}
  void allreduce_max(std::uint64_t*, std::int64_t) override {}
  void broadcast(void*, std::int64_t, int) override {}
  [[noreturn]] void abort(int code) override { std::exit(code); }
};

// A 64-bit FNV-1a hash of bytes: equal buffers on every rank have equal hashes (the weight checks).
inline std::uint64_t hash_bytes(const void* data, std::size_t bytes, std::uint64_t h = 1469598103934665603ull) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (std::size_t i = 0; i < bytes; ++i) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

// True on every rank when `h` is the same on all of them (max(h) == max(~h) complemented).
inline bool same_on_all_ranks(Communicator& c, std::uint64_t h) {
  std::uint64_t v[2] = {h, ~h};
  c.allreduce_max(v, 2);
  return v[0] == h && ~v[1] == h;  // max(h) == h and min(h) == h on this rank: the same answer on all
}

// How the process was started: the world size an MPI launcher announced in the environment
// (Open MPI's mpirun: OMPI_COMM_WORLD_SIZE; MPICH / Hydra: PMI_SIZE; Slurm's srun:
// SLURM_STEP_NUM_TASKS), or a PMIx launch whose size only MPI knows (PMIX_RANK: size 0 =
// "ask MPI"); 1 when started directly.
struct LaunchInfo {
  int size = 1;          // 0: launched, the size unknown until MPI starts
  std::string launcher;  // the variable that told, "" when started directly
};
inline LaunchInfo launch_info() {
  const auto get = [](const char* k) -> const char* { return std::getenv(k); };
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_STEP_NUM_TASKS"})
    if (get(v) && std::atoi(get(v)) >= 1) return {std::atoi(get(v)), v};
  if (get("PMIX_RANK")) return {0, "PMIX_RANK"};
  return {};
}

}  // namespace tasn::dist
