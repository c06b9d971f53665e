// Max and average pooling on the GPU, the twins of csrc/cpu/pool2d.cpp: one thread per output
// forward; backward gathers (one thread per input element, summing the windows that cover it)
// instead of scattering with atomics, so results are deterministic.
#include "cuda/common.cuh"
#include "cuda/ops.cuh"

namespace fastcnn::cuda {

namespace {
struct Geom {
  int64_t planes, H, W, OH, OW, kh, kw, sh, sw;
};

Geom geom(const Window2d& g) { return {g.N * g.C, g.H, g.W, g.OH, g.OW, g.kh, g.kw, g.sh, g.sw}; }

__device__ bool beats(float v, float best) { return v > best || (v != v && best == best); }

__global__ void maxpool_forward_kernel(Geom g, const float* x, float* y, int32_t* indices,
                                       bool relu) {
  const int64_t o = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (o >= g.planes * g.OH * g.OW) return;
  const int64_t p = o / (g.OH * g.OW), oh = o / g.OW % g.OH, ow = o % g.OW;
  const float* xp = x + p * g.H * g.W;
  const int64_t h0 = oh * g.sh, w0 = ow * g.sw;
  float best = -INFINITY;
  int64_t at = h0 * g.W + w0;
  for (int64_t i = 0; i < g.kh; ++i)
    for (int64_t j = 0; j < g.kw; ++j) {
      const int64_t k = (h0 + i) * g.W + w0 + j;
      if (beats(xp[k], best)) best = xp[k], at = k;
    }
  y[o] = relu && best < 0.f ? 0.f : best;
  indices[o] = static_cast<int32_t>(at);
}

// Output windows [lo, hi) along one axis that cover input position i.
__device__ void covering(int64_t i, int64_t k, int64_t s, int64_t out, int64_t* lo, int64_t* hi) {
  *lo = i < k ? 0 : (i - k) / s + 1;
  *hi = min(i / s + 1, out);
}

__global__ void maxpool_backward_kernel(Geom g, const float* dy, const int32_t* indices,
                                        const float* y, float* dx) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= g.planes * g.H * g.W) return;
  const int64_t p = e / (g.H * g.W), pos = e % (g.H * g.W), h = pos / g.W, w = pos % g.W;
  int64_t oh0, oh1, ow0, ow1;
  covering(h, g.kh, g.sh, g.OH, &oh0, &oh1);
  covering(w, g.kw, g.sw, g.OW, &ow0, &ow1);
  float sum = 0.f;
  for (int64_t oh = oh0; oh < oh1; ++oh)
    for (int64_t ow = ow0; ow < ow1; ++ow) {
      const int64_t o = (p * g.OH + oh) * g.OW + ow;
      if (indices[o] == pos && !(y && y[o] <= 0.f)) sum += dy[o];
    }
  dx[e] = sum;
}

__global__ void avgpool_forward_kernel(Geom g, const float* x, float* y) {
  const int64_t o = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (o >= g.planes * g.OH * g.OW) return;
  const int64_t p = o / (g.OH * g.OW), oh = o / g.OW % g.OH, ow = o % g.OW;
  const float* xp = x + p * g.H * g.W + oh * g.sh * g.W + ow * g.sw;
  float s = 0.f;
  for (int64_t i = 0; i < g.kh; ++i)
    for (int64_t j = 0; j < g.kw; ++j) s += xp[i * g.W + j];
  y[o] = s * (1.f / static_cast<float>(g.kh * g.kw));
}

__global__ void avgpool_backward_kernel(Geom g, const float* dy, float* dx) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= g.planes * g.H * g.W) return;
  const int64_t p = e / (g.H * g.W), h = e / g.W % g.H, w = e % g.W;
  int64_t oh0, oh1, ow0, ow1;
  covering(h, g.kh, g.sh, g.OH, &oh0, &oh1);
  covering(w, g.kw, g.sw, g.OW, &ow0, &ow1);
  float sum = 0.f;
  for (int64_t oh = oh0; oh < oh1; ++oh)
    for (int64_t ow = ow0; ow < ow1; ++ow) sum += dy[(p * g.OH + oh) * g.OW + ow];
  dx[e] = sum * (1.f / static_cast<float>(g.kh * g.kw));
}
}  // namespace

// ---- max: forward, backward -------------------------------------------------------------------

void maxpool2d_forward(const Window2d& g, const float* x, float* y, int32_t* indices, bool relu) {
  const int64_t n = g.N * g.C * g.OH * g.OW;
  if (n <= 0) return;
  maxpool_forward_kernel<<<blocks_for(n), kThreads>>>(geom(g), x, y, indices, relu);
  FASTCNN_CUDA_LAUNCH_CHECK();
}

void maxpool2d_backward(const Window2d& g, const float* dy, const int32_t* indices,
                        const float* y, float* dx) {
  const int64_t n = g.N * g.C * g.H * g.W;
  if (n <= 0) return;
  maxpool_backward_kernel<<<blocks_for(n), kThreads>>>(geom(g), dy, indices, y, dx);
  FASTCNN_CUDA_LAUNCH_CHECK();
}

// ---- average: forward, backward ---------------------------------------------------------------

void avgpool2d_forward(const Window2d& g, const float* x, float* y) {
  const int64_t n = g.N * g.C * g.OH * g.OW;
  if (n <= 0) return;
  avgpool_forward_kernel<<<blocks_for(n), kThreads>>>(geom(g), x, y);
  FASTCNN_CUDA_LAUNCH_CHECK();
}

void avgpool2d_backward(const Window2d& g, const float* dy, float* dx) {
  const int64_t n = g.N * g.C * g.H * g.W;
  if (n <= 0) return;
  avgpool_backward_kernel<<<blocks_for(n), kThreads>>>(geom(g), dy, dx);
  FASTCNN_CUDA_LAUNCH_CHECK();
}

}  // namespace fastcnn::cuda
