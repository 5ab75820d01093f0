// tests/dist/ckpt_diff.cpp - compares two trainer checkpoints (safetensors) tensor by tensor for
// the data-parallel tests (tests/dist/check_mpi.sh): prints the largest difference relative to
// the tensor's scale, max |a - b| / max |a|, over all tensors (parameters, batch-norm buffers,
// momentum), the tensor where it occurs, and "bit-identical" when every value is equal.
// Exit status 2 when the files hold different tensor names or shapes.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>

#include "nn/safetensors.h"

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: ckpt_diff A.safetensors B.safetensors\n");
    return 2;
  }
  try {
    namespace st = tasn::nn::safetensors;
    const st::File a = st::read(argv[1]), b = st::read(argv[2]);
    double worst = 0;
    std::string where = "-";
    bool identical = true;
    for (const auto& [name, ea] : a.tensors) {
      const auto it = b.tensors.find(name);
      if (it == b.tensors.end() || it->second.shape != ea.shape) {
        std::fprintf(stderr, "ckpt_diff: tensor %s is missing or shaped differently in %s\n", name.c_str(), argv[2]);
        return 2;
      }
      double scale = 0, diff = 0;
      for (std::size_t i = 0; i < ea.values.size(); ++i) {
        scale = std::max(scale, std::fabs(ea.values[i]));
        diff = std::max(diff, std::fabs(ea.values[i] - it->second.values[i]));
        identical &= ea.values[i] == it->second.values[i];
      }
      const double rel = diff / std::max(scale, 1e-30);
      if (rel > worst) {
        worst = rel;
        where = name;
      }
    }
    if (a.tensors.size() != b.tensors.size()) {
      std::fprintf(stderr, "ckpt_diff: the files hold %zu and %zu tensors\n", a.tensors.size(), b.tensors.size());
      return 2;
    }
    std::printf("max_rel %.3e tensor %s%s\n", worst, where.c_str(), identical ? " bit-identical" : "");
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ckpt_diff: %s\n", e.what());
    return 2;
  }
}
