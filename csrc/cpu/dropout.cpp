// dropout: each element kept with probability 1 - p and scaled by 1 / (1 - p) (inverted
// dropout, as PyTorch's nn.Dropout in training), zeroed otherwise. The keep decision of element
// i is a hash of (seed, i): the same for any thread count, and the caller gets a new seed a call.
#include "cpu/ops.h"

namespace fastcnn {

namespace {
constexpr int64_t kParallelMin = 1 << 16;  // see activation.cpp

// splitmix64's finaliser: a well-mixed 64-bit value from (seed, i).
inline uint64_t mix(uint64_t seed, uint64_t i) {
  uint64_t z = seed + (i + 1) * 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
}  // namespace

void dropout_forward(int64_t n, const float* x, float p, uint64_t seed, float* y, uint8_t* mask) {
  // Kept where the top 24 bits, as a fraction of 2^24, are >= p.
  const uint64_t threshold = static_cast<uint64_t>(static_cast<double>(p) * (1 << 24));
  const float scale = p < 1.f ? 1.f / (1.f - p) : 0.f;
#ifdef FASTCNN_OPENMP
#pragma omp parallel for schedule(static) num_threads(num_threads()) if (n > kParallelMin)
#endif
  for (int64_t i = 0; i < n; ++i) {
    const uint8_t keep = (mix(seed, static_cast<uint64_t>(i)) >> 40) >= threshold;
    mask[i] = keep;
    y[i] = keep ? x[i] * scale : 0.f;
  }
}

void dropout_backward(int64_t n, const float* dy, const uint8_t* mask, float p, float* dx) {
  const float scale = p < 1.f ? 1.f / (1.f - p) : 0.f;
#ifdef FASTCNN_OPENMP
#pragma omp parallel for simd schedule(static) \
    num_threads(num_threads()) if (parallel : n > kParallelMin)
#endif
  for (int64_t i = 0; i < n; ++i) {
    const float g = dy[i];
    dx[i] = mask[i] ? g * scale : 0.f;
  }
}

}  // namespace fastcnn
