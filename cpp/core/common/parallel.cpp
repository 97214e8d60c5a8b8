#include "core/common/parallel.hpp"

#include <algorithm>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace llmdbg {

int openmp_max_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

int max_threads() {
#ifdef _OPENMP
  return 4 * std::max(1, omp_get_num_procs());
#else
  return 1;
#endif
}

int resolve_threads(int num_threads) {
  return num_threads > 0 ? std::min(num_threads, max_threads()) : openmp_max_threads();
}

int openmp_team_size(int num_threads) {
  int team = 1;
#ifdef _OPENMP
  const int n = resolve_threads(num_threads);
#pragma omp parallel num_threads(n)
  {
#pragma omp single
    team = omp_get_num_threads();
  }
#else
  (void)num_threads;
#endif
  return team;
}

int thread_id() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

int team_size() {
#ifdef _OPENMP
  return omp_get_num_threads();
#else
  return 1;
#endif
}

}  // namespace llmdbg
