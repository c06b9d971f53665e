// batchnorm2d: per-channel normalisation of an NCHW batch, PyTorch's BatchNorm2d, with an
// optional ReLU fused on the way out (BN -> ReLU is how every ResNet uses it).
//
//   training forward   each channel's mean and biased variance over its N*H*W values (two
//                      passes, sums in double, image by image: a fixed order), then
//                      y = (x - mean) * invstd * weight + bias, invstd = 1 / sqrt(var + eps).
//                      mean, invstd and var are written out for backward and the running stats.
//   eval forward       y = x * scale + shift per channel (scale and shift folded by the caller
//                      from the running stats).
//   Either forward may add a residual (the same shape as x) before the ReLU: a ResNet block's
//   relu(bn2(conv2(h)) + shortcut), in the one pass.
//   backward           with g = dy (masked by y > 0 when the ReLU was fused), xhat the normalised
//                      input and M = N*H*W: dbias = sum g, dweight = sum g*xhat,
//                      dx = weight * invstd * (g - dbias/M - xhat * dweight/M); g itself is
//                      written out on request (masked_dy), for the block's shortcut.
// Channels are split over the threads; each channel's sums are taken by one thread, so results do
// not depend on the thread count.
#include <algorithm>
#include <cmath>
#include <cstring>

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

// y <= 0 ? 0 : d (d passes where y > 0 or y is NaN, as through every fastcnn ReLU), as bit
// operations: with a select on a conditionally read d GCC branched, mispredicting on half the
// elements (the backward ran 30x slower than without the mask).
inline float relu_pass(float y, float d) {
  uint32_t bits;
  std::memcpy(&bits, &d, sizeof bits);
  bits &= 0u - static_cast<uint32_t>(!(y <= 0.f));
  float out;
  std::memcpy(&out, &bits, sizeof out);
  return out;
}

// The sum of f(i) over [0, n) in a fixed order: 16 float lanes (vectorised) within blocks of
// 1024, the blocks added in double, so that float rounding never builds up over a large plane.
template <class F>
inline double sum_of(int64_t n, F f) {
  double total = 0.0;
  for (int64_t b0 = 0; b0 < n; b0 += 1024) {
    const int64_t b1 = std::min<int64_t>(n, b0 + 1024);
    float lanes[16] = {};
    int64_t i = b0;
    for (; i + 16 <= b1; i += 16)
      for (int l = 0; l < 16; ++l) lanes[l] += f(i + l);
    float s = 0.f;
    for (float v : lanes) s += v;
    for (; i < b1; ++i) s += f(i);
    total += s;
  }
  return total;
}

// sum_of(n, f) and sum_of(n, g), each in sum_of's order, block by block: the second reads
// what the first brought into the L1 cache. (One loop computing both lanes, GCC's AVX-512
// vectorisation shuffled every load, 3x slower.)
template <class F, class G>
inline void sums_of(int64_t n, F f, G g, double& total_f, double& total_g) {
  for (int64_t b0 = 0; b0 < n; b0 += 1024) {
    const int64_t len = std::min<int64_t>(n - b0, 1024);
    total_f += sum_of(len, [&](int64_t i) { return f(b0 + i); });
    total_g += sum_of(len, [&](int64_t i) { return g(b0 + i); });
  }
}
}  // namespace

// y = x * scale + shift (+ residual) over channel c's planes, then max(0, .) with relu.
FASTCNN_ELEMENTWISE static void affine_rows(int64_t N, int64_t C, int64_t P, int64_t c,
                                            const float* x, float scale, float shift,
                                            const float* residual, bool relu, float* y) {
  for (int64_t n = 0; n < N; ++n) {
    const int64_t at = (n * C + c) * P;
    const float* xc = x + at;
    float* yc = y + at;
    if (residual) {
      const float* rc = residual + at;
      for (int64_t p = 0; p < P; ++p) {
        const float v = xc[p] * scale + shift + rc[p];
        yc[p] = relu && v < 0.f ? 0.f : v;
      }
    } else {
      for (int64_t p = 0; p < P; ++p) {
        const float v = xc[p] * scale + shift;
        yc[p] = relu && v < 0.f ? 0.f : v;
      }
    }
  }
}

// ---- forward ----------------------------------------------------------------------------------

// Channel c of batchnorm2d_forward_train.
FASTCNN_ELEMENTWISE static void forward_train_channel(int64_t N, int64_t C, int64_t P, int64_t c,
                                                      const float* x, const float* w,
                                                      const float* b, const float* residual,
                                                      float eps, bool relu, float* y, float* mean,
                                                      float* invstd, float* var) {
  const double M = static_cast<double>(N * P);
  {
    double s = 0.0;
    for (int64_t n = 0; n < N; ++n) {
      const float* xc = x + (n * C + c) * P;
      s += sum_of(P, [xc](int64_t p) { return xc[p]; });
    }
    const double mu = M > 0 ? s / M : 0.0;
    const float muf = static_cast<float>(mu);
    double ss = 0.0;  // around the float mean: the same up to rounding, and vectorised
    for (int64_t n = 0; n < N; ++n) {
      const float* xc = x + (n * C + c) * P;
      ss += sum_of(P, [xc, muf](int64_t p) { return (xc[p] - muf) * (xc[p] - muf); });
    }
    // sum (x - mu)^2 = sum (x - muf)^2 - M (mu - muf)^2
    ss -= M * (mu - muf) * (mu - muf);
    const double v = M > 0 ? std::max(ss / M, 0.0) : 0.0;
    const double is = 1.0 / std::sqrt(v + eps);
    mean[c] = static_cast<float>(mu);
    invstd[c] = static_cast<float>(is);
    var[c] = static_cast<float>(v);
    // y = x * scale + shift, in float: scale = invstd * weight, shift = bias - mean * scale.
    const float scale = static_cast<float>(is * (w ? w[c] : 1.f));
    const float shift = static_cast<float>((b ? b[c] : 0.f) - mu * (is * (w ? w[c] : 1.f)));
    affine_rows(N, C, P, c, x, scale, shift, residual, relu, y);
  }
}

void batchnorm2d_forward_train(int64_t N, int64_t C, int64_t P, const float* x, const float* w,
                               const float* b, const float* residual, float eps, bool relu,
                               float* y, float* mean, float* invstd, float* var) {
  for_each_channel(C, N * C * P, [&](int64_t c) {
    forward_train_channel(N, C, P, c, x, w, b, residual, eps, relu, y, mean, invstd, var);
  });
}

void batchnorm2d_forward_eval(int64_t N, int64_t C, int64_t P, const float* x, const float* scale,
                              const float* shift, const float* residual, bool relu, float* y) {
  for_each_channel(C, N * C * P, [&](int64_t c) {
    affine_rows(N, C, P, c, x, scale[c], shift[c], residual, relu, y);
  });
}

// ---- backward ---------------------------------------------------------------------------------

// Channel c of batchnorm2d_backward.
FASTCNN_ELEMENTWISE static void backward_channel(int64_t N, int64_t C, int64_t P, int64_t c,
                                                 const float* x, const float* dy, const float* y,
                                                 const float* mean, const float* invstd,
                                                 const float* w, float* dx, float* dw, float* db,
                                                 float* masked_dy) {
  const double M = static_cast<double>(N * P);
  {
    const float mu = mean[c], is = invstd[c];
    // With masked_dy, g is written there once and read back instead of dy and the mask.
    const float *g_src = dy, *mask = y;
    if (masked_dy && y) {
      for (int64_t n = 0; n < N; ++n) {
        const int64_t at = (n * C + c) * P;
        float* __restrict g = masked_dy + at;
        const float* __restrict yc = y + at;
        const float* __restrict dc = dy + at;
        for (int64_t p = 0; p < P; ++p) g[p] = relu_pass(yc[p], dc[p]);
      }
      g_src = masked_dy, mask = nullptr;
    }
    double sg = 0.0, sgx = 0.0;
    for (int64_t n = 0; n < N; ++n) {
      const int64_t at = (n * C + c) * P;
      const float *xc = x + at, *dc = g_src + at, *yc = mask ? mask + at : nullptr;
      if (yc)  // the fused ReLU's mask
        sums_of(
            P, [=](int64_t p) { return relu_pass(yc[p], dc[p]); },
            [=](int64_t p) { return relu_pass(yc[p], dc[p]) * (xc[p] - mu); }, sg, sgx);
      else
        sums_of(
            P, [=](int64_t p) { return dc[p]; }, [=](int64_t p) { return dc[p] * (xc[p] - mu); },
            sg, sgx);
    }
    sgx *= is;  // sum g * xhat
    if (db) db[c] = static_cast<float>(sg);
    if (dw) dw[c] = static_cast<float>(sgx);
    if (!dx || M == 0) return;
    const float k = (w ? w[c] : 1.f) * is;
    const float mean_g = static_cast<float>(sg / M), mean_gx = static_cast<float>(sgx / M);
    for (int64_t n = 0; n < N; ++n) {
      const int64_t at = (n * C + c) * P;
      const float *xc = x + at, *dc = g_src + at, *yc = mask ? mask + at : nullptr;
      float* out = dx + at;
      if (yc)
        for (int64_t p = 0; p < P; ++p)
          out[p] = k * (relu_pass(yc[p], dc[p]) - mean_g - (xc[p] - mu) * is * mean_gx);
      else
        for (int64_t p = 0; p < P; ++p) out[p] = k * (dc[p] - mean_g - (xc[p] - mu) * is * mean_gx);
    }
  }
}

void batchnorm2d_backward(int64_t N, int64_t C, int64_t P, const float* x, const float* dy,
                          const float* y, const float* mean, const float* invstd, const float* w,
                          float* dx, float* dw, float* db, float* masked_dy) {
  for_each_channel(C, N * C * P, [&](int64_t c) {
    backward_channel(N, C, P, c, x, dy, y, mean, invstd, w, dx, dw, db, masked_dy);
  });
}

}  // namespace fastcnn
