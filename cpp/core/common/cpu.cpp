#include "core/common/cpu.hpp"

#include <atomic>

namespace llmdbg {

namespace {
std::atomic<bool> g_force_portable{false};
}  // namespace

bool cpu_has_avx2() {
#ifdef LLMDBG_X86_AVX2
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
#else
  return false;
#endif
}

bool use_avx2() { return cpu_has_avx2() && !g_force_portable.load(std::memory_order_relaxed); }

void force_portable_kernels(bool on) { g_force_portable.store(on); }

}  // namespace llmdbg
