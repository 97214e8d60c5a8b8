#include "core/attention/head_stats.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>

#include "core/attention/rollout.hpp"
#include "core/common/cancel.hpp"
#include "core/common/parallel.hpp"

namespace llmdbg::attention {

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// What the mask says about each sequence, computed once: which keys are real, how many real keys
// a query at position i has at or before it (prefix) and how many real queries lie at or after
// key k (suffix, the denominator of alpha(k)).
struct Sequences {
  int64_t batch = 0, tokens = 0;
  std::vector<uint8_t> real;    // (B, T)
  std::vector<int64_t> prefix;  // (B, T): real j <= i
  std::vector<int64_t> suffix;  // (B, T): real i >= k
  std::vector<int64_t> n_real;  // (B)
  std::vector<double> special;  // (B, T) 0/1 weights (all 0 without special tokens)
  std::vector<double> log_n;    // log(n) for n = 0..T (log 0 unused)

  Sequences(int64_t b, int64_t t, const uint8_t* mask, const uint8_t* special_mask)
      : batch(b),
        tokens(t),
        real(static_cast<size_t>(b * t), 1),
        prefix(real.size()),
        suffix(real.size()),
        n_real(static_cast<size_t>(b)),
        special(real.size(), 0.0),
        log_n(static_cast<size_t>(t + 1), 0.0) {
    for (int64_t n = 1; n <= t; ++n) {
      log_n[static_cast<size_t>(n)] = std::log(static_cast<double>(n));
    }
    for (int64_t s = 0; s < b; ++s) {
      const size_t base = static_cast<size_t>(s * t);
      int64_t count = 0;
      for (int64_t i = 0; i < t; ++i) {
        const size_t at = base + static_cast<size_t>(i);
        if (mask != nullptr) real[at] = mask[at] != 0;
        if (special_mask != nullptr) special[at] = special_mask[at] != 0 ? 1.0 : 0.0;
        count += real[at];
        prefix[at] = count;
      }
      if (count == 0) {
        throw std::invalid_argument("attention mask: sequence " + std::to_string(s) +
                                    " has no real token");
      }
      n_real[static_cast<size_t>(s)] = count;
      int64_t after = 0;
      for (int64_t i = t - 1; i >= 0; --i) {
        const size_t at = base + static_cast<size_t>(i);
        after += real[at];
        suffix[at] = after;
      }
    }
  }
};

// Position of the first refused weight (negative, NaN or infinite) in row-major order within one
// map.
struct Negative {
  bool found = false;
  int64_t query = 0, key = 0;
  double value = 0.0;
};

// Attention weights are finite and >= 0 (false for NaN too).
inline bool weight_ok(double a) { return a >= 0.0 && a <= std::numeric_limits<double>::max(); }

// Sums over the real queries of one (layer, batch, head) map.
struct MapSums {
  double entropy = 0.0, norm_bidirectional = 0.0, norm_causal = 0.0, max_weight = 0.0;
  double special = 0.0, upper = 0.0;
  Negative negative;
};

template <typename T>
void note_negative(const T* row, int64_t n, int64_t query, Negative& neg) {
  if (neg.found) return;
  for (int64_t j = 0; j < n; ++j) {
    if (!weight_ok(static_cast<double>(row[j]))) {
      neg = {true, query, j, static_cast<double>(row[j])};
      return;
    }
  }
}

// The fused pass over one map. `col` (length T, zeroed) receives sum_{real i >= k} A[i, k] and
// `col_all` the sum over every real query.
// Stops early (partial sums) once `guard` has stopped.
template <typename T>
MapSums reduce_map(const T* map, const Sequences& seq, int64_t s, double* col, double* col_all,
                   Guard& guard) {
  const int64_t n = seq.tokens;
  const size_t base = static_cast<size_t>(s * n);
  const uint8_t* real = seq.real.data() + base;
  const double* special = seq.special.data() + base;
  const int64_t n_real = seq.n_real[static_cast<size_t>(s)];
  MapSums out;
  for (int64_t i = 0; i < n; ++i) {
    if (!real[i]) continue;
    if (guard.poll()) break;
    const T* row = map + i * n;
    double ent = 0.0, top = -std::numeric_limits<double>::infinity(), sp = 0.0, up = 0.0;
    bool ok = true;
    // Keys at or before the query: they feed the sink column sums.
    for (int64_t j = 0; j <= i; ++j) {
      const double a = static_cast<double>(row[j]);
      col[j] += a;
      col_all[j] += a;
      if (a > 0.0) ent -= a * std::log(a);
      top = std::max(top, a);
      ok = weight_ok(a) && ok;
      sp += a * special[j];
    }
    // Keys after the query: zero in a causal map, so their largest real weight detects causality.
    for (int64_t j = i + 1; j < n; ++j) {
      const double a = static_cast<double>(row[j]);
      col_all[j] += a;
      if (a > 0.0) ent -= a * std::log(a);
      top = std::max(top, a);
      ok = weight_ok(a) && ok;
      sp += a * special[j];
      if (real[j]) up = std::max(up, a);
    }
    if (!ok) note_negative(row, n, i, out.negative);
    out.entropy += ent;
    out.max_weight += top;
    out.special += sp;
    out.upper = std::max(out.upper, up);
    if (n_real >= 2) out.norm_bidirectional += ent / seq.log_n[static_cast<size_t>(n_real)];
    const int64_t before = seq.prefix[base + static_cast<size_t>(i)];
    if (before >= 2) out.norm_causal += ent / seq.log_n[static_cast<size_t>(before)];
  }
  return out;
}

template <typename T>
int64_t check_layers(const std::vector<LayerMaps<T>>& layers, int64_t batch, int64_t tokens,
                     const char* what) {
  if (layers.empty()) throw std::invalid_argument(std::string(what) + ": no layers");
  if (batch < 1 || tokens < 1) {
    throw std::invalid_argument(std::string(what) + ": batch size and T must be >= 1, got B=" +
                                std::to_string(batch) + ", T=" + std::to_string(tokens));
  }
  int64_t heads = 0;
  for (size_t l = 0; l < layers.size(); ++l) {
    if (layers[l].data == nullptr || layers[l].heads < 1) {
      throw std::invalid_argument(std::string(what) + ": layer " + std::to_string(l) +
                                  " has no data or no heads");
    }
    heads = std::max(heads, layers[l].heads);
  }
  return heads;
}

// Work items: every existing (layer, batch, head), in that order.
struct Item {
  int64_t layer, seq, head;
};

template <typename T>
std::vector<Item> work_items(const std::vector<LayerMaps<T>>& layers, int64_t batch) {
  std::vector<Item> items;
  for (int64_t l = 0; l < static_cast<int64_t>(layers.size()); ++l)
    for (int64_t s = 0; s < batch; ++s)
      for (int64_t h = 0; h < layers[static_cast<size_t>(l)].heads; ++h) items.push_back({l, s, h});
  return items;
}

template <typename T>
const T* map_of(const LayerMaps<T>& layer, const Item& it, int64_t tokens) {
  return layer.data + (it.seq * layer.heads + it.head) * tokens * tokens;
}

// `which` names the argument: "layers", "a" or "b".
[[noreturn]] void throw_negative(const Item& it, const Negative& neg, const char* which) {
  throw std::invalid_argument(
      bad_weight_message(which, it.layer, it.seq, it.head, neg.query, neg.key, neg.value));
}

}  // namespace

template <typename T>
HeadStats head_stats(const std::vector<LayerMaps<T>>& layers, int64_t batch, int64_t tokens,
                     const uint8_t* mask, const uint8_t* special, int num_threads,
                     const CancelFn& cancelled) {
  const int64_t heads = check_layers(layers, batch, tokens, "head_stats");
  const Sequences seq(batch, tokens, mask, special);
  const int64_t n_layers = static_cast<int64_t>(layers.size());

  HeadStats r;
  r.layers = n_layers, r.batch = batch, r.heads = heads, r.tokens = tokens;
  const size_t lh = static_cast<size_t>(n_layers * heads);
  const size_t lbh = lh * static_cast<size_t>(batch);
  r.sink.assign(lbh * static_cast<size_t>(tokens), 0.0);
  r.sink_all.assign(lbh * static_cast<size_t>(tokens), 0.0);
  r.sink_max.assign(lbh, kNaN);
  r.sink_argmax.assign(lbh, -1);

  const std::vector<Item> items = work_items(layers, batch);
  std::vector<MapSums> sums(items.size());
  const auto n_items = static_cast<int64_t>(items.size());
  const int threads = static_cast<int>(std::min<int64_t>(resolve_threads(num_threads), n_items));
  Guard guard(cancelled);
  TaskQueue queue(n_items);
#pragma omp parallel num_threads(threads)
  queue.run(guard, [&](int64_t w) {
    const Item& it = items[static_cast<size_t>(w)];
    const size_t slot = static_cast<size_t>((it.layer * batch + it.seq) * heads + it.head);
    double* alpha = r.sink.data() + slot * static_cast<size_t>(tokens);
    double* alpha_all = r.sink_all.data() + slot * static_cast<size_t>(tokens);
    sums[static_cast<size_t>(w)] =
        reduce_map(map_of(layers[static_cast<size_t>(it.layer)], it, tokens), seq, it.seq, alpha,
                   alpha_all, guard);
    const double n_real = static_cast<double>(seq.n_real[static_cast<size_t>(it.seq)]);
    // Column sums -> alpha(k), and its maximum over real keys (first position on ties).
    const size_t base = static_cast<size_t>(it.seq * tokens);
    double best = -1.0;
    int64_t arg = -1;
    for (int64_t k = 0; k < tokens; ++k) {
      const size_t at = base + static_cast<size_t>(k);
      if (!seq.real[at]) {
        alpha[k] = alpha_all[k] = kNaN;
        continue;
      }
      alpha[k] /= static_cast<double>(seq.suffix[at]);
      alpha_all[k] /= n_real;
      if (alpha[k] > best) best = alpha[k], arg = k;
    }
    r.sink_max[slot] = best;
    r.sink_argmax[slot] = arg;
  });
  guard.finish();
  // Missing heads (layers with fewer heads than the largest): NaN throughout.
  for (int64_t l = 0; l < n_layers; ++l)
    for (int64_t s = 0; s < batch; ++s)
      for (int64_t h = layers[static_cast<size_t>(l)].heads; h < heads; ++h) {
        const size_t slot = static_cast<size_t>((l * batch + s) * heads + h);
        const auto start = static_cast<std::ptrdiff_t>(slot * static_cast<size_t>(tokens));
        std::fill_n(r.sink.begin() + start, tokens, kNaN);
        std::fill_n(r.sink_all.begin() + start, tokens, kNaN);
      }
  for (size_t w = 0; w < items.size(); ++w)
    if (sums[w].negative.found) throw_negative(items[w], sums[w].negative, "layers");

  // Counts per sequence, then the fixed-order pooling over the batch.
  r.queries.assign(static_cast<size_t>(batch), 0);
  r.norm_queries_bidirectional.assign(static_cast<size_t>(batch), 0);
  r.norm_queries_causal.assign(static_cast<size_t>(batch), 0);
  int64_t q_all = 0, q_bi = 0, q_ca = 0;
  for (int64_t s = 0; s < batch; ++s) {
    const auto su = static_cast<size_t>(s);
    const int64_t n_real = seq.n_real[su];
    r.queries[su] = n_real;
    r.norm_queries_bidirectional[su] = n_real >= 2 ? n_real : 0;
    r.norm_queries_causal[su] = std::max<int64_t>(n_real - 1, 0);  // all but the first real query
    q_all += r.queries[su];
    q_bi += r.norm_queries_bidirectional[su];
    q_ca += r.norm_queries_causal[su];
  }
  for (auto* v : {&r.entropy, &r.entropy_norm_bidirectional, &r.entropy_norm_causal, &r.max_weight,
                  &r.special_mass, &r.upper_max})
    v->assign(lh, kNaN);
  // items are ordered (layer, batch, head): pool each (layer, head) over the batch in order.
  std::vector<MapSums> pooled(lh);
  std::vector<uint8_t> seen(lh, 0);
  for (size_t w = 0; w < items.size(); ++w) {
    const Item& it = items[w];
    const size_t at = static_cast<size_t>(it.layer * heads + it.head);
    const MapSums& m = sums[w];
    MapSums& p = pooled[at];
    p.entropy += m.entropy;
    p.norm_bidirectional += m.norm_bidirectional;
    p.norm_causal += m.norm_causal;
    p.max_weight += m.max_weight;
    p.special += m.special;
    p.upper = std::max(p.upper, m.upper);
    seen[at] = 1;
  }
  const auto ratio = [](double sum, int64_t count) {
    return count > 0 ? sum / static_cast<double>(count) : kNaN;
  };
  for (size_t at = 0; at < lh; ++at) {
    if (!seen[at]) continue;
    const MapSums& p = pooled[at];
    r.entropy[at] = ratio(p.entropy, q_all);
    r.entropy_norm_bidirectional[at] = ratio(p.norm_bidirectional, q_bi);
    r.entropy_norm_causal[at] = ratio(p.norm_causal, q_ca);
    r.max_weight[at] = ratio(p.max_weight, q_all);
    r.special_mass[at] = special != nullptr ? ratio(p.special, q_all) : kNaN;
    r.upper_max[at] = p.upper;
  }
  return r;
}

template <typename T>
std::vector<double> js_divergence(const std::vector<LayerMaps<T>>& a,
                                  const std::vector<LayerMaps<T>>& b, int64_t batch, int64_t tokens,
                                  const uint8_t* mask, int num_threads, const CancelFn& cancelled) {
  const int64_t heads = check_layers(a, batch, tokens, "js_divergence");
  check_layers(b, batch, tokens, "js_divergence");
  if (a.size() != b.size()) {
    throw std::invalid_argument("js_divergence: " + std::to_string(a.size()) + " layers against " +
                                std::to_string(b.size()));
  }
  for (size_t l = 0; l < a.size(); ++l) {
    if (a[l].heads != b[l].heads) {
      throw std::invalid_argument("js_divergence: layer " + std::to_string(l) + " has " +
                                  std::to_string(a[l].heads) + " heads against " +
                                  std::to_string(b[l].heads));
    }
  }
  const Sequences seq(batch, tokens, mask, nullptr);
  const std::vector<Item> items = work_items(a, batch);
  std::vector<double> sums(items.size(), 0.0);
  std::vector<Negative> neg_a(items.size()), neg_b(items.size());
  const auto n_items = static_cast<int64_t>(items.size());
  const int threads = static_cast<int>(std::min<int64_t>(resolve_threads(num_threads), n_items));
  Guard guard(cancelled);
  TaskQueue queue(n_items);
#pragma omp parallel num_threads(threads)
  queue.run(guard, [&](int64_t w) {
    const auto wu = static_cast<size_t>(w);
    const Item& it = items[wu];
    const T* pa = map_of(a[static_cast<size_t>(it.layer)], it, tokens);
    const T* pb = map_of(b[static_cast<size_t>(it.layer)], it, tokens);
    const uint8_t* real = seq.real.data() + static_cast<size_t>(it.seq * tokens);
    double total = 0.0;
    for (int64_t i = 0; i < tokens; ++i) {
      if (!real[i]) continue;
      if (guard.poll()) break;
      const T* p = pa + i * tokens;
      const T* q = pb + i * tokens;
      double kl = 0.0;
      bool ok = true;
      for (int64_t j = 0; j < tokens; ++j) {
        const double x = static_cast<double>(p[j]), y = static_cast<double>(q[j]);
        const double m = 0.5 * (x + y);
        if (x > 0.0) kl += x * std::log(x / m);
        if (y > 0.0) kl += y * std::log(y / m);
        ok = weight_ok(x) && weight_ok(y) && ok;
      }
      if (!ok) {
        note_negative(p, tokens, i, neg_a[wu]);
        note_negative(q, tokens, i, neg_b[wu]);
      }
      total += std::max(0.5 * kl, 0.0);  // rounding can leave -1e-17 for equal rows
    }
    sums[wu] = total;
  });
  guard.finish();
  for (size_t w = 0; w < items.size(); ++w) {
    if (neg_a[w].found) throw_negative(items[w], neg_a[w], "a");
    if (neg_b[w].found) throw_negative(items[w], neg_b[w], "b");
  }
  int64_t q_all = 0;
  for (int64_t s = 0; s < batch; ++s) q_all += seq.n_real[static_cast<size_t>(s)];
  std::vector<double> out(a.size() * static_cast<size_t>(heads), kNaN);
  std::vector<double> pooled(out.size(), 0.0);
  std::vector<uint8_t> seen(out.size(), 0);
  for (size_t w = 0; w < items.size(); ++w) {
    const size_t at = static_cast<size_t>(items[w].layer * heads + items[w].head);
    pooled[at] += sums[w];
    seen[at] = 1;
  }
  for (size_t at = 0; at < out.size(); ++at)
    if (seen[at]) out[at] = pooled[at] / static_cast<double>(q_all);
  return out;
}

template HeadStats head_stats<float>(const std::vector<LayerMaps<float>>&, int64_t, int64_t,
                                     const uint8_t*, const uint8_t*, int, const CancelFn&);
template HeadStats head_stats<double>(const std::vector<LayerMaps<double>>&, int64_t, int64_t,
                                      const uint8_t*, const uint8_t*, int, const CancelFn&);
template std::vector<double> js_divergence<float>(const std::vector<LayerMaps<float>>&,
                                                  const std::vector<LayerMaps<float>>&, int64_t,
                                                  int64_t, const uint8_t*, int, const CancelFn&);
template std::vector<double> js_divergence<double>(const std::vector<LayerMaps<double>>&,
                                                   const std::vector<LayerMaps<double>>&, int64_t,
                                                   int64_t, const uint8_t*, int, const CancelFn&);

}  // namespace llmdbg::attention
