#include "core/data/profile.hpp"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>
#include <utility>

#include "core/common/parallel.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace llmdbg::data {

namespace {

inline uint64_t fmix64(uint64_t h) noexcept {
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdULL;
  h ^= h >> 33;
  h *= 0xc4ceb9fe1a85ec53ULL;
  h ^= h >> 33;
  return h;
}

inline uint64_t load64(const char* p) noexcept {
  uint64_t w;
  std::memcpy(&w, p, 8);
  return w;
}

inline uint32_t load32(const char* p) noexcept {
  uint32_t w;
  std::memcpy(&w, p, 4);
  return w;
}

// The first min(n, 8) bytes as one word, injective for a given n (overlapping loads instead of
// a byte loop, never reading outside [p, p + n)).
inline uint64_t head_word(const char* p, size_t n) noexcept {
  if (n >= 8) return load64(p);
  if (n >= 4) return load32(p) | (static_cast<uint64_t>(load32(p + n - 4)) << 32);
  if (n == 0) return 0;
  return static_cast<uint8_t>(p[0]) | (static_cast<uint64_t>(static_cast<uint8_t>(p[n / 2])) << 8) |
         (static_cast<uint64_t>(static_cast<uint8_t>(p[n - 1])) << 16);
}

inline uint64_t hash_inline(const char* d, size_t n) noexcept {
  uint64_t h = 0x9E3779B97F4A7C15ULL ^ (static_cast<uint64_t>(n) * 0xff51afd7ed558ccdULL);
  if (n <= 8) return fmix64((h ^ head_word(d, n)) * 0xbf58476d1ce4e5b9ULL);
  const char* end = d + n;
  while (end - d > 8) {
    h = (h ^ load64(d)) * 0xbf58476d1ce4e5b9ULL;
    h ^= h >> 31;
    d += 8;
  }
  h = (h ^ load64(end - 8)) * 0x94d049bb133111ebULL;  // the last 8 bytes (overlapping)
  return fmix64(h);
}

// Byte classes: 0 part of a token, 1 ASCII whitespace, 2 lead byte of a multi-byte sequence that
// may be whitespace (checked in full by ws_inline).
struct ByteClass {
  uint8_t c[256] = {};
  constexpr ByteClass() {
    for (int b : {0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x1c, 0x1d, 0x1e, 0x1f, 0x20}) c[b] = 1;
    for (int b : {0xc2, 0xe1, 0xe2, 0xe3}) c[b] = 2;
  }
};
constexpr ByteClass kClass{};

inline int ws_inline(const char* p, const char* end) noexcept {
  const auto b0 = static_cast<uint8_t>(p[0]);
  const uint8_t k = kClass.c[b0];
  if (k != 2) return k;  // 0 or 1 byte
  const ptrdiff_t left = end - p;
  if (b0 == 0xc2) {  // U+0085, U+00A0
    if (left < 2) return 0;
    const auto b1 = static_cast<uint8_t>(p[1]);
    return (b1 == 0x85 || b1 == 0xa0) ? 2 : 0;
  }
  if (left < 3) return 0;
  const auto b1 = static_cast<uint8_t>(p[1]), b2 = static_cast<uint8_t>(p[2]);
  if (b0 == 0xe1) return (b1 == 0x9a && b2 == 0x80) ? 3 : 0;  // U+1680
  if (b0 == 0xe3) return (b1 == 0x80 && b2 == 0x80) ? 3 : 0;  // U+3000
  // b0 == 0xe2
  if (b1 == 0x80) {  // U+2000-U+200A, U+2028, U+2029, U+202F
    return (b2 <= 0x8a && b2 >= 0x80) || b2 == 0xa8 || b2 == 0xa9 || b2 == 0xaf ? 3 : 0;
  }
  return (b1 == 0x81 && b2 == 0x9f) ? 3 : 0;  // U+205F
}

// First whitespace at or after p (end if none). Eight bytes at a time: a word with no byte
// <= 0x20 and none >= 0x80 holds no whitespace, so the scan jumps to the first candidate byte.
inline const char* token_end(const char* p, const char* end) noexcept {
  constexpr uint64_t kOnes = 0x0101010101010101ULL, kHigh = 0x8080808080808080ULL;
  for (;;) {
    while (end - p >= 8) {
      const uint64_t w = load64(p);
      const uint64_t candidates = (((w - kOnes * 0x21) & ~w) | w) & kHigh;  // byte < 0x21 or >= 0x80
      if (candidates == 0) {
        p += 8;
        continue;
      }
      p += __builtin_ctzll(candidates) / 8;  // little-endian: lowest byte first
      break;
    }
    if (p >= end) return end;
    if (end - p < 8) {  // short tail: byte by byte
      while (p < end && (kClass.c[static_cast<uint8_t>(*p)] == 0 || ws_inline(p, end) == 0)) ++p;
      return p;
    }
    if (ws_inline(p, end) > 0) return p;
    ++p;  // a control byte or a non-space multi-byte character: keep scanning
  }
}

// Open-addressing table from byte strings to counts, entries kept in insertion order. Counting
// is bound by cache misses on the table, so a slot holds everything a lookup needs: the hash,
// the count, the length and the first 8 bytes of the key; keys of up to 8 bytes (most words)
// are compared without touching the text, longer ones by memcmp of the rest. Callers prefetch
// slots a few tokens ahead (see `prefetch`).
class Counter {
 public:
  Counter() { rehash(1024); }

  // Bytes after the first 8 equal (keys of equal length n > 8, whose first 8 bytes match).
  static bool same_tail(const char* a, const char* b, size_t n) noexcept {
    if (n <= 16) return load64(a + n - 8) == load64(b + n - 8);
    return std::memcmp(a + 8, b + 8, n - 8) == 0;
  }

  void prefetch(uint64_t h) const noexcept { __builtin_prefetch(&slots_[h & mask_]); }

  void add(const char* p, size_t n, uint64_t h, int64_t by = 1) {
    const uint64_t pre = head_word(p, n);
    size_t i = h & mask_;
    for (;;) {
      Slot& s = slots_[i];
      if (s.entry == 0) break;
      if (s.hash == h && s.len == n && s.prefix == pre &&
          (n <= 8 || same_tail(keys_[s.entry - 1], p, n))) {
        s.count += by;
        return;
      }
      i = (i + 1) & mask_;
    }
    keys_.push_back(p);
    slots_[i] = {h, by, static_cast<uint32_t>(n), static_cast<uint32_t>(keys_.size()), pre};
    if (keys_.size() * 2 > slots_.size()) rehash(slots_.size() * 2);
  }

  // (key, count) in insertion order.
  std::vector<std::pair<std::string_view, int64_t>> entries() const {
    std::vector<std::pair<std::string_view, int64_t>> out(keys_.size());
    for (const Slot& s : slots_) {
      if (s.entry != 0) out[s.entry - 1] = {std::string_view(keys_[s.entry - 1], s.len), s.count};
    }
    return out;
  }

 private:
  struct Slot {
    uint64_t hash = 0;
    int64_t count = 0;
    uint32_t len = 0;
    uint32_t entry = 0;  // 1-based index into keys_, 0: empty
    uint64_t prefix = 0;
  };

  void rehash(size_t size) {
    std::vector<Slot> old(size);
    old.swap(slots_);
    mask_ = size - 1;
    for (const Slot& s : old) {
      if (s.entry == 0) continue;
      size_t i = s.hash & mask_;
      while (slots_[i].entry != 0) i = (i + 1) & mask_;
      slots_[i] = s;
    }
  }

  std::vector<Slot> slots_;
  std::vector<const char*> keys_;
  size_t mask_ = 0;
};

// Tokens wait in a small ring after their slot is prefetched, so the table's cache misses
// overlap with tokenising the next ones.
class PrefetchingCounter {
 public:
  explicit PrefetchingCounter(Counter& c) : c_(c) {}
  void add(const char* p, size_t n) {
    const uint64_t h = hash_inline(p, n);
    c_.prefetch(h);
    Pending& slot = ring_[head_ % kDepth];
    if (head_ >= kDepth) c_.add(slot.p, slot.n, slot.h);
    slot = {p, n, h};
    ++head_;
  }
  void flush() {
    const size_t first = head_ > kDepth ? head_ - kDepth : 0;
    for (size_t k = first; k < head_; ++k) {
      const Pending& s = ring_[k % kDepth];
      c_.add(s.p, s.n, s.h);
    }
    head_ = 0;
  }

 private:
  static constexpr size_t kDepth = 8;
  struct Pending {
    const char* p;
    size_t n;
    uint64_t h;
  };
  Counter& c_;
  Pending ring_[kDepth] = {};
  size_t head_ = 0;
};

// Contiguous block [lo, hi) of n items for thread t of team size nt.
inline void block(int64_t n, int t, int nt, int64_t& lo, int64_t& hi) {
  lo = n * t / nt;
  hi = n * (t + 1) / nt;
}

inline int thread_id() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

inline int team_size() {
#ifdef _OPENMP
  return omp_get_num_threads();
#else
  return 1;
#endif
}

}  // namespace

uint64_t hash_bytes(const char* data, size_t size) noexcept { return hash_inline(data, size); }

int whitespace_length(const char* p, const char* end) noexcept { return p < end ? ws_inline(p, end) : 0; }

TokenCounts count_whitespace_tokens(const std::vector<std::string_view>& texts, int num_threads) {
  const auto n = static_cast<int64_t>(texts.size());
  TokenCounts out;
  out.lengths.assign(texts.size(), 0);
  const int threads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(resolve_threads(num_threads), n)));
  std::vector<Counter> local(static_cast<size_t>(threads));
#pragma omp parallel num_threads(threads)
  {
    const int t = thread_id(), nt = team_size();
    int64_t lo, hi;
    block(n, t, nt, lo, hi);
    PrefetchingCounter counter(local[static_cast<size_t>(t)]);
    for (int64_t i = lo; i < hi; ++i) {
      const char* p = texts[static_cast<size_t>(i)].data();
      const char* end = p + texts[static_cast<size_t>(i)].size();
      int64_t len = 0;
      while (p < end) {
        int w;
        while (p < end && (w = ws_inline(p, end)) > 0) p += w;
        if (p == end) break;
        const char* start = p;
        p = token_end(p + 1, end);
        const auto size = static_cast<size_t>(p - start);
        counter.add(start, size);
        ++len;
      }
      out.lengths[static_cast<size_t>(i)] = len;
    }
    counter.flush();
  }
  // Blocks are in text order, so merging thread tables in thread order, each in its own
  // insertion order, yields global first-occurrence order.
  Counter merged;
  for (const Counter& c : local) {
    for (const auto& [key, count] : c.entries()) merged.add(key.data(), key.size(), hash_inline(key.data(), key.size()), count);
  }
  const auto entries = merged.entries();
  out.tokens.reserve(entries.size());
  out.counts.reserve(entries.size());
  for (const auto& [key, count] : entries) {
    out.tokens.push_back(key);
    out.counts.push_back(count);
    out.total += count;
  }
  return out;
}

IdCounts count_ids(const int64_t* ids, const int64_t* offsets, int64_t n_seqs, int64_t vocab_size,
                   int num_threads) {
  if (n_seqs < 0) throw std::invalid_argument("count_ids: n_seqs must be >= 0");
  if (vocab_size <= 0) throw std::invalid_argument("count_ids: vocab_size must be positive");
  if (offsets[0] != 0) throw std::invalid_argument("count_ids: offsets must start at 0");
  for (int64_t s = 0; s < n_seqs; ++s) {
    if (offsets[s + 1] < offsets[s]) throw std::invalid_argument("count_ids: offsets must be non-decreasing");
  }
  IdCounts out;
  out.lengths.resize(static_cast<size_t>(n_seqs));
  for (int64_t s = 0; s < n_seqs; ++s) out.lengths[static_cast<size_t>(s)] = offsets[s + 1] - offsets[s];
  const int64_t n_ids = offsets[n_seqs];
  out.total = n_ids;
  const int threads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(resolve_threads(num_threads), 1 + n_ids / 65536)));
  std::vector<std::vector<int64_t>> local(static_cast<size_t>(threads));
  std::vector<int64_t> bad(static_cast<size_t>(threads), -1);
#pragma omp parallel num_threads(threads)
  {
    const int t = thread_id(), nt = team_size();
    int64_t lo, hi;
    block(n_ids, t, nt, lo, hi);
    auto& c = local[static_cast<size_t>(t)];
    c.assign(static_cast<size_t>(vocab_size), 0);
    for (int64_t i = lo; i < hi; ++i) {
      const int64_t id = ids[i];
      if (id < 0 || id >= vocab_size) {
        bad[static_cast<size_t>(t)] = i;
        break;
      }
      ++c[static_cast<size_t>(id)];
    }
  }
  for (int64_t b : bad) {
    if (b >= 0) {
      throw std::invalid_argument("count_ids: token id " + std::to_string(ids[b]) + " at flat position " +
                                  std::to_string(b) + " is outside [0, " + std::to_string(vocab_size) + ")");
    }
  }
  out.counts = std::move(local[0]);
  for (size_t t = 1; t < local.size(); ++t) {
    for (size_t v = 0; v < out.counts.size(); ++v) out.counts[v] += local[t][v];
  }
  return out;
}

std::vector<int64_t> duplicate_groups(const std::vector<std::string_view>& items, int num_threads,
                                      uint64_t hash_mask) {
  const auto n = static_cast<int64_t>(items.size());
  std::vector<int64_t> group(items.size());
  std::vector<uint64_t> hashes(items.size());
  const int threads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(resolve_threads(num_threads), 1 + n / 4096)));
#pragma omp parallel num_threads(threads)
  {
    const int t = thread_id(), nt = team_size();
    int64_t lo, hi;
    block(n, t, nt, lo, hi);
    for (int64_t i = lo; i < hi; ++i) {
      const auto& s = items[static_cast<size_t>(i)];
      hashes[static_cast<size_t>(i)] = hash_inline(s.data(), s.size()) & hash_mask;
    }
#pragma omp barrier
    // Shard by hash: equal items share a hash, hence a shard; each shard is scanned in item
    // order, so the representative is always the earliest item.
    std::vector<int64_t> table(1024, -1);
    size_t mask = table.size() - 1, used = 0;
    for (int64_t i = 0; i < n; ++i) {
      const uint64_t h = hashes[static_cast<size_t>(i)];
      if (static_cast<int>((h >> 40) % static_cast<uint64_t>(nt)) != t) continue;
      const auto& s = items[static_cast<size_t>(i)];
      size_t k = (h ^ (h >> 21)) & mask;
      int64_t found = -1;
      while (table[k] >= 0) {
        const int64_t j = table[k];
        const auto& o = items[static_cast<size_t>(j)];
        if (hashes[static_cast<size_t>(j)] == h && o.size() == s.size() &&
            std::memcmp(o.data(), s.data(), s.size()) == 0) {
          found = j;
          break;
        }
        k = (k + 1) & mask;
      }
      if (found >= 0) {
        group[static_cast<size_t>(i)] = found;
        continue;
      }
      group[static_cast<size_t>(i)] = i;
      table[k] = i;
      if (++used * 2 > table.size()) {  // grow and reinsert the representatives
        std::vector<int64_t> bigger(table.size() * 2, -1);
        const size_t m2 = bigger.size() - 1;
        for (int64_t j : table) {
          if (j < 0) continue;
          const uint64_t hj = hashes[static_cast<size_t>(j)];
          size_t q = (hj ^ (hj >> 21)) & m2;
          while (bigger[q] >= 0) q = (q + 1) & m2;
          bigger[q] = j;
        }
        table.swap(bigger);
        mask = m2;
      }
    }
  }
  return group;
}

}  // namespace llmdbg::data
