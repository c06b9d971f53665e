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

// The convolution micro-kernel ("indirect" convolution, no im2col): one tile of m <= CMR output
// pixels x n <= CNR output channels of an NCHW output, read straight from an NHWC input.
//   pix:  CMR pointers, pixel i's top-left tap in the zero-padded NHWC input; all valid (the
//         caller repeats a real pixel past m).
//   toff: T offsets (in floats) from a pixel's top-left tap to run t, the C contiguous input
//         floats it reads there (conv2d passes a tap row: kw taps of all channels, kw*C floats).
//   Wp:   packed filters for CNR output channels: Wp[(t*C + c)*CNR + j].
//   bias: CNR values (zero past n) or null; relu: max(0, .) after it.
//   y:    the tile's first output, y[j*ldy + i*ldp] for channel j, pixel i: NCHW planes
//         (ldp 1), or a pixel's channels side by side (ldy 1, stored a row of the tile at a
//         time; conv2d's Winograd products).
using ConvKernel = void (*)(int64_t T, int64_t C, const float* const* pix, const int64_t* toff,
                            const float* Wp, const float* bias, bool relu, float* y, int64_t ldy,
                            int64_t ldp, int m, int n);

// Direct convolution for few input channels (SeedNet's conv1 has one), where neither im2col nor
// the indirect kernel has enough work per tap. Geometry of one zero-padded NCHW image:
struct Direct2d {
  int64_t C, Hp, Wp;       // padded input planes (with slack after the last row, see below)
  int64_t kh, kw, sh, sw;  // taps, stride
  int64_t O, OH, OW;       // output
};
// Forward, output channels [o0, o1) of one image: y (O, OH, OW) planes from xp (C, Hp, Wp).
// Reads up to kDirectSlack floats past the last padded row.
using DirectFwd = void (*)(const Direct2d& d, const float* xp, const float* w, const float* b,
                           bool relu, float* y, int64_t o0, int64_t o1);
// Weight gradient, output channels [o0, o1): dw[o] = sum over the N images (padded, `image`
// floats apart in xp) and their pixels of dy[n][o] times the input window. kw <= kDirectMaxKw.
using DirectDw = void (*)(const Direct2d& d, int64_t N, const float* xp, int64_t image,
                          const float* dy, float* dw, int64_t o0, int64_t o1);
constexpr int64_t kDirectSlack = 64;

// 2x2 max-pooling with stride 2 over `rows` output rows of one plane: x (2*rows, W) -> y and
// indices (rows, OW), first maximum wins, NaN wins over numbers (see pool2d.cpp).
using MaxPool2x2 = void (*)(const float* x, int64_t W, int64_t rows, int64_t OW, float* y,
                            int32_t* indices);
// Its backward over one plane, writing every element of dx (H, W) once: dy where the index
// points, else 0 (masked by y > 0 when y is given, see pool2d.cpp). Returns false, having
// written garbage, if an index lies outside its own 2x2 window (indices from another pooling):
// the caller then takes the general path.
using MaxPool2x2Backward = bool (*)(const float* dy, const int32_t* indices, const float* y,
                                    int64_t H, int64_t W, int64_t OH, int64_t OW, float* dx);
constexpr int64_t kDirectMaxKw = 8;

struct GemmKernel {
  const char* name;  // "avx512", "avx2", "generic", "generic-avx512", "generic-avx2"
  int mr, nr;
  MicroKernel fn;
  int cmr, cnr;  // the convolution kernel's tile: pixels x channels
  ConvKernel conv;
  DirectFwd direct_fwd;
  DirectDw direct_dw;
  MaxPool2x2 maxpool2x2;  // null: pool2d.cpp's portable loop
  MaxPool2x2Backward maxpool2x2_backward;
  // The GEMM micro-kernel with B read in place, over a column of tiles: C[0:m, 0:nr] += A . B
  // (= A . B without accumulate, what adding to zeros gives: the sums start at +0, so are never
  // -0), A (m x K) in panels of mr rows (k-major, as packed), a_panel floats apart; row k of B is
  // the nr floats at brow[k] + boff (conv2d's weight gradient reads them straight from the
  // NHWC images). One call a column, not a tile: with K about 100 (dW's blocks), the calls cost
  // 4% of dW. Null: B is packed instead.
  void (*fn_indirect_b)(int64_t K, const float* Ap, int64_t a_panel, int m,
                        const float* const* brow, int64_t boff, float* C, int64_t ldc,
                        bool accumulate);
  // sgemm's cache blocks for this kernel (see gemm_driver.h): KC, the depth of a B panel
  // (KC x NR) kept in L1, and MC, the height of an A block (MC x KC, a multiple of MR: conv2d's
  // dW packs A by whole panels) kept in L2.
  int kc, mc;
  // conv2d's weight gradient with B in place: the K block (pixels), see dw_indirect.
  int dw_kb;
  // A kernel of half the tile width for layers that would fill half of this one's (by name;
  // null: none), see gemm_narrow_kernel.
  const char* narrow = nullptr;
};

// Every kernel this build has, best first, then the portable twins of the ISA kernels (see
// geometry.h), which are never chosen by default. A kernel is supported where its function is
// built and the CPU has its ISA; FASTCNN_DISABLE_ISA=avx512 (or avx512,avx2) makes this process
// treat those ISAs as missing, to run as a CPU without them would.
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
void sgemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const float* A, int64_t lda,
           const float* B, int64_t ldb, float* C, int64_t ldc, const GemmEpilogue& epilogue,
           int threads);

// The triple loop: the oracle and the path for shapes too small to be worth packing.
void sgemm_reference(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const float* A,
                     int64_t lda, const float* B, int64_t ldb, float* C, int64_t ldc,
                     const GemmEpilogue& epilogue);

// dst[p*rows + i] = src[i][p] for p < len, i < rows <= kMaxInterleaveRows (a null src[i] reads
// as zeros): rows interleaved into a k-major panel, the packing of A (non-transposed) and of
// B (transposed) for sgemm, and of dy's rows for conv2d's weight gradient.
constexpr int kMaxInterleaveRows = 64;
void interleave_rows(const float* const* src, int rows, int64_t len, float* dst);

// Pack buffers of the calling thread, grown to at least the sizes asked for (never shrunk).
void gemm_pack_buffers(size_t a_floats, size_t b_floats, float** a, float** b);

// k's narrow companion when this CPU runs it (AVX-512 -> AVX2, generic-avx512 -> generic-avx2),
// else null. conv2d uses it where k's tiles would be at most half full.
const GemmKernel* gemm_narrow_kernel(const GemmKernel& k);

// The ISA a kernel needs ("avx512", "avx2", or "" for the portable ones).
std::string gemm_kernel_isa(const GemmKernel& k);

// Micro-kernels (defined in kernel_<isa>.cpp; the ISA ones are null in a non-x86 build), and
// the portable ones in kernel_generic.cpp.
extern const GemmKernel kGemmGeneric;
extern const GemmKernel kGemmGenericAvx512;
extern const GemmKernel kGemmGenericAvx2;
extern const GemmKernel kGemmAvx2;
extern const GemmKernel kGemmAvx512;

}  // namespace fastcnn
