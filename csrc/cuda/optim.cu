// Optimizer updates on the GPU, the twins of csrc/cpu/optim.cpp (PyTorch's rules).
#include <cmath>

#include "cuda/common.cuh"
#include "cuda/ops.cuh"

namespace fastcnn::cuda {

namespace {
__global__ void sgd_kernel(int64_t n, float* param, const float* grad, float* buf, float lr,
                           float momentum, float weight_decay, bool nesterov, bool first) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  float g = grad[i] + weight_decay * param[i];
  if (momentum != 0.f) {
    const float b = first ? g : momentum * buf[i] + g;
    buf[i] = b;
    g = nesterov ? g + momentum * b : b;
  }
  param[i] -= lr * g;
}

__global__ void adam_kernel(int64_t n, float* param, const float* grad, float* m, float* v,
                            float step_size, float beta1, float beta2, float eps, float l2,
                            float keep, float bc2_sqrt) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const float g = grad[i] + l2 * param[i];
  m[i] = beta1 * m[i] + (1.f - beta1) * g;
  v[i] = beta2 * v[i] + (1.f - beta2) * g * g;
  param[i] = param[i] * keep - step_size * m[i] / (sqrtf(v[i]) / bc2_sqrt + eps);
}
}  // namespace

void sgd_step(int64_t n, float* param, const float* grad, float* momentum_buf, float lr,
              float momentum, float weight_decay, bool nesterov, bool first) {
  if (n <= 0) return;
  sgd_kernel<<<blocks_for(n), kThreads>>>(n, param, grad, momentum_buf, lr, momentum,
                                          weight_decay, nesterov, first);
  FASTCNN_CUDA_LAUNCH_CHECK();
}

void adam_step(int64_t n, float* param, const float* grad, float* m, float* v, float lr,
               float beta1, float beta2, float eps, float weight_decay, int64_t step,
               bool decoupled) {
  if (n <= 0) return;
  // AdamW: param *= 1 - lr * decay before the update; Adam: decay * param added to the gradient.
  const float l2 = decoupled ? 0.f : weight_decay;
  const float keep = decoupled ? 1.f - lr * weight_decay : 1.f;
  const double bc1 = 1.0 - std::pow(static_cast<double>(beta1), static_cast<double>(step));
  const double bc2 = 1.0 - std::pow(static_cast<double>(beta2), static_cast<double>(step));
  adam_kernel<<<blocks_for(n), kThreads>>>(n, param, grad, m, v, static_cast<float>(lr / bc1),
                                           beta1, beta2, eps, l2, keep,
                                           static_cast<float>(std::sqrt(bc2)));
  FASTCNN_CUDA_LAUNCH_CHECK();
}

}  // namespace fastcnn::cuda
