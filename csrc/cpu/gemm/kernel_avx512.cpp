// AVX-512 micro-kernel: 8 x 32 tile, 16 zmm accumulators (enough to hide the FMA latency of two
// pipes); per k, two loads of B and eight broadcasts of A feed sixteen FMAs. M = 32 and 64, the
// channel counts of SeedNet, are whole multiples of MR. Compiled with -mavx512f (this file only).
#include "cpu/gemm/gemm.h"

#if defined(__AVX512F__)
#include <immintrin.h>

namespace fastcnn {

namespace {
constexpr int MR = 8, NR = 32;

void kernel_avx512(int64_t K, const float* Ap, const float* Bp, float* C, int64_t ldc, int m,
                   int n, bool accumulate) {
  __m512 c[MR][2];
  for (int i = 0; i < MR; ++i) c[i][0] = c[i][1] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; ++k) {
    const __m512 b0 = _mm512_loadu_ps(Bp + k * NR);
    const __m512 b1 = _mm512_loadu_ps(Bp + k * NR + 16);
    const float* a = Ap + k * MR;
    for (int i = 0; i < MR; ++i) {
      const __m512 ai = _mm512_set1_ps(a[i]);
      c[i][0] = _mm512_fmadd_ps(ai, b0, c[i][0]);
      c[i][1] = _mm512_fmadd_ps(ai, b1, c[i][1]);
    }
  }
  // Masked stores handle a ragged right edge without a bounce buffer.
  const int n0 = n < 16 ? n : 16, n1 = n > 16 ? n - 16 : 0;
  const __mmask16 k0 = static_cast<__mmask16>((1u << n0) - 1);
  const __mmask16 k1 = static_cast<__mmask16>((1u << n1) - 1);
  for (int i = 0; i < m; ++i) {
    float* ci = C + i * ldc;
    if (accumulate) {
      c[i][0] = _mm512_add_ps(c[i][0], _mm512_maskz_loadu_ps(k0, ci));
      c[i][1] = _mm512_add_ps(c[i][1], _mm512_maskz_loadu_ps(k1, ci + 16));
    }
    _mm512_mask_storeu_ps(ci, k0, c[i][0]);
    _mm512_mask_storeu_ps(ci + 16, k1, c[i][1]);
  }
}
}  // namespace

const GemmKernel kGemmAvx512 = {"avx512", MR, NR, kernel_avx512};

}  // namespace fastcnn

#else
namespace fastcnn {
const GemmKernel kGemmAvx512 = {"avx512", 8, 32, nullptr};
}
#endif
