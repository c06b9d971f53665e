// The CUDA ops: the same names and arguments as csrc/cpu/ops.h, on device pointers, in
// namespace fastcnn::cuda. Outputs are overwritten, never accumulated into (batch_stats, a
// running sum, excepted).
#pragma once

#include <cstdint>

#include "cpu/common.h"

namespace fastcnn::cuda {

// gemm.cu: C (M x N) = op(A) . op(B), row-major, bias per row or column, optional ReLU.
void sgemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const float* A, int64_t lda,
           const float* B, int64_t ldb, float* C, int64_t ldc, const float* bias_row,
           const float* bias_col, bool relu, bool accumulate);

// conv2d.cu: workspace holds C*kh*kw*OH*OW floats (one image's column matrix).
void conv2d_forward(const Window2d& g, const float* x, const float* w, const float* b, float* y,
                    bool relu, float* workspace);
void conv2d_backward(const Window2d& g, const float* x, const float* w, const float* dy, float* dx,
                     float* dw, float* db, float* workspace);

// pool2d.cu. maxpool2d_backward: g needs only N, C, H, W, OH, OW (indices say where each dy
// goes; one outside its plane is skipped); workspace holds N*C*(H*W + OH*OW) int32.
void maxpool2d_forward(const Window2d& g, const float* x, float* y, int32_t* indices, bool relu);
void maxpool2d_backward(const Window2d& g, const float* dy, const int32_t* indices, const float* y,
                        float* dx, int32_t* workspace);
void avgpool2d_forward(const Window2d& g, const float* x, float* y);
void avgpool2d_backward(const Window2d& g, const float* dy, float* dx);

// linear.cu
void linear_forward(int64_t N, int64_t in, int64_t out, const float* x, const float* w,
                    const float* b, float* y, bool relu);
void linear_backward(int64_t N, int64_t in, int64_t out, const float* x, const float* w,
                     const float* dy, float* dx, float* dw, float* db);

// activation.cu
void relu_forward(int64_t n, const float* x, float* y);
void relu_backward(int64_t n, const float* y, const float* dy, float* dx);

// loss.cu: logits, dlogits: (N, K); labels: (N,), a row whose label is outside [0, K) gets a
// NaN loss and a NaN dlogits row; label_smoothing in [0, 1] (see csrc/cpu/loss.cpp); row_loss:
// an N-double workspace; the mean loss is written to *loss (one float on the device).
void softmax_cross_entropy(int64_t N, int64_t K, const float* logits, const int64_t* labels,
                           float* dlogits, float label_smoothing, double* row_loss, float* loss);
// stats (2 doubles): stats[0] += *loss * N; stats[1] += the rows whose first maximum is at their
// label (a row holding NaN counts as wrong).
void batch_stats(int64_t N, int64_t K, const float* logits, const int64_t* labels,
                 const float* loss, double* stats);

// optim.cu
void sgd_step(int64_t n, float* param, const float* grad, float* momentum_buf, float lr,
              float momentum, float weight_decay, bool nesterov, bool first);
void adam_step(int64_t n, float* param, const float* grad, float* m, float* v, float lr,
               float beta1, float beta2, float eps, float weight_decay, int64_t step,
               bool decoupled);

}  // namespace fastcnn::cuda
