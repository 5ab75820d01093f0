// examples/gpu/dnn.cpp - cuDNN 9 / cuBLAS layers of the example trainer (see dnn.h).
//
// cuDNN 9 keeps the legacy convolution and batch-norm API (cudnn_cnn.h, cudnn_ops.h): marked
// deprecated, but the attribute is only emitted when CUDNN_WARN_DEPRECATED is defined, which this
// project does not do, so -Werror builds see no warning. libcudnn.so.9 exports all of it and loads
// libcudnn_cnn / libcudnn_ops from its own folder on first use.
//
// Choices (see dnn.h for the interface):
// - Algorithms: per geometry and direction, on the first call: cuDNN's heuristic ranking
//   (cudnnGet*_v7, default) or measured times (cudnnFind*Ex, ConvSearch::benchmark). The first
//   candidate that is supported, is not a down-converting math type, and whose workspace (queried
//   again for the math type actually used) fits the cap wins. Backward directions prefer the first
//   deterministic candidate instead when the winner is not (cuDNN's ALGO_0 / ALGO_3 add with
//   atomics): with measured times only when it is at most 10 % slower; with the heuristic always
//   (there are no times to weigh, and a run whose numbers repeat is worth more than the heuristic's
//   guess).
// - Math: FP32 by default = CUDNN_FMA_MATH on the convolution descriptor (cuDNN's default math would
//   let Ampere and newer use TF32) and CUBLAS_DEFAULT_MATH; set_tf32(true) = the candidate's own
//   math type (TF32 allowed) and CUBLAS_TF32_TENSOR_OP_MATH.
// - Accumulation: cuDNN blends every output as alpha * result + beta * prior (its scaling-parameter
//   rule, which holds for all three convolution directions, the bias gradient, and batch norm's
//   data and parameter gradients): beta = 1 adds into the destination, beta = 0 never reads it (so
//   it may hold NaN). Backward-filter and bias gradients always use beta = 1 (as Caffe did);
//   backward-data and batch norm's dx use beta = accumulate.
// - Bias: cudnnAddTensor (forward, a (1, C, 1, 1) tensor broadcast) and cudnnConvolutionBackwardBias
//   (gradient); the linear layer's with cuBLAS and a device vector of ones (cublasSger adds b 1^T,
//   cublasSgemv sums dy's rows): no kernel of our own.
// - Batch norm: CUDNN_BATCHNORM_SPATIAL (not _PERSISTENT, which PyTorch notes loses accuracy on some
//   models). exponentialAverageFactor = momentum gives PyTorch's rule for both running statistics;
//   cuDNN's running variance is the unbiased one (M / (M - 1), as PyTorch: its cuDNN path passes
//   momentum and running_var straight through and agrees with its native kernels; MXNet issue
//   21111 measured it), and resultSaveInvVariance is 1 / sqrt(biased var + eps).
#include "gpu/dnn.h"

#include "gpu/device_memory.h"

#include <algorithm>
#include <array>
#include <climits>
#include <cmath>
#include <cstdint>
#include <map>
#include <vector>

#include "nn/layers.h"
#include "tasn/core/cuda_check.cuh"

namespace tasn::nn::gpu {

namespace detail {
void throw_cudnn(cudnnStatus_t status, const char* call, const char* file, int line) {
  char why[512] = {0};
  cudnnGetLastErrorString(why, sizeof why);
  throw CudaError(::tasn::detail::concat(call, " failed: ", cudnnGetErrorString(status),
                                         why[0] ? std::string(" (") + why + ")" : std::string(), " at ", file, ":",
                                         line));
}
}  // namespace detail

namespace {

constexpr float kOne = 1.0f, kZero = 0.0f;
constexpr std::size_t kAlign = 256;  // cuDNN wants 256-byte aligned workspaces (and gets them from the arena)

std::size_t round_up(std::size_t bytes) { return (bytes + kAlign - 1) / kAlign * kAlign; }

// A size cuDNN's legacy API or cuBLAS takes as int.
int to_int(std::int64_t v, const char* name, const char* op, const char* library) {
  TASN_CHECK_ARG(v >= 0 && v <= INT_MAX, op, ": ", name, " = ", v, " exceeds the 32-bit int that ", library,
                 " takes (at most ", INT_MAX, ")");
  return static_cast<int>(v);
}

// cuDNN's legacy tensors hold at most 2^31 - 1 elements (it indexes them with int).
void check_cudnn_numel(std::int64_t numel, const char* name, const std::string& shape, const char* op) {
  TASN_CHECK_ARG(numel <= INT_MAX, op, ": ", name, " ", shape, " holds ", numel,
                 " elements; cuDNN's legacy API indexes a tensor with 32-bit ints (at most ", INT_MAX,
                 " elements): split the batch");
}

std::string shape4(std::int64_t a, std::int64_t b, std::int64_t c, std::int64_t d) {
  return ::tasn::detail::concat("(", a, ", ", b, ", ", c, ", ", d, ")");
}

std::int64_t numel4(std::int64_t a, std::int64_t b, std::int64_t c, std::int64_t d, const char* op) {
  using ::tasn::detail::checked_mul;
  return checked_mul(checked_mul(checked_mul(a, b, op), c, op), d, op);
}

void* take_scratch(DeviceScratch& scratch, std::size_t bytes, const char* op) {
  if (bytes == 0) return nullptr;
  void* p = scratch.get(bytes);
  TASN_CHECK_ARG(p != nullptr, op, ": the scratch returned null for ", bytes, " bytes");
  TASN_CHECK_ARG(reinterpret_cast<std::uintptr_t>(p) % kAlign == 0, op, ": the scratch returned ", p,
                 ", not aligned to ", kAlign, " bytes");
  return p;
}

// ---- RAII descriptors ----------------------------------------------------------------------------

template <class T, cudnnStatus_t (*Create)(T*), cudnnStatus_t (*Destroy)(T)>
class Desc {
 public:
  Desc() {
    const cudnnStatus_t st = Create(&d_);
    if (st != CUDNN_STATUS_SUCCESS) detail::throw_cudnn(st, "cudnnCreate*Descriptor", __FILE__, __LINE__);
  }
  ~Desc() {
    if (d_) Destroy(d_);
  }
  Desc(const Desc&) = delete;
  Desc& operator=(const Desc&) = delete;
  T get() const { return d_; }

 private:
  T d_ = nullptr;
};
using TensorDesc = Desc<cudnnTensorDescriptor_t, cudnnCreateTensorDescriptor, cudnnDestroyTensorDescriptor>;
using FilterDesc = Desc<cudnnFilterDescriptor_t, cudnnCreateFilterDescriptor, cudnnDestroyFilterDescriptor>;
using ConvDesc =
    Desc<cudnnConvolutionDescriptor_t, cudnnCreateConvolutionDescriptor, cudnnDestroyConvolutionDescriptor>;

// ---- algorithm names ----------------------------------------------------------------------------

enum Dir { kForward = 0, kBackwardData = 1, kBackwardFilter = 2 };
constexpr const char* kDirName[3] = {"forward", "backward-data", "backward-filter"};

const char* algo_name(Dir d, int a) {
  static constexpr const char* fwd[] = {"IMPLICIT_GEMM", "IMPLICIT_PRECOMP_GEMM", "GEMM",     "DIRECT",
                                        "FFT",           "FFT_TILING",            "WINOGRAD", "WINOGRAD_NONFUSED"};
  static constexpr const char* data[] = {"ALGO_0", "ALGO_1", "FFT", "FFT_TILING", "WINOGRAD", "WINOGRAD_NONFUSED"};
  static constexpr const char* filter[] = {"ALGO_0",   "ALGO_1",           "FFT",       "ALGO_3",
                                           "WINOGRAD", "WINOGRAD_NONFUSED", "FFT_TILING"};
  switch (d) {
    case kForward: return a >= 0 && a < 8 ? fwd[a] : "?";
    case kBackwardData: return a >= 0 && a < 6 ? data[a] : "?";
    case kBackwardFilter: return a >= 0 && a < 7 ? filter[a] : "?";
  }
  return "?";
}

// FFT and Winograd: the result is not a plain sum of the products (their rounding differs).
bool is_transform(Dir d, int a) {
  switch (d) {
    case kForward: return a >= CUDNN_CONVOLUTION_FWD_ALGO_FFT;
    case kBackwardData: return a >= CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT;
    case kBackwardFilter:
      return a == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT || a >= CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD;
  }
  return false;
}

const char* math_name(cudnnMathType_t m) {
  switch (m) {
    case CUDNN_DEFAULT_MATH: return "DEFAULT";
    case CUDNN_TENSOR_OP_MATH: return "TENSOR_OP";
    case CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION: return "TENSOR_OP_ALLOW_CONVERSION";
    case CUDNN_FMA_MATH: return "FMA";
  }
  return "?";
}

// ---- caches ------------------------------------------------------------------------------------

struct Choice {
  bool chosen = false;
  int algo = 0;
  cudnnMathType_t math = CUDNN_FMA_MATH;
  std::size_t workspace = 0;
  bool deterministic = false;
  float time_ms = -1;  // measured (benchmark search) or -1
};

// The numeric setting of a convolution: float storage with FP32 (FMA) or TF32 math, or bf16 storage
// (x, w, y and the gradients in bf16; tensor-core math, float accumulation: cuDNN's
// PSEUDO_BFLOAT16 configuration).
enum Mode { kFp32 = 0, kTf32 = 1, kBf16 = 2 };
cudnnMathType_t base_math(Mode m) {
  return m == kFp32 ? CUDNN_FMA_MATH : m == kTf32 ? CUDNN_DEFAULT_MATH : CUDNN_TENSOR_OP_MATH;
}
cudnnDataType_t storage_type(Mode m) { return m == kBf16 ? CUDNN_DATA_BFLOAT16 : CUDNN_DATA_FLOAT; }
std::size_t element_bytes(Mode m) { return m == kBf16 ? 2 : 4; }

struct ConvKey {
  std::array<std::int64_t, 13> v;
  bool operator<(const ConvKey& o) const { return v < o.v; }
};
ConvKey conv_key(const ConvGeometry& g, Mode mode) {
  return {{g.n, g.cin, g.h, g.w, g.cout, g.kh, g.kw, g.ho, g.wo, g.a.stride, g.a.padding, g.a.dilation, mode}};
}

struct ConvPlan {
  Mode mode = kFp32;
  TensorDesc x, y, bias;
  FilterDesc w;
  ConvDesc conv[3];  // one per direction: each carries its chosen algorithm's math type
  Choice choice[3];
};

struct BnPlan {
  TensorDesc x, param;  // x, y, dy, dx: (N, C, P, 1); gamma, beta, statistics: (1, C, 1, 1)
};

std::string describe(const ConvGeometry& g) {
  return ::tasn::detail::concat("x ", shape4(g.n, g.cin, g.h, g.w), ", weight ", shape4(g.cout, g.cin, g.kh, g.kw),
                                ", stride ", g.a.stride, ", padding ", g.a.padding, ", dilation ", g.a.dilation);
}

// Picks from cuDNN's candidates (in its order: heuristic rank or measured time); see the file
// comment. Leaves the chosen math type on `conv`. ws_of(algo, &bytes) queries a workspace size.
template <class Perf, class WsOf>
Choice choose(const std::vector<Perf>& perf, int n, bool timed, bool prefer_deterministic, Mode mode,
              std::size_t cap, cudnnConvolutionDescriptor_t conv, WsOf&& ws_of, Dir dir, const ConvGeometry& g,
              const char* op) {
  Choice best, det;
  std::string seen;
  for (int i = 0; i < n; ++i) {
    const Perf& p = perf[static_cast<std::size_t>(i)];
    seen += ::tasn::detail::concat(i ? ", " : "", algo_name(dir, int(p.algo)), "/", math_name(p.mathType), ": ",
                                   p.status == CUDNN_STATUS_SUCCESS ? "" : cudnnGetErrorString(p.status),
                                   p.status == CUDNN_STATUS_SUCCESS ? ::tasn::detail::concat(p.memory, " B") : "");
    // ALLOW_CONVERSION may round FP32 operands to FP16 / BF16: never for float training.
    if (p.status != CUDNN_STATUS_SUCCESS || p.mathType == CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION || p.memory > cap)
      continue;
    const cudnnMathType_t math = mode == kFp32 ? CUDNN_FMA_MATH : p.mathType;
    if (cudnnSetConvolutionMathType(conv, math) != CUDNN_STATUS_SUCCESS) continue;
    std::size_t ws = 0;
    if (ws_of(p.algo, &ws) != CUDNN_STATUS_SUCCESS || ws > cap) continue;
    const Choice c{true, int(p.algo), math, ws, p.determinism == CUDNN_DETERMINISTIC, timed ? p.time : -1.0f};
    if (!best.chosen) {
      best = c;
      if (!prefer_deterministic || c.deterministic) break;
    } else if (c.deterministic) {
      det = c;
      break;
    }
  }
  Choice pick = best;
  if (det.chosen && (!timed || det.time_ms <= 1.1f * best.time_ms)) pick = det;
  if (!pick.chosen)
    throw CudaError(::tasn::detail::concat(op, ": no cuDNN ", kDirName[dir], " algorithm for ", describe(g),
                                           " runs within the workspace cap of ", cap, " bytes (candidates: ", seen,
                                           ")"));
  TASN_CUDNN_CHECK(cudnnSetConvolutionMathType(conv, pick.math));
  return pick;
}

// The largest workspace among the supported candidates that fit the cap: what cudnnFind*Ex gets.
template <class Perf>
std::size_t largest_fitting(const std::vector<Perf>& perf, int n, std::size_t cap) {
  std::size_t m = 0;
  for (int i = 0; i < n; ++i) {
    const Perf& p = perf[static_cast<std::size_t>(i)];
    if (p.status == CUDNN_STATUS_SUCCESS && p.memory <= cap) m = std::max(m, p.memory);
  }
  return m;
}

}  // namespace

// ---- Impl --------------------------------------------------------------------------------------

struct Dnn::Impl {
  cudnnHandle_t cudnn = nullptr;
  cublasHandle_t cublas = nullptr;
  cudaStream_t stream = nullptr;
  bool tf32 = false;
  std::size_t cap = kDefaultWorkspaceCap;
  ConvSearch search = ConvSearch::heuristic;
  std::map<ConvKey, std::unique_ptr<ConvPlan>> conv;
  std::map<std::array<std::int64_t, 3>, std::unique_ptr<BnPlan>> bn;
  std::int64_t searches = 0;
  float* ones = nullptr;  // the linear layer's bias row: ones_n values of 1
  std::int64_t ones_n = 0;

  ~Impl() {
    if (ones) {
      cudaStreamSynchronize(stream);  // queued GEMVs may still read it; errors ignored in a destructor
      DeviceMemory::release(ones);
    }
    conv.clear();
    bn.clear();
    if (cublas) cublasDestroy(cublas);
    if (cudnn) cudnnDestroy(cudnn);
  }

  // The geometry's descriptors: validated and built on its first call; check_pointers() runs
  // after the sizes are known to be valid and before anything is cached.
  Mode float_mode() const { return tf32 ? kTf32 : kFp32; }
  template <class CheckPointers>
  ConvPlan& conv_plan(const ConvGeometry& g, Mode mode, const char* op, CheckPointers&& check_pointers);
  BnPlan& bn_plan(std::int64_t N, std::int64_t C, std::int64_t P);
  void* search_forward(ConvPlan& p, const ConvGeometry& g, const void* x, const void* w, void* y,
                       DeviceScratch& scratch, const char* op);
  void* search_backward_data(ConvPlan& p, const ConvGeometry& g, const void* w, const void* dy, void* dx,
                             bool accumulate, DeviceScratch& scratch, const char* op);
  void* search_backward_filter(ConvPlan& p, const ConvGeometry& g, const void* x, const void* dy,
                               DeviceScratch& scratch, const char* op);
  // The three directions for either storage (see the public functions).
  void forward(const ConvGeometry& g, Mode mode, const void* x, const void* w, void* y, DeviceScratch& scratch,
               const char* op, ConvPlan** plan = nullptr);
  void backward_data(const ConvGeometry& g, Mode mode, const void* w, const void* dy, void* dx, bool accumulate,
                     DeviceScratch& scratch, const char* op);
  void backward_filter(const ConvGeometry& g, Mode mode, const void* x, const void* dy, void* dw, bool accumulate,
                       DeviceScratch& scratch, const char* op);
  void ensure_ones(std::int64_t n);
};

template <class CheckPointers>
ConvPlan& Dnn::Impl::conv_plan(const ConvGeometry& g, Mode mode, const char* op, CheckPointers&& check_pointers) {
  const ConvKey key = conv_key(g, mode);
  const auto it = conv.find(key);
  if (it != conv.end()) {
    check_pointers();
    return *it->second;
  }

  // First call of this geometry: validate (nothing is cached for a refused call), then build the
  // descriptors.
  const Conv2dArgs& a = g.a;
  TASN_CHECK_ARG(g.n >= 1 && g.cin >= 1 && g.h >= 1 && g.w >= 1 && g.cout >= 1 && g.kh >= 1 && g.kw >= 1, op,
                 ": sizes must be >= 1, got ", describe(g));
  TASN_CHECK_ARG(a.stride >= 1 && a.dilation >= 1 && a.padding >= 0, op,
                 ": stride and dilation must be >= 1 and padding >= 0, got ", describe(g));
  const std::int64_t ho = (g.h + 2 * a.padding - a.dilation * (g.kh - 1) - 1) / a.stride + 1;
  const std::int64_t wo = (g.w + 2 * a.padding - a.dilation * (g.kw - 1) - 1) / a.stride + 1;
  const std::int64_t span_h = g.h + 2 * a.padding - a.dilation * (g.kh - 1),
                     span_w = g.w + 2 * a.padding - a.dilation * (g.kw - 1);
  TASN_CHECK_ARG(span_h >= 1 && span_w >= 1, op, ": the padded input is smaller than the dilated kernel: ",
                 describe(g));
  TASN_CHECK_ARG(g.ho == ho && g.wo == wo, op, ": the geometry says the output is ", g.ho, " x ", g.wo, " but ",
                 describe(g), " gives ", ho, " x ", wo);
  constexpr const char* lib = "cuDNN's legacy API";
  const int n = to_int(g.n, "n", op, lib), ci = to_int(g.cin, "cin", op, lib), h = to_int(g.h, "h", op, lib),
            w = to_int(g.w, "w", op, lib), co = to_int(g.cout, "cout", op, lib), kh = to_int(g.kh, "kh", op, lib),
            kw = to_int(g.kw, "kw", op, lib), oh = to_int(g.ho, "ho", op, lib), ow = to_int(g.wo, "wo", op, lib),
            s = to_int(a.stride, "stride", op, lib), pd = to_int(a.padding, "padding", op, lib),
            d = to_int(a.dilation, "dilation", op, lib);
  check_cudnn_numel(numel4(g.n, g.cin, g.h, g.w, op), "x", shape4(g.n, g.cin, g.h, g.w), op);
  check_cudnn_numel(numel4(g.n, g.cout, g.ho, g.wo, op), "y", shape4(g.n, g.cout, g.ho, g.wo), op);
  check_cudnn_numel(numel4(g.cout, g.cin, g.kh, g.kw, op), "weight", shape4(g.cout, g.cin, g.kh, g.kw), op);
  check_pointers();

  auto p = std::make_unique<ConvPlan>();
  p->mode = mode;
  const cudnnDataType_t st = storage_type(mode);
  TASN_CUDNN_CHECK(cudnnSetTensor4dDescriptor(p->x.get(), CUDNN_TENSOR_NCHW, st, n, ci, h, w));
  TASN_CUDNN_CHECK(cudnnSetTensor4dDescriptor(p->y.get(), CUDNN_TENSOR_NCHW, st, n, co, oh, ow));
  TASN_CUDNN_CHECK(cudnnSetTensor4dDescriptor(p->bias.get(), CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, 1, co, 1, 1));
  TASN_CUDNN_CHECK(cudnnSetFilter4dDescriptor(p->w.get(), st, CUDNN_TENSOR_NCHW, co, ci, kh, kw));
  for (auto& c : p->conv) {  // float accumulation for every storage
    TASN_CUDNN_CHECK(
        cudnnSetConvolution2dDescriptor(c.get(), pd, pd, s, s, d, d, CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
    TASN_CUDNN_CHECK(cudnnSetConvolutionMathType(c.get(), base_math(mode)));
  }
  int dn = 0, dc = 0, dh = 0, dw = 0;
  TASN_CUDNN_CHECK(cudnnGetConvolution2dForwardOutputDim(p->conv[0].get(), p->x.get(), p->w.get(), &dn, &dc, &dh, &dw));
  if (dn != n || dc != co || dh != oh || dw != ow)
    throw Error(::tasn::detail::concat(op, ": cuDNN computes the output of ", describe(g), " as ",
                                       shape4(dn, dc, dh, dw), ", not ", shape4(g.n, g.cout, g.ho, g.wo)));
  return *conv.emplace(key, std::move(p)).first->second;
}

namespace {
// Batch norm's sizes: each fits cuDNN's int, the tensor its 2^31 - 1 elements. Returns N C P.
std::int64_t bn_numel(std::int64_t N, std::int64_t C, std::int64_t P, const char* op) {
  TASN_CHECK_ARG(N >= 1 && C >= 1 && P >= 1, op, ": N, C, P must be >= 1, got (", N, ", ", C, ", ", P, ")");
  constexpr const char* lib = "cuDNN's legacy API";
  to_int(N, "N", op, lib);
  to_int(C, "C", op, lib);
  to_int(P, "P", op, lib);
  const std::int64_t numel = numel4(N, C, P, 1, op);
  check_cudnn_numel(numel, "x", ::tasn::detail::concat("(N, C, P) = (", N, ", ", C, ", ", P, ")"), op);
  return numel;
}
}  // namespace

// Sizes already checked by bn_numel().
BnPlan& Dnn::Impl::bn_plan(std::int64_t N, std::int64_t C, std::int64_t P) {
  const std::array<std::int64_t, 3> key{N, C, P};
  const auto it = bn.find(key);
  if (it != bn.end()) return *it->second;
  auto plan = std::make_unique<BnPlan>();
  TASN_CUDNN_CHECK(cudnnSetTensor4dDescriptor(plan->x.get(), CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, int(N), int(C),
                                              int(P), 1));
  TASN_CUDNN_CHECK(cudnnDeriveBNTensorDescriptor(plan->param.get(), plan->x.get(), CUDNN_BATCHNORM_SPATIAL));
  return *bn.emplace(key, std::move(plan)).first->second;
}

void* Dnn::Impl::search_forward(ConvPlan& p, const ConvGeometry& g, const void* x, const void* w, void* y,
                                DeviceScratch& scratch, const char* op) {
  const cudnnConvolutionDescriptor_t cd = p.conv[kForward].get();
  TASN_CUDNN_CHECK(cudnnSetConvolutionMathType(cd, base_math(p.mode)));
  int max = 0, n = 0;
  TASN_CUDNN_CHECK(cudnnGetConvolutionForwardAlgorithmMaxCount(cudnn, &max));
  std::vector<cudnnConvolutionFwdAlgoPerf_t> perf(static_cast<std::size_t>(std::max(max, 1)));
  TASN_CUDNN_CHECK(
      cudnnGetConvolutionForwardAlgorithm_v7(cudnn, p.x.get(), p.w.get(), cd, p.y.get(), max, &n, perf.data()));
  void* block = nullptr;
  std::size_t limit = cap;
  const bool timed = search == ConvSearch::benchmark;
  if (timed) {  // y is overwritten by the call anyway: the search may write it
    limit = largest_fitting(perf, n, cap);
    block = take_scratch(scratch, round_up(limit), op);
    TASN_CUDNN_CHECK(cudnnFindConvolutionForwardAlgorithmEx(cudnn, p.x.get(), x, p.w.get(), w, cd, p.y.get(), y, max,
                                                            &n, perf.data(), block, limit));
  }
  const auto ws_of = [&](cudnnConvolutionFwdAlgo_t a, std::size_t* bytes) {
    return cudnnGetConvolutionForwardWorkspaceSize(cudnn, p.x.get(), p.w.get(), cd, p.y.get(), a, bytes);
  };
  p.choice[kForward] = choose(perf, n, timed, false, p.mode, limit, cd, ws_of, kForward, g, op);
  ++searches;
  return block;
}

void* Dnn::Impl::search_backward_data(ConvPlan& p, const ConvGeometry& g, const void* w, const void* dy,
                                      void* dx, bool accumulate, DeviceScratch& scratch, const char* op) {
  const cudnnConvolutionDescriptor_t cd = p.conv[kBackwardData].get();
  TASN_CUDNN_CHECK(cudnnSetConvolutionMathType(cd, base_math(p.mode)));
  int max = 0, n = 0;
  TASN_CUDNN_CHECK(cudnnGetConvolutionBackwardDataAlgorithmMaxCount(cudnn, &max));
  std::vector<cudnnConvolutionBwdDataAlgoPerf_t> perf(static_cast<std::size_t>(std::max(max, 1)));
  TASN_CUDNN_CHECK(cudnnGetConvolutionBackwardDataAlgorithm_v7(cudnn, p.w.get(), p.y.get(), cd, p.x.get(), max, &n,
                                                               perf.data()));
  void* block = nullptr;
  std::size_t limit = cap;
  const bool timed = search == ConvSearch::benchmark;
  if (timed) {  // dx is written by the search: a scratch copy when the call must add into it
    limit = largest_fitting(perf, n, cap);
    const std::size_t out = accumulate ? round_up(element_bytes(p.mode) * static_cast<std::size_t>(g.x_numel())) : 0;
    block = take_scratch(scratch, round_up(limit) + out, op);
    void* target = accumulate ? static_cast<void*>(static_cast<char*>(block) + round_up(limit)) : dx;
    TASN_CUDNN_CHECK(cudnnFindConvolutionBackwardDataAlgorithmEx(cudnn, p.w.get(), w, p.y.get(), dy, cd, p.x.get(),
                                                                 target, max, &n, perf.data(), block, limit));
  }
  const auto ws_of = [&](cudnnConvolutionBwdDataAlgo_t a, std::size_t* bytes) {
    return cudnnGetConvolutionBackwardDataWorkspaceSize(cudnn, p.w.get(), p.y.get(), cd, p.x.get(), a, bytes);
  };
  p.choice[kBackwardData] = choose(perf, n, timed, true, p.mode, limit, cd, ws_of, kBackwardData, g, op);
  ++searches;
  return block;
}

void* Dnn::Impl::search_backward_filter(ConvPlan& p, const ConvGeometry& g, const void* x, const void* dy,
                                        DeviceScratch& scratch, const char* op) {
  const cudnnConvolutionDescriptor_t cd = p.conv[kBackwardFilter].get();
  TASN_CUDNN_CHECK(cudnnSetConvolutionMathType(cd, base_math(p.mode)));
  int max = 0, n = 0;
  TASN_CUDNN_CHECK(cudnnGetConvolutionBackwardFilterAlgorithmMaxCount(cudnn, &max));
  std::vector<cudnnConvolutionBwdFilterAlgoPerf_t> perf(static_cast<std::size_t>(std::max(max, 1)));
  TASN_CUDNN_CHECK(cudnnGetConvolutionBackwardFilterAlgorithm_v7(cudnn, p.x.get(), p.y.get(), cd, p.w.get(), max, &n,
                                                                 perf.data()));
  void* block = nullptr;
  std::size_t limit = cap;
  const bool timed = search == ConvSearch::benchmark;
  if (timed) {  // dw accumulates: the search writes a scratch weight gradient
    limit = largest_fitting(perf, n, cap);
    const std::size_t out = round_up(element_bytes(p.mode) * static_cast<std::size_t>(g.w_numel()));
    block = take_scratch(scratch, round_up(limit) + out, op);
    void* target = static_cast<char*>(block) + round_up(limit);
    TASN_CUDNN_CHECK(cudnnFindConvolutionBackwardFilterAlgorithmEx(cudnn, p.x.get(), x, p.y.get(), dy, cd, p.w.get(),
                                                                   target, max, &n, perf.data(), block, limit));
  }
  const auto ws_of = [&](cudnnConvolutionBwdFilterAlgo_t a, std::size_t* bytes) {
    return cudnnGetConvolutionBackwardFilterWorkspaceSize(cudnn, p.x.get(), p.y.get(), cd, p.w.get(), a, bytes);
  };
  p.choice[kBackwardFilter] = choose(perf, n, timed, true, p.mode, limit, cd, ws_of, kBackwardFilter, g, op);
  ++searches;
  return block;
}

void Dnn::Impl::ensure_ones(std::int64_t n) {
  if (n <= ones_n) return;
  const std::int64_t size = std::max<std::int64_t>(n, 1024);
  if (ones) {  // grows only on the first calls of a larger batch; queued work may still read the old one
    TASN_CUDA_CHECK(cudaStreamSynchronize(stream));
    DeviceMemory::release(ones);
    ones = nullptr;
    ones_n = 0;
  }
  ones = static_cast<float*>(DeviceMemory::allocate(256, sizeof(float) * static_cast<std::size_t>(size)));  // counted
  const std::vector<float> host(static_cast<std::size_t>(size), 1.0f);
  // Pageable source: staged before the call returns, so `host` may go; ordered on the stream.
  TASN_CUDA_CHECK(cudaMemcpyAsync(ones, host.data(), sizeof(float) * host.size(), cudaMemcpyHostToDevice, stream));
  ones_n = size;
}

// ---- Dnn ---------------------------------------------------------------------------------------

Dnn::Dnn() : impl_(std::make_unique<Impl>()) {
  TASN_CUDNN_CHECK(cudnnCreate(&impl_->cudnn));
  TASN_CUBLAS_CHECK(cublasCreate(&impl_->cublas));
  TASN_CUBLAS_CHECK(cublasSetMathMode(impl_->cublas, CUBLAS_DEFAULT_MATH));
}

Dnn::~Dnn() = default;

void Dnn::set_stream(cudaStream_t s) {
  // The ones vector was filled on the old stream: let that finish before another stream reads it.
  if (impl_->ones && s != impl_->stream) TASN_CUDA_CHECK(cudaStreamSynchronize(impl_->stream));
  TASN_CUDNN_CHECK(cudnnSetStream(impl_->cudnn, s));
  TASN_CUBLAS_CHECK(cublasSetStream(impl_->cublas, s));
  impl_->stream = s;
}
cudaStream_t Dnn::stream() const { return impl_->stream; }

void Dnn::set_tf32(bool on) {
  TASN_CUBLAS_CHECK(cublasSetMathMode(impl_->cublas, on ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH));
  impl_->tf32 = on;  // convolutions: part of the cache key (descriptors and choices per math setting)
}
bool Dnn::tf32() const { return impl_->tf32; }

void Dnn::set_workspace_cap(std::size_t bytes) {
  impl_->cap = bytes;
  impl_->conv.clear();
}
void Dnn::set_search(ConvSearch s) {
  impl_->search = s;
  impl_->conv.clear();
}
cublasHandle_t Dnn::cublas() const { return impl_->cublas; }
cudnnHandle_t Dnn::cudnn() const { return impl_->cudnn; }

void Dnn::Impl::forward(const ConvGeometry& g, Mode mode, const void* x, const void* w, void* y,
                        DeviceScratch& scratch, const char* op, ConvPlan** plan) {
  ConvPlan& p = conv_plan(g, mode, op, [&] {
    ::tasn::detail::check_pointer(x, "x", g.x_numel(), op);
    ::tasn::detail::check_pointer(w, "weight", g.w_numel(), op);
    ::tasn::detail::check_pointer(y, "y", g.y_numel(), op);
  });
  Choice& c = p.choice[kForward];
  void* ws = c.chosen ? nullptr : search_forward(p, g, x, w, y, scratch, op);
  if (!ws) ws = take_scratch(scratch, c.workspace, op);
  TASN_CUDNN_CHECK(cudnnConvolutionForward(cudnn, &kOne, p.x.get(), x, p.w.get(), w, p.conv[kForward].get(),
                                           static_cast<cudnnConvolutionFwdAlgo_t>(c.algo), ws, c.workspace, &kZero,
                                           p.y.get(), y));
  if (plan) *plan = &p;
}

void Dnn::Impl::backward_data(const ConvGeometry& g, Mode mode, const void* w, const void* dy, void* dx,
                              bool accumulate, DeviceScratch& scratch, const char* op) {
  ConvPlan& p = conv_plan(g, mode, op, [&] {
    ::tasn::detail::check_pointer(w, "weight", g.w_numel(), op);
    ::tasn::detail::check_pointer(dy, "dy", g.y_numel(), op);
    ::tasn::detail::check_pointer(dx, "dx", g.x_numel(), op);
  });
  Choice& c = p.choice[kBackwardData];
  void* ws = c.chosen ? nullptr : search_backward_data(p, g, w, dy, dx, accumulate, scratch, op);
  if (!ws) ws = take_scratch(scratch, c.workspace, op);
  TASN_CUDNN_CHECK(cudnnConvolutionBackwardData(cudnn, &kOne, p.w.get(), w, p.y.get(), dy, p.conv[kBackwardData].get(),
                                                static_cast<cudnnConvolutionBwdDataAlgo_t>(c.algo), ws, c.workspace,
                                                accumulate ? &kOne : &kZero, p.x.get(), dx));
}

void Dnn::Impl::backward_filter(const ConvGeometry& g, Mode mode, const void* x, const void* dy, void* dw,
                                bool accumulate, DeviceScratch& scratch, const char* op) {
  ConvPlan& p = conv_plan(g, mode, op, [&] {
    ::tasn::detail::check_pointer(dy, "dy", g.y_numel(), op);
    ::tasn::detail::check_pointer(x, "x", g.x_numel(), op);
    ::tasn::detail::check_pointer(dw, "dw", g.w_numel(), op);
  });
  Choice& c = p.choice[kBackwardFilter];
  void* ws = c.chosen ? nullptr : search_backward_filter(p, g, x, dy, scratch, op);
  if (!ws) ws = take_scratch(scratch, c.workspace, op);
  TASN_CUDNN_CHECK(cudnnConvolutionBackwardFilter(cudnn, &kOne, p.x.get(), x, p.y.get(), dy,
                                                  p.conv[kBackwardFilter].get(),
                                                  static_cast<cudnnConvolutionBwdFilterAlgo_t>(c.algo), ws, c.workspace,
                                                  accumulate ? &kOne : &kZero, p.w.get(), dw));
}

void Dnn::conv_forward(const ConvGeometry& g, const float* x, const float* w, const float* b, float* y,
                       DeviceScratch& scratch) {
  ConvPlan* p = nullptr;
  impl_->forward(g, impl_->float_mode(), x, w, y, scratch, "Dnn::conv_forward", &p);
  if (b) TASN_CUDNN_CHECK(cudnnAddTensor(impl_->cudnn, &kOne, p->bias.get(), b, &kOne, p->y.get(), y));
}

void Dnn::conv_backward_data(const ConvGeometry& g, const float* w, const float* dy, float* dx, bool accumulate,
                             DeviceScratch& scratch) {
  impl_->backward_data(g, impl_->float_mode(), w, dy, dx, accumulate, scratch, "Dnn::conv_backward_data");
}

void Dnn::conv_backward_weights(const ConvGeometry& g, const float* x, const float* dy, float* dw, float* db,
                                DeviceScratch& scratch) {
  constexpr const char* op = "Dnn::conv_backward_weights";
  if (dw) impl_->backward_filter(g, impl_->float_mode(), x, dy, dw, true, scratch, op);
  if (db) {
    ConvPlan& p = impl_->conv_plan(g, impl_->float_mode(), op, [&] { ::tasn::detail::check_pointer(dy, "dy", g.y_numel(), op); });
    TASN_CUDNN_CHECK(cudnnConvolutionBackwardBias(impl_->cudnn, &kOne, p.y.get(), dy, &kOne, p.bias.get(), db));
  }
}

void Dnn::conv_forward(const ConvGeometry& g, const bf16* x, const bf16* w, bf16* y, DeviceScratch& scratch) {
  impl_->forward(g, kBf16, x, w, y, scratch, "Dnn::conv_forward (bf16)");
}
void Dnn::conv_backward_data(const ConvGeometry& g, const bf16* w, const bf16* dy, bf16* dx, bool accumulate,
                             DeviceScratch& scratch) {
  impl_->backward_data(g, kBf16, w, dy, dx, accumulate, scratch, "Dnn::conv_backward_data (bf16)");
}
void Dnn::conv_backward_filter(const ConvGeometry& g, const bf16* x, const bf16* dy, bf16* dw, DeviceScratch& scratch) {
  impl_->backward_filter(g, kBf16, x, dy, dw, false, scratch, "Dnn::conv_backward_filter (bf16)");
}

namespace {
void check_bn_scalars(double eps, const char* op) {
  TASN_CHECK_ARG(std::isfinite(eps) && eps >= CUDNN_BN_MIN_EPSILON, op, ": eps must be finite and >= ",
                 CUDNN_BN_MIN_EPSILON, ", got ", eps);
}
}  // namespace

void Dnn::bn_forward_training(std::int64_t N, std::int64_t C, std::int64_t P, double eps, double momentum,
                              const float* x, const float* gamma, const float* beta, float* running_mean,
                              float* running_var, float* saved_mean, float* saved_invstd, float* y) {
  constexpr const char* op = "Dnn::bn_forward_training";
  check_bn_scalars(eps, op);
  TASN_CHECK_ARG(std::isfinite(momentum), op, ": momentum must be finite, got ", momentum);
  const std::int64_t numel = bn_numel(N, C, P, op);
  // As PyTorch: the unbiased running variance divides by M - 1.
  TASN_CHECK_ARG(N * P > 1, op, ": training needs more than one value per channel, got N * P = ", N * P);
  TASN_CHECK_ARG((running_mean == nullptr) == (running_var == nullptr), op,
                 ": running_mean and running_var must both be given or both be null");
  ::tasn::detail::check_pointer(x, "x", numel, op);
  ::tasn::detail::check_pointer(y, "y", numel, op);
  ::tasn::detail::check_pointer(gamma, "gamma", C, op);
  ::tasn::detail::check_pointer(beta, "beta", C, op);
  ::tasn::detail::check_pointer(saved_mean, "saved_mean", C, op);
  ::tasn::detail::check_pointer(saved_invstd, "saved_invstd", C, op);
  BnPlan& p = impl_->bn_plan(N, C, P);
  TASN_CUDNN_CHECK(cudnnBatchNormalizationForwardTraining(
      impl_->cudnn, CUDNN_BATCHNORM_SPATIAL, &kOne, &kZero, p.x.get(), x, p.x.get(), y, p.param.get(), gamma, beta,
      momentum, running_mean, running_var, eps, saved_mean, saved_invstd));
}

void Dnn::bn_forward_inference(std::int64_t N, std::int64_t C, std::int64_t P, double eps, const float* x,
                               const float* gamma, const float* beta, const float* running_mean,
                               const float* running_var, float* y) {
  constexpr const char* op = "Dnn::bn_forward_inference";
  check_bn_scalars(eps, op);
  const std::int64_t numel = bn_numel(N, C, P, op);
  ::tasn::detail::check_pointer(x, "x", numel, op);
  ::tasn::detail::check_pointer(y, "y", numel, op);
  ::tasn::detail::check_pointer(gamma, "gamma", C, op);
  ::tasn::detail::check_pointer(beta, "beta", C, op);
  ::tasn::detail::check_pointer(running_mean, "running_mean", C, op);
  ::tasn::detail::check_pointer(running_var, "running_var", C, op);
  BnPlan& p = impl_->bn_plan(N, C, P);
  TASN_CUDNN_CHECK(cudnnBatchNormalizationForwardInference(impl_->cudnn, CUDNN_BATCHNORM_SPATIAL, &kOne, &kZero,
                                                           p.x.get(), x, p.x.get(), y, p.param.get(), gamma, beta,
                                                           running_mean, running_var, eps));
}

void Dnn::bn_backward(std::int64_t N, std::int64_t C, std::int64_t P, double eps, const float* x, const float* gamma,
                      const float* dy, const float* saved_mean, const float* saved_invstd, float* dx, bool accumulate,
                      float* dgamma, float* dbeta) {
  constexpr const char* op = "Dnn::bn_backward";
  check_bn_scalars(eps, op);
  const std::int64_t numel = bn_numel(N, C, P, op);
  ::tasn::detail::check_pointer(x, "x", numel, op);
  ::tasn::detail::check_pointer(dy, "dy", numel, op);
  ::tasn::detail::check_pointer(gamma, "gamma", C, op);
  ::tasn::detail::check_pointer(saved_mean, "saved_mean", C, op);
  ::tasn::detail::check_pointer(saved_invstd, "saved_invstd", C, op);
  // cuDNN computes dx, dgamma and dbeta together: all three are needed.
  TASN_CHECK_ARG(dx && dgamma && dbeta, op, ": dx, dgamma and dbeta must all be given (cuDNN computes them together)");
  BnPlan& p = impl_->bn_plan(N, C, P);
  TASN_CUDNN_CHECK(cudnnBatchNormalizationBackward(impl_->cudnn, CUDNN_BATCHNORM_SPATIAL, &kOne,
                                                   accumulate ? &kOne : &kZero, &kOne, &kOne, p.x.get(), x, p.x.get(),
                                                   dy, p.x.get(), dx, p.param.get(), gamma, dgamma, dbeta, eps,
                                                   saved_mean, saved_invstd));
}

void Dnn::linear_forward(std::int64_t N, std::int64_t I, std::int64_t O, const float* x, const float* w,
                         const float* b, float* y) {
  constexpr const char* op = "Dnn::linear_forward";
  TASN_CHECK_ARG(N >= 1 && I >= 1 && O >= 1, op, ": N, I, O must be >= 1, got (", N, ", ", I, ", ", O, ")");
  const int n = to_int(N, "N", op, "cuBLAS"), i = to_int(I, "I", op, "cuBLAS"), o = to_int(O, "O", op, "cuBLAS");
  ::tasn::detail::check_pointer(x, "x", N * I, op);
  ::tasn::detail::check_pointer(w, "weight", O * I, op);
  ::tasn::detail::check_pointer(y, "y", N * O, op);
  // Row-major (N, O) is column-major (O, N): y^T = W x^T, W^T being column-major (I, O).
  TASN_CUBLAS_CHECK(cublasSgemm(impl_->cublas, CUBLAS_OP_T, CUBLAS_OP_N, o, n, i, &kOne, w, i, x, i, &kZero, y, o));
  if (b) {
    impl_->ensure_ones(N);
    TASN_CUBLAS_CHECK(cublasSger(impl_->cublas, o, n, &kOne, b, 1, impl_->ones, 1, y, o));  // y^T += b 1^T
  }
}

void Dnn::linear_backward(std::int64_t N, std::int64_t I, std::int64_t O, const float* x, const float* w,
                          const float* dy, float* dx, bool accumulate, float* dw, float* db) {
  constexpr const char* op = "Dnn::linear_backward";
  TASN_CHECK_ARG(N >= 1 && I >= 1 && O >= 1, op, ": N, I, O must be >= 1, got (", N, ", ", I, ", ", O, ")");
  const int n = to_int(N, "N", op, "cuBLAS"), i = to_int(I, "I", op, "cuBLAS"), o = to_int(O, "O", op, "cuBLAS");
  ::tasn::detail::check_pointer(dy, "dy", N * O, op);
  if (dx) {  // dx^T (I, N) = W^T (I, O) dy^T (O, N)
    ::tasn::detail::check_pointer(w, "weight", O * I, op);
    TASN_CUBLAS_CHECK(cublasSgemm(impl_->cublas, CUBLAS_OP_N, CUBLAS_OP_N, i, n, o, &kOne, w, i, dy, o,
                                  accumulate ? &kOne : &kZero, dx, i));
  }
  if (dw) {  // dW^T (I, O) += x^T (I, N) dy (N, O)
    ::tasn::detail::check_pointer(x, "x", N * I, op);
    TASN_CUBLAS_CHECK(cublasSgemm(impl_->cublas, CUBLAS_OP_N, CUBLAS_OP_T, i, o, n, &kOne, x, i, dy, o, &kOne, dw, i));
  }
  if (db) {  // db += dy^T 1: the column-major (O, N) dy times ones
    impl_->ensure_ones(N);
    TASN_CUBLAS_CHECK(cublasSgemv(impl_->cublas, CUBLAS_OP_N, o, n, &kOne, dy, o, impl_->ones, 1, &kOne, db, 1));
  }
}

void Dnn::linear_forward(std::int64_t N, std::int64_t I, std::int64_t O, const bf16* x, const bf16* w,
                         const float* b, float* y) {
  constexpr const char* op = "Dnn::linear_forward (bf16)";
  TASN_CHECK_ARG(N >= 1 && I >= 1 && O >= 1, op, ": N, I, O must be >= 1, got (", N, ", ", I, ", ", O, ")");
  const int n = to_int(N, "N", op, "cuBLAS"), i = to_int(I, "I", op, "cuBLAS"), o = to_int(O, "O", op, "cuBLAS");
  ::tasn::detail::check_pointer(x, "x", N * I, op);
  ::tasn::detail::check_pointer(w, "weight", O * I, op);
  ::tasn::detail::check_pointer(y, "y", N * O, op);
  // as the float version; bf16 operands, float accumulation and output
  TASN_CUBLAS_CHECK(cublasGemmEx(impl_->cublas, CUBLAS_OP_T, CUBLAS_OP_N, o, n, i, &kOne, w, CUDA_R_16BF, i, x,
                                 CUDA_R_16BF, i, &kZero, y, CUDA_R_32F, o, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  if (b) {
    impl_->ensure_ones(N);
    TASN_CUBLAS_CHECK(cublasSger(impl_->cublas, o, n, &kOne, b, 1, impl_->ones, 1, y, o));
  }
}

void Dnn::linear_backward(std::int64_t N, std::int64_t I, std::int64_t O, const bf16* x, const bf16* w,
                          const bf16* dy, bf16* dx, bool accumulate, float* dw) {
  constexpr const char* op = "Dnn::linear_backward (bf16)";
  TASN_CHECK_ARG(N >= 1 && I >= 1 && O >= 1, op, ": N, I, O must be >= 1, got (", N, ", ", I, ", ", O, ")");
  const int n = to_int(N, "N", op, "cuBLAS"), i = to_int(I, "I", op, "cuBLAS"), o = to_int(O, "O", op, "cuBLAS");
  ::tasn::detail::check_pointer(dy, "dy", N * O, op);
  if (dx) {  // dx^T (I, N) = W^T (I, O) dy^T (O, N), stored as bf16
    ::tasn::detail::check_pointer(w, "weight", O * I, op);
    TASN_CUBLAS_CHECK(cublasGemmEx(impl_->cublas, CUBLAS_OP_N, CUBLAS_OP_N, i, n, o, &kOne, w, CUDA_R_16BF, i, dy,
                                   CUDA_R_16BF, o, accumulate ? &kOne : &kZero, dx, CUDA_R_16BF, i, CUBLAS_COMPUTE_32F,
                                   CUBLAS_GEMM_DEFAULT));
  }
  if (dw) {  // dW^T (I, O) += x^T (I, N) dy (N, O), into the float gradient
    ::tasn::detail::check_pointer(x, "x", N * I, op);
    TASN_CUBLAS_CHECK(cublasGemmEx(impl_->cublas, CUBLAS_OP_N, CUBLAS_OP_T, i, o, n, &kOne, x, CUDA_R_16BF, i, dy,
                                   CUDA_R_16BF, o, &kOne, dw, CUDA_R_32F, i, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  }
}

ConvAlgorithms Dnn::conv_algorithms(const ConvGeometry& g, bool bf16) const {
  ConvAlgorithms r;
  const auto it = impl_->conv.find(conv_key(g, bf16 ? kBf16 : impl_->float_mode()));
  if (it == impl_->conv.end()) return r;
  const ConvPlan& p = *it->second;
  const auto name = [&](Dir d) {
    const Choice& c = p.choice[d];
    return c.chosen ? ::tasn::detail::concat(algo_name(d, c.algo), " (", math_name(c.math), ")") : std::string();
  };
  r.forward = name(kForward);
  r.backward_data = name(kBackwardData);
  r.backward_filter = name(kBackwardFilter);
  r.forward_workspace = p.choice[kForward].workspace;
  r.backward_data_workspace = p.choice[kBackwardData].workspace;
  r.backward_filter_workspace = p.choice[kBackwardFilter].workspace;
  r.backward_data_deterministic = p.choice[kBackwardData].deterministic;
  r.backward_filter_deterministic = p.choice[kBackwardFilter].deterministic;
  r.forward_transform = p.choice[kForward].chosen && is_transform(kForward, p.choice[kForward].algo);
  r.backward_data_transform =
      p.choice[kBackwardData].chosen && is_transform(kBackwardData, p.choice[kBackwardData].algo);
  r.backward_filter_transform =
      p.choice[kBackwardFilter].chosen && is_transform(kBackwardFilter, p.choice[kBackwardFilter].algo);
  return r;
}

std::int64_t Dnn::conv_searches() const { return impl_->searches; }
std::int64_t Dnn::cached_geometries() const {
  return static_cast<std::int64_t>(impl_->conv.size() + impl_->bn.size());
}

}  // namespace tasn::nn::gpu
