// AVX2 + FMA micro-kernel: 6 x 16 tile, 12 ymm accumulators; per k, two loads of B and six
// broadcasts of A feed twelve FMAs. Compiled with -mavx2 -mfma (this file only).
#include "cpu/gemm/conv_kernel.h"
#include "cpu/gemm/gemm.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

namespace fastcnn {

namespace {
constexpr int MR = 6, NR = 16;

void kernel_avx2(int64_t K, const float* Ap, const float* Bp, float* C, int64_t ldc, int m, int n,
                 bool accumulate) {
  __m256 c[MR][2];
  for (int i = 0; i < MR; ++i) c[i][0] = c[i][1] = _mm256_setzero_ps();
  for (int64_t k = 0; k < K; ++k) {
    const __m256 b0 = _mm256_loadu_ps(Bp + k * NR);
    const __m256 b1 = _mm256_loadu_ps(Bp + k * NR + 8);
    const float* a = Ap + k * MR;
    for (int i = 0; i < MR; ++i) {
      const __m256 ai = _mm256_broadcast_ss(a + i);
      c[i][0] = _mm256_fmadd_ps(ai, b0, c[i][0]);
      c[i][1] = _mm256_fmadd_ps(ai, b1, c[i][1]);
    }
  }
  if (m == MR && n == NR) {
    for (int i = 0; i < MR; ++i) {
      float* ci = C + i * ldc;
      if (accumulate) {
        c[i][0] = _mm256_add_ps(c[i][0], _mm256_loadu_ps(ci));
        c[i][1] = _mm256_add_ps(c[i][1], _mm256_loadu_ps(ci + 8));
      }
      _mm256_storeu_ps(ci, c[i][0]);
      _mm256_storeu_ps(ci + 8, c[i][1]);
    }
    return;
  }
  alignas(32) float tile[MR][NR];
  for (int i = 0; i < MR; ++i) {
    _mm256_store_ps(tile[i], c[i][0]);
    _mm256_store_ps(tile[i] + 8, c[i][1]);
  }
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j)
      C[i * ldc + j] = accumulate ? C[i * ldc + j] + tile[i][j] : tile[i][j];
}
}  // namespace

const GemmKernel kGemmAvx2 = {
    "avx2", MR, NR, kernel_avx2, 6, 16, conv_kernel_portable<6, 16>,
    // No direct kernels: the portable ones compiled for AVX2 were 2-4x slower on few-channel
    // convolutions than the im2col path (measured on SeedNet's conv1), which then takes over.
    nullptr, nullptr, nullptr, nullptr, nullptr};

}  // namespace fastcnn

#else
namespace fastcnn {
const GemmKernel kGemmAvx2 = {"avx2",  6,       16,      nullptr, 6,       16,
                              nullptr, nullptr, nullptr, nullptr, nullptr, nullptr};
}
#endif
