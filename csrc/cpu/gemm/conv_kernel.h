// The convolution micro-kernel in portable C++ (see ConvKernel in gemm.h), a template over the
// tile size so each ISA file instantiates it with its own compiler flags and the compiler
// vectorises the channel loop. kernel_avx512.cpp has a hand-written twin.
#pragma once

#include <algorithm>
#include <cstdint>

#include "cpu/gemm/gemm.h"

namespace fastcnn {

template <int MR, int NR>
void conv_kernel_portable(int64_t T, int64_t C, const float* const* pix, const int64_t* toff,
                          const float* Wp, const float* bias, bool relu, float* y, int64_t ldy,
                          int64_t ldp, int m, int n) {
  float acc[MR][NR] = {};
  const float* w = Wp;
  for (int64_t t = 0; t < T; ++t) {
    const int64_t off = toff[t];
    for (int64_t c = 0; c < C; ++c, w += NR) {
      for (int i = 0; i < MR; ++i) {
        const float a = pix[i][off + c];
        for (int j = 0; j < NR; ++j) acc[i][j] += a * w[j];
      }
    }
  }
  for (int j = 0; j < n; ++j) {
    const float b = bias ? bias[j] : 0.f;
    for (int i = 0; i < m; ++i) {
      const float v = acc[i][j] + b;
      y[j * ldy + i * ldp] = relu && v < 0.f ? 0.f : v;
    }
  }
}

// Direct forward: OB output channels x VW output pixels of one row per step, the pixel loop
// vectorised (VW = one vector register); every tap loads VW inputs once for OB channels.
template <int OB, int VW>
void direct_fwd(const Direct2d& d, const float* xp, const float* w, const float* b, bool relu,
                float* y, int64_t o0, int64_t o1) {
  const int64_t T = d.kh * d.kw, plane = d.OH * d.OW;
  for (int64_t o = o0; o < o1; o += OB) {
    const int ob = static_cast<int>(std::min<int64_t>(OB, o1 - o));
    for (int64_t oh = 0; oh < d.OH; ++oh) {
      for (int64_t ow0 = 0; ow0 < d.OW; ow0 += VW) {
        const int vw = static_cast<int>(std::min<int64_t>(VW, d.OW - ow0));
        float acc[OB][VW];
        for (int q = 0; q < OB; ++q)
          for (int v = 0; v < VW; ++v) acc[q][v] = (b && q < ob) ? b[o + q] : 0.f;
        for (int64_t c = 0; c < d.C; ++c) {
          for (int64_t ki = 0; ki < d.kh; ++ki) {
            const float* xr = xp + (c * d.Hp + oh * d.sh + ki) * d.Wp + ow0 * d.sw;
            for (int64_t kj = 0; kj < d.kw; ++kj) {
              float wv[OB];
              for (int q = 0; q < OB; ++q)
                wv[q] = q < ob ? w[((o + q) * d.C + c) * T + ki * d.kw + kj] : 0.f;
              float a[VW];
              if (d.sw == 1)
                for (int v = 0; v < VW; ++v) a[v] = xr[v + kj];
              else
                for (int v = 0; v < VW; ++v) a[v] = xr[v * d.sw + kj];
              for (int q = 0; q < OB; ++q)
                for (int v = 0; v < VW; ++v) acc[q][v] += wv[q] * a[v];
            }
          }
        }
        for (int q = 0; q < ob; ++q) {
          float* yq = y + (o + q) * plane + oh * d.OW + ow0;
          for (int v = 0; v < vw; ++v) yq[v] = relu && acc[q][v] < 0.f ? 0.f : acc[q][v];
        }
      }
    }
  }
}

// Direct weight gradient: for each (o, c, ki), kw x VW accumulators run over every image and
// output row, then each is summed across its lanes. Images and rows in order: deterministic.
template <int VW>
void direct_dw(const Direct2d& d, int64_t N, const float* xp, int64_t image, const float* dy,
               float* dw, int64_t o0, int64_t o1) {
  const int64_t plane = d.OH * d.OW;
  for (int64_t o = o0; o < o1; ++o) {
    for (int64_t c = 0; c < d.C; ++c) {
      for (int64_t ki = 0; ki < d.kh; ++ki) {
        float acc[kDirectMaxKw][VW] = {};
        for (int64_t n = 0; n < N; ++n) {
          const float* dyo = dy + (n * d.O + o) * plane;
          for (int64_t oh = 0; oh < d.OH; ++oh) {
            const float* xr = xp + n * image + (c * d.Hp + oh * d.sh + ki) * d.Wp;
            for (int64_t ow0 = 0; ow0 < d.OW; ow0 += VW) {
              const int vw = static_cast<int>(std::min<int64_t>(VW, d.OW - ow0));
              float g[VW];
              for (int v = 0; v < VW; ++v) g[v] = v < vw ? dyo[oh * d.OW + ow0 + v] : 0.f;
              const float* xs = xr + ow0 * d.sw;
              // Lanes past the row read the next row's inputs: select, never multiply, them
              // away (0 * Inf would be NaN).
              for (int64_t kj = 0; kj < d.kw; ++kj) {
                if (d.sw == 1)
                  for (int v = 0; v < VW; ++v) {
                    const float prod = g[v] * xs[v + kj];
                    acc[kj][v] += v < vw ? prod : 0.f;
                  }
                else
                  for (int v = 0; v < VW; ++v) {
                    const float prod = g[v] * xs[v * d.sw + kj];
                    acc[kj][v] += v < vw ? prod : 0.f;
                  }
              }
            }
          }
        }
        for (int64_t kj = 0; kj < d.kw; ++kj) {
          float s = 0.f;
          for (int v = 0; v < VW; ++v) s += acc[kj][v];
          dw[((o * d.C + c) * d.kh + ki) * d.kw + kj] = s;
        }
      }
    }
  }
}

}  // namespace fastcnn
