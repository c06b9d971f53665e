// Data augmentation on uint8 image batches (B, C, H, W), the pixels fastcnn's data sets keep:
// run on each training batch before it becomes float, so the data sets never change. The random
// parameters (offsets, flips, boxes) are drawn in Python from a seeded generator, one set per
// image; these kernels only move pixels, images split over the threads, so a seed gives the same
// batch whatever the thread count.
//
//   crop_flip      out[b, c, y, x] = in[b, c, y + dy[b], x' + dx[b]], zero outside the image,
//                  x' = W-1-x when flip[b] else x: torchvision's RandomCrop(padding) (a shift of
//                  the zero-padded image) followed by RandomHorizontalFlip.
//   resized_crop   the box (top, left, height, width) of each image resampled bilinearly to
//                  OH x OW (pixel centres, edges clamped; rounded to nearest), then flipped:
//                  RandomResizedCrop followed by RandomHorizontalFlip.
#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu/ops.h"

namespace fastcnn {

// ---- crop and flip ----------------------------------------------------------------------------

void augment_crop_flip(int64_t B, int64_t C, int64_t H, int64_t W, const uint8_t* x,
                       const int32_t* dy, const int32_t* dx, const uint8_t* flip, uint8_t* y) {
  const int64_t plane = H * W;
#ifdef FASTCNN_OPENMP
#pragma omp parallel for schedule(static) num_threads(num_threads()) if (B * C * plane > 65536)
#endif
  for (int64_t b = 0; b < B; ++b) {
    // Output columns [x0, x1) read the source row at x + dx (or its mirror); the rest are zero.
    const int64_t sy = dy[b], sx = dx[b];
    const int64_t x0 = std::clamp<int64_t>(-sx, 0, W), x1 = std::clamp<int64_t>(W - sx, x0, W);
    for (int64_t c = 0; c < C; ++c) {
      const uint8_t* in = x + (b * C + c) * plane;
      uint8_t* out = y + (b * C + c) * plane;
      for (int64_t r = 0; r < H; ++r) {
        uint8_t* o = out + r * W;
        const int64_t src = r + sy;
        if (src < 0 || src >= H) {
          std::fill(o, o + W, uint8_t{0});
          continue;
        }
        const uint8_t* row = in + src * W + sx;
        if (!flip[b]) {
          std::fill(o, o + x0, uint8_t{0});
          std::copy(row + x0, row + x1, o + x0);
          std::fill(o + x1, o + W, uint8_t{0});
        } else {  // o[W-1-k] = the unflipped o[k]
          std::fill(o + W - x0, o + W, uint8_t{0});
          for (int64_t k = x0; k < x1; ++k) o[W - 1 - k] = row[k];
          std::fill(o, o + W - x1, uint8_t{0});
        }
      }
    }
  }
}

// ---- resized crop -----------------------------------------------------------------------------

namespace {
// Source sample positions of n output pixels spread over [start, start + extent) of a line of
// `size` pixels: the lower neighbour and the weight of the upper one, at pixel centres.
void sample_line(double start, double extent, int64_t n, int64_t size, int64_t* lo, float* frac) {
  for (int64_t i = 0; i < n; ++i) {
    const double s = std::clamp(start + (i + 0.5) * extent / n - 0.5, 0.0, double(size - 1));
    const int64_t f = std::min<int64_t>(static_cast<int64_t>(s), size - 1);
    lo[i] = f;
    frac[i] = static_cast<float>(s - f);
  }
}
}  // namespace

void augment_resized_crop(int64_t B, int64_t C, int64_t H, int64_t W, const uint8_t* x,
                          const float* boxes, const uint8_t* flip, int64_t OH, int64_t OW,
                          uint8_t* y) {
#ifdef FASTCNN_OPENMP
#pragma omp parallel for schedule(static) num_threads(num_threads()) if (B * C * OH * OW > 65536)
#endif
  for (int64_t b = 0; b < B; ++b) {
    const float* box = boxes + 4 * b;  // top, left, height, width
    std::vector<int64_t> ry(OH), rx(OW);
    std::vector<float> fy(OH), fx(OW);
    sample_line(box[0], box[2], OH, H, ry.data(), fy.data());
    sample_line(box[1], box[3], OW, W, rx.data(), fx.data());
    for (int64_t c = 0; c < C; ++c) {
      const uint8_t* in = x + (b * C + c) * H * W;
      uint8_t* out = y + (b * C + c) * OH * OW;
      for (int64_t i = 0; i < OH; ++i) {
        const uint8_t* r0 = in + ry[i] * W;
        const uint8_t* r1 = in + std::min(ry[i] + 1, H - 1) * W;
        const float wy = fy[i];
        uint8_t* o = out + i * OW;
        for (int64_t j = 0; j < OW; ++j) {
          const int64_t x0 = rx[j], x1 = std::min(x0 + 1, W - 1);
          const float wx = fx[j];
          const float top = r0[x0] + wx * (r0[x1] - r0[x0]);
          const float bottom = r1[x0] + wx * (r1[x1] - r1[x0]);
          const float v = top + wy * (bottom - top);
          o[flip[b] ? OW - 1 - j : j] = static_cast<uint8_t>(std::clamp(v + 0.5f, 0.f, 255.f));
        }
      }
    }
  }
}

}  // namespace fastcnn
