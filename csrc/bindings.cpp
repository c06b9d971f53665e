// The pybind11 module fastcnn._C: argument checks, output allocation, GIL release, the call.
// Nothing here computes. Every check happens before any memory is touched, and every error
// names the argument and the expected versus actual shape. fastcnn/ops.py is the public face.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <limits>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "cpu/common.h"
#include "cpu/gemm/gemm.h"
#include "cpu/ops.h"
#ifdef FASTCNN_HAS_CUDA
#include "cuda/common.cuh"
#endif

namespace py = pybind11;
using fastcnn::Window2d;

namespace {

using F32 = py::array_t<float, py::array::c_style>;
using Shape = std::vector<int64_t>;

std::string shape_str(const Shape& s) {
  std::ostringstream os;
  os << "(";
  for (size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
  os << (s.size() == 1 ? ",)" : ")");
  return os.str();
}

Shape shape_of(const py::array& a) {
  return Shape(a.shape(), a.shape() + a.ndim());
}

[[noreturn]] void value_error(const std::string& msg) {
  throw py::value_error(msg);
}
[[noreturn]] void type_error(const std::string& msg) {
  throw py::type_error(msg);
}

// Checks that `a` is a C-contiguous float32 array of `ndim` dimensions (ndim < 0: any).
const float* in_f32(const py::array& a, const char* name, int ndim) {
  if (!a.dtype().is(py::dtype::of<float>()))
    type_error(std::string(name) + " must be float32, got " + std::string(py::str(a.dtype())) +
               " (convert with .astype(np.float32))");
  if (!(a.flags() & py::array::c_style))
    value_error(std::string(name) + " must be C-contiguous (use np.ascontiguousarray)");
  if (ndim >= 0 && a.ndim() != ndim)
    value_error(std::string(name) + " must have " + std::to_string(ndim) +
                " dimensions, got shape " + shape_str(shape_of(a)));
  return static_cast<const float*>(a.data());
}

void expect_shape(const py::array& a, const char* name, const Shape& want) {
  if (shape_of(a) != want)
    value_error(std::string(name) + " must have shape " + shape_str(want) + ", got " +
                shape_str(shape_of(a)));
}

bool overlaps(const py::array& a, const py::array& b) {
  const char* a0 = static_cast<const char*>(a.data());
  const char* b0 = static_cast<const char*>(b.data());
  return a.nbytes() > 0 && b.nbytes() > 0 && a0 < b0 + b.nbytes() && b0 < a0 + a.nbytes();
}

// The output: `out` if given (checked: float32, C-contiguous, exact shape, writeable, sharing no
// memory with `inputs`), else a new array.
F32 make_out(const std::optional<py::array>& out, const Shape& shape, const char* name = "out",
             std::initializer_list<const py::array*> inputs = {}) {
  if (out) {
    in_f32(*out, name, static_cast<int>(shape.size()));
    expect_shape(*out, name, shape);
    if (!out->writeable()) value_error(std::string(name) + " must be writeable");
    for (const py::array* in : inputs)
      if (overlaps(*out, *in))
        value_error(std::string(name) + " must not share memory with an input of this op");
    return py::reinterpret_borrow<F32>(*out);
  }
  return F32(shape);
}

float* data(F32& a) {
  return a.mutable_data();
}

void check_window(int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw) {
  if (kh < 1 || kw < 1)
    value_error("kernel_size must be >= 1, got (" + std::to_string(kh) + ", " + std::to_string(kw) +
                ")");
  if (sh < 1 || sw < 1)
    value_error("stride must be >= 1, got (" + std::to_string(sh) + ", " + std::to_string(sw) +
                ")");
  if (ph < 0 || pw < 0)
    value_error("padding must be >= 0, got (" + std::to_string(ph) + ", " + std::to_string(pw) +
                ")");
}

// Geometry of conv2d(x, w), every disagreement reported in terms of the user's arguments.
Window2d conv_geometry(const py::array& x, const py::array& w, int64_t sh, int64_t sw, int64_t ph,
                       int64_t pw) {
  in_f32(x, "x", 4);
  in_f32(w, "w", 4);
  Window2d g;
  g.N = x.shape(0), g.C = x.shape(1), g.H = x.shape(2), g.W = x.shape(3);
  g.O = w.shape(0), g.kh = w.shape(2), g.kw = w.shape(3);
  g.sh = sh, g.sw = sw, g.ph = ph, g.pw = pw;
  if (w.shape(1) != g.C)
    value_error("channel mismatch: x has " + std::to_string(g.C) + " channels (shape " +
                shape_str(shape_of(x)) + ") but w expects " + std::to_string(w.shape(1)) +
                " (shape " + shape_str(shape_of(w)) + ")");
  check_window(g.kh, g.kw, sh, sw, ph, pw);
  if (g.H + 2 * ph < g.kh || g.W + 2 * pw < g.kw)
    value_error("kernel " + shape_str({g.kh, g.kw}) + " is larger than the padded input " +
                shape_str({g.H + 2 * ph, g.W + 2 * pw}) + " (x shape " + shape_str(shape_of(x)) +
                ", padding " + shape_str({ph, pw}) + ")");
  g.finish();
  return g;
}

Window2d pool_geometry(const Shape& xs, const char* name, int64_t kh, int64_t kw, int64_t sh,
                       int64_t sw) {
  if (xs.size() != 4)
    value_error(std::string(name) + " must have 4 dimensions (N, C, H, W), got shape " +
                shape_str(xs));
  for (int64_t d : xs)
    if (d < 0) value_error(std::string(name) + " has a negative dimension: " + shape_str(xs));
  check_window(kh, kw, sh, sw, 0, 0);
  Window2d g;
  g.N = xs[0], g.C = xs[1], g.H = xs[2], g.W = xs[3], g.O = xs[1];
  g.kh = kh, g.kw = kw, g.sh = sh, g.sw = sw;
  if (g.H < kh || g.W < kw)
    value_error("kernel_size " + shape_str({kh, kw}) + " is larger than the input " +
                shape_str({g.H, g.W}) + " (" + name + " shape " + shape_str(xs) + ")");
  if (g.H * g.W > std::numeric_limits<int32_t>::max())
    value_error(std::string(name) + " planes are too large for int32 indices");
  g.finish();
  return g;
}

const float* optional_bias(const std::optional<py::array>& b, int64_t n) {
  if (!b) return nullptr;
  const float* p = in_f32(*b, "b", 1);
  if (b->shape(0) != n)
    value_error("b must have shape (" + std::to_string(n) +
                ",) to match the output features, got " + shape_str(shape_of(*b)));
  return p;
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
                          const OptArray& dw_out, const OptArray& db_out) {
  Window2d g = conv_geometry(x, w, sh, sw, ph, pw);
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
    fastcnn::conv2d_backward(g, xp, wp, dyp, dxp, dwp, dbp);
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
    if (!indices_out->dtype().is(py::dtype::of<int32_t>()) ||
        !(indices_out->flags() & py::array::c_style) || !indices_out->writeable())
      type_error("indices_out must be a writeable, C-contiguous int32 array");
    expect_shape(*indices_out, "indices_out", ys);
    if (overlaps(*indices_out, x) || overlaps(*indices_out, y))
      value_error("indices_out must not share memory with x or out");
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
  // The window itself is not needed: indices say where each dy goes.
  const float* dyp = in_f32(dy, "dy", 4);
  const Shape ys = shape_of(dy);
  if (x_shape.size() != 4)
    value_error("x_shape must have 4 dimensions (N, C, H, W), got " + shape_str(x_shape));
  if (x_shape[0] != ys[0] || x_shape[1] != ys[1] || x_shape[2] < 1 || x_shape[3] < 1)
    value_error("dy shape " + shape_str(ys) + " does not match x_shape " + shape_str(x_shape) +
                " (N and C must agree)");
  if (x_shape[2] * x_shape[3] > std::numeric_limits<int32_t>::max())
    value_error("x_shape planes are too large for int32 indices");
  Window2d g;
  g.N = x_shape[0], g.C = g.O = x_shape[1], g.H = x_shape[2], g.W = x_shape[3];
  g.OH = ys[2], g.OW = ys[3];
  if (!indices.dtype().is(py::dtype::of<int32_t>()))
    type_error("indices must be int32 (as returned by maxpool2d_forward), got " +
               std::string(py::str(indices.dtype())));
  if (!(indices.flags() & py::array::c_style)) value_error("indices must be C-contiguous");
  expect_shape(indices, "indices", ys);
  const int32_t* ip = static_cast<const int32_t*>(indices.data());
  // An index outside its plane would write outside dx: refuse it before touching memory.
  const int64_t count = g.N * g.C * g.OH * g.OW, plane = g.H * g.W;
  for (int64_t i = 0; i < count; ++i)
    if (ip[i] < 0 || ip[i] >= plane)
      value_error("indices holds " + std::to_string(ip[i]) + ", outside the input plane of " +
                  std::to_string(plane) + " elements (x_shape " + shape_str(x_shape) + ")");
  const float* yp = nullptr;
  if (y) {
    yp = in_f32(*y, "y", 4);
    expect_shape(*y, "y", ys);
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

void linear_check(const py::array& x, const py::array& w) {
  in_f32(x, "x", 2);
  in_f32(w, "w", 2);
  if (x.shape(1) != w.shape(1))
    value_error("feature mismatch: x has " + std::to_string(x.shape(1)) + " features (shape " +
                shape_str(shape_of(x)) + ") but w expects " + std::to_string(w.shape(1)) +
                " (shape " + shape_str(shape_of(w)) + ")");
}

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
                                const OptArray& out) {
  const float* zp = in_f32(logits, "logits", 2);
  const int64_t N = logits.shape(0), K = logits.shape(1);
  if (N < 1)
    value_error("logits must hold at least one row, got shape " + shape_str(shape_of(logits)));
  if (K < 1)
    value_error("logits must have at least one class, got shape " + shape_str(shape_of(logits)));
  if (labels.ndim() != 1 || labels.shape(0) != N)
    value_error("labels must have shape (" + std::to_string(N) + ",) to match logits " +
                shape_str(shape_of(logits)) + ", got " + shape_str(shape_of(labels)));
  if (!labels.dtype().is(py::dtype::of<int64_t>()) || !(labels.flags() & py::array::c_style))
    type_error("labels must be a contiguous int64 array (fastcnn.ops converts integer labels)");
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
    loss = fastcnn::softmax_cross_entropy(N, K, zp, lp, dp);
  }
  return py::make_tuple(loss, d);
}

// ---- optimizer updates ------------------------------------------------------------------------

float* inout_f32(py::array& a, const char* name) {
  in_f32(a, name, -1);
  if (!a.writeable()) value_error(std::string(name) + " must be writeable");
  return static_cast<float*>(a.mutable_data());
}

void sgd_step(py::array param, const py::array& grad, std::optional<py::array> buf, float lr,
              float momentum, float weight_decay, bool nesterov, bool first) {
  float* p = inout_f32(param, "param");
  const float* g = in_f32(grad, "grad", -1);
  expect_shape(grad, "grad", shape_of(param));
  float* bp = nullptr;
  if (momentum != 0.f) {
    if (!buf) value_error("momentum_buffer is required when momentum != 0");
    bp = inout_f32(*buf, "momentum_buffer");
    expect_shape(*buf, "momentum_buffer", shape_of(param));
  }
  const int64_t n = param.size();
  py::gil_scoped_release nogil;
  fastcnn::sgd_step(n, p, g, bp, lr, momentum, weight_decay, nesterov, first);
}

void adam_step(py::array param, const py::array& grad, py::array m, py::array v, float lr,
               float beta1, float beta2, float eps, float weight_decay, int64_t step) {
  float* p = inout_f32(param, "param");
  const float* g = in_f32(grad, "grad", -1);
  expect_shape(grad, "grad", shape_of(param));
  float* mp = inout_f32(m, "exp_avg");
  float* vp = inout_f32(v, "exp_avg_sq");
  expect_shape(m, "exp_avg", shape_of(param));
  expect_shape(v, "exp_avg_sq", shape_of(param));
  if (step < 1) value_error("step must be >= 1");
  const int64_t n = param.size();
  py::gil_scoped_release nogil;
  fastcnn::adam_step(n, p, g, mp, vp, lr, beta1, beta2, eps, weight_decay, step);
}

// ---- gemm (tests and benchmarks) --------------------------------------------------------------

F32 sgemm(const py::array& a, const py::array& b, bool trans_a, bool trans_b, bool reference) {
  const float* ap = in_f32(a, "a", 2);
  const float* bp = in_f32(b, "b", 2);
  const int64_t M = trans_a ? a.shape(1) : a.shape(0), K = trans_a ? a.shape(0) : a.shape(1);
  const int64_t Kb = trans_b ? b.shape(1) : b.shape(0), N = trans_b ? b.shape(0) : b.shape(1);
  if (K != Kb)
    value_error("inner dimensions differ: op(a) is " + shape_str({M, K}) + ", op(b) is " +
                shape_str({Kb, N}));
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
        arg("db_out") = none);
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
        arg("out") = none);
  m.def("sgd_step", &sgd_step, arg("param"), arg("grad"), arg("momentum_buffer").none(true),
        arg("lr"), arg("momentum"), arg("weight_decay"), arg("nesterov"), arg("first"));
  m.def("adam_step", &adam_step, arg("param"), arg("grad"), arg("exp_avg"), arg("exp_avg_sq"),
        arg("lr"), arg("beta1"), arg("beta2"), arg("eps"), arg("weight_decay"), arg("step"));
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
    else if (name == "im2col")
      fastcnn::set_conv_algorithm(fastcnn::ConvAlgorithm::kIm2col);
    else
      value_error("conv algorithm must be 'auto' or 'im2col', got '" + name + "'");
  });
  m.def("conv_algorithm", [] {
    return std::string(fastcnn::conv_algorithm() == fastcnn::ConvAlgorithm::kAuto ? "auto"
                                                                                  : "im2col");
  });
  m.def("gemm_kernels", &fastcnn::gemm_supported_kernels);
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
#else
  m.attr("has_cuda") = false;
#endif
}
