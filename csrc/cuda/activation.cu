// ReLU on the GPU, the twin of csrc/cpu/activation.cpp (NaN passes forward and backward).
#include "cuda/common.cuh"
#include "cuda/ops.cuh"

namespace fastcnn::cuda {

namespace {
__global__ void relu_forward_kernel(int64_t n, const float* x, float* y) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) y[i] = x[i] < 0.f ? 0.f : x[i];
}

__global__ void relu_backward_kernel(int64_t n, const float* y, const float* dy, float* dx) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) dx[i] = y[i] <= 0.f ? 0.f : dy[i];
}
}  // namespace

// ---- relu: forward, backward ------------------------------------------------------------------

void relu_forward(int64_t n, const float* x, float* y) {
  if (n <= 0) return;
  relu_forward_kernel<<<blocks_for(n), kThreads>>>(n, x, y);
  FASTCNN_CUDA_LAUNCH_CHECK();
}

void relu_backward(int64_t n, const float* y, const float* dy, float* dx) {
  if (n <= 0) return;
  relu_backward_kernel<<<blocks_for(n), kThreads>>>(n, y, dy, dx);
  FASTCNN_CUDA_LAUNCH_CHECK();
}

}  // namespace fastcnn::cuda
