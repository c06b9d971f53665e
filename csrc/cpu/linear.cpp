// linear: y = x . w^T + b, PyTorch's Linear (w is (out, in)), on the SGEMM.
//   forward  y  (N x out) = x (N x in) . w^T, bias per column and ReLU in the epilogue
//   backward dx (N x in)  = dy (N x out) . w (out x in)
//            dw (out x in) = dy^T (out x N) . x (N x in);  db = column sums of dy
#include "cpu/gemm/gemm.h"
#include "cpu/ops.h"

namespace fastcnn {

// ---- forward ----------------------------------------------------------------------------------

void linear_forward(int64_t N, int64_t in, int64_t out, const float* x, const float* w,
                    const float* b, float* y, bool relu) {
  DenormalGuard denormals;
  GemmEpilogue ep;
  ep.bias_col = b;
  ep.relu = relu;
  sgemm(false, true, N, out, in, x, in, w, in, y, out, ep, num_threads());
}

// ---- backward ---------------------------------------------------------------------------------

void linear_backward(int64_t N, int64_t in, int64_t out, const float* x, const float* w,
                     const float* dy, float* dx, float* dw, float* db) {
  DenormalGuard denormals;
  const int T = num_threads();
  if (dx) sgemm(false, false, N, in, out, dy, out, w, in, dx, in, GemmEpilogue{}, T);
  sgemm(true, false, out, in, N, dy, out, x, in, dw, in, GemmEpilogue{}, T);
  if (db) {
    for (int64_t j = 0; j < out; ++j) db[j] = 0.f;
    for (int64_t i = 0; i < N; ++i)
      for (int64_t j = 0; j < out; ++j) db[j] += dy[i * out + j];
  }
}

}  // namespace fastcnn
