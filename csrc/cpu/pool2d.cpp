// pool2d: max and average pooling over each (H, W) plane of an NCHW batch; floor mode, no
// padding (PyTorch's MaxPool2d / AvgPool2d defaults). Planes are independent, so they are
// spread over the threads; each plane is done in one fixed order.
//
// Max-pooling records, per output, the flat index h*W + w of its maximum inside the input plane
// (PyTorch's return_indices); ties go to the first maximum in row-major window order. Backward
// routes dy to those positions; overlapping windows (stride < kernel) add up.
#include <algorithm>
#include <limits>

#include "cpu/gemm/gemm.h"
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

namespace {
// Is v a better maximum than best? NaN wins over any number (PyTorch propagates NaN).
inline bool beats(float v, float best) {
  return v > best || (v != v && best == best);
}

// One plane, any window.
void maxpool_plane(const Window2d& g, const float* xp, float* yp, int32_t* ip) {
  for (int64_t oh = 0; oh < g.OH; ++oh) {
    for (int64_t ow = 0; ow < g.OW; ++ow) {
      const int64_t h0 = oh * g.sh, w0 = ow * g.sw;
      float best = -std::numeric_limits<float>::infinity();
      int64_t best_i = h0 * g.W + w0;
      for (int64_t i = 0; i < g.kh; ++i) {
        for (int64_t j = 0; j < g.kw; ++j) {
          const int64_t at = (h0 + i) * g.W + w0 + j;
          if (beats(xp[at], best)) best = xp[at], best_i = at;
        }
      }
      yp[oh * g.OW + ow] = best;
      ip[oh * g.OW + ow] = static_cast<int32_t>(best_i);
    }
  }
}

// One plane, 2x2 windows with stride 2 (SeedNet's): the window unrolled and branch-free (a
// branch per comparison mispredicts half the time on real activations).
void maxpool_plane_2x2(const Window2d& g, const float* xp, float* yp, int32_t* ip) {
  const int32_t W = static_cast<int32_t>(g.W);
  for (int64_t oh = 0; oh < g.OH; ++oh) {
    const float* r0 = xp + 2 * oh * g.W;
    const float* r1 = r0 + g.W;
    const int32_t base = static_cast<int32_t>(2 * oh * g.W);
    float* y = yp + oh * g.OW;
    int32_t* id = ip + oh * g.OW;
    for (int64_t ow = 0; ow < g.OW; ++ow) {
      const float a = r0[2 * ow], b = r0[2 * ow + 1], c = r1[2 * ow], d = r1[2 * ow + 1];
      const int32_t w = static_cast<int32_t>(2 * ow);
      float best = a;
      int32_t at = base + w;
      bool t = beats(b, best);
      best = t ? b : best, at = t ? base + w + 1 : at;
      t = beats(c, best);
      best = t ? c : best, at = t ? base + W + w : at;
      t = beats(d, best);
      best = t ? d : best, at = t ? base + W + w + 1 : at;
      y[ow] = best;
      id[ow] = at;
    }
  }
}
}  // namespace

void maxpool2d_forward(const Window2d& g, const float* x, float* y, int32_t* indices, bool relu) {
  const int64_t in_plane = g.H * g.W, out_plane = g.OH * g.OW;
  const bool two_by_two = g.kh == 2 && g.kw == 2 && g.sh == 2 && g.sw == 2;
  const MaxPool2x2 fast = two_by_two ? gemm_active_kernel().maxpool2x2 : nullptr;
  for_each_plane(g, [&](int64_t p) {
    float* yp = y + p * out_plane;
    if (fast)
      fast(x + p * in_plane, g.W, g.OH, g.OW, yp, indices + p * out_plane);
    else if (two_by_two)
      maxpool_plane_2x2(g, x + p * in_plane, yp, indices + p * out_plane);
    else
      maxpool_plane(g, x + p * in_plane, yp, indices + p * out_plane);
    if (relu)
      for (int64_t o = 0; o < out_plane; ++o) yp[o] = yp[o] < 0.f ? 0.f : yp[o];
  });
}

void maxpool2d_backward(const Window2d& g, const float* dy, const int32_t* indices, const float* y,
                        float* dx) {
  const int64_t in_plane = g.H * g.W, out_plane = g.OH * g.OW;
  // Output planes of half the size may come from 2x2 windows with stride 2: the write-once
  // kernel checks every index lies in its own window and falls back to scattering if not.
  const MaxPool2x2Backward fast = (g.OH == g.H / 2 && g.OW == g.W / 2 && g.OH > 0 && g.OW > 0)
                                      ? gemm_active_kernel().maxpool2x2_backward
                                      : nullptr;
  for_each_plane(g, [&](int64_t p) {
    float* dxp = dx + p * in_plane;
    const float* dyp = dy + p * out_plane;
    const int32_t* ip = indices + p * out_plane;
    const float* yp = y ? y + p * out_plane : nullptr;
    if (fast && fast(dyp, ip, yp, g.H, g.W, g.OH, g.OW, dxp)) return;
    std::fill(dxp, dxp + in_plane, 0.f);
    if (yp) {
      for (int64_t o = 0; o < out_plane; ++o) {
        const float d = dyp[o];  // branch-free: a masked-off gradient adds an exact zero
        dxp[ip[o]] += yp[o] <= 0.f ? 0.f : d;
      }
    } else {
      for (int64_t o = 0; o < out_plane; ++o) dxp[ip[o]] += dyp[o];
    }
  });
}

int64_t first_index_outside(const int32_t* indices, int64_t n, int64_t plane) {
  // One branch-free pass that vectorises, split over the threads (a negative index is a huge
  // unsigned one), then the search for the first bad index only when there is one.
  const auto limit = static_cast<uint32_t>(std::min<int64_t>(plane, INT32_MAX + int64_t{1}));
  const int T = num_threads();
  uint32_t bad = 0;
#ifdef FASTCNN_OPENMP
#pragma omp parallel for schedule(static) num_threads(T) reduction(| : bad) if (T > 1 && n > 65536)
#endif
  for (int64_t i = 0; i < n; ++i) bad |= static_cast<uint32_t>(indices[i]) >= limit;
  (void)T;
  for (int64_t i = 0; bad && i < n; ++i)
    if (indices[i] < 0 || indices[i] >= plane) return i;
  return -1;
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
