// Shared by the CUDA ops: the launch/error-check macro and launch geometry. The ops mirror
// csrc/cpu one to one (same names, same Window2d geometry, same "overwrite, never accumulate"
// rule for outputs), on device pointers.
//
// Python reaches them through csrc/bindings_cuda.cpp (fastcnn._C.cuda), on DeviceArrays
// (cuda/array.cuh). They compile and bind on any machine with nvcc; see README "CUDA" for what
// has run on a GPU.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "cpu/common.h"

namespace fastcnn::cuda {

// Every CUDA call and launch goes through this: a failure becomes a C++ exception (the binding
// layer turns it into a Python RuntimeError) naming the call and CUDA's message. The error is
// cleared (unless sticky), so a later launch check does not report it a second time.
#define FASTCNN_CUDA_CHECK(call)                                              \
  do {                                                                        \
    const cudaError_t fastcnn_err = (call);                                   \
    if (fastcnn_err != cudaSuccess) {                                         \
      cudaGetLastError();                                                     \
      throw std::runtime_error(std::string("CUDA error in ") + #call + ": " + \
                               cudaGetErrorString(fastcnn_err));              \
    }                                                                         \
  } while (0)

#define FASTCNN_CUDA_LAUNCH_CHECK() FASTCNN_CUDA_CHECK(cudaGetLastError())

constexpr int kThreads = 256;

inline unsigned blocks_for(int64_t n) {
  return static_cast<unsigned>((n + kThreads - 1) / kThreads);
}

// Number of usable devices; 0 (never an error) without a driver or GPU.
int device_count();

}  // namespace fastcnn::cuda
