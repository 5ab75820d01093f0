// The example trainer's convolution and batch norm: the Eigen reference layers (examples/nn/layers.h)
// against oneDNN (examples/nn/dnnl_layers.h), float, at the demo's sizes (batch 32 / 64 images of
// 32 x 32, 16 .. 128 channels) and ResNet-like paper sizes (64 ch 56 x 56 and 256 ch 14 x 14, batch 8).
//
// impl: 0 = reference, 1 = oneDNN on plain NCHW, 2 = oneDNN blocked layout with reorders at the
// call (what dnnl_layers.h does with Layout::blocked), 3 = the same blocked primitive alone on
// tensors already in its layout (what keeping activations blocked between layers would give).
// Counters: GFLOP/s (2 * MACs of the direction) or GB/s (batch norm: bytes read + written once),
// x_ref = reference time / this time, the reference timed in the same process (best of 3).
//
// Run: OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE bench_nn_dnnl --benchmark_repetitions=3
//      --benchmark_report_aggregates_only=true   (medians; other jobs may share the cores)
//
// Measured (2 threads, AMD EPYC with AVX2, 2 cores shared with other jobs, oneDNN 2.6.3, medians
// of 3; ms, reference = 1.0x):
//   conv (dir: fwd / bwd-data / bwd-weights)   reference   plain      blocked+reorders   blocked alone
//   demo 32->32 3x3 s2, 64 x 32x32     fwd       42.2       8.9        6.3                4.0
//                                      bwd-data  11.4       7.5        4.0                3.0
//                                      bwd-w     10.2       6.6        3.8                3.3
//   demo 32->32 3x3, 64 x 16x16        fwd       11.3       5.2        3.2                2.6
//                                      bwd-data  14.1      12.1        4.6                3.7
//   demo 16->16 3x3, 32 x 32x32        fwd       14.6       8.9        3.1                2.7
//   head 32->32 3x3 dil 2, 32 x 8x8    fwd        3.8       1.3        0.47               0.43
//   1x1 32->64 s2, 64 x 16x16          fwd        0.91      0.50       0.91               0.40
//   paper 64->64 3x3, 8 x 56x56        fwd       66.8      22.0       15.3               13.7
//                                      bwd-w     57.8      31.2       25.8               27.3
//   paper 256->64 1x1, 8 x 56x56       fwd       36.8      12.2       13.5                9.8
// Blocked beats plain for every 3x3 (except the 3-channel stem's unused bwd-data), plain wins
// for 1x1 kernels: Layout::automatic (the default) picks so. Batch norm + ReLU, 8 x 64 x 56x56:
// reference 3.7 / 7.3 ms (fwd / bwd), oneDNN on NCHW 5.9 / 9.9 (fused ReLU: 10.4 / 13.2, slower),
// blocked with reorders 2.4 / 8.6 (fused: 2.6 / 4.5), blocked alone fused 0.59 / 0.87. oneDNN's
// blocked batch norm synchronises its threads with spin barriers: with more runnable threads than
// cores (other jobs) one call took 120 ms instead of 0.6 ms.
#include <benchmark/benchmark.h>

#include <map>
#include <tuple>
#include <vector>

#include "bench_common.h"
#include "nn/dnnl_layers.h"
#include "nn/layers.h"

namespace {

namespace nn = tasn::nn;
namespace nnd = tasn::nn::dnnl;
namespace dn = ::dnnl;
using tasn::bench::best_seconds;
using tasn::bench::loop_seconds;

nn::Tensor<float> rnd(std::vector<std::int64_t> shape, std::uint64_t seed, float lo = -1.f, float hi = 1.f) {
  nn::Tensor<float> t(std::move(shape));
  t.set(tasn::bench::filled<float>(t.numel(), seed, lo, hi));
  return t;
}

// Reference seconds per shape and direction, measured once per process.
std::map<std::vector<std::int64_t>, double>& ref_seconds() {
  static std::map<std::vector<std::int64_t>, double> m;
  return m;
}

enum Dir { kFwd = 0, kBwdData = 1, kBwdWeights = 2 };

// The blocked primitive alone: inputs already in its layout, outputs left in it.
struct BlockedConv {
  dn::primitive prim;
  std::vector<std::pair<int, dn::memory>> args;
  std::vector<std::vector<float>> storage;

  BlockedConv(const nnd::ConvGeometry& g, Dir dir, const dn::engine& eng) {
    const auto d = nnd::detail::conv_descs(g, nnd::Layout::blocked);
    const auto fwd = nnd::detail::conv_forward_pd(d, false, eng);
    auto add = [&](int arg, const dn::memory::desc& md) {
      storage.emplace_back(md.get_size() / sizeof(float) + 1, 0.01f);
      args.emplace_back(arg, dn::memory(md, eng, storage.back().data()));
    };
    if (dir == kFwd) {
      prim = dn::primitive(fwd.get());
      add(DNNL_ARG_SRC, fwd.src_desc());
      add(DNNL_ARG_WEIGHTS, fwd.weights_desc());
      add(DNNL_ARG_DST, fwd.dst_desc());
      add(DNNL_ARG_SCRATCHPAD, fwd.scratchpad_desc());
    } else if (dir == kBwdData) {
      const dn::convolution_backward_data::primitive_desc pd(
          {dn::algorithm::convolution_direct, d.px, d.pweight, d.py, d.strides, d.dilates, d.pad_l, d.pad_r},
          nnd::detail::user_scratchpad(), eng, fwd);
      prim = dn::primitive(pd.get());
      add(DNNL_ARG_DIFF_DST, pd.diff_dst_desc());
      add(DNNL_ARG_WEIGHTS, pd.weights_desc());
      add(DNNL_ARG_DIFF_SRC, pd.diff_src_desc());
      add(DNNL_ARG_SCRATCHPAD, pd.scratchpad_desc());
    } else {
      const dn::convolution_backward_weights::primitive_desc pd(
          {dn::algorithm::convolution_direct, d.px, d.pweight, d.py, d.strides, d.dilates, d.pad_l, d.pad_r},
          nnd::detail::user_scratchpad(), eng, fwd);
      prim = dn::primitive(pd.get());
      add(DNNL_ARG_SRC, pd.src_desc());
      add(DNNL_ARG_DIFF_DST, pd.diff_dst_desc());
      add(DNNL_ARG_DIFF_WEIGHTS, pd.diff_weights_desc());
      add(DNNL_ARG_SCRATCHPAD, pd.scratchpad_desc());
    }
  }
  void run(const dn::stream& s) {
    dnnl_exec_arg_t a[8];
    int n = 0;
    for (auto& [arg, mem] : args) a[n++] = {arg, mem.get()};
    dnnl_primitive_execute(prim.get(), s.get(), n, a);
  }
};

// Args: N, cin, cout, k, stride, H (square), dilation (padding = dilation * (k / 2)), dir, impl
void BM_Conv(benchmark::State& state) {
  const std::int64_t N = state.range(0), cin = state.range(1), cout = state.range(2), k = state.range(3),
                     stride = state.range(4), H = state.range(5), dil = state.range(6);
  const Dir dir = static_cast<Dir>(state.range(7));
  const int impl = static_cast<int>(state.range(8));
  const nnd::ConvGeometry g{N, cin, H, H, cout, k, k, stride, dil * (k / 2), dil};
  const nn::Conv2dArgs a{g.stride, g.padding, g.dilation};
  const auto x = rnd({N, cin, H, H}, 1), w = rnd({cout, cin, k, k}, 2, -0.1f, 0.1f),
             dy = rnd({N, cout, g.ho(), g.wo()}, 3);
  nn::Tensor<float> dx(x.shape), dw(w.shape), y(dy.shape);
  auto reference = [&] {
    if (dir == kFwd) benchmark::DoNotOptimize(nn::conv2d_forward(x, w, nullptr, a));
    else if (dir == kBwdData) nn::conv2d_backward(x, w, dy, a, &dx, nullptr, nullptr);
    else nn::conv2d_backward(x, w, dy, a, nullptr, &dw, nullptr);
  };
  const std::vector<std::int64_t> key{N, cin, cout, k, stride, H, dil, dir};
  auto& refs = ref_seconds();
  if (!refs.count(key)) refs[key] = best_seconds(3, reference);

  nn::Arena arena;
  const nnd::Layout layout = impl == 1 ? nnd::Layout::plain : nnd::Layout::blocked;
  nnd::Context ctx(nnd::Layouts{layout, layout, layout, nnd::Layout::blocked});
  dn::stream stream(ctx.engine());
  std::unique_ptr<BlockedConv> blocked;
  if (impl == 3) blocked = std::make_unique<BlockedConv>(g, dir, ctx.engine());
  auto onednn = [&] {
    if (impl == 3) return blocked->run(stream);
    if (dir == kFwd) nnd::conv2d_forward(ctx, arena, g, x.ptr(), w.ptr(), nullptr, y.ptr());
    else if (dir == kBwdData) nnd::conv2d_backward_data(ctx, arena, g, dy.ptr(), w.ptr(), dx.ptr(), false);
    else nnd::conv2d_backward_weights(ctx, arena, g, x.ptr(), dy.ptr(), dw.ptr(), nullptr);
  };
  if (impl != 0) onednn();  // create the primitives outside the timing
  const double sec = loop_seconds(state, [&] { impl == 0 ? reference() : onednn(); });
  state.counters["GFLOP/s"] = 2.0 * double(N * cout * g.ho() * g.wo()) * double(cin * k * k) / sec * 1e-9;
  state.counters["x_ref"] = refs[key] / sec;
  state.counters["ms"] = sec * 1e3;
}

// ---- batch norm ---------------------------------------------------------------------------------

void relu_inplace(float* y, std::int64_t n) {
  tasn::cpu::parallel_for(0, 64, [&](std::int64_t c) {
    const std::int64_t b = n * c / 64, e = n * (c + 1) / 64;
    for (std::int64_t i = b; i < e; ++i) y[i] = y[i] > 0.f ? y[i] : 0.f;
  });
}
void relu_grad(const float* y, const float* dy, float* out, std::int64_t n) {
  tasn::cpu::parallel_for(0, 64, [&](std::int64_t c) {
    const std::int64_t b = n * c / 64, e = n * (c + 1) / 64;
    for (std::int64_t i = b; i < e; ++i) out[i] = y[i] > 0.f ? dy[i] : 0.f;
  });
}

// Args: N, C, H, backward?, impl:
//   0 reference BN, then ReLU (backward: ReLU's, then BN's)
//   1 oneDNN on NCHW, then a ReLU loop      2 oneDNN on NCHW with the fused ReLU
//   3 oneDNN blocked with reorders at the call (dnnl_layers.h, Layout::blocked), then a ReLU loop
//   4 the same with the fused ReLU
//   5 the blocked primitive alone with the fused ReLU (blocked between layers)
//   6 the blocked primitive alone, then a ReLU loop over the blocked buffer
void BM_BatchNormRelu(benchmark::State& state) {
  const std::int64_t N = state.range(0), C = state.range(1), H = state.range(2);
  const bool backward = state.range(3) != 0;
  const int impl = static_cast<int>(state.range(4));
  const nnd::BnGeometry g{N, C, H * H, 1e-5, impl == 2 || impl == 4 || impl == 5};
  const auto x = rnd({N, C, H, H}, 4, -1.f, 3.f), dy = rnd(x.shape, 5), gamma = rnd({C}, 6, 0.5f, 1.5f),
             beta = rnd({C}, 7);
  nn::Tensor<float> rm({C}, 0.f), rv({C}, 1.f), y(x.shape), dx(x.shape), dg({C}), db({C}), dyr(x.shape);
  nn::BatchNormCache<float> cache;
  const nn::BatchNormState st;
  nn::Tensor<float> yref = nn::relu_forward(nn::batchnorm2d_forward(x, gamma, beta, rm, rv, st, &cache));
  auto reference = [&] {
    if (!backward) {
      benchmark::DoNotOptimize(nn::relu_forward(nn::batchnorm2d_forward(x, gamma, beta, rm, rv, st, &cache)));
    } else {
      nn::Tensor<float> d(x.shape);
      nn::relu_backward(yref, dy, d);
      nn::batchnorm2d_backward(x, gamma, d, cache, true, &dx, &dg, &db);
    }
  };
  const std::vector<std::int64_t> key{-1, N, C, H, backward};
  auto& refs = ref_seconds();
  if (!refs.count(key)) refs[key] = best_seconds(3, reference);

  nnd::Layouts layouts;
  layouts.batchnorm = impl >= 3 ? nnd::Layout::blocked : nnd::Layout::plain;
  nnd::Context ctx(layouts);
  nn::Arena arena;
  std::vector<float> mean(C), var(C);
  std::vector<unsigned char> ws(std::max<std::size_t>(1, nnd::batchnorm_relu_workspace_bytes(ctx, g)));

  // impl 5, 6: the primitive on memory already in its layout
  dn::stream stream(ctx.engine());
  dn::primitive blocked;
  std::vector<std::pair<int, dn::memory>> bargs;
  std::vector<std::vector<float>> store;
  float* blocked_y = nullptr;
  std::int64_t blocked_numel = 0;
  if (impl >= 5) {
    const auto md = nnd::detail::bn_prim_md(g, nnd::Layout::blocked);
    const dn::memory::desc cd({C}, dn::memory::data_type::f32, dn::memory::format_tag::x);
    const auto flags = nnd::detail::bn_flags(false, g.fuse_relu);
    const dn::batch_normalization_forward::primitive_desc fpd({dn::prop_kind::forward_training, md, 1e-5f, flags},
                                                              nnd::detail::user_scratchpad(), ctx.engine());
    auto add = [&](int arg, const dn::memory::desc& d) {
      store.emplace_back(d.get_size() / sizeof(float) + 1, 0.5f);
      bargs.emplace_back(arg, dn::memory(d, ctx.engine(), store.back().data()));
      return store.back().data();
    };
    blocked_numel = static_cast<std::int64_t>(md.get_size() / sizeof(float));
    if (!backward) {
      blocked = dn::primitive(fpd.get());
      add(DNNL_ARG_SRC, md);
      blocked_y = add(DNNL_ARG_DST, md);
      for (int arg : {DNNL_ARG_SCALE, DNNL_ARG_SHIFT, DNNL_ARG_MEAN, DNNL_ARG_VARIANCE}) add(arg, cd);
      if (g.fuse_relu) add(DNNL_ARG_WORKSPACE, fpd.workspace_desc());
      add(DNNL_ARG_SCRATCHPAD, fpd.scratchpad_desc());
    } else {
      const dn::batch_normalization_backward::primitive_desc bpd({dn::prop_kind::backward, md, md, 1e-5f, flags},
                                                                 nnd::detail::user_scratchpad(), ctx.engine(), fpd);
      blocked = dn::primitive(bpd.get());
      add(DNNL_ARG_SRC, md);
      blocked_y = add(DNNL_ARG_DIFF_DST, md);  // the unfused variant masks dy first
      add(DNNL_ARG_DIFF_SRC, md);
      for (int arg : {DNNL_ARG_SCALE, DNNL_ARG_SHIFT, DNNL_ARG_MEAN, DNNL_ARG_VARIANCE, DNNL_ARG_DIFF_SCALE,
                      DNNL_ARG_DIFF_SHIFT})
        add(arg, cd);
      if (g.fuse_relu) add(DNNL_ARG_WORKSPACE, bpd.workspace_desc());
      add(DNNL_ARG_SCRATCHPAD, bpd.scratchpad_desc());
    }
  }
  std::vector<float> blocked_mask_src(static_cast<std::size_t>(blocked_numel), 1.f);
  auto forward = [&] {
    nnd::batchnorm_forward(ctx, arena, g, true, 0.1, x.ptr(), gamma.ptr(), beta.ptr(), rm.ptr(), rv.ptr(), mean.data(),
                           var.data(), y.ptr(), g.fuse_relu ? ws.data() : nullptr);
    if (!g.fuse_relu) relu_inplace(y.ptr(), y.numel());
  };
  if (impl >= 1 && impl <= 4) forward();
  auto onednn = [&] {
    if (impl >= 5) {
      // unfused backward: mask dy by the forward's output first (out of place, as a trainer would)
      if (impl == 6 && backward) relu_grad(blocked_mask_src.data(), blocked_y, blocked_y, blocked_numel);
      dnnl_exec_arg_t ea[12];
      int n = 0;
      for (auto& [arg, mem] : bargs) ea[n++] = {arg, mem.get()};
      dnnl_primitive_execute(blocked.get(), stream.get(), n, ea);
      if (impl == 6 && !backward) relu_inplace(blocked_y, blocked_numel);
    } else if (!backward) {
      forward();
    } else {
      const float* d = dy.ptr();
      if (!g.fuse_relu) {
        relu_grad(y.ptr(), dy.ptr(), dyr.ptr(), dyr.numel());
        d = dyr.ptr();
      }
      nnd::batchnorm_backward(ctx, arena, g, true, x.ptr(), gamma.ptr(), mean.data(), var.data(), d, dx.ptr(), false,
                              dg.ptr(), db.ptr(), g.fuse_relu ? ws.data() : nullptr);
    }
  };
  if (impl != 0) onednn();
  const double sec = loop_seconds(state, [&] { impl == 0 ? reference() : onednn(); });
  // forward reads x (twice: statistics, then normalisation) and writes y; backward reads x, dy twice, writes dx
  const double bytes = 4.0 * double(x.numel()) * (backward ? 5 : 3);
  state.counters["GB/s"] = bytes / sec * 1e-9;
  state.counters["x_ref"] = refs[key] / sec;
  state.counters["ms"] = sec * 1e3;
}

void conv_shapes(benchmark::internal::Benchmark* b) {
  // N, cin, cout, k, stride, H, dilation
  const std::vector<std::vector<std::int64_t>> shapes = {
      {32, 3, 32, 3, 1, 32, 1},     // demo stem
      {64, 32, 32, 3, 2, 32, 1},    // demo stage 1, first conv (stride 2), 2N images
      {64, 32, 32, 3, 1, 16, 1},    // demo stage 1
      {64, 64, 64, 3, 1, 8, 1},     // demo stage 2
      {32, 16, 16, 3, 1, 32, 1},    // demo attention net, width 16
      {32, 128, 128, 3, 1, 8, 1},   // 128 channels
      {32, 32, 32, 3, 1, 8, 2},     // attention head, dilation 2
      {64, 32, 64, 1, 2, 16, 1},    // 1x1 stride-2 downsample
      {8, 64, 64, 3, 1, 56, 1},     // paper: ResNet layer1 3x3
      {8, 256, 256, 3, 1, 14, 1},   // paper: ResNet layer3 3x3
      {8, 256, 64, 1, 1, 56, 1},    // paper: bottleneck 1x1 reduce
  };
  for (const auto& s : shapes)
    for (int dir = 0; dir < 3; ++dir)
      for (int impl = 0; impl < 4; ++impl) {
        auto args = s;
        args.push_back(dir);
        args.push_back(impl);
        b->Args(args);
      }
  b->ArgNames({"N", "cin", "cout", "k", "s", "H", "d", "dir", "impl"})->UseRealTime()->Unit(benchmark::kMillisecond)
      ->MinTime(0.3);
}

void bn_shapes(benchmark::internal::Benchmark* b) {
  for (const auto& s : std::vector<std::vector<std::int64_t>>{{64, 32, 32}, {64, 64, 8}, {8, 64, 56}, {8, 256, 14}})
    for (int bwd = 0; bwd < 2; ++bwd)
      for (int impl = 0; impl < 7; ++impl) b->Args({s[0], s[1], s[2], bwd, impl});
  b->ArgNames({"N", "C", "H", "bwd", "impl"})->UseRealTime()->Unit(benchmark::kMillisecond)->MinTime(0.3);
}

BENCHMARK(BM_Conv)->Apply(conv_shapes);
BENCHMARK(BM_BatchNormRelu)->Apply(bn_shapes);

}  // namespace

BENCHMARK_MAIN();
