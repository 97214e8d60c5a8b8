#include "core/attention/flow.hpp"

#include <algorithm>
#include <memory>
#include <stdexcept>

#include "core/common/parallel.hpp"

namespace llmdbg::attention {

void LayeredGraph::assign(const double* caps, int64_t num_layers, int64_t tokens) {
  layers = num_layers, n = tokens;
  const int64_t nn = n * n;
  cap.assign(caps, caps + layers * nn);
  cap_t.resize(static_cast<size_t>(layers * nn));
  for (int64_t l = 0; l < layers; ++l)
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < n; ++j)
        cap_t[static_cast<size_t>(l * nn + j * n + i)] = caps[l * nn + i * n + j];
}

LayeredMaxFlow::LayeredMaxFlow(int64_t layers, int64_t n)
    : L_(layers), n_(n), N_((layers + 1) * n) {
  if (layers < 1 || n < 1) throw std::invalid_argument("LayeredMaxFlow: layers and n must be >= 1");
  flow_.resize(static_cast<size_t>(L_ * n_ * n_));
  flow_t_.resize(static_cast<size_t>(L_ * n_ * n_));
  excess_.resize(static_cast<size_t>(N_));
  label_.resize(static_cast<size_t>(N_));
  cur_.resize(static_cast<size_t>(N_));
  queue_.resize(static_cast<size_t>(N_));
  queued_.resize(static_cast<size_t>(N_));
  count_.resize(static_cast<size_t>(N_ + 1));
}

void LayeredMaxFlow::reset(const LayeredGraph& graph, int64_t source, int64_t sink) {
  if (graph.layers != L_ || graph.n != n_)
    throw std::invalid_argument("LayeredMaxFlow: graph size mismatch");
  if (source < 0 || source >= n_ || sink < 0 || sink >= n_) {
    throw std::invalid_argument("LayeredMaxFlow: source or sink out of range");
  }
  cap_ = graph.cap.data();
  cap_t_ = graph.cap_t.data();
  std::fill(flow_.begin(), flow_.end(), 0.0);
  std::fill(flow_t_.begin(), flow_t_.end(), 0.0);
  std::fill(excess_.begin(), excess_.end(), 0.0);
  s_ = L_ * n_ + source;
  t_ = sink;  // input layer: node id = token
  // Saturate the source's edges: from here on the source has no residual arc, so it can never
  // reach a sink again (its label N stays valid), and flow is never pushed back into it.
  const int64_t nn = n_ * n_, blk = (L_ - 1) * nn;
  for (int64_t j = 0; j < n_; ++j) {
    const double c = cap_[blk + source * n_ + j];
    flow_[static_cast<size_t>(blk + source * n_ + j)] = c;
    flow_t_[static_cast<size_t>(blk + j * n_ + source)] = c;
    excess_[static_cast<size_t>((L_ - 1) * n_ + j)] += c;
  }
}

void LayeredMaxFlow::enqueue(int64_t x) {
  queued_[static_cast<size_t>(x)] = 1;
  queue_[static_cast<size_t>((head_ + size_) % N_)] = static_cast<int32_t>(x);
  ++size_;
}

// Exact distances to the sink in the residual graph, by a backward BFS; nodes that cannot reach
// the sink get N (their excess stays where it is). Then the active queue is rebuilt.
void LayeredMaxFlow::global_relabel() {
  const auto N = static_cast<int32_t>(N_);
  const int64_t n = n_, nn = n_ * n_;
  std::fill(label_.begin(), label_.end(), N);
  label_[static_cast<size_t>(t_)] = 0;
  int32_t* q = queue_.data();
  int64_t qh = 0, qt = 0;
  q[qt++] = static_cast<int32_t>(t_);
  while (qh < qt) {
    const int64_t y = q[qh++];
    const int64_t l = y / n, i = y % n;
    const int32_t d = label_[static_cast<size_t>(y)] + 1;
    if (l < L_) {  // (l + 1, k) -> (l, i) along a forward arc: cap − flow of block l at (k, i)
      const double* c = cap_t_ + l * nn + i * n;
      const double* f = flow_t_.data() + l * nn + i * n;
      int32_t* lab = label_.data() + (l + 1) * n;
      const int64_t base = (l + 1) * n;
      for (int64_t k = 0; k < n; ++k) {
        if (lab[k] == N && c[k] - f[k] > kFlowEps && base + k != s_) {
          lab[k] = d;
          q[qt++] = static_cast<int32_t>(base + k);
        }
      }
    }
    if (l > 0) {  // (l − 1, j) -> (l, i) along a reverse arc: flow of block l − 1 at (i, j)
      const double* f = flow_.data() + (l - 1) * nn + i * n;
      int32_t* lab = label_.data() + (l - 1) * n;
      const int64_t base = (l - 1) * n;
      for (int64_t j = 0; j < n; ++j) {
        if (lab[j] == N && f[j] > kFlowEps) {
          lab[j] = d;
          q[qt++] = static_cast<int32_t>(base + j);
        }
      }
    }
  }
  for (int64_t x = 0; x < N_; ++x)
    cur_[static_cast<size_t>(x)] = x < n ? static_cast<int32_t>(n) : 0;
  std::fill(count_.begin(), count_.end(), 0);
  for (int64_t x = 0; x < N_; ++x) {
    if (x != s_) ++count_[static_cast<size_t>(label_[static_cast<size_t>(x)])];
  }
  relabels_ = 0;
  head_ = 0, size_ = 0;
  std::fill(queued_.begin(), queued_.end(), 0);
  for (int64_t x = 0; x < N_; ++x) {
    if (x != s_ && x != t_ && excess_[static_cast<size_t>(x)] > kFlowEps &&
        label_[static_cast<size_t>(x)] < N) {
      enqueue(x);
    }
  }
}

// New label: one more than the lowest neighbour over residual arcs (N when there is none).
void LayeredMaxFlow::relabel(int64_t x) {
  const int64_t n = n_, nn = n_ * n_;
  const int64_t l = x / n, i = x % n;
  const auto N = static_cast<int32_t>(N_);
  int32_t m = N;
  if (l > 0) {
    const double* c = cap_ + (l - 1) * nn + i * n;
    const double* f = flow_.data() + (l - 1) * nn + i * n;
    const int32_t* lab = label_.data() + (l - 1) * n;
    for (int64_t j = 0; j < n; ++j) m = std::min(m, c[j] - f[j] > kFlowEps ? lab[j] : N);
  }
  if (l < L_) {
    const double* f = flow_t_.data() + l * nn + i * n;
    const int32_t* lab = label_.data() + (l + 1) * n;
    for (int64_t k = 0; k < n; ++k) m = std::min(m, f[k] > kFlowEps ? lab[k] : N);
  }
  const int32_t old = label_[static_cast<size_t>(x)];
  const int32_t now = std::min<int32_t>(m + 1, N);
  label_[static_cast<size_t>(x)] = now;
  cur_[static_cast<size_t>(x)] = l > 0 ? 0 : static_cast<int32_t>(n);
  --count_[static_cast<size_t>(old)], ++count_[static_cast<size_t>(now)];
  ++relabels_, ++relabels_total_;
  if (count_[static_cast<size_t>(old)] == 0) gap(old);
}

// Gap heuristic: no node is left at `level`, so nodes above it (x among them) cannot reach the
// sink any more: lift them to N at once instead of relabelling them step by step.
void LayeredMaxFlow::gap(int32_t level) {
  const auto N = static_cast<int32_t>(N_);
  for (int64_t z = 0; z < N_; ++z) {
    int32_t& lz = label_[static_cast<size_t>(z)];
    if (lz > level && lz < N && z != s_) {
      --count_[static_cast<size_t>(lz)], ++count_[static_cast<size_t>(N)];
      lz = N;
    }
  }
}

// Push the excess of x along admissible arcs (residual > 0, label one lower) until it is gone
// or x cannot reach the sink any more. Arc a < n is the forward arc to (l − 1, a); arc n + k
// the reverse arc to (l + 1, k). Scans test the label first (most arcs fail it).
void LayeredMaxFlow::discharge(int64_t x) {
  const int64_t n = n_, nn = n_ * n_;
  const int64_t l = x / n, i = x % n;
  const auto N = static_cast<int32_t>(N_);
  double* const excess = excess_.data();
  int32_t* const label = label_.data();
  // Forward arcs: block l − 1, row i (and its transpose); reverse arcs: block l, column i.
  const double* cf = l > 0 ? cap_ + (l - 1) * nn + i * n : nullptr;
  double* ff = l > 0 ? flow_.data() + (l - 1) * nn + i * n : nullptr;
  double* ff_t = l > 0 ? flow_t_.data() + (l - 1) * nn + i : nullptr;  // stride n
  const int32_t* lab_down = l > 0 ? label + (l - 1) * n : nullptr;
  double* fr_t = l < L_ ? flow_t_.data() + l * nn + i * n : nullptr;
  double* fr = l < L_ ? flow_.data() + l * nn + i : nullptr;  // stride n
  const int32_t* lab_up = label + (l + 1) * n;
  const int64_t hi = l < L_ ? 2 * n : n;
  double ex = excess[x];
  int64_t a = cur_[static_cast<size_t>(x)];
  while (ex > kFlowEps) {
    const int32_t want = label[x] - 1;
    if (a < n) {
      while (a < n && !(lab_down[a] == want && cf[a] - ff[a] > kFlowEps)) ++a;
      if (a < n) {
        const double r = cf[a] - ff[a];
        const double d = std::min(ex, r);
        ff[a] = d == r ? cf[a] : ff[a] + d;
        ff_t[a * n] = ff[a];
        ex = d == ex ? 0.0 : ex - d;
        const int64_t y = (l - 1) * n + a;
        excess[y] += d;
        ++pushes_;
        if (y != t_ && !queued_[static_cast<size_t>(y)] && label[y] < N) enqueue(y);
        if (d == r) ++a;
        continue;
      }
    }
    if (a < hi) {
      int64_t k = a - n;
      while (k < n && !(lab_up[k] == want && fr_t[k] > kFlowEps)) ++k;
      a = n + k;
      if (k < n) {
        const double r = fr_t[k];
        const double d = std::min(ex, r);
        fr_t[k] = d == r ? 0.0 : fr_t[k] - d;
        fr[k * n] = fr_t[k];
        ex = d == ex ? 0.0 : ex - d;
        const int64_t y = (l + 1) * n + k;
        excess[y] += d;
        ++pushes_;
        if (y != s_ && !queued_[static_cast<size_t>(y)] && label[y] < N) enqueue(y);
        if (d == r) ++a;
        continue;
      }
    }
    // No admissible arc left.
    excess[x] = ex;
    relabel(x);
    a = cur_[static_cast<size_t>(x)];
    if (label[x] >= N) break;
  }
  excess[x] = ex;
  cur_[static_cast<size_t>(x)] = static_cast<int32_t>(a);
}

double LayeredMaxFlow::max_flow(const LayeredGraph& graph, int64_t source, int64_t sink) {
  reset(graph, source, sink);
  global_relabel();
  const auto N = static_cast<int32_t>(N_);
  while (size_ > 0) {
    const int64_t x = queue_[static_cast<size_t>(head_)];
    head_ = (head_ + 1) % N_, --size_;
    queued_[static_cast<size_t>(x)] = 0;
    if (label_[static_cast<size_t>(x)] >= N) continue;
    discharge(x);
    // Fresh exact labels once relabels have done about half a BFS's worth of work (every N / 2
    // relabels; N and N / 4 were no faster on random and MiniLM attention graphs).
    if (2 * relabels_ >= N_) global_relabel();
  }
  return excess_[static_cast<size_t>(t_)];
}

void attention_flow(const AttentionGraph& g, const GraphOptions& opt, const int64_t* rows,
                    int64_t num_rows, float* out, int num_threads, const CancelFn& cancelled) {
  check_graph(g, opt, rows, num_rows);
  Guard guard(cancelled);
  if (opt.discard_ratio != 0.0)
    throw std::invalid_argument("attention flow takes no discard_ratio");
  const int threads = resolve_threads(num_threads);
  const int64_t T = g.tokens, L = g.num_layers;
  const bool full = rows == nullptr;
  const int64_t out_rows_total = full ? T : num_rows;

  // Every sequence's graph first (its real tokens only), then one pool of (sequence, source)
  // tasks, so that small sequences in a batch still keep every thread busy.
  struct Sequence {
    std::vector<int64_t> idx;
    LayeredGraph graph;
  };
  struct Task {
    int64_t b, source, row;
  };
  std::vector<Sequence> seqs(static_cast<size_t>(g.batch));
  std::vector<Task> tasks;
  std::vector<int64_t> pos(static_cast<size_t>(T));
  std::vector<double> caps;
  for (int64_t b = 0; b < g.batch; ++b) {
    Sequence& seq = seqs[static_cast<size_t>(b)];
    seq.idx.resize(static_cast<size_t>(T));
    int64_t n = 0;
    real_tokens(g, b, seq.idx.data(), &n);
    seq.idx.resize(static_cast<size_t>(n));
    std::fill(pos.begin(), pos.end(), -1);
    for (int64_t i = 0; i < n; ++i) pos[static_cast<size_t>(seq.idx[static_cast<size_t>(i)])] = i;
    float* dst = out + b * out_rows_total * T;
    std::fill(dst, dst + out_rows_total * T, 0.0f);
    const size_t before = tasks.size();
    if (full) {
      for (int64_t i = 0; i < n; ++i) tasks.push_back({b, i, seq.idx[static_cast<size_t>(i)]});
    } else {
      for (int64_t r = 0; r < num_rows; ++r) {
        const int64_t p = pos[static_cast<size_t>(rows[r])];
        if (p >= 0) tasks.push_back({b, p, r});
      }
    }
    if (tasks.size() == before) continue;
    caps.resize(static_cast<size_t>(L * n * n));
    for (int64_t l = 0; l < L; ++l) {
      guard.checkpoint();
      fuse_layer(g.layers[l], b, T, seq.idx.data(), n, opt, caps.data() + l * n * n, threads, l);
    }
    seq.graph.assign(caps.data(), L, n);
  }

  const auto S = static_cast<int64_t>(tasks.size());
  const int team = static_cast<int>(std::min<int64_t>(threads, S));
  // Tasks are handed out by a queue (core/common/cancel.hpp): whatever a task throws (an
  // allocation) is rethrown after the region, and Ctrl-C is answered between max-flows.
  TaskQueue queue(S);
#pragma omp parallel num_threads(team) if (team > 1)
  {
    std::unique_ptr<LayeredMaxFlow> solver;  // rebuilt only when the sequence length changes
    std::vector<double> values;
    queue.run(guard, [&](int64_t s) {
      const Task task = tasks[static_cast<size_t>(s)];
      const Sequence& seq = seqs[static_cast<size_t>(task.b)];
      const int64_t n = seq.graph.n;
      if (!solver || solver->size() != n) solver = std::make_unique<LayeredMaxFlow>(L, n);
      values.resize(static_cast<size_t>(n));
      double sum = 0.0;
      for (int64_t v = 0; v < n; ++v) {
        if (guard.poll()) return;
        values[static_cast<size_t>(v)] = solver->max_flow(seq.graph, task.source, v);
        sum += values[static_cast<size_t>(v)];
      }
      float* o = out + (task.b * out_rows_total + task.row) * T;
      if (sum > 0.0) {
        for (int64_t v = 0; v < n; ++v) {
          o[seq.idx[static_cast<size_t>(v)]] =
              static_cast<float>(values[static_cast<size_t>(v)] / sum);
        }
      }
    });
  }
  guard.finish();
}

}  // namespace llmdbg::attention
