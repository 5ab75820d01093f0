// examples/dist/nccl_comm.cpp - NcclComm (dist/nccl_comm.h): ncclCommInitRank from a unique id
// broadcast over the host communicator, in-place float sums, abort.
#include "dist/nccl_comm.h"

#include <nccl.h>

#include <cstring>
#include <string>

#include "tasn/core/common.h"

namespace tasn::dist {
namespace {

// "NCCL: <call> failed: <ncclGetErrorString>[ (<ncclGetLastError>)]".
[[noreturn]] void fail(ncclResult_t r, const char* call, ncclComm_t comm) {
  std::string msg = std::string("NCCL: ") + call + " failed: " + ncclGetErrorString(r);
#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 13, 0)
  const char* last = ncclGetLastError(comm);
  if (last && *last) msg += std::string(" (") + last + ")";
#else
  (void)comm;
#endif
  throw Error(msg);
}

void check(ncclResult_t r, const char* call, ncclComm_t comm = nullptr) {
  if (r != ncclSuccess) fail(r, call, comm);
}

void check_cuda(cudaError_t e, const char* call) {
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    throw CudaError(std::string("NcclComm: ") + call + " failed: " + cudaGetErrorString(e));
  }
}

}  // namespace

NcclComm::NcclComm(Communicator& host, int device) : rank_(host.rank()), size_(host.size()), device_(device) {
  TASN_CHECK_ARG(size_ >= 1 && rank_ >= 0 && rank_ < size_, "NcclComm: rank ", rank_, " of ", size_);
  check_cuda(cudaSetDevice(device), "cudaSetDevice");  // NCCL binds the communicator to the current device
  ncclUniqueId id;
  std::memset(&id, 0, sizeof id);
  // Rank 0 broadcasts the id together with ncclGetUniqueId's result: when it failed, every rank
  // throws the same error instead of the others waiting in ncclCommInitRank for a rank 0 that
  // never comes.
  ncclResult_t made = ncclSuccess;
  if (rank_ == 0) made = ncclGetUniqueId(&id);
  struct {
    ncclUniqueId id;
    int result;
  } msg{id, static_cast<int>(made)};
  host.broadcast(&msg, static_cast<std::int64_t>(sizeof msg), 0);
  if (msg.result != ncclSuccess) fail(static_cast<ncclResult_t>(msg.result), "ncclGetUniqueId (on rank 0)", nullptr);
  ncclComm_t c = nullptr;
  check(ncclCommInitRank(&c, size_, msg.id, rank_), "ncclCommInitRank", c);
  comm_ = c;
}

NcclComm::~NcclComm() {
  if (!comm_) return;
  ncclResult_t async = ncclSuccess;
  if (ncclCommGetAsyncError(comm_, &async) != ncclSuccess || async != ncclSuccess)
    ncclCommAbort(comm_);  // a peer is gone or the network failed: destroying could wait forever
  else
    ncclCommDestroy(comm_);
  comm_ = nullptr;
}

std::string NcclComm::describe() const {
  int v = 0;
  ncclGetVersion(&v);
  // NCCL_VERSION_CODE: major * 10000 + minor * 100 + patch since 2.9 (major * 1000 + ... before).
  const int major = v >= 10000 ? v / 10000 : v / 1000, minor = v >= 10000 ? v / 100 % 100 : v / 100 % 10,
            patch = v % 100;
  return "nccl " + std::to_string(major) + "." + std::to_string(minor) + "." + std::to_string(patch) + ", " +
         std::to_string(size_) + (size_ == 1 ? " rank" : " ranks");
}

void NcclComm::allreduce_sum(float* dev, std::int64_t n, cudaStream_t stream) {
  TASN_CHECK_ARG(comm_, "NcclComm::allreduce_sum: the communicator was aborted");
  TASN_CHECK_ARG(n >= 0 && (n == 0 || dev), "NcclComm::allreduce_sum: ", n, " values at ", static_cast<void*>(dev));
  if (n == 0) return;
  check(ncclAllReduce(dev, dev, static_cast<std::size_t>(n), ncclFloat, ncclSum, comm_, stream), "ncclAllReduce",
        comm_);
}

void NcclComm::check_async() const {
  TASN_CHECK_ARG(comm_, "NcclComm: the communicator was aborted");
  ncclResult_t async = ncclSuccess;
  check(ncclCommGetAsyncError(comm_, &async), "ncclCommGetAsyncError", comm_);
  if (async != ncclSuccess) fail(async, "an earlier collective (ncclCommGetAsyncError)", comm_);
}

void NcclComm::abort() noexcept {
  if (!comm_) return;
  ncclCommAbort(comm_);
  comm_ = nullptr;
}

}  // namespace tasn::dist
