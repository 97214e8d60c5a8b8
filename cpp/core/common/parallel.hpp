#pragma once
// Thread-count plumbing for the OpenMP kernels. The core never picks a thread count on its
// own: callers pass one explicitly (the Python layer passes torch.get_num_threads()), because
// torch.set_num_threads only governs torch's own pool, not ours.

namespace llmdbg {

// num_threads <= 0 means "whatever the OpenMP runtime's default is" (omp_get_max_threads()). A
// request above max_threads() is clamped to it: huge counts (100000) crash OpenMP runtimes.
int resolve_threads(int num_threads);

// The most threads a kernel starts: four per processor (oversubscription beyond that never helps).
int max_threads();

// The OpenMP runtime's current default team size (omp_get_max_threads()).
int openmp_max_threads();

// Size of the team that an `omp parallel` region with resolve_threads(num_threads) actually
// gets. Used by tests to show that thread counts reach our kernels.
int openmp_team_size(int num_threads);

// Inside an OpenMP parallel region: this thread's number and the team's size (0 and 1 outside
// one, or in a build without OpenMP). Out of line so that every kernel asks the one runtime.
int thread_id();
int team_size();

}  // namespace llmdbg
