// examples/gpu/cuda_exec.h - the trainer's GPU execution context: the same interface as
// nn::CpuExec (examples/nn/exec.h), so the modules and models of examples/nn and examples/train run
// on it unchanged (BasicTasnNet<float, nn::CudaExec>).
//
//   stream       one CUDA stream; every kernel, cuDNN / cuBLAS call and copy of a step is queued on
//                it, so device memory handed out by the arena is stream-ordered (a buffer may be
//                reused by the next call as soon as the host moves on).
//   arena        device memory: a BasicArena over cudaMalloc, reset at the start of every step;
//                after warm-up one chunk of the high-water size, so a step calls no cudaMalloc
//                (counted: device_allocations()).
//   staging      pinned host memory (cudaMallocHost, also an arena): batches go up through it in
//                chunks (the copy of chunk k overlaps the host copy of chunk k + 1), results come
//                back into it (fetch()), valid until the next step.
//   parameters   device copies of the model's flat value and gradient buffers and of the SGD
//                momentum (bind_params(), params_to_device(), params_to_host()); the fused SGD
//                update runs on the device (sgd_step()).
//   layers       cuDNN convolution and batch norm, cuBLAS linear (gpu/dnn.h), small kernels
//                (gpu/kernels.h: ReLU, residual join, pooling, resize, SGD, non-finite check), and
//                the library's CUDA operators (gpu/tasn_ops.h).
//
// ONE host synchronisation per step: the model fetch()es its losses and counts, check_grads()
// queues the non-finite check of every gradient into the same read-back, and synchronize() waits
// once. The library operators run with check_finite = false (their checks would synchronise): a
// non-finite value reaches the losses, which the trainer checks on the host.
//
// float storage. tf32 = true lets cuDNN and cuBLAS use TF32 tensor cores (10-bit mantissa inputs,
// float accumulation); off by default (plain FP32 as the CPU).
//
// Data parallelism (set_comm, docs/distributed.md): one rank per GPU, the gradients summed over the
// ranks by NCCL (dist/nccl_comm.h, in builds with TASN_HAVE_NCCL) on a second stream, the comm
// stream. The model calls grads_ready(lo, hi) as each parameter store's backward ends: an event on
// the compute stream, the comm stream waits for it and all-reduces that bucket while the compute
// stream goes on with the rest of the backward. sgd_step all-reduces whatever no bucket covered,
// makes the compute stream wait for the comm stream, then decides about non-finite gradients on
// the SUMMED gradients (so every rank decides the same) with one more small host synchronisation,
// and updates. Without NCCL the step keeps its single synchronisation.
#pragma once

#include <cuda_runtime_api.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <exception>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "dist/comm.h"
#if defined(TASN_HAVE_NCCL)
#include "dist/nccl_comm.h"
#endif
#include "gpu/device_memory.h"
#include "gpu/dnn.h"
#include "gpu/kernels.h"
#include "gpu/tasn_ops.h"
#include "nn/arena.h"
#include "nn/exec.h"
#include "nn/layers.h"
#include "nn/params.h"
#include "tasn/core/cuda_check.cuh"

namespace tasn::nn {

// "" when device `device` can run the trainer, else why not (no driver, no device, ...): asked
// before any data is prepared, so that --device cuda fails at once with the reason.
inline std::string cuda_device_problem(int device = 0) {
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    return std::string("no usable CUDA driver or device (cudaGetDeviceCount: ") + cudaGetErrorString(e) + ")";
  }
  if (count == 0) return "no CUDA device (cudaGetDeviceCount found 0)";
  if (device < 0 || device >= count)
    return "CUDA device " + std::to_string(device) + " does not exist (" + std::to_string(count) + " found)";
  return "";
}

struct CudaOptions {
  int device = 0;
  bool tf32 = false;  // TF32 tensor cores for convolutions and GEMMs
  // All-reduce the gradients with NCCL even at world size 1 (set_comm with a single process): the
  // GPU check's test of the NCCL path on one GPU. With more than one rank NCCL is always used.
  bool nccl = false;
};

// True when this build can all-reduce gradients on the GPU (NCCL found by CMake).
constexpr bool nccl_built() {
#if defined(TASN_HAVE_NCCL)
  return true;
#else
  return false;
#endif
}

class CudaExec {
 public:
  using value_type = float;
  using act_type = float;  // activations (CudaBf16Exec: bf16)
  using T = float;
  static constexpr bool kHostMemory = false;

  explicit CudaExec(const CudaOptions& o = {}) : opt_(o) {
    const std::string why = cuda_device_problem(o.device);
    if (!why.empty()) throw CudaError("CudaExec: " + why);
    try {  // a failure part-way releases what was made (the destructor does not run)
      TASN_CUDA_CHECK(cudaSetDevice(o.device));
      TASN_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
      dnn_ = std::make_unique<gpu::Dnn>();
      dnn_->set_stream(stream_);
      dnn_->set_tf32(o.tf32);
      ctx_ = {stream_, dnn_->cublas()};
      flag_ = static_cast<int*>(DeviceMemory::allocate(256, 256));
      for (auto& e : events_) TASN_CUDA_CHECK(cudaEventCreate(&e));
      for (auto& e : sgd_events_) TASN_CUDA_CHECK(cudaEventCreate(&e));
    } catch (...) {
      release();
      throw;
    }
  }
  ~CudaExec() { release(); }
  CudaExec(const CudaExec&) = delete;
  CudaExec& operator=(const CudaExec&) = delete;

 private:
  void release() {
    // A context destroyed while an exception propagates (a failed step, maybe a rank whose peers
    // are inside a collective) aborts its NCCL communicator first: waiting for the streams or
    // ncclCommDestroy could otherwise hang on a peer that never comes.
    if (std::uncaught_exceptions() > 0) abort_comm();
    if (stream_) cudaStreamSynchronize(stream_);
    end_comm();
    dnn_.reset();
    for (auto& e : events_)
      if (e) cudaEventDestroy(e);
    for (auto& e : sgd_events_)
      if (e) cudaEventDestroy(e);
    if (flag_) DeviceMemory::release(flag_);
    for (float* p : {values_, grads_, momentum_})
      if (p) DeviceMemory::release(p);
    if (stream_) cudaStreamDestroy(stream_);
    stream_ = nullptr;
    if (comm_stream_) cudaStreamDestroy(comm_stream_);
    comm_stream_ = nullptr;
    for (cudaEvent_t e : {ready_, comm_done_})
      if (e) cudaEventDestroy(e);
    ready_ = comm_done_ = nullptr;
    for (auto& b : bucket_events_)
      for (cudaEvent_t e : b)
        if (e) cudaEventDestroy(e);
    bucket_events_.clear();
  }

 public:

  std::string describe() const {
    cudaDeviceProp p{};
    if (cudaGetDeviceProperties(&p, opt_.device) != cudaSuccess) return "cuda";
    char buf[512];
    std::snprintf(buf, sizeof buf, "cuda:%d (%s, compute capability %d.%d, %.0f GiB; %s)", opt_.device, p.name, p.major,
                  p.minor, double(p.totalGlobalMem) / double(1ull << 30), opt_.tf32 ? "TF32" : "FP32");
    std::string d = buf;
#if defined(TASN_HAVE_NCCL)
    if (nccl_) d.insert(d.size() - 1, "; " + nccl_->describe());
#endif
    return d;
  }
  cudaStream_t stream() const { return stream_; }
  gpu::Dnn& dnn() { return *dnn_; }
  BasicArena<DeviceMemory>& arena() { return arena_; }
  BasicArena<PinnedMemory>& staging() { return staging_; }
  void begin_step() {
    arena_.reset();
    staging_.reset();
    recorded_ = 0;
    pending_flag_ = nullptr;  // (a step that threw before its read-back leaves nothing behind)
    grads_nonfinite_ = false;
  }

  // ---- activations from the device arena -----------------------------------------------------------
  // act() of the activation type by default, mat() of the value type; either of any type U.
  template <class U = T>
  Tensor4<U> act(std::int64_t n, std::int64_t c, std::int64_t h, std::int64_t w, bool zero = false) {
    return Tensor4<U>(alloc<U>(n * c * h * w, zero), {n, c, h, w});
  }
  template <class U = T>
  Tensor2<U> mat(std::int64_t n, std::int64_t f, bool zero = false) {
    return Tensor2<U>(alloc<U>(n * f, zero), {n, f});
  }
  template <class U>
  U* buffer(std::int64_t n) {
    return arena_.alloc<U>(n);
  }

  // ---- convolution, batch norm (cuDNN) ----------------------------------------------------------------
  void conv_forward(const ConvGeometry& g, const T* x, const T* w, const T* b, T* y) {
    Scratch s(arena_);
    dnn_->conv_forward(g, x, w, b, y, s);
  }
  void conv_backward(const ConvGeometry& g, const T* x, const T* w, const T* dy, T* dx, bool accumulate, T* dw, T* db) {
    if (dx) {
      Scratch s(arena_);
      dnn_->conv_backward_data(g, w, dy, dx, accumulate, s);
    }
    if (dw || db) {
      Scratch s(arena_);
      dnn_->conv_backward_weights(g, x, dy, dw, db, s);
    }
  }
  // Keeps mean and 1 / sqrt(var + eps) (cuDNN's saved statistics) and, with relu_after, the output
  // (its sign is the ReLU mask).
  BnSaved<T> bn_forward(std::int64_t N, std::int64_t C, std::int64_t P, const T* x, const T* gamma, const T* beta,
                        T* running_mean, T* running_var, const BatchNormState& s, bool relu_after, T* y) {
    BnSaved<T> saved{arena_.alloc<T>(2 * C), s.training, relu_after, y, nullptr};
    if (s.training)
      dnn_->bn_forward_training(N, C, P, s.eps, s.momentum, x, gamma, beta, running_mean, running_var, saved.stats,
                                saved.stats + C, y);
    else
      dnn_->bn_forward_inference(N, C, P, s.eps, x, gamma, beta, running_mean, running_var, y);
    if (relu_after) gpu::relu(stream_, y, y, N * C * P);
    return saved;
  }
  void bn_backward(std::int64_t N, std::int64_t C, std::int64_t P, const T* x, const T* gamma, const T* dy,
                   const BnSaved<T>& saved, double eps, T* dx, bool accumulate, T* dgamma, T* dbeta) {
    TASN_CHECK_ARG(saved.training, "CudaExec::bn_backward: the forward ran in evaluation mode (no batch statistics)");
    const auto mark = arena_.mark();
    const T* d = dy;
    if (saved.relu) {
      T* r = arena_.alloc<T>(N * C * P);
      gpu::relu_grad(stream_, saved.y, dy, r, N * C * P, false);
      d = r;
    }
    dnn_->bn_backward(N, C, P, eps, x, gamma, d, saved.stats, saved.stats + C, dx, accumulate, dgamma, dbeta);
    arena_.rewind(mark);
  }

  // ---- parameters ----------------------------------------------------------------------------------
  T* value(const Param<T>& p) { return values_ + (p.value.ptr() - host_values_); }
  T* grad(const Param<T>& p) { return grads_ + (p.grad.ptr() - host_grads_); }
  // The weights convolutions and linear layers compute with (CudaBf16Exec: its bf16 copy).
  const T* weight(const Param<T>& p) { return value(p); }
  // Device copies of the flat buffers (values uploaded); once, after the model laid them out.
  void bind_params(FlatParams<T>& p) {
    TASN_CHECK_ARG(!values_, "CudaExec::bind_params: a context serves one model");
    host_values_ = p.values();
    host_grads_ = p.grads();
    size_ = p.size();
    trainable_ = p.trainable_size();
    values_ = static_cast<T*>(DeviceMemory::allocate(256, bytes(size_)));
    grads_ = static_cast<T*>(DeviceMemory::allocate(256, bytes(std::max<std::int64_t>(trainable_, 1))));
    upload_values(p);
  }
  // Host -> device: the values, and the momentum of opt when it has one.
  template <class Opt>
  void params_to_device(FlatParams<T>& p, Opt* opt) {
    check_bound(p);
    if (opt && opt->momentum()) upload_momentum(opt->momentum());
    upload_values(p);
  }
  // Device -> host: the values (parameters and batch-norm statistics), and the momentum.
  template <class Opt>
  void params_to_host(FlatParams<T>& p, Opt* opt) {
    check_bound(p);
    TASN_CUDA_CHECK(cudaMemcpyAsync(p.values(), values_, bytes(size_), cudaMemcpyDeviceToHost, stream_));
    if (opt && opt->momentum() && momentum_ && momentum_owner_ == opt->momentum())  // else the host's is current
      TASN_CUDA_CHECK(cudaMemcpyAsync(opt->momentum(), momentum_, bytes(trainable_), cudaMemcpyDeviceToHost, stream_));
    TASN_CUDA_CHECK(cudaStreamSynchronize(stream_));
  }
  void grads_to_host(FlatParams<T>& p) {
    check_bound(p);
    wait_comm();  // the buckets all-reduced so far (all of them after sgd_step)
    TASN_CUDA_CHECK(cudaMemcpyAsync(p.grads(), grads_, bytes(trainable_), cudaMemcpyDeviceToHost, stream_));
    TASN_CUDA_CHECK(cudaStreamSynchronize(stream_));
  }
  // The start of a step's gradients: also of its all-reduce buckets (after the last step's
  // all-reduce, which may still run when its update was skipped).
  void zero_grads(FlatParams<T>&) {
    wait_comm();
    launched_.clear();
    TASN_CUDA_CHECK(cudaMemsetAsync(grads_, 0, bytes(trainable_), stream_));
  }
  // Queues the non-finite check of every gradient into the step's read-back (see sgd_step). With
  // NCCL the check waits for the all-reduce instead: sgd_step makes it on the summed gradients.
  void check_grads(FlatParams<T>&) {
    if (nccl_active()) return;
    TASN_CUDA_CHECK(cudaMemsetAsync(flag_, 0, sizeof(int), stream_));
    gpu::nonfinite_any(stream_, grads_, trainable_, flag_);
    pending_flag_ = fetch(flag_, 1);
  }
  // The fused update on the device. A step whose gradients were flagged brings them to the host,
  // where the optimiser finds and names the first bad tensor and refuses the step (nothing changes).
  //
  // With NCCL (set_comm): first the all-reduce of every gradient no grads_ready bucket covered,
  // the compute stream waits for the comm stream, and the non-finite check runs on the summed
  // gradients, read back at once (the step's second synchronisation): identical on every rank,
  // so every rank refuses or applies the same update.
  template <class Opt>
  bool sgd_step(FlatParams<T>& p, Opt& opt, double lr, double rescale) {
    check_bound(p);
    if (nccl_active()) {
      finish_allreduce();
      TASN_CUDA_CHECK(cudaMemsetAsync(flag_, 0, sizeof(int), stream_));
      gpu::nonfinite_any(stream_, grads_, trainable_, flag_);
      const int* flag = fetch(flag_, 1);
      TASN_CUDA_CHECK(cudaStreamSynchronize(stream_));
      check_comm();
      grads_nonfinite_ = *flag != 0;
    }
    if (grads_nonfinite_) {
      TASN_CUDA_CHECK(cudaMemcpyAsync(p.grads(), grads_, bytes(trainable_), cudaMemcpyDeviceToHost, stream_));
      TASN_CUDA_CHECK(cudaStreamSynchronize(stream_));
      if (!opt.step(lr, rescale)) return false;
      // The device flagged a gradient the host finds finite: the two checks disagree (a bug). The
      // host values are stale (the device holds the parameters), so nothing may continue.
      throw Error("CudaExec::sgd_step: the device found a non-finite gradient the host does not (internal error)");
    }
    const auto& o = opt.options();
    float* v = nullptr;
    if (opt.momentum()) {
      // The device copy belongs to one optimiser: another one (a new run) brings its own values.
      if (momentum_owner_ != opt.momentum()) upload_momentum(opt.momentum());
      v = momentum_;
    }
    TASN_CUDA_CHECK(cudaEventRecord(sgd_events_[0], stream_));
    gpu::sgd(stream_, trainable_, values_, grads_, v, static_cast<float>(lr), static_cast<float>(o.momentum),
             static_cast<float>(o.weight_decay), static_cast<float>(rescale));
    TASN_CUDA_CHECK(cudaEventRecord(sgd_events_[1], stream_));
    sgd_recorded_ = true;
    return true;
  }

  // ---- data parallelism (dist/comm.h, dist/nccl_comm.h) ----------------------------------------------
  // c: the host communicator of the job (null or a single process: alone). NCCL all-reduces the
  // gradients when c has more than one rank, or with CudaOptions::nccl; every rank must use its
  // own GPU (CudaOptions::device = c->local_rank() on one machine). Creating the NCCL communicator
  // is collective: every rank calls set_comm together. sync_bn is refused (cuDNN's batch norm
  // computes per-GPU statistics). A later call replaces the communicator.
  void set_comm(dist::Communicator* c, bool sync_bn) {
    TASN_CHECK_ARG(!sync_bn,
                   "--sync-bn is CPU only for now: cuDNN's batch norm computes per-GPU statistics (run without "
                   "--sync-bn, or with --device cpu)");
    const bool want = c && (c->size() > 1 || opt_.nccl);
    end_comm();
    if (!want) return;
#if defined(TASN_HAVE_NCCL)
    if (!comm_stream_) {  // the comm stream (highest priority: its kernels start as soon as a bucket is ready)
      int least = 0, greatest = 0;
      TASN_CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&least, &greatest));
      TASN_CUDA_CHECK(cudaStreamCreateWithPriority(&comm_stream_, cudaStreamNonBlocking, greatest));
      TASN_CUDA_CHECK(cudaEventCreateWithFlags(&ready_, cudaEventDisableTiming));
      TASN_CUDA_CHECK(cudaEventCreateWithFlags(&comm_done_, cudaEventDisableTiming));
    }
    launched_.clear();
    launched_.reserve(16);
    timed_buckets_ = 0;
    nccl_ = std::make_unique<dist::NcclComm>(*c, opt_.device);
#else
    throw InvalidArgument(std::string("this build has no NCCL, which ") +
                          (c->size() > 1 ? "training on " + std::to_string(c->size()) + " GPUs" : std::string("--comm nccl")) +
                          " needs (CMake looks in the CUDA toolkit, NCCL_ROOT and PyTorch's nvidia-nccl wheel; "
                          "see cmake/tasnNccl.cmake, TASN_NCCL=ON makes it required)");
#endif
  }
  // The gradients [lo, hi) of the flat buffer are final for this step: with NCCL their all-reduce
  // starts now on the comm stream, overlapping what the compute stream still has to do (it never
  // touches them again this step). Buckets of one step must not overlap; every rank must report
  // the same buckets in the same order. Without NCCL nothing (sgd_step has nothing to sum).
  void grads_ready(FlatParams<T>& p, std::int64_t lo, std::int64_t hi) {
    if (!nccl_active()) return;
    check_bound(p);
    TASN_CHECK_ARG(0 <= lo && lo <= hi && hi <= trainable_, "CudaExec::grads_ready: [", lo, ", ", hi,
                   ") is not within the ", trainable_, " gradients");
    for (const auto& r : launched_)
      TASN_CHECK_ARG(hi <= r.first || r.second <= lo, "CudaExec::grads_ready: [", lo, ", ", hi, ") overlaps [", r.first,
                     ", ", r.second, "), all-reduced already in this step");
    if (lo < hi) launch_bucket(lo, hi);
  }
  // Device time of the last step's gradient all-reduce: the sum over its buckets of the comm
  // stream's time from a bucket's start (after it waited for its gradients) to its end; 0 without
  // NCCL. (NCCL does nothing for an in-place sum over ONE rank, so at world size 1 this is only the
  // cost of the launches: about 0.) Waits for the last bucket; valid until the next train step.
  // -1 without NCCL (no data parallelism to time).
  double comm_seconds() const {
    if (!nccl_active()) return -1;
    double s = 0;
    for (int i = 0; i < timed_buckets_; ++i) s += bucket_seconds(i, i);
    return s;
  }
  // From the first bucket's start to the last bucket's end: the all-reduce with the part of the
  // backward it overlapped (>= comm_seconds()).
  double comm_span_seconds() const { return timed_buckets_ > 0 ? bucket_seconds(0, timed_buckets_ - 1) : 0; }
  // Buckets (all-reduce calls) of the last step, the remainder sgd_step reduced included.
  int comm_buckets() const { return timed_buckets_; }
  // True when gradients are all-reduced with NCCL (set_comm asked for it).
  bool nccl_active() const {
#if defined(TASN_HAVE_NCCL)
    return nccl_ != nullptr;
#else
    return false;
#endif
  }
  // For error paths (a rank about to stop the job): ncclCommAbort, so that no stream waits in a
  // collective for a peer that stopped. Never throws; the context is unusable for training after.
  void abort_comm() noexcept {
#if defined(TASN_HAVE_NCCL)
    if (nccl_) nccl_->abort();
#endif
  }

  // ---- element-wise passes, pooling, resize, linear -------------------------------------------------
  void relu(const T* x, T* y, std::int64_t n) { gpu::relu(stream_, x, y, n); }
  void relu_grad(const T* y, const T* dy, T* dx, std::int64_t n, bool accumulate) {
    gpu::relu_grad(stream_, y, dy, dx, n, accumulate);
  }
  void add_relu(const T* a, const T* b, T* y, std::int64_t n) { gpu::add_relu(stream_, a, b, y, n); }
  void add_inplace(T* y, const T* x, std::int64_t n) { gpu::add_inplace(stream_, y, x, n); }
  void axpy(std::int64_t n, T alpha, const T* x, T* y) { gpu::axpy(stream_, n, alpha, x, y); }
  void maxpool2d(std::int64_t NC, std::int64_t H, std::int64_t W, const PoolArgs& a, const T* x, T* y,
                 std::int64_t* argmax) {
    gpu::maxpool2d(stream_, NC, H, W, a.kernel, a.stride, a.padding, x, y, argmax);
  }
  void maxpool2d_grad(std::int64_t NC, std::int64_t H, std::int64_t W, std::int64_t Ho, std::int64_t Wo,
                      const PoolArgs& a, const T* dy, const std::int64_t* argmax, T* dx) {
    gpu::maxpool2d_grad(stream_, NC, H, W, Ho, Wo, a.kernel, a.stride, a.padding, dy, argmax, dx);
  }
  void global_avgpool(std::int64_t NC, std::int64_t P, const T* x, T* y) { gpu::global_avgpool(stream_, NC, P, x, y); }
  void global_avgpool_grad(std::int64_t NC, std::int64_t P, const T* dy, T* dx, bool accumulate) {
    gpu::global_avgpool_grad(stream_, NC, P, dy, dx, accumulate);
  }
  void resize_bilinear(std::int64_t NC, std::int64_t H, std::int64_t W, std::int64_t Ho, std::int64_t Wo,
                       bool align_corners, const T* x, T* y) {
    gpu::resize_bilinear(stream_, NC, H, W, Ho, Wo, align_corners, x, y);
  }
  void linear(std::int64_t N, std::int64_t I, std::int64_t O, const T* x, const T* w, const T* b, T* y) {
    dnn_->linear_forward(N, I, O, x, w, b, y);
  }
  void linear_grad(std::int64_t N, std::int64_t I, std::int64_t O, const T* x, const T* w, const T* dy, T* dx, T* dw,
                   T* db) {
    dnn_->linear_backward(N, I, O, x, w, dy, dx, true, dw, db);
  }

  // ---- the library's operators (check_finite must be off: see the top) -------------------------------
#define TASN_CUDA_EXEC_OP(Args, name) \
  void name(const Args<T>& a) { gpu::name(ctx_, a, ws(gpu::workspace_bytes(a))); }
  TASN_GPU_TRAINER_OPS(TASN_CUDA_EXEC_OP)
#undef TASN_CUDA_EXEC_OP

  // ---- host <-> device -------------------------------------------------------------------------------
  // The batch's images on the device: through pinned staging in chunks, each chunk's upload queued
  // as soon as it is staged, so the DMA of one overlaps the host copy of the next.
  Tensor4<const T> images(const std::vector<T>& v, std::int64_t n, std::int64_t side) {
    const std::int64_t total = n * 3 * side * side;
    TASN_CHECK_ARG(static_cast<std::int64_t>(v.size()) == total, "CudaExec::images: ", v.size(), " values for ", n,
                   " images of (3, ", side, ", ", side, ")");
    T* d = arena_.alloc<T>(total);
    T* h = staging_.alloc<T>(total);
    const std::int64_t chunk = std::max<std::int64_t>(std::int64_t(1) << 20, (total + 7) / 8);
    for (std::int64_t at = 0; at < total; at += chunk) {
      const std::int64_t k = std::min(chunk, total - at);
      std::memcpy(h + at, v.data() + at, bytes(k));
      TASN_CUDA_CHECK(cudaMemcpyAsync(d + at, h + at, bytes(k), cudaMemcpyHostToDevice, stream_));
    }
    return Tensor4<const T>(d, {n, 3, side, side});
  }
  template <class U>
  const U* upload(const std::vector<U>& v) {
    const std::int64_t n = static_cast<std::int64_t>(v.size());
    U* h = staging_.alloc<U>(n);
    U* d = arena_.alloc<U>(n);
    if (n > 0) {
      std::memcpy(static_cast<void*>(h), v.data(), sizeof(U) * v.size());
      TASN_CUDA_CHECK(cudaMemcpyAsync(d, h, sizeof(U) * v.size(), cudaMemcpyHostToDevice, stream_));
    }
    return d;
  }
  // A host copy of n values of device memory, readable after synchronize() until the next step.
  template <class U>
  const U* fetch(const U* p, std::int64_t n) {
    U* h = staging_.alloc<U>(n);
    if (n > 0) TASN_CUDA_CHECK(cudaMemcpyAsync(h, p, sizeof(U) * static_cast<std::size_t>(n), cudaMemcpyDeviceToHost, stream_));
    return h;
  }
  // Waits for everything queued (the step's one synchronisation); reads the gradient flag.
  void synchronize() {
    TASN_CUDA_CHECK(cudaStreamSynchronize(stream_));
    if (pending_flag_) {
      grads_nonfinite_ = *pending_flag_ != 0;
      pending_flag_ = nullptr;
    }
  }
  // Time marks (see CpuExec): CUDA events on the stream, read after synchronize().
  static constexpr int kMarks = 8;
  void mark(int i) {
    TASN_CUDA_CHECK(cudaEventRecord(events_[static_cast<std::size_t>(i)], stream_));
    recorded_ |= 1u << i;
  }
  double seconds(int i, int j) const {
    if (!(recorded_ >> i & 1u) || !(recorded_ >> j & 1u)) return 0;
    float ms = 0;
    TASN_CUDA_CHECK(cudaEventElapsedTime(&ms, events_[static_cast<std::size_t>(i)], events_[static_cast<std::size_t>(j)]));
    return ms * 1e-3;
  }
  // Device time of the last SGD update (waits for it: for --timing only).
  double sgd_seconds() const {
    if (!sgd_recorded_) return 0;
    TASN_CUDA_CHECK(cudaEventSynchronize(sgd_events_[1]));
    float ms = 0;
    TASN_CUDA_CHECK(cudaEventElapsedTime(&ms, sgd_events_[0], sgd_events_[1]));
    return ms * 1e-3;
  }
  // Device memory in use by this context, for the --timing report.
  std::string memory_report() const {
    std::size_t free_b = 0, total_b = 0;
    cudaMemGetInfo(&free_b, &total_b);
    char buf[256];
    std::snprintf(buf, sizeof buf,
                  "device memory: arena high water %.1f MiB, parameters + gradients + momentum %.1f MiB, pinned "
                  "staging %.1f MiB; in use on the device %.2f GiB of %.0f GiB",
                  double(arena_.high_water()) / (1 << 20),
                  double(bytes(size_) + bytes(trainable_) * (momentum_ ? 2 : 1)) / (1 << 20),
                  double(staging_.capacity()) / (1 << 20), double(total_b - free_b) / double(1ull << 30),
                  double(total_b) / double(1ull << 30));
    return buf;
  }

  template <class U, int R>
  bool all_finite(TensorRef<U, R>, bool = false) {
    return true;  // deferred: NaN reaches the losses, read back once per step
  }
  bool last_grads_nonfinite() const { return grads_nonfinite_; }

 protected:  // (CudaBf16Exec, gpu/cuda_bf16_exec.h, builds on these)
  // ---- the gradient all-reduce (NCCL) -----------------------------------------------------------------
  // One bucket: the comm stream waits for the compute stream's work so far, then sums grads_[lo, hi)
  // over the ranks between two timing events.
  void launch_bucket(std::int64_t lo, std::int64_t hi) {
#if defined(TASN_HAVE_NCCL)
    const std::size_t i = launched_.size();
    if (i == bucket_events_.size()) {  // once per bucket index (the first step): no device memory
      std::array<cudaEvent_t, 2> e{};
      for (auto& x : e) TASN_CUDA_CHECK(cudaEventCreate(&x));
      bucket_events_.push_back(e);
    }
    TASN_CUDA_CHECK(cudaEventRecord(ready_, stream_));
    TASN_CUDA_CHECK(cudaStreamWaitEvent(comm_stream_, ready_, 0));
    TASN_CUDA_CHECK(cudaEventRecord(bucket_events_[i][0], comm_stream_));
    nccl_->allreduce_sum(grads_ + lo, hi - lo, comm_stream_);
    TASN_CUDA_CHECK(cudaEventRecord(bucket_events_[i][1], comm_stream_));
    launched_.emplace_back(lo, hi);
    comm_pending_ = true;
#else
    (void)lo, (void)hi;
#endif
  }
  // The all-reduce of [0, trainable_) not launched by grads_ready (every gradient, without the
  // model's hooks), then the compute stream waits for all of it.
  void finish_allreduce() {
    std::sort(launched_.begin(), launched_.end());
    const std::size_t n = launched_.size();
    std::int64_t at = 0;
    for (std::size_t i = 0; i <= n; ++i) {  // by index: launch_bucket appends to launched_
      const std::int64_t end = i < n ? launched_[i].first : trainable_;
      if (at < end) launch_bucket(at, end);
      if (i < n) at = launched_[i].second;
    }
    timed_buckets_ = static_cast<int>(launched_.size());
    wait_comm();
  }
  // The compute stream waits for everything queued on the comm stream so far.
  void wait_comm() {
    if (!comm_pending_) return;
    TASN_CUDA_CHECK(cudaEventRecord(comm_done_, comm_stream_));
    TASN_CUDA_CHECK(cudaStreamWaitEvent(stream_, comm_done_, 0));
    comm_pending_ = false;
  }
  // An asynchronous NCCL error (a peer gone) as tasn::Error.
  void check_comm() const {
#if defined(TASN_HAVE_NCCL)
    if (nccl_) nccl_->check_async();
#endif
  }
  // Seconds from bucket i's start to bucket j's end (waits for j's end).
  double bucket_seconds(int i, int j) const {
    TASN_CUDA_CHECK(cudaEventSynchronize(bucket_events_[static_cast<std::size_t>(j)][1]));
    float ms = 0;
    TASN_CUDA_CHECK(cudaEventElapsedTime(&ms, bucket_events_[static_cast<std::size_t>(i)][0],
                                         bucket_events_[static_cast<std::size_t>(j)][1]));
    return ms * 1e-3;
  }
  // The NCCL communicator's work finished (or aborted), then the communicator destroyed.
  void end_comm() noexcept {
#if defined(TASN_HAVE_NCCL)
    if (comm_stream_) cudaStreamSynchronize(comm_stream_);
    nccl_.reset();
#endif
    comm_pending_ = false;
    launched_.clear();
    timed_buckets_ = 0;
  }

  // cuDNN's scratch from the device arena; released (stream-ordered) when the call returns.
  class Scratch final : public gpu::DeviceScratch {
   public:
    explicit Scratch(BasicArena<DeviceMemory>& a) : a_(a), mark_(a.mark()) {}
    ~Scratch() { a_.rewind(mark_); }
    void* get(std::size_t bytes) override { return a_.bytes(bytes); }

   private:
    BasicArena<DeviceMemory>& a_;
    BasicArena<DeviceMemory>::Mark mark_;
  };

  static std::size_t bytes(std::int64_t n) { return sizeof(T) * static_cast<std::size_t>(n); }
  template <class U>
  U* alloc(std::int64_t n, bool zero) {
    U* p = arena_.alloc<U>(n);
    if (zero && n > 0) TASN_CUDA_CHECK(cudaMemsetAsync(p, 0, sizeof(U) * static_cast<std::size_t>(n), stream_));
    return p;
  }
  tasn::Workspace ws(std::size_t b) {
    if (b == 0) return {};
    return {arena_.bytes(b), b};  // the device arena aligns to 256 bytes
  }
  void check_bound(const FlatParams<T>& p) const {
    TASN_CHECK_ARG(values_ && p.values() == host_values_, "CudaExec: parameters not bound (bind_params) or another model's");
  }
  // The host values to the device; waits (the host buffers may change after return).
  void upload_values(const FlatParams<T>& p) {
    TASN_CUDA_CHECK(cudaMemcpyAsync(values_, p.values(), bytes(size_), cudaMemcpyHostToDevice, stream_));
    TASN_CUDA_CHECK(cudaStreamSynchronize(stream_));
  }
  // The device copy of an optimiser's momentum (its host buffer: zero, or a loaded checkpoint's).
  void upload_momentum(const T* host) {
    if (!momentum_) momentum_ = static_cast<T*>(DeviceMemory::allocate(256, bytes(std::max<std::int64_t>(trainable_, 1))));
    TASN_CUDA_CHECK(cudaMemcpyAsync(momentum_, host, bytes(trainable_), cudaMemcpyHostToDevice, stream_));
    momentum_owner_ = host;
  }

  CudaOptions opt_;
  cudaStream_t stream_ = nullptr;
  std::unique_ptr<gpu::Dnn> dnn_;
  ::tasn::cuda::Context ctx_{};
  BasicArena<DeviceMemory> arena_;
  BasicArena<PinnedMemory> staging_;
  const T* host_values_ = nullptr;
  const T* host_grads_ = nullptr;
  std::int64_t size_ = 0, trainable_ = 0;
  T *values_ = nullptr, *grads_ = nullptr, *momentum_ = nullptr;
  const T* momentum_owner_ = nullptr;  // the host momentum buffer the device copy was taken from
  int* flag_ = nullptr;
  std::array<cudaEvent_t, kMarks> events_{};
  std::array<cudaEvent_t, 2> sgd_events_{};
  unsigned recorded_ = 0;
  bool sgd_recorded_ = false;
  const int* pending_flag_ = nullptr;
  bool grads_nonfinite_ = false;
  // data parallelism
#if defined(TASN_HAVE_NCCL)
  std::unique_ptr<dist::NcclComm> nccl_;
#endif
  cudaStream_t comm_stream_ = nullptr;
  cudaEvent_t ready_ = nullptr, comm_done_ = nullptr;            // stream order only (no timing)
  std::vector<std::array<cudaEvent_t, 2>> bucket_events_;         // start, end of bucket i (timing)
  std::vector<std::pair<std::int64_t, std::int64_t>> launched_;  // this step's buckets, in launch order
  int timed_buckets_ = 0;                                         // buckets of the last sgd_step
  bool comm_pending_ = false;  // comm-stream work the compute stream has not waited for
};

}  // namespace tasn::nn
