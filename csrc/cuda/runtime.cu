// Device discovery: how many GPUs this process can use.
#include "cuda/common.cuh"

namespace fastcnn::cuda {

int device_count() {
  int n = 0;
  // No driver or no device is an answer (0), not an error.
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky error
    return 0;
  }
  return n;
}

}  // namespace fastcnn::cuda
