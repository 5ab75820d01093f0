// examples/dist/mpi_comm.h - the MPI communicator (CPU processes; also the NCCL backend's host
// side). Built into the static library tasn_dist_mpi when CMake finds MPI (Debian:
// libopenmpi-dev), which defines TASN_HAVE_MPI for its users; MPI's own types stay in
// mpi_comm.cpp, so nothing else includes <mpi.h>.
#pragma once

#include <memory>

#include "dist/comm.h"

namespace tasn::dist {

// MPI_Init_thread (MPI_THREAD_FUNNELED: only the training thread calls MPI) on first use and
// MPI_Finalize when the communicator is destroyed. Throws tasn::Error naming MPI's message when
// MPI cannot start.
std::unique_ptr<Communicator> make_mpi_communicator();

}  // namespace tasn::dist
