// pool2d: max and average pooling over each (H, W) plane of an NCHW batch; floor mode, no
// padding (PyTorch's MaxPool2d / AvgPool2d defaults). Planes are independent, so they are
// spread over the threads; each plane is done in one fixed order.
//
// Max-pooling records, per output, the flat index h*W + w of its maximum inside the input plane
// (PyTorch's return_indices); ties go to the first maximum in row-major window order. Backward
// routes dy to those positions; overlapping windows (stride < kernel) add up.
#include <algorithm>
#include <limits>

#include "cpu/ops.h"

namespace fastcnn {

namespace {
template <class Fn>
void for_each_plane(const Window2d& g, Fn fn) {
  const int64_t planes = g.N * g.C;
  const int T = num_threads();
#ifdef FASTCNN_OPENMP
#pragma omp parallel for schedule(static) num_threads(T) if (T > 1 && planes * g.H * g.W > 16384)
#endif
  for (int64_t p = 0; p < planes; ++p) fn(p);
  (void)T;
}
}  // namespace

// ---- max: forward, backward -------------------------------------------------------------------

void maxpool2d_forward(const Window2d& g, const float* x, float* y, int32_t* indices) {
  const int64_t in_plane = g.H * g.W, out_plane = g.OH * g.OW;
  for_each_plane(g, [&](int64_t p) {
    const float* xp = x + p * in_plane;
    float* yp = y + p * out_plane;
    int32_t* ip = indices + p * out_plane;
    for (int64_t oh = 0; oh < g.OH; ++oh) {
      for (int64_t ow = 0; ow < g.OW; ++ow) {
        const int64_t h0 = oh * g.sh, w0 = ow * g.sw;
        float best = -std::numeric_limits<float>::infinity();
        int64_t best_i = h0 * g.W + w0;
        for (int64_t i = 0; i < g.kh; ++i) {
          for (int64_t j = 0; j < g.kw; ++j) {
            const int64_t at = (h0 + i) * g.W + w0 + j;
            const float v = xp[at];
            // NaN propagates: a NaN wins over any number, like PyTorch.
            if (v > best || (v != v && best == best)) {
              best = v;
              best_i = at;
            }
          }
        }
        yp[oh * g.OW + ow] = best;
        ip[oh * g.OW + ow] = static_cast<int32_t>(best_i);
      }
    }
  });
}

void maxpool2d_backward(const Window2d& g, const float* dy, const int32_t* indices, float* dx) {
  const int64_t in_plane = g.H * g.W, out_plane = g.OH * g.OW;
  for_each_plane(g, [&](int64_t p) {
    float* dxp = dx + p * in_plane;
    const float* dyp = dy + p * out_plane;
    const int32_t* ip = indices + p * out_plane;
    std::fill(dxp, dxp + in_plane, 0.f);
    for (int64_t o = 0; o < out_plane; ++o) dxp[ip[o]] += dyp[o];
  });
}

// ---- average: forward, backward ---------------------------------------------------------------

void avgpool2d_forward(const Window2d& g, const float* x, float* y) {
  const int64_t in_plane = g.H * g.W, out_plane = g.OH * g.OW;
  const float scale = 1.f / static_cast<float>(g.kh * g.kw);
  for_each_plane(g, [&](int64_t p) {
    const float* xp = x + p * in_plane;
    float* yp = y + p * out_plane;
    for (int64_t oh = 0; oh < g.OH; ++oh) {
      for (int64_t ow = 0; ow < g.OW; ++ow) {
        float s = 0.f;
        for (int64_t i = 0; i < g.kh; ++i) {
          const float* row = xp + (oh * g.sh + i) * g.W + ow * g.sw;
          for (int64_t j = 0; j < g.kw; ++j) s += row[j];
        }
        yp[oh * g.OW + ow] = s * scale;
      }
    }
  });
}

void avgpool2d_backward(const Window2d& g, const float* dy, float* dx) {
  const int64_t in_plane = g.H * g.W, out_plane = g.OH * g.OW;
  const float scale = 1.f / static_cast<float>(g.kh * g.kw);
  for_each_plane(g, [&](int64_t p) {
    float* dxp = dx + p * in_plane;
    const float* dyp = dy + p * out_plane;
    std::fill(dxp, dxp + in_plane, 0.f);
    for (int64_t oh = 0; oh < g.OH; ++oh) {
      for (int64_t ow = 0; ow < g.OW; ++ow) {
        const float d = dyp[oh * g.OW + ow] * scale;
        for (int64_t i = 0; i < g.kh; ++i) {
          float* row = dxp + (oh * g.sh + i) * g.W + ow * g.sw;
          for (int64_t j = 0; j < g.kw; ++j) row[j] += d;
        }
      }
    }
  });
}

}  // namespace fastcnn
