// trilinear_demo - what the trilinear attention operator computes, on generated feature maps,
// and how fast the CPU path runs at the TASN size.
//
// Feature maps: C channels on an H x W grid, in G groups; every channel of group g responds to
// the same "part" (a Gaussian blob at its own location) plus noise, like CNN channels that fire
// on one object part. Trilinear attention should (1) relate each channel mostly to channels of
// its own group (rows of A) and (2) give attention maps M, each a mix of related channels.
//
// Usage: trilinear_demo [--threads N] [--batch N]
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "tasn/trilinear_attention.h"

namespace {

struct Blob {
  double cy, cx, r;
};

// X[c, y, x] = a_c * exp(-d^2 / 2r^2) of its group's blob + 0.15 * noise, clipped at 0 (ReLU).
std::vector<float> make_features(int C, int H, int W, const std::vector<Blob>& blobs,
                                 std::mt19937& rng) {
  std::normal_distribution<double> noise(0.0, 1.0);
  std::uniform_real_distribution<double> amp(0.6, 1.4);
  const int G = static_cast<int>(blobs.size());
  std::vector<float> x(static_cast<std::size_t>(C) * H * W);
  for (int c = 0; c < C; ++c) {
    const Blob& b = blobs[c % G];
    const double a = amp(rng);
    for (int y = 0; y < H; ++y)
      for (int xx = 0; xx < W; ++xx) {
        const double d2 = (y - b.cy) * (y - b.cy) + (xx - b.cx) * (xx - b.cx);
        const double v = a * std::exp(-d2 / (2 * b.r * b.r)) + 0.15 * noise(rng);
        x[(static_cast<std::size_t>(c) * H + y) * W + xx] = static_cast<float>(std::max(0.0, v));
      }
  }
  return x;
}

void print_map(const char* title, const float* m, int H, int W) {
  const char* shades = " .:-=+*#%@";
  float lo = m[0], hi = m[0];
  for (int i = 0; i < H * W; ++i) {
    lo = std::min(lo, m[i]);
    hi = std::max(hi, m[i]);
  }
  std::printf("  %s (min %.3f, max %.3f)\n", title, lo, hi);
  for (int y = 0; y < H; y += 2) {
    std::printf("    ");
    for (int x = 0; x < W; ++x) {
      const float t = hi > lo ? (m[y * W + x] - lo) / (hi - lo) : 0.f;
      std::putchar(shades[std::min(9, static_cast<int>(t * 9.999f))]);
    }
    std::putchar('\n');
  }
}

// Mean of the map within 2 pixels of (cy, cx).
double mean_near(const float* m, int H, int W, const Blob& b) {
  double sum = 0;
  int n = 0;
  for (int y = 0; y < H; ++y)
    for (int x = 0; x < W; ++x)
      if ((y - b.cy) * (y - b.cy) + (x - b.cx) * (x - b.cx) <= 4.0) {
        sum += m[y * W + x];
        ++n;
      }
  return sum / n;
}

// True when the map's maximum lies within 3 pixels of (cy, cx).
bool peak_near(const float* m, int H, int W, const Blob& b) {
  int best = 0;
  for (int i = 1; i < H * W; ++i)
    if (m[i] > m[best]) best = i;
  const double y = best / W, x = best % W;
  return (y - b.cy) * (y - b.cy) + (x - b.cx) * (x - b.cx) <= 9.0;
}

template <class F>
double best_seconds(int reps, F&& f) {
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  int batch = 8;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--threads") && i + 1 < argc) {
      tasn::cpu::set_num_threads(std::atoi(argv[++i]));
    } else if (!std::strcmp(argv[i], "--batch") && i + 1 < argc) {
      batch = std::max(1, std::atoi(argv[++i]));
    } else {
      std::fprintf(stderr, "usage: %s [--threads N] [--batch N]\n", argv[0]);
      return 2;
    }
  }

  // ---- 1. what it computes ---------------------------------------------------------------
  const int C = 64, H = 28, W = 28;
  const std::vector<Blob> blobs = {{6, 7, 2.5}, {20, 21, 2.5}, {8, 22, 2.0}, {21, 6, 3.0}};
  const int G = static_cast<int>(blobs.size());
  std::mt19937 rng(7);
  const auto x = make_features(C, H, W, blobs, rng);
  std::vector<float> m(x.size()), saved(tasn::trilinear_saved_elems(1, C, H, W));
  tasn::cpu::trilinear_attention_forward(tasn::TrilinearForwardArgs<float>{
      tasn::Tensor4<const float>(x.data(), {1, C, H, W}), tasn::Tensor4<float>(m.data(), {1, C, H, W}),
      tasn::Tensor1<float>(saved.data(), {static_cast<std::int64_t>(saved.size())}), {}});
  const float* A = saved.data() + x.size();

  std::printf("trilinear attention on generated features: N=1, C=%d in %d groups, %dx%d, beta=7\n",
              C, G, H, W);
  double same = 0, other = 0;
  for (int i = 0; i < C; ++i)
    for (int j = 0; j < C; ++j) (i % G == j % G ? same : other) += A[i * C + j];
  std::printf("  channel relations A: %.1f %% of each row's weight on its own group (chance %.1f %%)\n",
              100.0 * same / C, 100.0 / G);
  std::printf("  per group: channels whose map peaks on their own part, and the map's mean on its\n"
              "  own part / mean on the other parts, for the input X and the attention maps M:\n");
  for (int g = 0; g < G; ++g) {
    int px = 0, pm = 0;
    double rx = 0, rm = 0;
    for (int c = g; c < C; c += G) {
      px += peak_near(&x[c * H * W], H, W, blobs[g]);
      pm += peak_near(&m[c * H * W], H, W, blobs[g]);
      double ox = 0, om = 0;
      for (int o = 0; o < G; ++o)
        if (o != g) {
          ox += mean_near(&x[c * H * W], H, W, blobs[o]) / (G - 1);
          om += mean_near(&m[c * H * W], H, W, blobs[o]) / (G - 1);
        }
      rx += mean_near(&x[c * H * W], H, W, blobs[g]) / ox;
      rm += mean_near(&m[c * H * W], H, W, blobs[g]) / om;
    }
    const int n = C / G;
    std::printf("    group %d (part at y=%2.0f x=%2.0f): peak on own part X %2d/%d  M %2d/%d;"
                "  own/other X %5.1f  M %4.2f\n",
                g, blobs[g].cy, blobs[g].cx, px, n, pm, n, rx / n, rm / n);
  }
  std::printf("  (M mixes related channels: every map keeps its own part strongest, loses the\n"
              "   pixel noise, and also shows the parts its channel relates to; the sum over\n"
              "   channels is TASN's structure map, a single channel its detail map)\n");
  print_map("channel 0 of X (input feature map, noisy)", &x[0], H, W);
  print_map("channel 0 of M (its attention map)", &m[0], H, W);

  // ---- 2. how fast: TASN size ------------------------------------------------------------
  const std::int64_t nb = batch, numel = nb * 512 * 28 * 28, ns = tasn::trilinear_saved_elems(nb, 512, 28, 28);
  std::vector<float> xb(numel), mb(numel), dxb(numel), sb(ns);
  std::uniform_real_distribution<float> u(0.f, 3.f);
  for (auto& v : xb) v = u(rng);
  std::vector<float> dmb(xb.rbegin(), xb.rend());
  const tasn::Tensor4<const float> xv(xb.data(), {nb, 512, 28, 28});
  const tasn::TrilinearForwardArgs<float> fa{xv, tasn::Tensor4<float>(mb.data(), {nb, 512, 28, 28}),
                                             tasn::Tensor1<float>(sb.data(), {ns}), {}};
  const tasn::TrilinearBackwardArgs<float> ba{xv, tasn::Tensor4<const float>(dmb.data(), {nb, 512, 28, 28}),
                                              tasn::Tensor1<const float>(sb.data(), {ns}),
                                              tasn::Tensor4<float>(dxb.data(), {nb, 512, 28, 28}), {}};
  const double fwd = best_seconds(3, [&] { tasn::cpu::trilinear_attention_forward(fa); });
  const double bwd = best_seconds(3, [&] { tasn::cpu::trilinear_attention_backward(ba); });
  const double gemm_flop = 2.0 * double(nb) * 512.0 * 512.0 * 28.0 * 28.0;
  std::printf("\nCPU speed at the TASN size N=%d, C=512, 28x28, float, %d threads:\n", batch,
              tasn::cpu::num_threads());
  std::printf("  forward  %8.2f ms  %6.1f GFLOP/s  (2 GEMMs + 2 softmaxes)\n", fwd * 1e3, 2 * gemm_flop / fwd * 1e-9);
  std::printf("  backward %8.2f ms  %6.1f GFLOP/s  (4 GEMMs + 2 softmax backward steps)\n", bwd * 1e3,
              4 * gemm_flop / bwd * 1e-9);
  std::printf("  saved S and A: %.1f MB; the benchmark bench/bench_trilinear_cpu compares with GEMMs alone\n",
              sb.size() * sizeof(float) / 1e6);
  return 0;
}
