// sgemm(): the driver of gemm_driver.h with packers for strided row-major matrices, plus the
// triple-loop reference.
#include "cpu/gemm/gemm.h"

#include <algorithm>
#include <cstring>
#include <vector>

#ifdef __SSE__
#include <xmmintrin.h>  // baseline on x86-64: interleave_rows' transposes
#endif

#include "cpu/gemm/gemm_driver.h"

namespace fastcnn {

// 4 values of each row at a time go through SSE registers (baseline on x86-64), a missing row
// (a panel's rows past the matrix) read as zeros: 4 x 4 transposes for a multiple of 4 rows, and
// for 6 rows (the AVX2 kernel's mr) a transpose plus the last two rows interleaved. (Element by
// element, a ResNet's 16-channel dW spent a tenth of its time on the part-filled last of its
// three 6-row panels.)
void interleave_rows(const float* const* src, int rows, int64_t len, float* dst) {
  int64_t p = 0;
#ifdef __SSE__
  const auto load = [src](int i, int64_t at) {
    return src[i] ? _mm_loadu_ps(src[i] + at) : _mm_setzero_ps();
  };
  if (rows % 4 == 0) {
    for (; p + 4 <= len; p += 4, dst += 4 * rows)
      for (int g = 0; g < rows; g += 4) {
        __m128 r0 = load(g, p), r1 = load(g + 1, p), r2 = load(g + 2, p), r3 = load(g + 3, p);
        _MM_TRANSPOSE4_PS(r0, r1, r2, r3);  // r_j: rows g..g+3 at p + j
        _mm_storeu_ps(dst + g, r0);
        _mm_storeu_ps(dst + rows + g, r1);
        _mm_storeu_ps(dst + 2 * rows + g, r2);
        _mm_storeu_ps(dst + 3 * rows + g, r3);
      }
  } else if (rows == 6) {
    for (; p + 4 <= len; p += 4, dst += 24) {
      __m128 r0 = load(0, p), r1 = load(1, p), r2 = load(2, p), r3 = load(3, p);
      const __m128 r4 = load(4, p), r5 = load(5, p);
      _MM_TRANSPOSE4_PS(r0, r1, r2, r3);
      const __m128 lo = _mm_unpacklo_ps(r4, r5), hi = _mm_unpackhi_ps(r4, r5);  // rows 4-5
      _mm_storeu_ps(dst, r0);
      _mm_storeu_ps(dst + 4, _mm_movelh_ps(lo, r1));
      _mm_storeu_ps(dst + 8, _mm_shuffle_ps(r1, lo, _MM_SHUFFLE(3, 2, 3, 2)));
      _mm_storeu_ps(dst + 12, r2);
      _mm_storeu_ps(dst + 16, _mm_movelh_ps(hi, r3));
      _mm_storeu_ps(dst + 20, _mm_shuffle_ps(r3, hi, _MM_SHUFFLE(3, 2, 3, 2)));
    }
  }
#endif
  for (int i = 0; i < rows; ++i) {
    float* d = dst + i;
    if (src[i])
      for (int64_t j = p; j < len; ++j, d += rows) *d = src[i][j];
    else
      for (int64_t j = p; j < len; ++j, d += rows) *d = 0.f;
  }
}

namespace {
// Packs rows [i0, i0+mc) x cols [p0, p0+kc) of op(A) into panels of mr rows, k-major.
void pack_a(bool trans, const float* A, int64_t lda, int64_t i0, int64_t mc, int64_t p0, int64_t kc,
            int mr, float* Ap, int64_t panel_begin, int64_t panel_end) {
  for (int64_t panel = panel_begin; panel < panel_end; ++panel) {
    const int64_t r0 = panel * mr;
    const int64_t rows = std::min<int64_t>(mr, mc - r0);
    float* dst = Ap + panel * mr * kc;
    if (!trans) {  // op(A)[i, k] = A[i*lda + k]: rows of A interleaved
      const float* src[kMaxInterleaveRows];
      for (int i = 0; i < mr; ++i) src[i] = i < rows ? A + (i0 + r0 + i) * lda + p0 : nullptr;
      interleave_rows(src, mr, kc, dst);
    } else {  // op(A)[i, k] = A[k*lda + i]
      for (int64_t k = 0; k < kc; ++k) {
        const float* src = A + (p0 + k) * lda + i0 + r0;
        int64_t i = 0;
        for (; i < rows; ++i) dst[k * mr + i] = src[i];
        for (; i < mr; ++i) dst[k * mr + i] = 0.f;
      }
    }
  }
}

// dst[k*NR + j] = src[k*ld + j] for k < rows, j < NR.
template <int NR>
inline void copy_rows(const float* src, int64_t ld, int64_t rows, float* dst) {
  for (int64_t k = 0; k < rows; ++k) std::memcpy(dst + k * NR, src + k * ld, NR * sizeof(float));
}

// Packs rows [p0, p0+kc) x cols [j0, j0+nc) of op(B) into panels of nr columns, k-major.
void pack_b(bool trans, const float* B, int64_t ldb, int64_t p0, int64_t kc, int64_t j0, int64_t nc,
            int nr, float* Bp, int64_t panel_begin, int64_t panel_end) {
  for (int64_t panel = panel_begin; panel < panel_end; ++panel) {
    const int64_t c0 = panel * nr;
    const int64_t cols = std::min<int64_t>(nr, nc - c0);
    float* dst = Bp + panel * nr * kc;
    if (!trans) {  // op(B)[k, j] = B[k*ldb + j]
      const float* src = B + p0 * ldb + j0 + c0;
      // A whole panel of the common widths: a copy of constant size is a few moves, not a
      // call. (A part-filled panel of 16 columns is not a whole panel when NR is 32.)
      if (cols == nr && nr == 16) {
        copy_rows<16>(src, ldb, kc, dst);
      } else if (cols == nr && nr == 32) {
        copy_rows<32>(src, ldb, kc, dst);
      } else {
        for (int64_t k = 0; k < kc; ++k) {
          std::memcpy(dst + k * nr, src + k * ldb, sizeof(float) * cols);
          for (int64_t j = cols; j < nr; ++j) dst[k * nr + j] = 0.f;
        }
      }
    } else {  // op(B)[k, j] = B[j*ldb + k]: rows of B interleaved
      const float* src[kMaxInterleaveRows];
      for (int j = 0; j < nr; ++j) src[j] = j < cols ? B + (j0 + c0 + j) * ldb + p0 : nullptr;
      interleave_rows(src, nr, kc, dst);
    }
  }
}

thread_local ScratchBuffer t_pack_a, t_pack_b;
}  // namespace

void gemm_pack_buffers(size_t a_floats, size_t b_floats, float** a, float** b) {
  *a = t_pack_a.get(a_floats);
  *b = t_pack_b.get(b_floats);
}

void sgemm_reference(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const float* A,
                     int64_t lda, const float* B, int64_t ldb, float* C, int64_t ldc,
                     const GemmEpilogue& ep) {
  for (int64_t i = 0; i < M; ++i) {
    for (int64_t j = 0; j < N; ++j) {
      float acc = 0.f;
      for (int64_t k = 0; k < K; ++k) {
        const float a = trans_a ? A[k * lda + i] : A[i * lda + k];
        const float b = trans_b ? B[j * ldb + k] : B[k * ldb + j];
        acc += a * b;
      }
      C[i * ldc + j] = ep.accumulate ? C[i * ldc + j] + acc : acc;
    }
  }
  for (int64_t i = 0; i < M; ++i) gemm_epilogue(ep, C, ldc, i, 0, 1, static_cast<int>(N));
}

void sgemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const float* A, int64_t lda,
           const float* B, int64_t ldb, float* C, int64_t ldc, const GemmEpilogue& ep,
           int threads) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {  // empty sum: C = 0 (or unchanged), then the epilogue
    if (!ep.accumulate)
      for (int64_t i = 0; i < M; ++i) std::fill(C + i * ldc, C + i * ldc + N, 0.f);
    for (int64_t i = 0; i < M; ++i) gemm_epilogue(ep, C, ldc, i, 0, 1, static_cast<int>(N));
    return;
  }
  // Small problems are not worth waking a second thread for.
  if (static_cast<double>(M) * N * K < 64.0 * 64 * 64) threads = 1;
  auto pa = [&](int64_t i0, int64_t mc, int64_t p0, int64_t kc, int mr, float* Ap, int64_t q0,
                int64_t q1) { pack_a(trans_a, A, lda, i0, mc, p0, kc, mr, Ap, q0, q1); };
  auto pb = [&](int64_t p0, int64_t kc, int64_t j0, int64_t nc, int nr, float* Bp, int64_t q0,
                int64_t q1) { pack_b(trans_b, B, ldb, p0, kc, j0, nc, nr, Bp, q0, q1); };
  gemm_blocked(gemm_active_kernel(), M, N, K, pa, pb, C, ldc, ep, threads);
}

}  // namespace fastcnn
