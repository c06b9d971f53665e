// Thread count and the denormal guard (see common.h).
#include <cstdlib>
#include <thread>

#include "cpu/common.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <xmmintrin.h>
#define FASTCNN_X86 1
#endif
#ifdef FASTCNN_OPENMP
#include <omp.h>
#endif

namespace fastcnn {

namespace {
int initial_threads() {
  if (const char* env = std::getenv("FASTCNN_NUM_THREADS")) {
    int n = std::atoi(env);
    if (n > 0) return n;
  }
  unsigned hw = std::thread::hardware_concurrency();
  return hw > 0 ? static_cast<int>(hw) : 1;
}
int g_threads = initial_threads();
}  // namespace

int num_threads() {
#ifdef FASTCNN_OPENMP
  return g_threads;
#else
  return 1;
#endif
}

void set_num_threads(int n) {
  g_threads = n < 1 ? 1 : n;
}

DenormalGuard::DenormalGuard() {
#ifdef FASTCNN_X86
  saved_ = _mm_getcsr();
  _mm_setcsr(saved_ | 0x8040);  // FTZ (bit 15) | DAZ (bit 6)
#endif
}

DenormalGuard::~DenormalGuard() {
#ifdef FASTCNN_X86
  _mm_setcsr(saved_);
#endif
}

}  // namespace fastcnn
