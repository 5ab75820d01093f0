// examples/dist/nccl_comm.h - the NCCL communicator of the GPU trainer (docs/distributed.md): the
// gradient all-reduce of nn::CudaExec runs on the device through it, one rank per GPU. Its host
// side (the unique id, every host collective) is a dist::Communicator: MPI's with several ranks,
// SingleProcess at world size 1 (a GPU machine without MPI can still run it: the GPU check does).
//
// Built into tasn_train_gpu when CMake finds NCCL (cmake/tasnNccl.cmake), which then defines
// TASN_HAVE_NCCL=1 for every user of that library. NCCL's own types stay in nccl_comm.cpp (only
// an opaque pointer here), so nothing else needs nccl.h.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <string>

#include "dist/comm.h"

struct ncclComm;  // nccl.h: typedef struct ncclComm* ncclComm_t

namespace tasn::dist {

class NcclComm {
 public:
  // Collective over `host`: every rank calls it with its own CUDA device (one rank per GPU). Rank
  // 0 makes the ncclUniqueId, host.broadcast() hands it to the others, then ncclCommInitRank
  // (which waits for every rank). Throws tasn::Error naming the failing call and NCCL's message.
  NcclComm(Communicator& host, int device);
  // ncclCommDestroy; ncclCommAbort instead when the communicator has an asynchronous error (a
  // peer gone: destroying would wait for it) or abort() ran already.
  ~NcclComm();
  NcclComm(const NcclComm&) = delete;
  NcclComm& operator=(const NcclComm&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }
  int device() const { return device_; }
  // "nccl 2.28.9, 2 ranks" (the version of the library loaded at run time).
  std::string describe() const;

  // dev[0, n) summed over the ranks, in place, queued on `stream` (ncclAllReduce, ncclFloat,
  // ncclSum): every rank gets the same values. Every rank must make the same calls in the same
  // order with the same n. n == 0 queues nothing. Throws tasn::Error when NCCL refuses the call or
  // reports an asynchronous error from an earlier one.
  void allreduce_sum(float* dev, std::int64_t n, cudaStream_t stream);
  // Throws tasn::Error when an operation queued earlier failed asynchronously (a peer gone, a
  // network error); cheap (no synchronisation).
  void check_async() const;

  // ncclCommAbort: frees the communicator and stops its operations still running on the device,
  // so that a failing rank never hangs in a collective (error paths). Idempotent; never throws.
  // After it, any other call throws.
  void abort() noexcept;
  bool aborted() const { return comm_ == nullptr; }

 private:
  ::ncclComm* comm_ = nullptr;
  int rank_ = 0, size_ = 1, device_ = 0;
};

}  // namespace tasn::dist
