// The transforms of F(2x2, 5x5), F(4x4, 3x3) and F(2x2, 3x3), see winograd.h: loops over
// channels, products or filters, vectorised, built for AVX-512 and AVX2 as well
// (FASTCNN_ELEMENTWISE). Each is a pass over rows then over columns, with the 1-D
// transforms
//   B^T d: 4d0 - 5d2 + d4, (d3 + d4) - 4(d1 + d2), (d4 - d3) + 4(d1 - d2),
//          (d4 - d2) + 2(d3 - d1), (d4 - d2) - 2(d3 - d1), 4d1 - 5d3 + d5
//   A^T m: m0 + m1 + m2 + m3 + m4, (m1 - m2) + 2(m3 - m4) + m5
//   G f:   f0/4, -(f0+f1+f2+f3+f4)/6, -(f0-f1+f2-f3+f4)/6, (f0+2f1+4f2+8f3+16f4)/24,
//          (f0-2f1+4f2-8f3+16f4)/24, f4
//   A g:   g0, g0 + g1, g0 - g1, g0 + 2g1, g0 - 2g1, g1  (a 2x2 block of dy, for dw)
//   G^T m: the transpose of G f, 6 values to 5 (dw's last step)
// for F(4x4, 3x3), with B^T d as above
//   A^T m: m0 + (m1 + m2) + (m3 + m4), (m1 - m2) + 2(m3 - m4), (m1 + m2) + 4(m3 + m4),
//          (m1 - m2) + 8(m3 - m4) + m5
//   G f:   f0/4, -(f0+f1+f2)/6, -(f0-f1+f2)/6, (f0+2f1+4f2)/24, (f0-2f1+4f2)/24, f2
//   A g:   g0, (g0 + g2) + (g1 + g3), (g0 + g2) - (g1 + g3), (g0 + 4g2) + (2g1 + 8g3),
//          (g0 + 4g2) - (2g1 + 8g3), g3  (a 4x4 block of dy, for dw)
//   G^T m: the transpose of G f, 6 values to 3 (dw's last step)
// and for F(2x2, 3x3) (the weight gradient only)
//   B^T d: d2 - d0, d1 + d2, d2 - d1, d3 - d1
//   A g:   g0, g0 + g1, g0 - g1, g1
//   G^T m: -m0 + (m1 + m2)/2, (m1 - m2)/2, (m1 + m2)/2 + m3
#include "cpu/winograd.h"

#include <algorithm>
#include <cfloat>
#include <cmath>

#include "cpu/common.h"
#include "cpu/vec16.h"

namespace fastcnn {

namespace {

// G f of R = 5 values (F(2x2, 5x5)) or 3 (F(4x4, 3x3)), into u[0..5]: the same interpolation
// points, so the same scaling of each row.
template <int R>
inline void filter_1d(const double* f, double* u) {
  if constexpr (R == 5) {
    const double f0 = f[0], f1 = f[1], f2 = f[2], f3 = f[3], f4 = f[4];
    u[0] = f0 / 4;
    u[1] = -(f0 + f1 + f2 + f3 + f4) / 6;
    u[2] = -(f0 - f1 + f2 - f3 + f4) / 6;
    u[3] = (f0 + 2 * f1 + 4 * f2 + 8 * f3 + 16 * f4) / 24;
    u[4] = (f0 - 2 * f1 + 4 * f2 - 8 * f3 + 16 * f4) / 24;
    u[5] = f4;
  } else {
    const double f0 = f[0], f1 = f[1], f2 = f[2];
    u[0] = f0 / 4;
    u[1] = -(f0 + f1 + f2) / 6;
    u[2] = -(f0 - f1 + f2) / 6;
    u[3] = (f0 + 2 * f1 + 4 * f2) / 24;
    u[4] = (f0 - 2 * f1 + 4 * f2) / 24;
    u[5] = f2;
  }
}

// G f G^T of `count` R x R filters side by side into the 6x6 points (winograd.h).
template <int R>
inline void filters_6x6(const float* f, int64_t count, float* u, int64_t ldu) {
#pragma GCC ivdep
  for (int64_t j = 0; j < count; ++j) {  // vectorised over the filters
    double t[6][R];                      // G f: 6 rows of R
#pragma GCC unroll 5
    for (int c = 0; c < R; ++c) {
      double col[R], g[6];
#pragma GCC unroll 5
      for (int r = 0; r < R; ++r) col[r] = f[(R * r + c) * count + j];
      filter_1d<R>(col, g);
#pragma GCC unroll 6
      for (int r = 0; r < 6; ++r) t[r][c] = g[r];
    }
#pragma GCC unroll 6
    for (int r = 0; r < 6; ++r) {
      double g[6];
      filter_1d<R>(t[r], g);
#pragma GCC unroll 6
      for (int s = 0; s < 6; ++s) u[(6 * r + s) * ldu + j] = static_cast<float>(g[s]);
    }
  }
}

// B^T d of F values (T: a float, or 16 of them): F = 6, the 6x6 blocks of F(2x2, 5x5) and
// F(4x4, 3x3); F = 4, F(2x2, 3x3)'s 4x4 blocks.
template <int F, class T>
__attribute__((always_inline)) inline void input_b(const T* d, T* v) {
  if constexpr (F == 6) {
    const T a = d[4] - d[2], b = d[3] - d[1];
    v[0] = 4.f * d[0] - 5.f * d[2] + d[4];
    v[1] = (d[3] + d[4]) - 4.f * (d[1] + d[2]);
    v[2] = (d[4] - d[3]) + 4.f * (d[1] - d[2]);
    v[3] = a + 2.f * b;
    v[4] = a - 2.f * b;
    v[5] = 4.f * d[1] - 5.f * d[3] + d[5];
  } else {
    v[0] = d[2] - d[0], v[1] = d[1] + d[2], v[2] = d[2] - d[1], v[3] = d[3] - d[1];
  }
}

// B^T d B of the F x F block at d (NHWC, rows `row` floats apart) for channel c and the next
// lanes (T: one channel, or 16), in registers: the block in, over the rows then the columns, the
// F*F points out to V[xi * ldv + c].
template <int F, class T, class Load, class Store>
__attribute__((always_inline)) inline void input_block(const float* d, int64_t row, int64_t C,
                                                       float* V, int64_t ldv, int64_t c, Load load,
                                                       Store store) {
  T t[F][F];  // B^T d: over the rows, for each column s
  for (int s = 0; s < F; ++s) {
    T col[F], v[F];
    for (int r = 0; r < F; ++r) col[r] = load(d + r * row + s * C + c);
    input_b<F>(col, v);
    for (int x = 0; x < F; ++x) t[x][s] = v[x];
  }
  for (int x = 0; x < F; ++x) {
    T v[F];
    input_b<F>(t[x], v);
    for (int y = 0; y < F; ++y) store(V + (F * x + y) * ldv + c, v[y]);
  }
}

// All C channels: 16 at a time (one zmm, two ymm or four xmm a value in each ISA clone, into
// which this must be inlined: GCC otherwise compiles one shared baseline copy), then one at a
// time. (Over all channels a row or column at a time through a scratch block, the
// transforms made F(2x2, 3x3)'s weight gradient 1.1x and F(4x4, 3x3)'s forward 1.15x slower at
// 16 channels.)
template <int F>
__attribute__((always_inline)) inline void input_all(const float* d, int64_t row, int64_t C,
                                                     float* V, int64_t ldv) {
  int64_t c = 0;
  for (; c + 16 <= C; c += 16)
    input_block<F, vec16::F16>(
        d, row, C, V, ldv, c, [](const float* p) { return vec16::load(p); },
        [](float* p, vec16::F16 v) { vec16::store(p, v); });
  for (; c < C; ++c)
    input_block<F, float>(
        d, row, C, V, ldv, c, [](const float* p) { return *p; }, [](float* p, float v) { *p = v; });
}

}  // namespace

FASTCNN_ELEMENTWISE
void winograd5_filters(const float* f, int64_t count, float* u, int64_t ldu) {
  filters_6x6<5>(f, count, u, ldu);
}

FASTCNN_ELEMENTWISE
void winograd43_filters(const float* f, int64_t count, float* u, int64_t ldu) {
  filters_6x6<3>(f, count, u, ldu);
}

FASTCNN_ELEMENTWISE
void winograd5_input(const float* d, int64_t row, int64_t C, float* V, int64_t ldv) {
  input_all<6>(d, row, C, V, ldv);
}

FASTCNN_ELEMENTWISE
bool winograd5_output(const float* M, int64_t ldm, int64_t count, float* out) {
  float* __restrict y00 = out, * __restrict y01 = out + count;
  float* __restrict y10 = out + 2 * count, * __restrict y11 = out + 3 * count;
  int bad = 0;
#pragma GCC ivdep
  for (int64_t e = 0; e < count; ++e) {
    float s0[6], s1[6];  // A^T over the rows, for each column
#pragma GCC unroll 6
    for (int c = 0; c < 6; ++c) {
      const float* m = M + c * ldm + e;
      const float m0 = m[0], m1 = m[6 * ldm], m2 = m[12 * ldm], m3 = m[18 * ldm];
      const float m4 = m[24 * ldm], m5 = m[30 * ldm];
      s0[c] = m0 + m1 + m2 + m3 + m4;
      s1[c] = (m1 - m2) + 2.f * (m3 - m4) + m5;
    }
    const float a = s0[0] + s0[1] + s0[2] + s0[3] + s0[4];
    const float b = (s0[1] - s0[2]) + 2.f * (s0[3] - s0[4]) + s0[5];
    const float c = s1[0] + s1[1] + s1[2] + s1[3] + s1[4];
    const float d = (s1[1] - s1[2]) + 2.f * (s1[3] - s1[4]) + s1[5];
    y00[e] = a, y01[e] = b, y10[e] = c, y11[e] = d;
    // Inf or NaN anywhere: |v| <= FLT_MAX is false for both.
    bad |= !(std::fabs(a) <= FLT_MAX) | !(std::fabs(b) <= FLT_MAX) | !(std::fabs(c) <= FLT_MAX) |
           !(std::fabs(d) <= FLT_MAX);
  }
  return bad == 0;
}

FASTCNN_ELEMENTWISE
bool winograd43_output(const float* M, int64_t ldm, int64_t count, float* out) {
  int bad = 0;
#pragma GCC ivdep
  for (int64_t e = 0; e < count; ++e) {
    float s[4][6];  // A^T over the rows, for each column
#pragma GCC unroll 6
    for (int c = 0; c < 6; ++c) {
      const float* m = M + c * ldm + e;
      const float m0 = m[0], m1 = m[6 * ldm], m2 = m[12 * ldm], m3 = m[18 * ldm];
      const float m4 = m[24 * ldm], m5 = m[30 * ldm];
      const float a = m1 + m2, b = m1 - m2, c3 = m3 + m4, d = m3 - m4;
      s[0][c] = m0 + a + c3;
      s[1][c] = b + 2.f * d;
      s[2][c] = a + 4.f * c3;
      s[3][c] = b + 8.f * d + m5;
    }
#pragma GCC unroll 4
    for (int r = 0; r < 4; ++r) {
      const float* v = s[r];
      const float a = v[1] + v[2], b = v[1] - v[2], c3 = v[3] + v[4], d = v[3] - v[4];
      const float y0 = v[0] + a + c3, y1 = b + 2.f * d, y2 = a + 4.f * c3, y3 = b + 8.f * d + v[5];
      out[(4 * r) * count + e] = y0, out[(4 * r + 1) * count + e] = y1;
      out[(4 * r + 2) * count + e] = y2, out[(4 * r + 3) * count + e] = y3;
      bad |= !(std::fabs(y0) <= FLT_MAX) | !(std::fabs(y1) <= FLT_MAX) |
             !(std::fabs(y2) <= FLT_MAX) | !(std::fabs(y3) <= FLT_MAX);
    }
  }
  return bad == 0;
}

// A g of the S values g (a row or column of an S x S block of dy) at the F points: S = 2 and
// F = 6 (F(2x2, 5x5): A's columns (1,1,1,1,1,0), (0,1,-1,2,-2,1)), S = 2 and F = 4 (F(2x2,
// 3x3): (1,1,1,0), (0,1,-1,1)), or S = 4 and F = 6 (F(4x4, 3x3): the columns of A^T m above).
template <int S, int F>
inline void a_of(const float* g, float* h) {
  if constexpr (S == 4) {
    const float e = g[0] + g[2], o = g[1] + g[3];
    const float e4 = g[0] + 4.f * g[2], o8 = 2.f * g[1] + 8.f * g[3];
    h[0] = g[0], h[1] = e + o, h[2] = e - o, h[3] = e4 + o8, h[4] = e4 - o8, h[5] = g[3];
  } else if constexpr (F == 6) {
    const float g0 = g[0], g1 = g[1];
    h[0] = g0, h[1] = g0 + g1, h[2] = g0 - g1, h[3] = g0 + 2.f * g1, h[4] = g0 - 2.f * g1;
    h[5] = g1;
  } else {
    const float g0 = g[0], g1 = g[1];
    h[0] = g0, h[1] = g0 + g1, h[2] = g0 - g1, h[3] = g1;
  }
}

// A g A^T of the S x S blocks for the channels o0 + i, i < n (zeros for n <= i < MR), into a
// panel d of MR channels side by side.
template <int S, int F, int MR>
inline void dy_panel(const float* g, int64_t row, int64_t O, int64_t o0, int n, float* d,
                     int64_t ld_xi) {
#pragma GCC ivdep
  for (int i = 0; i < MR; ++i) {  // vectorised over the panel's channels (n == MR)
    const float* p = g + o0 + i;
    const bool in = i < n;
    float e[S][F];  // g A^T, row a of the block
#pragma GCC unroll 4
    for (int a = 0; a < S; ++a) {
      float v[S];
#pragma GCC unroll 4
      for (int b = 0; b < S; ++b) v[b] = in ? p[a * row + b * O] : 0.f;
      a_of<S, F>(v, e[a]);
    }
#pragma GCC unroll 6
    for (int c = 0; c < F; ++c) {
      float v[S], h[F];
#pragma GCC unroll 4
      for (int a = 0; a < S; ++a) v[a] = e[a][c];
      a_of<S, F>(v, h);
#pragma GCC unroll 6
      for (int r = 0; r < F; ++r) d[(F * r + c) * ld_xi + i] = h[r];
    }
  }
}

template <int S, int F, int MR>
inline void dy_panels(const float* g, int64_t row, int64_t O, float* D, int64_t ld_xi,
                      int64_t ld_panel) {
  int64_t q = 0;
  for (; (q + 1) * MR <= O; ++q) dy_panel<S, F, MR>(g, row, O, q * MR, MR, D + q * ld_panel, ld_xi);
  if (q * MR < O)
    dy_panel<S, F, MR>(g, row, O, q * MR, static_cast<int>(O - q * MR), D + q * ld_panel, ld_xi);
}

template <int S, int F>
inline void dy_any(const float* g, int64_t row, int64_t O, int mr, float* D, int64_t ld_xi,
                   int64_t ld_panel) {
  switch (mr) {  // the GEMM kernels' MR (geometry.h)
    case 4:
      return dy_panels<S, F, 4>(g, row, O, D, ld_xi, ld_panel);
    case 6:
      return dy_panels<S, F, 6>(g, row, O, D, ld_xi, ld_panel);
    case 8:
      return dy_panels<S, F, 8>(g, row, O, D, ld_xi, ld_panel);
    default:
      for (int64_t q = 0; q * mr < O; ++q) {
        const int n = static_cast<int>(std::min<int64_t>(mr, O - q * mr));
        for (int i = 0; i < mr; ++i)  // one channel at a time, as a panel of one
          dy_panel<S, F, 1>(g, row, O, q * mr + i, i < n ? 1 : 0, D + q * ld_panel + i, ld_xi);
      }
  }
}

FASTCNN_ELEMENTWISE
void winograd5_dy(const float* g, int64_t row, int64_t O, int mr, float* D, int64_t ld_xi,
                  int64_t ld_panel) {
  dy_any<2, 6>(g, row, O, mr, D, ld_xi, ld_panel);
}

FASTCNN_ELEMENTWISE
void winograd3_dy(const float* g, int64_t row, int64_t O, int mr, float* D, int64_t ld_xi,
                  int64_t ld_panel) {
  dy_any<2, 4>(g, row, O, mr, D, ld_xi, ld_panel);
}

FASTCNN_ELEMENTWISE
void winograd43_dy(const float* g, int64_t row, int64_t O, int mr, float* D, int64_t ld_xi,
                   int64_t ld_panel) {
  dy_any<4, 6>(g, row, O, mr, D, ld_xi, ld_panel);
}

FASTCNN_ELEMENTWISE
void winograd3_input(const float* d, int64_t row, int64_t C, float* V, int64_t ldv) {
  input_all<4>(d, row, C, V, ldv);
}

namespace {

// Eight doubles as one value (vec16.h's way): G^T m G runs over eight (o, c) pairs at a time,
// its divisions vectorised. (One pair at a time, 45 scalar divisions each, it took 8% of a 64
// -> 64 channel 7x7 layer's backward.) The same operations in the same order: the same bits.
typedef double D8 __attribute__((vector_size(64)));
typedef float F8 __attribute__((vector_size(32)));
typedef float F8u __attribute__((vector_size(32), aligned(4)));

// dw (R x R taps each, dw + e * R * R) = G^T m G of the F x F sums m[xi * ld + e] for e in
// [0, count), in double, gt(v, step, z, zstep) being G^T of F values v[i * step] into R values
// z[u * zstep]. False if one of m is Inf or NaN (dw then holds garbage).
template <int F, int R, class Gt>
__attribute__((always_inline)) inline bool gt_m_g(const float* m, int64_t ld, int64_t count,
                                                  float* dw, Gt gt) {
  D8 bad = {};
  for (int64_t e0 = 0; e0 < count; e0 += 8) {
    const int n = static_cast<int>(std::min<int64_t>(8, count - e0));
    D8 v[F * F], t[R * F], z[R * R];
    for (int xi = 0; xi < F * F; ++xi) {
      F8 f = {};
      if (n == 8)
        f = *reinterpret_cast<const F8u*>(m + xi * ld + e0);
      else
        for (int l = 0; l < n; ++l) f[l] = m[xi * ld + e0 + l];
      v[xi] = __builtin_convertvector(f, D8);
      bad += v[xi] - v[xi];  // 0 where finite, NaN where not
    }
    for (int s = 0; s < F; ++s) gt(v + s, F, t + s, F);  // over rows: t (R x F)
    for (int u = 0; u < R; ++u) gt(t + F * u, 1, z + R * u, 1);
    for (int i = 0; i < R * R; ++i) {
      const F8 out = __builtin_convertvector(z[i], F8);
      for (int l = 0; l < n; ++l) dw[(e0 + l) * R * R + i] = out[l];
    }
  }
  for (int l = 0; l < 8; ++l)
    if (bad[l] != 0.0) return false;  // NaN != 0
  return true;
}

// G^T of F(2x2, 3x3)'s four values at the points 0, 1, -1 and infinity into 3.
__attribute__((always_inline)) inline void gt_4(const D8* v, int step, D8* z, int zstep) {
  const D8 m0 = v[0], m1 = v[step], m2 = v[2 * step], m3 = v[3 * step];
  z[0] = -m0 + (m1 + m2) / 2;
  z[zstep] = (m1 - m2) / 2;
  z[2 * zstep] = (m1 + m2) / 2 + m3;
}

// G^T of six values at the points 0, 1, -1, 2, -2 and infinity into R: the transpose of
// filter_1d<R>'s G, R = 3 (F(4x4, 3x3)) or 5 (F(2x2, 5x5)); the first rows are the same.
template <int R>
__attribute__((always_inline)) inline void gt_6(const D8* v, int step, D8* z, int zstep) {
  const D8 m0 = v[0], m1 = v[step], m2 = v[2 * step], m3 = v[3 * step], m4 = v[4 * step];
  const D8 m5 = v[5 * step];
  z[0] = m0 / 4 - (m1 + m2) / 6 + (m3 + m4) / 24;
  z[zstep] = (m2 - m1) / 6 + (m3 - m4) / 12;
  if constexpr (R == 3) {
    z[2 * zstep] = (m3 + m4 - m1 - m2) / 6 + m5;
  } else {
    z[2 * zstep] = (m3 + m4 - m1 - m2) / 6;
    z[3 * zstep] = (m2 - m1) / 6 + (m3 - m4) / 3;
    z[4 * zstep] = (4 * (m3 + m4) - m1 - m2) / 6 + m5;
  }
}

}  // namespace

FASTCNN_ELEMENTWISE
bool winograd3_dw(const float* m, int64_t ld, int64_t count, float* dw) {
  return gt_m_g<4, 3>(m, ld, count, dw, gt_4);
}

FASTCNN_ELEMENTWISE
bool winograd43_dw(const float* m, int64_t ld, int64_t count, float* dw) {
  return gt_m_g<6, 3>(m, ld, count, dw, gt_6<3>);
}

FASTCNN_ELEMENTWISE
bool winograd5_dw(const float* m, int64_t ld, int64_t count, float* dw) {
  return gt_m_g<6, 5>(m, ld, count, dw, gt_6<5>);
}

}  // namespace fastcnn
