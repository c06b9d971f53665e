// Run-time choice of the GEMM micro-kernel: the only place that asks the CPU what it supports.
// The best supported kernel is chosen at start-up; FASTCNN_GEMM_KERNEL or gemm_set_kernel()
// force another (tests run every supported kernel against the same reference).
#include <cstdlib>

#include "cpu/gemm/gemm.h"

namespace fastcnn {

namespace {
bool cpu_has(const std::string& name) {
  if (name == "generic") return true;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  if (name == "avx2") return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (name == "avx512") return __builtin_cpu_supports("avx512f");
#endif
  return false;
}

const GemmKernel* pick_default() {
  if (const char* env = std::getenv("FASTCNN_GEMM_KERNEL")) {
    for (const GemmKernel& k : gemm_all_kernels())
      if (k.name == std::string(env) && k.fn && cpu_has(k.name)) return &k;
  }
  for (const GemmKernel& k : gemm_all_kernels())
    if (k.fn && cpu_has(k.name)) return &k;
  return &kGemmGeneric;
}

const GemmKernel* g_active = nullptr;
}  // namespace

const std::vector<GemmKernel>& gemm_all_kernels() {
  static const std::vector<GemmKernel> all = {kGemmAvx512, kGemmAvx2, kGemmGeneric};
  return all;
}

bool gemm_kernel_supported(const std::string& name) {
  for (const GemmKernel& k : gemm_all_kernels())
    if (k.name == name) return k.fn != nullptr && cpu_has(name);
  return false;
}

std::vector<std::string> gemm_supported_kernels() {
  std::vector<std::string> names;
  for (const GemmKernel& k : gemm_all_kernels())
    if (gemm_kernel_supported(k.name)) names.push_back(k.name);
  return names;
}

const GemmKernel& gemm_active_kernel() {
  if (!g_active) g_active = pick_default();
  return *g_active;
}

bool gemm_set_kernel(const std::string& name) {
  for (const GemmKernel& k : gemm_all_kernels()) {
    if (k.name == name && gemm_kernel_supported(name)) {
      g_active = &k;
      return true;
    }
  }
  return false;
}

}  // namespace fastcnn
