// conv2d on the GPU, the twin of csrc/cpu/conv2d.cpp's im2col path: per image, an im2col
// kernel builds the column matrix in the caller's workspace and the GPU SGEMM multiplies.
//   forward  y[n] = w (O x CKK) . col[n] (CKK x P), bias and ReLU in the SGEMM epilogue
//   dw       sum over n of dy[n] (O x P) . col[n]^T, images in order (accumulate after the first)
//   dx       dcol = w^T . dy[n], then col2im gathers (one thread per input element), no atomics
//   db       one thread per output channel sums images and pixels in order
// Everything is deterministic. A first, simple version: the CPU's indirect and direct kernels
// have no GPU twin yet.
#include "cuda/common.cuh"
#include "cuda/ops.cuh"

namespace fastcnn::cuda {

namespace {
struct Geom {
  int64_t C, H, W, O, kh, kw, sh, sw, ph, pw, OH, OW;
};

Geom geom(const Window2d& g) {
  return {g.C, g.H, g.W, g.O, g.kh, g.kw, g.sh, g.sw, g.ph, g.pw, g.OH, g.OW};
}

// x (C, H, W) -> col (C*kh*kw, OH*OW), zeros where a tap falls in the padding.
__global__ void im2col_kernel(Geom g, const float* x, float* col) {
  const int64_t P = g.OH * g.OW;
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= g.C * g.kh * g.kw * P) return;
  const int64_t r = e / P, p = e % P;
  const int64_t c = r / (g.kh * g.kw), ki = r / g.kw % g.kh, kj = r % g.kw;
  const int64_t ih = p / g.OW * g.sh - g.ph + ki, iw = p % g.OW * g.sw - g.pw + kj;
  col[e] = (ih >= 0 && ih < g.H && iw >= 0 && iw < g.W) ? x[(c * g.H + ih) * g.W + iw] : 0.f;
}

// The adjoint: dx (C, H, W) element = sum of the column entries of every tap that read it.
__global__ void col2im_kernel(Geom g, const float* col, float* dx) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= g.C * g.H * g.W) return;
  const int64_t c = e / (g.H * g.W), h = e / g.W % g.H, w = e % g.W, P = g.OH * g.OW;
  float sum = 0.f;
  for (int64_t ki = 0; ki < g.kh; ++ki) {
    const int64_t t = h + g.ph - ki;  // = oh * sh
    if (t < 0 || t % g.sh != 0 || t / g.sh >= g.OH) continue;
    for (int64_t kj = 0; kj < g.kw; ++kj) {
      const int64_t u = w + g.pw - kj;  // = ow * sw
      if (u < 0 || u % g.sw != 0 || u / g.sw >= g.OW) continue;
      sum += col[((c * g.kh + ki) * g.kw + kj) * P + t / g.sh * g.OW + u / g.sw];
    }
  }
  dx[e] = sum;
}

__global__ void bias_grad_kernel(int64_t N, int64_t O, int64_t P, const float* dy, float* db) {
  const int64_t o = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (o >= O) return;
  double acc = 0.0;
  for (int64_t n = 0; n < N; ++n) {
    const float* d = dy + (n * O + o) * P;
    float s = 0.f;
    for (int64_t p = 0; p < P; ++p) s += d[p];
    acc += s;
  }
  db[o] = static_cast<float>(acc);
}

void im2col(const Geom& g, const float* x, float* col) {
  const int64_t n = g.C * g.kh * g.kw * g.OH * g.OW;
  if (n <= 0) return;
  im2col_kernel<<<blocks_for(n), kThreads>>>(g, x, col);
  FASTCNN_CUDA_LAUNCH_CHECK();
}
}  // namespace

// ---- forward ----------------------------------------------------------------------------------

void conv2d_forward(const Window2d& w_, const float* x, const float* w, const float* b, float* y,
                    bool relu, float* workspace) {
  const Geom g = geom(w_);
  const int64_t CKK = g.C * g.kh * g.kw, P = g.OH * g.OW, in_size = g.C * g.H * g.W;
  for (int64_t n = 0; n < w_.N; ++n) {
    im2col(g, x + n * in_size, workspace);
    sgemm(false, false, g.O, P, CKK, w, CKK, workspace, P, y + n * g.O * P, P, b, nullptr, relu,
          false);
  }
}

// ---- backward ---------------------------------------------------------------------------------

void conv2d_backward(const Window2d& w_, const float* x, const float* w, const float* dy, float* dx,
                     float* dw, float* db, float* workspace) {
  const Geom g = geom(w_);
  const int64_t CKK = g.C * g.kh * g.kw, P = g.OH * g.OW, in_size = g.C * g.H * g.W;
  if (db && g.O > 0) {
    bias_grad_kernel<<<blocks_for(g.O), kThreads>>>(w_.N, g.O, P, dy, db);
    FASTCNN_CUDA_LAUNCH_CHECK();
  }
  if (w_.N == 0) FASTCNN_CUDA_CHECK(cudaMemset(dw, 0, sizeof(float) * g.O * CKK));
  for (int64_t n = 0; n < w_.N; ++n) {
    im2col(g, x + n * in_size, workspace);
    sgemm(false, true, g.O, CKK, P, dy + n * g.O * P, P, workspace, P, dw, CKK, nullptr, nullptr,
          false, n > 0);
  }
  if (!dx) return;
  for (int64_t n = 0; n < w_.N; ++n) {
    sgemm(true, false, CKK, P, g.O, w, CKK, dy + n * g.O * P, P, workspace, P, nullptr, nullptr,
          false, false);
    if (in_size > 0) {
      col2im_kernel<<<blocks_for(in_size), kThreads>>>(g, workspace, dx + n * in_size);
      FASTCNN_CUDA_LAUNCH_CHECK();
    }
  }
}

}  // namespace fastcnn::cuda
