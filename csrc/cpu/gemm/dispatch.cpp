// Run-time choice of the GEMM micro-kernel: the only place that asks the CPU what it supports.
// The best supported kernel is chosen at start-up; FASTCNN_GEMM_KERNEL or gemm_set_kernel()
// force another (tests run every supported kernel against the same reference).
#include <algorithm>
#include <cstdlib>

#include "cpu/gemm/gemm.h"

namespace fastcnn {

namespace {
// Is `isa` listed in FASTCNN_DISABLE_ISA (names separated by commas or spaces)?
bool isa_disabled(const std::string& isa) {
  const char* env = std::getenv("FASTCNN_DISABLE_ISA");
  if (!env) return false;
  const std::string list = env;
  for (size_t at = 0; at < list.size();) {
    const size_t end = std::min(list.find_first_of(", ", at), list.size());
    if (list.compare(at, end - at, isa) == 0) return true;
    at = end + 1;
  }
  return false;
}

bool cpu_has(const std::string& isa) {
  if (isa.empty()) return true;
  if (isa_disabled(isa)) return false;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  if (isa == "avx2") return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (isa == "avx512") return __builtin_cpu_supports("avx512f");
#endif
  return false;
}

const GemmKernel* pick_default() {
  if (const char* env = std::getenv("FASTCNN_GEMM_KERNEL")) {
    for (const GemmKernel& k : gemm_all_kernels())
      if (k.name == std::string(env) && gemm_kernel_supported(k.name)) return &k;
  }
  for (const GemmKernel& k : gemm_all_kernels())
    if (gemm_kernel_supported(k.name)) return &k;
  return &kGemmGeneric;
}

const GemmKernel* g_active = nullptr;
}  // namespace

const std::vector<GemmKernel>& gemm_all_kernels() {
  // The generic kernel runs everywhere, so the twins after it are never picked by default.
  static const std::vector<GemmKernel> all = {kGemmAvx512, kGemmAvx2, kGemmGeneric,
                                              kGemmGenericAvx512, kGemmGenericAvx2};
  return all;
}

const GemmKernel* gemm_narrow_kernel(const GemmKernel& k) {
  if (!k.narrow) return nullptr;
  for (const GemmKernel& n : gemm_all_kernels())
    if (n.name == std::string(k.narrow)) return gemm_kernel_supported(n.name) ? &n : nullptr;
  return nullptr;
}

std::string gemm_kernel_isa(const GemmKernel& k) {
  const std::string name = k.name;
  return name == "avx512" || name == "avx2" ? name : "";
}

bool gemm_kernel_supported(const std::string& name) {
  for (const GemmKernel& k : gemm_all_kernels())
    if (k.name == name) return k.fn != nullptr && cpu_has(gemm_kernel_isa(k));
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
