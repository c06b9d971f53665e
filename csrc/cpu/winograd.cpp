// The transforms of F(2x2, 5x5) and F(4x4, 3x3), see winograd.h. All but the last (once per filter)
// are loops over channels, products or filters that the compiler vectorises, built for AVX-512 and
// AVX2 as well (FASTCNN_ELEMENTWISE). Each is a pass over rows then over columns, with the 1-D
// transforms
//   B^T d: 4d0 - 5d2 + d4, (d3 + d4) - 4(d1 + d2), (d4 - d3) + 4(d1 - d2),
//          (d4 - d2) + 2(d3 - d1), (d4 - d2) - 2(d3 - d1), 4d1 - 5d3 + d5
//   A^T m: m0 + m1 + m2 + m3 + m4, (m1 - m2) + 2(m3 - m4) + m5
//   G f:   f0/4, -(f0+f1+f2+f3+f4)/6, -(f0-f1+f2-f3+f4)/6, (f0+2f1+4f2+8f3+16f4)/24,
//          (f0-2f1+4f2-8f3+16f4)/24, f4
//   A g:   g0, g0 + g1, g0 - g1, g0 + 2g1, g0 - 2g1, g1  (a 2x2 block of dy, for dw)
//   G^T m: the transpose of G f, 6 values to 5 (dw's last step)
// for F(4x4, 3x3) (forward and dx), with B^T d as above
//   A^T m: m0 + (m1 + m2) + (m3 + m4), (m1 - m2) + 2(m3 - m4), (m1 + m2) + 4(m3 + m4),
//          (m1 - m2) + 8(m3 - m4) + m5
//   G f:   f0/4, -(f0+f1+f2)/6, -(f0-f1+f2)/6, (f0+2f1+4f2)/24, (f0-2f1+4f2)/24, f2
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

// B^T d of six values (T: a float, or 16 of them). Inlined into each of winograd5_input's ISA
// clones, as input_1d.
template <class T>
inline void input_b(const T* d, T* v) {
  const T a = d[4] - d[2], b = d[3] - d[1];
  v[0] = 4.f * d[0] - 5.f * d[2] + d[4];
  v[1] = (d[3] + d[4]) - 4.f * (d[1] + d[2]);
  v[2] = (d[4] - d[3]) + 4.f * (d[1] - d[2]);
  v[3] = a + 2.f * b;
  v[4] = a - 2.f * b;
  v[5] = 4.f * d[1] - 5.f * d[3] + d[5];
}

// The same over channels [c0, C): six input rows (d[r] + c) to six output rows (v[x] + c).
inline void input_1d(const float* const* d, float* const* v, int64_t c0, int64_t C) {
  const float* __restrict d0 = d[0], * __restrict d1 = d[1], * __restrict d2 = d[2];
  const float* __restrict d3 = d[3], * __restrict d4 = d[4], * __restrict d5 = d[5];
  float* __restrict v0 = v[0], * __restrict v1 = v[1], * __restrict v2 = v[2];
  float* __restrict v3 = v[3], * __restrict v4 = v[4], * __restrict v5 = v[5];
#pragma GCC ivdep
  for (int64_t c = c0; c < C; ++c) {
    const float a = d4[c] - d2[c], b = d3[c] - d1[c];
    v0[c] = 4.f * d0[c] - 5.f * d2[c] + d4[c];
    v1[c] = (d3[c] + d4[c]) - 4.f * (d1[c] + d2[c]);
    v2[c] = (d4[c] - d3[c]) + 4.f * (d1[c] - d2[c]);
    v3[c] = a + 2.f * b;
    v4[c] = a - 2.f * b;
    v5[c] = 4.f * d1[c] - 5.f * d3[c] + d5[c];
  }
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
void winograd5_input(const float* d, int64_t row, int64_t C, float* V, int64_t ldv, float* tmp) {
  using namespace vec16;
  // 16 channels at a time in registers, as winograd3_input.
  int64_t c0 = 0;
  for (; c0 + 16 <= C; c0 += 16) {
    F16 t[6][6];  // B^T d: over the rows, for each column s
    for (int s = 0; s < 6; ++s) {
      F16 col[6], v[6];
      for (int r = 0; r < 6; ++r) col[r] = load(d + r * row + s * C + c0);
      input_b(col, v);
      for (int x = 0; x < 6; ++x) t[x][s] = v[x];
    }
    for (int x = 0; x < 6; ++x) {
      F16 v[6];
      input_b(t[x], v);
      for (int y = 0; y < 6; ++y) store(V + (6 * x + y) * ldv + c0, v[y]);
    }
  }
  if (c0 == C) return;
  // The channels past the last 16. Columns s: tmp[(6x + s) * C + c] = (B^T d)[x][s].
  const float* src[6];
  float* dst[6];
  for (int s = 0; s < 6; ++s) {
    for (int r = 0; r < 6; ++r) src[r] = d + r * row + s * C, dst[r] = tmp + (6 * r + s) * C;
    input_1d(src, dst, c0, C);
  }
  // Rows x: V[6x + y] = (B^T d B)[x][y].
  for (int x = 0; x < 6; ++x) {
    for (int s = 0; s < 6; ++s) src[s] = tmp + (6 * x + s) * C, dst[s] = V + (6 * x + s) * ldv;
    input_1d(src, dst, c0, C);
  }
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

// A g A^T for the channels o0 + i, i < n (zeros for n <= i < MR), into a panel d of MR
// channels side by side; F is 6 (F(2x2, 5x5): A's columns (1,1,1,1,1,0), (0,1,-1,2,-2,1)) or
// 4 (F(2x2, 3x3): (1,1,1,0), (0,1,-1,1)).
template <int F>
inline void a_of(float g0, float g1, float* h) {
  if constexpr (F == 6) {
    h[0] = g0, h[1] = g0 + g1, h[2] = g0 - g1, h[3] = g0 + 2.f * g1, h[4] = g0 - 2.f * g1;
    h[5] = g1;
  } else {
    h[0] = g0, h[1] = g0 + g1, h[2] = g0 - g1, h[3] = g1;
  }
}

template <int F, int MR>
inline void dy_panel(const float* g, int64_t row, int64_t O, int64_t o0, int n, float* d,
                     int64_t ld_xi) {
#pragma GCC ivdep
  for (int i = 0; i < MR; ++i) {  // vectorised over the panel's channels (n == MR)
    const float* p = g + o0 + i;
    const bool in = i < n;
    float e0[F], e1[F];  // g A^T, rows 0 and 1
    a_of<F>(in ? p[0] : 0.f, in ? p[O] : 0.f, e0);
    a_of<F>(in ? p[row] : 0.f, in ? p[row + O] : 0.f, e1);
#pragma GCC unroll 6
    for (int c = 0; c < F; ++c) {
      float h[F];
      a_of<F>(e0[c], e1[c], h);
#pragma GCC unroll 6
      for (int r = 0; r < F; ++r) d[(F * r + c) * ld_xi + i] = h[r];
    }
  }
}

template <int F, int MR>
inline void dy_panels(const float* g, int64_t row, int64_t O, float* D, int64_t ld_xi,
                      int64_t ld_panel) {
  int64_t q = 0;
  for (; (q + 1) * MR <= O; ++q) dy_panel<F, MR>(g, row, O, q * MR, MR, D + q * ld_panel, ld_xi);
  if (q * MR < O)
    dy_panel<F, MR>(g, row, O, q * MR, static_cast<int>(O - q * MR), D + q * ld_panel, ld_xi);
}

template <int F>
inline void dy_any(const float* g, int64_t row, int64_t O, int mr, float* D, int64_t ld_xi,
                   int64_t ld_panel) {
  switch (mr) {  // the GEMM kernels' MR (geometry.h)
    case 4:
      return dy_panels<F, 4>(g, row, O, D, ld_xi, ld_panel);
    case 6:
      return dy_panels<F, 6>(g, row, O, D, ld_xi, ld_panel);
    case 8:
      return dy_panels<F, 8>(g, row, O, D, ld_xi, ld_panel);
    default:
      for (int64_t q = 0; q * mr < O; ++q) {
        const int n = static_cast<int>(std::min<int64_t>(mr, O - q * mr));
        for (int i = 0; i < mr; ++i)  // one channel at a time, as a panel of one
          dy_panel<F, 1>(g, row, O, q * mr + i, i < n ? 1 : 0, D + q * ld_panel + i, ld_xi);
      }
  }
}

FASTCNN_ELEMENTWISE
void winograd5_dy(const float* g, int64_t row, int64_t O, int mr, float* D, int64_t ld_xi,
                  int64_t ld_panel) {
  dy_any<6>(g, row, O, mr, D, ld_xi, ld_panel);
}

FASTCNN_ELEMENTWISE
void winograd3_dy(const float* g, int64_t row, int64_t O, int mr, float* D, int64_t ld_xi,
                  int64_t ld_panel) {
  dy_any<4>(g, row, O, mr, D, ld_xi, ld_panel);
}

FASTCNN_ELEMENTWISE
void winograd3_input(const float* d, int64_t row, int64_t C, float* V, int64_t ldv, float* tmp) {
  using namespace vec16;
  // 16 channels at a time in registers: the block's 16 vectors in, B^T d B, 16 vectors out. (The
  // loops below, over all channels a row or column at a time through tmp, made the weight
  // gradient 1.1x slower at 16 channels.)
  int64_t c0 = 0;
  for (; c0 + 16 <= C; c0 += 16) {
    F16 t[4][4];  // B^T d: over the rows, for each column s
    for (int s = 0; s < 4; ++s) {
      const float* p = d + s * C + c0;
      const F16 d0 = load(p), d1 = load(p + row), d2 = load(p + 2 * row), d3 = load(p + 3 * row);
      t[0][s] = d2 - d0, t[1][s] = d1 + d2, t[2][s] = d2 - d1, t[3][s] = d3 - d1;
    }
    for (int x = 0; x < 4; ++x) {
      float* v = V + 4 * x * ldv + c0;
      store(v, t[x][2] - t[x][0]);
      store(v + ldv, t[x][1] + t[x][2]);
      store(v + 2 * ldv, t[x][2] - t[x][1]);
      store(v + 3 * ldv, t[x][3] - t[x][1]);
    }
  }
  if (c0 == C) return;
  // The channels past the last 16: columns s, then rows x, as winograd5_input.
  for (int pass = 0; pass < 2; ++pass)
    for (int s = 0; s < 4; ++s) {
      const float* __restrict d0, * __restrict d1, * __restrict d2, * __restrict d3;
      float* __restrict v0, * __restrict v1, * __restrict v2, * __restrict v3;
      if (pass == 0) {
        d0 = d + s * C, d1 = d0 + row, d2 = d1 + row, d3 = d2 + row;
        v0 = tmp + s * C, v1 = v0 + 4 * C, v2 = v1 + 4 * C, v3 = v2 + 4 * C;
      } else {  // row s of tmp, its 4 columns, into V's points 4s..4s+3
        d0 = tmp + 4 * s * C, d1 = d0 + C, d2 = d1 + C, d3 = d2 + C;
        v0 = V + 4 * s * ldv, v1 = v0 + ldv, v2 = v1 + ldv, v3 = v2 + ldv;
      }
#pragma GCC ivdep
      for (int64_t c = c0; c < C; ++c) {
        v0[c] = d2[c] - d0[c];
        v1[c] = d1[c] + d2[c];
        v2[c] = d2[c] - d1[c];
        v3[c] = d3[c] - d1[c];
      }
    }
}

namespace {

// dw (R x R taps) = G^T m G of the F x F sums m[xi * ld], in double, gt(v, step, z, zstep) being
// G^T of F values v[i * step] into R values z[u * zstep]. False if one of m is Inf or NaN.
template <int F, int R, class Gt>
bool gt_m_g(const float* m, int64_t ld, float* dw, Gt gt) {
  double v[F * F], t[R * F], z[R * R];
  for (int xi = 0; xi < F * F; ++xi) {
    v[xi] = m[xi * ld];
    if (!std::isfinite(v[xi])) return false;
  }
  for (int s = 0; s < F; ++s) gt(v + s, F, t + s, F);  // over rows: t (R x F)
  for (int u = 0; u < R; ++u) gt(t + F * u, 1, z + R * u, 1);
  for (int i = 0; i < R * R; ++i) dw[i] = static_cast<float>(z[i]);
  return true;
}

}  // namespace

bool winograd3_dw(const float* m, int64_t ld, float* dw) {
  return gt_m_g<4, 3>(m, ld, dw, [](const double* v, int step, double* z, int zstep) {
    const double m0 = v[0], m1 = v[step], m2 = v[2 * step], m3 = v[3 * step];
    z[0] = -m0 + (m1 + m2) / 2;
    z[zstep] = (m1 - m2) / 2;
    z[2 * zstep] = (m1 + m2) / 2 + m3;
  });
}

bool winograd5_dw(const float* m, int64_t ld, float* dw) {
  // G^T of six values: the transpose of filter_1d's G.
  return gt_m_g<6, 5>(m, ld, dw, [](const double* v, int step, double* z, int zstep) {
    const double m0 = v[0], m1 = v[step], m2 = v[2 * step], m3 = v[3 * step], m4 = v[4 * step];
    const double m5 = v[5 * step];
    z[0] = m0 / 4 - (m1 + m2) / 6 + (m3 + m4) / 24;
    z[zstep] = (m2 - m1) / 6 + (m3 - m4) / 12;
    z[2 * zstep] = (m3 + m4 - m1 - m2) / 6;
    z[3 * zstep] = (m2 - m1) / 6 + (m3 - m4) / 3;
    z[4 * zstep] = (4 * (m3 + m4) - m1 - m2) / 6 + m5;
  });
}

}  // namespace fastcnn
