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
// Training mode splits the batch over the threads by images, as the convolutions around it do (see
// "The threads' shares" below), and keeps each channel's sums in the one order above, so results
// do not depend on the thread count. Eval mode splits the batch the same way.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "cpu/gemm/gemm_driver.h"  // split_range
#include "cpu/ops.h"
#include "cpu/vec16.h"

namespace fastcnn {

namespace {
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

// v's lanes added in order, in float.
__attribute__((always_inline)) inline float lane_sum(F16 v) {
  float s = 0.f;
  for (int l = 0; l < 16; ++l) s += v[l];
  return s;
}

// Vectors a Sum adds up in float before emptying them into its double.
constexpr int kChunk = 64;

// A sum in a fixed order: 16 float lanes, emptied into a double every 64 vectors (1,024 values),
// so that float rounding never builds up over a channel.
struct Sum {
  F16 lanes = {};
  int count = 0;
  double total = 0.0;
  void add(F16 v) {
    lanes += v;
    if (++count == kChunk) flush();
  }
  void flush() {
    total += lane_sum(lanes);
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

// ---- the threads' shares ----------------------------------------------------------------------
//
// A channel's vectors in the order its sums take them: image by image, each plane in vpp =
// ceil(P / 16) vectors of 16 values, the last partial. Thread t of T takes vectors [first, last)
// of every channel: whole images, split_range's as the convolutions' (where there are as many
// images as threads), so that it reads the images it wrote in the layer before, all channels in
// memory order. (Split by channels, each thread read half of its planes from the other core:
// where the two cores share no L3, batch norm then took 2.5x as long in a ResNet-8 training
// step.) Each thread sums the whole 64-vector chunks that begin in its share and keeps each
// chunk's float sum, what Sum empties into its double; `join` then adds them up in order, the
// vectors of a chunk that straddles two shares added one by one, so each channel's sums are
// Sum's over all its vectors. The passes are ISA clones marked `flatten`: every helper and lambda
// is inlined into each clone (a lambda left out of line is compiled for the baseline ISA, where
// the sums lose their FMAs and change in the last bit).
struct Layout {
  int64_t N, C, P, vpp;
  Layout(int64_t n, int64_t c, int64_t p) : N(n), C(c), P(p), vpp((p + 15) / 16) {}
  int64_t vectors() const { return N * vpp; }
  // Vector i of channel c: its offset in the batch, and how many values it holds.
  int64_t at(int64_t c, int64_t i) const { return ((i / vpp) * C + c) * P + (i % vpp) * 16; }
  int64_t values(int64_t i) const { return std::min<int64_t>(16, P - (i % vpp) * 16); }
  // Thread t's vectors [*first, *last) of every channel.
  void share(int T, int t, int64_t* first, int64_t* last) const {
    if (N >= T) {
      split_range(N, T, t, first, last);
      *first *= vpp, *last *= vpp;
    } else {
      split_range(vectors(), T, t, first, last);
    }
  }
  // The first chunk boundary at or after `first`, within the share.
  static int64_t chunks_from(int64_t first, int64_t last) {
    return std::min(last, (first + kChunk - 1) / kChunk * kChunk);
  }
};

// fn(c, i, at, n) over a share's vectors [first, last), image by image and channel by channel
// (memory order): vector i of channel c at offset `at`, with n values.
template <class Fn>
__attribute__((always_inline)) inline void over_share(const Layout& L, int64_t first, int64_t last,
                                                      Fn fn) {
  if (L.vpp == 0) return;  // empty planes: no vectors
  for (int64_t img = first / L.vpp; img * L.vpp < last; ++img) {
    const int64_t v0 = img * L.vpp, j0 = std::max<int64_t>(first - v0, 0);
    const int64_t j1 = std::min<int64_t>(L.vpp, last - v0);
    for (int64_t c = 0; c < L.C; ++c) {
      const int64_t plane = (img * L.C + c) * L.P;
      for (int64_t j = j0; j < j1; ++j)
        fn(c, v0 + j, plane + 16 * j, std::min<int64_t>(16, L.P - 16 * j));
    }
  }
}

// Two sums over a share's part of one channel: the chunk sums it has written, and the chunk in
// progress.
struct Part {
  F16 a, b;
  int64_t count, chunks;
};

// Where the threads keep their parts: parts[t * C + c], and that part's chunk sums, a's and b's
// in pairs, at sums + (t * C + c) * 2 * cap.
struct Parts {
  Part* parts;
  float* sums;
  int64_t cap;  // chunk sums a part may hold
  Part& part(const Layout& L, int t, int64_t c) const { return parts[t * L.C + c]; }
  float* chunk_sums(const Layout& L, int t, int64_t c) const {
    return sums + (t * L.C + c) * 2 * cap;
  }
};

// Scratch of the calling thread for up to T threads' parts.
Parts parts_for(const Layout& L, int T) {
  thread_local ScratchBuffer part_buf, sum_buf;
  const int64_t n = T * L.C;
  static_assert(sizeof(Part) % sizeof(float) == 0, "Part in floats");
  Parts p{reinterpret_cast<Part*>(part_buf.get(n * sizeof(Part) / sizeof(float))), nullptr,
          L.vectors() / kChunk + 1};
  p.sums = sum_buf.get(n * 2 * p.cap);
  return p;
}

// Adds a vector's pair to a channel's part, keeping each whole chunk's float sums.
__attribute__((always_inline)) inline void part_add(Part& q, float* chunk_sums, F16 va, F16 vb) {
  q.a += va;
  q.b += vb;
  if (++q.count == kChunk) {
    chunk_sums[2 * q.chunks] = lane_sum(q.a);
    chunk_sums[2 * q.chunks + 1] = lane_sum(q.b);
    ++q.chunks;
    q.a = q.b = F16{}, q.count = 0;
  }
}

// Channel c's two totals over all its vectors, as two Sums taking them in order would have them:
// value(c, i, at, n, &va, &vb) gives vector i's pair again where a chunk straddles two shares.
template <class Value>
__attribute__((always_inline)) inline void join(const Layout& L, int T, const Parts& P, int64_t c,
                                                Value value, double* ta, double* tb) {
  Sum a, b;
  for (int t = 0; t < T; ++t) {
    int64_t first, last;
    L.share(T, t, &first, &last);
    const int64_t from = Layout::chunks_from(first, last);
    for (int64_t i = first; i < from; ++i) {
      F16 va, vb;
      value(c, i, L.at(c, i), L.values(i), &va, &vb);
      a.add(va);
      b.add(vb);
    }
    if (from == last) continue;
    // The share's own chunks begin at a boundary, where a and b are empty.
    const Part& q = P.part(L, t, c);
    const float* s = P.chunk_sums(L, t, c);
    for (int64_t k = 0; k < q.chunks; ++k) a.total += s[2 * k], b.total += s[2 * k + 1];
    a.lanes = q.a, b.lanes = q.b;
    a.count = b.count = static_cast<int>(q.count);
  }
  *ta = a.get();
  *tb = b.get();
}

// Runs fn(t, T, sync) on T threads (one team; sync() waits for all of them).
template <class Fn>
void on_threads(int T, Fn fn) {
#ifdef FASTCNN_OPENMP
  if (T > 1) {
#pragma omp parallel num_threads(T)
    {
      DenormalGuard denormals;
      fn(omp_get_thread_num(), omp_get_num_threads(), [] {
#pragma omp barrier
      });
    }
    return;
  }
#endif
  DenormalGuard denormals;
  fn(0, 1, [] {});
}

// Threads for a pass over `values` floats.
int threads_for(int64_t values) {
  const int T = num_threads();
  return T > 1 && values > 32768 ? T : 1;
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

// y = x * scale[c] + shift[c] (+ residual), then max(0, .) with relu, over a share.
FASTCNN_ELEMENTWISE __attribute__((flatten)) static void affine_share(
    const Layout& L, int64_t first, int64_t last, const float* x, const float* scale,
    const float* shift, const float* residual, bool relu, float* y) {
  const int64_t end = L.N * L.C * L.P;
  const F16 zero = {};
  over_share(L, first, last, [&](int64_t c, int64_t, int64_t i, int64_t n) {
    F16 v = affine(load_n(x, i, n, end), zero + scale[c], zero + shift[c]);
    if (residual) v += load_n(residual, i, n, end);
    if (relu) v = v < zero ? zero : v;  // NaN passes
    store_n(y + i, v, n);
  });
}

// ---- forward ----------------------------------------------------------------------------------

// The one-pass sums of x - k and (x - k)^2 around k, the channel's first value: vector i's pair.
__attribute__((always_inline)) inline void centred_pair(const float* x, int64_t end, F16 kv,
                                                        int64_t at, int64_t n, F16* va, F16* vb) {
  F16 d = load_n(x, at, n, end) - kv;
  if (n < 16) d = first_lanes(d, n);  // a partial vector's padding lanes: 0 - k
  *va = d;
  *vb = d * d;
}

// Thread t's part of every channel's one-pass sums.
FASTCNN_ELEMENTWISE __attribute__((flatten)) static void forward_sums(const Layout& L,
                                                                      int64_t first, int64_t last,
                                                                      const float* x,
                                                                      const Parts& P, int t) {
  const int64_t from = Layout::chunks_from(first, last), end = L.N * L.C * L.P;
  for (int64_t c = 0; c < L.C; ++c) P.part(L, t, c) = Part{F16{}, F16{}, 0, 0};
  if (from == last) return;
  over_share(L, from, last, [&](int64_t c, int64_t, int64_t at, int64_t n) {
    F16 va, vb;
    centred_pair(x, end, F16{} + x[c * L.P], at, n, &va, &vb);
    part_add(P.part(L, t, c), P.chunk_sums(L, t, c), va, vb);
  });
}

// Channel c's mean, invstd and var from the parts (see batchnorm2d_forward_train).
FASTCNN_ELEMENTWISE __attribute__((flatten)) static void forward_stats(const Layout& L, int T,
                                                                       const Parts& P, int64_t c,
                                                                       const float* x, float eps,
                                                                       float* mean, float* invstd,
                                                                       float* var) {
  const int64_t N = L.N, C = L.C, Pl = L.P, end = N * C * Pl;
  const double M = static_cast<double>(N * Pl);
  const auto get = [&](int64_t i, int64_t n) { return load_n(x, i, n, end); };
  // One pass: the sums of x - k and (x - k)^2 around k, the channel's first value, whence
  // mean = k + s1/M and var = s2/M - (s1/M)^2. The subtraction loses (1 + (mean - k)^2 / var)
  // times the rounding of s2, and s1 is rounded to k's scale: where k lies more than 4
  // standard deviations from the mean (at most 17 times), both are summed again (Inf and NaN
  // too): the mean, then the squares around it. (The one pass: ResNet-8's training step 1.4%
  // faster at 1x28x28 batch 64.)
  const float kf = M > 0 ? x[c * Pl] : 0.f;
  const F16 kv = F16{} + kf;
  double s1, s2;
  join(
      L, T, P, c,
      [&](int64_t, int64_t, int64_t at, int64_t n, F16* va, F16* vb) {
        centred_pair(x, end, kv, at, n, va, vb);
      },
      &s1, &s2);
  const double dm = M > 0 ? s1 / M : 0.0;
  double mu = kf + dm, v = M > 0 ? std::max(s2 / M - dm * dm, 0.0) : 0.0;
  if (!(dm * dm <= 16 * v)) {  // by one thread, over all the channel's planes
    Sum s;
    over_channel(N, C, Pl, c, [&](int64_t at, int64_t p, int64_t n) { s.add(get(at + p, n)); });
    mu = M > 0 ? s.get() / M : 0.0;
    const float muf = static_cast<float>(mu);
    // Around the float mean: the same up to rounding. A partial vector's padding lanes are
    // 0 - muf there, so they are masked out.
    const F16 m = F16{} + muf;
    Sum ss;
    over_channel(N, C, Pl, c, [&](int64_t at, int64_t p, int64_t n) {
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
}

void batchnorm2d_forward_train(int64_t N, int64_t C, int64_t P, const float* x, const float* w,
                               const float* b, const float* residual, float eps, bool relu,
                               float* y, float* mean, float* invstd, float* var) {
  const Layout L(N, C, P);
  const int threads = threads_for(N * C * P);
  const Parts parts = parts_for(L, threads);
  thread_local ScratchBuffer affine_buf;
  float* scale = affine_buf.get(2 * C);  // y = x * scale + shift, in float
  float* shift = scale + C;
  on_threads(threads, [&](int t, int T, auto sync) {
    int64_t first, last, c0, c1;
    L.share(T, t, &first, &last);
    forward_sums(L, first, last, x, parts, t);
    sync();
    split_range(C, T, t, &c0, &c1);
    for (int64_t c = c0; c < c1; ++c) {
      forward_stats(L, T, parts, c, x, eps, mean, invstd, var);
      affine_of(mean, invstd, w, b, c, scale + c, shift + c);
    }
    sync();
    affine_share(L, first, last, x, scale, shift, residual, relu, y);
  });
}

void batchnorm2d_forward_eval(int64_t N, int64_t C, int64_t P, const float* x, const float* scale,
                              const float* shift, const float* residual, bool relu, float* y) {
  const Layout L(N, C, P);
  on_threads(threads_for(N * C * P), [&](int t, int T, auto) {
    int64_t first, last;
    L.share(T, t, &first, &last);
    affine_share(L, first, last, x, scale, shift, residual, relu, y);
  });
}

// ---- backward ---------------------------------------------------------------------------------

// What the backward's passes share: g is dy through the ReLU's mask (y > 0 where y is given, else
// x * scale + shift > 0 recomputed as the forward computed it: without y, a pass reads two arrays,
// not three), masked_dy receives it on request.
struct Backward {
  const Layout& L;
  const float *x, *dy, *y, *mean, *invstd, *w, *b;
  bool masked;  // y or relu
  float* masked_dy;
  int64_t end() const { return L.N * L.C * L.P; }
};

// Channel c's (scale, shift) for the mask's recomputation; zeros where y gives the mask.
__attribute__((always_inline)) inline void mask_affine(const Backward& k, int64_t c, F16* sc,
                                                       F16* sh) {
  float scale = 0.f, shift = 0.f;
  if (!k.y && k.masked) affine_of(k.mean, k.invstd, k.w, k.b, c, &scale, &shift);
  *sc = F16{} + scale, *sh = F16{} + shift;
}

// g at i, from d (dy, or masked_dy already masked); the padding lanes of a partial vector are 0
// (d's are).
__attribute__((always_inline)) inline F16 g_at(const Backward& k, const float* d, bool mask, F16 xv,
                                               F16 sc, F16 sh, int64_t i, int64_t n) {
  const F16 dv = load_n(d, i, n, k.end());
  if (!mask) return dv;
  return relu_pass(k.y ? load_n(k.y, i, n, k.end()) : affine(xv, sc, sh), dv);
}

// Vector i's pair for the sums: g and g * (x - mean).
__attribute__((always_inline)) inline void g_pair(const Backward& k, F16 xv, F16 g, int64_t c,
                                                  F16* va, F16* vb) {
  *va = g;
  *vb = g * (xv - (F16{} + k.mean[c]));
}

// Thread t's part of every channel's sums of g and g * (x - mean); g written to masked_dy.
FASTCNN_ELEMENTWISE __attribute__((flatten)) static void backward_sums(const Backward& k,
                                                                       int64_t first, int64_t last,
                                                                       const Parts& P, int t) {
  const Layout& L = k.L;
  const int64_t from = Layout::chunks_from(first, last);
  for (int64_t c = 0; c < L.C; ++c) P.part(L, t, c) = Part{F16{}, F16{}, 0, 0};
  F16 sc = {}, sh = {};
  int64_t channel = -1;
  over_share(L, first, last, [&](int64_t c, int64_t i, int64_t at, int64_t n) {
    if (c != channel) mask_affine(k, c, &sc, &sh), channel = c;
    const F16 xv = load_n(k.x, at, n, k.end());
    const F16 g = g_at(k, k.dy, k.masked, xv, sc, sh, at, n);
    if (k.masked_dy && k.masked) store_n(k.masked_dy + at, g, n);
    if (i < from) return;  // before the share's first chunk: join adds it
    F16 va, vb;
    g_pair(k, xv, g, c, &va, &vb);
    part_add(P.part(L, t, c), P.chunk_sums(L, t, c), va, vb);
  });
}

// Channel c's sums of g and g * xhat: dbias and dweight.
FASTCNN_ELEMENTWISE __attribute__((flatten)) static void backward_stats(const Backward& k, int T,
                                                                        const Parts& P, int64_t c,
                                                                        double* sum_g,
                                                                        double* sum_gx) {
  F16 sc, sh;
  mask_affine(k, c, &sc, &sh);
  double sg, sgx;
  join(
      k.L, T, P, c,
      [&](int64_t c, int64_t, int64_t at, int64_t n, F16* va, F16* vb) {
        const F16 xv = load_n(k.x, at, n, k.end());
        g_pair(k, xv, g_at(k, k.dy, k.masked, xv, sc, sh, at, n), c, va, vb);
      },
      &sg, &sgx);
  sum_g[c] = sg;
  sum_gx[c] = sgx * k.invstd[c];  // sum g * xhat
}

// dx = weight * invstd * (g - dbias/M - xhat * dweight/M) over a share.
FASTCNN_ELEMENTWISE __attribute__((flatten)) static void backward_dx(const Backward& k,
                                                                     int64_t first, int64_t last,
                                                                     const double* sum_g,
                                                                     const double* sum_gx,
                                                                     float* dx) {
  const double M = static_cast<double>(k.L.N * k.L.P);
  const F16 zero = {};
  // With masked_dy, g is read back from there (this thread wrote its share) instead of dy and
  // the mask.
  const bool reread = k.masked_dy && k.masked;
  const float* g_src = reread ? k.masked_dy : k.dy;
  F16 sc = zero, sh = zero, kv = zero, mv = zero, isv = zero, mean_g = zero, mean_gx = zero;
  int64_t channel = -1;
  over_share(k.L, first, last, [&](int64_t c, int64_t, int64_t i, int64_t n) {
    if (c != channel) {
      const float is = k.invstd[c];
      mask_affine(k, c, &sc, &sh);
      kv = zero + (k.w ? k.w[c] : 1.f) * is, mv = zero + k.mean[c], isv = zero + is;
      mean_g = zero + static_cast<float>(sum_g[c] / M);
      mean_gx = zero + static_cast<float>(sum_gx[c] / M);
      channel = c;
    }
    const F16 xv = load_n(k.x, i, n, k.end());
    const F16 v = kv * (g_at(k, g_src, k.masked && !reread, xv, sc, sh, i, n) - mean_g -
                        (xv - mv) * isv * mean_gx);
    store_n(dx + i, v, n);
  });
}

void batchnorm2d_backward(int64_t N, int64_t C, int64_t P, const float* x, const float* dy,
                          const float* y, bool relu, const float* mean, const float* invstd,
                          const float* w, const float* b, float* dx, float* dw, float* db,
                          float* masked_dy) {
  const Layout L(N, C, P);
  const Backward k{L, x, dy, y, mean, invstd, w, b, y || relu, masked_dy};
  const int threads = threads_for(N * C * P);
  const Parts parts = parts_for(L, threads);
  thread_local ScratchBuffer sums_buf;
  double* sum_g = reinterpret_cast<double*>(sums_buf.get(4 * C));
  double* sum_gx = sum_g + C;
  const bool with_dx = dx && N * P > 0;
  on_threads(threads, [&](int t, int T, auto sync) {
    int64_t first, last, c0, c1;
    L.share(T, t, &first, &last);
    backward_sums(k, first, last, parts, t);
    sync();
    split_range(C, T, t, &c0, &c1);
    for (int64_t c = c0; c < c1; ++c) {
      backward_stats(k, T, parts, c, sum_g, sum_gx);
      if (db) db[c] = static_cast<float>(sum_g[c]);
      if (dw) dw[c] = static_cast<float>(sum_gx[c]);
    }
    if (!with_dx) return;
    sync();
    backward_dx(k, first, last, sum_g, sum_gx, dx);
  });
}

}  // namespace fastcnn
