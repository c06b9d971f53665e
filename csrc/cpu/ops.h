// The CPU ops of fastcnn: stateless functions on raw pointers plus a Window2d geometry.
// Layout: NCHW, float32, C-contiguous. Shapes are listed per pointer; bindings.cpp has already
// checked them. Kernels OVERWRITE their outputs, never accumulate (see common.h).
#pragma once

#include <cstdint>

#include "cpu/common.h"

namespace fastcnn {

// ---- conv2d.cpp -------------------------------------------------------------------------------
// kAuto: Winograd's F(2x2, 5x5) and the indirect NHWC kernels where they apply; kIndirect: the
// same without Winograd; kIm2col: always the im2col reference path.
enum class ConvAlgorithm { kAuto, kIndirect, kIm2col };
void set_conv_algorithm(ConvAlgorithm a);
ConvAlgorithm conv_algorithm();
// x: (N, C, H, W); w: (O, C, kh, kw); b: (O,) or null; y: (N, O, OH, OW).
void conv2d_forward(const Window2d& g, const float* x, const float* w, const float* b, float* y,
                    bool relu);
// dy: (N, O, OH, OW); dx: (N, C, H, W) or null (not wanted); dw: like w; db: (O,) or null.
// add_dx: dx += the input gradient, instead of dx = (a residual block's shortcut, whose 1x1
// stride-2 gradient then touches only the pixels it reads).
void conv2d_backward(const Window2d& g, const float* x, const float* w, const float* dy, float* dx,
                     float* dw, float* db, bool add_dx = false);

// ---- pool2d.cpp (g.O == g.C, no padding) ------------------------------------------------------
// x: (N, C, H, W); y, indices: (N, C, OH, OW); indices hold h*W + w of each max in its plane.
// relu: y = max(0, max-pool(x)), which equals max-pool(relu(x)): a ReLU before a max-pool is
// done on the pooled output, a quarter of the size.
void maxpool2d_forward(const Window2d& g, const float* x, float* y, int32_t* indices, bool relu);
// dy, indices: (N, C, OH, OW); dx: (N, C, H, W). y: the forward output when it was ReLU'd (dy
// is then masked by y > 0), else null.
void maxpool2d_backward(const Window2d& g, const float* dy, const int32_t* indices, const float* y,
                        float* dx);
// The position of the first of n indices outside [0, plane), or -1 (checked before
// maxpool2d_backward writes through them).
int64_t first_index_outside(const int32_t* indices, int64_t n, int64_t plane);
void avgpool2d_forward(const Window2d& g, const float* x, float* y);
void avgpool2d_backward(const Window2d& g, const float* dy, float* dx);

// ---- linear.cpp -------------------------------------------------------------------------------
// x: (N, in); w: (out, in); b: (out,) or null; y: (N, out).
void linear_forward(int64_t N, int64_t in, int64_t out, const float* x, const float* w,
                    const float* b, float* y, bool relu);
// dy: (N, out); dx: (N, in) or null; dw: (out, in); db: (out,) or null.
void linear_backward(int64_t N, int64_t in, int64_t out, const float* x, const float* w,
                     const float* dy, float* dx, float* dw, float* db);

// ---- activation.cpp ---------------------------------------------------------------------------
// x, y: n elements. relu: y = x < 0 ? 0 : x; backward: dx = y <= 0 ? 0 : dy (NaN passes).
void relu_forward(int64_t n, const float* x, float* y);
void relu_backward(int64_t n, const float* y, const float* dy, float* dx);

// ---- loss.cpp ---------------------------------------------------------------------------------
// logits, dlogits: (N, K); labels: (N,) in [0, K); label_smoothing in [0, 1]. Returns the
// mean loss; dlogits = d(mean)/d.
double softmax_cross_entropy(int64_t N, int64_t K, const float* logits, const int64_t* labels,
                             float* dlogits, float label_smoothing);

// ---- batchnorm.cpp (per channel over N and P = H*W; see the file's header) --------------------
// x, y: (N, C, P); w, b: (C,) or null (no affine); residual: like x, added before the ReLU, or
// null; mean, invstd, var: (C,) out (var biased).
void batchnorm2d_forward_train(int64_t N, int64_t C, int64_t P, const float* x, const float* w,
                               const float* b, const float* residual, float eps, bool relu,
                               float* y, float* mean, float* invstd, float* var);
// scale, shift: (C,); residual: like x, or null.
void batchnorm2d_forward_eval(int64_t N, int64_t C, int64_t P, const float* x, const float* scale,
                              const float* shift, const float* residual, bool relu, float* y);
// The ReLU's mask, where the forward fused one: y > 0 for y, the forward output (needed where a
// residual was added), else with relu, x * scale + shift > 0 recomputed from mean, invstd, w
// and b as the forward computed it; neither: no ReLU. dx, dw, db, masked_dy (dy through the
// mask, like x; with a mask only) may each be null (not wanted).
void batchnorm2d_backward(int64_t N, int64_t C, int64_t P, const float* x, const float* dy,
                          const float* y, bool relu, const float* mean, const float* invstd,
                          const float* w, const float* b, float* dx, float* dw, float* db,
                          float* masked_dy);

// ---- activation.cpp (more) --------------------------------------------------------------------
// y = a + b, then max(0, .) with relu; n elements (y may be a).
void add(int64_t n, const float* a, const float* b, bool relu, float* y);

// ---- dropout.cpp ------------------------------------------------------------------------------
// n elements; p in [0, 1]; mask: 1 where kept.
void dropout_forward(int64_t n, const float* x, float p, uint64_t seed, float* y, uint8_t* mask);
void dropout_backward(int64_t n, const float* dy, const uint8_t* mask, float p, float* dx);

// ---- augment.cpp (uint8 pixels; see the file's header) ----------------------------------------
// x, y: (B, C, H, W); dy, dx: (B,) shifts; flip: (B,) 0 or 1.
void augment_crop_flip(int64_t B, int64_t C, int64_t H, int64_t W, const uint8_t* x,
                       const int32_t* dy, const int32_t* dx, const uint8_t* flip, uint8_t* y);
// x: (B, C, H, W); boxes: (B, 4) top, left, height, width (> 0) in pixels; flip: (B,);
// y: (B, C, OH, OW).
void augment_resized_crop(int64_t B, int64_t C, int64_t H, int64_t W, const uint8_t* x,
                          const float* boxes, const uint8_t* flip, int64_t OH, int64_t OW,
                          uint8_t* y);

// ---- optim.cpp (in place, n elements; PyTorch's update rules) ---------------------------------
// momentum_buf may be null when momentum == 0; `first` marks the buffer as not yet initialised.
void sgd_step(int64_t n, float* param, const float* grad, float* momentum_buf, float lr,
              float momentum, float weight_decay, bool nesterov, bool first);
// step: 1-based count of this update. decoupled: AdamW's weight decay, param *= 1 - lr * decay
// before the update, instead of Adam's decay * param added to the gradient.
void adam_step(int64_t n, float* param, const float* grad, float* m, float* v, float lr,
               float beta1, float beta2, float eps, float weight_decay, int64_t step,
               bool decoupled);

}  // namespace fastcnn
