// Prints the CUDA device the gpu-labelled tests run on, or why they skip. Always exits 0.
#include <cstdio>
#include <string>

#include "gpu/gpu_runners.h"

int main() {
  std::string reason;
  if (tasn::test::gpu::device_available(&reason)) {
    std::printf("GPU: %s: gpu-labelled tests run on it\n", tasn::test::gpu::device_description().c_str());
  } else {
    std::printf("GPU: %s: gpu-labelled tests that need a device are skipped (SKIPPED in ctest)\n",
                reason.c_str());
  }
  return 0;
}
