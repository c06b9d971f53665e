// conv2d: cross-correlation of an NCHW batch with (O, C, kh, kw) filters, PyTorch's Conv2d.
//
// Algorithm: im2col + SGEMM, one image at a time.
//   forward     y[n] (O x P)     = w (O x CKK) . col[n] (CKK x P)    + bias, ReLU in the epilogue
//   backward dw dw   (O x CKK)   = sum_n dy[n] (O x P) . col[n]^T (P x CKK)
//   backward dx dcol (CKK x P)   = w^T (CKK x O) . dy[n] (O x P), then col2im scatters into dx[n]
// with CKK = C*kh*kw and P = OH*OW. A 1x1 kernel with unit stride and no padding skips im2col:
// x[n] already is its column matrix. Whole images go to different threads when the batch has
// enough of them; otherwise each GEMM is split over the threads, so batch 1 uses every core.
// dw sums images in order n = 0, 1, ... whatever the thread count.
#include <algorithm>
#include <cstring>
#include <vector>

#include "cpu/gemm/gemm.h"
#include "cpu/ops.h"

#ifdef FASTCNN_OPENMP
#include <omp.h>
#endif

namespace fastcnn {

namespace {

bool is_pointwise(const Window2d& g) {
  return g.kh == 1 && g.kw == 1 && g.sh == 1 && g.sw == 1 && g.ph == 0 && g.pw == 0;
}

// x: (C, H, W) of one image -> col: (C*kh*kw, OH*OW); taps outside the input read as zero.
void im2col(const Window2d& g, const float* x, float* col) {
  const int64_t P = g.pixels();
  for (int64_t c = 0; c < g.C; ++c) {
    const float* xc = x + c * g.H * g.W;
    for (int64_t ki = 0; ki < g.kh; ++ki) {
      for (int64_t kj = 0; kj < g.kw; ++kj) {
        float* row = col + ((c * g.kh + ki) * g.kw + kj) * P;
        for (int64_t oh = 0; oh < g.OH; ++oh) {
          float* dst = row + oh * g.OW;
          const int64_t ih = oh * g.sh - g.ph + ki;
          if (ih < 0 || ih >= g.H) {
            std::fill(dst, dst + g.OW, 0.f);
            continue;
          }
          const float* src = xc + ih * g.W;
          for (int64_t ow = 0; ow < g.OW; ++ow) {
            const int64_t iw = ow * g.sw - g.pw + kj;
            dst[ow] = (iw >= 0 && iw < g.W) ? src[iw] : 0.f;
          }
        }
      }
    }
  }
}

// The adjoint of im2col: dx (C, H, W) = sum of every tap's column entry at its input position.
void col2im(const Window2d& g, const float* col, float* dx) {
  const int64_t P = g.pixels();
  std::fill(dx, dx + g.C * g.H * g.W, 0.f);
  for (int64_t c = 0; c < g.C; ++c) {
    float* dxc = dx + c * g.H * g.W;
    for (int64_t ki = 0; ki < g.kh; ++ki) {
      for (int64_t kj = 0; kj < g.kw; ++kj) {
        const float* row = col + ((c * g.kh + ki) * g.kw + kj) * P;
        for (int64_t oh = 0; oh < g.OH; ++oh) {
          const int64_t ih = oh * g.sh - g.ph + ki;
          if (ih < 0 || ih >= g.H) continue;
          const float* src = row + oh * g.OW;
          float* dst = dxc + ih * g.W;
          for (int64_t ow = 0; ow < g.OW; ++ow) {
            const int64_t iw = ow * g.sw - g.pw + kj;
            if (iw >= 0 && iw < g.W) dst[iw] += src[ow];
          }
        }
      }
    }
  }
}

// Scratch for column matrices, owned by the calling thread and grown once: a training step
// reuses it and allocates nothing.
float* scratch(size_t n) {
  thread_local std::vector<float> buf;
  if (buf.size() < n) buf.resize(n);
  return buf.data();
}

// Runs fn(n, inner_threads) for every image: images spread over the threads when there are at
// least as many images as threads, else one image at a time with all threads inside the GEMM.
template <class Fn>
void for_each_image(int64_t N, Fn fn) {
  const int T = num_threads();
#ifdef FASTCNN_OPENMP
  if (T > 1 && N >= T) {
#pragma omp parallel for schedule(static) num_threads(T)
    for (int64_t n = 0; n < N; ++n) {
      DenormalGuard denormals;
      fn(n, 1);
    }
    return;
  }
#endif
  DenormalGuard denormals;
  for (int64_t n = 0; n < N; ++n) fn(n, T);
}

}  // namespace

// ---- forward ----------------------------------------------------------------------------------

void conv2d_forward(const Window2d& g, const float* x, const float* w, const float* b, float* y,
                    bool relu) {
  const int64_t CKK = g.patch(), P = g.pixels(), in_size = g.C * g.H * g.W;
  GemmEpilogue ep;
  ep.bias_row = b;
  ep.relu = relu;
  for_each_image(g.N, [&](int64_t n, int threads) {
    const float* xn = x + n * in_size;
    const float* col = xn;
    if (!is_pointwise(g)) {
      float* buf = scratch(CKK * P);
      im2col(g, xn, buf);
      col = buf;
    }
    sgemm(false, false, g.O, P, CKK, w, CKK, col, P, y + n * g.O * P, P, ep, threads);
  });
}

// ---- backward ---------------------------------------------------------------------------------

void conv2d_backward(const Window2d& g, const float* x, const float* w, const float* dy, float* dx,
                     float* dw, float* db) {
  const int64_t CKK = g.patch(), P = g.pixels(), in_size = g.C * g.H * g.W;
  const int T = num_threads();
  DenormalGuard denormals;

  // db[o] = sum over images and pixels of dy, in a fixed order.
  if (db) {
#ifdef FASTCNN_OPENMP
#pragma omp parallel for schedule(static) num_threads(T) if (T > 1 && g.O * g.N * P > 32768)
#endif
    for (int64_t o = 0; o < g.O; ++o) {
      double acc = 0.0;
      for (int64_t n = 0; n < g.N; ++n) {
        const float* d = dy + (n * g.O + o) * P;
        float s = 0.f;
        for (int64_t p = 0; p < P; ++p) s += d[p];
        acc += s;
      }
      db[o] = static_cast<float>(acc);
    }
  }

  // dw: images in order, each GEMM split over the threads.
  const bool pointwise = is_pointwise(g);
  float* col = pointwise ? nullptr : scratch(CKK * P);
  GemmEpilogue ep;
  for (int64_t n = 0; n < g.N; ++n) {
    const float* xn = x + n * in_size;
    const float* cn = xn;
    if (!pointwise) {
      im2col(g, xn, col);
      cn = col;
    }
    ep.accumulate = n > 0;
    sgemm(false, true, g.O, CKK, P, dy + n * g.O * P, P, cn, P, dw, CKK, ep, T);
  }
  if (g.N == 0) std::fill(dw, dw + g.O * CKK, 0.f);

  // dx: dcol = w^T . dy[n], scattered back by col2im.
  if (dx) {
    for_each_image(g.N, [&](int64_t n, int threads) {
      float* dxn = dx + n * in_size;
      if (pointwise) {
        sgemm(true, false, CKK, P, g.O, w, CKK, dy + n * g.O * P, P, dxn, P, GemmEpilogue{},
              threads);
        return;
      }
      float* dcol = scratch(CKK * P);
      sgemm(true, false, CKK, P, g.O, w, CKK, dy + n * g.O * P, P, dcol, P, GemmEpilogue{},
            threads);
      col2im(g, dcol, dxn);
    });
  }
}

}  // namespace fastcnn
