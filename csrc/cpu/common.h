// Shared by every CPU kernel: the geometry of a convolution or pooling window (computed in one
// place, used by the kernels and by the argument checks in bindings.cpp), thread control, and
// the denormal guard.
//
// Gradient convention, for every kernel in csrc/: kernels OVERWRITE their outputs (y, dx, dw, db)
// and never accumulate into them. Accumulation of gradients across steps, if any, happens
// visibly in Python (Parameter.grad).
#pragma once

#include <cstdint>
#include <cstdlib>
#include <new>

namespace fastcnn {

// Geometry of a 2-D sliding window over an NCHW input: a convolution (O output channels) or a
// pooling (O == C). Floor mode: a window that would overhang the padded input is dropped.
struct Window2d {
  int64_t N = 0, C = 0, H = 0, W = 0;  // input
  int64_t O = 0;                       // output channels
  int64_t kh = 1, kw = 1, sh = 1, sw = 1, ph = 0, pw = 0;
  int64_t OH = 0, OW = 0;  // output

  // The one output-size formula in fastcnn.
  static int64_t out_size(int64_t in, int64_t k, int64_t s, int64_t p) {
    return (in + 2 * p - k) / s + 1;
  }
  // Extent of a zero-bordered copy of the input: the padded size, or what the last window
  // reaches if that is further (never, in floor mode; kept so a buffer is never read past).
  static int64_t padded_extent(int64_t in, int64_t k, int64_t s, int64_t p, int64_t out) {
    const int64_t padded = in + 2 * p, reach = (out - 1) * s + k;
    return padded > reach ? padded : reach;
  }
  void finish() {
    OH = out_size(H, kh, sh, ph);
    OW = out_size(W, kw, sw, pw);
  }
  int64_t patch() const { return C * kh * kw; }  // rows of the im2col matrix
  int64_t pixels() const { return OH * OW; }     // columns of the im2col matrix
};

// Elementwise loops (batch norm, ...) are compiled for the baseline ISA (SSE2 on x86-64); this
// attribute also compiles a function for AVX-512 and AVX2, the loader picking the widest the CPU
// has (GCC and Clang's target_clones; an ifunc). Not under the sanitizers, whose instrumentation
// would run before the resolver.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && \
    !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_UNDEFINED__)
#define FASTCNN_ELEMENTWISE __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define FASTCNN_ELEMENTWISE
#endif

// Scratch memory that grows and is never shrunk, aligned to 64 bytes (a cache line, one zmm
// register: a vector load from a packed panel never straddles two lines). Its contents are not
// kept when it grows; every user fills what it reads.
class ScratchBuffer {
 public:
  ScratchBuffer() = default;
  ScratchBuffer(const ScratchBuffer&) = delete;
  ScratchBuffer& operator=(const ScratchBuffer&) = delete;
  ~ScratchBuffer() { std::free(data_); }
  float* get(size_t floats) {
    if (floats > capacity_) {
      std::free(data_);
      const size_t bytes = (floats * sizeof(float) + 63) / 64 * 64;
      data_ = static_cast<float*>(std::aligned_alloc(64, bytes));
      if (!data_) throw std::bad_alloc();
      capacity_ = bytes / sizeof(float);
    }
    return data_;
  }

 private:
  float* data_ = nullptr;
  size_t capacity_ = 0;
};

// Threads used by every kernel (OpenMP when built with it). Defaults to FASTCNN_NUM_THREADS or
// the number of cores.
int num_threads();
void set_num_threads(int n);

// Flushes denormals to zero on this thread for the lifetime of the guard (denormal operands can
// slow an FMA loop twenty-fold); restores the caller's MXCSR afterwards.
class DenormalGuard {
 public:
  DenormalGuard();
  ~DenormalGuard();
  DenormalGuard(const DenormalGuard&) = delete;
  DenormalGuard& operator=(const DenormalGuard&) = delete;

 private:
  unsigned saved_ = 0;
};

}  // namespace fastcnn
