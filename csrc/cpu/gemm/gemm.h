// fastcnn's SGEMM, a small BLIS: C (M x N) = op(A) (M x K) . op(B) (K x N), row-major, followed
// by an epilogue (bias per row or per column, ReLU) applied while the tile is still in cache.
//
//   gemm.cpp            the driver: cache blocking (KC, MC, NC), packing, edges, threads
//   kernel_<isa>.cpp    one micro-kernel per ISA, all with the MicroKernel signature below
//   dispatch.cpp        the only caller of __builtin_cpu_supports; picks a kernel at run time
//
// Kernels overwrite C unless `accumulate` is set (see common.h for the gradient convention).
// Every element of C is summed over K in the same order whatever the thread count, so results
// do not depend on it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace fastcnn {

// Computes one MR x NR tile of C from packed panels:
//   Ap: K x MR, k-major (Ap[k*MR + i] = op(A)[i, k]); Bp: K x NR, k-major (Bp[k*NR + j]).
//   C:  the tile's top-left element, row stride ldc; only the top-left m x n (m <= MR,
//       n <= NR) is written. C = acc, or C += acc when accumulate is true.
using MicroKernel = void (*)(int64_t K, const float* Ap, const float* Bp, float* C, int64_t ldc,
                             int m, int n, bool accumulate);

struct GemmKernel {
  const char* name;  // "avx512", "avx2", "generic"
  int mr, nr;
  MicroKernel fn;
};

// Every kernel this build has, best first; `supported` says which this CPU can run.
const std::vector<GemmKernel>& gemm_all_kernels();
bool gemm_kernel_supported(const std::string& name);
std::vector<std::string> gemm_supported_kernels();
const GemmKernel& gemm_active_kernel();
// Forces a kernel by name (tests, benchmarks); returns false if unknown or unsupported here.
bool gemm_set_kernel(const std::string& name);

struct GemmEpilogue {
  const float* bias_row = nullptr;  // (M,) added to every row i, or null
  const float* bias_col = nullptr;  // (N,) added to every column j, or null
  bool relu = false;                // max(0, .) after the bias
  bool accumulate = false;          // C += op(A).op(B) instead of C = ...
};

// A: M x K (lda) or, if trans_a, K x M; B: K x N (ldb) or, if trans_b, N x K; C: M x N (ldc).
// threads: how many OpenMP threads this call may use (1 inside an outer parallel region).
void sgemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const float* A,
           int64_t lda, const float* B, int64_t ldb, float* C, int64_t ldc,
           const GemmEpilogue& epilogue, int threads);

// The triple loop: the oracle and the path for shapes too small to be worth packing.
void sgemm_reference(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const float* A,
                     int64_t lda, const float* B, int64_t ldb, float* C, int64_t ldc,
                     const GemmEpilogue& epilogue);

// Micro-kernels (defined in kernel_<isa>.cpp; the ISA ones are null in a non-x86 build).
extern const GemmKernel kGemmGeneric;
extern const GemmKernel kGemmAvx2;
extern const GemmKernel kGemmAvx512;

}  // namespace fastcnn
