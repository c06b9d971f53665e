// AVX2 + FMA kernels (this file only is compiled with -mavx2 -mfma): the 6 x 16 GEMM tile, the
// same tile with B read in place, the 6-pixel x 16-channel convolution tile, the direct
// convolution for few input channels (forward and weight gradient), and 2x2 max-pooling.
//
// The tiles keep their 12 accumulators in ymm registers only if every loop over them is fully
// unrolled before GCC decides where they live: without the `#pragma GCC unroll` below, GCC 12
// spilled all twelve to the stack on every k step, halving the kernel's speed.
#include "cpu/gemm/conv_kernel.h"
#include "cpu/gemm/gemm.h"
#include "cpu/gemm/geometry.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

#include <algorithm>

namespace fastcnn {

namespace {
constexpr KernelGeometry G = kAvx2Geometry;
constexpr int MR = G.mr, NR = G.nr;
static_assert(NR == 16, "the tiles below are two ymm registers wide");
static_assert(MR <= kMaxInterleaveRows && NR <= kMaxInterleaveRows,
              "packing holds a row pointer each");

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

// The 6 x 16 tile: per k, two loads of B's row k (`b_row(k)`: packed, or read in place) and six
// broadcasts of A feed twelve FMAs.
template <class BRow>
inline void tile_avx2(int64_t K, const float* Ap, BRow b_row, float* C, int64_t ldc, int m, int n,
                      bool accumulate) {
  // The tile of C is read (or written) only after the k loop; asked for now, it arrives from
  // memory while the loop runs. (A large GEMM's C block does not stay in cache: SGEMM 2048^3
  // ran 21-28% faster with this on Zen 3, at 1 and at 2 threads.)
  __m256 c[MR][2];
#pragma GCC unroll 6
  for (int i = 0; i < MR; ++i) {
    if (i >= m) break;
    _mm_prefetch(reinterpret_cast<const char*>(C + i * ldc), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(C + i * ldc + NR - 1), _MM_HINT_T0);
  }
#pragma GCC unroll 6
  for (int i = 0; i < MR; ++i) c[i][0] = c[i][1] = _mm256_setzero_ps();
  for (int64_t k = 0; k < K; ++k) {
    const float* b = b_row(k);
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

void kernel_avx2(int64_t K, const float* Ap, const float* Bp, float* C, int64_t ldc, int m, int n,
                 bool accumulate) {
  tile_avx2(K, Ap, [Bp](int64_t k) { return Bp + k * NR; }, C, ldc, m, n, accumulate);
}

// The same tile with B read in place, over a column of tiles (see GemmKernel::fn_indirect_b).
void kernel_avx2_ib(int64_t K, const float* Ap, int64_t a_panel, int m, const float* const* brow,
                    int64_t boff, float* C, int64_t ldc, bool accumulate) {
  auto b_row = [brow, boff](int64_t k) { return brow[k] + boff; };
  for (int i0 = 0; i0 < m; i0 += MR, Ap += a_panel)
    tile_avx2(K, Ap, b_row, C + i0 * ldc, ldc, std::min(MR, m - i0), NR, accumulate);
}

// Convolution (see ConvKernel in gemm.h): 6 pixels x 16 channels. Per (tap, input channel): two
// loads of packed filters, six broadcasts straight from the NHWC input, twelve FMAs. The tile
// is transposed on the way out, into NCHW planes.
constexpr int CMR = G.cmr, CNR = G.cnr;
static_assert(CNR == 16, "the tile below is two ymm registers wide");

void conv_avx2(int64_t T, int64_t C, const float* const* pix, const int64_t* toff, const float* Wp,
               const float* bias, bool relu, float* y, int64_t ldy, int64_t ldp, int m, int n) {
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
    if (ldy == 1 && n == CNR) {  // a pixel's channels side by side: a row of the tile each
      if (i < m) {
        _mm256_storeu_ps(y + i * ldp, v0);
        _mm256_storeu_ps(y + i * ldp + 8, v1);
      }
      continue;
    }
    _mm256_store_ps(tile[i], v0);
    _mm256_store_ps(tile[i] + 8, v1);
  }
  if (ldy == 1 && n == CNR) return;
  for (int j = 0; j < n; ++j) {
    float* yj = y + j * ldy;
    for (int i = 0; i < m; ++i) yj[i * ldp] = tile[i][j];
  }
}

// All ones in the first n lanes (n may be <= 0 or >= 8).
inline __m256i lanes(int64_t n) {
  const int32_t k = static_cast<int32_t>(std::min<int64_t>(std::max<int64_t>(n, 0), 8));
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(k), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// Stores the first n (< 8) lanes of v: halves, pairs, singles (a masked store is slow on AMD's
// cores, and a copy loop turns into a memmove call).
inline void store_first(float* p, __m256 v, int64_t n) {
  __m128 h = _mm256_castps256_ps128(v);
  if (n >= 4) {
    _mm_storeu_ps(p, h);
    h = _mm256_extractf128_ps(v, 1), p += 4, n -= 4;
  }
  if (n >= 2) {
    _mm_storel_pi(reinterpret_cast<__m64*>(p), h);
    h = _mm_movehl_ps(h, h), p += 2, n -= 2;
  }
  if (n >= 1) _mm_store_ss(p, h);
}

// Eight pixels of a row from p on: consecutive, or (kStrided) `stride` apart, gathered (stride
// holds 0, sw, 2sw, ... 7sw).
template <bool kStrided>
inline __m256 row8(const float* p, __m256i stride) {
  return kStrided ? _mm256_i32gather_ps(p, stride, 4) : _mm256_loadu_ps(p);
}
// The same, zero in the lanes `keep` leaves out. Unstrided, those lanes are read (the caller
// makes sure they lie in its buffer) and cleared, which is cheaper than a masked load; a NaN or
// Inf read there never reaches a result. Gathered, they are not read.
template <bool kStrided>
inline __m256 row8_masked(const float* p, __m256i stride, __m256i keep) {
  return kStrided ? _mm256_mask_i32gather_ps(_mm256_setzero_ps(), p, stride,
                                             _mm256_castsi256_ps(keep), 4)
                  : _mm256_and_ps(_mm256_loadu_ps(p), _mm256_castsi256_ps(keep));
}

// Sum of the 8 lanes, in lane order.
inline float lane_sum(__m256 v) {
  alignas(32) float t[8];
  _mm256_store_ps(t, v);
  float s = 0.f;
  for (float x : t) s += x;
  return s;
}

// Direct convolution (few input channels; see DirectFwd in gemm.h): 16 output pixels of a row in
// two ymm registers times OB output channels (6, or 4 for the last few: SeedNet's 32 channels go
// 6, 6, 6, 6, 4, 4 rather than 6 x 5 and 2 in a block of 6), 2 OB accumulators; per tap two
// input loads (gathers for strided rows) feed 2 OB FMAs. Lanes past the row compute garbage that
// is never stored (the padded image has slack after its last row, so their loads stay inside it).
constexpr int DOB = G.direct_ob;
static_assert(G.direct_vw == 16 && G.direct_dw_vw == 8 && G.pool_vw == 8,
              "the direct and pooling loops below are written for these widths");

// Output channels [o, o + ob) of the image, ob <= OB; wblk: their filters, tap-major, OB apart.
// kStrided: a stride other than 1 (inputs gathered); unstrided, one register and a branch per
// load fewer.
template <int OB, bool kStrided>
void direct_fwd_block(const Direct2d& d, const float* xp, const float* wblk, const float* b,
                      bool relu, float* y, int64_t o, int ob) {
  const int64_t plane = d.OH * d.OW, sw = kStrided ? d.sw : 1;
  const __m256 zero = _mm256_setzero_ps();
  const __m256i stride = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
                                            _mm256_set1_epi32(static_cast<int32_t>(sw)));
  for (int64_t oh = 0; oh < d.OH; ++oh) {
    for (int64_t ow0 = 0; ow0 < d.OW; ow0 += 16) {
      __m256 acc[OB][2];
#pragma GCC unroll 6
      for (int q = 0; q < OB; ++q)
        acc[q][0] = acc[q][1] = (b && q < ob) ? _mm256_set1_ps(b[o + q]) : zero;
      const float* wt = wblk;
      for (int64_t c = 0; c < d.C; ++c) {
        for (int64_t ki = 0; ki < d.kh; ++ki) {
          const float* xr = xp + (c * d.Hp + oh * d.sh + ki) * d.Wp + ow0 * sw;
          for (int64_t kj = 0; kj < d.kw; ++kj, wt += OB) {
            const __m256 x0 = row8<kStrided>(xr + kj, stride);
            const __m256 x1 = row8<kStrided>(xr + kj + 8 * sw, stride);
#pragma GCC unroll 6
            for (int q = 0; q < OB; ++q) {
              const __m256 wq = _mm256_broadcast_ss(wt + q);
              acc[q][0] = _mm256_fmadd_ps(wq, x0, acc[q][0]);
              acc[q][1] = _mm256_fmadd_ps(wq, x1, acc[q][1]);
            }
          }
        }
      }
      const int64_t n = std::min<int64_t>(16, d.OW - ow0);
#pragma GCC unroll 6
      for (int q = 0; q < OB; ++q) {  // constant bounds keep acc in registers
        if (q >= ob) break;
        float* yq = y + (o + q) * plane + oh * d.OW + ow0;
        __m256 v0 = acc[q][0], v1 = acc[q][1];
        if (relu) {  // v < 0 ? 0 : v (NaN passes)
          v0 = _mm256_andnot_ps(_mm256_cmp_ps(v0, zero, _CMP_LT_OQ), v0);
          v1 = _mm256_andnot_ps(_mm256_cmp_ps(v1, zero, _CMP_LT_OQ), v1);
        }
        if (n >= 8) {
          _mm256_storeu_ps(yq, v0);
          if (n == 16)
            _mm256_storeu_ps(yq + 8, v1);
          else
            store_first(yq + 8, v1, n - 8);
        } else {
          store_first(yq, v0, n);
        }
      }
    }
  }
}

template <bool kStrided>
void direct_fwd_avx2_s(const Direct2d& d, const float* xp, const float* w, const float* b,
                       bool relu, float* y, int64_t o0, int64_t o1) {
  const int64_t CT = d.C * d.kh * d.kw;
  alignas(32) float wblk[256 * DOB];
  for (int64_t o = o0; o < o1;) {
    // Blocks of 6 while more than 8 channels (or exactly 6 or 5) remain, then of 4.
    const int64_t left = o1 - o;
    const int OB = left > 8 || left == 6 || left == 5 ? DOB : 4;
    const int ob = static_cast<int>(std::min<int64_t>(OB, left));
    for (int64_t ct = 0; ct < CT; ++ct)  // filters of this channel block, tap-major
      for (int q = 0; q < OB; ++q) wblk[ct * OB + q] = q < ob ? w[(o + q) * CT + ct] : 0.f;
    if (OB == DOB)
      direct_fwd_block<DOB, kStrided>(d, xp, wblk, b, relu, y, o, ob);
    else
      direct_fwd_block<4, kStrided>(d, xp, wblk, b, relu, y, o, ob);
    o += ob;
  }
}

void direct_fwd_avx2(const Direct2d& d, const float* xp, const float* w, const float* b, bool relu,
                     float* y, int64_t o0, int64_t o1) {
  if (d.C * d.kh * d.kw > 256) return direct_fwd<DOB, 8>(d, xp, w, b, relu, y, o0, o1);
  if (d.sw == 1)
    direct_fwd_avx2_s<false>(d, xp, w, b, relu, y, o0, o1);
  else
    direct_fwd_avx2_s<true>(d, xp, w, b, relu, y, o0, o1);
}

// Direct weight gradient (see DirectDw in gemm.h): for OB output channels at a time and each
// input channel, image by image, and for each tap row ki, OB x KW ymm accumulators over the
// image's output rows, 8 pixels a step; then lane sums. Each step loads the KW shifted input
// vectors once for all OB channels (with one channel at a time, twelve loads fed ten FMAs at
// KW = 5 and the loop was bound by loads: SeedNet's conv1 dW ran at a third of the FMA peak).
// dy and x are both masked to the row, so lanes past it add exact zeros (never 0 * Inf). KW
// and OB are template parameters so the accumulators stay in registers: OB x (KW + 1) + 1
// of the 16 (accumulators, dy vectors, the input vector).
template <int KW, bool kStrided>
void direct_dw_avx2_kw(const Direct2d& d, int64_t N, const float* xp, int64_t image,
                       const float* dy, float* dw, int64_t o0, int64_t o1) {
  constexpr int OB = std::min(4, 15 / (KW + 1));
  const int64_t plane = d.OH * d.OW, sw = kStrided ? d.sw : 1;
  const __m256i stride = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
                                            _mm256_set1_epi32(static_cast<int32_t>(sw)));
  // Each output row: whole chunks of 8 columns, then the rest (under a mask made once here).
  const int64_t whole = d.OW / 8 * 8, rest = d.OW - whole;
  const __m256i keep = lanes(rest);
  // Images outermost: one image's dy planes and input plane stay in L1 while every tap row
  // reads them. Each tap row's sums wait in `run` between images.
  alignas(32) float run[kDirectMaxKw][OB][KW][8];
  for (int64_t o = o0; o < o1; o += OB) {
    const int ob = static_cast<int>(std::min<int64_t>(OB, o1 - o));
    for (int64_t c = 0; c < d.C; ++c) {
      std::fill(&run[0][0][0][0], &run[0][0][0][0] + sizeof(run) / sizeof(float), 0.f);
      for (int64_t n = 0; n < N; ++n) {
        const float* dyo[OB];  // channels past ob repeat the last (summed, then dropped)
        for (int q = 0; q < OB; ++q) dyo[q] = dy + (n * d.O + o + std::min(q, ob - 1)) * plane;
        for (int64_t ki = 0; ki < d.kh; ++ki) {
          __m256 acc[OB][KW];
#pragma GCC unroll 4
          for (int q = 0; q < OB; ++q)
#pragma GCC unroll 8
            for (int kj = 0; kj < KW; ++kj) acc[q][kj] = _mm256_load_ps(run[ki][q][kj]);
          for (int64_t oh = 0; oh < d.OH; ++oh) {
            const float* xr = xp + n * image + (c * d.Hp + oh * d.sh + ki) * d.Wp;
            const int64_t row = oh * d.OW;
            for (int64_t ow0 = 0; ow0 < whole; ow0 += 8) {
              const float* xs = xr + ow0 * sw;
              __m256 g[OB];
#pragma GCC unroll 4
              for (int q = 0; q < OB; ++q) g[q] = _mm256_loadu_ps(dyo[q] + row + ow0);
#pragma GCC unroll 8
              for (int kj = 0; kj < KW; ++kj) {
                const __m256 xv = row8<kStrided>(xs + kj, stride);
#pragma GCC unroll 4
                for (int q = 0; q < OB; ++q) acc[q][kj] = _mm256_fmadd_ps(g[q], xv, acc[q][kj]);
              }
            }
            if (rest > 0) {
              const float* xs = xr + whole * sw;
              __m256 g[OB];
#pragma GCC unroll 4
              for (int q = 0; q < OB; ++q) g[q] = _mm256_maskload_ps(dyo[q] + row + whole, keep);
#pragma GCC unroll 8
              for (int kj = 0; kj < KW; ++kj) {
                const __m256 xv = row8_masked<kStrided>(xs + kj, stride, keep);
#pragma GCC unroll 4
                for (int q = 0; q < OB; ++q) acc[q][kj] = _mm256_fmadd_ps(g[q], xv, acc[q][kj]);
              }
            }
          }
#pragma GCC unroll 4
          for (int q = 0; q < OB; ++q)
#pragma GCC unroll 8
            for (int kj = 0; kj < KW; ++kj) _mm256_store_ps(run[ki][q][kj], acc[q][kj]);
        }
      }
      for (int q = 0; q < ob; ++q)
        for (int64_t ki = 0; ki < d.kh; ++ki)
          for (int kj = 0; kj < KW; ++kj)
            dw[(((o + q) * d.C + c) * d.kh + ki) * d.kw + kj] =
                lane_sum(_mm256_load_ps(run[ki][q][kj]));
    }
  }
}

template <int KW>
void direct_dw_avx2_kw(const Direct2d& d, int64_t N, const float* xp, int64_t image,
                       const float* dy, float* dw, int64_t o0, int64_t o1) {
  if (d.sw == 1)
    direct_dw_avx2_kw<KW, false>(d, N, xp, image, dy, dw, o0, o1);
  else
    direct_dw_avx2_kw<KW, true>(d, N, xp, image, dy, dw, o0, o1);
}

void direct_dw_avx2(const Direct2d& d, int64_t N, const float* xp, int64_t image, const float* dy,
                    float* dw, int64_t o0, int64_t o1) {
  switch (d.kw) {
    case 1:
      return direct_dw_avx2_kw<1>(d, N, xp, image, dy, dw, o0, o1);
    case 2:
      return direct_dw_avx2_kw<2>(d, N, xp, image, dy, dw, o0, o1);
    case 3:
      return direct_dw_avx2_kw<3>(d, N, xp, image, dy, dw, o0, o1);
    case 4:
      return direct_dw_avx2_kw<4>(d, N, xp, image, dy, dw, o0, o1);
    case 5:
      return direct_dw_avx2_kw<5>(d, N, xp, image, dy, dw, o0, o1);
    case 6:
      return direct_dw_avx2_kw<6>(d, N, xp, image, dy, dw, o0, o1);
    case 7:
      return direct_dw_avx2_kw<7>(d, N, xp, image, dy, dw, o0, o1);
    default:  // kw <= kDirectMaxKw = 8 (see use_direct in conv2d.cpp)
      return direct_dw_avx2_kw<8>(d, N, xp, image, dy, dw, o0, o1);
  }
}

// 2x2 max-pooling (see MaxPool2x2 in gemm.h), 8 outputs a step: the even and odd columns of the
// two input rows deinterleaved into four vectors, then three compare-and-select steps carrying
// the index along. A row's last, partial step uses masked loads and partial stores (a scalar
// tail with data-dependent branches was slower than the whole vector loop).
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
  const __m256i off1 = _mm256_set1_epi32(1), offw = _mm256_set1_epi32(static_cast<int32_t>(W));
  const __m256i offw1 = _mm256_add_epi32(offw, off1);
  for (int64_t oh = 0; oh < rows; ++oh) {
    const float* r0 = x + 2 * oh * W;
    const float* r1 = r0 + W;
    for (int64_t ow = 0; ow < OW; ow += 8) {
      const int64_t n = std::min<int64_t>(8, OW - ow);
      __m256 a0, a1, b0, b1;
      if (n == 8) {
        a0 = _mm256_loadu_ps(r0 + 2 * ow), a1 = _mm256_loadu_ps(r0 + 2 * ow + 8);
        b0 = _mm256_loadu_ps(r1 + 2 * ow), b1 = _mm256_loadu_ps(r1 + 2 * ow + 8);
      } else {
        const __m256i k0 = lanes(2 * n), k1 = lanes(2 * n - 8);
        a0 = _mm256_maskload_ps(r0 + 2 * ow, k0), a1 = _mm256_maskload_ps(r0 + 2 * ow + 8, k1);
        b0 = _mm256_maskload_ps(r1 + 2 * ow, k0), b1 = _mm256_maskload_ps(r1 + 2 * ow + 8, k1);
      }
      const __m256 cand[4] = {even_lanes(a0, a1), odd_lanes(a0, a1), even_lanes(b0, b1),
                              odd_lanes(b0, b1)};
      const __m256i base =
          _mm256_add_epi32(_mm256_set1_epi32(static_cast<int32_t>(2 * oh * W + 2 * ow)), lane2);
      const __m256i at_c[4] = {base, _mm256_add_epi32(base, off1), _mm256_add_epi32(base, offw),
                               _mm256_add_epi32(base, offw1)};
      __m256 best = cand[0];
      __m256i at = base;
#pragma GCC unroll 3
      for (int c = 1; c < 4; ++c) {
        // beats: v > best, or v is NaN while best is not
        const __m256 gt = _mm256_cmp_ps(cand[c], best, _CMP_GT_OQ);
        const __m256 nan = _mm256_and_ps(_mm256_cmp_ps(cand[c], cand[c], _CMP_UNORD_Q),
                                         _mm256_cmp_ps(best, best, _CMP_ORD_Q));
        const __m256 win = _mm256_or_ps(gt, nan);
        best = _mm256_blendv_ps(best, cand[c], win);
        at = _mm256_castps_si256(
            _mm256_blendv_ps(_mm256_castsi256_ps(at), _mm256_castsi256_ps(at_c[c]), win));
      }
      if (n == 8) {
        _mm256_storeu_ps(y + oh * OW + ow, best);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(indices + oh * OW + ow), at);
      } else {
        store_first(y + oh * OW + ow, best, n);
        store_first(reinterpret_cast<float*>(indices + oh * OW + ow), _mm256_castsi256_ps(at), n);
      }
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
    for (int64_t ow = 0; ow < OW; ow += 8) {
      const int64_t n = std::min<int64_t>(8, OW - ow);
      const __m256i kn = lanes(n);
      const float* dyp = dy + oh * OW + ow;
      const int32_t* ip = indices + oh * OW + ow;
      __m256 g = n == 8 ? _mm256_loadu_ps(dyp) : _mm256_maskload_ps(dyp, kn);
      if (y) {  // ReLU'd forward: the gradient passes where y > 0 is not false (NaN passes)
        const float* yp = y + oh * OW + ow;
        const __m256 yv = n == 8 ? _mm256_loadu_ps(yp) : _mm256_maskload_ps(yp, kn);
        g = _mm256_and_ps(g, _mm256_cmp_ps(yv, zero, _CMP_NLE_UQ));
      }
      const __m256i at = n == 8 ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ip))
                                : _mm256_maskload_epi32(ip, kn);
      const __m256i base =
          _mm256_add_epi32(_mm256_set1_epi32(static_cast<int32_t>(2 * oh * W + 2 * ow)), lane2);
      const __m256i rel = _mm256_sub_epi32(at, base);  // 0, 1, W, W+1
      const __m256i e00 = _mm256_cmpeq_epi32(rel, _mm256_setzero_si256());
      const __m256i e01 = _mm256_cmpeq_epi32(rel, one);
      const __m256i e10 = _mm256_cmpeq_epi32(rel, w0);
      const __m256i e11 = _mm256_cmpeq_epi32(rel, w1);
      const __m256i hit = _mm256_or_si256(_mm256_or_si256(e00, e01), _mm256_or_si256(e10, e11));
      const int want = _mm256_movemask_ps(_mm256_castsi256_ps(kn));
      if ((_mm256_movemask_ps(_mm256_castsi256_ps(hit)) & want) != want) return false;
      const __m256 g00 = _mm256_and_ps(g, _mm256_castsi256_ps(e00));
      const __m256 g01 = _mm256_and_ps(g, _mm256_castsi256_ps(e01));
      const __m256 g10 = _mm256_and_ps(g, _mm256_castsi256_ps(e10));
      const __m256 g11 = _mm256_and_ps(g, _mm256_castsi256_ps(e11));
      // unpack interleaves within 128-bit halves; permute2f128 puts the halves in order.
      const __m256 lo0 = _mm256_unpacklo_ps(g00, g01), hi0 = _mm256_unpackhi_ps(g00, g01);
      const __m256 lo1 = _mm256_unpacklo_ps(g10, g11), hi1 = _mm256_unpackhi_ps(g10, g11);
      const __m256 out[4] = {
          _mm256_permute2f128_ps(lo0, hi0, 0x20), _mm256_permute2f128_ps(lo0, hi0, 0x31),
          _mm256_permute2f128_ps(lo1, hi1, 0x20), _mm256_permute2f128_ps(lo1, hi1, 0x31)};
      if (n == 8) {
        _mm256_storeu_ps(d0 + 2 * ow, out[0]);
        _mm256_storeu_ps(d0 + 2 * ow + 8, out[1]);
        _mm256_storeu_ps(d1 + 2 * ow, out[2]);
        _mm256_storeu_ps(d1 + 2 * ow + 8, out[3]);
      } else if (n >= 4) {  // 2n < 16 values a row
        _mm256_storeu_ps(d0 + 2 * ow, out[0]);
        _mm256_storeu_ps(d1 + 2 * ow, out[2]);
        store_first(d0 + 2 * ow + 8, out[1], 2 * n - 8);
        store_first(d1 + 2 * ow + 8, out[3], 2 * n - 8);
      } else {
        store_first(d0 + 2 * ow, out[0], 2 * n);
        store_first(d1 + 2 * ow, out[2], 2 * n);
      }
    }
    for (int64_t w = 2 * OW; w < W; ++w) d0[w] = d1[w] = 0.f;  // an odd last column
  }
  for (int64_t h = 2 * OH; h < H; ++h)  // an odd last row
    for (int64_t w = 0; w < W; ++w) dx[h * W + w] = 0.f;
  return true;
}
}  // namespace

const GemmKernel kGemmAvx2 = {"avx2",
                              MR,
                              NR,
                              kernel_avx2,
                              CMR,
                              CNR,
                              conv_avx2,
                              direct_fwd_avx2,
                              direct_dw_avx2,
                              maxpool2x2_avx2,
                              maxpool2x2_backward_avx2,
                              kernel_avx2_ib,
                              G.kc,
                              G.mc,
                              G.dw_kb};

}  // namespace fastcnn

#else
namespace fastcnn {
constexpr KernelGeometry G = kAvx2Geometry;
const GemmKernel kGemmAvx2 = {"avx2",  G.mr,    G.nr,    nullptr, G.cmr, G.cnr, nullptr, nullptr,
                              nullptr, nullptr, nullptr, nullptr, G.kc,  G.mc,  G.dw_kb};
}  // namespace fastcnn
#endif
