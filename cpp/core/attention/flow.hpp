#pragma once
// Attention flow (Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers").
//
// The attention graph is a layered DAG with (L + 1) · n nodes (layer l = 0..L, token i; layer 0
// is the input): the edge (l, i) -> (l − 1, j) has capacity Â_l[i, j], the fused, residual-
// augmented map of attention layer l (see rollout.hpp; padding tokens are removed from the
// graph). F[u, v] is the value of a maximum flow from the output node (L, u) to the input node
// (0, v); each row of F is then divided by its sum, as the reference's compute_flows does.
//
// Algorithm: push–relabel (Goldberg & Tarjan 1988) with the heuristics that make it the practical
// choice on dense graphs (Cherkassky & Goldberg 1997): FIFO selection of active nodes, exact
// distance labels from a backward BFS (global relabelling) at the start and after every N / 2
// relabels (N nodes), the gap heuristic, and only the first phase (the value of a maximum
// preflow is the max-flow value; the flow itself is never needed). Every node's arcs are a
// contiguous row of a dense block, which suits push–relabel's scan-from-current-arc loop.
// Measured on softmax attention graphs (L = 6, T = 32..64), Dinic with BFS levels and a DFS with
// current-arc pointers took about as long (within 15%), and warm-starting the push–relabel
// preflow of one sink for the next sink of the same source was 10–30% slower than starting
// over (the old sink's excess has to be routed back through the whole graph), so every (u, v)
// pair is an independent max-flow; what is shared is the workspace, allocated once per thread,
// and the capacity arrays, built once per sequence for all threads.
//
// The graph is never built as adjacency lists: capacities are the L dense n × n maps and their
// transposes (read-only, shared by all threads), flows are L dense n × n arrays kept with their
// transposes, and the arcs of node (l, i) are the forward arcs to (l − 1, j) (residual cap −
// flow, row i of block l − 1) and the reverse arcs to (l + 1, k) (residual flow[l][k][i], row i
// of the transposed block l). Arithmetic is in double; residuals and excesses below kFlowEps
// (1e-14, against capacities <= 1) count as 0, which bounds the error of a value by about the
// number of edges times kFlowEps.

#include <cstdint>
#include <vector>

#include "core/attention/rollout.hpp"
#include "core/common/cancel.hpp"

namespace llmdbg::attention {

inline constexpr double kFlowEps = 1e-14;

// The capacities of one layered graph: `layers` >= 1 blocks of `n` × `n` values >= 0; block l
// (0-based) holds the edges from layer l + 1 to layer l, row-major (row = upper token, column =
// lower token). Kept with its transpose, so that every arc scan of the solver reads memory
// contiguously.
struct LayeredGraph {
  int64_t layers = 0, n = 0;
  std::vector<double> cap, cap_t;
  LayeredGraph() = default;
  LayeredGraph(const double* caps, int64_t num_layers, int64_t tokens) {
    assign(caps, num_layers, tokens);
  }
  void assign(const double* caps, int64_t num_layers, int64_t tokens);
};

// Max-flow on one layered graph, with workspace allocated once and reused across sources and
// sinks. Not thread-safe: one per thread.
class LayeredMaxFlow {
 public:
  LayeredMaxFlow(int64_t layers, int64_t n);

  // Value of a maximum flow in `graph` (same sizes as the solver) from the output node
  // (L, source) to the input node (0, sink).
  double max_flow(const LayeredGraph& graph, int64_t source, int64_t sink);

  int64_t size() const { return n_; }

  // Total relabel operations and pushes since construction (for tests and tuning).
  int64_t pushes() const { return pushes_; }
  int64_t relabels() const { return relabels_total_; }

 private:
  void reset(const LayeredGraph& graph, int64_t source, int64_t sink);
  void relabel(int64_t x);
  void gap(int32_t level);
  void global_relabel();
  void discharge(int64_t x);
  void enqueue(int64_t x);

  int64_t L_, n_, N_;
  const double* cap_ = nullptr;  // the graph's capacities and their transpose
  const double* cap_t_ = nullptr;
  std::vector<double> flow_, flow_t_;  // L × n × n, same layouts as cap and cap_t
  std::vector<double> excess_;         // N
  std::vector<int32_t> label_, cur_, queue_;
  std::vector<int32_t> count_;  // nodes per label (0..N), for the gap heuristic
  std::vector<uint8_t> queued_;
  int64_t head_ = 0, size_ = 0;
  int64_t s_ = -1, t_ = -1;
  int64_t relabels_ = 0, relabels_total_ = 0, pushes_ = 0;
};

// Attention flow of every sequence. rows == nullptr: out is (batch, T, T); otherwise (batch,
// num_rows, T) for the output tokens rows[r] (a padding row is all 0; padding columns are 0).
// opt.discard_ratio must be 0. The (sequence, source) pairs of the whole batch are spread over
// threads, each with its own workspace; every (source, sink) pair is solved independently, so
// results are bitwise identical for every num_threads. Cost: n max-flows per source on (L + 1) · n
// nodes and L · n² edges. `cancelled` is polled between max-flows (core/common/cancel.hpp); when
// it returns true the call throws llmdbg::Interrupted and `out` is incomplete. Throws
// std::invalid_argument for a malformed graph or a negative, NaN or infinite weight (check_graph,
// fuse_layer).
void attention_flow(const AttentionGraph& g, const GraphOptions& opt, const int64_t* rows,
                    int64_t num_rows, float* out, int num_threads, const CancelFn& cancelled = {});

}  // namespace llmdbg::attention
