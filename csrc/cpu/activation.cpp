// Element-wise activations. ReLU's backward reads the forward output y (y > 0 exactly where
// x > 0), so a layer need not keep its input. NaN propagates, as in PyTorch: relu(NaN) = NaN and
// its gradient passes (every ReLU in fastcnn, fused or not, follows these two rules).
#include "cpu/ops.h"

namespace fastcnn {

namespace {
// Below this, a second thread costs more than it saves. The `if` names `parallel`: a bare `if`
// on a combined construct also turns its `simd` off, and GCC then ran these loops one element
// at a time with a branch each (ReLU on 8,192 to 65,536 floats, 1-5 ns an element, 5-25x slower
// than vectorised).
constexpr int64_t kParallelMin = 1 << 16;
}  // namespace

// ---- relu: forward, backward ------------------------------------------------------------------

void relu_forward(int64_t n, const float* x, float* y) {
#ifdef FASTCNN_OPENMP
#pragma omp parallel for simd schedule(static) \
    num_threads(num_threads()) if (parallel : n > kParallelMin)
#endif
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] < 0.f ? 0.f : x[i];
}

void relu_backward(int64_t n, const float* y, const float* dy, float* dx) {
#ifdef FASTCNN_OPENMP
#pragma omp parallel for simd schedule(static) \
    num_threads(num_threads()) if (parallel : n > kParallelMin)
#endif
  for (int64_t i = 0; i < n; ++i) {
    const float g = dy[i];  // read unconditionally, so the select needs no branch
    dx[i] = y[i] <= 0.f ? 0.f : g;
  }
}

// ---- add, then relu if asked (a ResNet block: dx plus the shortcut's gradient; its output in
// eval mode) ------------------------------------------------------------------------------------

namespace {
template <bool kRelu>
void add_loop(int64_t n, const float* a, const float* b, float* y) {
#ifdef FASTCNN_OPENMP
#pragma omp parallel for simd schedule(static) \
    num_threads(num_threads()) if (parallel : n > kParallelMin)
#endif
  for (int64_t i = 0; i < n; ++i) {
    const float v = a[i] + b[i];
    y[i] = kRelu && v < 0.f ? 0.f : v;
  }
}
}  // namespace

void add(int64_t n, const float* a, const float* b, bool relu, float* y) {
  relu ? add_loop<true>(n, a, b, y) : add_loop<false>(n, a, b, y);
}

}  // namespace fastcnn
