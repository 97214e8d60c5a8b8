// qk_attention against a straightforward double-precision softmax of q·kᵀ, written from the
// definition (eager attention: scale, soft-cap, add the mask, exclude, softmax with sinks).
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/attention/qk_attention.hpp"
#include "core/common/cpu.hpp"
#include "core/common/errors.hpp"

namespace at = llmdbg::attention;

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

// A random problem that owns its buffers; `p` points into them.
struct Case {
  at::QKProblem p;
  std::vector<float> q, k, add, sinks;
  std::vector<uint8_t> keep, special;
  std::vector<int64_t> sink_index;

  Case(int64_t B, int64_t Hq, int64_t Hkv, int64_t Tq, int64_t Tk, int64_t D, unsigned seed,
       double spread = 1.0) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> normal(0.0f, static_cast<float>(spread));
    q.resize(static_cast<size_t>(B * Hq * Tq * D));
    k.resize(static_cast<size_t>(B * Hkv * Tk * D));
    for (auto& v : q) v = normal(rng);
    for (auto& v : k) v = normal(rng);
    p.q = q.data(), p.k = k.data();
    p.batch = B, p.q_heads = Hq, p.kv_heads = Hkv, p.q_len = Tq, p.k_len = Tk, p.dim = D;
    p.scaling = 1.0 / std::sqrt(static_cast<double>(D));
  }
  void bool_mask(int64_t Bm, int64_t Hm, double drop, unsigned seed) {
    std::mt19937_64 rng(seed);
    std::bernoulli_distribution off(drop);
    keep.resize(static_cast<size_t>(Bm * Hm * p.q_len * p.k_len));
    for (auto& v : keep) v = off(rng) ? 0 : 1;
    p.bool_mask = keep.data(), p.mask_batch = Bm, p.mask_heads = Hm;
  }
  void add_mask(int64_t Bm, int64_t Hm, unsigned seed) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    add.resize(static_cast<size_t>(Bm * Hm * p.q_len * p.k_len));
    for (auto& v : add) v = normal(rng);
    p.add_mask = add.data(), p.mask_batch = Bm, p.mask_heads = Hm;
  }
};

// (B, Hq, Tq, Tk) probabilities in double.
std::vector<double> reference(const at::QKProblem& p) {
  const int64_t B = p.batch, H = p.q_heads, Tq = p.q_len, Tk = p.k_len, D = p.dim;
  const int64_t G = H / p.kv_heads;
  std::vector<double> out(static_cast<size_t>(B * H * Tq * Tk), 0.0);
  std::vector<double> w(static_cast<size_t>(Tk));
  std::vector<bool> in(static_cast<size_t>(Tk));
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < H; ++h) {
      for (int64_t i = 0; i < Tq; ++i) {
        const int64_t pos = i + p.offset;
        const float* qi = p.q + ((b * H + h) * Tq + i) * D;
        double m = -kInf;
        for (int64_t j = 0; j < Tk; ++j) {
          const float* kj = p.k + ((b * p.kv_heads + h / G) * Tk + j) * D;
          double dot = 0;
          for (int64_t d = 0; d < D; ++d) dot += double(qi[d]) * double(kj[d]);
          double v = dot * p.scaling;
          if (p.softcap > 0) v = p.softcap * std::tanh(v / p.softcap);
          const int64_t mb = p.mask_batch == 1 ? 0 : b, mh = p.mask_heads == 1 ? 0 : h;
          const int64_t mi = ((mb * p.mask_heads + mh) * Tq + i) * Tk + j;
          if (p.add_mask) v += p.add_mask[mi];
          bool ok = !(p.causal && j > pos) && !(p.window > 0 && j <= pos - p.window);
          ok = ok && !(p.bool_mask && p.bool_mask[mi] == 0) && v != -kInf;
          in[j] = ok, w[j] = v;
          if (ok) m = std::max(m, v);
        }
        if (m == -kInf) continue;  // all excluded: zeros
        const double key_max = m;
        if (p.sinks) m = std::max(m, double(p.sinks[h]));
        double s = p.sinks ? std::exp(double(p.sinks[h]) - m) : 0.0;
        for (int64_t j = 0; j < Tk; ++j) s += in[j] ? std::exp(w[j] - m) : 0.0;
        (void)key_max;
        double* o = out.data() + ((b * H + h) * Tq + i) * Tk;
        for (int64_t j = 0; j < Tk; ++j) o[j] = in[j] ? std::exp(w[j] - m) / s : 0.0;
      }
    }
  }
  return out;
}

struct Result {
  std::vector<float> entropy, max_prob, sink_mass, special_mass, maps;
  std::vector<double> row_product;
};

Result run(const at::QKProblem& p, at::QKRequest r, int threads,
           const std::function<bool()>& poll = {}) {
  Result res;
  at::QKOutputs o;
  const auto n_stats = static_cast<size_t>(p.batch * p.q_heads * p.q_len);
  if (r.stats) {
    res.entropy.assign(n_stats, -7.0f), res.max_prob.assign(n_stats, -7.0f);
    res.sink_mass.assign(n_stats, -7.0f), res.special_mass.assign(n_stats, -7.0f);
    o.entropy = res.entropy.data(), o.max_prob = res.max_prob.data();
    o.sink_mass = res.sink_mass.data(), o.special_mass = res.special_mass.data();
  }
  if (r.maps) {
    const int64_t nh = r.map_heads ? r.num_map_heads : p.q_heads;
    const int64_t nr = r.map_rows ? r.num_map_rows : p.q_len;
    const int64_t per = r.map_fusion == at::MapFusion::none ? nh : 1;
    res.maps.assign(static_cast<size_t>(p.batch * per * nr * p.k_len), -7.0f);
    o.maps = res.maps.data();
  }
  if (r.row_weights) {
    res.row_product.assign(static_cast<size_t>(p.batch * p.k_len), -7.0);
    o.row_product = res.row_product.data();
  }
  at::qk_attention(p, r, o, threads, poll);
  return res;
}

at::QKRequest stats_and_maps() {
  at::QKRequest r;
  r.stats = true, r.maps = true;
  return r;
}

// Compares statistics and the full maps (all heads, all rows) with the reference.
void expect_matches(const at::QKProblem& p, const Result& res, double tol = 1e-6) {
  const auto ref = reference(p);
  const int64_t Tk = p.k_len, rows = p.batch * p.q_heads * p.q_len;
  ASSERT_EQ(res.maps.size(), ref.size());
  for (size_t f = 0; f < ref.size(); ++f) ASSERT_NEAR(res.maps[f], ref[f], tol) << "entry " << f;
  for (int64_t r = 0; r < rows; ++r) {
    const double* pr = ref.data() + r * Tk;
    double sum = 0, ent = 0, mx = 0, sp = 0;
    for (int64_t j = 0; j < Tk; ++j) {
      sum += pr[j], mx = std::max(mx, pr[j]);
      if (pr[j] > 0) ent -= pr[j] * std::log(pr[j]);
      if (p.special && p.special[(r / (p.q_heads * p.q_len)) * Tk + j]) sp += pr[j];
    }
    const int64_t b = r / (p.q_heads * p.q_len);
    const int64_t sink = p.sink_index ? p.sink_index[b] : 0;
    if (sum == 0) {  // fully excluded row
      EXPECT_TRUE(std::isnan(res.entropy[r]) && std::isnan(res.max_prob[r]) &&
                  std::isnan(res.sink_mass[r]))
          << "row " << r;
      if (p.special) EXPECT_TRUE(std::isnan(res.special_mass[r]));
      continue;
    }
    ASSERT_NEAR(res.entropy[r], ent, 1e-5) << "row " << r;
    ASSERT_NEAR(res.max_prob[r], mx, tol) << "row " << r;
    ASSERT_NEAR(res.sink_mass[r], pr[sink], tol) << "row " << r;
    if (p.special) ASSERT_NEAR(res.special_mass[r], sp, tol) << "row " << r;
  }
}

}  // namespace

TEST(QKAttention, CausalGqaMatchesReference) {
  Case c(2, 6, 2, 37, 37, 16, 1);
  c.p.causal = true;
  expect_matches(c.p, run(c.p, stats_and_maps(), 2));
}

TEST(QKAttention, BidirectionalManyChunksMatchesReference) {
  // Tk > 3 chunks of 512 keys, logits spread so that the running max rises across chunks.
  Case c(1, 2, 1, 9, 1700, 8, 2, 1.5);
  for (int64_t j = 0; j < c.p.k_len; ++j) c.k[j * 8] += 0.004f * static_cast<float>(j);
  expect_matches(c.p, run(c.p, stats_and_maps(), 2));
}

TEST(QKAttention, SlidingWindowWithAndWithoutCausal) {
  for (bool causal : {true, false}) {
    Case c(1, 4, 4, 40, 40, 8, 3);
    c.p.causal = causal, c.p.window = 5;
    expect_matches(c.p, run(c.p, stats_and_maps(), 2));
  }
}

TEST(QKAttention, SoftcapComesBeforeTheMask) {
  Case c(1, 4, 2, 20, 20, 8, 4, 3.0);  // large logits, so the cap matters
  c.p.softcap = 2.0, c.p.causal = true;
  c.add_mask(1, 4, 5);
  expect_matches(c.p, run(c.p, stats_and_maps(), 1));
}

TEST(QKAttention, BoolMaskBroadcastsOverBatchAndHeads) {
  for (auto [Bm, Hm] : {std::pair<int64_t, int64_t>{1, 1}, {2, 1}, {1, 4}, {2, 4}}) {
    Case c(2, 4, 2, 13, 29, 8, 6);
    c.bool_mask(Bm, Hm, 0.3, 7);
    // One fully masked row: all zeros and NaN statistics.
    std::fill_n(c.keep.begin() + 3 * c.p.k_len, c.p.k_len, 0);
    const Result res = run(c.p, stats_and_maps(), 2);
    expect_matches(c.p, res);
    EXPECT_TRUE(std::isnan(res.entropy[3]));
    for (int64_t j = 0; j < c.p.k_len; ++j) EXPECT_EQ(res.maps[3 * c.p.k_len + j], 0.0f);
  }
}

TEST(QKAttention, AdditivePerHeadBiasWithInfAndFloatMin) {
  Case c(2, 4, 1, 11, 11, 8, 8);
  c.add_mask(2, 4, 9);
  const float lowest = std::numeric_limits<float>::lowest();
  for (size_t f = 0; f < c.add.size(); f += 7) c.add[f] = -std::numeric_limits<float>::infinity();
  for (size_t f = 3; f < c.add.size(); f += 11) c.add[f] = lowest;
  // A row of -inf everywhere: excluded (zeros, NaN); a row of float32 min: uniform, as in eager.
  std::fill_n(c.add.begin() + 2 * 11, 11, -std::numeric_limits<float>::infinity());
  std::fill_n(c.add.begin() + 5 * 11, 11, lowest);
  const Result res = run(c.p, stats_and_maps(), 2);
  expect_matches(c.p, res);
  EXPECT_TRUE(std::isnan(res.max_prob[2]));
  EXPECT_NEAR(res.max_prob[5], 1.0 / 11.0, 1e-6);
}

TEST(QKAttention, OffsetWithFewerQueriesThanKeys) {
  Case c(2, 2, 2, 5, 40, 8, 10);
  c.p.causal = true, c.p.offset = 35;
  expect_matches(c.p, run(c.p, stats_and_maps(), 2));
  c.p.offset = 20, c.p.window = 7;
  expect_matches(c.p, run(c.p, stats_and_maps(), 2));
  c.p.offset = 100;  // beyond every key with the window: every row excluded
  const Result res = run(c.p, stats_and_maps(), 2);
  expect_matches(c.p, res);
  EXPECT_TRUE(std::isnan(res.entropy[0]));
}

TEST(QKAttention, SinksTakePartInTheDenominatorOnly) {
  Case c(1, 4, 2, 17, 17, 8, 11);
  c.p.causal = true;
  c.sinks = {-1.0f, 0.5f, 3.0f, 10.0f};
  c.p.sinks = c.sinks.data();
  const Result res = run(c.p, stats_and_maps(), 2);
  expect_matches(c.p, res);
  double row_sum = 0;
  for (int64_t j = 0; j < c.p.k_len; ++j) row_sum += res.maps[(3 * 17 + 16) * 17 + j];
  EXPECT_LT(row_sum, 0.01);  // head 3's sink logit 10 takes almost everything
}

TEST(QKAttention, SpecialFlagsAndSinkIndex) {
  Case c(2, 2, 1, 12, 12, 8, 12);
  c.p.causal = true;
  c.special.assign(24, 0);
  for (int j : {0, 3, 4, 11, 12, 20}) c.special[j] = 1;
  c.sink_index = {0, 5};
  c.p.special = c.special.data(), c.p.sink_index = c.sink_index.data();
  const Result res = run(c.p, stats_and_maps(), 2);
  expect_matches(c.p, res);
  // Batch 1, query 2 cannot see key 5: its sink mass is exactly 0.
  EXPECT_EQ(res.sink_mass[(1 * 2 + 0) * 12 + 2], 0.0f);
}

TEST(QKAttention, MapsOfChosenHeadsAndRowsWithFusion) {
  Case c(2, 6, 3, 15, 15, 8, 13);
  c.p.causal = true;
  const auto ref = reference(c.p);
  const std::vector<int64_t> heads = {4, 1, 4}, rows = {14, 0, 7, 7};
  for (auto fusion : {at::MapFusion::none, at::MapFusion::mean, at::MapFusion::max}) {
    at::QKRequest r;
    r.maps = true, r.map_fusion = fusion;
    r.map_heads = heads.data(), r.num_map_heads = 3;
    r.map_rows = rows.data(), r.num_map_rows = 4;
    const Result res = run(c.p, r, 2);
    for (int64_t b = 0; b < 2; ++b) {
      for (int64_t a = 0; a < 4; ++a) {
        for (int64_t j = 0; j < 15; ++j) {
          auto p = [&](int64_t h) { return ref[((b * 6 + h) * 15 + rows[a]) * 15 + j]; };
          if (fusion == at::MapFusion::none) {
            for (int64_t oh = 0; oh < 3; ++oh) {
              ASSERT_NEAR(res.maps[((b * 3 + oh) * 4 + a) * 15 + j], p(heads[oh]), 1e-6);
            }
          } else {
            const double want =
                fusion == at::MapFusion::mean ? (2 * p(4) + p(1)) / 3 : std::max(p(4), p(1));
            ASSERT_NEAR(res.maps[(b * 4 + a) * 15 + j], want, 1e-6);
          }
        }
      }
    }
  }
}

TEST(QKAttention, RowProductSkipsZeroWeightRows) {
  Case c(2, 4, 2, 30, 30, 8, 14);
  c.p.causal = true;
  c.add_mask(2, 1, 15);
  std::vector<double> weights(60, 0.0);
  weights[29] = 1.0, weights[5] = 0.25, weights[30 + 17] = -2.0;
  // Row 3 of batch 0 has NaN logits: only a row that is not computed gets away with that.
  c.add[3 * 30 + 1] = std::numeric_limits<float>::quiet_NaN();
  const std::vector<int64_t> heads = {0, 3};
  at::QKRequest r;
  r.row_weights = weights.data(), r.row_heads = heads.data(), r.num_row_heads = 2;
  const Result res = run(c.p, r, 2);
  c.add[3 * 30 + 1] = 0.0f;
  const auto ref = reference(c.p);
  for (int64_t b = 0; b < 2; ++b) {
    for (int64_t j = 0; j < 30; ++j) {
      double want = 0;
      for (int64_t i = 0; i < 30; ++i) {
        for (int64_t h : heads)
          want += weights[b * 30 + i] * ref[((b * 4 + h) * 30 + i) * 30 + j] / 2;
      }
      ASSERT_NEAR(res.row_product[b * 30 + j], want, 1e-6) << b << ", " << j;
    }
  }
  // Every weight 0: nothing is computed and the product is 0.
  std::fill(weights.begin(), weights.end(), 0.0);
  for (double v : run(c.p, r, 2).row_product) ASSERT_EQ(v, 0.0);
  // Asking for the statistics computes rows 3 and 20, which then fail naming the first, whatever
  // the thread count.
  c.add[3 * 30 + 1] = std::numeric_limits<float>::quiet_NaN();
  c.add[(30 + 20) * 30 + 2] = std::numeric_limits<float>::infinity();
  r.stats = true;
  for (int threads : {1, 2}) {
    try {
      run(c.p, r, threads);
      FAIL() << "NaN logits were not reported";
    } catch (const std::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find("batch 0, head 0, query 3"), std::string::npos)
          << e.what();
    }
  }
}

TEST(QKAttention, RowProductOfSeveralWeightSets) {
  // Three sets (as for three rolled-out rows), one of them all zero; the first set alone must
  // give the same numbers as a (B, Tq) request.
  Case c(2, 4, 1, 25, 25, 8, 21);
  c.p.causal = true;
  const int64_t R = 3, T = 25;
  std::vector<double> weights(2 * R * T, 0.0);
  std::mt19937_64 rng(22);
  std::uniform_real_distribution<double> u(-1.0, 1.0);
  for (int64_t b = 0; b < 2; ++b) {
    for (int64_t i = 0; i < T; i += 2) weights[(b * R + 0) * T + i] = u(rng);
    for (int64_t i = 10; i < 20; ++i) weights[(b * R + 2) * T + i] = u(rng);
  }
  at::QKRequest r;
  r.row_weights = weights.data(), r.row_sets = R;
  at::QKOutputs o;
  std::vector<double> product(2 * R * T, -7.0);
  o.row_product = product.data();
  at::qk_attention(c.p, r, o, 2);
  const auto ref = reference(c.p);
  for (int64_t b = 0; b < 2; ++b) {
    for (int64_t set = 0; set < R; ++set) {
      for (int64_t j = 0; j < T; ++j) {
        double want = 0;
        for (int64_t i = 0; i < T; ++i) {
          for (int64_t h = 0; h < 4; ++h) {
            want += weights[(b * R + set) * T + i] * ref[((b * 4 + h) * T + i) * T + j] / 4;
          }
        }
        ASSERT_NEAR(product[(b * R + set) * T + j], want, 1e-6) << b << ", " << set << ", " << j;
      }
    }
  }
  std::vector<double> first(2 * T);
  for (int64_t b = 0; b < 2; ++b) {
    std::copy_n(weights.begin() + b * R * T, T, first.begin() + b * T);
  }
  at::QKRequest one;
  one.row_weights = first.data();
  const Result single = run(c.p, one, 2);
  for (int64_t b = 0; b < 2; ++b) {
    for (int64_t j = 0; j < T; ++j) {
      ASSERT_NEAR(single.row_product[b * T + j], product[b * R * T + j], 1e-12);
    }
  }
}

TEST(QKAttention, Avx2AndPortableKernelsAgree) {
  if (!llmdbg::cpu_has_avx2()) GTEST_SKIP() << "no AVX2/FMA on this CPU";
  Case c(1, 4, 2, 70, 1100, 24, 16);
  c.p.causal = true, c.p.offset = 1030;
  c.special.assign(1100, 0);
  for (size_t j = 0; j < 1100; j += 3) c.special[j] = 1;
  c.p.special = c.special.data();
  c.bool_mask(1, 1, 0.1, 17);
  std::vector<double> weights(70, 1.0);
  at::QKRequest r = stats_and_maps();
  r.row_weights = weights.data();
  const Result fast = run(c.p, r, 2);
  EXPECT_TRUE(at::detail::qk_uses_avx2());
  llmdbg::force_portable_kernels(true);
  EXPECT_FALSE(at::detail::qk_uses_avx2());
  const Result slow = run(c.p, r, 2);
  llmdbg::force_portable_kernels(false);
  for (size_t f = 0; f < fast.maps.size(); ++f) ASSERT_NEAR(fast.maps[f], slow.maps[f], 1e-6);
  for (size_t f = 0; f < fast.entropy.size(); ++f) {
    ASSERT_NEAR(fast.entropy[f], slow.entropy[f], 1e-6);
    ASSERT_NEAR(fast.max_prob[f], slow.max_prob[f], 1e-6);
    ASSERT_NEAR(fast.sink_mass[f], slow.sink_mass[f], 1e-6);
    ASSERT_NEAR(fast.special_mass[f], slow.special_mass[f], 1e-6);
  }
  for (size_t f = 0; f < fast.row_product.size(); ++f) {
    ASSERT_NEAR(fast.row_product[f], slow.row_product[f], 1e-6);
  }
  expect_matches(c.p, fast);
}

TEST(QKAttention, BitwiseEqualForEveryThreadCount) {
  Case c(2, 8, 2, 200, 200, 16, 18);
  c.p.causal = true;
  std::vector<double> weights(400);
  for (size_t f = 0; f < weights.size(); ++f) weights[f] = f % 3 == 0 ? 0.0 : 1.0 / (1.0 + f);
  at::QKRequest r = stats_and_maps();
  r.row_weights = weights.data();
  const Result one = run(c.p, r, 1);
  for (int threads : {2, 3}) {
    const Result many = run(c.p, r, threads);
    EXPECT_EQ(0, std::memcmp(one.entropy.data(), many.entropy.data(), one.entropy.size() * 4));
    EXPECT_EQ(0, std::memcmp(one.max_prob.data(), many.max_prob.data(), one.max_prob.size() * 4));
    EXPECT_EQ(0, std::memcmp(one.maps.data(), many.maps.data(), one.maps.size() * 4));
    EXPECT_EQ(0, std::memcmp(one.row_product.data(), many.row_product.data(),
                             one.row_product.size() * 8));
  }
  // A row's result does not depend on which other rows are requested either.
  const std::vector<int64_t> rows = {199, 3};
  at::QKRequest only;
  only.maps = true, only.map_rows = rows.data(), only.num_map_rows = 2;
  const Result part = run(c.p, only, 2);
  for (int64_t b = 0; b < 2; ++b) {
    for (int64_t h = 0; h < 8; ++h) {
      for (int64_t a = 0; a < 2; ++a) {
        const float* want = one.maps.data() + ((b * 8 + h) * 200 + rows[a]) * 200;
        const float* got = part.maps.data() + ((b * 8 + h) * 2 + a) * 200;
        EXPECT_EQ(0, std::memcmp(want, got, 200 * 4)) << b << ", " << h << ", " << a;
      }
    }
  }
}

TEST(QKAttention, CancellationThrowsInterrupted) {
  // About 0.3 s of work on two threads (much more under sanitizers): polled many times.
  Case c(1, 8, 2, 4096, 4096, 64, 19);
  c.p.causal = true;
  at::QKRequest r;
  r.stats = true;
  using Clock = std::chrono::steady_clock;
  // A poll that says yes at once: nothing is computed.
  EXPECT_THROW(run(c.p, r, 2, [] { return true; }), llmdbg::Interrupted);
  // A poll that says yes on its third call (~20 ms in): every thread stops at its next block of
  // rows (about a millisecond of work), and the poll is not called again.
  std::atomic<int> calls{0};
  Clock::time_point yes;
  const auto poll = [&] {
    if (++calls < 3) return false;
    yes = Clock::now();
    return true;
  };
  EXPECT_THROW(run(c.p, r, 2, poll), llmdbg::Interrupted);
  const double latency = std::chrono::duration<double>(Clock::now() - yes).count();
  EXPECT_EQ(calls.load(), 3);
  EXPECT_LT(latency, 0.5) << "the kernel took " << latency << " s to stop";
  // A poll that throws: the exception comes out.
  EXPECT_THROW(
      run(c.p, r, 2, [&] { return calls++ > 3 ? throw std::runtime_error("x"), true : false; }),
      std::runtime_error);
}

TEST(QKAttention, RefusesBadInput) {
  Case c(1, 4, 2, 5, 5, 8, 20);
  at::QKRequest r;
  r.stats = true;
  auto message = [&](const at::QKProblem& p, const at::QKRequest& req) -> std::string {
    try {
      run(p, req, 1);
    } catch (const std::invalid_argument& e) {
      return e.what();
    }
    return "no error";
  };
  at::QKProblem p = c.p;
  p.kv_heads = 3;
  EXPECT_NE(message(p, r).find("multiple of the key heads"), std::string::npos);
  p = c.p, p.softcap = -1;
  EXPECT_NE(message(p, r).find("softcap"), std::string::npos);
  p = c.p, p.window = -1;
  EXPECT_NE(message(p, r).find("window"), std::string::npos);
  c.q[2 * 8 + 3] = std::numeric_limits<float>::infinity();
  EXPECT_NE(message(c.p, r).find("q holds NaN or inf, first at (0, 0, 2, 3) = inf"),
            std::string::npos)
      << message(c.p, r);
  c.q[2 * 8 + 3] = 0.0f;
  c.k[5 * 8 + 1] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_NE(message(c.p, r).find("k holds NaN or inf, first at (0, 1, 0, 1) = nan"),
            std::string::npos)
      << message(c.p, r);
  c.k[5 * 8 + 1] = 0.0f;
  const std::vector<int64_t> bad = {0, 4};
  at::QKRequest maps;
  maps.maps = true, maps.map_heads = bad.data(), maps.num_map_heads = 2;
  EXPECT_NE(message(c.p, maps).find("map_heads[1] = 4 is outside [0, 4)"), std::string::npos);
  EXPECT_EQ(message(c.p, r), "no error");
}

TEST(QKAttention, VectorisedExpIsAccurate) {
  std::vector<float> x, y;
  for (double v = -87.3; v <= 0.0; v += 0.0137) x.push_back(static_cast<float>(v));
  for (float v : {-0.0f, -1e-30f, -88.0f, -100.0f, -1e30f, std::numeric_limits<float>::lowest(),
                  -std::numeric_limits<float>::infinity()}) {
    x.push_back(v);
  }
  y.resize(x.size());
  at::detail::exp_block(x.data(), y.data(), static_cast<int64_t>(x.size()));
  for (size_t f = 0; f < x.size(); ++f) {
    const double want = std::exp(static_cast<double>(x[f]));
    if (x[f] < -87.4f) {
      EXPECT_LT(y[f], 1e-37f) << x[f];
    } else {
      EXPECT_NEAR(y[f], want, 3e-7 * want) << x[f];  // ~2 ulp
    }
  }
}
