// Optimizer updates, in place over one parameter tensor, with PyTorch's rules (torch.optim.SGD
// with dampening 0, torch.optim.Adam without amsgrad) so a run can be compared step for step.
#include <cmath>

#include "cpu/ops.h"

namespace fastcnn {

namespace {
constexpr int64_t kParallelMin = 1 << 15;  // `if (parallel: ...)`: see activation.cpp
}

void sgd_step(int64_t n, float* param, const float* grad, float* buf, float lr, float momentum,
              float weight_decay, bool nesterov, bool first) {
#ifdef FASTCNN_OPENMP
#pragma omp parallel for simd schedule(static) \
    num_threads(num_threads()) if (parallel : n > kParallelMin)
#endif
  for (int64_t i = 0; i < n; ++i) {
    float g = grad[i] + weight_decay * param[i];
    if (momentum != 0.f) {
      const float b = first ? g : momentum * buf[i] + g;
      buf[i] = b;
      g = nesterov ? g + momentum * b : b;
    }
    param[i] -= lr * g;
  }
}

void adam_step(int64_t n, float* param, const float* grad, float* m, float* v, float lr,
               float beta1, float beta2, float eps, float weight_decay, int64_t step,
               bool decoupled) {
  const float l2 = decoupled ? 0.f : weight_decay;
  const float keep = decoupled ? 1.f - lr * weight_decay : 1.f;
  const double bc1 = 1.0 - std::pow(static_cast<double>(beta1), static_cast<double>(step));
  const double bc2 = 1.0 - std::pow(static_cast<double>(beta2), static_cast<double>(step));
  const float step_size = static_cast<float>(lr / bc1);
  const float bc2_sqrt = static_cast<float>(std::sqrt(bc2));
#ifdef FASTCNN_OPENMP
#pragma omp parallel for simd schedule(static) \
    num_threads(num_threads()) if (parallel : n > kParallelMin)
#endif
  for (int64_t i = 0; i < n; ++i) {
    const float g = grad[i] + l2 * param[i];
    m[i] = beta1 * m[i] + (1.f - beta1) * g;
    v[i] = beta2 * v[i] + (1.f - beta2) * g * g;
    const float denom = std::sqrt(v[i]) / bc2_sqrt + eps;
    param[i] = param[i] * keep - step_size * m[i] / denom;
  }
}

}  // namespace fastcnn
