// tests/support/loss_calls.h - the loss operators' argument structs built from packed pointers
// and sizes (the form most tests hold their data in), and CPU calls through them. A null pointer
// gives an absent view. No Eigen, no CUDA: the GPU runners build their args with these too.
#pragma once

#include <cstdint>

#include "tasn/losses_common.h"

namespace tasn::test {

template <class T>
struct NonDeduced {
  using type = T;
};
template <class T>
using nd = typename NonDeduced<T>::type;

// Packed view of `sizes` at p, or an absent view when p is null.
template <class T>
Tensor1<T> view1(T* p, std::int64_t n) {
  return p ? Tensor1<T>(p, {n}) : Tensor1<T>();
}
template <class T>
Tensor2<T> view2(T* p, std::int64_t n, std::int64_t k) {
  return p ? Tensor2<T>(p, {n, k}) : Tensor2<T>();
}

template <class T>
DistillationArgs<T> distillation_args(const T* zs, const nd<T>* zt, std::int64_t n, std::int64_t k,
                                      const DistillationOptions& opt, nd<T>* loss, nd<T>* dstudent,
                                      nd<T>* dteacher = nullptr, const nd<T>* dloss = nullptr) {
  DistillationArgs<T> a;
  const std::int64_t nl = loss_elems(n, opt.reduction);
  a.student = view2(zs, n, k);
  a.teacher = view2(zt, n, k);
  a.loss = view1(loss, nl);
  a.dstudent = view2(dstudent, n, k);
  a.dteacher = view2(dteacher, n, k);
  a.dloss = view1(dloss, nl);
  a.options = opt;
  return a;
}

template <class T>
CrossEntropyArgs<T> cross_entropy_args(const T* z, const std::int64_t* labels, std::int64_t n, std::int64_t k,
                                       const CrossEntropyOptions& opt, nd<T>* loss, nd<T>* dlogits,
                                       const nd<T>* dloss = nullptr) {
  CrossEntropyArgs<T> a;
  const std::int64_t nl = loss_elems(n, opt.reduction);
  a.logits = view2(z, n, k);
  a.labels = view1(labels, n);
  a.loss = view1(loss, nl);
  a.dlogits = view2(dlogits, n, k);
  a.dloss = view1(dloss, nl);
  a.options = opt;
  return a;
}

template <class T>
TopkArgs<T> topk_args(const T* z, const std::int64_t* labels, std::int64_t n, std::int64_t k, std::int64_t max_k,
                      std::int64_t ignore_index, std::int64_t* correct) {
  TopkArgs<T> a;
  a.logits = view2(z, n, k);
  a.labels = view1(labels, n);
  a.correct = view1(correct, max_k);
  a.options.ignore_index = ignore_index;
  return a;
}

}  // namespace tasn::test
