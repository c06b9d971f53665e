// DeviceArray and Workspace (array.cuh): allocation, copies, the element-wise add that
// accumulates gradients. Freeing never throws: a failure (the runtime already shut down at
// exit) is dropped and cleared, so the next checked call does not report it.
#include <algorithm>
#include <mutex>
#include <stdexcept>
#include <unordered_map>
#include <utility>

#include "cuda/array.cuh"
#include "cuda/common.cuh"

namespace fastcnn::cuda {

namespace {
void free_device(void* p) noexcept {
  if (p && cudaFree(p) != cudaSuccess) cudaGetLastError();
}

// Freed blocks are kept for reuse, by size. A training step allocates the same sizes every time
// (outputs, gradients, the loss), and cudaFree waits for the whole device: without the cache
// the host would stall once per temporary. Reuse is safe because all work goes to the default
// stream, in order: a block's next owner's kernels run after its last owner's. The cache is
// never destroyed (arrays may be freed after static destructors run at exit); the driver
// reclaims the memory with the process.
class BlockCache {
 public:
  void* take(size_t bytes) {
    std::lock_guard<std::mutex> hold(mutex_);
    auto it = free_.find(bytes);
    if (it == free_.end()) return nullptr;
    void* p = it->second;
    free_.erase(it);
    return p;
  }
  void give(void* p, size_t bytes) noexcept {
    try {
      std::lock_guard<std::mutex> hold(mutex_);
      free_.emplace(bytes, p);
    } catch (...) {  // no memory for the bookkeeping: free the block instead
      free_device(p);
    }
  }
  void release_all() noexcept {
    std::lock_guard<std::mutex> hold(mutex_);
    for (auto& kv : free_) free_device(kv.second);
    free_.clear();
  }

 private:
  std::mutex mutex_;
  std::unordered_multimap<size_t, void*> free_;
};

BlockCache& block_cache() {
  static BlockCache* cache = new BlockCache;  // deliberately never destroyed (see above)
  return *cache;
}

// At least one byte (rounded up to 256), so that every array, empty or not, owns a distinct
// allocation and an array exists only where a device answers.
std::shared_ptr<void> allocate(size_t bytes) {
  const size_t rounded = (std::max<size_t>(bytes, 1) + 255) / 256 * 256;
  void* p = block_cache().take(rounded);
  if (!p) {
    cudaError_t err = cudaMalloc(&p, rounded);
    if (err == cudaErrorMemoryAllocation) {  // the cache may hold what is missing: retry once
      cudaGetLastError();
      block_cache().release_all();
      err = cudaMalloc(&p, rounded);
    }
    if (err != cudaSuccess) {
      cudaGetLastError();
      if (err == cudaErrorNoDevice || err == cudaErrorInsufficientDriver)
        throw std::runtime_error(std::string("CUDA is not available (no GPU or driver): ") +
                                 cudaGetErrorString(err));
      throw std::runtime_error("CUDA error in cudaMalloc of " + std::to_string(bytes) +
                               " bytes: " + cudaGetErrorString(err));
    }
  }
  return std::shared_ptr<void>(p, [rounded](void* q) { block_cache().give(q, rounded); });
}

__global__ void add_kernel(int64_t n, const float* x, float* y) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) y[i] += x[i];
}
}  // namespace

size_t dtype_size(DType t) {
  switch (t) {
    case DType::kFloat32:
    case DType::kInt32:
      return 4;
    case DType::kInt64:
    case DType::kFloat64:
      return 8;
  }
  return 0;
}

const char* dtype_name(DType t) {
  switch (t) {
    case DType::kFloat32:
      return "float32";
    case DType::kInt32:
      return "int32";
    case DType::kInt64:
      return "int64";
    case DType::kFloat64:
      return "float64";
  }
  return "?";
}

// ---- DeviceArray ------------------------------------------------------------------------------

DeviceArray::DeviceArray(Shape shape, DType dtype) : shape_(std::move(shape)), dtype_(dtype) {
  for (int64_t d : shape_)
    if (d < 0) throw std::invalid_argument("negative dimensions are not allowed");
  storage_ = allocate(nbytes());
}

DeviceArray::DeviceArray(std::shared_ptr<void> storage, Shape shape, DType dtype)
    : storage_(std::move(storage)), shape_(std::move(shape)), dtype_(dtype) {}

int64_t DeviceArray::size() const {
  int64_t n = 1;
  for (int64_t d : shape_) n *= d;
  return n;
}

DeviceArray DeviceArray::view(Shape shape) const {
  return DeviceArray(storage_, std::move(shape), dtype_);
}

void DeviceArray::copy_from_host(const void* src) const {
  if (nbytes() > 0) FASTCNN_CUDA_CHECK(cudaMemcpy(data(), src, nbytes(), cudaMemcpyHostToDevice));
}

void DeviceArray::copy_to_host(void* dst) const {
  if (nbytes() > 0) FASTCNN_CUDA_CHECK(cudaMemcpy(dst, data(), nbytes(), cudaMemcpyDeviceToHost));
}

void DeviceArray::copy_from(const DeviceArray& src) const {
  if (nbytes() == 0 || shares_memory_with(src)) return;  // a view of the same memory: nothing to do
  FASTCNN_CUDA_CHECK(cudaMemcpyAsync(data(), src.data(), nbytes(), cudaMemcpyDeviceToDevice, 0));
}

void DeviceArray::zero() const {
  if (nbytes() > 0) FASTCNN_CUDA_CHECK(cudaMemsetAsync(data(), 0, nbytes(), 0));
}

void add_inplace(int64_t n, const float* x, float* y) {
  if (n <= 0) return;
  add_kernel<<<blocks_for(n), kThreads>>>(n, x, y);
  FASTCNN_CUDA_LAUNCH_CHECK();
}

// ---- Workspace --------------------------------------------------------------------------------

Workspace::~Workspace() {
  free_device(data_);
}

void* Workspace::get(size_t bytes) {
  if (bytes > capacity_) {
    if (data_) {
      // Kernels queued by earlier callers may still read the old buffer.
      FASTCNN_CUDA_CHECK(cudaDeviceSynchronize());
      free_device(data_);
      data_ = nullptr, capacity_ = 0;
    }
    const size_t rounded = (bytes + 255) / 256 * 256;
    FASTCNN_CUDA_CHECK(cudaMalloc(&data_, rounded));
    capacity_ = rounded;
  }
  return data_;
}

}  // namespace fastcnn::cuda
