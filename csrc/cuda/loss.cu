// Softmax cross-entropy on the GPU, the twin of csrc/cpu/loss.cpp (the same arithmetic): one
// thread per row for the gradient (rows shifted by their maximum), then one block sums the row
// losses in a fixed order, so the mean is deterministic.
//
// Labels live on the device, so unlike the CPU binding nothing checks their range beforehand: a
// row whose label is outside [0, K) is read no further, its loss and its dlogits row are NaN,
// and so is the mean. Nothing is read or written out of bounds.
//
// batch_stats: an epoch's loss and accuracy sums, kept on the device, so a training step never
// waits for a copy to the host.
#include "cuda/common.cuh"
#include "cuda/ops.cuh"

namespace fastcnn::cuda {

namespace {
__global__ void softmax_ce_rows(int64_t N, int64_t K, const float* logits, const int64_t* labels,
                                float* dlogits, float e, double* row_loss) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= N) return;
  const float* z = logits + i * K;
  float* d = dlogits + i * K;
  const int64_t label = labels[i];
  if (label < 0 || label >= K) {
    for (int64_t k = 0; k < K; ++k) d[k] = nanf("");
    row_loss[i] = nan("");
    return;
  }
  const float inv_n = 1.f / static_cast<float>(N);
  float zmax = z[0];
  for (int64_t k = 1; k < K; ++k) zmax = z[k] > zmax ? z[k] : zmax;
  double sum = 0.0;
  for (int64_t k = 0; k < K; ++k) {
    d[k] = expf(z[k] - zmax);
    sum += d[k];
  }
  const float inv_sum = static_cast<float>(1.0 / sum);
  for (int64_t k = 0; k < K; ++k) d[k] *= inv_sum * inv_n;
  if (e == 0.f) {
    d[label] -= inv_n;
    row_loss[i] = log(sum) - static_cast<double>(z[label] - zmax);
    return;
  }
  const float spread = e / static_cast<float>(K) * inv_n;
  double shifted = 0.0;  // sum of z - max over the row
  for (int64_t k = 0; k < K; ++k) {
    d[k] -= spread;
    shifted += static_cast<double>(z[k] - zmax);
  }
  d[label] -= (1.f - e) * inv_n;
  row_loss[i] = log(sum) - (1.0 - e) * static_cast<double>(z[label] - zmax) -
                e / static_cast<double>(K) * shifted;
}

__global__ void mean_kernel(int64_t N, const double* row_loss, float* loss) {
  __shared__ double part[kThreads];
  double s = 0.0;
  for (int64_t i = threadIdx.x; i < N; i += kThreads) s += row_loss[i];
  part[threadIdx.x] = s;
  __syncthreads();
  for (unsigned stride = kThreads / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) part[threadIdx.x] += part[threadIdx.x + stride];
    __syncthreads();
  }
  if (threadIdx.x == 0) *loss = static_cast<float>(part[0] / static_cast<double>(N));
}

// One block: each thread counts the correct rows of a fixed stride, then a tree sums the counts.
__global__ void batch_stats_kernel(int64_t N, int64_t K, const float* logits, const int64_t* labels,
                                   const float* loss, double* stats) {
  __shared__ long long part[kThreads];
  long long correct = 0;
  for (int64_t i = threadIdx.x; i < N; i += kThreads) {
    const float* z = logits + i * K;
    // numpy.argmax: the first maximum wins. A row holding NaN predicts nothing.
    bool nan = z[0] != z[0];
    int64_t best = 0;
    for (int64_t k = 1; k < K && !nan; ++k) {
      nan = z[k] != z[k];
      if (z[k] > z[best]) best = k;
    }
    correct += !nan && best == labels[i];
  }
  part[threadIdx.x] = correct;
  __syncthreads();
  for (unsigned stride = kThreads / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) part[threadIdx.x] += part[threadIdx.x + stride];
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    stats[0] += static_cast<double>(*loss) * static_cast<double>(N);
    stats[1] += static_cast<double>(part[0]);
  }
}
}  // namespace

// ---- softmax cross-entropy --------------------------------------------------------------------

void softmax_cross_entropy(int64_t N, int64_t K, const float* logits, const int64_t* labels,
                           float* dlogits, float label_smoothing, double* row_loss, float* loss) {
  if (N <= 0 || K <= 0) return;
  softmax_ce_rows<<<blocks_for(N), kThreads>>>(N, K, logits, labels, dlogits, label_smoothing,
                                               row_loss);
  FASTCNN_CUDA_LAUNCH_CHECK();
  mean_kernel<<<1, kThreads>>>(N, row_loss, loss);
  FASTCNN_CUDA_LAUNCH_CHECK();
}

// ---- batch statistics -------------------------------------------------------------------------

void batch_stats(int64_t N, int64_t K, const float* logits, const int64_t* labels,
                 const float* loss, double* stats) {
  if (N <= 0 || K <= 0) return;
  batch_stats_kernel<<<1, kThreads>>>(N, K, logits, labels, loss, stats);
  FASTCNN_CUDA_LAUNCH_CHECK();
}

}  // namespace fastcnn::cuda
