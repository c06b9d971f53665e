// The argument checks of the Python bindings, shared by the CPU module (bindings.cpp, on numpy
// arrays) and the CUDA one (bindings_cuda.cpp, on DeviceArrays), so that both refuse the same
// arguments with the same exception and message: TypeError for a dtype, ValueError for a shape
// or a value. Every error names the argument and the expected versus actual shape.
//
// The checks are templates over the array type A. What they ask of it: a.ndim(), a.shape(i),
// a.data(), and the free functions shape_of(a), dtype_name(a), has_dtype<T>(a), c_contiguous(a),
// writeable(a) and overlaps(a, b): defined below for py::array, in cuda/array.cuh for
// DeviceArray (found by argument-dependent lookup).
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <initializer_list>
#include <limits>
#include <optional>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "cpu/common.h"

namespace fastcnn::checks {

namespace py = pybind11;
using Shape = std::vector<int64_t>;

inline std::string shape_str(const Shape& s) {
  std::ostringstream os;
  os << "(";
  for (size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
  os << (s.size() == 1 ? ",)" : ")");
  return os.str();
}

[[noreturn]] inline void value_error(const std::string& msg) {
  throw py::value_error(msg);
}
[[noreturn]] inline void type_error(const std::string& msg) {
  throw py::type_error(msg);
}

// ---- the array interface, for numpy arrays ----------------------------------------------------

inline Shape shape_of(const py::array& a) {
  return Shape(a.shape(), a.shape() + a.ndim());
}
inline std::string dtype_name(const py::array& a) {
  return std::string(py::str(a.dtype()));
}
template <class T>
bool has_dtype(const py::array& a) {
  return a.dtype().is(py::dtype::of<T>());
}
inline bool c_contiguous(const py::array& a) {
  return (a.flags() & py::array::c_style) != 0;
}
inline bool writeable(const py::array& a) {
  return a.writeable();
}
inline bool overlaps(const py::array& a, const py::array& b) {
  const char* a0 = static_cast<const char*>(a.data());
  const char* b0 = static_cast<const char*>(b.data());
  return a.nbytes() > 0 && b.nbytes() > 0 && a0 < b0 + b.nbytes() && b0 < a0 + a.nbytes();
}

// ---- arrays -----------------------------------------------------------------------------------

// Checks that `a` is a C-contiguous float32 array of `ndim` dimensions (ndim < 0: any).
template <class A>
const float* in_f32(const A& a, const char* name, int ndim) {
  if (!has_dtype<float>(a))
    type_error(std::string(name) + " must be float32, got " + dtype_name(a) +
               " (convert with .astype(np.float32))");
  if (!c_contiguous(a))
    value_error(std::string(name) + " must be C-contiguous (use np.ascontiguousarray)");
  if (ndim >= 0 && a.ndim() != ndim)
    value_error(std::string(name) + " must have " + std::to_string(ndim) +
                " dimensions, got shape " + shape_str(shape_of(a)));
  return static_cast<const float*>(a.data());
}

template <class A>
void expect_shape(const A& a, const char* name, const Shape& want) {
  if (shape_of(a) != want)
    value_error(std::string(name) + " must have shape " + shape_str(want) + ", got " +
                shape_str(shape_of(a)));
}

// An output buffer given by the caller: float32, C-contiguous, exact shape, writeable, sharing no
// memory with `inputs`.
template <class A>
void check_out(const A& out, const Shape& shape, const char* name,
               std::initializer_list<const A*> inputs) {
  in_f32(out, name, static_cast<int>(shape.size()));
  expect_shape(out, name, shape);
  if (!writeable(out)) value_error(std::string(name) + " must be writeable");
  for (const A* in : inputs)
    if (overlaps(out, *in))
      value_error(std::string(name) + " must not share memory with an input of this op");
}

// A parameter or optimizer state updated in place.
template <class A>
void check_inout(const A& a, const char* name) {
  in_f32(a, name, -1);
  if (!writeable(a)) value_error(std::string(name) + " must be writeable");
}

// ---- conv2d and pool2d geometry ---------------------------------------------------------------

inline void check_window(int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw) {
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
template <class A>
Window2d conv_geometry(const A& x, const A& w, int64_t sh, int64_t sw, int64_t ph, int64_t pw) {
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

inline Window2d pool_geometry(const Shape& xs, const char* name, int64_t kh, int64_t kw, int64_t sh,
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

// maxpool2d_forward's indices_out: int32, C-contiguous, writeable, shaped like y, apart from x
// and y.
template <class A>
void check_indices_out(const A& indices_out, const Shape& ys, const A& x, const A& y) {
  if (!has_dtype<int32_t>(indices_out) || !c_contiguous(indices_out) || !writeable(indices_out))
    type_error("indices_out must be a writeable, C-contiguous int32 array");
  expect_shape(indices_out, "indices_out", ys);
  if (overlaps(indices_out, x) || overlaps(indices_out, y))
    value_error("indices_out must not share memory with x or out");
}

// Geometry of maxpool2d_backward (input and output planes; the window itself is not needed:
// indices say where each dy goes). Checks dy, x_shape and the dtype and shape of indices, not
// their values.
template <class A>
Window2d maxpool_backward_geometry(const A& dy, const A& indices, const Shape& x_shape) {
  in_f32(dy, "dy", 4);
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
  if (!has_dtype<int32_t>(indices))
    type_error("indices must be int32 (as returned by maxpool2d_forward), got " +
               dtype_name(indices));
  if (!c_contiguous(indices)) value_error("indices must be C-contiguous");
  expect_shape(indices, "indices", ys);
  return g;
}

// ---- linear -----------------------------------------------------------------------------------

template <class A>
const float* optional_bias(const std::optional<A>& b, int64_t n) {
  if (!b) return nullptr;
  const float* p = in_f32(*b, "b", 1);
  if (b->shape(0) != n)
    value_error("b must have shape (" + std::to_string(n) +
                ",) to match the output features, got " + shape_str(shape_of(*b)));
  return p;
}

template <class A>
void linear_check(const A& x, const A& w) {
  in_f32(x, "x", 2);
  in_f32(w, "w", 2);
  if (x.shape(1) != w.shape(1))
    value_error("feature mismatch: x has " + std::to_string(x.shape(1)) + " features (shape " +
                shape_str(shape_of(x)) + ") but w expects " + std::to_string(w.shape(1)) +
                " (shape " + shape_str(shape_of(w)) + ")");
}

// ---- loss -------------------------------------------------------------------------------------

// logits (N, K) float32 with N, K >= 1 and labels (N,) contiguous int64; returns (N, K). Not the
// range of the labels: the CPU binding checks it on the host.
template <class A>
std::pair<int64_t, int64_t> loss_geometry(const A& logits, const A& labels) {
  in_f32(logits, "logits", 2);
  const int64_t N = logits.shape(0), K = logits.shape(1);
  if (N < 1)
    value_error("logits must hold at least one row, got shape " + shape_str(shape_of(logits)));
  if (K < 1)
    value_error("logits must have at least one class, got shape " + shape_str(shape_of(logits)));
  if (labels.ndim() != 1 || labels.shape(0) != N)
    value_error("labels must have shape (" + std::to_string(N) + ",) to match logits " +
                shape_str(shape_of(logits)) + ", got " + shape_str(shape_of(labels)));
  if (!has_dtype<int64_t>(labels) || !c_contiguous(labels))
    type_error("labels must be a contiguous int64 array (fastcnn.ops converts integer labels)");
  return {N, K};
}

inline void label_smoothing_check(float label_smoothing) {
  if (!(label_smoothing >= 0.f && label_smoothing <= 1.f))
    value_error("label_smoothing must be in [0, 1], got " + std::to_string(label_smoothing));
}

// ---- optimizer updates ------------------------------------------------------------------------

// sgd_step's arrays; buf may be absent only when momentum is 0.
template <class A>
void sgd_check(const A& param, const A& grad, const std::optional<A>& buf, float momentum) {
  check_inout(param, "param");
  in_f32(grad, "grad", -1);
  expect_shape(grad, "grad", shape_of(param));
  if (momentum != 0.f) {
    if (!buf) value_error("momentum_buffer is required when momentum != 0");
    check_inout(*buf, "momentum_buffer");
    expect_shape(*buf, "momentum_buffer", shape_of(param));
  }
}

template <class A>
void adam_check(const A& param, const A& grad, const A& m, const A& v, int64_t step) {
  check_inout(param, "param");
  in_f32(grad, "grad", -1);
  expect_shape(grad, "grad", shape_of(param));
  check_inout(m, "exp_avg");
  check_inout(v, "exp_avg_sq");
  expect_shape(m, "exp_avg", shape_of(param));
  expect_shape(v, "exp_avg_sq", shape_of(param));
  if (step < 1) value_error("step must be >= 1");
}

// ---- gemm -------------------------------------------------------------------------------------

struct GemmDims {
  int64_t M, N, K;
};

// op(a) (M x K) . op(b) (K x N), both float32 and 2-D.
template <class A>
GemmDims gemm_dims(const A& a, const A& b, bool trans_a, bool trans_b) {
  in_f32(a, "a", 2);
  in_f32(b, "b", 2);
  const int64_t M = trans_a ? a.shape(1) : a.shape(0), K = trans_a ? a.shape(0) : a.shape(1);
  const int64_t Kb = trans_b ? b.shape(1) : b.shape(0), N = trans_b ? b.shape(0) : b.shape(1);
  if (K != Kb)
    value_error("inner dimensions differ: op(a) is " + shape_str({M, K}) + ", op(b) is " +
                shape_str({Kb, N}));
  return {M, N, K};
}

}  // namespace fastcnn::checks
