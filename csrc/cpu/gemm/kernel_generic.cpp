// Portable micro-kernel: 4 x 16 tile in plain C++ (the compiler vectorises the j loop with
// whatever the baseline ISA offers). Used on CPUs without AVX2 and as a check on the others.
#include "cpu/gemm/conv_kernel.h"
#include "cpu/gemm/gemm.h"

namespace fastcnn {

namespace {
constexpr int MR = 4, NR = 16;
static_assert(MR <= kMaxInterleaveRows && NR <= kMaxInterleaveRows,
              "packing holds a row pointer each");

void kernel_generic(int64_t K, const float* Ap, const float* Bp, float* C, int64_t ldc, int m,
                    int n, bool accumulate) {
  float acc[MR][NR] = {};
  for (int64_t k = 0; k < K; ++k) {
    const float* a = Ap + k * MR;
    const float* b = Bp + k * NR;
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NR; ++j) acc[i][j] += a[i] * b[j];
  }
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j)
      C[i * ldc + j] = accumulate ? C[i * ldc + j] + acc[i][j] : acc[i][j];
}
}  // namespace

const GemmKernel kGemmGeneric = {"generic",
                                 MR,
                                 NR,
                                 kernel_generic,
                                 4,
                                 16,
                                 conv_kernel_portable<4, 16>,
                                 direct_fwd<4, 8>,
                                 direct_dw<8>,
                                 nullptr,
                                 nullptr,
                                 nullptr};

}  // namespace fastcnn
