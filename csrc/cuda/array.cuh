// Device memory for the CUDA binding: DeviceArray, an n-dimensional array in GPU memory (the
// Python type fastcnn._C.cuda.DeviceArray), and Workspace, the grow-only scratch buffer that
// conv2d and the loss borrow. Plain C++ (no pybind11, no device code), so bindings_cuda.cpp and
// the .cu files can both include it.
//
// A DeviceArray is a handle: a shared_ptr to one cudaMalloc allocation, a shape and a dtype,
// always C-contiguous from the start of its allocation. reshape() returns a view sharing the
// allocation; two arrays overlap exactly when they share one. Every copy and kernel goes to the
// default stream, so work runs in the order it was queued; a copy to the host waits for it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace fastcnn::cuda {

enum class DType { kFloat32, kInt32, kInt64, kFloat64 };

size_t dtype_size(DType t);
const char* dtype_name(DType t);  // numpy's name: "float32", ...

template <class T>
constexpr DType dtype_of();
template <>
constexpr DType dtype_of<float>() {
  return DType::kFloat32;
}
template <>
constexpr DType dtype_of<int32_t>() {
  return DType::kInt32;
}
template <>
constexpr DType dtype_of<int64_t>() {
  return DType::kInt64;
}
template <>
constexpr DType dtype_of<double>() {
  return DType::kFloat64;
}

class DeviceArray {
 public:
  using Shape = std::vector<int64_t>;

  // Allocates (uninitialised) memory for `shape`; throws std::runtime_error when CUDA cannot
  // (no device, out of memory). Dimensions must be >= 0.
  DeviceArray(Shape shape, DType dtype);

  const Shape& shape() const { return shape_; }
  int64_t shape(int i) const { return shape_[static_cast<size_t>(i)]; }
  int ndim() const { return static_cast<int>(shape_.size()); }
  int64_t size() const;
  size_t nbytes() const { return static_cast<size_t>(size()) * dtype_size(dtype_); }
  DType dtype() const { return dtype_; }
  void* data() const { return storage_.get(); }
  bool shares_memory_with(const DeviceArray& other) const { return storage_ == other.storage_; }

  // The same memory under another shape of the same size (checked by the caller).
  DeviceArray view(Shape shape) const;

  // Synchronous copies of nbytes() between this array and host memory. Like data(), these are
  // const: they change the memory, not the handle.
  void copy_from_host(const void* src) const;
  void copy_to_host(void* dst) const;
  // Queued on the default stream: a copy of `src` (same dtype and size), and a fill with zeros.
  void copy_from(const DeviceArray& src) const;
  void zero() const;

 private:
  DeviceArray(std::shared_ptr<void> storage, Shape shape, DType dtype);

  std::shared_ptr<void> storage_;
  Shape shape_;
  DType dtype_;
};

// What csrc/checks.h asks of an array type (found by argument-dependent lookup).
inline const DeviceArray::Shape& shape_of(const DeviceArray& a) {
  return a.shape();
}
inline std::string dtype_name(const DeviceArray& a) {
  return dtype_name(a.dtype());
}
template <class T>
bool has_dtype(const DeviceArray& a) {
  return a.dtype() == dtype_of<T>();
}
inline bool c_contiguous(const DeviceArray&) {
  return true;
}
inline bool writeable(const DeviceArray&) {
  return true;
}
inline bool overlaps(const DeviceArray& a, const DeviceArray& b) {
  return a.nbytes() > 0 && b.nbytes() > 0 && a.shares_memory_with(b);
}

// y += x over n floats, queued on the default stream (gradient accumulation).
void add_inplace(int64_t n, const float* x, float* y);

// A grow-only device buffer, never shrunk, its contents not kept when it grows. Hold lock()
// from get() until the kernels that use the buffer are queued: later work on the default stream
// (a reuse, a grow's free) runs after them.
class Workspace {
 public:
  Workspace() = default;
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;
  ~Workspace();  // frees the buffer; never throws

  std::unique_lock<std::mutex> lock() { return std::unique_lock<std::mutex>(mutex_); }
  void* get(size_t bytes);  // the caller holds lock()

 private:
  std::mutex mutex_;
  void* data_ = nullptr;
  size_t capacity_ = 0;
};

}  // namespace fastcnn::cuda
