// batchnorm2d: per-channel normalisation of an NCHW batch, PyTorch's BatchNorm2d, with an
// optional ReLU fused on the way out (BN -> ReLU is how every ResNet uses it).
//
//   training forward   each channel's mean and biased variance over its N*H*W values (one
//                      pass around the channel's first value, two where it lies far from the
//                      mean; 16 float lanes, emptied into a double every 1,024 values: a
//                      fixed order), then y = x * scale + shift, scale = invstd * weight,
//                      shift = bias - mean * scale, invstd = 1 / sqrt(var + eps).
//                      mean, invstd and var are written out for backward and the running stats.
//   eval forward       y = x * scale + shift per channel (scale and shift folded by the caller
//                      from the running stats).
//   Either forward may add a residual (the same shape as x) before the ReLU: a ResNet block's
//   relu(bn2(conv2(h)) + shortcut), in the one pass.
//   backward           with g = dy (masked by y > 0 when the ReLU was fused; without a
//                      residual the mask is recomputed from x, not read from y), xhat the
//                      normalised input and M = N*H*W: dbias = sum g, dweight = sum g*xhat, dx =
//                      weight * invstd * (g - dbias/M - xhat * dweight/M); g itself is written out
//                      on request (masked_dy), for the block's shortcut.
// Channels are split over the threads; each channel's sums are taken by one thread, so results do
// not depend on the thread count.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "cpu/ops.h"
#include "cpu/vec16.h"

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

// A channel's planes are short (49 values at 7x7, 196 at 14x14): the loops below run whole
// vectors of 16 (vec16.h) along each plane and one partial vector at its end, carrying the sums'
// lanes from plane to plane. (Summing plane by plane, each reduced to a scalar, took ~7 cycles a
// value at 7x7.)
using namespace vec16;

// v's first n lanes, zeros after.
inline F16 first_lanes(F16 v, int64_t n) {
  const I16 lane = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
  return reinterpret_cast<F16>(reinterpret_cast<I16>(v) & (lane < static_cast<int32_t>(n)));
}
// The n <= 16 values at a + i, zeros after, of an array of `end` floats: a whole vector where it
// lies inside the array (then masked), else copied.
inline F16 load_n(const float* a, int64_t i, int64_t n, int64_t end) {
  if (n == 16) return load(a + i);
  if (i + 16 <= end) return first_lanes(load(a + i), n);
  F16 v = {};
  std::memcpy(&v, a + i, n * sizeof(float));
  return v;
}
// v's first n <= 16 lanes into p (the next plane may be another thread's).
inline void store_n(float* p, F16 v, int64_t n) {
  if (n == 16) return store(p, v);
  for (int64_t l = 0; l < n; ++l) p[l] = v[l];
}

// y <= 0 ? 0 : d (d passes where y > 0 or y is NaN, as through every fastcnn ReLU), as bit
// operations (a select GCC would branch on, mispredicting half the time).
inline F16 relu_pass(F16 y, F16 d) {
  const F16 zero = {};
  return reinterpret_cast<F16>(reinterpret_cast<I16>(d) & ~(y <= zero));
}

// A sum in a fixed order: 16 float lanes, emptied into a double every 64 vectors (1,024 values),
// so that float rounding never builds up over a channel.
struct Sum {
  F16 lanes = {};
  int count = 0;
  double total = 0.0;
  void add(F16 v) {
    lanes += v;
    if (++count == 64) flush();
  }
  void flush() {
    float s = 0.f;
    for (int l = 0; l < 16; ++l) s += lanes[l];
    total += s;
    lanes = F16{}, count = 0;
  }
  double get() {
    flush();
    return total;
  }
};

// fn(at, p, n) over channel c's planes (at: the plane's offset in the NCHW batch) for p = 0, 16,
// ... with n = 16 values, then the plane's last n < 16.
template <class Fn>
inline void over_channel(int64_t N, int64_t C, int64_t P, int64_t c, Fn fn) {
  for (int64_t i = 0; i < N; ++i) {
    const int64_t at = (i * C + c) * P;
    int64_t p = 0;
    for (; p + 16 <= P; p += 16) fn(at, p, 16);
    if (p < P) fn(at, p, P - p);
  }
}
}  // namespace

// Channel c's y = x * scale + shift, from the float mean and invstd batchnorm2d_forward_train
// returns: the backward recomputes the ReLU's mask from x with the same values. Compiled once (not
// per ISA) and never inlined, so that both get the same roundings.
__attribute__((noinline)) static void affine_of(const float* mean, const float* invstd,
                                                const float* w, const float* b, int64_t c,
                                                float* scale, float* shift) {
  *scale = invstd[c] * (w ? w[c] : 1.f);
  *shift = (b ? b[c] : 0.f) - mean[c] * *scale;
}

// x * scale + shift, the one expression the forward and the mask's recomputation both use.
inline F16 affine(F16 x, F16 scale, F16 shift) {
  return x * scale + shift;
}

// y = x * scale + shift (+ residual) over channel c's planes, then max(0, .) with relu.
FASTCNN_ELEMENTWISE static void affine_rows(int64_t N, int64_t C, int64_t P, int64_t c,
                                            const float* x, float scale, float shift,
                                            const float* residual, bool relu, float* y) {
  const F16 zero = {}, sc = zero + scale, sh = zero + shift;
  const int64_t end = N * C * P;
  over_channel(N, C, P, c, [&](int64_t at, int64_t p, int64_t n) {
    const int64_t i = at + p;
    F16 v = affine(load_n(x, i, n, end), sc, sh);
    if (residual) v += load_n(residual, i, n, end);
    if (relu) v = v < zero ? zero : v;  // NaN passes
    store_n(y + i, v, n);
  });
}

// ---- forward ----------------------------------------------------------------------------------

// Channel c of batchnorm2d_forward_train.
FASTCNN_ELEMENTWISE static void forward_train_channel(int64_t N, int64_t C, int64_t P, int64_t c,
                                                      const float* x, const float* w,
                                                      const float* b, const float* residual,
                                                      float eps, bool relu, float* y, float* mean,
                                                      float* invstd, float* var) {
  const double M = static_cast<double>(N * P);
  const int64_t end = N * C * P;
  const auto get = [&](int64_t i, int64_t n) { return load_n(x, i, n, end); };
  // One pass: the sums of x - k and (x - k)^2 around k, the channel's first value, whence
  // mean = k + s1/M and var = s2/M - (s1/M)^2. The subtraction loses (1 + (mean - k)^2 / var)
  // times the rounding of s2, and s1 is rounded to k's scale: where k lies more than 4
  // standard deviations from the mean (at most 17 times), both are summed again (Inf and NaN
  // too): the mean, then the squares around it. (The one pass: ResNet-8's training step 1.4%
  // faster at 1x28x28 batch 64.)
  const float kf = M > 0 ? x[c * P] : 0.f;
  const F16 kv = F16{} + kf;
  Sum s1, s2;
  over_channel(N, C, P, c, [&](int64_t at, int64_t p, int64_t n) {
    F16 d = get(at + p, n) - kv;
    if (n < 16) d = first_lanes(d, n);  // a partial vector's padding lanes: 0 - k
    s1.add(d);
    s2.add(d * d);
  });
  const double dm = M > 0 ? s1.get() / M : 0.0;
  double mu = kf + dm, v = M > 0 ? std::max(s2.get() / M - dm * dm, 0.0) : 0.0;
  if (!(dm * dm <= 16 * v)) {
    Sum s;
    over_channel(N, C, P, c, [&](int64_t at, int64_t p, int64_t n) { s.add(get(at + p, n)); });
    mu = M > 0 ? s.get() / M : 0.0;
    const float muf = static_cast<float>(mu);
    // Around the float mean: the same up to rounding. A partial vector's padding lanes are
    // 0 - muf there, so they are masked out.
    const F16 m = F16{} + muf;
    Sum ss;
    over_channel(N, C, P, c, [&](int64_t at, int64_t p, int64_t n) {
      const F16 d = get(at + p, n) - m;
      ss.add(n == 16 ? d * d : first_lanes(d * d, n));
    });
    // sum (x - mu)^2 = sum (x - muf)^2 - M (mu - muf)^2
    const double sq = ss.get() - M * (mu - muf) * (mu - muf);
    v = M > 0 ? std::max(sq / M, 0.0) : 0.0;
  }
  const double is = 1.0 / std::sqrt(v + eps);
  mean[c] = static_cast<float>(mu);
  invstd[c] = static_cast<float>(is);
  var[c] = static_cast<float>(v);
  // y = x * scale + shift, in float: scale = invstd * weight, shift = bias - mean * scale.
  float scale, shift;
  affine_of(mean, invstd, w, b, c, &scale, &shift);
  affine_rows(N, C, P, c, x, scale, shift, residual, relu, y);
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

// Channel c of batchnorm2d_backward. Two passes: g (dy through the ReLU's mask, written to
// masked_dy on request) and its sums, then dx.
FASTCNN_ELEMENTWISE static void backward_channel(int64_t N, int64_t C, int64_t P, int64_t c,
                                                 const float* x, const float* dy, const float* y,
                                                 bool relu, const float* mean, const float* invstd,
                                                 const float* w, const float* b, float* dx,
                                                 float* dw, float* db, float* masked_dy) {
  const double M = static_cast<double>(N * P);
  const float mu = mean[c], is = invstd[c];
  const F16 zero = {}, mv = zero + mu;
  const int64_t end = N * C * P;
  const auto get = [&](const float* a, int64_t i, int64_t n) { return load_n(a, i, n, end); };
  // The ReLU's mask: y > 0 where y is given, else x * scale + shift > 0 recomputed as the forward
  // computed it (without y, a pass reads two arrays, not three).
  const bool masked = y || relu;
  float scale = 0.f, shift = 0.f;
  if (!y && relu) affine_of(mean, invstd, w, b, c, &scale, &shift);
  const F16 sc = zero + scale, sh = zero + shift;
  // g at i, from d (dy, or masked_dy already masked); the padding lanes of a partial vector are
  // 0 (d's are).
  const auto g_at = [&](const float* d, bool mask, F16 xv, int64_t i, int64_t n) {
    const F16 dv = get(d, i, n);
    if (!mask) return dv;
    return relu_pass(y ? get(y, i, n) : affine(xv, sc, sh), dv);
  };
  Sum sg, sgx;
  over_channel(N, C, P, c, [&](int64_t at, int64_t p, int64_t n) {
    const int64_t i = at + p;
    const F16 xv = get(x, i, n);
    const F16 g = g_at(dy, masked, xv, i, n);
    if (masked_dy && masked) store_n(masked_dy + i, g, n);
    sg.add(g);
    sgx.add(g * (xv - mv));
  });
  const double sum_g = sg.get(), sum_gx = sgx.get() * is;  // sum g * xhat
  if (db) db[c] = static_cast<float>(sum_g);
  if (dw) dw[c] = static_cast<float>(sum_gx);
  if (!dx || M == 0) return;
  // With masked_dy, g is read back from there instead of dy and the mask.
  const bool reread = masked_dy && masked;
  const float* g_src = reread ? masked_dy : dy;
  const F16 k = zero + (w ? w[c] : 1.f) * is, isv = zero + is;
  const F16 mean_g = zero + static_cast<float>(sum_g / M);
  const F16 mean_gx = zero + static_cast<float>(sum_gx / M);
  over_channel(N, C, P, c, [&](int64_t at, int64_t p, int64_t n) {
    const int64_t i = at + p;
    const F16 xv = get(x, i, n);
    const F16 v =
        k * (g_at(g_src, masked && !reread, xv, i, n) - mean_g - (xv - mv) * isv * mean_gx);
    store_n(dx + i, v, n);
  });
}

void batchnorm2d_backward(int64_t N, int64_t C, int64_t P, const float* x, const float* dy,
                          const float* y, bool relu, const float* mean, const float* invstd,
                          const float* w, const float* b, float* dx, float* dw, float* db,
                          float* masked_dy) {
  for_each_channel(C, N * C * P, [&](int64_t c) {
    backward_channel(N, C, P, c, x, dy, y, relu, mean, invstd, w, b, dx, dw, db, masked_dy);
  });
}

}  // namespace fastcnn
