#pragma once
// Run-time CPU dispatch for the kernels that carry a hand-written AVX2/FMA path next to a portable
// one (rollout's GEMM, qk_attention). The library is compiled for the baseline ISA; an AVX2 path
// is a function marked __attribute__((target("avx2,fma"))), compiled where LLMDBG_X86_AVX2 is
// defined and called only when use_avx2() says so.

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define LLMDBG_X86_AVX2 1
#endif

namespace llmdbg {

// True when the CPU has AVX2 and FMA (always false where LLMDBG_X86_AVX2 is not defined). Cached.
bool cpu_has_avx2();

// cpu_has_avx2() unless force_portable_kernels(true) is in effect: the kernels ask this once per
// call to choose between their AVX2 and portable micro-kernels.
bool use_avx2();

// Tests: make use_avx2() return false (true) or restore run-time selection (false). Not
// synchronised with running kernels; for tests only.
void force_portable_kernels(bool on);

}  // namespace llmdbg
