#include "core/common/parallel.hpp"

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

int resolve_threads(int num_threads) {
  return num_threads > 0 ? num_threads : openmp_max_threads();
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

}  // namespace llmdbg
