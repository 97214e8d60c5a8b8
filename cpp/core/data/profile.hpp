#pragma once
// Counting kernels behind llmdbg.data.profile: whitespace tokenisation with token frequencies
// and per-text lengths, frequencies of integer token ids (a tokenizer's flat batch output),
// exact-duplicate detection by 64-bit hashing with byte-wise verification, and the summary of
// duplicate groups (sizes, distinct labels).
//
// Inputs are views (pointer + size) into buffers the caller keeps alive; nothing is copied.
// Results are deterministic for every thread count: each thread counts a contiguous block of
// texts into its own table, tables are merged by summing (exact integers) and by taking the
// earliest first occurrence, and unique tokens come out in first-occurrence order.
//
// The kernels take a `cancelled` callback (core/common/cancel.hpp), polled per text or every few
// thousand items; when it returns true they throw llmdbg::Interrupted.

#include <cstdint>
#include <string_view>
#include <vector>

#include "core/common/cancel.hpp"

namespace llmdbg::data {

// 64-bit hash of a byte string (multiply-fold over 16-byte words, wyhash-style). Token tables
// and duplicate detection use this one function.
uint64_t hash_bytes(const char* data, size_t size) noexcept;

// Length in bytes of the whitespace character starting at p (0 if none), for UTF-8 text ending
// at end. "Whitespace" is exactly what Python's str.isspace() accepts, so that splitting here
// equals Python's str.split() without arguments: ASCII \t \n \v \f \r, space, \x1c-\x1f, and
// U+0085, U+00A0, U+1680, U+2000-U+200A, U+2028, U+2029, U+202F, U+205F, U+3000.
int whitespace_length(const char* p, const char* end) noexcept;

struct TokenCounts {
  std::vector<std::string_view> tokens;  // unique tokens, in order of first occurrence
  std::vector<int64_t> counts;           // occurrences of each token
  std::vector<int64_t> lengths;          // tokens per text
  int64_t total = 0;                     // sum of counts
};

// Split every text on whitespace (str.split() semantics) and count tokens. The views in the
// result point into `texts`' buffers.
TokenCounts count_whitespace_tokens(const std::vector<std::string_view>& texts, int num_threads,
                                    const CancelFn& cancelled = {});

struct TextProfile {
  TokenCounts tokens;           // as count_whitespace_tokens
  std::vector<int64_t> groups;  // as duplicate_groups
};

// count_whitespace_tokens and duplicate_groups in one pass over the texts: each text is hashed
// right after it is tokenised, while its bytes are still in cache.
TextProfile profile_whitespace(const std::vector<std::string_view>& texts, int num_threads,
                               const CancelFn& cancelled = {});

struct IdCounts {
  std::vector<int64_t> counts;   // (vocab_size,) occurrences of each id
  std::vector<int64_t> lengths;  // (n_seqs,) ids per sequence
  int64_t total = 0;
};

// Count ids of n_seqs sequences stored flat: sequence s is ids[offsets[s] .. offsets[s + 1]).
// offsets has n_seqs + 1 non-decreasing entries starting at 0. Throws std::invalid_argument
// for an id outside [0, vocab_size), a vocab_size beyond 2**32 or bad offsets. Every id is
// checked before it is counted; each thread's table is allocated before the parallel region.
IdCounts count_ids(const int64_t* ids, const int64_t* offsets, int64_t n_seqs, int64_t vocab_size,
                   int num_threads, const CancelFn& cancelled = {});

// For each item, the index of the first item with identical bytes (itself if it is the first).
// Equal hashes are always confirmed by comparing bytes, so collisions never merge different
// items; `hash_mask` (tests only) masks the hashes to force collisions.
std::vector<int64_t> duplicate_groups(const std::vector<std::string_view>& items, int num_threads,
                                      uint64_t hash_mask = ~uint64_t{0},
                                      const CancelFn& cancelled = {});

struct DuplicateSummary {
  std::vector<int64_t> first;     // index of the first text of each group with >= 2 texts
  std::vector<int64_t> count;     // texts in the group
  std::vector<int64_t> n_labels;  // distinct label codes in the group (0 without codes)
};

// Groups that occur more than once, most frequent first (ties: smaller first index first).
// groups[i] must lie in [0, i] with groups[groups[i]] == groups[i] (duplicate_groups' output);
// codes, if not null, holds one integer label code per item. Throws std::invalid_argument for
// groups that break the rule.
DuplicateSummary duplicate_summary(const int64_t* groups, int64_t n, const int64_t* codes);

}  // namespace llmdbg::data
