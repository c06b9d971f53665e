// 16 floats as one value, with GCC and Clang's vector extensions, for the elementwise loops that
// are compiled once per ISA (FASTCNN_ELEMENTWISE): each clone lowers a value to one zmm, two ymm
// or four xmm registers. Passing one by value would change the ABI without AVX-512, and GCC says
// so (-Wpsabi, turned off in CMakeLists.txt for the files that include this): these helpers are
// inlined into each clone, and no such value crosses a call.
#pragma once

#include <cstdint>

namespace fastcnn {
namespace vec16 {

typedef float F16 __attribute__((vector_size(64)));
typedef float F16u __attribute__((vector_size(64), aligned(4)));  // for unaligned access
typedef int32_t I16 __attribute__((vector_size(64)));

inline F16 load(const float* p) {
  return *reinterpret_cast<const F16u*>(p);
}
inline void store(float* p, F16 v) {
  *reinterpret_cast<F16u*>(p) = v;
}

}  // namespace vec16
}  // namespace fastcnn
