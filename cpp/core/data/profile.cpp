#include "core/data/profile.hpp"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>
#include <utility>

#include "core/common/cancel.hpp"
#include "core/common/parallel.hpp"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

// Reading a few bytes past the end of a text is safe as long as the read stays inside the page
// that holds the text's last byte; the extra bytes are masked off. Sanitizers do not know this,
// so their builds copy the tail instead.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_MEMORY__)
#define LLMDBG_PAGE_OVERREAD 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(memory_sanitizer)
#define LLMDBG_PAGE_OVERREAD 0
#endif
#endif
#ifndef LLMDBG_PAGE_OVERREAD
#define LLMDBG_PAGE_OVERREAD 1
#endif

#if defined(__GNUC__)
#define LLMDBG_INLINE __attribute__((always_inline))
#else
#define LLMDBG_INLINE
#endif

namespace llmdbg::data {

namespace {

// ---------------------------------------------------------------------------------------------
// Loads and hashing

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

// True when k bytes from p stay inside p's 4 KiB page (p itself points at a valid byte).
inline bool same_page(const char* p, size_t k) noexcept {
  return LLMDBG_PAGE_OVERREAD && (reinterpret_cast<uintptr_t>(p) & 4095) <= 4096 - k;
}

constexpr uint64_t kP0 = 0xa0761d6478bd642fULL, kP1 = 0xe7037ed1a0b428dbULL;
constexpr uint64_t kP2 = 0x8ebc6af09c88c6e3ULL, kP3 = 0x589965cc75374cc3ULL;

// 64 x 64 -> 128-bit product, folded by xor (wyhash's "mum").
inline uint64_t mum(uint64_t a, uint64_t b) noexcept {
  const unsigned __int128 r = static_cast<unsigned __int128>(a) * b;
  return static_cast<uint64_t>(r) ^ static_cast<uint64_t>(r >> 64);
}

// Bytes [0, n) of a key as two little-endian words, bytes >= n zero: word masks by length.
struct KeyMasks {
  uint64_t lo[17] = {}, hi[17] = {};
  constexpr KeyMasks() {
    for (int k = 0; k <= 16; ++k) {
      lo[k] = k >= 8 ? ~uint64_t{0} : (uint64_t{1} << (8 * k)) - 1;
      hi[k] = k <= 8 ? 0 : k >= 16 ? ~uint64_t{0} : (uint64_t{1} << (8 * (k - 8))) - 1;
    }
  }
};
constexpr KeyMasks kMasks{};

// The first min(n, 16) bytes of [p, p + n), zero-padded, never reading outside the range.
inline void load_key_exact(const char* p, size_t n, uint64_t& lo, uint64_t& hi) noexcept {
  if (n >= 16) {
    lo = load64(p), hi = load64(p + 8);
  } else if (n > 8) {
    lo = load64(p), hi = load64(p + n - 8) >> (8 * (16 - n));
  } else if (n >= 4) {  // overlapping loads: the shared bytes are equal, so OR is exact
    lo = load32(p) | (static_cast<uint64_t>(load32(p + n - 4)) << (8 * (n - 4))), hi = 0;
  } else if (n > 0) {
    lo = static_cast<uint8_t>(p[0]) |
         (static_cast<uint64_t>(static_cast<uint8_t>(p[n / 2])) << (8 * (n / 2))) |
         (static_cast<uint64_t>(static_cast<uint8_t>(p[n - 1])) << (8 * (n - 1)));
    hi = 0;
  } else {
    lo = hi = 0;
  }
}

// Same words, but reads 16 bytes whenever that is safe (the common case inside a text).
inline void load_key(const char* p, size_t n, const char* end, uint64_t& lo,
                     uint64_t& hi) noexcept {
  if (end - p >= 16 || same_page(p, 16)) {
    const size_t k = n < 16 ? n : 16;
    lo = load64(p) & kMasks.lo[k];
    hi = load64(p + 8) & kMasks.hi[k];
  } else {
    load_key_exact(p, n, lo, hi);
  }
}

inline uint64_t hash_short(uint64_t lo, uint64_t hi, size_t n) noexcept {
  return mum(lo ^ kP0, hi ^ kP1 ^ static_cast<uint64_t>(n));
}

// n > 16; lo, hi are the first 16 bytes.
inline uint64_t hash_long(const char* p, size_t n, uint64_t lo, uint64_t hi) noexcept {
  uint64_t h = hash_short(lo, hi, n);
  const char* q = p + 16;
  const char* end = p + n;
  while (end - q > 16) {
    h = mum(h ^ load64(q) ^ kP2, load64(q + 8) ^ kP3);
    q += 16;
  }
  return mum(h ^ load64(end - 16) ^ kP2, load64(end - 8) ^ kP3);  // last 16 bytes (overlapping)
}

inline uint64_t hash_key(const char* p, size_t n, uint64_t lo, uint64_t hi) noexcept {
  return n <= 16 ? hash_short(lo, hi, n) : hash_long(p, n, lo, hi);
}

inline uint64_t hash_exact(const char* p, size_t n) noexcept {
  uint64_t lo, hi;
  load_key_exact(p, n, lo, hi);
  return hash_key(p, n, lo, hi);
}

// ---------------------------------------------------------------------------------------------
// Whitespace

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

// 64 bytes at w: bit k set when byte k is ASCII whitespace; `high` gets the bytes >= 0x80
// (candidates for multi-byte whitespace, resolved by the caller).
inline uint64_t ascii_ws64(const char* w, uint64_t& high) noexcept {
  uint64_t ws = 0, hi = 0;
#if defined(__SSE2__)
  const __m128i c09 = _mm_set1_epi8(0x09), c1c = _mm_set1_epi8(0x1c), c4 = _mm_set1_epi8(4);
  for (int j = 0; j < 4; ++j) {
    const __m128i x = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w + 16 * j));
    const __m128i a = _mm_sub_epi8(x, c09);  // 0x09..0x0d: x - 0x09 <= 4 (unsigned)
    const __m128i b = _mm_sub_epi8(x, c1c);  // 0x1c..0x20: x - 0x1c <= 4
    const __m128i m = _mm_or_si128(_mm_cmpeq_epi8(_mm_min_epu8(a, c4), a),
                                   _mm_cmpeq_epi8(_mm_min_epu8(b, c4), b));
    ws |= static_cast<uint64_t>(static_cast<uint32_t>(_mm_movemask_epi8(m))) << (16 * j);
    hi |= static_cast<uint64_t>(static_cast<uint32_t>(_mm_movemask_epi8(x))) << (16 * j);
  }
#else
  for (int k = 0; k < 64; ++k) {
    const auto b = static_cast<uint8_t>(w[k]);
    ws |= static_cast<uint64_t>(kClass.c[b] == 1) << k;
    hi |= static_cast<uint64_t>(b >> 7) << k;
  }
#endif
  high = hi;
  return ws;
}

// ---------------------------------------------------------------------------------------------
// Token table

// Open-addressing table (linear probing, load <= 1/2) from byte strings to counts, entries kept
// in insertion order. A 32-byte slot holds the key's first 16 bytes (zero-padded), its length
// and its count, so keys of up to 16 bytes (nearly all words) are found with one cache line and
// two word compares, without touching the text; longer keys compare the rest with memcmp.
class alignas(64) TokenTable {  // own cache lines: one table per thread
 public:
  struct Entry {
    const char* key;
    size_t len;
    uint64_t lo, hi, hash;
    int64_t count;
  };

  TokenTable() { resize(1024); }

  void prefetch(uint64_t h) const noexcept { __builtin_prefetch(&slots_[h & mask_]); }

  void add(const char* p, size_t n, uint64_t lo, uint64_t hi, uint64_t h, int64_t by = 1) {
    size_t i = h & mask_;
    for (;;) {
      Slot& s = slots_[i];
      if (s.entry == 0) break;
      if (s.lo == lo && s.hi == hi && s.len == n &&
          (n <= 16 || std::memcmp(keys_[s.entry - 1] + 16, p + 16, n - 16) == 0)) {
        s.count += by;
        return;
      }
      i = (i + 1) & mask_;
    }
    keys_.push_back(p);
    hashes_.push_back(h);
    slots_[i] = {lo, hi, static_cast<uint32_t>(n), static_cast<uint32_t>(keys_.size()), by};
    if (keys_.size() * 2 > slots_.size()) resize(slots_.size() * 2);
  }

  size_t size() const noexcept { return keys_.size(); }

  // Entries in insertion order.
  std::vector<Entry> entries() const {
    std::vector<Entry> out(keys_.size());
    for (const Slot& s : slots_) {
      if (s.entry == 0) continue;
      const size_t e = s.entry - 1;
      out[e] = {keys_[e], s.len, s.lo, s.hi, hashes_[e], s.count};
    }
    return out;
  }

 private:
  struct Slot {
    uint64_t lo = 0, hi = 0;
    uint32_t len = 0;
    uint32_t entry = 0;  // 1-based index into keys_, 0: empty
    int64_t count = 0;
  };

  void resize(size_t size) {
    std::vector<Slot> old(size);
    old.swap(slots_);
    mask_ = size - 1;
    for (const Slot& s : old) {
      if (s.entry == 0) continue;
      size_t i = hashes_[s.entry - 1] & mask_;
      while (slots_[i].entry != 0) i = (i + 1) & mask_;
      slots_[i] = s;
    }
  }

  std::vector<Slot> slots_;
  std::vector<const char*> keys_;
  std::vector<uint64_t> hashes_;
  size_t mask_ = 0;
};

// Tokens wait in a small ring after their slot is prefetched, so that the table's cache misses
// (rare words) overlap with tokenising the next ones.
class PrefetchingCounter {
 public:
  explicit PrefetchingCounter(TokenTable& t) : t_(t) {}

  void add(const char* p, size_t n, uint64_t lo, uint64_t hi, uint64_t h) {
    t_.prefetch(h);
    Pending& s = ring_[head_ & (kDepth - 1)];
    if (head_ >= kDepth) t_.add(s.p, s.n, s.lo, s.hi, s.h);
    s = {p, n, lo, hi, h};
    ++head_;
  }

  void flush() {
    for (size_t k = head_ > kDepth ? head_ - kDepth : 0; k < head_; ++k) {
      const Pending& s = ring_[k & (kDepth - 1)];
      t_.add(s.p, s.n, s.lo, s.hi, s.h);
    }
    head_ = 0;
  }

 private:
  static constexpr size_t kDepth = 16;
  struct Pending {
    const char* p;
    size_t n;
    uint64_t lo, hi, h;
  };
  TokenTable& t_;
  Pending ring_[kDepth] = {};
  size_t head_ = 0;
};

// ---------------------------------------------------------------------------------------------
// Tokenising one text

// Calls emit(start, size) for every whitespace-separated token of [p, p + n), in order. The text
// is scanned 64 bytes at a time into a whitespace bit mask; tokens are the runs of zero bits.
template <typename Emit>
LLMDBG_INLINE inline void for_each_token(const char* p, size_t n, Emit&& emit) {
  const char* const end = p + n;
  uint64_t carry_ns = 0;  // 1 if the byte before the window is part of a token
  uint64_t carry_ws = 0;  // bits of a multi-byte space that began in the previous window
  size_t start = 0;       // start of the open token (valid when carry_ns)
  alignas(16) char pad[64];
  for (size_t off = 0; off < n; off += 64) {
    const size_t avail = n - off;
    const char* w = p + off;
    if (avail < 64 && !same_page(w, 64)) {  // the last window near a page end: copy it
      std::memcpy(pad, w, avail);
      std::memset(pad + avail, ' ', 64 - avail);
      w = pad;
    }
    uint64_t high;
    uint64_t ws = ascii_ws64(w, high);
    if (avail < 64) {
      const uint64_t valid = (uint64_t{1} << avail) - 1;
      ws = (ws & valid) | ~valid;  // past the end counts as whitespace
      high &= valid;
    }
    ws |= carry_ws;
    carry_ws = 0;
    if (high != 0) {  // multi-byte whitespace: check each possible lead byte in full
      const char* wend = w == pad ? pad + avail : end;
      for (uint64_t m = high; m != 0; m &= m - 1) {
        const int k = __builtin_ctzll(m);
        if (kClass.c[static_cast<uint8_t>(w[k])] != 2) continue;
        const int len = ws_inline(w + k, wend);
        if (len == 0) continue;
        const uint64_t bits = len == 2 ? 3 : 7;
        ws |= bits << k;
        if (k + len > 64) carry_ws = bits >> (64 - k);
      }
    }
    const uint64_t ns = ~ws;
    const uint64_t before = (ns << 1) | carry_ns;  // bit k: byte k - 1 is part of a token
    uint64_t starts = ns & ~before;
    uint64_t ends = ws & before;       // starts and ends alternate
    if (carry_ns != 0 && ends != 0) {  // the first end closes the token left open before
      emit(start, off + static_cast<size_t>(__builtin_ctzll(ends)) - start);
      ends &= ends - 1;
    }
    carry_ns = ns >> 63;
    while (starts != 0) {
      const int s = __builtin_ctzll(starts);
      starts &= starts - 1;
      if (ends != 0) {
        const int e = __builtin_ctzll(ends);
        ends &= ends - 1;
        emit(off + static_cast<size_t>(s), static_cast<size_t>(e - s));
      } else {
        start = off + static_cast<size_t>(s);  // runs into the next window
      }
    }
  }
  if (carry_ns != 0) emit(start, n - start);
}

// Contiguous blocks of items with about equal work (bytes + a constant per item): thread t of
// nt gets [bounds[t], bounds[t + 1]).
std::vector<int64_t> balanced_blocks(const std::vector<std::string_view>& texts, int nt) {
  const auto n = static_cast<int64_t>(texts.size());
  std::vector<int64_t> bounds(static_cast<size_t>(nt) + 1, n);
  bounds[0] = 0;
  if (nt == 1) return bounds;
  uint64_t total = 0;
  for (const auto& t : texts) total += t.size() + 16;
  uint64_t acc = 0;
  int next = 1;
  for (int64_t i = 0; i < n && next < nt; ++i) {
    while (next < nt && acc >= total * static_cast<uint64_t>(next) / static_cast<uint64_t>(nt))
      bounds[next++] = i;
    acc += texts[static_cast<size_t>(i)].size() + 16;
  }
  return bounds;
}

void check_sizes(const std::vector<std::string_view>& texts) {
  for (const auto& t : texts) {
    if (t.size() >= (uint64_t{1} << 32))
      throw std::invalid_argument("texts of 4 GiB or more are not supported");
  }
}

// Tokenise and count texts (and hash each whole text into `text_hashes` if not null). Whatever a
// block throws (a table that cannot grow) is rethrown after the region; `guard` is polled per text.
TokenCounts count_tokens(const std::vector<std::string_view>& texts, int num_threads,
                         uint64_t* text_hashes, Guard& guard) {
  check_sizes(texts);
  const auto n = static_cast<int64_t>(texts.size());
  TokenCounts out;
  out.lengths.assign(texts.size(), 0);
  const int threads =
      static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(resolve_threads(num_threads), n)));
  std::vector<TokenTable> local(static_cast<size_t>(threads));
  const auto bounds = balanced_blocks(texts, threads);
  int64_t* lengths = out.lengths.data();
  // One table per block; a smaller team than asked (nested parallelism) still does every block.
#pragma omp parallel for num_threads(threads) schedule(static, 1)
  for (int t = 0; t < threads; ++t)
    guard.run([&] {
      TokenTable& table = local[static_cast<size_t>(t)];
      PrefetchingCounter counter(table);
      for (int64_t i = bounds[static_cast<size_t>(t)]; i < bounds[static_cast<size_t>(t) + 1];
           ++i) {
        if (guard.poll()) return;
        if (i + 4 < n) {  // a later text's first 256 bytes: texts are scattered in memory
          const std::string_view next = texts[static_cast<size_t>(i) + 4];
          const size_t lines = std::min<size_t>(next.size(), 256);
          for (size_t k = 0; k < lines; k += 64) __builtin_prefetch(next.data() + k);
        }
        const char* p = texts[static_cast<size_t>(i)].data();
        const size_t size = texts[static_cast<size_t>(i)].size();
        const char* end = p + size;
        int64_t len = 0;
        for_each_token(p, size, [&](size_t s, size_t k) LLMDBG_INLINE {
          uint64_t lo, hi;
          load_key(p + s, k, end, lo, hi);
          counter.add(p + s, k, lo, hi, hash_key(p + s, k, lo, hi));
          ++len;
        });
        lengths[i] = len;
        if (text_hashes != nullptr) text_hashes[i] = hash_exact(p, size);
      }
      counter.flush();
    });
  guard.finish();
  // Blocks are in text order, so merging their tables in block order, each in its own
  // insertion order, yields global first-occurrence order.
  std::vector<TokenTable::Entry> entries;
  if (threads == 1) {
    entries = local[0].entries();
  } else {
    TokenTable merged;
    for (const TokenTable& c : local) {
      for (const auto& e : c.entries()) merged.add(e.key, e.len, e.lo, e.hi, e.hash, e.count);
    }
    entries = merged.entries();
  }
  out.tokens.reserve(entries.size());
  out.counts.reserve(entries.size());
  for (const auto& e : entries) {
    out.tokens.emplace_back(e.key, e.len);
    out.counts.push_back(e.count);
    out.total += e.count;
  }
  return out;
}

// duplicate_groups from precomputed item hashes.
std::vector<int64_t> groups_from_hashes(const std::vector<std::string_view>& items,
                                        const uint64_t* hashes, int num_threads, Guard& guard) {
  const auto n = static_cast<int64_t>(items.size());
  if (n >= (int64_t{1} << 32) - 1)
    throw std::invalid_argument("duplicate_groups: at most 2^32 - 2 items");
  std::vector<int64_t> group(items.size());
  const int threads = static_cast<int>(
      std::max<int64_t>(1, std::min<int64_t>(resolve_threads(num_threads), 1 + n / 4096)));
#pragma omp parallel num_threads(threads)
  guard.run([&] {
    // Shard by the hash's high bits: equal items share a hash, hence a shard; each shard is
    // scanned in item order, so the representative is always the earliest item.
    const int t = thread_id(), nt = team_size();
    const auto shard = [nt](uint64_t h) {
      return static_cast<int>(((h >> 32) * static_cast<uint64_t>(nt)) >> 32);
    };
    int64_t own = 0;
    for (int64_t i = 0; i < n; ++i) own += shard(hashes[i]) == t;
    size_t size = 16;
    while (size < 2 * static_cast<size_t>(own)) size *= 2;
    // 8-byte slots (the table is larger than the cache): the hash's high half as a tag and the
    // item index + 1 (0: empty). A tag match is confirmed by the full hash, then the bytes.
    struct Slot {
      uint32_t tag;
      uint32_t item;
    };
    std::vector<Slot> table(size, Slot{0, 0});
    const size_t mask = size - 1;
    const auto place = [&](int64_t i) {
      const uint64_t h = hashes[i];
      const auto tag = static_cast<uint32_t>(h >> 32);
      const auto& s = items[static_cast<size_t>(i)];
      size_t k = h & mask;
      while (table[k].item != 0) {
        const int64_t j = static_cast<int64_t>(table[k].item) - 1;
        if (table[k].tag == tag && hashes[j] == h) {
          const auto& o = items[static_cast<size_t>(j)];
          if (o.size() == s.size() && std::memcmp(o.data(), s.data(), s.size()) == 0) {
            group[static_cast<size_t>(i)] = j;
            return;
          }
        }
        k = (k + 1) & mask;
      }
      table[k] = {tag, static_cast<uint32_t>(i + 1)};
      group[static_cast<size_t>(i)] = i;
    };
    // Items wait in a ring after their slot is prefetched.
    constexpr int64_t kDepth = 16;
    int64_t ring[kDepth];
    int64_t head = 0;
    for (int64_t i = 0; i < n; ++i) {
      if ((i & 4095) == 0 && guard.poll()) return;
      if (shard(hashes[i]) != t) continue;
      __builtin_prefetch(&table[hashes[i] & mask]);
      int64_t& r = ring[head & (kDepth - 1)];
      if (head >= kDepth) place(r);
      r = i;
      ++head;
    }
    for (int64_t k = head > kDepth ? head - kDepth : 0; k < head; ++k)
      place(ring[k & (kDepth - 1)]);
  });
  guard.finish();
  return group;
}

}  // namespace

uint64_t hash_bytes(const char* data, size_t size) noexcept { return hash_exact(data, size); }

int whitespace_length(const char* p, const char* end) noexcept {
  return p < end ? ws_inline(p, end) : 0;
}

TokenCounts count_whitespace_tokens(const std::vector<std::string_view>& texts, int num_threads,
                                    const CancelFn& cancelled) {
  Guard guard(cancelled);
  return count_tokens(texts, num_threads, nullptr, guard);
}

TextProfile profile_whitespace(const std::vector<std::string_view>& texts, int num_threads,
                               const CancelFn& cancelled) {
  Guard guard(cancelled);
  std::vector<uint64_t> hashes(texts.size());
  TextProfile out;
  out.tokens = count_tokens(texts, num_threads, hashes.data(), guard);
  out.groups = groups_from_hashes(texts, hashes.data(), num_threads, guard);
  return out;
}

IdCounts count_ids(const int64_t* ids, const int64_t* offsets, int64_t n_seqs, int64_t vocab_size,
                   int num_threads, const CancelFn& cancelled) {
  if (n_seqs < 0) throw std::invalid_argument("count_ids: n_seqs must be >= 0");
  if (vocab_size <= 0) throw std::invalid_argument("count_ids: vocab_size must be positive");
  if (vocab_size > (int64_t{1} << 32)) {  // one int64 count per id and thread
    throw std::invalid_argument("count_ids: vocab_size " + std::to_string(vocab_size) +
                                " is beyond 2**32; are these token ids?");
  }
  if (offsets[0] != 0) throw std::invalid_argument("count_ids: offsets must start at 0");
  for (int64_t s = 0; s < n_seqs; ++s) {
    if (offsets[s + 1] < offsets[s])
      throw std::invalid_argument("count_ids: offsets must be non-decreasing");
  }
  IdCounts out;
  out.lengths.resize(static_cast<size_t>(n_seqs));
  for (int64_t s = 0; s < n_seqs; ++s)
    out.lengths[static_cast<size_t>(s)] = offsets[s + 1] - offsets[s];
  const int64_t n_ids = offsets[n_seqs];
  out.total = n_ids;
  // A thread's count table costs vocab_size entries: extra tables only where there are ids
  // enough to fill them (a huge vocabulary with few ids then costs one table, not one per thread).
  const int64_t by_ids = 1 + n_ids / 65536, by_memory = 1 + n_ids / vocab_size;
  const int threads = static_cast<int>(std::max<int64_t>(
      1, std::min({static_cast<int64_t>(resolve_threads(num_threads)), by_ids, by_memory})));
  // One count table per thread, allocated here: an allocation failure inside the parallel region
  // would abort the process instead of raising.
  std::vector<std::vector<int64_t>> local(static_cast<size_t>(threads));
  for (auto& c : local) c.assign(static_cast<size_t>(vocab_size), 0);
  std::vector<int64_t> bad(static_cast<size_t>(threads), -1);
  Guard guard(cancelled);
#pragma omp parallel num_threads(threads)
  {
    const int t = thread_id(), nt = team_size();
    const int64_t lo = n_ids * t / nt, hi = n_ids * (t + 1) / nt;
    auto& c = local[static_cast<size_t>(t)];
    for (int64_t i = lo; i < hi; ++i) {
      if ((i & 65535) == 0 && guard.poll()) break;
      const int64_t id = ids[i];
      if (id < 0 || id >= vocab_size) {
        bad[static_cast<size_t>(t)] = i;
        break;
      }
      ++c[static_cast<size_t>(id)];
    }
  }
  guard.finish();
  for (int64_t b : bad) {
    if (b >= 0) {
      throw std::invalid_argument("count_ids: token id " + std::to_string(ids[b]) +
                                  " at flat position " + std::to_string(b) + " is outside [0, " +
                                  std::to_string(vocab_size) + ")");
    }
  }
  out.counts = std::move(local[0]);
  for (size_t t = 1; t < local.size(); ++t) {
    if (local[t].empty()) continue;
    for (size_t v = 0; v < out.counts.size(); ++v) out.counts[v] += local[t][v];
  }
  return out;
}

std::vector<int64_t> duplicate_groups(const std::vector<std::string_view>& items, int num_threads,
                                      uint64_t hash_mask, const CancelFn& cancelled) {
  const auto n = static_cast<int64_t>(items.size());
  std::vector<uint64_t> hashes(items.size());
  const int threads = static_cast<int>(
      std::max<int64_t>(1, std::min<int64_t>(resolve_threads(num_threads), 1 + n / 4096)));
  Guard guard(cancelled);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    if (guard.poll()) continue;
    const auto& s = items[static_cast<size_t>(i)];
    hashes[static_cast<size_t>(i)] = hash_exact(s.data(), s.size()) & hash_mask;
  }
  guard.finish();
  return groups_from_hashes(items, hashes.data(), num_threads, guard);
}

DuplicateSummary duplicate_summary(const int64_t* groups, int64_t n, const int64_t* codes) {
  for (int64_t i = 0; i < n; ++i) {
    const int64_t g = groups[i];
    if (g < 0 || g > i || groups[g] != g) {
      throw std::invalid_argument(
          "duplicate_summary: groups[" + std::to_string(i) + "] = " + std::to_string(g) +
          " is not the index of a first occurrence at or before " + std::to_string(i));
    }
  }
  std::vector<int64_t> size(static_cast<size_t>(n), 0);
  for (int64_t i = 0; i < n; ++i) ++size[static_cast<size_t>(groups[i])];
  DuplicateSummary out;
  for (int64_t i = 0; i < n; ++i) {
    if (size[static_cast<size_t>(i)] > 1) {
      out.first.push_back(i);
      out.count.push_back(size[static_cast<size_t>(i)]);
    }
  }
  out.n_labels.assign(out.first.size(), 0);
  if (codes != nullptr && !out.first.empty()) {
    std::vector<std::pair<int64_t, int64_t>> pairs;  // (group, code) of every member
    for (int64_t i = 0; i < n; ++i) {
      if (size[static_cast<size_t>(groups[i])] > 1) pairs.emplace_back(groups[i], codes[i]);
    }
    std::sort(pairs.begin(), pairs.end());
    size_t r = 0;  // index into out.first (ascending, like the sorted pairs' groups)
    for (size_t k = 0; k < pairs.size(); ++k) {
      if (k > 0 && pairs[k] == pairs[k - 1]) continue;
      while (out.first[r] != pairs[k].first) ++r;
      ++out.n_labels[r];
    }
  }
  // Most frequent first; first indices ascend already, so a stable sort keeps ties in order.
  std::vector<size_t> order(out.first.size());
  for (size_t k = 0; k < order.size(); ++k) order[k] = k;
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return out.count[a] > out.count[b]; });
  DuplicateSummary sorted;
  sorted.first.reserve(order.size());
  sorted.count.reserve(order.size());
  sorted.n_labels.reserve(order.size());
  for (size_t k : order) {
    sorted.first.push_back(out.first[k]);
    sorted.count.push_back(out.count[k]);
    sorted.n_labels.push_back(out.n_labels[k]);
  }
  return sorted;
}

}  // namespace llmdbg::data
