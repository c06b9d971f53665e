// Portable micro-kernels in plain C++ (the compiler vectorises the inner loops with whatever the
// baseline ISA offers), built at three geometries (geometry.h):
//   "generic"          4 x 16, the kernel for CPUs without AVX2;
//   "generic-avx512"   the twin of the AVX-512 kernels: their tiles, cache blocks, direct and
//                      pooling widths, the in-place-B weight gradient;
//   "generic-avx2"     the twin of the AVX2 kernels.
// The twins are never chosen by default: they exist so that the tests run the code around each
// ISA's kernels (driver, packing, edges, blocking, conv tiles, pooling tails) on any CPU.
#include <algorithm>

#include "cpu/gemm/conv_kernel.h"
#include "cpu/gemm/gemm.h"
#include "cpu/gemm/geometry.h"

namespace fastcnn {

namespace {

// ---- GEMM tile ---------------------------------------------------------------------------------

// Accumulates the MR x NR tile over K, B's row k at b_row(k).
template <int MR, int NR, class BRow>
inline void tile_portable(int64_t K, const float* Ap, BRow b_row, float (&acc)[MR][NR]) {
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) acc[i][j] = 0.f;
  for (int64_t k = 0; k < K; ++k) {
    const float* a = Ap + k * MR;
    const float* b = b_row(k);
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NR; ++j) acc[i][j] += a[i] * b[j];
  }
}

template <int MR, int NR>
void gemm_portable(int64_t K, const float* Ap, const float* Bp, float* C, int64_t ldc, int m, int n,
                   bool accumulate) {
  float acc[MR][NR];
  tile_portable<MR, NR>(K, Ap, [Bp](int64_t k) { return Bp + k * NR; }, acc);
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j)
      C[i * ldc + j] = accumulate ? C[i * ldc + j] + acc[i][j] : acc[i][j];
}

// B read in place, over a column of tiles (see GemmKernel::fn_indirect_b): C[0:m, 0:NR] += A.B,
// or = A.B.
template <int MR, int NR>
void gemm_portable_ib(int64_t K, const float* Ap, int64_t a_panel, int m, const float* const* brow,
                      int64_t boff, float* C, int64_t ldc, bool accumulate) {
  for (int i0 = 0; i0 < m; i0 += MR, Ap += a_panel) {
    float acc[MR][NR];
    tile_portable<MR, NR>(K, Ap, [brow, boff](int64_t k) { return brow[k] + boff; }, acc);
    const int rows = std::min(MR, m - i0);
    for (int i = 0; i < rows; ++i)
      for (int j = 0; j < NR; ++j)
        C[(i0 + i) * ldc + j] = accumulate ? C[(i0 + i) * ldc + j] + acc[i][j] : acc[i][j];
  }
}

// ---- direct convolution ------------------------------------------------------------------------

// The portable loops at the twin's widths for unit stride; strided rows (whose lanes read up to
// (VW-1)*sw floats past a row, within kDirectSlack only for VW <= 16) go 16 at a time, as the
// AVX-512 kernels' own fallback does.
template <int OB, int VW>
void direct_fwd_twin(const Direct2d& d, const float* xp, const float* w, const float* b, bool relu,
                     float* y, int64_t o0, int64_t o1) {
  if (d.sw == 1)
    direct_fwd<OB, VW>(d, xp, w, b, relu, y, o0, o1);
  else
    direct_fwd<OB, std::min(VW, 16)>(d, xp, w, b, relu, y, o0, o1);
}

template <int VW>
void direct_dw_twin(const Direct2d& d, int64_t N, const float* xp, int64_t image, const float* dy,
                    float* dw, int64_t o0, int64_t o1) {
  if (d.sw == 1)
    direct_dw<VW>(d, N, xp, image, dy, dw, o0, o1);
  else
    direct_dw<std::min(VW, 16)>(d, N, xp, image, dy, dw, o0, o1);
}

// ---- 2x2 max-pooling ---------------------------------------------------------------------------

// Is v a better maximum than best? NaN wins over any number (as in pool2d.cpp).
inline bool beats(float v, float best) {
  return v > best || (v != v && best == best);
}

// See MaxPool2x2 in gemm.h: VW outputs a step, the last step of a row short.
template <int VW>
void maxpool2x2_portable(const float* x, int64_t W, int64_t rows, int64_t OW, float* y,
                         int32_t* indices) {
  for (int64_t oh = 0; oh < rows; ++oh) {
    const float* r[2] = {x + 2 * oh * W, x + (2 * oh + 1) * W};
    for (int64_t ow0 = 0; ow0 < OW; ow0 += VW) {
      const int64_t n = std::min<int64_t>(VW, OW - ow0);
      for (int64_t v = 0; v < n; ++v) {
        const int64_t w = 2 * (ow0 + v);
        float best = r[0][w];
        int64_t at = 2 * oh * W + w;
        for (int q = 1; q < 4; ++q) {
          const float c = r[q / 2][w + q % 2];
          if (beats(c, best)) best = c, at = (2 * oh + q / 2) * W + w + q % 2;
        }
        y[oh * OW + ow0 + v] = best;
        indices[oh * OW + ow0 + v] = static_cast<int32_t>(at);
      }
    }
  }
}

// See MaxPool2x2Backward in gemm.h: a step's indices are checked before any of its writes.
template <int VW>
bool maxpool2x2_backward_portable(const float* dy, const int32_t* indices, const float* y,
                                  int64_t H, int64_t W, int64_t OH, int64_t OW, float* dx) {
  for (int64_t oh = 0; oh < OH; ++oh) {
    float* d[2] = {dx + 2 * oh * W, dx + (2 * oh + 1) * W};
    for (int64_t ow0 = 0; ow0 < OW; ow0 += VW) {
      const int64_t n = std::min<int64_t>(VW, OW - ow0);
      int q_of[VW];  // which of the window's four positions each index names
      for (int64_t v = 0; v < n; ++v) {
        const int64_t rel = indices[oh * OW + ow0 + v] - (2 * oh * W + 2 * (ow0 + v));
        q_of[v] = rel == 0 ? 0 : rel == 1 ? 1 : rel == W ? 2 : rel == W + 1 ? 3 : -1;
        if (q_of[v] < 0) return false;
      }
      for (int64_t v = 0; v < n; ++v) {
        const int64_t o = oh * OW + ow0 + v, w = 2 * (ow0 + v);
        const float g = y && y[o] <= 0.f ? 0.f : dy[o];  // ReLU'd forward: NaN passes
        for (int q = 0; q < 4; ++q) d[q / 2][w + q % 2] = q == q_of[v] ? g : 0.f;
      }
    }
    for (int64_t w = 2 * OW; w < W; ++w) d[0][w] = d[1][w] = 0.f;  // an odd last column
  }
  for (int64_t h = 2 * OH; h < H; ++h)  // an odd last row
    for (int64_t w = 0; w < W; ++w) dx[h * W + w] = 0.f;
  return true;
}

// ---- the kernels -------------------------------------------------------------------------------

// in_place_b: with the in-place-B micro-kernel for conv2d's weight gradient, as the ISA's has;
// narrow: the name of its narrow companion (see gemm_narrow_kernel), or null.
template <const KernelGeometry& G>
constexpr GemmKernel portable_kernel(const char* name, bool in_place_b, const char* narrow) {
  static_assert(G.mr <= kMaxInterleaveRows && G.nr <= kMaxInterleaveRows,
                "packing holds a row pointer each");
  constexpr bool pool = G.pool_vw > 0;
  constexpr int pool_vw = pool ? G.pool_vw : 1;  // instantiated, unused, without pooling
  return GemmKernel{name,
                    G.mr,
                    G.nr,
                    gemm_portable<G.mr, G.nr>,
                    G.cmr,
                    G.cnr,
                    conv_kernel_portable<G.cmr, G.cnr>,
                    direct_fwd_twin<G.direct_ob, G.direct_vw>,
                    direct_dw_twin<G.direct_dw_vw>,
                    pool ? maxpool2x2_portable<pool_vw> : nullptr,
                    pool ? maxpool2x2_backward_portable<pool_vw> : nullptr,
                    in_place_b ? gemm_portable_ib<G.mr, G.nr> : nullptr,
                    G.kc,
                    G.mc,
                    G.dw_kb,
                    narrow};
}

}  // namespace

const GemmKernel kGemmGeneric = portable_kernel<kGenericGeometry>("generic", false, nullptr);
const GemmKernel kGemmGenericAvx512 =
    portable_kernel<kAvx512Geometry>("generic-avx512", true, "generic-avx2");
const GemmKernel kGemmGenericAvx2 = portable_kernel<kAvx2Geometry>("generic-avx2", true, nullptr);

}  // namespace fastcnn
