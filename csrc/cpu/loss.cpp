// Softmax cross-entropy with mean reduction, fused: one pass computes the loss and its gradient.
// Stable for any logits: each row is shifted by its maximum before exp, and the loss is taken
// as log(sum exp(z - max)) - (z_label - max), never log(softmax).
//
// Label smoothing e (PyTorch's): the target is q = (1 - e) at the label plus e / K everywhere,
// so a row's loss is log(sum exp(z - max)) - sum_k q_k (z_k - max) and its gradient p - q.
#include <cmath>

#include "cpu/ops.h"

namespace fastcnn {

double softmax_cross_entropy(int64_t N, int64_t K, const float* logits, const int64_t* labels,
                             float* dlogits, float label_smoothing) {
  double total = 0.0;
  const float inv_n = N > 0 ? 1.f / static_cast<float>(N) : 0.f;
  const float e = label_smoothing, spread = e / static_cast<float>(K) * inv_n;
  for (int64_t i = 0; i < N; ++i) {
    const float* z = logits + i * K;
    float* d = dlogits + i * K;
    float zmax = z[0];
    for (int64_t k = 1; k < K; ++k) zmax = z[k] > zmax ? z[k] : zmax;
    double sum = 0.0;
    for (int64_t k = 0; k < K; ++k) {
      d[k] = std::exp(z[k] - zmax);
      sum += d[k];
    }
    const float inv_sum = static_cast<float>(1.0 / sum);
    for (int64_t k = 0; k < K; ++k) d[k] *= inv_sum * inv_n;
    if (e == 0.f) {
      d[labels[i]] -= inv_n;
      total += std::log(sum) - static_cast<double>(z[labels[i]] - zmax);
      continue;
    }
    double shifted = 0.0;  // sum of z - max over the row
    for (int64_t k = 0; k < K; ++k) {
      d[k] -= spread;
      shifted += static_cast<double>(z[k] - zmax);
    }
    d[labels[i]] -= (1.f - e) * inv_n;
    total += std::log(sum) - (1.0 - e) * static_cast<double>(z[labels[i]] - zmax) -
             e / static_cast<double>(K) * shifted;
  }
  return N > 0 ? total / static_cast<double>(N) : 0.0;
}

}  // namespace fastcnn
