// The SGEMM driver: BLIS's five loops around a micro-kernel.
//
//   for jc in N by NC:            B block (KC x NC) packed into NR-wide panels, shared
//     for pc in K by KC:
//       for ic in M by MC:        A block (MC x KC) packed into MR-tall panels, shared
//         for (jr, ir) tiles:     micro-kernel, tiles split evenly over the threads
//
// Packing copies each operand once per block into the k-major panel layout the micro-kernels
// stream through, padding ragged edges with zeros, so the kernels never see a stride or an
// edge on their inputs. Threads split the packing and the tiles, never K, so each element of C
// is summed in one fixed order (thread-count-independent results). Pack buffers belong to the
// calling thread and grow once; a training step reuses them and allocates nothing.
#include "cpu/gemm/gemm.h"

#include <algorithm>
#include <cstring>

#include "cpu/common.h"

#ifdef FASTCNN_OPENMP
#include <omp.h>
#endif

namespace fastcnn {

namespace {
constexpr int64_t KC = 256;   // B panel (KC x NR) stays in L1
constexpr int64_t MC = 192;   // A block (MC x KC) stays in L2; a multiple of every MR
constexpr int64_t NC = 3072;  // B block (KC x NC) stays in L3; a multiple of every NR

// Packs rows [i0, i0+mc) x cols [p0, p0+kc) of op(A) into panels of mr rows, k-major.
void pack_a(bool trans, const float* A, int64_t lda, int64_t i0, int64_t mc, int64_t p0,
            int64_t kc, int mr, float* Ap, int64_t panel_begin, int64_t panel_end) {
  for (int64_t panel = panel_begin; panel < panel_end; ++panel) {
    const int64_t r0 = panel * mr;
    const int64_t rows = std::min<int64_t>(mr, mc - r0);
    float* dst = Ap + panel * mr * kc;
    if (!trans) {  // op(A)[i, k] = A[i*lda + k]
      for (int64_t k = 0; k < kc; ++k) {
        int64_t i = 0;
        for (; i < rows; ++i) dst[k * mr + i] = A[(i0 + r0 + i) * lda + p0 + k];
        for (; i < mr; ++i) dst[k * mr + i] = 0.f;
      }
    } else {  // op(A)[i, k] = A[k*lda + i]
      for (int64_t k = 0; k < kc; ++k) {
        const float* src = A + (p0 + k) * lda + i0 + r0;
        int64_t i = 0;
        for (; i < rows; ++i) dst[k * mr + i] = src[i];
        for (; i < mr; ++i) dst[k * mr + i] = 0.f;
      }
    }
  }
}

// Packs rows [p0, p0+kc) x cols [j0, j0+nc) of op(B) into panels of nr columns, k-major.
void pack_b(bool trans, const float* B, int64_t ldb, int64_t p0, int64_t kc, int64_t j0,
            int64_t nc, int nr, float* Bp, int64_t panel_begin, int64_t panel_end) {
  for (int64_t panel = panel_begin; panel < panel_end; ++panel) {
    const int64_t c0 = panel * nr;
    const int64_t cols = std::min<int64_t>(nr, nc - c0);
    float* dst = Bp + panel * nr * kc;
    if (!trans) {  // op(B)[k, j] = B[k*ldb + j]
      for (int64_t k = 0; k < kc; ++k) {
        const float* src = B + (p0 + k) * ldb + j0 + c0;
        std::memcpy(dst + k * nr, src, sizeof(float) * cols);
        for (int64_t j = cols; j < nr; ++j) dst[k * nr + j] = 0.f;
      }
    } else {  // op(B)[k, j] = B[j*ldb + k]
      for (int64_t j = 0; j < cols; ++j) {
        const float* src = B + (j0 + c0 + j) * ldb + p0;
        for (int64_t k = 0; k < kc; ++k) dst[k * nr + j] = src[k];
      }
      for (int64_t j = cols; j < nr; ++j)
        for (int64_t k = 0; k < kc; ++k) dst[k * nr + j] = 0.f;
    }
  }
}

// Bias and ReLU on an m x n tile of C whose top-left element is C[i0, j0].
void apply_epilogue(const GemmEpilogue& ep, float* C, int64_t ldc, int64_t i0, int64_t j0, int m,
                    int n) {
  if (!ep.bias_row && !ep.bias_col && !ep.relu) return;
  for (int i = 0; i < m; ++i) {
    float* c = C + (i0 + i) * ldc + j0;
    const float br = ep.bias_row ? ep.bias_row[i0 + i] : 0.f;
    const float* bc = ep.bias_col ? ep.bias_col + j0 : nullptr;
    for (int j = 0; j < n; ++j) {
      float v = c[j] + br + (bc ? bc[j] : 0.f);
      c[j] = ep.relu ? (v > 0.f ? v : 0.f) : v;
    }
  }
}

// Splits [0, n) into `parts` nearly equal ranges; returns the part'th.
inline void split(int64_t n, int parts, int part, int64_t* begin, int64_t* end) {
  const int64_t base = n / parts, extra = n % parts;
  *begin = part * base + std::min<int64_t>(part, extra);
  *end = *begin + base + (part < extra ? 1 : 0);
}

struct PackBuffers {
  std::vector<float> a, b;
};
thread_local PackBuffers t_buffers;
}  // namespace

void sgemm_reference(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const float* A,
                     int64_t lda, const float* B, int64_t ldb, float* C, int64_t ldc,
                     const GemmEpilogue& ep) {
  for (int64_t i = 0; i < M; ++i) {
    for (int64_t j = 0; j < N; ++j) {
      float acc = 0.f;
      for (int64_t k = 0; k < K; ++k) {
        const float a = trans_a ? A[k * lda + i] : A[i * lda + k];
        const float b = trans_b ? B[j * ldb + k] : B[k * ldb + j];
        acc += a * b;
      }
      C[i * ldc + j] = ep.accumulate ? C[i * ldc + j] + acc : acc;
    }
  }
  for (int64_t i = 0; i < M; ++i) apply_epilogue(ep, C, ldc, i, 0, 1, static_cast<int>(N));
}

void sgemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const float* A,
           int64_t lda, const float* B, int64_t ldb, float* C, int64_t ldc,
           const GemmEpilogue& ep, int threads) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {  // empty sum: C = 0 (or unchanged), then the epilogue
    if (!ep.accumulate)
      for (int64_t i = 0; i < M; ++i) std::fill(C + i * ldc, C + i * ldc + N, 0.f);
    for (int64_t i = 0; i < M; ++i) apply_epilogue(ep, C, ldc, i, 0, 1, static_cast<int>(N));
    return;
  }
  const GemmKernel& kern = gemm_active_kernel();
  const int mr = kern.mr, nr = kern.nr;
  const int64_t kc_max = std::min(KC, K);
  const int64_t mc_max = std::min(MC, (M + mr - 1) / mr * mr);
  const int64_t nc_max = std::min(NC, (N + nr - 1) / nr * nr);

  PackBuffers& buf = t_buffers;
  if (buf.a.size() < static_cast<size_t>(mc_max * kc_max)) buf.a.resize(mc_max * kc_max);
  if (buf.b.size() < static_cast<size_t>(nc_max * kc_max)) buf.b.resize(nc_max * kc_max);
  float* Ap = buf.a.data();
  float* Bp = buf.b.data();

  // Small problems are not worth waking a second thread for.
  if (static_cast<double>(M) * N * K < 64.0 * 64 * 64) threads = 1;

  auto body = [&](int tid, int nt) {
    DenormalGuard denormals;
    for (int64_t jc = 0; jc < N; jc += NC) {
      const int64_t nc = std::min(NC, N - jc);
      const int64_t n_panels = (nc + nr - 1) / nr;
      for (int64_t pc = 0; pc < K; pc += KC) {
        const int64_t kc = std::min(KC, K - pc);
        const bool first_k = pc == 0, last_k = pc + kc == K;
        int64_t b0, b1;
        split(n_panels, nt, tid, &b0, &b1);
        pack_b(trans_b, B, ldb, pc, kc, jc, nc, nr, Bp, b0, b1);
        for (int64_t ic = 0; ic < M; ic += MC) {
          const int64_t mc = std::min(MC, M - ic);
          const int64_t m_panels = (mc + mr - 1) / mr;
          int64_t a0, a1;
          split(m_panels, nt, tid, &a0, &a1);
          pack_a(trans_a, A, lda, ic, mc, pc, kc, mr, Ap, a0, a1);
#ifdef FASTCNN_OPENMP
          if (nt > 1) {
#pragma omp barrier
          }
#endif
          // Tiles in jr-major order, so a thread's consecutive tiles share a B panel in L1.
          int64_t t0, t1;
          split(n_panels * m_panels, nt, tid, &t0, &t1);
          for (int64_t t = t0; t < t1; ++t) {
            const int64_t jr = t / m_panels, ir = t % m_panels;
            const int m = static_cast<int>(std::min<int64_t>(mr, mc - ir * mr));
            const int n = static_cast<int>(std::min<int64_t>(nr, nc - jr * nr));
            float* c = C + (ic + ir * mr) * ldc + jc + jr * nr;
            kern.fn(kc, Ap + ir * mr * kc, Bp + jr * nr * kc, c, ldc, m, n,
                    ep.accumulate || !first_k);
            if (last_k) apply_epilogue(ep, C, ldc, ic + ir * mr, jc + jr * nr, m, n);
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

}  // namespace fastcnn
