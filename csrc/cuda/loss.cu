// Softmax cross-entropy on the GPU, the twin of csrc/cpu/loss.cpp: one thread per row for the
// gradient (rows shifted by their maximum), then one block sums the row losses in a fixed
// order, so the mean is deterministic.
#include "cuda/common.cuh"
#include "cuda/ops.cuh"

namespace fastcnn::cuda {

namespace {
__global__ void softmax_ce_rows(int64_t N, int64_t K, const float* logits, const int64_t* labels,
                                float* dlogits, float* row_loss) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= N) return;
  const float* z = logits + i * K;
  float* d = dlogits + i * K;
  float zmax = z[0];
  for (int64_t k = 1; k < K; ++k) zmax = fmaxf(zmax, z[k]);
  double sum = 0.0;
  for (int64_t k = 0; k < K; ++k) {
    d[k] = expf(z[k] - zmax);
    sum += d[k];
  }
  const float scale = static_cast<float>(1.0 / sum) / static_cast<float>(N);
  for (int64_t k = 0; k < K; ++k) d[k] *= scale;
  d[labels[i]] -= 1.f / static_cast<float>(N);
  row_loss[i] = static_cast<float>(log(sum) - static_cast<double>(z[labels[i]] - zmax));
}

__global__ void mean_kernel(int64_t N, const float* row_loss, float* loss) {
  __shared__ double part[kThreads];
  double s = 0.0;
  for (int64_t i = threadIdx.x; i < N; i += kThreads) s += row_loss[i];
  part[threadIdx.x] = s;
  __syncthreads();
  for (int stride = kThreads / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) part[threadIdx.x] += part[threadIdx.x + stride];
    __syncthreads();
  }
  if (threadIdx.x == 0) *loss = static_cast<float>(part[0] / static_cast<double>(N));
}
}  // namespace

void softmax_cross_entropy(int64_t N, int64_t K, const float* logits, const int64_t* labels,
                           float* dlogits, float* row_loss, float* loss) {
  if (N <= 0 || K <= 0) return;
  softmax_ce_rows<<<blocks_for(N), kThreads>>>(N, K, logits, labels, dlogits, row_loss);
  FASTCNN_CUDA_LAUNCH_CHECK();
  mean_kernel<<<1, kThreads>>>(N, row_loss, loss);
  FASTCNN_CUDA_LAUNCH_CHECK();
}

}  // namespace fastcnn::cuda
