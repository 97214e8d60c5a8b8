#pragma once
// LLMDBG_TSNE_CLONES: compile a hot loop twice, for x86-64-v3 (AVX2 + FMA) and the baseline,
// and pick one at load time (GCC function multiversioning; ELF ifunc). The wheel itself is built
// for the baseline ISA. The choice depends only on the CPU, so results stay bitwise
// reproducible on one machine; on other compilers and targets the macro is empty.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__ELF__)
#define LLMDBG_TSNE_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define LLMDBG_TSNE_CLONES
#endif
