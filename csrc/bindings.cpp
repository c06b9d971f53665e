// The pybind11 module fastcnn._C: argument checks (checks.h), output allocation, GIL release,
// the call. Nothing here computes. Every check happens before any memory is touched, and every
// error names the argument and the expected versus actual shape. fastcnn/ops.py is the public
// face. With CUDA, the submodule _C.cuda (bindings_cuda.cpp) holds the same ops on DeviceArrays.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "checks.h"
#include "cpu/common.h"
#include "cpu/gemm/gemm.h"
#include "cpu/ops.h"
#ifdef FASTCNN_HAS_CUDA
#include "cuda/common.cuh"
void bind_cuda(pybind11::module_& m);  // bindings_cuda.cpp
#endif

namespace py = pybind11;
using fastcnn::Window2d;

namespace {

using namespace fastcnn::checks;  // the argument checks, shared with bindings_cuda.cpp
using F32 = py::array_t<float, py::array::c_style>;

// The output: `out` if given (checked: float32, C-contiguous, exact shape, writeable, sharing no
// memory with `inputs`), else a new array.
F32 make_out(const std::optional<py::array>& out, const Shape& shape, const char* name = "out",
             std::initializer_list<const py::array*> inputs = {}) {
  if (out) {
    check_out(*out, shape, name, inputs);
    return py::reinterpret_borrow<F32>(*out);
  }
  return F32(shape);
}

float* data(F32& a) {
  return a.mutable_data();
}

// ---- conv2d -----------------------------------------------------------------------------------

F32 conv2d_forward(const py::array& x, const py::array& w, const std::optional<py::array>& b,
                   int64_t sh, int64_t sw, int64_t ph, int64_t pw, bool relu,
                   const std::optional<py::array>& out) {
  Window2d g = conv_geometry(x, w, sh, sw, ph, pw);
  const float* bp = optional_bias(b, g.O);
  F32 y = make_out(out, {g.N, g.O, g.OH, g.OW}, "out", {&x, &w});
  const float *xp = in_f32(x, "x", 4), *wp = in_f32(w, "w", 4);
  float* yp = data(y);
  {
    py::gil_scoped_release nogil;
    fastcnn::conv2d_forward(g, xp, wp, bp, yp, relu);
  }
  return y;
}

using OptArray = std::optional<py::array>;

py::tuple conv2d_backward(const py::array& x, const py::array& w, const py::array& dy, int64_t sh,
                          int64_t sw, int64_t ph, int64_t pw, bool need_dx, const OptArray& dx_out,
                          const OptArray& dw_out, const OptArray& db_out, bool add_dx) {
  Window2d g = conv_geometry(x, w, sh, sw, ph, pw);
  if (add_dx && (!need_dx || !dx_out))
    throw py::value_error("add_dx needs need_dx and dx_out, the array to add into");
  in_f32(dy, "dy", 4);
  expect_shape(dy, "dy", {g.N, g.O, g.OH, g.OW});
  F32 dw = make_out(dw_out, shape_of(w), "dw_out", {&x, &w, &dy});
  F32 db = make_out(db_out, {g.O}, "db_out", {&x, &w, &dy});
  py::object dx_obj = py::none();
  float* dxp = nullptr;
  if (need_dx) {
    F32 dx = make_out(dx_out, shape_of(x), "dx_out", {&x, &w, &dy});
    dxp = data(dx);
    dx_obj = dx;
  }
  const float *xp = in_f32(x, "x", 4), *wp = in_f32(w, "w", 4), *dyp = in_f32(dy, "dy", 4);
  float *dwp = data(dw), *dbp = data(db);
  {
    py::gil_scoped_release nogil;
    fastcnn::conv2d_backward(g, xp, wp, dyp, dxp, dwp, dbp, add_dx);
  }
  return py::make_tuple(dx_obj, dw, db);
}

// ---- pool2d -----------------------------------------------------------------------------------

py::tuple maxpool2d_forward(const py::array& x, int64_t kh, int64_t kw, int64_t sh, int64_t sw,
                            bool relu, const OptArray& out, const OptArray& indices_out) {
  in_f32(x, "x", 4);
  Window2d g = pool_geometry(shape_of(x), "x", kh, kw, sh, sw);
  const Shape ys{g.N, g.C, g.OH, g.OW};
  F32 y = make_out(out, ys, "out", {&x});
  py::array_t<int32_t> idx;
  if (indices_out) {
    check_indices_out(*indices_out, ys, x, static_cast<const py::array&>(y));
    idx = py::reinterpret_borrow<py::array_t<int32_t>>(*indices_out);
  } else {
    idx = py::array_t<int32_t>(ys);
  }
  const float* xp = in_f32(x, "x", 4);
  float* yp = data(y);
  int32_t* ip = idx.mutable_data();
  {
    py::gil_scoped_release nogil;
    fastcnn::maxpool2d_forward(g, xp, yp, ip, relu);
  }
  return py::make_tuple(y, idx);
}

F32 maxpool2d_backward(const py::array& dy, const py::array& indices, const Shape& x_shape,
                       const OptArray& y, const OptArray& out) {
  const Window2d g = maxpool_backward_geometry(dy, indices, x_shape);
  const float* dyp = in_f32(dy, "dy", 4);
  const int32_t* ip = static_cast<const int32_t*>(indices.data());
  // An index outside its plane would write outside dx: refuse it before touching memory.
  const int64_t count = g.N * g.C * g.OH * g.OW, plane = g.H * g.W;
  int64_t bad;
  {
    py::gil_scoped_release nogil;
    bad = fastcnn::first_index_outside(ip, count, plane);
  }
  if (bad >= 0)
    value_error("indices holds " + std::to_string(ip[bad]) + ", outside the input plane of " +
                std::to_string(plane) + " elements (x_shape " + shape_str(x_shape) + ")");
  const float* yp = nullptr;
  if (y) {
    yp = in_f32(*y, "y", 4);
    expect_shape(*y, "y", shape_of(dy));
  }
  F32 dx = make_out(out, x_shape, "out", {&dy, &indices});
  if (y && overlaps(dx, *y)) value_error("out must not share memory with y");
  float* dxp = data(dx);
  {
    py::gil_scoped_release nogil;
    fastcnn::maxpool2d_backward(g, dyp, ip, yp, dxp);
  }
  return dx;
}

F32 avgpool2d_forward(const py::array& x, int64_t kh, int64_t kw, int64_t sh, int64_t sw,
                      const OptArray& out) {
  in_f32(x, "x", 4);
  Window2d g = pool_geometry(shape_of(x), "x", kh, kw, sh, sw);
  F32 y = make_out(out, {g.N, g.C, g.OH, g.OW}, "out", {&x});
  const float* xp = in_f32(x, "x", 4);
  float* yp = data(y);
  {
    py::gil_scoped_release nogil;
    fastcnn::avgpool2d_forward(g, xp, yp);
  }
  return y;
}

F32 avgpool2d_backward(const py::array& dy, const Shape& x_shape, int64_t kh, int64_t kw,
                       int64_t sh, int64_t sw, const OptArray& out) {
  Window2d g = pool_geometry(x_shape, "x_shape", kh, kw, sh, sw);
  const float* dyp = in_f32(dy, "dy", 4);
  expect_shape(dy, "dy", {g.N, g.C, g.OH, g.OW});
  F32 dx = make_out(out, x_shape, "out", {&dy});
  float* dxp = data(dx);
  {
    py::gil_scoped_release nogil;
    fastcnn::avgpool2d_backward(g, dyp, dxp);
  }
  return dx;
}

// ---- linear -----------------------------------------------------------------------------------

F32 linear_forward(const py::array& x, const py::array& w, const std::optional<py::array>& b,
                   bool relu, const std::optional<py::array>& out) {
  linear_check(x, w);
  const int64_t N = x.shape(0), in = x.shape(1), outf = w.shape(0);
  const float* bp = optional_bias(b, outf);
  F32 y = make_out(out, {N, outf}, "out", {&x, &w});
  const float *xp = in_f32(x, "x", 2), *wp = in_f32(w, "w", 2);
  float* yp = data(y);
  {
    py::gil_scoped_release nogil;
    fastcnn::linear_forward(N, in, outf, xp, wp, bp, yp, relu);
  }
  return y;
}

py::tuple linear_backward(const py::array& x, const py::array& w, const py::array& dy, bool need_dx,
                          const OptArray& dx_out, const OptArray& dw_out, const OptArray& db_out) {
  linear_check(x, w);
  const int64_t N = x.shape(0), in = x.shape(1), outf = w.shape(0);
  const float* dyp = in_f32(dy, "dy", 2);
  expect_shape(dy, "dy", {N, outf});
  F32 dw = make_out(dw_out, {outf, in}, "dw_out", {&x, &w, &dy});
  F32 db = make_out(db_out, {outf}, "db_out", {&x, &w, &dy});
  py::object dx_obj = py::none();
  float* dxp = nullptr;
  if (need_dx) {
    F32 dx = make_out(dx_out, {N, in}, "dx_out", {&x, &w, &dy});
    dxp = data(dx);
    dx_obj = dx;
  }
  const float *xp = in_f32(x, "x", 2), *wp = in_f32(w, "w", 2);
  float *dwp = data(dw), *dbp = data(db);
  {
    py::gil_scoped_release nogil;
    fastcnn::linear_backward(N, in, outf, xp, wp, dyp, dxp, dwp, dbp);
  }
  return py::make_tuple(dx_obj, dw, db);
}

// ---- activation -------------------------------------------------------------------------------

F32 relu_forward(const py::array& x, const std::optional<py::array>& out) {
  const float* xp = in_f32(x, "x", -1);
  F32 y = make_out(out, shape_of(x));
  float* yp = data(y);
  const int64_t n = x.size();
  {
    py::gil_scoped_release nogil;
    fastcnn::relu_forward(n, xp, yp);
  }
  return y;
}

F32 relu_backward(const py::array& y, const py::array& dy, const std::optional<py::array>& out) {
  const float* yp = in_f32(y, "y", -1);
  const float* dyp = in_f32(dy, "dy", -1);
  expect_shape(dy, "dy", shape_of(y));
  F32 dx = make_out(out, shape_of(y));
  float* dxp = data(dx);
  const int64_t n = y.size();
  {
    py::gil_scoped_release nogil;
    fastcnn::relu_backward(n, yp, dyp, dxp);
  }
  return dx;
}

// ---- loss -------------------------------------------------------------------------------------

py::tuple softmax_cross_entropy(const py::array& logits, const py::array& labels,
                                const OptArray& out, float label_smoothing) {
  const auto [N, K] = loss_geometry(logits, labels);
  label_smoothing_check(label_smoothing);
  const float* zp = in_f32(logits, "logits", 2);
  const int64_t* lp = static_cast<const int64_t*>(labels.data());
  for (int64_t i = 0; i < N; ++i)
    if (lp[i] < 0 || lp[i] >= K)
      value_error("labels out of range: labels[" + std::to_string(i) +
                  "] = " + std::to_string(lp[i]) + ", but logits have " + std::to_string(K) +
                  " classes (valid: 0.." + std::to_string(K - 1) + ")");
  F32 d = make_out(out, {N, K}, "out", {&logits, &labels});
  float* dp = data(d);
  double loss;
  {
    py::gil_scoped_release nogil;
    loss = fastcnn::softmax_cross_entropy(N, K, zp, lp, dp, label_smoothing);
  }
  return py::make_tuple(loss, d);
}

// ---- batchnorm2d ------------------------------------------------------------------------------

// (C,) float32 per-channel values, or null when absent.
const float* per_channel(const OptArray& a, const char* name, int64_t C) {
  if (!a) return nullptr;
  const float* p = in_f32(*a, name, 1);
  expect_shape(*a, name, {C});
  return p;
}

// An optional array of x's shape (a residual added before the ReLU).
const float* like_x(const OptArray& a, const char* name, const py::array& x) {
  if (!a) return nullptr;
  const float* p = in_f32(*a, name, 4);
  expect_shape(*a, name, shape_of(x));
  return p;
}

py::tuple batchnorm2d_forward(const py::array& x, const OptArray& weight, const OptArray& bias,
                              double eps, bool relu, const OptArray& out,
                              const OptArray& residual) {
  const float* xp = in_f32(x, "x", 4);
  const int64_t N = x.shape(0), C = x.shape(1), P = x.shape(2) * x.shape(3);
  const float *wp = per_channel(weight, "weight", C), *bp = per_channel(bias, "bias", C);
  const float* rp = like_x(residual, "residual", x);
  if (!(eps > 0)) value_error("eps must be > 0");
  F32 y = residual ? make_out(out, shape_of(x), "out", {&x, &*residual})
                   : make_out(out, shape_of(x), "out", {&x});
  F32 mean({C}), invstd({C}), var({C});
  float *yp = data(y), *mp = data(mean), *ip = data(invstd), *vp = data(var);
  {
    py::gil_scoped_release nogil;
    fastcnn::batchnorm2d_forward_train(N, C, P, xp, wp, bp, rp, static_cast<float>(eps), relu, yp,
                                       mp, ip, vp);
  }
  return py::make_tuple(y, mean, invstd, var);
}

F32 batchnorm2d_forward_eval(const py::array& x, const py::array& scale, const py::array& shift,
                             bool relu, const OptArray& out, const OptArray& residual) {
  const float* xp = in_f32(x, "x", 4);
  const int64_t N = x.shape(0), C = x.shape(1), P = x.shape(2) * x.shape(3);
  const float *sp = per_channel(scale, "scale", C), *hp = per_channel(shift, "shift", C);
  const float* rp = like_x(residual, "residual", x);
  F32 y = residual ? make_out(out, shape_of(x), "out", {&x, &*residual})
                   : make_out(out, shape_of(x), "out", {&x});
  float* yp = data(y);
  {
    py::gil_scoped_release nogil;
    fastcnn::batchnorm2d_forward_eval(N, C, P, xp, sp, hp, rp, relu, yp);
  }
  return y;
}

py::tuple batchnorm2d_backward(const py::array& x, const py::array& dy, const OptArray& y,
                               const py::array& mean, const py::array& invstd,
                               const OptArray& weight, bool need_dx, bool need_affine,
                               const OptArray& dx_out, const OptArray& masked_dy_out, bool relu,
                               const OptArray& bias) {
  const float* xp = in_f32(x, "x", 4);
  const int64_t N = x.shape(0), C = x.shape(1), P = x.shape(2) * x.shape(3);
  const float* dyp = in_f32(dy, "dy", 4);
  expect_shape(dy, "dy", shape_of(x));
  const float* yp = nullptr;
  if (y) {
    yp = in_f32(*y, "y", 4);
    expect_shape(*y, "y", shape_of(x));
  }
  const float *mp = per_channel(mean, "mean", C), *ip = per_channel(invstd, "invstd", C);
  const float* wp = per_channel(weight, "weight", C);
  const float* bp = per_channel(bias, "bias", C);
  py::object dx = py::none(), dw = py::none(), db = py::none();
  float *dxp = nullptr, *dwp = nullptr, *dbp = nullptr;
  if (need_dx) {
    F32 a = make_out(dx_out, shape_of(x), "dx_out", {&x, &dy});
    dxp = data(a);
    dx = a;
  }
  if (need_affine) {
    F32 a({C}), b({C});
    dwp = data(a), dbp = data(b);
    dw = a, db = b;
  }
  float* gp = nullptr;
  if (masked_dy_out) {
    if (!y && !relu) value_error("masked_dy_out needs a ReLU's mask (y, or relu=True)");
    py::array g = *masked_dy_out;
    check_out(g, shape_of(x), "masked_dy_out", {&x, &dy});
    gp = static_cast<float*>(g.mutable_data());
  }
  {
    py::gil_scoped_release nogil;
    fastcnn::batchnorm2d_backward(N, C, P, xp, dyp, yp, relu, mp, ip, wp, bp, dxp, dwp, dbp, gp);
  }
  return py::make_tuple(dx, dw, db);
}

F32 add(const py::array& a, const py::array& b, bool relu, const OptArray& out) {
  const float* ap = in_f32(a, "a", -1);
  const float* bp = in_f32(b, "b", -1);
  expect_shape(b, "b", shape_of(a));
  F32 y = make_out(out, shape_of(a), "out", {&b});  // out may be a itself
  float* yp = data(y);
  const int64_t n = a.size();
  py::gil_scoped_release nogil;
  fastcnn::add(n, ap, bp, relu, yp);
  return y;
}

// ---- dropout ----------------------------------------------------------------------------------

py::tuple dropout_forward(const py::array& x, double p, uint64_t seed, const OptArray& out) {
  const float* xp = in_f32(x, "x", -1);
  if (!(p >= 0 && p <= 1)) value_error("p must be in [0, 1], got " + std::to_string(p));
  F32 y = make_out(out, shape_of(x), "out", {&x});
  py::array_t<uint8_t, py::array::c_style> mask(shape_of(x));
  float* yp = data(y);
  uint8_t* mp = mask.mutable_data();
  const int64_t n = x.size();
  {
    py::gil_scoped_release nogil;
    fastcnn::dropout_forward(n, xp, static_cast<float>(p), seed, yp, mp);
  }
  return py::make_tuple(y, mask);
}

F32 dropout_backward(const py::array& dy, const py::array& mask, double p, const OptArray& out) {
  const float* dyp = in_f32(dy, "dy", -1);
  if (!py::isinstance<py::array_t<uint8_t>>(mask) || mask.itemsize() != 1 ||
      !(mask.flags() & py::array::c_style))
    type_error("mask must be the C-contiguous uint8 mask dropout_forward returned");
  expect_shape(mask, "mask", shape_of(dy));
  if (!(p >= 0 && p <= 1)) value_error("p must be in [0, 1], got " + std::to_string(p));
  F32 dx = make_out(out, shape_of(dy), "out", {&dy});
  float* dxp = data(dx);
  const uint8_t* mp = static_cast<const uint8_t*>(mask.data());
  const int64_t n = dy.size();
  {
    py::gil_scoped_release nogil;
    fastcnn::dropout_backward(n, dyp, mp, static_cast<float>(p), dxp);
  }
  return dx;
}

// ---- augmentation -----------------------------------------------------------------------------

using U8 = py::array_t<uint8_t, py::array::c_style>;

// uint8, C-contiguous, `ndim` dimensions; the array's data.
template <class T>
const T* in_typed(const py::array& a, const char* name, int ndim, const char* dtype) {
  if (!py::isinstance<py::array_t<T>>(a) || a.dtype().kind() != py::dtype::of<T>().kind() ||
      a.itemsize() != sizeof(T))
    type_error(std::string(name) + " must be " + dtype + ", got " +
               std::string(py::str(a.dtype())));
  if (a.ndim() != ndim)
    value_error(std::string(name) + " must have " + std::to_string(ndim) + " dimensions, got " +
                std::to_string(a.ndim()));
  if (!(a.flags() & py::array::c_style)) value_error(std::string(name) + " must be C-contiguous");
  return static_cast<const T*>(a.data());
}

// One value per image of a (B, C, H, W) batch.
template <class T>
const T* per_image(const py::array& a, const char* name, int64_t B, const char* dtype) {
  const T* p = in_typed<T>(a, name, 1, dtype);
  if (a.shape(0) != B)
    value_error(std::string(name) + " must have one value per image (" + std::to_string(B) +
                "), got " + std::to_string(a.shape(0)));
  return p;
}

U8 augment_crop_flip(const py::array& x, const py::array& dy, const py::array& dx,
                     const py::array& flip) {
  const uint8_t* xp = in_typed<uint8_t>(x, "x", 4, "uint8");
  const int64_t B = x.shape(0), C = x.shape(1), H = x.shape(2), W = x.shape(3);
  const int32_t* dyp = per_image<int32_t>(dy, "dy", B, "int32");
  const int32_t* dxp = per_image<int32_t>(dx, "dx", B, "int32");
  const uint8_t* fp = per_image<uint8_t>(flip, "flip", B, "uint8");
  U8 y({B, C, H, W});
  uint8_t* yp = y.mutable_data();
  py::gil_scoped_release nogil;
  fastcnn::augment_crop_flip(B, C, H, W, xp, dyp, dxp, fp, yp);
  return y;
}

U8 augment_resized_crop(const py::array& x, const py::array& boxes, const py::array& flip,
                        int64_t OH, int64_t OW) {
  const uint8_t* xp = in_typed<uint8_t>(x, "x", 4, "uint8");
  const int64_t B = x.shape(0), C = x.shape(1), H = x.shape(2), W = x.shape(3);
  const float* bp = in_typed<float>(boxes, "boxes", 2, "float32");
  if (boxes.shape(0) != B || boxes.shape(1) != 4)
    value_error("boxes must be (" + std::to_string(B) + ", 4): top, left, height, width");
  for (int64_t b = 0; b < B; ++b)
    if (!(bp[4 * b + 2] > 0.f && bp[4 * b + 3] > 0.f && std::isfinite(bp[4 * b]) &&
          std::isfinite(bp[4 * b + 1]) && std::isfinite(bp[4 * b + 2]) &&
          std::isfinite(bp[4 * b + 3])))
      value_error("boxes[" + std::to_string(b) + "] must be finite with height, width > 0");
  const uint8_t* fp = per_image<uint8_t>(flip, "flip", B, "uint8");
  if (OH < 1 || OW < 1) value_error("the output size must be >= 1");
  if (B > 0 && (H < 1 || W < 1)) value_error("x has empty images");
  U8 y({B, C, OH, OW});
  uint8_t* yp = y.mutable_data();
  py::gil_scoped_release nogil;
  fastcnn::augment_resized_crop(B, C, H, W, xp, bp, fp, OH, OW, yp);
  return y;
}

// ---- optimizer updates ------------------------------------------------------------------------

float* mutable_f32(py::array& a) {
  return static_cast<float*>(a.mutable_data());
}

void sgd_step(py::array param, const py::array& grad, std::optional<py::array> buf, float lr,
              float momentum, float weight_decay, bool nesterov, bool first) {
  sgd_check(param, grad, buf, momentum);
  float* p = mutable_f32(param);
  const float* g = in_f32(grad, "grad", -1);
  float* bp = momentum != 0.f ? mutable_f32(*buf) : nullptr;
  const int64_t n = param.size();
  py::gil_scoped_release nogil;
  fastcnn::sgd_step(n, p, g, bp, lr, momentum, weight_decay, nesterov, first);
}

void adam_step(py::array param, const py::array& grad, py::array m, py::array v, float lr,
               float beta1, float beta2, float eps, float weight_decay, int64_t step,
               bool decoupled) {
  adam_check(param, grad, m, v, step);
  float* p = mutable_f32(param);
  const float* g = in_f32(grad, "grad", -1);
  float *mp = mutable_f32(m), *vp = mutable_f32(v);
  const int64_t n = param.size();
  py::gil_scoped_release nogil;
  fastcnn::adam_step(n, p, g, mp, vp, lr, beta1, beta2, eps, weight_decay, step, decoupled);
}

// ---- gemm (tests and benchmarks) --------------------------------------------------------------

F32 sgemm(const py::array& a, const py::array& b, bool trans_a, bool trans_b, bool reference) {
  const auto [M, N, K] = gemm_dims(a, b, trans_a, trans_b);
  const float *ap = in_f32(a, "a", 2), *bp = in_f32(b, "b", 2);
  F32 c(Shape{M, N});
  float* cp = data(c);
  const int64_t lda = a.shape(1), ldb = b.shape(1);
  py::gil_scoped_release nogil;
  fastcnn::DenormalGuard denormals;
  if (reference)
    fastcnn::sgemm_reference(trans_a, trans_b, M, N, K, ap, lda, bp, ldb, cp, N, {});
  else
    fastcnn::sgemm(trans_a, trans_b, M, N, K, ap, lda, bp, ldb, cp, N, {}, fastcnn::num_threads());
  return c;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "fastcnn's C++ kernels (private; use fastcnn.ops)";
  using py::arg;
  const auto none = py::none();

  m.def("conv2d_forward", &conv2d_forward, arg("x"), arg("w"), arg("b").none(true), arg("sh"),
        arg("sw"), arg("ph"), arg("pw"), arg("relu") = false, arg("out") = none);
  m.def("conv2d_backward", &conv2d_backward, arg("x"), arg("w"), arg("dy"), arg("sh"), arg("sw"),
        arg("ph"), arg("pw"), arg("need_dx") = true, arg("dx_out") = none, arg("dw_out") = none,
        arg("db_out") = none, arg("add_dx") = false);
  m.def("maxpool2d_forward", &maxpool2d_forward, arg("x"), arg("kh"), arg("kw"), arg("sh"),
        arg("sw"), arg("relu") = false, arg("out") = none, arg("indices_out") = none);
  m.def("maxpool2d_backward", &maxpool2d_backward, arg("dy"), arg("indices"), arg("x_shape"),
        arg("y") = none, arg("out") = none);
  m.def("avgpool2d_forward", &avgpool2d_forward, arg("x"), arg("kh"), arg("kw"), arg("sh"),
        arg("sw"), arg("out") = none);
  m.def("avgpool2d_backward", &avgpool2d_backward, arg("dy"), arg("x_shape"), arg("kh"), arg("kw"),
        arg("sh"), arg("sw"), arg("out") = none);
  m.def("linear_forward", &linear_forward, arg("x"), arg("w"), arg("b").none(true),
        arg("relu") = false, arg("out") = none);
  m.def("linear_backward", &linear_backward, arg("x"), arg("w"), arg("dy"), arg("need_dx") = true,
        arg("dx_out") = none, arg("dw_out") = none, arg("db_out") = none);
  m.def("relu_forward", &relu_forward, arg("x"), arg("out") = none);
  m.def("relu_backward", &relu_backward, arg("y"), arg("dy"), arg("out") = none);
  m.def("softmax_cross_entropy", &softmax_cross_entropy, arg("logits"), arg("labels"),
        arg("out") = none, arg("label_smoothing") = 0.f);
  m.def("sgd_step", &sgd_step, arg("param"), arg("grad"), arg("momentum_buffer").none(true),
        arg("lr"), arg("momentum"), arg("weight_decay"), arg("nesterov"), arg("first"));
  m.def("adam_step", &adam_step, arg("param"), arg("grad"), arg("exp_avg"), arg("exp_avg_sq"),
        arg("lr"), arg("beta1"), arg("beta2"), arg("eps"), arg("weight_decay"), arg("step"),
        arg("decoupled") = false);
  m.def("batchnorm2d_forward", &batchnorm2d_forward, arg("x"), arg("weight").none(true),
        arg("bias").none(true), arg("eps"), arg("relu") = false, arg("out") = none,
        arg("residual") = none);
  m.def("batchnorm2d_forward_eval", &batchnorm2d_forward_eval, arg("x"), arg("scale"), arg("shift"),
        arg("relu") = false, arg("out") = none, arg("residual") = none);
  m.def("batchnorm2d_backward", &batchnorm2d_backward, arg("x"), arg("dy"), arg("y").none(true),
        arg("mean"), arg("invstd"), arg("weight").none(true), arg("need_dx") = true,
        arg("need_affine") = true, arg("dx_out") = none, arg("masked_dy_out") = none,
        arg("relu") = false, arg("bias").none(true) = none);
  m.def("add", &add, arg("a"), arg("b"), arg("relu") = false, arg("out") = none);
  m.def("dropout_forward", &dropout_forward, arg("x"), arg("p"), arg("seed"), arg("out") = none);
  m.def("dropout_backward", &dropout_backward, arg("dy"), arg("mask"), arg("p"), arg("out") = none);
  m.def("augment_crop_flip", &augment_crop_flip, arg("x"), arg("dy"), arg("dx"), arg("flip"));
  m.def("augment_resized_crop", &augment_resized_crop, arg("x"), arg("boxes"), arg("flip"),
        arg("out_h"), arg("out_w"));
  m.def("sgemm", &sgemm, arg("a"), arg("b"), arg("trans_a") = false, arg("trans_b") = false,
        arg("reference") = false);

  m.def("get_num_threads", &fastcnn::num_threads);
  m.def("set_num_threads", [](int n) {
    if (n < 1) value_error("number of threads must be >= 1, got " + std::to_string(n));
    fastcnn::set_num_threads(n);
  });
  m.def("set_conv_algorithm", [](const std::string& name) {
    if (name == "auto")
      fastcnn::set_conv_algorithm(fastcnn::ConvAlgorithm::kAuto);
    else if (name == "indirect")
      fastcnn::set_conv_algorithm(fastcnn::ConvAlgorithm::kIndirect);
    else if (name == "im2col")
      fastcnn::set_conv_algorithm(fastcnn::ConvAlgorithm::kIm2col);
    else
      value_error("conv algorithm must be 'auto', 'indirect' or 'im2col', got '" + name + "'");
  });
  m.def("conv_algorithm", []() -> std::string {
    switch (fastcnn::conv_algorithm()) {
      case fastcnn::ConvAlgorithm::kAuto:
        return "auto";
      case fastcnn::ConvAlgorithm::kIndirect:
        return "indirect";
      default:
        return "im2col";
    }
  });
  m.def("gemm_kernels", &fastcnn::gemm_supported_kernels);
  m.def("gemm_kernel_table", [] {
    py::list table;
    for (const fastcnn::GemmKernel& k : fastcnn::gemm_all_kernels()) {
      py::dict row;
      row["name"] = std::string(k.name);
      row["isa"] = fastcnn::gemm_kernel_isa(k);
      row["supported"] = fastcnn::gemm_kernel_supported(k.name);
      row["mr"] = k.mr, row["nr"] = k.nr, row["cmr"] = k.cmr, row["cnr"] = k.cnr;
      row["kc"] = k.kc, row["mc"] = k.mc;
      table.append(row);
    }
    return table;
  });
  m.def("gemm_kernel", [] { return std::string(fastcnn::gemm_active_kernel().name); });
  m.def("set_gemm_kernel", [](const std::string& name) {
    if (!fastcnn::gemm_set_kernel(name)) {
      std::string have;
      for (const auto& k : fastcnn::gemm_supported_kernels())
        have += (have.empty() ? "" : ", ") + k;
      value_error("GEMM kernel '" + name +
                  "' is unknown or unsupported on this CPU (available: " + have + ")");
    }
  });
#ifdef FASTCNN_OPENMP
  m.attr("has_openmp") = true;
#else
  m.attr("has_openmp") = false;
#endif
#ifdef FASTCNN_HAS_CUDA
  m.attr("has_cuda") = true;  // built with the CUDA backend; whether a GPU answers is below
  m.def("cuda_device_count", &fastcnn::cuda::device_count);
  bind_cuda(m);  // the submodule _C.cuda: DeviceArray and the ops on it
#else
  m.attr("has_cuda") = false;
#endif
}
