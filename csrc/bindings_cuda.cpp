// The submodule fastcnn._C.cuda: DeviceArray (cuda/array.cuh) and the ops of csrc/cuda on it,
// with the names, arguments and results of fastcnn._C's (bindings.cpp) and the same checks
// (checks.h), so a bad argument gets the same exception and message on either device. Like
// bindings.cpp: check, allocate, release the GIL, call; nothing here computes. Differences, by
// necessity:
//   - softmax_cross_entropy returns its loss as a 0-d float32 DeviceArray (no wait for the
//     device), and labels on the device cannot be range-checked: a row with a label outside
//     [0, K) gets a NaN loss (loss.cu).
//   - maxpool2d_backward cannot range-check its indices: one outside its plane is skipped.
//   - An out buffer overlaps an input when they share an allocation (a reshape view does).
// A numpy array where a DeviceArray is expected is a TypeError that says how to move it.
//
// conv2d, the loss and max-pool's backward borrow one process-wide device workspace, grown as
// needed (never allocated per call) and freed at exit.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <optional>
#include <string>
#include <vector>

#include "checks.h"
#include "cuda/array.cuh"
#include "cuda/common.cuh"
#include "cuda/ops.cuh"

namespace py = pybind11;
namespace fc = fastcnn::cuda;
using fastcnn::Window2d;
using fastcnn::cuda::DeviceArray;
using fastcnn::cuda::DType;

namespace {

using namespace fastcnn::checks;  // the argument checks, shared with bindings.cpp
using OptDevice = std::optional<DeviceArray>;

std::string type_name(py::handle o) {
  return py::str(py::type::of(o).attr("__name__"));
}

// ---- arguments and results --------------------------------------------------------------------

DeviceArray device_arg(py::handle o, const char* name) {
  if (py::isinstance<DeviceArray>(o)) return o.cast<DeviceArray>();
  if (py::isinstance<py::array>(o))
    type_error(std::string(name) +
               " is a numpy array but this op runs on cuda; move it with "
               "fastcnn.cuda.to_device / model.to('cuda')");
  type_error(std::string(name) + " must be a fastcnn DeviceArray (this op runs on cuda), got " +
             type_name(o));
}

OptDevice optional_device_arg(py::handle o, const char* name) {
  if (o.is_none()) return std::nullopt;
  return device_arg(o, name);
}

// Allocation may wait for the device (the first one creates the CUDA context): without the GIL.
DeviceArray new_array(const Shape& shape, DType dtype) {
  py::gil_scoped_release nogil;
  return DeviceArray(shape, dtype);
}

// An op's output: `out` if given (checked as on the CPU), else a new float32 array. `obj` is
// what Python gets back: the caller's own object when it gave one.
struct Out {
  DeviceArray array;
  py::object obj;
  float* data() const { return static_cast<float*>(array.data()); }
};

Out make_out(py::handle out, const Shape& shape, const char* name = "out",
             std::initializer_list<const DeviceArray*> inputs = {}) {
  if (!out.is_none()) {
    DeviceArray a = device_arg(out, name);
    check_out(a, shape, name, inputs);
    return {a, py::reinterpret_borrow<py::object>(out)};
  }
  DeviceArray a = new_array(shape, DType::kFloat32);
  return {a, py::cast(a)};
}

// The process's device scratch memory; hold its lock while queueing the kernels that use it.
fc::Workspace& workspace() {
  static fc::Workspace w;
  return w;
}

template <class T>
T* mutable_data(const DeviceArray& a) {
  return static_cast<T*>(a.data());
}

// ---- conv2d -----------------------------------------------------------------------------------

py::object conv2d_forward(py::handle x_, py::handle w_, py::handle b_, int64_t sh, int64_t sw,
                          int64_t ph, int64_t pw, bool relu, py::handle out) {
  const DeviceArray x = device_arg(x_, "x"), w = device_arg(w_, "w");
  const OptDevice b = optional_device_arg(b_, "b");
  const Window2d g = conv_geometry(x, w, sh, sw, ph, pw);
  const float* bp = optional_bias(b, g.O);
  Out y = make_out(out, {g.N, g.O, g.OH, g.OW}, "out", {&x, &w});
  const float *xp = in_f32(x, "x", 4), *wp = in_f32(w, "w", 4);
  float* yp = y.data();
  {
    py::gil_scoped_release nogil;
    auto lock = workspace().lock();
    float* col = static_cast<float*>(workspace().get(sizeof(float) * g.patch() * g.pixels()));
    fc::conv2d_forward(g, xp, wp, bp, yp, relu, col);
  }
  return y.obj;
}

py::tuple conv2d_backward(py::handle x_, py::handle w_, py::handle dy_, int64_t sh, int64_t sw,
                          int64_t ph, int64_t pw, bool need_dx, py::handle dx_out,
                          py::handle dw_out, py::handle db_out) {
  const DeviceArray x = device_arg(x_, "x"), w = device_arg(w_, "w"), dy = device_arg(dy_, "dy");
  const Window2d g = conv_geometry(x, w, sh, sw, ph, pw);
  in_f32(dy, "dy", 4);
  expect_shape(dy, "dy", {g.N, g.O, g.OH, g.OW});
  Out dw = make_out(dw_out, shape_of(w), "dw_out", {&x, &w, &dy});
  Out db = make_out(db_out, {g.O}, "db_out", {&x, &w, &dy});
  py::object dx_obj = py::none();
  float* dxp = nullptr;
  if (need_dx) {
    Out dx = make_out(dx_out, shape_of(x), "dx_out", {&x, &w, &dy});
    dxp = dx.data();
    dx_obj = dx.obj;
  }
  const float *xp = in_f32(x, "x", 4), *wp = in_f32(w, "w", 4), *dyp = in_f32(dy, "dy", 4);
  float *dwp = dw.data(), *dbp = db.data();
  {
    py::gil_scoped_release nogil;
    auto lock = workspace().lock();
    float* col = static_cast<float*>(workspace().get(sizeof(float) * g.patch() * g.pixels()));
    fc::conv2d_backward(g, xp, wp, dyp, dxp, dwp, dbp, col);
  }
  return py::make_tuple(dx_obj, dw.obj, db.obj);
}

// ---- pool2d -----------------------------------------------------------------------------------

py::tuple maxpool2d_forward(py::handle x_, int64_t kh, int64_t kw, int64_t sh, int64_t sw,
                            bool relu, py::handle out, py::handle indices_out) {
  const DeviceArray x = device_arg(x_, "x");
  in_f32(x, "x", 4);
  const Window2d g = pool_geometry(shape_of(x), "x", kh, kw, sh, sw);
  const Shape ys{g.N, g.C, g.OH, g.OW};
  Out y = make_out(out, ys, "out", {&x});
  py::object idx_obj;
  std::optional<DeviceArray> idx;
  if (!indices_out.is_none()) {
    idx = device_arg(indices_out, "indices_out");
    check_indices_out(*idx, ys, x, y.array);
    idx_obj = py::reinterpret_borrow<py::object>(indices_out);
  } else {
    idx = new_array(ys, DType::kInt32);
    idx_obj = py::cast(*idx);
  }
  const float* xp = in_f32(x, "x", 4);
  float* yp = y.data();
  int32_t* ip = mutable_data<int32_t>(*idx);
  {
    py::gil_scoped_release nogil;
    fc::maxpool2d_forward(g, xp, yp, ip, relu);
  }
  return py::make_tuple(y.obj, idx_obj);
}

py::object maxpool2d_backward(py::handle dy_, py::handle indices_, const Shape& x_shape,
                              py::handle y_, py::handle out) {
  const DeviceArray dy = device_arg(dy_, "dy"), indices = device_arg(indices_, "indices");
  const OptDevice y = optional_device_arg(y_, "y");
  const Window2d g = maxpool_backward_geometry(dy, indices, x_shape);
  const float* dyp = in_f32(dy, "dy", 4);
  const int32_t* ip = mutable_data<int32_t>(indices);
  const float* yp = nullptr;
  if (y) {
    yp = in_f32(*y, "y", 4);
    expect_shape(*y, "y", shape_of(dy));
  }
  Out dx = make_out(out, x_shape, "out", {&dy, &indices});
  if (y && overlaps(dx.array, *y)) value_error("out must not share memory with y");
  float* dxp = dx.data();
  const size_t links = static_cast<size_t>(g.N * g.C * (g.H * g.W + g.OH * g.OW));
  {
    py::gil_scoped_release nogil;
    auto lock = workspace().lock();
    int32_t* lists = static_cast<int32_t*>(workspace().get(sizeof(int32_t) * links));
    fc::maxpool2d_backward(g, dyp, ip, yp, dxp, lists);
  }
  return dx.obj;
}

py::object avgpool2d_forward(py::handle x_, int64_t kh, int64_t kw, int64_t sh, int64_t sw,
                             py::handle out) {
  const DeviceArray x = device_arg(x_, "x");
  in_f32(x, "x", 4);
  const Window2d g = pool_geometry(shape_of(x), "x", kh, kw, sh, sw);
  Out y = make_out(out, {g.N, g.C, g.OH, g.OW}, "out", {&x});
  const float* xp = in_f32(x, "x", 4);
  float* yp = y.data();
  {
    py::gil_scoped_release nogil;
    fc::avgpool2d_forward(g, xp, yp);
  }
  return y.obj;
}

py::object avgpool2d_backward(py::handle dy_, const Shape& x_shape, int64_t kh, int64_t kw,
                              int64_t sh, int64_t sw, py::handle out) {
  const DeviceArray dy = device_arg(dy_, "dy");
  const Window2d g = pool_geometry(x_shape, "x_shape", kh, kw, sh, sw);
  const float* dyp = in_f32(dy, "dy", 4);
  expect_shape(dy, "dy", {g.N, g.C, g.OH, g.OW});
  Out dx = make_out(out, x_shape, "out", {&dy});
  float* dxp = dx.data();
  {
    py::gil_scoped_release nogil;
    fc::avgpool2d_backward(g, dyp, dxp);
  }
  return dx.obj;
}

// ---- linear -----------------------------------------------------------------------------------

py::object linear_forward(py::handle x_, py::handle w_, py::handle b_, bool relu, py::handle out) {
  const DeviceArray x = device_arg(x_, "x"), w = device_arg(w_, "w");
  const OptDevice b = optional_device_arg(b_, "b");
  linear_check(x, w);
  const int64_t N = x.shape(0), in = x.shape(1), outf = w.shape(0);
  const float* bp = optional_bias(b, outf);
  Out y = make_out(out, {N, outf}, "out", {&x, &w});
  const float *xp = in_f32(x, "x", 2), *wp = in_f32(w, "w", 2);
  float* yp = y.data();
  {
    py::gil_scoped_release nogil;
    fc::linear_forward(N, in, outf, xp, wp, bp, yp, relu);
  }
  return y.obj;
}

py::tuple linear_backward(py::handle x_, py::handle w_, py::handle dy_, bool need_dx,
                          py::handle dx_out, py::handle dw_out, py::handle db_out) {
  const DeviceArray x = device_arg(x_, "x"), w = device_arg(w_, "w"), dy = device_arg(dy_, "dy");
  linear_check(x, w);
  const int64_t N = x.shape(0), in = x.shape(1), outf = w.shape(0);
  const float* dyp = in_f32(dy, "dy", 2);
  expect_shape(dy, "dy", {N, outf});
  Out dw = make_out(dw_out, {outf, in}, "dw_out", {&x, &w, &dy});
  Out db = make_out(db_out, {outf}, "db_out", {&x, &w, &dy});
  py::object dx_obj = py::none();
  float* dxp = nullptr;
  if (need_dx) {
    Out dx = make_out(dx_out, {N, in}, "dx_out", {&x, &w, &dy});
    dxp = dx.data();
    dx_obj = dx.obj;
  }
  const float *xp = in_f32(x, "x", 2), *wp = in_f32(w, "w", 2);
  float *dwp = dw.data(), *dbp = db.data();
  {
    py::gil_scoped_release nogil;
    fc::linear_backward(N, in, outf, xp, wp, dyp, dxp, dwp, dbp);
  }
  return py::make_tuple(dx_obj, dw.obj, db.obj);
}

// ---- activation -------------------------------------------------------------------------------

py::object relu_forward(py::handle x_, py::handle out) {
  const DeviceArray x = device_arg(x_, "x");
  const float* xp = in_f32(x, "x", -1);
  Out y = make_out(out, shape_of(x));
  float* yp = y.data();
  const int64_t n = x.size();
  {
    py::gil_scoped_release nogil;
    fc::relu_forward(n, xp, yp);
  }
  return y.obj;
}

py::object relu_backward(py::handle y_, py::handle dy_, py::handle out) {
  const DeviceArray y = device_arg(y_, "y"), dy = device_arg(dy_, "dy");
  const float* yp = in_f32(y, "y", -1);
  const float* dyp = in_f32(dy, "dy", -1);
  expect_shape(dy, "dy", shape_of(y));
  Out dx = make_out(out, shape_of(y));
  float* dxp = dx.data();
  const int64_t n = y.size();
  {
    py::gil_scoped_release nogil;
    fc::relu_backward(n, yp, dyp, dxp);
  }
  return dx.obj;
}

// ---- loss -------------------------------------------------------------------------------------

py::tuple softmax_cross_entropy(py::handle logits_, py::handle labels_, py::handle out,
                                float label_smoothing) {
  const DeviceArray logits = device_arg(logits_, "logits"), labels = device_arg(labels_, "labels");
  const auto [N, K] = loss_geometry(logits, labels);
  label_smoothing_check(label_smoothing);
  const float* zp = in_f32(logits, "logits", 2);
  const int64_t* lp = mutable_data<int64_t>(labels);
  Out d = make_out(out, {N, K}, "out", {&logits, &labels});
  DeviceArray loss = new_array({}, DType::kFloat32);
  float *dp = d.data(), *lossp = mutable_data<float>(loss);
  {
    py::gil_scoped_release nogil;
    auto lock = workspace().lock();
    double* row_loss = static_cast<double*>(workspace().get(sizeof(double) * N));
    fc::softmax_cross_entropy(N, K, zp, lp, dp, label_smoothing, row_loss, lossp);
  }
  return py::make_tuple(loss, d.obj);
}

// stats[0] += loss * N; stats[1] += correct predictions: an epoch's sums, kept on the device.
void batch_stats(py::handle logits_, py::handle labels_, py::handle loss_, py::handle stats_) {
  const DeviceArray logits = device_arg(logits_, "logits"), labels = device_arg(labels_, "labels");
  const DeviceArray loss = device_arg(loss_, "loss"), stats = device_arg(stats_, "stats");
  const auto [N, K] = loss_geometry(logits, labels);
  const float* lossp = in_f32(loss, "loss", 0);
  if (!has_dtype<double>(stats)) type_error("stats must be float64, got " + dtype_name(stats));
  expect_shape(stats, "stats", {2});
  const float* zp = in_f32(logits, "logits", 2);
  const int64_t* lp = mutable_data<int64_t>(labels);
  double* sp = mutable_data<double>(stats);
  py::gil_scoped_release nogil;
  fc::batch_stats(N, K, zp, lp, lossp, sp);
}

// ---- optimizer updates ------------------------------------------------------------------------

void sgd_step(py::handle param_, py::handle grad_, py::handle buf_, float lr, float momentum,
              float weight_decay, bool nesterov, bool first) {
  const DeviceArray param = device_arg(param_, "param"), grad = device_arg(grad_, "grad");
  const OptDevice buf = optional_device_arg(buf_, "momentum_buffer");
  sgd_check(param, grad, buf, momentum);
  float* p = mutable_data<float>(param);
  const float* g = in_f32(grad, "grad", -1);
  float* bp = momentum != 0.f ? mutable_data<float>(*buf) : nullptr;
  const int64_t n = param.size();
  py::gil_scoped_release nogil;
  fc::sgd_step(n, p, g, bp, lr, momentum, weight_decay, nesterov, first);
}

void adam_step(py::handle param_, py::handle grad_, py::handle m_, py::handle v_, float lr,
               float beta1, float beta2, float eps, float weight_decay, int64_t step,
               bool decoupled) {
  const DeviceArray param = device_arg(param_, "param"), grad = device_arg(grad_, "grad");
  const DeviceArray m = device_arg(m_, "exp_avg"), v = device_arg(v_, "exp_avg_sq");
  adam_check(param, grad, m, v, step);
  float* p = mutable_data<float>(param);
  const float* g = in_f32(grad, "grad", -1);
  float *mp = mutable_data<float>(m), *vp = mutable_data<float>(v);
  const int64_t n = param.size();
  py::gil_scoped_release nogil;
  fc::adam_step(n, p, g, mp, vp, lr, beta1, beta2, eps, weight_decay, step, decoupled);
}

// ---- gemm (tests and benchmarks) --------------------------------------------------------------

// `reference` is accepted for the CPU signature's sake: the GPU has one SGEMM.
py::object sgemm(py::handle a_, py::handle b_, bool trans_a, bool trans_b, bool /*reference*/) {
  const DeviceArray a = device_arg(a_, "a"), b = device_arg(b_, "b");
  const auto [M, N, K] = gemm_dims(a, b, trans_a, trans_b);
  const float *ap = in_f32(a, "a", 2), *bp = in_f32(b, "b", 2);
  Out c = make_out(py::none(), {M, N});
  float* cp = c.data();
  const int64_t lda = a.shape(1), ldb = b.shape(1);
  {
    py::gil_scoped_release nogil;
    fc::sgemm(trans_a, trans_b, M, N, K, ap, lda, bp, ldb, cp, N, nullptr, nullptr, false, false);
  }
  return c.obj;
}

// ---- DeviceArray: numpy in and out ------------------------------------------------------------

py::dtype numpy_dtype(DType t) {
  switch (t) {
    case DType::kFloat32:
      return py::dtype::of<float>();
    case DType::kInt32:
      return py::dtype::of<int32_t>();
    case DType::kInt64:
      return py::dtype::of<int64_t>();
    case DType::kFloat64:
      return py::dtype::of<double>();
  }
  return py::dtype::of<float>();
}

// The DType of a numpy dtype (any byte order); TypeError for one a DeviceArray cannot hold.
DType device_dtype(const py::dtype& dt) {
  switch (dt.normalized_num()) {
    case py::dtype::num_of<float>():
      return DType::kFloat32;
    case py::dtype::num_of<int32_t>():
      return DType::kInt32;
    case py::dtype::num_of<int64_t>():
      return DType::kInt64;
    case py::dtype::num_of<double>():
      return DType::kFloat64;
    default:
      type_error("a DeviceArray holds float32, int32, int64 or float64, got " +
                 std::string(py::str(dt)));
  }
}

py::array as_numpy(py::handle o, const char* what) {
  py::array a = py::array::ensure(o);
  if (!a) type_error(std::string(what) + " needs a numpy array, got " + type_name(o));
  return a;
}

// `a` converted (numpy's cast) to T, C-contiguous, in native byte order: a copy only if needed.
template <class T>
py::array host_as(const py::array& a) {
  return py::array_t<T, py::array::c_style | py::array::forcecast>::ensure(a);
}

py::array host_as(const py::array& a, DType t) {
  switch (t) {
    case DType::kFloat32:
      return host_as<float>(a);
    case DType::kInt32:
      return host_as<int32_t>(a);
    case DType::kInt64:
      return host_as<int64_t>(a);
    case DType::kFloat64:
      return host_as<double>(a);
  }
  return a;
}

void upload(const DeviceArray& d, const py::array& host) {
  const void* src = host.data();
  py::gil_scoped_release nogil;
  d.copy_from_host(src);
}

DeviceArray from_numpy(py::handle o) {
  const py::array a = as_numpy(o, "DeviceArray");
  const DType t = device_dtype(a.dtype());
  const py::array host = host_as(a, t);
  DeviceArray d = new_array(shape_of(host), t);
  upload(d, host);
  return d;
}

py::array to_numpy(const DeviceArray& d) {
  py::array host(numpy_dtype(d.dtype()), d.shape());
  void* dst = host.mutable_data();
  {
    py::gil_scoped_release nogil;
    d.copy_to_host(dst);
  }
  return host;
}

// self[...] = src: a DeviceArray of the same dtype, or a numpy array of the same kind (float for
// a float array, integer for an integer one; numpy casts it on the host). Shapes must agree.
void copy_from(const DeviceArray& self, py::handle src) {
  if (py::isinstance<DeviceArray>(src)) {
    const DeviceArray s = src.cast<DeviceArray>();
    if (s.dtype() != self.dtype())
      type_error(std::string("copy_from: src is ") + dtype_name(s) + ", this array is " +
                 dtype_name(self));
    expect_shape(s, "src", self.shape());
    py::gil_scoped_release nogil;
    self.copy_from(s);
    return;
  }
  const py::array a = as_numpy(src, "copy_from");
  const bool floating = self.dtype() == DType::kFloat32 || self.dtype() == DType::kFloat64;
  const char kind = a.dtype().kind();
  if (floating ? kind != 'f' : kind != 'i' && kind != 'u')
    type_error("copy_from: cannot copy " + std::string(py::str(a.dtype())) + " values into a " +
               dtype_name(self) + " DeviceArray");
  expect_shape(a, "src", self.shape());
  upload(self, host_as(a, self.dtype()));
}

// A shape argument: an int, or a sequence of ints.
Shape shape_arg(py::handle o) {
  auto dim = [](py::handle d) -> int64_t {
    if (!PyIndex_Check(d.ptr()))
      type_error("shape must hold integers, got " + type_name(d) + " " + std::string(py::repr(d)));
    return py::int_(py::reinterpret_borrow<py::object>(d)).cast<int64_t>();
  };
  if (PyIndex_Check(o.ptr())) return {dim(o)};
  if (!py::isinstance<py::sequence>(o) || py::isinstance<py::str>(o))
    type_error("shape must be an int or a sequence of ints, got " + type_name(o));
  Shape s;
  for (py::handle d : py::reinterpret_borrow<py::sequence>(o)) s.push_back(dim(d));
  return s;
}

Shape new_shape(py::handle shape) {
  Shape s = shape_arg(shape);
  for (int64_t d : s)
    if (d < 0) value_error("negative dimensions are not allowed, got shape " + shape_str(s));
  return s;
}

// numpy's reshape rules: ints or one sequence, one -1 inferred from the size.
DeviceArray reshape(const DeviceArray& a, const py::args& args) {
  Shape s =
      args.size() == 1 && !PyIndex_Check(args[0].ptr()) ? shape_arg(args[0]) : shape_arg(args);
  int64_t known = 1;
  int unknown = -1;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == -1) {
      if (unknown >= 0) value_error("can only specify one unknown dimension");
      unknown = static_cast<int>(i);
    } else if (s[i] < 0) {
      value_error("negative dimensions are not allowed, got shape " + shape_str(s));
    } else {
      known *= s[i];
    }
  }
  if (unknown >= 0 && known > 0 && a.size() % known == 0) s[unknown] = a.size() / known;
  if ((unknown >= 0 && s[unknown] == -1) || (unknown < 0 && known != a.size()))
    value_error("cannot reshape array of size " + std::to_string(a.size()) + " into shape " +
                shape_str(s));
  return a.view(s);
}

double to_float(const DeviceArray& a) {
  if (a.size() != 1) type_error("only size-1 arrays can be converted to Python scalars");
  union {
    float f;
    int32_t i;
    int64_t l;
    double d;
  } v{};
  {
    py::gil_scoped_release nogil;
    a.copy_to_host(&v);
  }
  switch (a.dtype()) {
    case DType::kFloat32:
      return v.f;
    case DType::kInt32:
      return v.i;
    case DType::kInt64:
      return static_cast<double>(v.l);
    case DType::kFloat64:
      return v.d;
  }
  return 0.0;
}

std::string repr(const DeviceArray& a) {
  return "DeviceArray(shape=" + shape_str(a.shape()) + ", dtype=" + dtype_name(a) +
         ", device='cuda')";
}

}  // namespace

void bind_cuda(py::module_& m) {
  using py::arg;
  const auto none = py::none();
  py::module_ c = m.def_submodule("cuda", "fastcnn's CUDA kernels on DeviceArrays (private)");

  py::class_<DeviceArray>(c, "DeviceArray",
                          "An array in GPU memory: float32, int32, int64 or float64, C order.")
      .def(py::init(&from_numpy), arg("array"), "A copy of a numpy array on the GPU.")
      .def_property_readonly("shape",
                             [](const DeviceArray& a) { return py::tuple(py::cast(a.shape())); })
      .def_property_readonly("ndim", &DeviceArray::ndim)
      .def_property_readonly("size", &DeviceArray::size)
      .def_property_readonly("nbytes", &DeviceArray::nbytes)
      .def_property_readonly("dtype", [](const DeviceArray& a) { return numpy_dtype(a.dtype()); })
      .def_property_readonly("device", [](const DeviceArray&) { return "cuda"; })
      .def("__len__",
           [](const DeviceArray& a) {
             if (a.ndim() == 0) type_error("len() of unsized object");
             return a.shape(0);
           })
      .def("__repr__", &repr)
      .def("__float__", &to_float)
      .def("numpy", &to_numpy, "A numpy copy (waits for the work queued on the GPU).")
      .def("reshape", &reshape, "A view with another shape (ints or one tuple; one -1 allowed).")
      .def("copy_from", &copy_from, arg("src"))
      .def(
          "__iadd__",
          [](py::object self, py::handle other) {
            const DeviceArray& a = self.cast<const DeviceArray&>();
            const DeviceArray b = device_arg(other, "other");
            if (!has_dtype<float>(a) || !has_dtype<float>(b))
              type_error("+= needs float32 DeviceArrays, got " + dtype_name(a) +
                         " += " + dtype_name(b));
            expect_shape(b, "other", a.shape());
            {
              py::gil_scoped_release nogil;
              fc::add_inplace(a.size(), mutable_data<float>(b), mutable_data<float>(a));
            }
            return self;
          },
          arg("other"))
      .def("zero_", [](py::object self) {
        const DeviceArray& a = self.cast<const DeviceArray&>();
        {
          py::gil_scoped_release nogil;
          a.zero();
        }
        return self;
      });

  c.def(
      "empty",
      [](py::handle shape, const py::object& dtype) {
        return new_array(new_shape(shape), device_dtype(py::dtype::from_args(dtype)));
      },
      arg("shape"), arg("dtype") = "float32");
  c.def(
      "zeros",
      [](py::handle shape, const py::object& dtype) {
        DeviceArray a = new_array(new_shape(shape), device_dtype(py::dtype::from_args(dtype)));
        {
          py::gil_scoped_release nogil;
          a.zero();
        }
        return a;
      },
      arg("shape"), arg("dtype") = "float32");
  c.def("synchronize", [] {
    py::gil_scoped_release nogil;
    FASTCNN_CUDA_CHECK(cudaDeviceSynchronize());
  });

  c.def("conv2d_forward", &conv2d_forward, arg("x"), arg("w"), arg("b").none(true), arg("sh"),
        arg("sw"), arg("ph"), arg("pw"), arg("relu") = false, arg("out") = none);
  c.def("conv2d_backward", &conv2d_backward, arg("x"), arg("w"), arg("dy"), arg("sh"), arg("sw"),
        arg("ph"), arg("pw"), arg("need_dx") = true, arg("dx_out") = none, arg("dw_out") = none,
        arg("db_out") = none);
  c.def("maxpool2d_forward", &maxpool2d_forward, arg("x"), arg("kh"), arg("kw"), arg("sh"),
        arg("sw"), arg("relu") = false, arg("out") = none, arg("indices_out") = none);
  c.def("maxpool2d_backward", &maxpool2d_backward, arg("dy"), arg("indices"), arg("x_shape"),
        arg("y") = none, arg("out") = none);
  c.def("avgpool2d_forward", &avgpool2d_forward, arg("x"), arg("kh"), arg("kw"), arg("sh"),
        arg("sw"), arg("out") = none);
  c.def("avgpool2d_backward", &avgpool2d_backward, arg("dy"), arg("x_shape"), arg("kh"), arg("kw"),
        arg("sh"), arg("sw"), arg("out") = none);
  c.def("linear_forward", &linear_forward, arg("x"), arg("w"), arg("b").none(true),
        arg("relu") = false, arg("out") = none);
  c.def("linear_backward", &linear_backward, arg("x"), arg("w"), arg("dy"), arg("need_dx") = true,
        arg("dx_out") = none, arg("dw_out") = none, arg("db_out") = none);
  c.def("relu_forward", &relu_forward, arg("x"), arg("out") = none);
  c.def("relu_backward", &relu_backward, arg("y"), arg("dy"), arg("out") = none);
  c.def("softmax_cross_entropy", &softmax_cross_entropy, arg("logits"), arg("labels"),
        arg("out") = none, arg("label_smoothing") = 0.f);
  c.def("batch_stats", &batch_stats, arg("logits"), arg("labels"), arg("loss"), arg("stats"));
  c.def("sgd_step", &sgd_step, arg("param"), arg("grad"), arg("momentum_buffer").none(true),
        arg("lr"), arg("momentum"), arg("weight_decay"), arg("nesterov"), arg("first"));
  c.def("adam_step", &adam_step, arg("param"), arg("grad"), arg("exp_avg"), arg("exp_avg_sq"),
        arg("lr"), arg("beta1"), arg("beta2"), arg("eps"), arg("weight_decay"), arg("step"),
        arg("decoupled") = false);
  c.def("sgemm", &sgemm, arg("a"), arg("b"), arg("trans_a") = false, arg("trans_b") = false,
        arg("reference") = false);
}
