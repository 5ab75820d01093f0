// tests/support/counting_allocator.h - replaces the global operator new / delete and glibc's
// malloc, calloc, realloc, posix_memalign, aligned_alloc and memalign by versions that report
// every allocation to tasn::test::note_allocation(bool from_operator_new), then allocate through
// glibc's internal entry points (__libc_*: an operator new is not reported a second time as a
// malloc). For allocation-counting programs of their own (tasn_dnnl_allocations,
// tasn_trainer_allocations): include it in exactly ONE translation unit of such a program, which
// defines note_allocation, after all other includes (system headers declare some of these functions
// with exception specifications the definitions must follow); never in a sanitizer build (the
// sanitizers replace the same functions).
#pragma once

#include <cerrno>
#include <cstddef>
#include <new>

namespace tasn::test {
// Defined by the program that includes this header; must not allocate.
void note_allocation(bool from_operator_new);
}  // namespace tasn::test

extern "C" {
void* __libc_malloc(std::size_t);
void* __libc_calloc(std::size_t, std::size_t);
void* __libc_realloc(void*, std::size_t);
void* __libc_memalign(std::size_t, std::size_t);
void __libc_free(void*);
}

void* operator new(std::size_t n) {
  tasn::test::note_allocation(true);
  if (void* p = __libc_malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t n) { return operator new(n); }
void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
  tasn::test::note_allocation(true);
  return __libc_malloc(n ? n : 1);
}
void* operator new[](std::size_t n, const std::nothrow_t& t) noexcept { return operator new(n, t); }
void* operator new(std::size_t n, std::align_val_t a) {
  tasn::test::note_allocation(true);
  if (void* p = __libc_memalign(static_cast<std::size_t>(a), n ? n : 1)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t n, std::align_val_t a) { return operator new(n, a); }
void operator delete(void* p) noexcept { __libc_free(p); }
void operator delete[](void* p) noexcept { __libc_free(p); }
void operator delete(void* p, std::size_t) noexcept { __libc_free(p); }
void operator delete[](void* p, std::size_t) noexcept { __libc_free(p); }
void operator delete(void* p, std::align_val_t) noexcept { __libc_free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { __libc_free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { __libc_free(p); }
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept { __libc_free(p); }

// malloc and friends (Eigen, OpenMP and oneDNN's buffers allocate through these).
extern "C" {
void* malloc(std::size_t n) {
  tasn::test::note_allocation(false);
  return __libc_malloc(n);
}
void* calloc(std::size_t n, std::size_t s) {
  tasn::test::note_allocation(false);
  return __libc_calloc(n, s);
}
void* realloc(void* p, std::size_t n) {
  tasn::test::note_allocation(false);
  return __libc_realloc(p, n);
}
void free(void* p) { __libc_free(p); }
int posix_memalign(void** out, std::size_t align, std::size_t n) {
  tasn::test::note_allocation(false);
  void* p = __libc_memalign(align, n);
  if (!p) return ENOMEM;
  *out = p;
  return 0;
}
void* aligned_alloc(std::size_t align, std::size_t n) {
  tasn::test::note_allocation(false);
  return __libc_memalign(align, n);
}
void* memalign(std::size_t align, std::size_t n) {
  tasn::test::note_allocation(false);
  return __libc_memalign(align, n);
}
}
