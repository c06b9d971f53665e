// SGEMM on the GPU, the twin of csrc/cpu/gemm: C (M x N) = op(A) . op(B), row-major, with the
// same epilogue (accumulate, bias per row or column, ReLU). Shared-memory tiles of 32 x 32;
// each thread owns one element of C and sums K in order, so results are deterministic.
#include "cuda/common.cuh"
#include "cuda/ops.cuh"

namespace fastcnn::cuda {

namespace {
constexpr int kTile = 32;

__global__ void sgemm_kernel(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K,
                             const float* A, int64_t lda, const float* B, int64_t ldb, float* C,
                             int64_t ldc, const float* bias_row, const float* bias_col,
                             bool relu, bool accumulate) {
  __shared__ float As[kTile][kTile + 1];
  __shared__ float Bs[kTile][kTile + 1];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t row = static_cast<int64_t>(blockIdx.y) * kTile + ty;
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kTile + tx;
  float sum = 0.f;
  for (int64_t k0 = 0; k0 < K; k0 += kTile) {
    const int64_t ka = k0 + tx, kb = k0 + ty;
    As[ty][tx] = (row < M && ka < K) ? (trans_a ? A[ka * lda + row] : A[row * lda + ka]) : 0.f;
    Bs[ty][tx] = (kb < K && col < N) ? (trans_b ? B[col * ldb + kb] : B[kb * ldb + col]) : 0.f;
    __syncthreads();
    for (int k = 0; k < kTile; ++k) sum += As[ty][k] * Bs[k][tx];
    __syncthreads();
  }
  if (row >= M || col >= N) return;
  float v = accumulate ? C[row * ldc + col] + sum : sum;
  if (bias_row) v += bias_row[row];
  if (bias_col) v += bias_col[col];
  C[row * ldc + col] = relu && v < 0.f ? 0.f : v;  // NaN passes, as on the CPU
}
}  // namespace

void sgemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const float* A,
           int64_t lda, const float* B, int64_t ldb, float* C, int64_t ldc,
           const float* bias_row, const float* bias_col, bool relu, bool accumulate) {
  if (M <= 0 || N <= 0) return;
  const dim3 block(kTile, kTile);
  const dim3 grid(static_cast<unsigned>((N + kTile - 1) / kTile),
                  static_cast<unsigned>((M + kTile - 1) / kTile));
  sgemm_kernel<<<grid, block>>>(trans_a, trans_b, M, N, K, A, lda, B, ldb, C, ldc, bias_row,
                                bias_col, relu, accumulate);
  FASTCNN_CUDA_LAUNCH_CHECK();
}

}  // namespace fastcnn::cuda
