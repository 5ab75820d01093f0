// Heap allocations per call of the oneDNN layers (examples/nn/dnnl_layers.h) once warm, counted
// with a replaced operator new and malloc family in this program of its own (a replaced allocator
// must not leak into the main test binary). Prints the counts; fails when a warm call allocates
// outside oneDNN's dnnl_primitive_execute (this project's code), when the count changes from one
// call to the next (a cache that keeps filling), or when a primitive is created after the first call.
//
// oneDNN 2.6 itself allocates inside every dnnl_primitive_execute (the argument map it builds and
// the execution context), so a warm call is not allocation-free; the C++ API's
// primitive::execute(stream, unordered_map) would add its own map on top (measured below as well).
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <new>
#include <unordered_map>
#include <vector>

#include "nn/dnnl_layers.h"
// last: the replacements must follow every library declaration of malloc and friends
#include "support/counting_allocator.h"

namespace {
// all allocations, and those made outside oneDNN's execute (by this project's code)
std::atomic<long> g_news{0}, g_mallocs{0}, g_outside{0};
}  // namespace

void tasn::test::note_allocation(bool from_operator_new) {
  ++(from_operator_new ? g_news : g_mallocs);
  if (!tasn::nn::dnnl::in_execute()) ++g_outside;
}

namespace {

namespace nn = tasn::nn;
namespace nnd = tasn::nn::dnnl;

struct Count {
  long news, mallocs, outside;
};
Count now() { return {g_news.load(), g_mallocs.load(), g_outside.load()}; }

bool g_ok = true;

// Calls f 3 times to warm up, then 5 times counted one by one. All counted calls must agree, none
// may create a primitive, and (for the layer API) none may allocate outside oneDNN's execute.
template <class F>
void measure(const char* what, nnd::Context& ctx, bool own_code_must_not_allocate, F&& f) {
  for (int i = 0; i < 3; ++i) f();
  const std::int64_t created = ctx.primitives_created();
  std::vector<Count> per;
  for (int i = 0; i < 5; ++i) {
    const Count a = now();
    f();
    const Count b = now();
    per.push_back({b.news - a.news, b.mallocs - a.mallocs, b.outside - a.outside});
  }
  bool stable = true;
  for (const Count& c : per) stable = stable && c.news == per[0].news && c.mallocs == per[0].mallocs;
  std::printf("%-50s operator new %3ld  malloc family %3ld  outside oneDNN's execute %ld  per call%s\n", what,
              per[0].news, per[0].mallocs, per[0].outside, stable ? "" : "  (NOT STABLE)");
  if (!stable) std::printf("  FAIL: the count changes between calls\n");
  if (ctx.primitives_created() != created) std::printf("  FAIL: a primitive was created after warm-up\n");
  if (own_code_must_not_allocate && per[0].outside != 0)
    std::printf("  FAIL: dnnl_layers.h itself allocated (outside dnnl_primitive_execute)\n");
  g_ok = g_ok && stable && ctx.primitives_created() == created && (!own_code_must_not_allocate || per[0].outside == 0);
}

}  // namespace

int main() {
  nn::Arena arena(64 << 20);
  for (const nnd::Layout layout : {nnd::Layout::plain, nnd::Layout::blocked}) {
    nnd::Context ctx(nnd::Layouts{layout, layout, layout, layout});
    const char* ln = layout == nnd::Layout::plain ? "plain" : "blocked";
    const nnd::ConvGeometry g{8, 64, 28, 28, 64, 3, 3, 1, 1, 1};
    std::vector<float> x(g.x_numel(), 0.5f), w(g.weight_numel(), 0.01f), b(g.cout, 0.f), y(g.y_numel()),
        dx(g.x_numel()), dw(g.weight_numel()), db(g.cout);
    char name[96];
    std::snprintf(name, sizeof name, "conv2d_forward (%s, bias)", ln);
    measure(name, ctx, true, [&] { nnd::conv2d_forward(ctx, arena, g, x.data(), w.data(), b.data(), y.data()); });
    std::snprintf(name, sizeof name, "conv2d_backward_data (%s, accumulate)", ln);
    measure(name, ctx, true, [&] { nnd::conv2d_backward_data(ctx, arena, g, y.data(), w.data(), dx.data(), true); });
    std::snprintf(name, sizeof name, "conv2d_backward_weights (%s, bias)", ln);
    measure(name, ctx, true,
            [&] { nnd::conv2d_backward_weights(ctx, arena, g, x.data(), y.data(), dw.data(), db.data()); });

    const nnd::BnGeometry bg{8, 64, 28 * 28, 1e-5, true};
    std::vector<float> gm(64, 1.f), bt(64, 0.f), m(64), v(64), rm(64, 0.f), rv(64, 1.f), dg(64), dbt(64);
    std::vector<unsigned char> ws(nnd::batchnorm_relu_workspace_bytes(ctx, bg));
    std::snprintf(name, sizeof name, "batchnorm_forward (%s, training, fused ReLU)", ln);
    measure(name, ctx, true, [&] {
      nnd::batchnorm_forward(ctx, arena, bg, true, 0.1, x.data(), gm.data(), bt.data(), rm.data(), rv.data(),
                             m.data(), v.data(), y.data(), ws.data());
    });
    std::snprintf(name, sizeof name, "batchnorm_backward (%s, fused ReLU)", ln);
    measure(name, ctx, true, [&] {
      nnd::batchnorm_backward(ctx, arena, bg, true, x.data(), gm.data(), m.data(), v.data(), y.data(), dx.data(),
                              false, dg.data(), dbt.data(), ws.data());
    });
  }

  // One raw execute of a plain convolution, C API (stack arguments) against the C++ API (map).
  {
    namespace dn = ::dnnl;
    dn::engine eng(dn::engine::kind::cpu, 0);
    dn::stream s(eng);
    const auto f32 = dn::memory::data_type::f32;
    const dn::memory::desc xd({8, 64, 28, 28}, f32, dn::memory::format_tag::nchw),
        wd({64, 64, 3, 3}, f32, dn::memory::format_tag::oihw);
    dn::primitive_attr attr;
    attr.set_scratchpad_mode(dn::scratchpad_mode::user);
    const dn::convolution_forward::primitive_desc pd(
        {dn::prop_kind::forward_training, dn::algorithm::convolution_direct, xd, wd, xd, {1, 1}, {1, 1}, {1, 1}}, attr,
        eng);
    const dn::convolution_forward conv(pd);
    std::vector<float> x(xd.get_size() / 4, 0.5f), w(wd.get_size() / 4, 0.01f), y(x.size());
    std::vector<unsigned char> scratch(pd.scratchpad_desc().get_size() + 1);
    dn::memory mx(xd, eng, x.data()), mw(wd, eng, w.data()), my(xd, eng, y.data()),
        ms(pd.scratchpad_desc(), eng, scratch.data());
    dnnl_exec_arg_t args[4] = {{DNNL_ARG_SRC, mx.get()}, {DNNL_ARG_WEIGHTS, mw.get()}, {DNNL_ARG_DST, my.get()},
                               {DNNL_ARG_SCRATCHPAD, ms.get()}};
    nnd::Context dummy;  // measure() wants a Context for its creation check
    measure("raw dnnl_primitive_execute, 4 args (C API)", dummy, false,
            [&] { dnnl_primitive_execute(conv.get(), s.get(), 4, args); });
    measure("raw primitive::execute, 4 args (C++ API)", dummy, false, [&] {
      conv.execute(s, {{DNNL_ARG_SRC, mx}, {DNNL_ARG_WEIGHTS, mw}, {DNNL_ARG_DST, my}, {DNNL_ARG_SCRATCHPAD, ms}});
    });
  }
  std::printf("%s\n", g_ok ? "OK" : "FAILED");
  return g_ok ? 0 : 1;
}
