// batchnorm2d: per-channel normalisation of an NCHW batch, PyTorch's BatchNorm2d, with an
// optional ReLU fused on the way out (BN -> ReLU is how every ResNet uses it).
//
//   training forward   each channel's mean and biased variance over its N*H*W values (two
//                      passes, sums in double, image by image: a fixed order), then
//                      y = (x - mean) * invstd * weight + bias, invstd = 1 / sqrt(var + eps).
//                      mean, invstd and var are written out for backward and the running stats.
//   eval forward       y = x * scale + shift per channel (scale and shift folded by the caller
//                      from the running stats).
//   backward           with g = dy (masked by y > 0 when the ReLU was fused), xhat the normalised
//                      input and M = N*H*W: dbias = sum g, dweight = sum g*xhat,
//                      dx = weight * invstd * (g - dbias/M - xhat * dweight/M).
// Channels are split over the threads; each channel's sums are taken by one thread, so results do
// not depend on the thread count.
#include <cmath>

#include "cpu/ops.h"

namespace fastcnn {

namespace {
// Runs fn(c) for every channel, split over the threads when the batch is large enough.
template <class Fn>
void for_each_channel(int64_t C, int64_t values, Fn fn) {
  const int T = num_threads();
#ifdef FASTCNN_OPENMP
#pragma omp parallel for schedule(dynamic, 1) num_threads(T) if (T > 1 && values > 32768)
#endif
  for (int64_t c = 0; c < C; ++c) {
    DenormalGuard denormals;
    fn(c);
  }
  (void)T;
  (void)values;
}
}  // namespace

// ---- forward ----------------------------------------------------------------------------------

void batchnorm2d_forward_train(int64_t N, int64_t C, int64_t P, const float* x, const float* w,
                               const float* b, float eps, bool relu, float* y, float* mean,
                               float* invstd, float* var) {
  const double M = static_cast<double>(N * P);
  for_each_channel(C, N * C * P, [&](int64_t c) {
    double s = 0.0;
    for (int64_t n = 0; n < N; ++n) {
      const float* xc = x + (n * C + c) * P;
      double part = 0.0;
      for (int64_t p = 0; p < P; ++p) part += xc[p];
      s += part;
    }
    const double mu = M > 0 ? s / M : 0.0;
    double ss = 0.0;
    for (int64_t n = 0; n < N; ++n) {
      const float* xc = x + (n * C + c) * P;
      double part = 0.0;
      for (int64_t p = 0; p < P; ++p) {
        const double d = xc[p] - mu;
        part += d * d;
      }
      ss += part;
    }
    const double v = M > 0 ? ss / M : 0.0;
    const double is = 1.0 / std::sqrt(v + eps);
    mean[c] = static_cast<float>(mu);
    invstd[c] = static_cast<float>(is);
    var[c] = static_cast<float>(v);
    // y = x * scale + shift, in float: scale = invstd * weight, shift = bias - mean * scale.
    const float scale = static_cast<float>(is * (w ? w[c] : 1.f));
    const float shift = static_cast<float>((b ? b[c] : 0.f) - mu * (is * (w ? w[c] : 1.f)));
    for (int64_t n = 0; n < N; ++n) {
      const float* xc = x + (n * C + c) * P;
      float* yc = y + (n * C + c) * P;
      for (int64_t p = 0; p < P; ++p) {
        const float v2 = xc[p] * scale + shift;
        yc[p] = relu && v2 < 0.f ? 0.f : v2;
      }
    }
  });
}

void batchnorm2d_forward_eval(int64_t N, int64_t C, int64_t P, const float* x, const float* scale,
                              const float* shift, bool relu, float* y) {
  for_each_channel(C, N * C * P, [&](int64_t c) {
    const float a = scale[c], s = shift[c];
    for (int64_t n = 0; n < N; ++n) {
      const float* xc = x + (n * C + c) * P;
      float* yc = y + (n * C + c) * P;
      for (int64_t p = 0; p < P; ++p) {
        const float v = xc[p] * a + s;
        yc[p] = relu && v < 0.f ? 0.f : v;
      }
    }
  });
}

// ---- backward ---------------------------------------------------------------------------------

void batchnorm2d_backward(int64_t N, int64_t C, int64_t P, const float* x, const float* dy,
                          const float* y, const float* mean, const float* invstd, const float* w,
                          float* dx, float* dw, float* db) {
  const double M = static_cast<double>(N * P);
  for_each_channel(C, N * C * P, [&](int64_t c) {
    const float mu = mean[c], is = invstd[c];
    double sg = 0.0, sgx = 0.0;
    for (int64_t n = 0; n < N; ++n) {
      const int64_t at = (n * C + c) * P;
      double a = 0.0, bsum = 0.0;
      for (int64_t p = 0; p < P; ++p) {
        const float g = y && y[at + p] <= 0.f ? 0.f : dy[at + p];  // the fused ReLU's mask
        a += g;
        bsum += static_cast<double>(g) * ((x[at + p] - mu) * is);
      }
      sg += a;
      sgx += bsum;
    }
    if (db) db[c] = static_cast<float>(sg);
    if (dw) dw[c] = static_cast<float>(sgx);
    if (!dx || M == 0) return;
    const float k = (w ? w[c] : 1.f) * is;
    const float mean_g = static_cast<float>(sg / M), mean_gx = static_cast<float>(sgx / M);
    for (int64_t n = 0; n < N; ++n) {
      const int64_t at = (n * C + c) * P;
      for (int64_t p = 0; p < P; ++p) {
        const float g = y && y[at + p] <= 0.f ? 0.f : dy[at + p];
        const float xhat = (x[at + p] - mu) * is;
        dx[at + p] = k * (g - mean_g - xhat * mean_gx);
      }
    }
  });
}

}  // namespace fastcnn
