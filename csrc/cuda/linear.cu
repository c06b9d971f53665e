// Linear layers on the GPU, the twin of csrc/cpu/linear.cpp, on the GPU SGEMM:
//   y = x . w^T + b;  dx = dy . w;  dw = dy^T . x;  db = column sums of dy (one thread a column,
//   rows in order).
#include "cuda/common.cuh"
#include "cuda/ops.cuh"

namespace fastcnn::cuda {

namespace {
__global__ void column_sums(int64_t rows, int64_t cols, const float* a, float* out) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= cols) return;
  float s = 0.f;
  for (int64_t i = 0; i < rows; ++i) s += a[i * cols + j];
  out[j] = s;
}
}  // namespace

// ---- forward ----------------------------------------------------------------------------------

void linear_forward(int64_t N, int64_t in, int64_t out, const float* x, const float* w,
                    const float* b, float* y, bool relu) {
  sgemm(false, true, N, out, in, x, in, w, in, y, out, nullptr, b, relu, false);
}

// ---- backward ---------------------------------------------------------------------------------

void linear_backward(int64_t N, int64_t in, int64_t out, const float* x, const float* w,
                     const float* dy, float* dx, float* dw, float* db) {
  if (dx) sgemm(false, false, N, in, out, dy, out, w, in, dx, in, nullptr, nullptr, false, false);
  sgemm(true, false, out, in, N, dy, out, x, in, dw, in, nullptr, nullptr, false, false);
  if (db && out > 0) {
    column_sums<<<blocks_for(out), kThreads>>>(N, out, dy, db);
    FASTCNN_CUDA_LAUNCH_CHECK();
  }
}

}  // namespace fastcnn::cuda
