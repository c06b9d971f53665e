// conv2d: cross-correlation of an NCHW batch with (O, C, kh, kw) filters, PyTorch's Conv2d.
//
// Four algorithms; all overwrite their outputs and give thread-count-independent results.
//
// "winograd" (5x5 and 3x3 stride-1 layers), where the indirect kernels apply: Winograd's
//   F(2x2, 5x5) and F(4x4, 3x3) for the forward pass and dx, F(2x2, 5x5) and F(4x4, 3x3) (or
//   F(2x2, 3x3) where 4x4 blocks would waste) for dw (winograd.h), whose 36 or 16 products run
//   through the same micro-kernels; the direct result where an output is not finite.
//   ops.set_conv_algorithm("indirect") turns it off.
// "indirect" (the default where it applies): no column matrix is built.
//   forward   each image is copied once into a zero-bordered NHWC buffer; the convolution
//             micro-kernel (gemm.h, ConvKernel) reads every tap of a tile of output pixels
//             straight from it through per-pixel pointers and writes the NCHW output, bias and
//             ReLU applied on the way out.
//   dx        for stride 1, dx is the convolution of dy (zero-bordered by k-1-p) with the
//             flipped, transposed filters: the same kernel again.
//   dw        one GEMM over the whole batch, dw (O x T*C) = dy (O x N*P) . col (N*P x T*C), then
//             a permutation to PyTorch's (O, C, kh, kw). dy is transposed once into the A panels;
//             B is never packed where the micro-kernel can read it in place (a channel count
//             that fills whole NR panels), else packed straight from the NHWC images (no im2col
//             copy). Read in place, the batch goes in segments of whole images fixed by the
//             shapes, each summed into a partial dw (threads take a segment, or a segment's
//             group of dw panels), the partials then added in order; packed, threads split dw's
//             panels. Either way every element is summed over images and pixels in one fixed
//             order.
// "direct" (few input channels, like an image's 1 or 3): forward and dw loop over taps with the
//   output pixels of a row in vector lanes; nothing is packed.
// "im2col" (the reference, and the fallback for small channel counts or strided dx): im2col +
//   sgemm per image, col2im for dx.
// with T = kh*kw taps, P = OH*OW output pixels. A strided 1x1 convolution without padding runs
// as the stride-1 convolution of the pixels it reads, gathered first (see strided_pointwise).
// A 1x1 stride-1 convolution's forward and dx are GEMMs on the NCHW planes as they lie (the
// im2col path without its copy): the indirect kernel, with one tap, spent more time padding
// and transposing than multiplying (ResNet-8's 16 -> 32 shortcut at 2 threads, gathered input
// at 14x14 batch 64: forward 0.20 -> 0.11 ms, dx 0.16 -> 0.12; at 16x16 batch 128 0.54 ->
// 0.27 and 0.40 -> 0.26). Its dw stays indirect, which is faster.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <vector>

#include "cpu/gemm/gemm.h"
#include "cpu/gemm/gemm_driver.h"
#include "cpu/ops.h"
#include "cpu/winograd.h"

#ifdef FASTCNN_OPENMP
#include <omp.h>
#endif
#ifdef __SSE__
#include <xmmintrin.h>  // baseline on x86-64: the 4x4 transposes of pad_nhwc
#endif

namespace fastcnn {

namespace {

ConvAlgorithm g_algorithm = ConvAlgorithm::kAuto;

// Scratch owned by the calling thread, one vector per purpose, grown once: a training step
// reuses it and allocates nothing.
enum Slot {
  kCol,
  kPad,
  kPacked,
  kBias,
  kDw,
  kDyPanels,
  kDwPartials,
  kStrided,
  kStridedDx,
  kAddDx,
  kPhaseFilters,
  kWinogradFilters,
  kWinogradBlock,
  kWinogradDw,
  kSlots
};
// Floats the weight gradient may hold in partial sums (8 MB), see dw_indirect.
constexpr int64_t kDwPartialFloats = 2 * 1024 * 1024;

float* scratch(Slot slot, size_t n) {
  thread_local ScratchBuffer buf[kSlots];
  return buf[slot].get(n);
}
// Sum of n floats in a fixed order: 16 interleaved partial sums (vectorisable, and not one long
// chain of dependent additions), then the tail.
float sum(const float* d, int64_t n) {
  float lanes[16] = {};
  int64_t p = 0;
  for (; p + 16 <= n; p += 16)
    for (int l = 0; l < 16; ++l) lanes[l] += d[p + l];
  float s = 0.f;
  for (int l = 0; l < 16; ++l) s += lanes[l];
  for (; p < n; ++p) s += d[p];
  return s;
}

// Runs fn(begin, end) over [0, n) split across `threads` (inline when 1).
template <class Fn>
void parallel_range(int64_t n, int threads, Fn fn) {
#ifdef FASTCNN_OPENMP
  if (threads > 1 && n > 1) {
#pragma omp parallel num_threads(threads)
    {
      DenormalGuard denormals;
      int64_t b, e;
      split_range(n, omp_get_num_threads(), omp_get_thread_num(), &b, &e);
      fn(b, e);
    }
    return;
  }
#endif
  DenormalGuard denormals;
  fn(0, n);
}

// Runs fn(begin, end) over [0, n) in chunks of `chunk`, each done whole by one thread (nothing's
// value then depends on which thread did it): each thread takes a contiguous run of chunks,
// split_range's, the same images in every layer, as batch norm's shares (batchnorm.cpp). A
// thread then reads what it wrote in the layer before, in its own core's caches: where the two
// cores share no L3, a ResNet-8 training step (1x28x28 b64) took 23.8-24.3 ms against 21.3-21.8
// with chunks claimed as threads came free.
template <class Fn>
void parallel_chunks(int64_t n, int64_t chunk, int threads, Fn fn) {
  const int64_t chunks = (n + chunk - 1) / chunk;
  parallel_range(chunks, threads, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) fn(c * chunk, std::min(n, (c + 1) * chunk));
  });
}

// ---- im2col reference path --------------------------------------------------------------------

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

// Images spread over the threads when there are at least as many as threads; otherwise one
// image at a time with all threads inside the GEMM.
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

void forward_im2col(const Window2d& g, const float* x, const float* w, const float* b, float* y,
                    bool relu) {
  const int64_t CKK = g.patch(), P = g.pixels(), in_size = g.C * g.H * g.W;
  GemmEpilogue ep;
  ep.bias_row = b;
  ep.relu = relu;
  for_each_image(g.N, [&](int64_t n, int threads) {
    const float* xn = x + n * in_size;
    const float* col = xn;
    if (!is_pointwise(g)) {
      float* buf = scratch(kCol, CKK * P);
      im2col(g, xn, buf);
      col = buf;
    }
    sgemm(false, false, g.O, P, CKK, w, CKK, col, P, y + n * g.O * P, P, ep, threads);
  });
}

void dw_im2col(const Window2d& g, const float* x, const float* dy, float* dw) {
  const int64_t CKK = g.patch(), P = g.pixels(), in_size = g.C * g.H * g.W;
  const bool pointwise = is_pointwise(g);
  float* col = pointwise ? nullptr : scratch(kCol, CKK * P);
  GemmEpilogue ep;
  DenormalGuard denormals;
  for (int64_t n = 0; n < g.N; ++n) {  // images in order, each GEMM split over the threads
    const float* cn = x + n * in_size;
    if (!pointwise) {
      im2col(g, cn, col);
      cn = col;
    }
    ep.accumulate = n > 0;
    sgemm(false, true, g.O, CKK, P, dy + n * g.O * P, P, cn, P, dw, CKK, ep, num_threads());
  }
  if (g.N == 0) std::fill(dw, dw + g.O * CKK, 0.f);
}

void dx_im2col(const Window2d& g, const float* w, const float* dy, float* dx) {
  const int64_t CKK = g.patch(), P = g.pixels(), in_size = g.C * g.H * g.W;
  const bool pointwise = is_pointwise(g);
  for_each_image(g.N, [&](int64_t n, int threads) {
    float* dxn = dx + n * in_size;
    float* dcol = pointwise ? dxn : scratch(kCol, CKK * P);
    sgemm(true, false, CKK, P, g.O, w, CKK, dy + n * g.O * P, P, dcol, P, GemmEpilogue{}, threads);
    if (!pointwise) col2im(g, dcol, dxn);
  });
}

// ---- indirect path ----------------------------------------------------------------------------

// A convolution as the indirect kernel sees it: input planes (C, H, W) with a zero border,
// taps kh x kw, stride, output planes (O, OH, OW).
struct Indirect {
  int64_t C, H, W, ph, pw;  // input and its zero border (top/left; bottom/right as needed)
  int64_t kh, kw, sh, sw;
  int64_t O, OH, OW;
  int64_t hp = 0, wp = 0;  // the padded extents where given (a buffer shared by several convs)
  int64_t Hp() const { return hp ? hp : Window2d::padded_extent(H, kh, sh, ph, OH); }
  int64_t Wp() const { return wp ? wp : Window2d::padded_extent(W, kw, sw, pw, OW); }
  int64_t padded_size() const { return Hp() * Wp() * C; }

  // The convolution g itself (dx uses another geometry, see dx_indirect).
  static Indirect of(const Window2d& g) {
    return {g.C, g.H, g.W, g.ph, g.pw, g.kh, g.kw, g.sh, g.sw, g.O, g.OH, g.OW};
  }
};

// x (C, H, W) -> xp (Hp, Wp, C): NHWC with a zero border.
void pad_nhwc(const Indirect& cv, const float* x, float* xp) {
  const int64_t Hp = cv.Hp(), Wp = cv.Wp(), C = cv.C, H = cv.H, W = cv.W;
  // Only the border is zeroed; the inside is written once, below.
  std::fill(xp, xp + cv.ph * Wp * C, 0.f);
  std::fill(xp + (cv.ph + H) * Wp * C, xp + Hp * Wp * C, 0.f);
  for (int64_t h = 0; h < H; ++h) {
    float* row = xp + (h + cv.ph) * Wp * C;
    std::fill(row, row + cv.pw * C, 0.f);
    std::fill(row + (cv.pw + W) * C, row + Wp * C, 0.f);
  }
  // A (C x H*W) -> (H*W x C) transpose in groups of 16 channels (a pixel's 64-byte line when C
  // is 16): within a group, each row's pixels go 4 at a time through all its channels in 4 x 4
  // blocks in SSE registers (baseline on x86-64), so that a pixel's group is written whole while
  // x is read as 16 sequential streams. (4 channels at a time through all rows wrote each line
  // in four partial visits: the padding took 1.5x as long at 16 channels, 28x28; all C planes
  // at once, the loads waited on memory.) Then blocks of 8 channels, then single channels.
  const int64_t plane = H * W;
  float* inside = xp + (cv.ph * Wp + cv.pw) * C;
  int64_t c0 = 0;
#ifdef __SSE__
  for (int64_t g0 = 0; g0 + 4 <= C; g0 = c0) {
    const int64_t g1 = g0 + std::min<int64_t>(16, (C - g0) / 4 * 4);
    for (int64_t h = 0; h < H; ++h) {
      float* dst = inside + h * Wp * C;
      int64_t w = 0;
      for (; w + 4 <= W; w += 4)
        for (int64_t c = g0; c < g1; c += 4) {
          const float* s = x + (c * H + h) * W + w;
          __m128 r0 = _mm_loadu_ps(s), r1 = _mm_loadu_ps(s + plane);
          __m128 r2 = _mm_loadu_ps(s + 2 * plane), r3 = _mm_loadu_ps(s + 3 * plane);
          _MM_TRANSPOSE4_PS(r0, r1, r2, r3);
          _mm_storeu_ps(dst + w * C + c, r0);
          _mm_storeu_ps(dst + (w + 1) * C + c, r1);
          _mm_storeu_ps(dst + (w + 2) * C + c, r2);
          _mm_storeu_ps(dst + (w + 3) * C + c, r3);
        }
      for (; w < W; ++w)
        for (int64_t c = g0; c < g1; ++c) dst[w * C + c] = x[(c * H + h) * W + w];
    }
    c0 = g1;
  }
#endif
  for (; c0 + 8 <= C; c0 += 8)
    for (int64_t h = 0; h < H; ++h) {
      const float* s = x + (c0 * H + h) * W;
      for (int64_t w = 0; w < W; ++w) {
        float* d = inside + (h * Wp + w) * C + c0;
        for (int j = 0; j < 8; ++j) d[j] = s[j * plane + w];
      }
    }
  for (; c0 < C; ++c0)
    for (int64_t h = 0; h < H; ++h) {
      const float* s = x + (c0 * H + h) * W;
      for (int64_t w = 0; w < W; ++w) inside[(h * Wp + w) * C + c0] = s[w];
    }
}

// Offsets (floats) of each tap from a pixel's top-left tap in the padded NHWC image.
void tap_offsets(const Indirect& cv, int64_t* toff) {
  for (int64_t ki = 0; ki < cv.kh; ++ki)
    for (int64_t kj = 0; kj < cv.kw; ++kj) toff[ki * cv.kw + kj] = (ki * cv.Wp() + kj) * cv.C;
}

// Offset of output pixel p's top-left tap.
inline int64_t pixel_offset(const Indirect& cv, int64_t p) {
  return ((p / cv.OW) * cv.sh * cv.Wp() + (p % cv.OW) * cv.sw) * cv.C;
}

// Offsets (floats) of each tap row from a pixel's top-left tap. A tap row's kw taps lie next to
// each other in the NHWC image, so the convolution kernel reads each as one run of kw*C floats
// (its filters are packed in the same order): SeedNet's conv2 forward, with runs of 160 floats
// in place of 32, ran 3-7% faster.
std::vector<int64_t> tap_row_offsets(const Indirect& cv) {
  std::vector<int64_t> row_off(cv.kh);
  for (int64_t ki = 0; ki < cv.kh; ++ki) row_off[ki] = ki * cv.Wp() * cv.C;
  return row_off;
}

// Tiles [t0, t1) of one image's output (tile t: channel panel t / pixel_tiles, pixel tile
// t % pixel_tiles). xp: the padded image; row_off: tap_row_offsets; Wp: packed filters; bias:
// padded to whole panels.
void indirect_tiles(const GemmKernel& k, const Indirect& cv, const float* xp,
                    const int64_t* row_off, const float* Wp, const float* bias, bool relu, float* y,
                    int64_t t0, int64_t t1) {
  const int64_t P = cv.OH * cv.OW, T = cv.kh * cv.kw;
  const int64_t pixel_tiles = (P + k.cmr - 1) / k.cmr;
  const float* pix[64];
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t panel = t / pixel_tiles, p0 = (t % pixel_tiles) * k.cmr;
    const int m = static_cast<int>(std::min<int64_t>(k.cmr, P - p0));
    const int n = static_cast<int>(std::min<int64_t>(k.cnr, cv.O - panel * k.cnr));
    for (int i = 0; i < k.cmr; ++i) pix[i] = xp + pixel_offset(cv, p0 + (i < m ? i : 0));
    // Tap rows that fall in the zero border for every pixel of the tile are skipped: the
    // tile's output rows oh1..oh2 need tap rows ki with ph <= oh*sh + ki < H + ph.
    const int64_t oh1 = p0 / cv.OW, oh2 = (p0 + m - 1) / cv.OW;
    const int64_t ki0 = std::clamp<int64_t>(cv.ph - oh2 * cv.sh, 0, cv.kh);
    const int64_t ki1 = std::clamp<int64_t>(cv.H + cv.ph - oh1 * cv.sh, ki0, cv.kh);
    k.conv(ki1 - ki0, cv.kw * cv.C, pix, row_off + ki0,
           Wp + (panel * T + ki0 * cv.kw) * cv.C * k.cnr, bias ? bias + panel * k.cnr : nullptr,
           relu, y + panel * k.cnr * P + p0, P, 1, m, n);
  }
}

// indirect_tiles' tiles of one image: channel panels x pixel tiles.
int64_t indirect_tile_count(const GemmKernel& k, const Indirect& cv) {
  return (cv.O + k.cnr - 1) / k.cnr * ((cv.OH * cv.OW + k.cmr - 1) / k.cmr);
}

// All images: x (N, C, H, W) -> y (N, O, OH, OW).
void indirect_batch(const GemmKernel& k, const Indirect& cv, int64_t N, const float* x,
                    const float* Wp, const float* bias, bool relu, float* y) {
  const int threads = num_threads();
  const int64_t in_size = cv.C * cv.H * cv.W, out_size = cv.O * cv.OH * cv.OW;
  const int64_t tiles = indirect_tile_count(k, cv);
  const std::vector<int64_t> row_off = tap_row_offsets(cv);
  if (N >= threads || threads == 1) {  // whole images per thread
    parallel_chunks(N, 1, threads, [&](int64_t b, int64_t e) {
      float* xp = scratch(kPad, cv.padded_size());
      for (int64_t n = b; n < e; ++n) {
        pad_nhwc(cv, x + n * in_size, xp);
        indirect_tiles(k, cv, xp, row_off.data(), Wp, bias, relu, y + n * out_size, 0, tiles);
      }
    });
    return;
  }
  float* xp = scratch(kPad, cv.padded_size());  // few images: threads split each image's tiles
  for (int64_t n = 0; n < N; ++n) {
    pad_nhwc(cv, x + n * in_size, xp);
    parallel_range(tiles, threads, [&](int64_t b, int64_t e) {
      indirect_tiles(k, cv, xp, row_off.data(), Wp, bias, relu, y + n * out_size, b, e);
    });
  }
}

// Floats of O filters of T taps over C channels, packed for the indirect kernel.
int64_t packed_size(const GemmKernel& k, int64_t O, int64_t C, int64_t T) {
  return (O + k.cnr - 1) / k.cnr * T * C * k.cnr;
}

// Packs filters for the indirect kernel: Wp[panel][(t*C + c)*cnr + j] = filter (o, c, t) with
// o = panel*cnr + j; `at(o, c, t)` reads the caller's layout. Zero past O. Into Wp where given
// (packed_size floats), else into scratch.
template <class At>
float* pack_filters(const GemmKernel& k, int64_t O, int64_t C, int64_t T, At at,
                    float* Wp = nullptr) {
  const int64_t panels = (O + k.cnr - 1) / k.cnr;
  if (!Wp) Wp = scratch(kPacked, packed_size(k, O, C, T));
  for (int64_t q = 0; q < panels; ++q)
    for (int64_t t = 0; t < T; ++t)
      for (int64_t c = 0; c < C; ++c) {
        float* dst = Wp + ((q * T + t) * C + c) * k.cnr;
        for (int64_t j = 0; j < k.cnr; ++j) {
          const int64_t o = q * k.cnr + j;
          dst[j] = o < O ? at(o, c, t) : 0.f;
        }
      }
  return Wp;
}

// ---- Winograd path: 5x5 and 3x3, stride 1 (see winograd.h) -----------------------------------

// F(2x2, 5x5) runs a 5x5 stride-1 layer that the indirect kernel would (SeedNet's conv2 at batch
// 64, 2 threads on Zen 4: forward 5.7 -> 3.6 ms, dx 5.6 -> 3.4; see bench/RESULTS.md), and
// F(4x4, 3x3) a 3x3 one.
bool use_winograd(const GemmKernel& k, const Indirect& cv) {
  return g_algorithm == ConvAlgorithm::kAuto && k.cnr <= 64 && cv.kh == cv.kw &&
         (cv.kh == 5 || cv.kh == 3) && cv.sh == 1 && cv.sw == 1;
}

// The side of a forward tile: 2 outputs for F(2x2, 5x5), 4 for F(4x4, 3x3).
int winograd_tile(const Indirect& cv) {
  return cv.kh == 3 ? 4 : 2;
}

// cv's zero border extended to reach every `tile` x `tile` output block's input block: OH and
// OW rounded up to whole tiles.
Indirect winograd_padding(Indirect cv, int64_t tile) {
  cv.OH = (cv.OH + tile - 1) / tile * tile, cv.OW = (cv.OW + tile - 1) / tile * tile;
  return cv;
}

// Transformed filters for the convolution kernel: Up[((xi*panels + q)*C + c)*cnr + j] = point xi
// of G f G^T for the R x R filter f(t) = at(o, c, t) of output channel o = q*cnr + j (zero past
// O).
template <class At>
float* pack_winograd_filters(const GemmKernel& k, int64_t R, int64_t O, int64_t C, At at) {
  const int64_t panels = (O + k.cnr - 1) / k.cnr, ldu = panels * C * k.cnr;
  float* Up = scratch(kWinogradFilters, kWinogradPoints * ldu);
  parallel_range(panels * C, num_threads(), [&](int64_t b, int64_t e) {
    float f[25 * 64];  // a panel's filters side by side (cnr <= 64)
    for (int64_t qc = b; qc < e; ++qc) {
      const int64_t q = qc / C, c = qc % C;
      for (int t = 0; t < R * R; ++t)
        for (int64_t j = 0; j < k.cnr; ++j) {
          const int64_t o = q * k.cnr + j;
          f[t * k.cnr + j] = o < O ? at(o, c, t) : 0.f;
        }
      (R == 5 ? winograd5_filters : winograd43_filters)(f, k.cnr, Up + qc * k.cnr, ldu);
    }
  });
  return Up;
}

// The m tiles' outputs, A^T M A of winograd5_output or winograd43_output (output q = side*row +
// column of tile i, channel o at out[q * count + i * Opad + o]), plus bias, ReLU'd with relu,
// into y's NCHW planes (P floats apart, rows OW apart); place(i, &rows, &cols) gives tile i's
// offset in a plane and how many of its rows and columns are inside. A plane at a time, or four
// (writing a pixel's O channels at a time, lines P floats apart, put them in one set of the L1
// cache at 32x32: F(4x4, 3x3) at 16 channels then ran slower than the direct kernel); and for
// F(4x4, 3x3), four channels at a time through 4x4 transposes (the scalar copy took more time
// than the products at 16 channels, 32x32).
template <class Place>
void store_tiles(const float* out, int64_t count, int64_t Opad, int64_t O, int64_t side, int m,
                 Place place, const float* bias, bool relu, float* y, int64_t P, int64_t OW) {
  const float lo = relu ? 0.f : -INFINITY;  // max(v, lo): ReLU without a branch
  int64_t o = 0;
#ifdef __SSE__
  if (side == 4) {
    // max(lo, v): v where v is NaN (SSE's max returns its second operand), as std::max(v, lo).
    const __m128 lo4 = _mm_set1_ps(lo);
    for (; o + 4 <= O; o += 4) {
      const __m128 b4 = bias ? _mm_loadu_ps(bias + o) : _mm_setzero_ps();
      for (int i = 0; i < m; ++i) {
        int64_t rows, cols;
        float* dst = y + place(i, &rows, &cols) + o * P;
        const float* src = out + i * Opad + o;
        for (int64_t r = 0; r < rows; ++r) {
          __m128 v[4];
          for (int c = 0; c < 4; ++c)
            v[c] = _mm_max_ps(lo4, _mm_add_ps(_mm_loadu_ps(src + (4 * r + c) * count), b4));
          _MM_TRANSPOSE4_PS(v[0], v[1], v[2], v[3]);  // v[j]: channel o + j's four columns
          if (cols == 4) {
            for (int j = 0; j < 4; ++j) _mm_storeu_ps(dst + j * P + r * OW, v[j]);
          } else {
            alignas(16) float row[4];
            for (int j = 0; j < 4; ++j) {
              _mm_store_ps(row, v[j]);
              std::copy(row, row + cols, dst + j * P + r * OW);
            }
          }
        }
      }
    }
  }
#endif
  for (; o < O; ++o) {
    const float bo = bias ? bias[o] : 0.f;
    for (int i = 0; i < m; ++i) {
      int64_t rows, cols;
      float* dst = y + place(i, &rows, &cols) + o * P;
      const float* src = out + i * Opad + o;
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < cols; ++c)
          dst[r * OW + c] = std::max(src[(r * side + c) * count] + bo, lo);
    }
  }
}

// Blocks [b0, b1) of k.cmr output tiles of one image (tiles of winograd_tile's side, row-major
// over the TH x TW grid): each tile's 6x6 input block transformed (V), the 36 products V . U by
// the convolution kernel into M (a tile's channels side by side), then A^T M A, bias and ReLU
// into y's NCHW planes. xp: the image, NHWC, zero-bordered far enough for every tile's block.
// False if an output was Inf or NaN (then the caller runs the direct kernel instead, whose Inf
// and NaN reach only the outputs they should: the transforms would spread them over whole
// tiles).
bool winograd_blocks(const GemmKernel& k, const Indirect& cv, const Indirect& pad, const float* xp,
                     const float* Up, const float* bias, bool relu, float* y, int64_t b0,
                     int64_t b1) {
  const int64_t C = cv.C, O = cv.O, OH = cv.OH, OW = cv.OW, P = OH * OW;
  const int64_t side = winograd_tile(cv), outs = side * side;
  const int64_t TW = (OW + side - 1) / side, tiles = (OH + side - 1) / side * TW;
  const int64_t panels = (O + k.cnr - 1) / k.cnr, Opad = panels * k.cnr, row = pad.Wp() * C;
  const int64_t v_size = k.cmr * kWinogradPoints * C, m_size = kWinogradPoints * k.cmr * Opad;
  float* V = scratch(kWinogradBlock, v_size + m_size + outs * k.cmr * Opad);
  float* M = V + v_size;
  float* out = M + m_size;
  // The kernel writes n < cnr channels of the last panel: the rest stays zero, read but unused.
  if (Opad != O) std::fill(M, M + m_size, 0.f);
  const float* pix[64];
  int64_t toff[kWinogradPoints];  // V[i][xi][c]: tile i's point xi is at pix[i] + xi*C
  for (int xi = 0; xi < kWinogradPoints; ++xi) toff[xi] = xi * C;
  bool finite = true;
  for (int64_t blk = b0; blk < b1; ++blk) {
    const int64_t t0 = blk * k.cmr;
    const int m = static_cast<int>(std::min<int64_t>(k.cmr, tiles - t0));
    for (int i = 0; i < m; ++i) {
      const int64_t th = (t0 + i) / TW, tw = (t0 + i) % TW;
      winograd5_input(xp + (side * th * pad.Wp() + side * tw) * C, row, C,
                      V + i * kWinogradPoints * C, C);
    }
    for (int i = 0; i < k.cmr; ++i) pix[i] = V + (i < m ? i : 0) * kWinogradPoints * C;
    for (int xi = 0; xi < kWinogradPoints; ++xi)
      for (int64_t q = 0; q < panels; ++q) {
        const int n = static_cast<int>(std::min<int64_t>(k.cnr, O - q * k.cnr));
        k.conv(1, C, pix, toff + xi, Up + (xi * panels + q) * C * k.cnr, nullptr, false,
               M + xi * k.cmr * Opad + q * k.cnr, 1, Opad, m, n);
      }
    const int64_t count = m * Opad;
    finite &= (side == 4 ? winograd43_output : winograd5_output)(M, k.cmr * Opad, count, out);
    // Into y's planes: for each tile, its `rows` x `cols` outputs at y + (side*th)*OW + side*tw.
    store_tiles(
        out, count, Opad, O, side, m,
        [&](int i, int64_t* rows, int64_t* cols) {
          const int64_t th = (t0 + i) / TW, tw = (t0 + i) % TW;
          *rows = std::min(side, OH - side * th), *cols = std::min(side, OW - side * tw);
          return side * th * OW + side * tw;
        },
        bias, relu, y, P, OW);
  }
  return finite;
}

// winograd_blocks' blocks of an image: its tiles, k.cmr at a time.
int64_t winograd_block_count(const GemmKernel& k, const Indirect& cv) {
  const int64_t side = winograd_tile(cv);
  const int64_t tiles = (cv.OH + side - 1) / side * ((cv.OW + side - 1) / side);
  return (tiles + k.cmr - 1) / k.cmr;
}

// All images: x (N, C, H, W) -> y (N, O, OH, OW) by Winograd, with Up from
// pack_winograd_filters. False if an output was Inf or NaN (y is then to be recomputed).
bool winograd_batch(const GemmKernel& k, const Indirect& cv, int64_t N, const float* x,
                    const float* Up, const float* bias, bool relu, float* y) {
  const int threads = num_threads();
  const int64_t in_size = cv.C * cv.H * cv.W, out_size = cv.O * cv.OH * cv.OW;
  const int64_t blocks = winograd_block_count(k, cv);
  const Indirect pad = winograd_padding(cv, winograd_tile(cv));
  std::atomic<bool> finite{true};
  if (N >= threads || threads == 1) {  // whole images per thread
    parallel_chunks(N, 1, threads, [&](int64_t b, int64_t e) {
      float* xp = scratch(kPad, pad.padded_size());
      for (int64_t n = b; n < e; ++n) {
        pad_nhwc(pad, x + n * in_size, xp);
        if (!winograd_blocks(k, cv, pad, xp, Up, bias, relu, y + n * out_size, 0, blocks))
          finite.store(false, std::memory_order_relaxed);
      }
    });
    return finite.load();
  }
  float* xp = scratch(kPad, pad.padded_size());  // few images: threads split each image's blocks
  for (int64_t n = 0; n < N; ++n) {
    pad_nhwc(pad, x + n * in_size, xp);
    parallel_range(blocks, threads, [&](int64_t b, int64_t e) {
      if (!winograd_blocks(k, cv, pad, xp, Up, bias, relu, y + n * out_size, b, e))
        finite.store(false, std::memory_order_relaxed);
    });
  }
  return finite.load();
}

void forward_indirect(const GemmKernel& k, const Window2d& g, const float* x, const float* w,
                      const float* b, float* y, bool relu) {
  const int64_t T = g.kh * g.kw;
  if (use_winograd(k, Indirect::of(g))) {
    const float* Up = pack_winograd_filters(
        k, g.kh, g.O, g.C, [&](int64_t o, int64_t c, int t) { return w[(o * g.C + c) * T + t]; });
    if (winograd_batch(k, Indirect::of(g), g.N, x, Up, b, relu, y)) return;
  }
  const float* Wp = pack_filters(
      k, g.O, g.C, T, [&](int64_t o, int64_t c, int64_t t) { return w[(o * g.C + c) * T + t]; });
  float* bias = nullptr;
  if (b) {
    const int64_t padded = (g.O + k.cnr - 1) / k.cnr * k.cnr;
    bias = scratch(kBias, padded);
    std::fill(bias, bias + padded, 0.f);
    std::copy(b, b + g.O, bias);
  }
  indirect_batch(k, Indirect::of(g), g.N, x, Wp, bias, relu, y);
}

// dx's convolution for stride 1: dy (O channels, zero border k-1-p) with the flipped filters.
Indirect dx_convolution(const Window2d& g) {
  return {g.O, g.OH, g.OW, g.kh - 1 - g.ph, g.kw - 1 - g.pw, g.kh, g.kw, 1, 1, g.C, g.H, g.W};
}

// The filters as dx's convolution reads them: tap t of (output c, input o) is w's tap T-1-t of
// (o, c).
struct Flipped {
  const Window2d& g;
  const float* w;
  float operator()(int64_t c, int64_t o, int64_t t) const {
    const int64_t T = g.kh * g.kw;
    return w[(o * g.C + c) * T + (T - 1 - t)];
  }
};

// dx = dy convolved with the flipped filters (stride 1 only), by Winograd where it applies and
// `winograd` allows (with Up, the filters already transformed, where given).
void dx_indirect(const GemmKernel& k, const Window2d& g, const float* w, const float* dy, float* dx,
                 bool winograd = true, const float* Up = nullptr) {
  const Indirect cv = dx_convolution(g);
  if (winograd && use_winograd(k, cv) &&
      winograd_batch(k, cv, g.N, dy,
                     Up ? Up : pack_winograd_filters(k, g.kh, g.C, g.O, Flipped{g, w}), nullptr,
                     false, dx))
    return;
  indirect_batch(k, cv, g.N, dy, pack_filters(k, g.C, g.O, g.kh * g.kw, Flipped{g, w}), nullptr,
                 false, dx);
}

// dx by Winograd inside dw_winograd's pass over the images: each image's dy padded once, for
// both (a read of dy and its transposition fewer: dx + dW 2-3 % faster at 2 threads, 16 -> 16
// channels at 32x32 b128 7 %; ResNet-8's step about 2.5 %). The caller fills
// the first five; dw_winograd sets `taken` when it computed every image's dx, and clears
// `finite` where an output was Inf or NaN (dx then to be recomputed without Winograd).
struct WinogradDx {
  const GemmKernel* k;  // dx's convolution kernel
  Indirect cv, pad;     // dx's convolution of dy, and its Winograd padding
  const float* Up;      // the flipped filters, transformed (pack_winograd_filters)
  float* dx;
  bool taken = false;
  std::atomic<bool> finite{true};
};

// src (rows x cols) into dst's every sh-th row and sw-th column, dst's rows W apart; with add,
// added to what is there.
void put_strided(const float* src, int64_t rows, int64_t cols, int64_t sh, int64_t sw, int64_t W,
                 float* dst, bool add = false) {
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) {
      float& d = dst[i * sh * W + j * sw];
      d = add ? d + src[i * cols + j] : src[i * cols + j];
    }
}

// One residue class of a strided dx along one axis: the input positions a, a + s, a + 2s, ...
// (count n) receive only the taps r, r + s, ... (K of them) with r = (a + p) mod s, tap r + s*u
// reading dy at i + q - u for the class's i-th position, q = (a + p - r) / s. Flipped, that is
// a stride-1 correlation of dy with K taps and a leading zero border of K - 1 - q.
struct Phase {
  int64_t r, K, border, n;
  static Phase of(int64_t a, int64_t s, int64_t p, int64_t k, int64_t extent) {
    const int64_t r = (a + p) % s, K = r < k ? (k - r + s - 1) / s : 0;
    return {r, K, K - 1 - (a + p - r) / s, a < extent ? (extent - a + s - 1) / s : 0};
  }
};

// Strided dx as sh x sw stride-1 convolutions of dy, one per residue class of the input's rows
// and columns (a 3x3 stride-2 layer: sub-filters of 1x1, 1x2, 2x1 and 2x2 taps), each run by
// the indirect kernel and scattered into dx. The im2col path it replaces multiplied every
// image's dy by the whole filter matrix, then added the columns back (col2im), at 35-44 GFLOP/s
// against the indirect kernel's 90-100 on ResNet-8's stride-2 layers. Image by image: dy padded
// once (NHWC) with the largest border any phase needs, each phase reading it from its own
// corner, its result scattered into dx while still in the cache. (A pass over the batch per
// phase padded dy four times and wrote every phase's result out and back: ResNet-8's 16 -> 32
// layer's dx at 28x28, batch 64, ran 1.5x faster image by image.) False (nothing written) where
// a phase has no taps or would need a negative border, left to im2col.
bool dx_polyphase(const GemmKernel& k, const Window2d& g, const float* w, const float* dy,
                  float* dx) {
  // Every phase must have taps: positions no tap reaches (a padded 1x1 strided layer's) would
  // cost a pass of strided zero writes each, where im2col's one GEMM was faster.
  for (int64_t a = 0; a < g.sh; ++a)
    if (Phase h = Phase::of(a, g.sh, g.ph, g.kh, g.H); h.K == 0 || h.border < 0) return false;
  for (int64_t b = 0; b < g.sw; ++b)
    if (Phase v = Phase::of(b, g.sw, g.pw, g.kw, g.W); v.K == 0 || v.border < 0) return false;
  struct PhaseConv {
    int64_t a, b;     // the residue class: dx's rows a + sh*i, columns b + sw*j
    Phase h, v;       // its taps along the rows and the columns
    Indirect cv;      // dy (O channels) to the class's C x n_h x n_w values
    int64_t corner;   // its top-left in the shared padding (floats)
    int64_t filters;  // its packed filters' offset
    std::vector<int64_t> row_off;
    int64_t tiles;
  };
  std::vector<PhaseConv> phases;
  int64_t top = 0, left = 0, Hp = 0, Wp = 0, filter_floats = 0, sub_plane = 0;
  for (int64_t a = 0; a < g.sh; ++a)
    for (int64_t b = 0; b < g.sw; ++b) {
      const Phase h = Phase::of(a, g.sh, g.ph, g.kh, g.H), v = Phase::of(b, g.sw, g.pw, g.kw, g.W);
      if (h.n == 0 || v.n == 0) continue;
      const Indirect cv{g.O, g.OH, g.OW, h.border, v.border, h.K, v.K, 1, 1, g.C, h.n, v.n};
      phases.push_back({a, b, h, v, cv, 0, filter_floats, {}, 0});
      filter_floats += packed_size(k, g.C, g.O, h.K * v.K);
      top = std::max(top, h.border), left = std::max(left, v.border);
      sub_plane = std::max(sub_plane, h.n * v.n);
    }
  for (const PhaseConv& f : phases) {  // the rows and columns each phase reads, shifted
    Hp = std::max(Hp, top - f.cv.ph + f.cv.Hp()), Wp = std::max(Wp, left - f.cv.pw + f.cv.Wp());
  }
  const Indirect pad{g.O, g.OH, g.OW, top, left, 1, 1, 1, 1, 0, 0, 0, Hp, Wp};
  float* filters = scratch(kPhaseFilters, filter_floats);
  const int64_t T = g.kh * g.kw, plane = g.H * g.W;
  for (PhaseConv& f : phases) {
    const Phase &h = f.h, &v = f.v;
    pack_filters(
        k, g.C, g.O, h.K * v.K,
        [&](int64_t c, int64_t o, int64_t t) {
          const int64_t ki = h.r + g.sh * (h.K - 1 - t / v.K);
          const int64_t kj = v.r + g.sw * (v.K - 1 - t % v.K);
          return w[(o * g.C + c) * T + ki * g.kw + kj];
        },
        filters + f.filters);
    f.cv.hp = Hp, f.cv.wp = Wp;
    f.corner = ((top - f.cv.ph) * Wp + (left - f.cv.pw)) * g.O;
    f.row_off = tap_row_offsets(f.cv);
    f.tiles = indirect_tile_count(k, f.cv);
  }
  // Phase f's tiles [t0, t1) of padded image xp into sub (C x its values).
  const auto run = [&](const PhaseConv& f, const float* xp, float* sub, int64_t t0, int64_t t1) {
    indirect_tiles(k, f.cv, xp + f.corner, f.row_off.data(), filters + f.filters, nullptr, false,
                   sub, t0, t1);
  };
  // Channels [c0, c1) of every phase's values (phase i's at subs + i * C * sub_plane) into image
  // n's dx. With stride 2 along the rows, the two phases of a row class, columns b = 0 and 1,
  // are interleaved into whole rows of dx (a phase at a time, every other float: the put took
  // 11% of ResNet-8's 16 -> 32 stride-2 layer's backward at 28x28).
  const int64_t phase_floats = g.C * sub_plane;  // a phase's values in `subs`
  const auto put = [&](const float* subs, int64_t n, int64_t c0, int64_t c1) {
    for (size_t i = 0; i < phases.size(); ++i) {
      const PhaseConv& f = phases[i];
      const float* sub = subs + static_cast<int64_t>(i) * phase_floats;
      const int64_t rows = f.cv.OH, cols = f.cv.OW;
      const bool pair = g.sw == 2 && f.b == 0 && i + 1 < phases.size() && phases[i + 1].a == f.a &&
                        phases[i + 1].b == 1;
      for (int64_t c = c0; c < c1; ++c) {
        float* d = dx + (n * g.C + c) * plane + f.a * g.W;
        if (!pair) {
          put_strided(sub + c * rows * cols, rows, cols, g.sh, g.sw, g.W, d + f.b);
          continue;
        }
        const int64_t cols1 = phases[i + 1].cv.OW;  // cols or cols - 1
        const float* s0 = sub + c * rows * cols;
        const float* s1 = sub + phase_floats + c * rows * cols1;
        for (int64_t r = 0; r < rows; ++r, s0 += cols, s1 += cols1) {
          float* row = d + r * g.sh * g.W;
          for (int64_t j = 0; j < cols1; ++j) row[2 * j] = s0[j], row[2 * j + 1] = s1[j];
          if (cols > cols1) row[2 * cols1] = s0[cols1];
        }
      }
      if (pair) ++i;
    }
  };
  const int threads = num_threads();
  const int64_t sub_size = static_cast<int64_t>(phases.size()) * phase_floats;
  if (g.N >= threads || threads == 1) {  // whole images per thread
    parallel_chunks(g.N, 1, threads, [&](int64_t n0, int64_t n1) {
      float* xp = scratch(kPad, pad.padded_size());
      float* subs = scratch(kCol, sub_size);
      for (int64_t n = n0; n < n1; ++n) {
        pad_nhwc(pad, dy + n * g.O * g.OH * g.OW, xp);
        for (size_t i = 0; i < phases.size(); ++i)
          run(phases[i], xp, subs + static_cast<int64_t>(i) * phase_floats, 0, phases[i].tiles);
        put(subs, n, 0, g.C);
      }
    });
    return true;
  }
  float* xp = scratch(kPad, pad.padded_size());  // few images: threads split each phase
  float* subs = scratch(kCol, sub_size);
  for (int64_t n = 0; n < g.N; ++n) {
    pad_nhwc(pad, dy + n * g.O * g.OH * g.OW, xp);
    for (size_t i = 0; i < phases.size(); ++i) {
      float* sub = subs + static_cast<int64_t>(i) * phase_floats;
      parallel_range(phases[i].tiles, threads,
                     [&](int64_t t0, int64_t t1) { run(phases[i], xp, sub, t0, t1); });
    }
    parallel_range(g.C, threads, [&](int64_t c0, int64_t c1) { put(subs, n, c0, c1); });
  }
  return true;
}

// Sums of image n's O planes of dy (each in sum()'s fixed order).
void plane_sums(const Window2d& g, const float* dy, int64_t n, float* sums) {
  const int64_t P = g.pixels();
  for (int64_t o = 0; o < g.O; ++o) sums[o] = sum(dy + (n * g.O + o) * P, P);
}

// db[o] = the sum over images, in image order and in double, of the plane sums (N x O).
void db_of_plane_sums(const Window2d& g, const float* sums, float* db) {
  std::vector<double> acc(g.O, 0.0);
  for (int64_t n = 0; n < g.N; ++n)
    for (int64_t o = 0; o < g.O; ++o) acc[o] += sums[n * g.O + o];
  for (int64_t o = 0; o < g.O; ++o) db[o] = static_cast<float>(acc[o]);
}

// dw (O, C, T), PyTorch's layout, from `parts` partial gradients in the GEMM's (O, T, C) layout,
// O*T*C floats apart, added in order; output channels split over the threads.
void sum_to_oct(const float* parts, int64_t count, int64_t O, int64_t T, int64_t C, float* dw,
                int threads) {
  const int64_t size = O * T * C;
  parallel_range(O, threads, [&](int64_t o0, int64_t o1) {
    float acc[64];  // a row's channels, 64 at a time
    for (int64_t o = o0; o < o1; ++o)
      for (int64_t t = 0; t < T; ++t)
        for (int64_t c0 = 0; c0 < C; c0 += 64) {
          const int64_t n = std::min<int64_t>(64, C - c0);
          const float* p = parts + (o * T + t) * C + c0;
          std::copy(p, p + n, acc);
          for (int64_t s = 1; s < count; ++s)
            for (int64_t c = 0; c < n; ++c) acc[c] += p[s * size + c];
          for (int64_t c = 0; c < n; ++c) dw[(o * C + c0 + c) * T + t] = acc[c];
        }
  });
}

// dw (O, C, kh, kw) = sum over images and pixels of dy (x) col, as one GEMM with K = N*P; and
// db (when not null) from dy's plane sums, taken on the same pass over dy.
void dw_indirect(const GemmKernel& k, const Window2d& g, const float* x, const float* dy, float* dw,
                 float* db) {
  const int64_t T = g.kh * g.kw, P = g.pixels(), TC = T * g.C;
  const Indirect cv = Indirect::of(g);
  const int64_t img = cv.padded_size(), in_size = g.C * g.H * g.W;
  const int threads = num_threads();

  std::vector<int64_t> toff(T), col_off(TC), pix_off(P);
  tap_offsets(cv, toff.data());
  for (int64_t j = 0; j < TC; ++j) col_off[j] = toff[j / g.C] + j % g.C;
  for (int64_t p = 0; p < P; ++p) pix_off[p] = pixel_offset(cv, p);

  // A = dy as (O x N*P): element (o, k) = dy[n][o][p] with k = n*P + p, transposed into panels
  // of mr rows, in blocks of at most kb columns: a block's panels lie next to each other (panel
  // q, column kk of the block starting at b0, len wide, at b0*a_rows + (q*len + kk - b0)*mr,
  // counted from the start of the panels' buffer). Blocks start at each segment's (or image's)
  // first column, see below. The in-place-B path reads a block where it lies; the GEMM path (one
  // block, kb = K) copies panels into its own blocks.
  const int mr = k.mr;
  const int64_t K = g.N * P, a_panels = (g.O + mr - 1) / mr, a_rows = a_panels * mr;
  const bool in_place_b = k.fn_indirect_b && g.C > 0 && g.C % k.nr == 0;
  // In-place B: blocks of kb columns (the kernel's dw_kb, geometry.h) whose B panel (kb
  // scattered rows of nr floats, read by every A panel in turn) stays in L1 while the block's A
  // panels stream from L2. (Read from whole-K panels, K*mr floats apart, the A panels fell on
  // the same cache sets: a tenth of the kernel's loads missed L1 in cachegrind.)
  const int64_t kb = in_place_b ? k.dw_kb : K;
  // In-place B, K also goes in segments of whole images, each summed into its own partial dw,
  // the partials added in segment order at the end. The segments depend on the shapes only,
  // never on the thread count, and so do the results.
  const int64_t segments_max =
      in_place_b ? std::clamp<int64_t>(kDwPartialFloats / (g.O * TC), 1, 8) : 1;
  const int64_t seg_images = (g.N + segments_max - 1) / segments_max;
  const int64_t seg_len = std::max<int64_t>(seg_images * P, 1);
  const int64_t segments = (K + seg_len - 1) / seg_len;
  // Where an image has pixels enough for half a block, blocks also lie within one image (its
  // pixels in equal blocks of at most kb), so that a tap row reads its valid pixels, those
  // whose tap falls inside the image, as one range (see below).
  const bool image_blocks = in_place_b && 2 * P >= kb;
  const int64_t per_image = image_blocks ? (P + kb - 1) / kb : 1;
  const int64_t image_kb = (P + per_image - 1) / per_image;
  // The block holding column kk: [*b0, *b1).
  auto block_of = [&](int64_t kk, int64_t* b0, int64_t* b1) {
    if (image_blocks) {
      const int64_t s0 = kk / P * P;
      *b0 = s0 + (kk - s0) / image_kb * image_kb;
      *b1 = std::min(*b0 + image_kb, s0 + P);
      return;
    }
    const int64_t s0 = kk / seg_len * seg_len;
    *b0 = s0 + (kk - s0) / kb * kb;
    *b1 = std::min({*b0 + kb, s0 + seg_len, K});
  };
  auto a_at = [&](int64_t q, int64_t kk) {
    int64_t b0, b1;
    block_of(kk, &b0, &b1);
    return b0 * a_rows + (q * (b1 - b0) + kk - b0) * mr;
  };
  // Image n made ready: x padded into xp (NHWC with a zero border), dy transposed into the
  // panels (their buffer starting at column k_base), and dy's planes summed (N x O), for db and
  // for the in-place path's skipping below: a plane holds an Inf or a NaN only if its sum is
  // not finite (a sum of finite values may overflow too, which only turns the skipping off).
  std::vector<float> sums(db || in_place_b ? g.N * g.O : 0);
  auto prepare = [&](int64_t n, float* xp, float* panels, int64_t k_base) {
    pad_nhwc(cv, x + n * in_size, xp);
    if (!sums.empty()) plane_sums(g, dy, n, sums.data() + n * g.O);
    for (int64_t q = 0; q < a_panels; ++q)
      for (int64_t k0 = n * P; k0 < (n + 1) * P;) {  // the image's pixels, block by block
        int64_t b0, b1;
        block_of(k0, &b0, &b1);
        const int64_t k1 = std::min(b1, (n + 1) * P);
        const float* src[kMaxInterleaveRows];
        for (int i = 0; i < mr; ++i) {
          const int64_t o = q * mr + i;
          src[i] = o < g.O ? dy + (n * g.O + o) * P + (k0 - n * P) : nullptr;
        }
        interleave_rows(src, mr, k1 - k0, panels + a_at(q, k0) - k_base * a_rows);
        k0 = k1;
      }
  };
  if (g.N * P == 0) {
    std::fill(dw, dw + g.O * TC, 0.f);
    return;
  }
  if (in_place_b) {
    // Nothing packed: a block of A is read where it lies in the panels, and a B panel (nr
    // channels of one tap) in place from the images through one pointer per pixel. With
    // segments enough for the threads (or one thread), a thread takes a segment at a time and
    // makes its images ready in its own buffers, which stay in its L2 for the products (ResNet-
    // 8's 16 -> 32 channel 3x3 stride-2 dW at 28x28 batch 64: 2.45 -> 0.92 ms at 2 threads; made
    // ready all at once first, the batch went to memory and came back). With fewer, the
    // images are made ready first (split over the threads), and a work item is a segment's
    // group of dw's column panels, about 8 items a thread (SeedNet's conv2 dW at 2 threads:
    // 6-10% faster than 4, the same as 16); each thread takes a contiguous run of items. Each
    // element of a partial is summed by one item, in order.
    //
    // A panel's tap row ki reads the zero border for the output rows outside [lo, hi): those
    // pixels are skipped, their products being zeros (SeedNet's conv2, 5x5 taps with padding 2
    // on 14x14: 6 of every 70 (tap row, output row) pairs, 9% of dW's products; dW ran 7-11%
    // faster at 1 and 2 threads).
    // Only where the segment's dy is finite, though: Inf or NaN times a zero of the border is
    // NaN, as in the reference and PyTorch, and must reach dw.
    std::vector<int64_t> lo(g.kh, 0), hi(g.kh, P);  // pixel ranges of an image, per tap row
    for (int64_t ki = 0; ki < g.kh; ++ki) {
      // Output row oh reads input row oh*sh + ki - ph, valid in [0, H).
      const int64_t first = g.ph - ki <= 0 ? 0 : (g.ph - ki + g.sh - 1) / g.sh;
      const int64_t last = g.H + g.ph - ki - 1;  // the largest valid oh*sh
      const int64_t end = last < 0 ? 0 : last / g.sh + 1;
      lo[ki] = std::min(first, g.OH) * g.OW;
      hi[ki] = std::max(lo[ki], std::min(end, g.OH) * g.OW);
    }
    const int64_t n_panels = TC / k.nr;
    const bool own = threads == 1 || segments >= threads;
    const int64_t groups =
        own ? 1 : std::clamp<int64_t>((8 * threads + segments - 1) / segments, 1, n_panels);
    const int64_t group = (n_panels + groups - 1) / groups;
    float* partials = scratch(kDwPartials, segments * g.O * TC);
    // Image n's dy is finite: its products with the zero border may then be skipped.
    auto finite = [&](int64_t n) {
      return std::all_of(sums.begin() + n * g.O, sums.begin() + (n + 1) * g.O,
                         [](float v) { return std::isfinite(v); });
    };
    // Columns [c0, c1) (whole blocks of segment s) into its partial, column panels [j0, j1):
    // the images at xp (image c0 / P first), the A panels at panels (column c0 first). The
    // partial's columns are zeroed before its first columns.
    auto run = [&](int64_t s, int64_t c0, int64_t c1, int64_t j0, int64_t j1, const float* xp,
                   const float* panels) {
      thread_local std::vector<const float*> rows;
      rows.resize(kb);
      float* part = partials + s * g.O * TC;
      if (c0 == s * seg_len)
        for (int64_t o = 0; o < g.O; ++o)
          std::fill(part + o * TC + j0 * k.nr, part + o * TC + j1 * k.nr, 0.f);
      for (int64_t pc = c0, b0, b1; pc < c1; pc = b1) {
        block_of(pc, &b0, &b1);
        const int64_t kc = b1 - pc;
        for (int64_t kk = 0; kk < kc; ++kk) {
          const int64_t kg = pc + kk, n = kg / P;
          rows[kk] = xp + (n - c0 / P) * img + pix_off[kg - n * P];
        }
        const float* a_block = panels + a_at(0, pc) - c0 * a_rows;
        for (int64_t n = pc / P; n * P < b1; ++n) {  // the block's part of image n
          const bool skip = finite(n);
          for (int64_t jr = j0; jr < j1; ++jr) {
            const int64_t ki = jr * k.nr / g.C / g.kw;
            const int64_t k0 = std::max(pc, n * P + (skip ? lo[ki] : 0));
            const int64_t k1 = std::min(b1, n * P + (skip ? hi[ki] : P));
            if (k0 >= k1) continue;
            k.fn_indirect_b(k1 - k0, a_block + (k0 - pc) * mr, kc * mr, static_cast<int>(g.O),
                            rows.data() + k0 - pc, col_off[jr * k.nr], part + jr * k.nr, TC, true);
          }
        }
      }
    };
    if (own) {
      // Where blocks lie within images, an image at a time (the scratch then holds one image,
      // not a segment: as fast, ResNet-8's 16 -> 32 stride-2 dW at 32x32 batch 128 2.5 ms
      // either way), else a segment at a time.
      const int64_t step = image_blocks ? 1 : seg_images;
      parallel_chunks(segments, 1, threads, [&](int64_t s0, int64_t s1) {
        float* xp = scratch(kPad, step * img);
        float* panels = scratch(kDyPanels, a_rows * step * P);
        for (int64_t s = s0; s < s1; ++s) {
          const int64_t n_end = std::min(g.N, (s + 1) * seg_images);
          for (int64_t n0 = s * seg_images; n0 < n_end; n0 += step) {
            const int64_t n1 = std::min(n_end, n0 + step);
            for (int64_t n = n0; n < n1; ++n) prepare(n, xp + (n - n0) * img, panels, n0 * P);
            run(s, n0 * P, n1 * P, 0, n_panels, xp, panels);
          }
        }
      });
    } else {
      float* xp = scratch(kPad, g.N * img);
      float* panels = scratch(kDyPanels, a_rows * K);
      parallel_chunks(g.N, 1, threads, [&](int64_t n0, int64_t n1) {
        for (int64_t n = n0; n < n1; ++n) prepare(n, xp + n * img, panels, 0);
      });
      parallel_chunks(segments * groups, 1, threads, [&](int64_t item0, int64_t item1) {
        for (int64_t item = item0; item < item1; ++item) {
          const int64_t s = item / groups, c0 = s * seg_len, c1 = std::min(c0 + seg_len, K);
          const int64_t j0 = item % groups * group, j1 = std::min(j0 + group, n_panels);
          if (j0 < j1)  // the last groups may be empty
            run(s, c0, c1, j0, j1, xp + c0 / P * img, panels + c0 * a_rows);
        }
      });
    }
    if (db) db_of_plane_sums(g, sums.data(), db);
    sum_to_oct(partials, segments, g.O, T, g.C, dw, threads);
  } else {
    float* xp = scratch(kPad, g.N * img);
    float* dy_panels = scratch(kDyPanels, a_rows * K);
    parallel_chunks(g.N, 1, threads, [&](int64_t n0, int64_t n1) {
      for (int64_t n = n0; n < n1; ++n) prepare(n, xp + n * img, dy_panels, 0);
    });
    if (db) db_of_plane_sums(g, sums.data(), db);
    auto pack_a = [&](int64_t i0, int64_t, int64_t p0, int64_t kc, int, float* Ap, int64_t q0,
                      int64_t q1) {
      for (int64_t q = q0; q < q1; ++q)
        std::memcpy(Ap + q * mr * kc, dy_panels + a_at(i0 / mr + q, p0), sizeof(float) * mr * kc);
    };
    // B = col as (N*P x T*C): element (k, j) = padded image n at pixel p, tap j / C, channel j % C.
    auto pack_b = [&](int64_t p0, int64_t kc, int64_t j0, int64_t nc, int nr, float* Bp, int64_t q0,
                      int64_t q1) {
      for (int64_t q = q0; q < q1; ++q) {
        const int64_t c0 = j0 + q * nr, cols = std::min<int64_t>(nr, j0 + nc - c0);
        const bool one_tap = (c0 % g.C) + cols <= g.C;  // contiguous channels of one tap
        float* dst = Bp + q * nr * kc;
        for (int64_t kk = 0; kk < kc; ++kk) {
          const int64_t kg = p0 + kk, n = kg / P, p = kg % P;
          const float* base = xp + n * img + pix_off[p];
          float* d = dst + kk * nr;
          if (one_tap) {
            std::memcpy(d, base + col_off[c0], sizeof(float) * cols);
          } else {
            for (int64_t j = 0; j < cols; ++j) d[j] = base[col_off[c0 + j]];
          }
          for (int64_t j = cols; j < nr; ++j) d[j] = 0.f;
        }
      }
    };
    float* dw_tc = scratch(kDw, g.O * TC);  // (O, T, C)
    gemm_blocked(k, g.O, TC, K, pack_a, pack_b, dw_tc, TC, GemmEpilogue{}, threads);
    sum_to_oct(dw_tc, 1, g.O, T, g.C, dw, threads);
  }
}

// dw by Winograd's F(2x2, 5x5) (see winograd.h): for each 2x2 block of dy and the 6x6 block of
// x under it, D = A dy A^T (O channels) and V = B^T x B (C channels); the 36 products
// M[xi] (O x C) = sum over blocks of D[xi]^T V[xi] run through the in-place-B GEMM kernel (D in
// its A panels, V's rows read where they lie), then dw = G^T M G. The batch goes in segments of
// whole images fixed by the shapes (as dw_indirect's), each summed into its own partial M by one
// thread, the partials then added in segment order: the result does not depend on the thread
// count. False (dw not written) if a sum is Inf or NaN: the caller then runs dw_indirect, whose
// Inf and NaN land where the direct sums put them.
bool use_winograd_dw(const GemmKernel& k, const Window2d& g) {
  return g_algorithm == ConvAlgorithm::kAuto && g.kh == g.kw && (g.kh == 5 || g.kh == 3) &&
         g.sh == 1 && g.sw == 1 && k.fn_indirect_b && g.C > 0 && g.C % k.nr == 0;
}

// The transforms of F(S x S, R x R): S = 2, R = 5 or 3; S = 4, R = 3.
template <int R, int S>
struct WinogradDw {
  static constexpr int kSide = R + S - 1, kPoints = kSide * kSide;
  static void input(const float* d, int64_t row, int64_t C, float* V, int64_t ldv) {
    (kSide == 6 ? winograd5_input : winograd3_input)(d, row, C, V, ldv);
  }
  static void dy(const float* g, int64_t row, int64_t O, int mr, float* D, int64_t ld_xi,
                 int64_t ld_panel) {
    (R == 5   ? winograd5_dy
     : S == 4 ? winograd43_dy
              : winograd3_dy)(g, row, O, mr, D, ld_xi, ld_panel);
  }
  static bool dw(const float* m, int64_t ld, int64_t count, float* out) {
    return (R == 5 ? winograd5_dw : S == 4 ? winograd43_dw : winograd3_dw)(m, ld, count, out);
  }
};

template <int R, int S>
bool dw_winograd(const GemmKernel& k, const Window2d& g, const float* x, const float* dy, float* dw,
                 WinogradDx* fx = nullptr) {
  using Wd = WinogradDw<R, S>;
  constexpr int64_t kPoints = Wd::kPoints;
  // 2x2 blocks a GEMM call: 64 (SeedNet conv2's dw: 8.7 -> 7.0 ms on one Zen 4 core against 32,
  // the K of its products twice as long; V, D and M then take 1.2 MB).
  constexpr int64_t kBlock = 64;
  const int64_t C = g.C, O = g.O, OH = g.OH, OW = g.OW, mr = k.mr;
  const int64_t TH = (OH + S - 1) / S, TW = (OW + S - 1) / S, tiles = TH * TW;
  // Small images go several to a GEMM call, whole images up to kBlock tiles (64 channels at 7x7
  // by F(4x4, 3x3): 4 tiles an image, the products' K 4 -> 64, dW 1.96 -> 1.53 ms).
  const int64_t group = tiles >= kBlock ? 1 : kBlock / std::max<int64_t>(tiles, 1);
  const int64_t a_panels = (O + mr - 1) / mr;
  // x, NHWC, zero-bordered to reach every block's (R+S-1)x(R+S-1) input; dy, NHWC, zero rows
  // and columns up to whole S x S blocks.
  const Indirect xcv = winograd_padding(Indirect::of(g), S);
  const Indirect dcv{O, OH, OW, 0, 0, S, S, S, S, O, TH, TW};
  const int64_t m_size = kPoints * O * C;
  if (g.N == 0 || tiles == 0) return false;
  const int64_t segments =
      std::min<int64_t>(g.N, std::clamp<int64_t>(kDwPartialFloats / m_size, 1, 8));
  const int64_t seg_images = (g.N + segments - 1) / segments;
  const int64_t used = (g.N + seg_images - 1) / seg_images;  // segments with images
  float* partials = scratch(kDwPartials, used * m_size);
  const int threads = num_threads();
  // With fx, and segments enough for the threads: dy padded as dx's convolution wants it, and
  // dw's blocks read from inside its border (where it reaches past them: zeros).
  const bool with_dx = fx && (threads == 1 || used >= threads) &&
                       fx->cv.ph + TH * S <= fx->pad.Hp() && fx->cv.pw + TW * S <= fx->pad.Wp();
  const Indirect& dpad = with_dx ? fx->pad : dcv;
  const int64_t d_at = with_dx ? (fx->cv.ph * dpad.Wp() + fx->cv.pw) * O : 0;
  const int64_t ximg = xcv.padded_size(), dimg = dpad.padded_size();
  const int64_t dx_size = g.C * g.H * g.W;
  const int64_t dx_blocks = with_dx ? winograd_block_count(*fx->k, fx->cv) : 0;
  parallel_chunks(used, 1, threads, [&](int64_t s0, int64_t s1) {
    const int64_t v_size = kPoints * kBlock * C;
    const int64_t d_size = kPoints * a_panels * kBlock * mr;
    float* buf = scratch(kWinogradDw, ximg + dimg + v_size + d_size);
    float *xp = buf, *dyp = xp + ximg, *V = dyp + dimg, *D = V + v_size;
    const float* rows[kBlock];
    for (int64_t kk = 0; kk < kBlock; ++kk) rows[kk] = V + kk * C;
    for (int64_t seg = s0; seg < s1; ++seg) {
      // M[xi][o][c], written whole by the segment's first GEMM calls, then added to. (Zeroed first,
      // 590 KB a segment at 64 channels, it took 10% of a 64 -> 64 7x7 layer's backward.)
      float* M = partials + seg * m_size;
      const int64_t first = seg * seg_images;
      const int64_t last = std::min(g.N, (seg + 1) * seg_images);
      for (int64_t n0 = first, padded = -1; n0 < last; n0 += group) {
        const int64_t count = (std::min(last, n0 + group) - n0) * tiles;  // the group's blocks
        for (int64_t t0 = 0; t0 < count; t0 += kBlock) {
          const int64_t kc = std::min(kBlock, count - t0);
          for (int64_t kk = 0; kk < kc; ++kk) {
            const int64_t n = n0 + (t0 + kk) / tiles, t = (t0 + kk) % tiles;
            if (n != padded) {
              pad_nhwc(xcv, x + n * C * g.H * g.W, xp);
              pad_nhwc(dpad, dy + n * O * OH * OW, dyp);
              if (with_dx && !winograd_blocks(*fx->k, fx->cv, fx->pad, dyp, fx->Up, nullptr, false,
                                              fx->dx + n * dx_size, 0, dx_blocks))
                fx->finite.store(false, std::memory_order_relaxed);
              padded = n;
            }
            const int64_t th = t / TW, tw = t % TW;
            Wd::input(xp + (S * th * xcv.Wp() + S * tw) * C, xcv.Wp() * C, C, V + kk * C,
                      kBlock * C);
            Wd::dy(dyp + d_at + (S * th * dpad.Wp() + S * tw) * O, dpad.Wp() * O, O,
                   static_cast<int>(mr), D + kk * mr, a_panels * kc * mr, kc * mr);
          }
          for (int xi = 0; xi < kPoints; ++xi)
            for (int64_t c0 = 0; c0 < C; c0 += k.nr)
              k.fn_indirect_b(kc, D + xi * a_panels * kc * mr, kc * mr, static_cast<int>(O), rows,
                              xi * kBlock * C + c0, M + xi * O * C + c0, C, n0 != first || t0 != 0);
        }
      }
    }
  });
  if (with_dx) fx->taken = true;
  // The partials added in segment order (into the first), then G^T M G for each (o, c).
  parallel_range(m_size, threads, [&](int64_t e0, int64_t e1) {
    for (int64_t seg = 1; seg < used; ++seg) {
      const float* src = partials + seg * m_size;
      for (int64_t e = e0; e < e1; ++e) partials[e] += src[e];
    }
  });
  std::atomic<bool> finite{true};
  parallel_range(O * C, threads, [&](int64_t e0, int64_t e1) {
    if (!Wd::dw(partials + e0, O * C, e1 - e0, dw + e0 * R * R))
      finite.store(false, std::memory_order_relaxed);
  });
  return finite.load();
}

// A 3x3 layer's dW by F(4x4, 3x3) rather than F(2x2, 3x3): 36 points a 4x4 block of dy instead of
// 16 a 2x2 block, 0.56x the transforms and products, unless rounding the output up to whole 4x4
// blocks adds a tenth to what whole 2x2 blocks cover. (dW at 2 threads, 64 images of 16
// channels at 28x28: 1.44 -> 1.02 ms; 64 at 7x7: 1.66 -> 1.56; 128 images of 32 channels at
// 16x16: 3.96 -> 2.13; but 64 images of 32 channels at 14x14, covered by 16x16: 0.93 -> 1.11.)
bool dw_winograd_4x4_pays(const Window2d& g) {
  const auto up = [](int64_t v, int64_t s) { return (v + s - 1) / s * s; };
  return up(g.OH, 4) * up(g.OW, 4) * 10 <= up(g.OH, 2) * up(g.OW, 2) * 11;
}

// ---- direct path (few input channels) ----------------------------------------------------------

Direct2d direct_geometry(const Window2d& g) {
  return Direct2d{g.C,
                  Window2d::padded_extent(g.H, g.kh, g.sh, g.ph, g.OH),
                  Window2d::padded_extent(g.W, g.kw, g.sw, g.pw, g.OW),
                  g.kh,
                  g.kw,
                  g.sh,
                  g.sw,
                  g.O,
                  g.OH,
                  g.OW};
}

int64_t direct_image_size(const Direct2d& d) {
  return d.C * d.Hp * d.Wp + kDirectSlack;
}

// x (C, H, W) -> xp (C, Hp, Wp) with a zero border, then kDirectSlack zeros.
void pad_nchw(const Window2d& g, const Direct2d& d, const float* x, float* xp) {
  std::fill(xp, xp + direct_image_size(d), 0.f);
  for (int64_t c = 0; c < g.C; ++c)
    for (int64_t h = 0; h < g.H; ++h)
      std::copy(x + (c * g.H + h) * g.W, x + (c * g.H + h + 1) * g.W,
                xp + (c * d.Hp + h + g.ph) * d.Wp + g.pw);
}

void forward_direct(const GemmKernel& k, const Window2d& g, const float* x, const float* w,
                    const float* b, float* y, bool relu) {
  const Direct2d d = direct_geometry(g);
  const int64_t in_size = g.C * g.H * g.W, out_size = g.O * g.OH * g.OW, img = direct_image_size(d);
  const int threads = num_threads();
  if (g.N >= threads || threads == 1) {
    parallel_chunks(g.N, 1, threads, [&](int64_t b0, int64_t b1) {
      float* xp = scratch(kPad, img);
      for (int64_t n = b0; n < b1; ++n) {
        pad_nchw(g, d, x + n * in_size, xp);
        k.direct_fwd(d, xp, w, b, relu, y + n * out_size, 0, g.O);
      }
    });
    return;
  }
  float* xp = scratch(kPad, img);  // few images: threads split the output channels
  for (int64_t n = 0; n < g.N; ++n) {
    pad_nchw(g, d, x + n * in_size, xp);
    parallel_range(g.O, threads, [&](int64_t o0, int64_t o1) {
      k.direct_fwd(d, xp, w, b, relu, y + n * out_size, o0, o1);
    });
  }
}

void dw_direct(const GemmKernel& k, const Window2d& g, const float* x, const float* dy, float* dw) {
  const Direct2d d = direct_geometry(g);
  const int64_t in_size = g.C * g.H * g.W, img = direct_image_size(d);
  const int threads = num_threads();
  float* xp = scratch(kPad, g.N * img);
  parallel_range(g.N, threads, [&](int64_t b0, int64_t b1) {
    for (int64_t n = b0; n < b1; ++n) pad_nchw(g, d, x + n * in_size, xp + n * img);
  });
  // Threads take chunks of output channels: each dw element is summed by one thread, in order.
  const int64_t chunk = std::max<int64_t>(1, (g.O + 4 * threads - 1) / (4 * threads));
  parallel_chunks(g.O, chunk, threads,
                  [&](int64_t o0, int64_t o1) { k.direct_dw(d, g.N, xp, img, dy, dw, o0, o1); });
}

bool use_direct(const GemmKernel& k, const Window2d& g) {
  return g_algorithm != ConvAlgorithm::kIm2col && k.direct_fwd && g.C <= 4 &&
         g.kw <= kDirectMaxKw && g.kh <= kDirectMaxKw && g.sw <= 3;
}

bool use_indirect(const GemmKernel& k, int64_t out_channels) {
  return g_algorithm != ConvAlgorithm::kIm2col && k.conv && k.cmr <= 64 &&
         out_channels * 2 >= k.cnr;
}

}  // namespace

void set_conv_algorithm(ConvAlgorithm a) {
  g_algorithm = a;
}
ConvAlgorithm conv_algorithm() {
  return g_algorithm;
}

// ---- forward ----------------------------------------------------------------------------------

namespace {
// The kernel for an indirect convolution with `channels` output channels: the active one, or
// its narrow companion (AVX-512 -> AVX2) when they fill at most half of its tile. (A ResNet's
// 16-channel 3x3 convolutions at 28x28 ran 1.6x faster forward and 1.9x faster for dx with the
// AVX2 kernels than with the half-empty AVX-512 ones, on Zen 4.)
const GemmKernel& tile_kernel(const GemmKernel& k, int64_t channels) {
  const GemmKernel* narrow = gemm_narrow_kernel(k);
  return narrow && channels * 2 <= k.cnr ? *narrow : k;
}

// The kernel for the weight gradient over C input channels: the narrow one where C fills its
// B panels but not the active kernel's, so that B is read in place (C = 16, 48 for AVX-512: dW
// 2.2x faster at 16 channels on Zen 4).
const GemmKernel& dw_kernel(const GemmKernel& k, int64_t C) {
  const GemmKernel* narrow = gemm_narrow_kernel(k);
  return narrow && C % k.nr != 0 && C % narrow->nr == 0 ? *narrow : k;
}

// A 1x1 convolution without padding reads only the pixels its stride lands on: it is the
// stride-1 convolution gs of those pixels, gathered first. (ResNet's projection shortcuts, 1x1
// with stride 2, had the whole input transposed for their forward and weight gradient, to use a
// quarter of it, and dx went through im2col; gathered, ResNet-8's 16->32 shortcut at 2 threads
// ran 1.2x faster forward and 1.1x backward at 28x28 batch 64, 1.9x and 1.5x at 32x32 batch 128.)
bool strided_pointwise(const Window2d& g, Window2d* gs) {
  if (g_algorithm == ConvAlgorithm::kIm2col || g.kh != 1 || g.kw != 1 || g.ph != 0 || g.pw != 0 ||
      (g.sh == 1 && g.sw == 1))
    return false;
  *gs = g;
  gs->H = g.OH, gs->W = g.OW, gs->sh = gs->sw = 1;
  gs->finish();
  return true;
}

// x (N, C, H, W) -> xs (N, C, OH, OW): the pixels a 1x1 window with g's stride lands on.
void gather_strided(const Window2d& g, const float* x, float* xs) {
  parallel_range(g.N * g.C, num_threads(), [&](int64_t q0, int64_t q1) {
    for (int64_t q = q0; q < q1; ++q)
      for (int64_t i = 0; i < g.OH; ++i) {
        const float* src = x + (q * g.H + i * g.sh) * g.W;
        float* dst = xs + (q * g.OH + i) * g.OW;
        for (int64_t j = 0; j < g.OW; ++j) dst[j] = src[j * g.sw];
      }
  });
}

// The reverse: dx = dxs at those pixels, 0 elsewhere; with add, dx += dxs there.
void scatter_strided(const Window2d& g, const float* dxs, float* dx, bool add) {
  parallel_range(g.N * g.C, num_threads(), [&](int64_t q0, int64_t q1) {
    if (!add) std::fill(dx + q0 * g.H * g.W, dx + q1 * g.H * g.W, 0.f);
    for (int64_t q = q0; q < q1; ++q)
      put_strided(dxs + q * g.OH * g.OW, g.OH, g.OW, g.sh, g.sw, g.W, dx + q * g.H * g.W, add);
  });
}
}  // namespace

void conv2d_forward(const Window2d& g, const float* x, const float* w, const float* b, float* y,
                    bool relu) {
  if (Window2d gs; strided_pointwise(g, &gs)) {
    float* xs = scratch(kStrided, gs.N * gs.C * gs.H * gs.W);
    gather_strided(g, x, xs);
    conv2d_forward(gs, xs, w, b, y, relu);
    return;
  }
  const GemmKernel& k = gemm_active_kernel();
  const GemmKernel& kt = tile_kernel(k, g.O);
  if (use_direct(k, g))
    forward_direct(k, g, x, w, b, y, relu);
  else if (use_indirect(kt, g.O) && !is_pointwise(g))
    forward_indirect(kt, g, x, w, b, y, relu);
  else
    forward_im2col(g, x, w, b, y, relu);
}

// ---- backward ---------------------------------------------------------------------------------

void conv2d_backward(const Window2d& g, const float* x, const float* w, const float* dy, float* dx,
                     float* dw, float* db, bool add_dx) {
  if (Window2d gs; strided_pointwise(g, &gs)) {
    float* xs = scratch(kStrided, gs.N * gs.C * gs.H * gs.W);
    float* dxs = dx ? scratch(kStridedDx, gs.N * gs.C * gs.H * gs.W) : nullptr;
    gather_strided(g, x, xs);
    conv2d_backward(gs, xs, w, dy, dxs, dw, db);
    if (dx) scatter_strided(g, dxs, dx, add_dx);
    return;
  }
  if (dx && add_dx) {  // the gradient into scratch, then added
    const int64_t n = g.N * g.C * g.H * g.W;
    float* tmp = scratch(kAddDx, n);
    conv2d_backward(g, x, w, dy, tmp, dw, db);
    add(n, dx, tmp, false, dx);
    return;
  }
  const int64_t P = g.pixels();
  const int T = num_threads();
  const GemmKernel& k = gemm_active_kernel();
  const GemmKernel& kw = dw_kernel(k, g.C);

  // db[o] = sum over images and pixels of dy, in a fixed order: each plane's sum, added in
  // image order (images split over the threads; dw_indirect takes the sums on its own pass).
  const bool direct = use_direct(k, g), indirect = !direct && use_indirect(kw, g.O);
  const bool winograd = indirect && use_winograd_dw(kw, g);
  if (db && (!indirect || winograd)) {
    std::vector<float> sums(g.N * g.O);
    parallel_range(g.N, g.O * g.N * P > 32768 ? T : 1, [&](int64_t n0, int64_t n1) {
      for (int64_t n = n0; n < n1; ++n) plane_sums(g, dy, n, sums.data() + n * g.O);
    });
    db_of_plane_sums(g, sums.data(), db);
  }

  // dx's path. The indirect paths multiply the filters by dy's zero border too: with an Inf or
  // NaN weight that is NaN where the gradient has no such product (im2col adds back only real
  // products). A few thousand weights to check, against a dx pass.
  const bool unit_stride = g.sh == 1 && g.sw == 1 && g.ph < g.kh && g.pw < g.kw;
  const GemmKernel& kt = tile_kernel(k, g.C);
  const int64_t wn = g.O * g.C * g.kh * g.kw;
  const bool indirect_dx = dx && use_indirect(kt, g.C) && !is_pointwise(g) &&
                           std::all_of(w, w + wn, [](float v) { return std::isfinite(v); });
  // Where dw and dx both go by Winograd, dx is computed inside dw's pass (see WinogradDx).
  const Indirect dx_cv = dx_convolution(g);
  WinogradDx fused{&kt, dx_cv, winograd_padding(dx_cv, winograd_tile(dx_cv)), nullptr, dx};
  WinogradDx* fx = nullptr;
  if (winograd && unit_stride && indirect_dx && use_winograd(kt, dx_cv)) {
    fused.Up = pack_winograd_filters(kt, g.kh, g.C, g.O, Flipped{g, w});
    fx = &fused;
  }

  if (direct)
    dw_direct(k, g, x, dy, dw);
  else if (winograd && (g.kh == 5                 ? dw_winograd<5, 2>(kw, g, x, dy, dw, fx)
                        : dw_winograd_4x4_pays(g) ? dw_winograd<3, 4>(kw, g, x, dy, dw, fx)
                                                  : dw_winograd<3, 2>(kw, g, x, dy, dw, fx))) {
    // done; where it returns false (a sum not finite), dw_indirect below
  } else if (indirect)
    dw_indirect(kw, g, x, dy, dw, winograd ? nullptr : db);
  else
    dw_im2col(g, x, dy, dw);

  if (!dx || (fused.taken && fused.finite.load())) return;
  if (unit_stride && indirect_dx)
    // Not taken: with the filters transformed above; an Inf or NaN from Winograd: without it.
    dx_indirect(kt, g, w, dy, dx, !fused.taken, fused.Up);
  else if (unit_stride || !indirect_dx || !dx_polyphase(kt, g, w, dy, dx))
    dx_im2col(g, w, dy, dx);
}

}  // namespace fastcnn
