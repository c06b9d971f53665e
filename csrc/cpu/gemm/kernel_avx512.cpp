// AVX-512 micro-kernel: 8 x 32 tile, 16 zmm accumulators (enough to hide the FMA latency of two
// pipes); per k, two loads of B and eight broadcasts of A feed sixteen FMAs. M = 32 and 64, the
// channel counts of SeedNet, are whole multiples of MR. Compiled with -mavx512f (this file only).
#include "cpu/common.h"
#include "cpu/gemm/conv_kernel.h"
#include "cpu/gemm/gemm.h"
#include "cpu/gemm/geometry.h"

#if defined(__AVX512F__)
#include <immintrin.h>

#include <algorithm>

namespace fastcnn {

namespace {
constexpr KernelGeometry G = kAvx512Geometry;
constexpr int MR = G.mr, NR = G.nr;
static_assert(MR == 8 && NR == 32, "the tile below is 8 rows of two zmm registers");
static_assert(MR <= kMaxInterleaveRows && NR <= kMaxInterleaveRows,
              "packing holds a row pointer each");

// Asks for the tile of C (read or written only after the k loop) now, so that it arrives from
// memory while the loop runs: a large GEMM's C block does not stay in cache (on Zen 3 the AVX2
// kernel's SGEMM 2048^3 ran 21-28% faster with it; not measured on an AVX-512 machine).
inline void prefetch_tile(const float* C, int64_t ldc, int m) {
  for (int i = 0; i < m; ++i) {
    const char* row = reinterpret_cast<const char*>(C + i * ldc);
    _mm_prefetch(row, _MM_HINT_T0);
    _mm_prefetch(row + 64, _MM_HINT_T0);
    _mm_prefetch(row + 4 * NR - 1, _MM_HINT_T0);
  }
}

void kernel_avx512(int64_t K, const float* Ap, const float* Bp, float* C, int64_t ldc, int m, int n,
                   bool accumulate) {
  prefetch_tile(C, ldc, m);
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

// The same tile with B read in place, m <= MR rows of it, added to C.
inline void tile_avx512_ib(int64_t K, const float* Ap, const float* const* brow, int64_t boff,
                           float* C, int64_t ldc, int m, bool accumulate) {
  if (accumulate) prefetch_tile(C, ldc, m);
  __m512 c[MR][2];
  for (int i = 0; i < MR; ++i) c[i][0] = c[i][1] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; ++k) {
    const float* b = brow[k] + boff;
    const __m512 b0 = _mm512_loadu_ps(b);
    const __m512 b1 = _mm512_loadu_ps(b + 16);
    const float* a = Ap + k * MR;
    for (int i = 0; i < MR; ++i) {
      const __m512 ai = _mm512_set1_ps(a[i]);
      c[i][0] = _mm512_fmadd_ps(ai, b0, c[i][0]);
      c[i][1] = _mm512_fmadd_ps(ai, b1, c[i][1]);
    }
  }
  for (int i = 0; i < m; ++i) {
    float* ci = C + i * ldc;
    if (accumulate) {
      c[i][0] = _mm512_add_ps(c[i][0], _mm512_loadu_ps(ci));
      c[i][1] = _mm512_add_ps(c[i][1], _mm512_loadu_ps(ci + 16));
    }
    _mm512_storeu_ps(ci, c[i][0]);
    _mm512_storeu_ps(ci + 16, c[i][1]);
  }
}

// That tile over a column of tiles (see GemmKernel::fn_indirect_b).
void kernel_avx512_ib(int64_t K, const float* Ap, int64_t a_panel, int m, const float* const* brow,
                      int64_t boff, float* C, int64_t ldc, bool accumulate) {
  for (int i0 = 0; i0 < m; i0 += MR, Ap += a_panel)
    tile_avx512_ib(K, Ap, brow, boff, C + i0 * ldc, ldc, std::min(MR, m - i0), accumulate);
}

// Convolution: 12 pixels x 32 channels, 24 zmm accumulators. Per (tap, input channel): two
// loads of packed filters, twelve broadcasts straight from the NHWC input (folded into the
// FMAs), 24 FMAs. The tile is transposed on the way out, into NCHW planes. A tile of at most 4
// or 8 pixels (an image's last) runs with that many rows of accumulators: SeedNet conv2's 196
// pixels are 16 tiles of 12 and one of 4, which took a whole tile's time.
constexpr int CMR = G.cmr, CNR = G.cnr;
static_assert(CNR == 32 && CMR == 12, "the tile below is up to 12 rows of two zmm registers");

template <int R>
void conv_avx512_rows(int64_t T, int64_t C, const float* const* pix, const int64_t* toff,
                      const float* Wp, const float* bias, bool relu, float* y, int64_t ldy,
                      int64_t ldp, int m, int n) {
  __m512 c[R][2];
  for (int i = 0; i < R; ++i) c[i][0] = c[i][1] = _mm512_setzero_ps();
  const float* w = Wp;
  for (int64_t t = 0; t < T; ++t) {
    const int64_t off = toff[t];
    const float* r[R];
    for (int i = 0; i < R; ++i) r[i] = pix[i] + off;
    for (int64_t k = 0; k < C; ++k, w += CNR) {
      const __m512 b0 = _mm512_loadu_ps(w);
      const __m512 b1 = _mm512_loadu_ps(w + 16);
      for (int i = 0; i < R; ++i) {
        const __m512 a = _mm512_set1_ps(r[i][k]);
        c[i][0] = _mm512_fmadd_ps(a, b0, c[i][0]);
        c[i][1] = _mm512_fmadd_ps(a, b1, c[i][1]);
      }
    }
  }
  const __m512 bias0 = bias ? _mm512_loadu_ps(bias) : _mm512_setzero_ps();
  const __m512 bias1 = bias ? _mm512_loadu_ps(bias + 16) : _mm512_setzero_ps();
  const __m512 zero = _mm512_setzero_ps();
  alignas(64) float tile[R][CNR];
  const __mmask16 lanes0 = n >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << n) - 1);
  const __mmask16 lanes1 = n >= 32   ? 0xFFFF
                           : n <= 16 ? 0
                                     : static_cast<__mmask16>((1u << (n - 16)) - 1);
  for (int i = 0; i < R; ++i) {
    __m512 v0 = _mm512_add_ps(c[i][0], bias0), v1 = _mm512_add_ps(c[i][1], bias1);
    if (relu) {  // v < 0 ? 0 : v (NaN passes, as in every fastcnn ReLU)
      v0 = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(v0, zero, _CMP_NLT_UQ), v0);
      v1 = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(v1, zero, _CMP_NLT_UQ), v1);
    }
    if (ldy == 1) {  // a pixel's channels side by side: a row of the tile each, n lanes
      if (i < m) {
        _mm512_mask_storeu_ps(y + i * ldp, lanes0, v0);
        _mm512_mask_storeu_ps(y + i * ldp + 16, lanes1, v1);
      }
      continue;
    }
    _mm512_store_ps(tile[i], v0);
    _mm512_store_ps(tile[i] + 16, v1);
  }
  if (ldy == 1) return;
  for (int j = 0; j < n; ++j) {
    float* yj = y + j * ldy;
    for (int i = 0; i < m; ++i) yj[i * ldp] = tile[i][j];
  }
}

void conv_avx512(int64_t T, int64_t C, const float* const* pix, const int64_t* toff,
                 const float* Wp, const float* bias, bool relu, float* y, int64_t ldy, int64_t ldp,
                 int m, int n) {
  if (m <= 4) return conv_avx512_rows<4>(T, C, pix, toff, Wp, bias, relu, y, ldy, ldp, m, n);
  if (m <= 8) return conv_avx512_rows<8>(T, C, pix, toff, Wp, bias, relu, y, ldy, ldp, m, n);
  conv_avx512_rows<CMR>(T, C, pix, toff, Wp, bias, relu, y, ldy, ldp, m, n);
}

// Direct convolution (few input channels, unit stride; see DirectFwd in gemm.h): a row of up
// to 32 output pixels in two zmm registers (masked at the row's end) times 8 output channels,
// 16 accumulators; per tap two input loads feed 16 FMAs.
constexpr int DOB = G.direct_ob;
static_assert(G.direct_vw == 32 && G.direct_dw_vw == 32 && G.pool_vw == 16,
              "the direct and pooling loops below are written for these widths");

// Sum of the 16 lanes, in lane order.
inline float lane_sum(__m512 v) {
  alignas(64) float t[16];
  _mm512_store_ps(t, v);
  float s = 0.f;
  for (float x : t) s += x;
  return s;
}

// The first n of 16 lanes (n may be <= 0 or > 16).
inline __mmask16 lane_mask(int64_t n) {
  if (n <= 0) return 0;
  return n >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << n) - 1);
}

void direct_fwd_avx512(const Direct2d& d, const float* xp, const float* w, const float* b,
                       bool relu, float* y, int64_t o0, int64_t o1) {
  if (d.sw != 1 || d.C * d.kh * d.kw > 256)
    return direct_fwd<DOB, 16>(d, xp, w, b, relu, y, o0, o1);
  const int64_t T = d.kh * d.kw, CT = d.C * T, plane = d.OH * d.OW;
  alignas(64) float wblk[256 * DOB];
  const __m512 zero = _mm512_setzero_ps();
  for (int64_t o = o0; o < o1; o += DOB) {
    const int ob = static_cast<int>(std::min<int64_t>(DOB, o1 - o));
    for (int64_t ct = 0; ct < CT; ++ct)  // filters of this channel block, tap-major
      for (int q = 0; q < DOB; ++q) wblk[ct * DOB + q] = q < ob ? w[(o + q) * CT + ct] : 0.f;
    for (int64_t oh = 0; oh < d.OH; ++oh) {
      for (int64_t ow0 = 0; ow0 < d.OW; ow0 += 32) {
        const __mmask16 k0 = lane_mask(d.OW - ow0), k1 = lane_mask(d.OW - ow0 - 16);
        __m512 acc[DOB][2];
        for (int q = 0; q < DOB; ++q)
          acc[q][0] = acc[q][1] = (b && q < ob) ? _mm512_set1_ps(b[o + q]) : zero;
        const float* wt = wblk;
        for (int64_t c = 0; c < d.C; ++c) {
          for (int64_t ki = 0; ki < d.kh; ++ki) {
            const float* xr = xp + (c * d.Hp + oh * d.sh + ki) * d.Wp + ow0;
            for (int64_t kj = 0; kj < d.kw; ++kj, wt += DOB) {
              const __m512 x0 = _mm512_maskz_loadu_ps(k0, xr + kj);
              const __m512 x1 = _mm512_maskz_loadu_ps(k1, xr + kj + 16);
              for (int q = 0; q < DOB; ++q) {
                const __m512 wq = _mm512_set1_ps(wt[q]);
                acc[q][0] = _mm512_fmadd_ps(wq, x0, acc[q][0]);
                acc[q][1] = _mm512_fmadd_ps(wq, x1, acc[q][1]);
              }
            }
          }
        }
#pragma GCC unroll 8
        for (int q = 0; q < DOB; ++q) {  // constant bounds keep acc in registers
          if (q >= ob) break;
          float* yq = y + (o + q) * plane + oh * d.OW + ow0;
          __m512 v0 = acc[q][0], v1 = acc[q][1];
          if (relu) {
            v0 = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(v0, zero, _CMP_NLT_UQ), v0);
            v1 = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(v1, zero, _CMP_NLT_UQ), v1);
          }
          _mm512_mask_storeu_ps(yq, k0, v0);
          _mm512_mask_storeu_ps(yq + 16, k1, v1);
        }
      }
    }
  }
}

// Direct weight gradient: for each (o, c, ki), KW x 2 zmm accumulators over every image and
// output row (dy masked to the row, so lanes past it add exact zeros), then lane sums. KW is a
// template parameter so the accumulators stay in registers; two output channels a pass (OB)
// share every input load where they fit.
template <int KW>
constexpr int kDwOb = KW <= 6 ? 2 : 1;

// Images [n0, n1)'s output rows into acc, for tap row ki of input channel c and output channels
// o.. (ob of the OB real).
template <int KW, int OB = kDwOb<KW>>
__attribute__((always_inline)) inline void dw_rows(const Direct2d& d, const float* xp,
                                                   int64_t image, const float* dy, int64_t n0,
                                                   int64_t n1, int64_t o, int ob, int64_t c,
                                                   int64_t ki, __m512 (&acc)[OB][KW][2]) {
  const int64_t plane = d.OH * d.OW;
  for (int64_t n = n0; n < n1; ++n) {
    const float* dyo = dy + (n * d.O + o) * plane;
    for (int64_t oh = 0; oh < d.OH; ++oh) {
      const float* xr = xp + n * image + (c * d.Hp + oh * d.sh + ki) * d.Wp;
      for (int64_t ow0 = 0; ow0 < d.OW; ow0 += 32) {
        const __mmask16 k0 = lane_mask(d.OW - ow0), k1 = lane_mask(d.OW - ow0 - 16);
        __m512 g[OB][2];
        for (int q = 0; q < OB; ++q) {  // a missing second channel reads as zeros
          const float* dq = dyo + q * plane + oh * d.OW + ow0;
          g[q][0] = _mm512_maskz_loadu_ps(q < ob ? k0 : 0, dq);
          g[q][1] = _mm512_maskz_loadu_ps(q < ob ? k1 : 0, dq + 16);
        }
        const float* xs = xr + ow0;
        for (int kj = 0; kj < KW; ++kj) {
          const __m512 x0 = _mm512_maskz_loadu_ps(k0, xs + kj);
          const __m512 x1 = _mm512_maskz_loadu_ps(k1, xs + kj + 16);
          for (int q = 0; q < OB; ++q) {
            acc[q][kj][0] = _mm512_fmadd_ps(g[q][0], x0, acc[q][kj][0]);
            acc[q][kj][1] = _mm512_fmadd_ps(g[q][1], x1, acc[q][kj][1]);
          }
        }
      }
    }
  }
}

// Every (c, ki) over all the images in turn: for a batch whose dy and input fit in L2.
template <int KW>
void direct_dw_avx512_kw(const Direct2d& d, int64_t N, const float* xp, int64_t image,
                         const float* dy, float* dw, int64_t o0, int64_t o1) {
  constexpr int OB = kDwOb<KW>;
  for (int64_t o = o0; o < o1; o += OB) {
    const int ob = static_cast<int>(std::min<int64_t>(OB, o1 - o));
    for (int64_t c = 0; c < d.C; ++c) {
      for (int64_t ki = 0; ki < d.kh; ++ki) {
        __m512 acc[OB][KW][2];
        for (int q = 0; q < OB; ++q)
          for (int kj = 0; kj < KW; ++kj) acc[q][kj][0] = acc[q][kj][1] = _mm512_setzero_ps();
        dw_rows<KW>(d, xp, image, dy, 0, N, o, ob, c, ki, acc);
        for (int q = 0; q < ob; ++q)
          for (int kj = 0; kj < KW; ++kj)
            dw[(((o + q) * d.C + c) * d.kh + ki) * d.kw + kj] =
                lane_sum(_mm512_add_ps(acc[q][kj][0], acc[q][kj][1]));
      }
    }
  }
}

// The same sums, the images in blocks of `block`, each block's sums waiting in memory for the
// next: every (c, ki) then reads the block from L2, not the whole batch from L3. The same
// additions in the same order. (ResNet-8's 3 -> 16 first layer at 32x32 batch 128: 1.17 -> 1.04
// ms at 2 threads; SeedNet's conv1 at batch 256 3.8 -> 3.4.)
template <int KW>
void direct_dw_avx512_blocks(const Direct2d& d, int64_t N, const float* xp, int64_t image,
                             const float* dy, float* dw, int64_t o0, int64_t o1, int64_t block) {
  constexpr int OB = kDwOb<KW>;
  // The running sums, [c][ki][q][kj][32 lanes], in the thread's buffer (grown once).
  thread_local ScratchBuffer buf;
  const int64_t run_size = d.C * d.kh * OB * KW * 32;
  float* run = buf.get(run_size);
  for (int64_t o = o0; o < o1; o += OB) {
    const int ob = static_cast<int>(std::min<int64_t>(OB, o1 - o));
    std::fill(run, run + run_size, 0.f);
    for (int64_t n0 = 0; n0 < N; n0 += block)
      for (int64_t c = 0; c < d.C; ++c)
        for (int64_t ki = 0; ki < d.kh; ++ki) {
          float* sums = run + (c * d.kh + ki) * OB * KW * 32;
          __m512 acc[OB][KW][2];
          for (int q = 0; q < OB; ++q)
            for (int kj = 0; kj < KW; ++kj)
              for (int h = 0; h < 2; ++h)
                acc[q][kj][h] = _mm512_loadu_ps(sums + (q * KW + kj) * 32 + h * 16);
          dw_rows<KW>(d, xp, image, dy, n0, std::min(N, n0 + block), o, ob, c, ki, acc);
          for (int q = 0; q < OB; ++q)
            for (int kj = 0; kj < KW; ++kj)
              for (int h = 0; h < 2; ++h)
                _mm512_storeu_ps(sums + (q * KW + kj) * 32 + h * 16, acc[q][kj][h]);
        }
    for (int q = 0; q < ob; ++q)
      for (int64_t c = 0; c < d.C; ++c)
        for (int64_t ki = 0; ki < d.kh; ++ki)
          for (int kj = 0; kj < KW; ++kj) {
            const float* sums = run + (((c * d.kh + ki) * OB + q) * KW + kj) * 32;
            dw[(((o + q) * d.C + c) * d.kh + ki) * d.kw + kj] =
                lane_sum(_mm512_add_ps(_mm512_loadu_ps(sums), _mm512_loadu_ps(sums + 16)));
          }
  }
}

// Blocks of about 256 KB of dy and input where the batch is larger.
template <int KW>
void direct_dw_avx512_any(const Direct2d& d, int64_t N, const float* xp, int64_t image,
                          const float* dy, float* dw, int64_t o0, int64_t o1) {
  const int64_t per_image = (kDwOb<KW> * d.OH * d.OW + d.C * d.Hp * d.Wp) * sizeof(float);
  const int64_t block = std::clamp<int64_t>((256 << 10) / std::max<int64_t>(per_image, 1), 1, N);
  if (block < N)
    direct_dw_avx512_blocks<KW>(d, N, xp, image, dy, dw, o0, o1, block);
  else
    direct_dw_avx512_kw<KW>(d, N, xp, image, dy, dw, o0, o1);
}

void direct_dw_avx512(const Direct2d& d, int64_t N, const float* xp, int64_t image, const float* dy,
                      float* dw, int64_t o0, int64_t o1) {
  switch (d.sw == 1 ? d.kw : 0) {
    case 1:
      return direct_dw_avx512_any<1>(d, N, xp, image, dy, dw, o0, o1);
    case 2:
      return direct_dw_avx512_any<2>(d, N, xp, image, dy, dw, o0, o1);
    case 3:
      return direct_dw_avx512_any<3>(d, N, xp, image, dy, dw, o0, o1);
    case 4:
      return direct_dw_avx512_any<4>(d, N, xp, image, dy, dw, o0, o1);
    case 5:
      return direct_dw_avx512_any<5>(d, N, xp, image, dy, dw, o0, o1);
    case 6:
      return direct_dw_avx512_any<6>(d, N, xp, image, dy, dw, o0, o1);
    case 7:
      return direct_dw_avx512_any<7>(d, N, xp, image, dy, dw, o0, o1);
    case 8:
      return direct_dw_avx512_any<8>(d, N, xp, image, dy, dw, o0, o1);
    default:
      return direct_dw<16>(d, N, xp, image, dy, dw, o0, o1);
  }
}

// 2x2 max-pooling, 16 outputs a step: even and odd columns of the two input rows deinterleaved
// into four vectors, then three compare-and-select steps that carry the index along.
void maxpool2x2_avx512(const float* x, int64_t W, int64_t rows, int64_t OW, float* y,
                       int32_t* indices) {
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
  const __m512i lane2 =
      _mm512_slli_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), 1);
  for (int64_t oh = 0; oh < rows; ++oh) {
    const float* r0 = x + 2 * oh * W;
    const float* r1 = r0 + W;
    for (int64_t ow = 0; ow < OW; ow += 16) {
      const int64_t n = std::min<int64_t>(16, OW - ow);
      const __mmask16 k0 = lane_mask(2 * n), k1 = lane_mask(2 * n - 16);
      const __m512 a0 = _mm512_maskz_loadu_ps(k0, r0 + 2 * ow);
      const __m512 a1 = _mm512_maskz_loadu_ps(k1, r0 + 2 * ow + 16);
      const __m512 b0 = _mm512_maskz_loadu_ps(k0, r1 + 2 * ow);
      const __m512 b1 = _mm512_maskz_loadu_ps(k1, r1 + 2 * ow + 16);
      const __m512 cand[4] = {
          _mm512_permutex2var_ps(a0, even, a1), _mm512_permutex2var_ps(a0, odd, a1),
          _mm512_permutex2var_ps(b0, even, b1), _mm512_permutex2var_ps(b0, odd, b1)};
      const __m512i base =
          _mm512_add_epi32(_mm512_set1_epi32(static_cast<int32_t>(2 * oh * W + 2 * ow)), lane2);
      const int32_t offset[4] = {0, 1, static_cast<int32_t>(W), static_cast<int32_t>(W) + 1};
      __m512 best = cand[0];
      __m512i at = base;
      for (int c = 1; c < 4; ++c) {
        // beats: v > best, or v is NaN while best is not
        const __mmask16 gt = _mm512_cmp_ps_mask(cand[c], best, _CMP_GT_OQ);
        const __mmask16 nan = _mm512_cmp_ps_mask(cand[c], cand[c], _CMP_UNORD_Q) &
                              _mm512_cmp_ps_mask(best, best, _CMP_ORD_Q);
        const __mmask16 win = gt | nan;
        best = _mm512_mask_mov_ps(best, win, cand[c]);
        at = _mm512_mask_add_epi32(at, win, base, _mm512_set1_epi32(offset[c]));
      }
      const __mmask16 out = lane_mask(n);
      _mm512_mask_storeu_ps(y + oh * OW + ow, out, best);
      _mm512_mask_storeu_epi32(indices + oh * OW + ow, out, at);
    }
  }
}

bool maxpool2x2_backward_avx512(const float* dy, const int32_t* indices, const float* y, int64_t H,
                                int64_t W, int64_t OH, int64_t OW, float* dx) {
  // lo/hi interleave 16 values a (even columns) and 16 values b (odd columns) into 32.
  const __m512i lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const __m512i hi = _mm512_add_epi32(lo, _mm512_set1_epi32(8));
  const __m512i lane2 =
      _mm512_slli_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), 1);
  const __m512 zero = _mm512_setzero_ps();
  for (int64_t oh = 0; oh < OH; ++oh) {
    float* d0 = dx + 2 * oh * W;
    float* d1 = d0 + W;
    for (int64_t ow = 0; ow < OW; ow += 16) {
      const int64_t n = std::min<int64_t>(16, OW - ow);
      const __mmask16 kn = lane_mask(n);
      __m512 g = _mm512_maskz_loadu_ps(kn, dy + oh * OW + ow);
      if (y) {  // ReLU'd forward: the gradient passes where y > 0 is not false (NaN passes)
        const __m512 yv = _mm512_maskz_loadu_ps(kn, y + oh * OW + ow);
        g = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(yv, zero, _CMP_NLE_UQ), g);
      }
      const __m512i at = _mm512_maskz_loadu_epi32(kn, indices + oh * OW + ow);
      const __m512i base =
          _mm512_add_epi32(_mm512_set1_epi32(static_cast<int32_t>(2 * oh * W + 2 * ow)), lane2);
      const __m512i rel = _mm512_sub_epi32(at, base);  // 0, 1, W, W+1
      const __m512i w1 = _mm512_set1_epi32(static_cast<int32_t>(W));
      const __m512 g00 =
          _mm512_maskz_mov_ps(_mm512_cmpeq_epi32_mask(rel, _mm512_setzero_si512()), g);
      const __m512 g01 = _mm512_maskz_mov_ps(_mm512_cmpeq_epi32_mask(rel, _mm512_set1_epi32(1)), g);
      const __m512 g10 = _mm512_maskz_mov_ps(_mm512_cmpeq_epi32_mask(rel, w1), g);
      const __m512 g11 = _mm512_maskz_mov_ps(
          _mm512_cmpeq_epi32_mask(rel, _mm512_add_epi32(w1, _mm512_set1_epi32(1))), g);
      const __mmask16 hit =
          _mm512_cmpeq_epi32_mask(rel, _mm512_setzero_si512()) |
          _mm512_cmpeq_epi32_mask(rel, _mm512_set1_epi32(1)) | _mm512_cmpeq_epi32_mask(rel, w1) |
          _mm512_cmpeq_epi32_mask(rel, _mm512_add_epi32(w1, _mm512_set1_epi32(1)));
      if ((hit & kn) != kn) return false;
      const __mmask16 k0 = lane_mask(2 * n), k1 = lane_mask(2 * n - 16);
      _mm512_mask_storeu_ps(d0 + 2 * ow, k0, _mm512_permutex2var_ps(g00, lo, g01));
      _mm512_mask_storeu_ps(d0 + 2 * ow + 16, k1, _mm512_permutex2var_ps(g00, hi, g01));
      _mm512_mask_storeu_ps(d1 + 2 * ow, k0, _mm512_permutex2var_ps(g10, lo, g11));
      _mm512_mask_storeu_ps(d1 + 2 * ow + 16, k1, _mm512_permutex2var_ps(g10, hi, g11));
    }
    for (int64_t w = 2 * OW; w < W; ++w) d0[w] = d1[w] = 0.f;  // an odd last column
  }
  for (int64_t h = 2 * OH; h < H; ++h)  // an odd last row
    for (int64_t w = 0; w < W; ++w) dx[h * W + w] = 0.f;
  return true;
}
}  // namespace

const GemmKernel kGemmAvx512 = {"avx512",
                                MR,
                                NR,
                                kernel_avx512,
                                CMR,
                                CNR,
                                conv_avx512,
                                direct_fwd_avx512,
                                direct_dw_avx512,
                                maxpool2x2_avx512,
                                maxpool2x2_backward_avx512,
                                kernel_avx512_ib,
                                G.kc,
                                G.mc,
                                G.dw_kb,
                                "avx2"};

}  // namespace fastcnn

#else
namespace fastcnn {
constexpr KernelGeometry G = kAvx512Geometry;
const GemmKernel kGemmAvx512 = {"avx512", G.mr,    G.nr,    nullptr, G.cmr, G.cnr, nullptr, nullptr,
                                nullptr,  nullptr, nullptr, nullptr, G.kc,  G.mc,  G.dw_kb};
}  // namespace fastcnn
#endif
