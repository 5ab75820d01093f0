// tasn/core/parallel.h - CPU threading for the operators' CPU paths (OpenMP).
//
// The CPU path uses OpenMP threads. The thread count follows OMP_NUM_THREADS, or
// tasn::cpu::set_num_threads(). Nested calls run serially inside an outer parallel region, so an
// operator called from a caller's own parallel loop does not oversubscribe the machine.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <exception>

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace tasn::cpu {

// Number of threads a parallel_for started here would use.
inline int num_threads() {
#if defined(_OPENMP)
  return omp_in_parallel() ? 1 : omp_get_max_threads();
#else
  return 1;
#endif
}

inline void set_num_threads(int n) {
#if defined(_OPENMP)
  omp_set_num_threads(std::max(1, n));
#else
  (void)n;
#endif
}

// Scratch slots a parallel_for_slots started here uses: slot indices lie in [0, num_slots()).
// An operator sizes per-thread scratch in its workspace as num_slots() regions.
inline int num_slots() { return num_threads(); }

// Calls f(i, slot) for i in [begin, end), statically split over the available threads; `slot`
// (in [0, num_slots())) identifies the thread, so f may use per-slot scratch without locking.
// An exception thrown by f (e.g. a scratch allocation that failed, reported as
// tasn::InvalidArgument) is rethrown to the caller once the threads have joined; iterations not
// yet started are then skipped. (An exception must not leave an OpenMP region: that terminates.)
template <class F>
void parallel_for_slots(std::int64_t begin, std::int64_t end, F&& f) {
  if (end <= begin) return;
#if defined(_OPENMP)
  if (num_threads() > 1 && end - begin > 1) {
    std::exception_ptr error;
    std::atomic<bool> failed{false};
#pragma omp parallel for schedule(static)
    for (std::int64_t i = begin; i < end; ++i) {
      if (failed.load(std::memory_order_relaxed)) continue;
      try {
        f(i, omp_get_thread_num());
      } catch (...) {
#pragma omp critical(tasn_parallel_for_error)
        {
          if (!error) error = std::current_exception();
        }
        failed.store(true, std::memory_order_relaxed);
      }
    }
    if (error) std::rethrow_exception(error);
    return;
  }
#endif
  for (std::int64_t i = begin; i < end; ++i) f(i, 0);
}

// Calls f(i) for i in [begin, end), as parallel_for_slots.
template <class F>
void parallel_for(std::int64_t begin, std::int64_t end, F&& f) {
  parallel_for_slots(begin, end, [&](std::int64_t i, int) { f(i); });
}

}  // namespace tasn::cpu
