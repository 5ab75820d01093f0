// examples/dist/mpi_comm.cpp - MpiComm: the Communicator of dist/comm.h over MPI_COMM_WORLD.
#include "dist/mpi_comm.h"

#include <mpi.h>

#include <algorithm>
#include <climits>
#include <string>

namespace tasn::dist {
namespace {

std::string mpi_error(int code) {
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(code, msg, &len);
  return std::string(msg, static_cast<std::size_t>(len));
}

void check(int code, const char* what) {
  if (code != MPI_SUCCESS) throw Error(std::string("MPI: ") + what + " failed: " + mpi_error(code));
}

// MPI counts are int: large buffers go in chunks of 2^30 elements.
constexpr std::int64_t kChunk = std::int64_t(1) << 30;

class MpiComm final : public Communicator {
 public:
  MpiComm() {
    int inited = 0;
    check(MPI_Initialized(&inited), "MPI_Initialized");
    if (!inited) {
      int provided = 0;
      check(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
      owns_ = true;
      if (provided < MPI_THREAD_FUNNELED)
        throw Error("MPI: this MPI gives no thread support (MPI_THREAD_FUNNELED), which the trainer's threads need");
    }
    // Errors come back as codes (check() throws tasn::Error naming them; tasn_train then aborts
    // the job with the message) instead of MPI's default: abort with MPI's own message only.
    check(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler");
    check(MPI_Comm_rank(MPI_COMM_WORLD, &rank_), "MPI_Comm_rank");
    check(MPI_Comm_size(MPI_COMM_WORLD, &size_), "MPI_Comm_size");
    MPI_Comm local = MPI_COMM_NULL;
    check(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &local),
          "MPI_Comm_split_type");
    check(MPI_Comm_rank(local, &local_rank_), "MPI_Comm_rank (local)");
    check(MPI_Comm_size(local, &local_size_), "MPI_Comm_size (local)");
    MPI_Comm_free(&local);
    char version[MPI_MAX_LIBRARY_VERSION_STRING];
    int len = 0;
    MPI_Get_library_version(version, &len);
    library_.assign(version, static_cast<std::size_t>(len));
    library_ = library_.substr(0, library_.find_first_of(",\n"));
  }
  ~MpiComm() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (owns_ && !finalized) MPI_Finalize();
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  int local_rank() const override { return local_rank_; }
  int local_size() const override { return local_size_; }
  std::string describe() const override {
    return "mpi (" + library_ + ", " + std::to_string(size_) + " ranks, " + std::to_string(local_size_) +
           " on this machine)";
  }

  void allreduce_sum(float* v, std::int64_t n) override { reduce(v, n, MPI_FLOAT, MPI_SUM); }
  void allreduce_sum(double* v, std::int64_t n) override { reduce(v, n, MPI_DOUBLE, MPI_SUM); }
  void allreduce_max(std::uint64_t* v, std::int64_t n) override { reduce(v, n, MPI_UINT64_T, MPI_MAX); }
  void broadcast(void* data, std::int64_t bytes, int root) override {
    auto* p = static_cast<unsigned char*>(data);
    for (std::int64_t o = 0; o < bytes; o += kChunk)
      check(MPI_Bcast(p + o, static_cast<int>(std::min(kChunk, bytes - o)), MPI_BYTE, root, MPI_COMM_WORLD),
            "MPI_Bcast");
  }
  [[noreturn]] void abort(int code) override {
    MPI_Abort(MPI_COMM_WORLD, code);
    std::_Exit(code);  // MPI_Abort does not return; in case an implementation does
  }

 private:
  template <class T>
  void reduce(T* v, std::int64_t n, MPI_Datatype type, MPI_Op op) {
    for (std::int64_t o = 0; o < n; o += kChunk)
      check(MPI_Allreduce(MPI_IN_PLACE, v + o, static_cast<int>(std::min(kChunk, n - o)), type, op, MPI_COMM_WORLD),
            "MPI_Allreduce");
  }

  int rank_ = 0, size_ = 1, local_rank_ = 0, local_size_ = 1;
  bool owns_ = false;
  std::string library_;
};

}  // namespace

std::unique_ptr<Communicator> make_mpi_communicator() { return std::make_unique<MpiComm>(); }

}  // namespace tasn::dist
