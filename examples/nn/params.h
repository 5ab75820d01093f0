// examples/nn/params.h - a network's parameters and buffers (BN running statistics) in ONE flat
// value buffer and ONE flat gradient buffer, with a name -> (offset, shape) table.
//
// Modules register what they own by torchvision name in a ParamStore (one per sub-network: "att",
// "master", "heads"), keep the Param* (stable: the store is a std::map) and read value.ptr() /
// grad.ptr() when they run. A model then lays all its stores out in one FlatParams: the trainable
// tensors first (so SGD, the non-finite check and zero_grad are single loops over
// [0, trainable_size())), then the buffers; every tensor starts 64-byte aligned (Eigen's
// vectorised loops, and so the results, depend on alignment). A checkpoint is the table plus one
// copy; names and the safetensors format are those of the per-tensor layout before it.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <new>
#include <string>
#include <utility>
#include <vector>

#include "nn/layers.h"

namespace tasn::nn {

// A 64-byte aligned array of T, zero-initialised.
template <class T>
class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  explicit AlignedBuffer(std::int64_t n) : n_(n) {
    if (n <= 0) return;
    const std::size_t bytes = (static_cast<std::size_t>(n) * sizeof(T) + 63) / 64 * 64;
    void* p = std::aligned_alloc(64, bytes);
    if (!p) throw std::bad_alloc();
    std::memset(p, 0, bytes);
    p_.reset(static_cast<T*>(p));
  }
  T* data() const { return p_.get(); }
  std::int64_t size() const { return n_; }

 private:
  struct Free {
    void operator()(T* p) const { std::free(p); }
  };
  std::unique_ptr<T, Free> p_;
  std::int64_t n_ = 0;
};

// A parameter's values (or gradient) inside the flat buffer: pointer + shape, non-owning.
template <class T>
class TensorSpan {
 public:
  using value_type = T;
  std::vector<std::int64_t> shape;

  TensorSpan() = default;
  TensorSpan(T* data, std::vector<std::int64_t> s) : shape(std::move(s)), data_(data) {}
  T* ptr() const { return data_; }
  bool bound() const { return data_ != nullptr; }
  std::int64_t numel() const {
    std::int64_t n = 1;
    for (auto d : shape) n *= d;
    return n;
  }
  std::int64_t dim(std::size_t i) const { return shape.at(i); }
  std::string shape_str() const { return shape_string(shape); }
  T* begin() const { return data_; }
  T* end() const { return data_ + numel(); }
  T& operator[](std::int64_t i) const { return data_[i]; }
  std::vector<T> to_vector() const { return std::vector<T>(begin(), end()); }
  // Replaces the values (numel of them, in row-major order).
  template <class Container>
  const TensorSpan& set(const Container& values) const {
    TASN_CHECK_ARG(bound(), "TensorSpan::set: the parameters are not allocated yet");
    TASN_CHECK_ARG(static_cast<std::int64_t>(values.size()) == numel(), "TensorSpan::set: ", values.size(),
                   " values for a tensor of shape ", shape_str(), " (", numel(), " elements)");
    std::copy(values.begin(), values.end(), data_);
    return *this;
  }
  void fill(T v) const { std::fill(begin(), end(), v); }

 private:
  T* data_ = nullptr;
};

// A named tensor with its gradient (parameters) or without (buffers: BN running statistics).
template <class T>
struct Param {
  TensorSpan<T> value, grad;  // grad is unbound for buffers
  bool trainable = true;
  T init = T(0);  // the value everything starts at when laid out (BN weights and running_var: 1)
};

template <class T>
class FlatParams;

// Parameters and buffers of one sub-network by torchvision name, in a stable (sorted) order.
template <class T>
class ParamStore {
 public:
  ParamStore() = default;
  ParamStore(const ParamStore&) = delete;
  ParamStore& operator=(const ParamStore&) = delete;

  Param<T>& add(const std::string& name, std::vector<std::int64_t> shape, bool trainable = true, T init = T(0)) {
    TASN_CHECK_ARG(!map_.count(name), "ParamStore: parameter ", name, " defined twice");
    TASN_CHECK_ARG(!laid_out_, "ParamStore: ", name, " added after the parameters were laid out");
    for (auto d : shape) TASN_CHECK_ARG(d >= 1, "ParamStore: ", name, " has shape ", shape_string(shape));
    Param<T>& p = map_[name];
    p.value = TensorSpan<T>(nullptr, shape);
    p.grad = TensorSpan<T>(nullptr, trainable ? shape : std::vector<std::int64_t>{});
    p.trainable = trainable;
    p.init = init;
    return p;
  }
  Param<T>& at(const std::string& name) {
    auto it = map_.find(name);
    TASN_CHECK_ARG(it != map_.end(), "ParamStore: no parameter named ", name);
    return it->second;
  }
  bool contains(const std::string& name) const { return map_.count(name) > 0; }
  std::map<std::string, Param<T>>& all() { return map_; }
  void zero_grad() {
    for (auto& [n, p] : map_)
      if (p.trainable) p.grad.fill(T(0));
  }
  // Lays this store out on its own (a stand-alone network: tests, benchmarks). A model lays its
  // stores out together with FlatParams instead.
  void allocate();
  bool allocated() const { return laid_out_; }

 private:
  friend class FlatParams<T>;
  std::map<std::string, Param<T>> map_;
  bool laid_out_ = false;
  std::unique_ptr<FlatParams<T>> own_;
};

template <class T>
class FlatParams {
 public:
  struct Entry {
    std::string name;  // "<store prefix>.<name>" (or "<name>" for an unnamed store)
    std::vector<std::int64_t> shape;
    std::int64_t offset = 0, numel = 0;
    bool trainable = true;
    Param<T>* param = nullptr;
  };

  FlatParams() = default;
  FlatParams(const FlatParams&) = delete;
  FlatParams& operator=(const FlatParams&) = delete;

  void add(const std::string& prefix, ParamStore<T>& ps) {
    TASN_CHECK_ARG(values_.size() == 0, "FlatParams: store ", prefix, " added after allocate()");
    stores_.push_back({prefix, &ps});
  }

  // Lays every store out (trainable first, then buffers; each tensor 64-byte aligned), allocates
  // the two buffers and binds every Param to its place, set to its initial value.
  void allocate() {
    constexpr std::int64_t align = 64 / static_cast<std::int64_t>(sizeof(T)) > 0 ? 64 / sizeof(T) : 1;
    auto up = [&](std::int64_t n) { return (n + align - 1) / align * align; };
    std::int64_t off = 0;
    ranges_.clear();
    for (int pass = 0; pass < 2; ++pass) {
      for (auto& [prefix, ps] : stores_) {
        const std::int64_t first = off;
        for (auto& [name, p] : ps->map_) {
          if (p.trainable != (pass == 0)) continue;
          Entry e{prefix.empty() ? name : prefix + "." + name, p.value.shape, off, p.value.numel(), p.trainable, &p};
          off = up(off + e.numel);
          table_.push_back(std::move(e));
        }
        if (pass == 0) ranges_.push_back({first, off});
      }
      if (pass == 0) trainable_ = off;
    }
    values_ = AlignedBuffer<T>(std::max<std::int64_t>(off, 1));
    grads_ = AlignedBuffer<T>(std::max<std::int64_t>(trainable_, 1));
    for (auto& e : table_) {
      e.param->value = TensorSpan<T>(values_.data() + e.offset, e.shape);
      e.param->value.fill(e.param->init);
      if (e.trainable) e.param->grad = TensorSpan<T>(grads_.data() + e.offset, e.shape);
    }
    for (auto& s : stores_) s.second->laid_out_ = true;
  }

  const std::vector<Entry>& table() const { return table_; }
  // [lo, hi) of the gradient buffer holding the trainable tensors of the store added as `prefix`
  // (a contiguous range: the stores' trainable tensors are laid out one store after the other).
  std::pair<std::int64_t, std::int64_t> trainable_range(const std::string& prefix) const {
    for (std::size_t i = 0; i < stores_.size(); ++i)
      if (stores_[i].first == prefix && i < ranges_.size()) return ranges_[i];
    throw InvalidArgument("FlatParams: no laid-out store named \"" + prefix + "\"");
  }
  const Entry* find(const std::string& name) const {
    for (const auto& e : table_)
      if (e.name == name) return &e;
    return nullptr;
  }
  // The first tensor of the table (trainable only: those of `buf`'s first trainable_size()
  // values) holding a NaN or an infinity in `buf` (values() or grads()), or nullptr: one pass over
  // the buffer, the table only when there is a culprit.
  const Entry* first_non_finite(const T* buf, bool trainable_only) const {
    const std::int64_t n = trainable_only ? trainable_ : values_.size();
    bool ok = true;
    for (std::int64_t i = 0; i < n; ++i) ok &= std::isfinite(buf[i]);
    if (ok) return nullptr;
    for (const auto& e : table_)
      if (!trainable_only || e.trainable)
        for (std::int64_t i = 0; i < e.numel; ++i)
          if (!std::isfinite(buf[e.offset + i])) return &e;
    return nullptr;
  }
  T* values() const { return values_.data(); }
  T* grads() const { return grads_.data(); }
  std::int64_t size() const { return values_.size(); }   // values, buffers and alignment padding
  std::int64_t trainable_size() const { return trainable_; }  // [0, this): trainable values = gradients
  std::int64_t count() const {  // elements of all tensors (no padding)
    std::int64_t n = 0;
    for (const auto& e : table_) n += e.numel;
    return n;
  }
  void zero_grad() { std::memset(static_cast<void*>(grads_.data()), 0, sizeof(T) * static_cast<std::size_t>(grads_.size())); }
  const std::vector<std::pair<std::string, ParamStore<T>*>>& stores() const { return stores_; }

 private:
  std::vector<std::pair<std::string, ParamStore<T>*>> stores_;
  std::vector<Entry> table_;
  std::vector<std::pair<std::int64_t, std::int64_t>> ranges_;  // trainable range of each store
  AlignedBuffer<T> values_, grads_;
  std::int64_t trainable_ = 0;
};

template <class T>
void ParamStore<T>::allocate() {
  TASN_CHECK_ARG(!laid_out_, "ParamStore::allocate: already laid out");
  own_ = std::make_unique<FlatParams<T>>();
  own_->add("", *this);
  own_->allocate();
}

}  // namespace tasn::nn
