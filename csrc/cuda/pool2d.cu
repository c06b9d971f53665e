// Max and average pooling on the GPU, the twins of csrc/cpu/pool2d.cpp: one thread per output
// forward. Backward gathers (one thread per input element) instead of scattering with atomics,
// adding in the CPU's order, so results are deterministic and match the CPU's.
//
// Max-pooling's backward knows no window (the op takes none: indices say where each dy goes,
// any position of the plane, as on the CPU), so it cannot gather over covering windows. It
// links, for each input element, the outputs whose index names it (an atomic exchange builds
// each list, in any order), then each element adds its list in output order. An index outside
// its plane joins no list: its dy goes nowhere (the CPU binding refuses such indices; on the
// device they cannot be checked without a copy), and nothing is read or written out of bounds.
#include "cuda/common.cuh"
#include "cuda/ops.cuh"

namespace fastcnn::cuda {

namespace {
struct Geom {
  int64_t planes, H, W, OH, OW, kh, kw, sh, sw;
};

Geom geom(const Window2d& g) {
  return {g.N * g.C, g.H, g.W, g.OH, g.OW, g.kh, g.kw, g.sh, g.sw};
}

__device__ bool beats(float v, float best) {
  return v > best || (v != v && best == best);
}

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

// head (planes, H*W), -1 filled: the last output linked to each input element; next (planes,
// OH*OW): the output linked before it. Outputs are numbered within their plane.
__global__ void maxpool_backward_link(Geom g, const int32_t* indices, int32_t* head,
                                      int32_t* next) {
  const int64_t o = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (o >= g.planes * g.OH * g.OW) return;
  const int64_t p = o / (g.OH * g.OW);
  const int32_t at = indices[o];
  if (at < 0 || at >= g.H * g.W) return;
  next[o] = atomicExch(&head[p * g.H * g.W + at], static_cast<int32_t>(o % (g.OH * g.OW)));
}

// dx element = the sum of its list's dy (masked where y <= 0), taken in increasing output order:
// each round walks the list for the smallest output after the last one added. Lists hold the
// windows that share a maximum, so they are short.
__global__ void maxpool_backward_gather(Geom g, const int32_t* head, const int32_t* next,
                                        const float* dy, const float* y, float* dx) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= g.planes * g.H * g.W) return;
  const int64_t base = e / (g.H * g.W) * g.OH * g.OW;
  const int32_t* link = next + base;
  float sum = 0.f;
  for (int32_t last = -1;;) {
    int32_t o = -1;
    for (int32_t q = head[e]; q >= 0; q = link[q])
      if (q > last && (o < 0 || q < o)) o = q;
    if (o < 0) break;
    sum += y && y[base + o] <= 0.f ? 0.f : dy[base + o];
    last = o;
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
  const float scale = 1.f / static_cast<float>(g.kh * g.kw);
  int64_t oh0, oh1, ow0, ow1;
  covering(h, g.kh, g.sh, g.OH, &oh0, &oh1);
  covering(w, g.kw, g.sw, g.OW, &ow0, &ow1);
  float sum = 0.f;
  for (int64_t oh = oh0; oh < oh1; ++oh)
    for (int64_t ow = ow0; ow < ow1; ++ow)
      sum += __fmul_rn(dy[(p * g.OH + oh) * g.OW + ow], scale);  // no FMA: the CPU's rounding
  dx[e] = sum;
}
}  // namespace

// ---- max: forward, backward -------------------------------------------------------------------

void maxpool2d_forward(const Window2d& g, const float* x, float* y, int32_t* indices, bool relu) {
  const int64_t n = g.N * g.C * g.OH * g.OW;
  if (n <= 0) return;
  maxpool_forward_kernel<<<blocks_for(n), kThreads>>>(geom(g), x, y, indices, relu);
  FASTCNN_CUDA_LAUNCH_CHECK();
}

void maxpool2d_backward(const Window2d& g, const float* dy, const int32_t* indices, const float* y,
                        float* dx, int32_t* workspace) {
  const int64_t n_in = g.N * g.C * g.H * g.W, n_out = g.N * g.C * g.OH * g.OW;
  if (n_in <= 0) return;
  int32_t *head = workspace, *next = workspace + n_in;
  FASTCNN_CUDA_CHECK(cudaMemsetAsync(head, 0xff, sizeof(int32_t) * n_in, 0));  // all -1
  if (n_out > 0) {
    maxpool_backward_link<<<blocks_for(n_out), kThreads>>>(geom(g), indices, head, next);
    FASTCNN_CUDA_LAUNCH_CHECK();
  }
  maxpool_backward_gather<<<blocks_for(n_in), kThreads>>>(geom(g), head, next, dy, y, dx);
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
