// The SGEMM driver, BLIS's loops around a micro-kernel, as a template over how the operands are
// packed: sgemm() packs strided matrices; conv2d packs im2col panels straight from an NHWC image
// (no column matrix is ever written out).
//
//   for jc in N by NC:            B block (KC x NC) packed into NR-wide panels, shared
//     for pc in K by KC:
//       for ic in M by MC:        A block (MC x KC) packed into MR-tall panels, shared
//         for (jr, ir) tiles:     micro-kernel, tiles split evenly over the threads
//
// Packers fill whole panels, zero-padding ragged edges, so micro-kernels see no edge on their
// inputs. Threads split the packing and the tiles, never K, so each element of C is summed in
// one fixed order: results do not depend on the thread count.
//
//   pack_a(i0, mc, p0, kc, mr, Ap, panel_begin, panel_end): panels of op(A)[i0:i0+mc, p0:p0+kc],
//       panel q at Ap + q*mr*kc, k-major (Ap[q*mr*kc + k*mr + i]).
//   pack_b(p0, kc, j0, nc, nr, Bp, panel_begin, panel_end): likewise for op(B)[p0:, j0:], k-major.
#pragma once

#include <algorithm>

#include "cpu/common.h"
#include "cpu/gemm/gemm.h"

#ifdef FASTCNN_OPENMP
#include <omp.h>
#endif

namespace fastcnn {

// KC and MC are the kernel's (GemmKernel::kc, mc).
constexpr int64_t kGemmNC = 3072;  // B block (KC x NC) stays in L3; a multiple of every NR

// Bias and ReLU on the m x n tile of C whose top-left element is C[i0, j0].
inline void gemm_epilogue(const GemmEpilogue& ep, float* C, int64_t ldc, int64_t i0, int64_t j0,
                          int m, int n) {
  if (!ep.bias_row && !ep.bias_col && !ep.relu) return;
  for (int i = 0; i < m; ++i) {
    float* c = C + (i0 + i) * ldc + j0;
    const float br = ep.bias_row ? ep.bias_row[i0 + i] : 0.f;
    const float* bc = ep.bias_col ? ep.bias_col + j0 : nullptr;
    for (int j = 0; j < n; ++j) {
      const float v = c[j] + br + (bc ? bc[j] : 0.f);
      c[j] = ep.relu && v < 0.f ? 0.f : v;
    }
  }
}

// Splits [0, n) into `parts` nearly equal ranges; returns the part'th.
inline void split_range(int64_t n, int parts, int part, int64_t* begin, int64_t* end) {
  const int64_t base = n / parts, extra = n % parts;
  *begin = part * base + std::min<int64_t>(part, extra);
  *end = *begin + base + (part < extra ? 1 : 0);
}

// The loops themselves; `threads` share every block (packing, then tiles, with barriers).
template <class PackA, class PackB>
void gemm_run(const GemmKernel& kern, int64_t M, int64_t N, int64_t K, const PackA& pack_a,
              const PackB& pack_b, float* C, int64_t ldc, const GemmEpilogue& ep, int threads) {
  const int mr = kern.mr, nr = kern.nr;
  const int64_t KC = kern.kc, MC = kern.mc;
  const int64_t kc_max = std::min(KC, K);
  const int64_t mc_max = std::min(MC, (M + mr - 1) / mr * mr);
  const int64_t nc_max = std::min(kGemmNC, (N + nr - 1) / nr * nr);
  float *Ap, *Bp;
  gemm_pack_buffers(mc_max * kc_max, nc_max * kc_max, &Ap, &Bp);

  auto body = [&](int tid, int nt) {
    DenormalGuard denormals;
    for (int64_t jc = 0; jc < N; jc += kGemmNC) {
      const int64_t nc = std::min(kGemmNC, N - jc);
      const int64_t n_panels = (nc + nr - 1) / nr;
      for (int64_t pc = 0; pc < K; pc += KC) {
        const int64_t kc = std::min(KC, K - pc);
        const bool first_k = pc == 0, last_k = pc + kc == K;
        int64_t b0, b1;
        split_range(n_panels, nt, tid, &b0, &b1);
        pack_b(pc, kc, jc, nc, nr, Bp, b0, b1);
        for (int64_t ic = 0; ic < M; ic += MC) {
          const int64_t mc = std::min(MC, M - ic);
          const int64_t m_panels = (mc + mr - 1) / mr;
          int64_t a0, a1;
          split_range(m_panels, nt, tid, &a0, &a1);
          pack_a(ic, mc, pc, kc, mr, Ap, a0, a1);
#ifdef FASTCNN_OPENMP
          if (nt > 1) {
#pragma omp barrier
          }
#endif
          // Tiles in jr-major order, so a thread's consecutive tiles share a B panel in L1.
          int64_t t0, t1;
          split_range(n_panels * m_panels, nt, tid, &t0, &t1);
          for (int64_t t = t0; t < t1; ++t) {
            const int64_t jr = t / m_panels, ir = t % m_panels;
            const int m = static_cast<int>(std::min<int64_t>(mr, mc - ir * mr));
            const int n = static_cast<int>(std::min<int64_t>(nr, nc - jr * nr));
            float* c = C + (ic + ir * mr) * ldc + jc + jr * nr;
            kern.fn(kc, Ap + ir * mr * kc, Bp + jr * nr * kc, c, ldc, m, n,
                    ep.accumulate || !first_k);
            if (last_k) gemm_epilogue(ep, C, ldc, ic + ir * mr, jc + jr * nr, m, n);
          }
#ifdef FASTCNN_OPENMP
          if (nt > 1) {
#pragma omp barrier
          }
#endif
        }
      }
    }
  };

#ifdef FASTCNN_OPENMP
  if (threads > 1) {
#pragma omp parallel num_threads(threads)
    body(omp_get_thread_num(), omp_get_num_threads());
    return;
  }
#endif
  body(0, 1);
}

template <class PackA, class PackB>
void gemm_blocked(const GemmKernel& kern, int64_t M, int64_t N, int64_t K, const PackA& pack_a,
                  const PackB& pack_b, float* C, int64_t ldc, const GemmEpilogue& ep, int threads) {
  const int nr = kern.nr;
#ifdef FASTCNN_OPENMP
  // A short A (one MC block, the usual case in a CNN: M is a channel count or a batch) with
  // enough columns: each thread computes its own slice of columns from start to end with its
  // own pack buffers, never waiting on the others (A is packed by both, it is small).
  const int64_t all_panels = (N + nr - 1) / nr;
  if (threads > 1 && M <= kern.mc && all_panels >= 2 * threads) {
#pragma omp parallel num_threads(threads)
    {
      int64_t q0, q1;
      split_range(all_panels, omp_get_num_threads(), omp_get_thread_num(), &q0, &q1);
      const int64_t j0 = q0 * nr, cols = std::min(N, q1 * nr) - j0;
      if (cols > 0) {
        auto pack_b_slice = [&](int64_t p0, int64_t kc, int64_t jj, int64_t nc, int nr_, float* Bp,
                                int64_t b0,
                                int64_t b1) { pack_b(p0, kc, j0 + jj, nc, nr_, Bp, b0, b1); };
        GemmEpilogue slice = ep;
        if (slice.bias_col) slice.bias_col += j0;
        gemm_run(kern, M, cols, K, pack_a, pack_b_slice, C + j0, ldc, slice, 1);
      }
    }
    return;
  }
#endif
  gemm_run(kern, M, N, K, pack_a, pack_b, C, ldc, ep, threads);
}

}  // namespace fastcnn
