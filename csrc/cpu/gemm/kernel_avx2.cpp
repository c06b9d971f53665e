// AVX2 + FMA kernels (this file only is compiled with -mavx2 -mfma): the 6 x 16 GEMM tile, the
// same tile with B read in place, the 6-pixel x 16-channel convolution tile, and 2x2 max-pooling.
//
// The tiles keep their 12 accumulators in ymm registers only if every loop over them is fully
// unrolled before GCC decides where they live: without the `#pragma GCC unroll` below, GCC 12
// spilled all twelve to the stack on every k step, halving the kernel's speed.
#include "cpu/gemm/conv_kernel.h"
#include "cpu/gemm/gemm.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

#include <algorithm>

namespace fastcnn {

namespace {
constexpr int MR = 6, NR = 16;

// Writes the m x n top-left of a 6 x 16 tile of accumulators to C (row stride ldc), adding to C
// when accumulate is set.
inline void store_tile(__m256 (&c)[MR][2], float* C, int64_t ldc, int m, int n, bool accumulate) {
  if (n == NR) {
#pragma GCC unroll 6
    for (int i = 0; i < MR; ++i) {
      if (i >= m) break;
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
#pragma GCC unroll 6
  for (int i = 0; i < MR; ++i) {
    _mm256_store_ps(tile[i], c[i][0]);
    _mm256_store_ps(tile[i] + 8, c[i][1]);
  }
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j)
      C[i * ldc + j] = accumulate ? C[i * ldc + j] + tile[i][j] : tile[i][j];
}

// GEMM: per k, two loads of B and six broadcasts of A feed twelve FMAs.
void kernel_avx2(int64_t K, const float* Ap, const float* Bp, float* C, int64_t ldc, int m, int n,
                 bool accumulate) {
  __m256 c[MR][2];
#pragma GCC unroll 6
  for (int i = 0; i < MR; ++i) c[i][0] = c[i][1] = _mm256_setzero_ps();
  for (int64_t k = 0; k < K; ++k) {
    const __m256 b0 = _mm256_loadu_ps(Bp + k * NR);
    const __m256 b1 = _mm256_loadu_ps(Bp + k * NR + 8);
    const float* a = Ap + k * MR;
#pragma GCC unroll 6
    for (int i = 0; i < MR; ++i) {
      const __m256 ai = _mm256_broadcast_ss(a + i);
      c[i][0] = _mm256_fmadd_ps(ai, b0, c[i][0]);
      c[i][1] = _mm256_fmadd_ps(ai, b1, c[i][1]);
    }
  }
  store_tile(c, C, ldc, m, n, accumulate);
}

// The same tile with B read in place (see GemmKernel::fn_indirect_b): n must be NR.
void kernel_avx2_ib(int64_t K, const float* Ap, const float* const* brow, int64_t boff, float* C,
                    int64_t ldc, int m, int n, bool accumulate) {
  __m256 c[MR][2];
#pragma GCC unroll 6
  for (int i = 0; i < MR; ++i) c[i][0] = c[i][1] = _mm256_setzero_ps();
  for (int64_t k = 0; k < K; ++k) {
    const float* b = brow[k] + boff;
    const __m256 b0 = _mm256_loadu_ps(b);
    const __m256 b1 = _mm256_loadu_ps(b + 8);
    const float* a = Ap + k * MR;
#pragma GCC unroll 6
    for (int i = 0; i < MR; ++i) {
      const __m256 ai = _mm256_broadcast_ss(a + i);
      c[i][0] = _mm256_fmadd_ps(ai, b0, c[i][0]);
      c[i][1] = _mm256_fmadd_ps(ai, b1, c[i][1]);
    }
  }
  store_tile(c, C, ldc, m, n, accumulate);
}

// Convolution (see ConvKernel in gemm.h): 6 pixels x 16 channels. Per (tap, input channel): two
// loads of packed filters, six broadcasts straight from the NHWC input, twelve FMAs. The tile
// is transposed on the way out, into NCHW planes.
constexpr int CMR = 6, CNR = 16;

void conv_avx2(int64_t T, int64_t C, const float* const* pix, const int64_t* toff, const float* Wp,
               const float* bias, bool relu, float* y, int64_t ldy, int m, int n) {
  __m256 c[CMR][2];
#pragma GCC unroll 6
  for (int i = 0; i < CMR; ++i) c[i][0] = c[i][1] = _mm256_setzero_ps();
  const float* w = Wp;
  for (int64_t t = 0; t < T; ++t) {
    const int64_t off = toff[t];
    const float* r[CMR];
#pragma GCC unroll 6
    for (int i = 0; i < CMR; ++i) r[i] = pix[i] + off;
    for (int64_t k = 0; k < C; ++k, w += CNR) {
      const __m256 b0 = _mm256_loadu_ps(w);
      const __m256 b1 = _mm256_loadu_ps(w + 8);
#pragma GCC unroll 6
      for (int i = 0; i < CMR; ++i) {
        const __m256 a = _mm256_broadcast_ss(r[i] + k);
        c[i][0] = _mm256_fmadd_ps(a, b0, c[i][0]);
        c[i][1] = _mm256_fmadd_ps(a, b1, c[i][1]);
      }
    }
  }
  const __m256 bias0 = bias ? _mm256_loadu_ps(bias) : _mm256_setzero_ps();
  const __m256 bias1 = bias ? _mm256_loadu_ps(bias + 8) : _mm256_setzero_ps();
  const __m256 zero = _mm256_setzero_ps();
  alignas(32) float tile[CMR][CNR];
#pragma GCC unroll 6
  for (int i = 0; i < CMR; ++i) {
    __m256 v0 = _mm256_add_ps(c[i][0], bias0), v1 = _mm256_add_ps(c[i][1], bias1);
    if (relu) {  // v < 0 ? 0 : v (NaN passes, as in every fastcnn ReLU)
      v0 = _mm256_andnot_ps(_mm256_cmp_ps(v0, zero, _CMP_LT_OQ), v0);
      v1 = _mm256_andnot_ps(_mm256_cmp_ps(v1, zero, _CMP_LT_OQ), v1);
    }
    _mm256_store_ps(tile[i], v0);
    _mm256_store_ps(tile[i] + 8, v1);
  }
  for (int j = 0; j < n; ++j) {
    float* yj = y + j * ldy;
    for (int i = 0; i < m; ++i) yj[i] = tile[i][j];
  }
}

// 2x2 max-pooling (see MaxPool2x2 in gemm.h), 8 outputs a step: the even and odd columns of the
// two input rows deinterleaved into four vectors, then three compare-and-select steps carrying
// the index along. Columns past the last multiple of 8 take the scalar loop.
inline __m256 even_lanes(__m256 a, __m256 b) {  // a0 a2 a4 a6 b0 b2 b4 b6
  const __m256 s = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0));
  return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(s), _MM_SHUFFLE(3, 1, 2, 0)));
}
inline __m256 odd_lanes(__m256 a, __m256 b) {  // a1 a3 a5 a7 b1 b3 b5 b7
  const __m256 s = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1));
  return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(s), _MM_SHUFFLE(3, 1, 2, 0)));
}

void maxpool2x2_avx2(const float* x, int64_t W, int64_t rows, int64_t OW, float* y,
                     int32_t* indices) {
  const __m256i lane2 = _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14);
  for (int64_t oh = 0; oh < rows; ++oh) {
    const float* r0 = x + 2 * oh * W;
    const float* r1 = r0 + W;
    const int32_t row_base = static_cast<int32_t>(2 * oh * W);
    int64_t ow = 0;
    for (; ow + 8 <= OW; ow += 8) {
      const __m256 a0 = _mm256_loadu_ps(r0 + 2 * ow), a1 = _mm256_loadu_ps(r0 + 2 * ow + 8);
      const __m256 b0 = _mm256_loadu_ps(r1 + 2 * ow), b1 = _mm256_loadu_ps(r1 + 2 * ow + 8);
      const __m256 cand[4] = {even_lanes(a0, a1), odd_lanes(a0, a1), even_lanes(b0, b1),
                              odd_lanes(b0, b1)};
      const __m256i base =
          _mm256_add_epi32(_mm256_set1_epi32(row_base + static_cast<int32_t>(2 * ow)), lane2);
      const int32_t offset[4] = {0, 1, static_cast<int32_t>(W), static_cast<int32_t>(W) + 1};
      __m256 best = cand[0];
      __m256i at = base;
      for (int c = 1; c < 4; ++c) {
        // beats: v > best, or v is NaN while best is not
        const __m256 gt = _mm256_cmp_ps(cand[c], best, _CMP_GT_OQ);
        const __m256 nan = _mm256_and_ps(_mm256_cmp_ps(cand[c], cand[c], _CMP_UNORD_Q),
                                         _mm256_cmp_ps(best, best, _CMP_ORD_Q));
        const __m256 win = _mm256_or_ps(gt, nan);
        best = _mm256_blendv_ps(best, cand[c], win);
        const __m256i moved = _mm256_add_epi32(base, _mm256_set1_epi32(offset[c]));
        at = _mm256_castps_si256(
            _mm256_blendv_ps(_mm256_castsi256_ps(at), _mm256_castsi256_ps(moved), win));
      }
      _mm256_storeu_ps(y + oh * OW + ow, best);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(indices + oh * OW + ow), at);
    }
    for (; ow < OW; ++ow) {
      const int32_t i0 = row_base + static_cast<int32_t>(2 * ow);
      const int32_t cand[4] = {i0, i0 + 1, i0 + static_cast<int32_t>(W),
                               i0 + static_cast<int32_t>(W) + 1};
      int32_t at = cand[0];
      for (int c = 1; c < 4; ++c) {
        const float v = x[cand[c]], b = x[at];
        if (v > b || (v != v && b == b)) at = cand[c];
      }
      y[oh * OW + ow] = x[at];
      indices[oh * OW + ow] = at;
    }
  }
}

// Its backward (see MaxPool2x2Backward in gemm.h): each dy goes to one of four positions, chosen
// by comparing its index with the window's; the four planes are interleaved back into two rows.
bool maxpool2x2_backward_avx2(const float* dy, const int32_t* indices, const float* y, int64_t H,
                              int64_t W, int64_t OH, int64_t OW, float* dx) {
  const __m256i lane2 = _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14);
  const __m256 zero = _mm256_setzero_ps();
  const __m256i one = _mm256_set1_epi32(1), w0 = _mm256_set1_epi32(static_cast<int32_t>(W));
  const __m256i w1 = _mm256_add_epi32(w0, one);
  for (int64_t oh = 0; oh < OH; ++oh) {
    float* d0 = dx + 2 * oh * W;
    float* d1 = d0 + W;
    const int32_t row_base = static_cast<int32_t>(2 * oh * W);
    int64_t ow = 0;
    for (; ow + 8 <= OW; ow += 8) {
      __m256 g = _mm256_loadu_ps(dy + oh * OW + ow);
      if (y)  // ReLU'd forward: the gradient passes where y > 0 is not false (NaN passes)
        g = _mm256_and_ps(g, _mm256_cmp_ps(_mm256_loadu_ps(y + oh * OW + ow), zero, _CMP_NLE_UQ));
      const __m256i at =
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(indices + oh * OW + ow));
      const __m256i base =
          _mm256_add_epi32(_mm256_set1_epi32(row_base + static_cast<int32_t>(2 * ow)), lane2);
      const __m256i rel = _mm256_sub_epi32(at, base);  // 0, 1, W, W+1
      const __m256i e00 = _mm256_cmpeq_epi32(rel, _mm256_setzero_si256());
      const __m256i e01 = _mm256_cmpeq_epi32(rel, one);
      const __m256i e10 = _mm256_cmpeq_epi32(rel, w0);
      const __m256i e11 = _mm256_cmpeq_epi32(rel, w1);
      const __m256i hit = _mm256_or_si256(_mm256_or_si256(e00, e01), _mm256_or_si256(e10, e11));
      if (_mm256_movemask_ps(_mm256_castsi256_ps(hit)) != 0xff) return false;
      const __m256 g00 = _mm256_and_ps(g, _mm256_castsi256_ps(e00));
      const __m256 g01 = _mm256_and_ps(g, _mm256_castsi256_ps(e01));
      const __m256 g10 = _mm256_and_ps(g, _mm256_castsi256_ps(e10));
      const __m256 g11 = _mm256_and_ps(g, _mm256_castsi256_ps(e11));
      // unpack interleaves within 128-bit halves; permute2f128 puts the halves in order.
      const __m256 lo0 = _mm256_unpacklo_ps(g00, g01), hi0 = _mm256_unpackhi_ps(g00, g01);
      const __m256 lo1 = _mm256_unpacklo_ps(g10, g11), hi1 = _mm256_unpackhi_ps(g10, g11);
      _mm256_storeu_ps(d0 + 2 * ow, _mm256_permute2f128_ps(lo0, hi0, 0x20));
      _mm256_storeu_ps(d0 + 2 * ow + 8, _mm256_permute2f128_ps(lo0, hi0, 0x31));
      _mm256_storeu_ps(d1 + 2 * ow, _mm256_permute2f128_ps(lo1, hi1, 0x20));
      _mm256_storeu_ps(d1 + 2 * ow + 8, _mm256_permute2f128_ps(lo1, hi1, 0x31));
    }
    for (; ow < OW; ++ow) {
      float g = dy[oh * OW + ow];
      if (y && y[oh * OW + ow] <= 0.f) g = 0.f;  // NaN passes, as above
      const int32_t rel = indices[oh * OW + ow] - (row_base + static_cast<int32_t>(2 * ow));
      if (rel != 0 && rel != 1 && rel != W && rel != W + 1) return false;
      d0[2 * ow] = rel == 0 ? g : 0.f;
      d0[2 * ow + 1] = rel == 1 ? g : 0.f;
      d1[2 * ow] = rel == W ? g : 0.f;
      d1[2 * ow + 1] = rel == W + 1 ? g : 0.f;
    }
    for (int64_t w = 2 * OW; w < W; ++w) d0[w] = d1[w] = 0.f;  // an odd last column
  }
  for (int64_t h = 2 * OH; h < H; ++h)  // an odd last row
    for (int64_t w = 0; w < W; ++w) dx[h * W + w] = 0.f;
  return true;
}
}  // namespace

const GemmKernel kGemmAvx2 = {"avx2", MR, NR, kernel_avx2, CMR, CNR, conv_avx2,
                              // No direct kernels: the portable ones compiled for AVX2 were
                              // slower on few-channel convolutions than the im2col path.
                              nullptr, nullptr, maxpool2x2_avx2, maxpool2x2_backward_avx2,
                              kernel_avx2_ib};

}  // namespace fastcnn

#else
namespace fastcnn {
const GemmKernel kGemmAvx2 = {"avx2",  6,       16,      nullptr, 6,       16,
                              nullptr, nullptr, nullptr, nullptr, nullptr, nullptr};
}
#endif
